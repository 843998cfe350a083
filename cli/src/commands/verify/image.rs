//! Finding the OS image `--image` names, and checking that its directory is
//! what its own os_image_hash says, so the prediction is about that image.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use dstack_reproducible::{ImageManifest, image_digest, list_images};
use sha2::{Digest, Sha256};

/// Where images are looked up by digest or name: `$DSTACK_IMAGES_DIR`, else
/// the supervisor's images directory (`<state dir>/images`).
pub(crate) fn images_dir() -> PathBuf {
    std::env::var_os("DSTACK_IMAGES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::client::default_state_dir().join("images"))
}

/// An image resolved from `--image`.
#[derive(Debug, Clone)]
pub(crate) struct ImageRef {
    /// Its directory.
    pub(crate) dir: PathBuf,
    /// Its name.
    pub(crate) name: String,
    /// Its os_image_hash (digest.txt), lowercase hex.
    pub(crate) os_image_hash: String,
}

fn as_digest(text: &str) -> Option<String> {
    let t = text.trim();
    let t = t.strip_prefix("0x").unwrap_or(t).to_ascii_lowercase();
    (t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit())).then_some(t)
}

/// `arg` as an image directory, else as an os_image_hash or an image name
/// among the images in `images_dir`.
pub(crate) fn resolve(arg: &str, images_dir: &Path) -> anyhow::Result<ImageRef> {
    let path = Path::new(arg);
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        let images = list_images(images_dir)
            .with_context(|| format!("cannot list the images in {}", images_dir.display()))?;
        let digest = as_digest(arg);
        let mut found = None;
        let mut known = Vec::new();
        for image in &images {
            let dir = images_dir.join(&image.name);
            let hash = image_digest(&dir).unwrap_or_default();
            if image.name == arg || digest.as_deref() == Some(hash.as_str()) {
                found = Some(dir);
                break;
            }
            known.push(format!("{} ({hash})", image.name));
        }
        match found {
            Some(dir) => dir,
            None if known.is_empty() => bail!(
                "--image {arg:?} is not a directory, and {} has no images (set DSTACK_IMAGES_DIR, or give the image's directory)",
                images_dir.display()
            ),
            None => bail!(
                "--image {arg:?} is neither a directory nor an image in {}: {}",
                images_dir.display(),
                known.join(", ")
            ),
        }
    };
    let manifest = ImageManifest::load(&dir)
        .with_context(|| format!("{} is not an OS image directory", dir.display()))?;
    check_integrity(&dir, &manifest)?;
    Ok(ImageRef {
        os_image_hash: image_digest(&dir)?.to_ascii_lowercase(),
        name: manifest.name,
        dir,
    })
}

/// The image's files are the ones its `sha256sum.txt` lists, `digest.txt`
/// is that list's sha256, and the files the prediction reads (firmware,
/// kernel, initrd, metadata.json) are all on the list: otherwise the
/// prediction would be about other bytes than the os_image_hash names.
fn check_integrity(dir: &Path, manifest: &ImageManifest) -> anyhow::Result<()> {
    let sums_path = dir.join("sha256sum.txt");
    let sums = std::fs::read(&sums_path)
        .with_context(|| format!("cannot read {}", sums_path.display()))?;
    let digest = image_digest(dir)?;
    let listed_digest = hex::encode(Sha256::digest(&sums));
    if !digest.eq_ignore_ascii_case(&listed_digest) {
        bail!(
            "the image in {} is inconsistent: digest.txt says {digest}, but sha256sum.txt hashes to {listed_digest}",
            dir.display()
        );
    }
    let text = String::from_utf8(sums).context("sha256sum.txt is not text")?;
    let mut listed = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (hash, name) = line
            .split_once("  ")
            .with_context(|| format!("sha256sum.txt line {line:?} is not `HASH  NAME`"))?;
        let file = dir.join(name);
        let bytes =
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(hash.trim()) {
            bail!(
                "the image in {} is inconsistent: {name} hashes to {actual}, but sha256sum.txt lists {hash}",
                dir.display()
            );
        }
        listed.push(name.to_owned());
    }
    for needed in [
        manifest.bios.as_str(),
        manifest.kernel.as_str(),
        manifest.initrd.as_str(),
        "metadata.json",
    ] {
        if !listed.iter().any(|n| n == needed) {
            bail!(
                "the image in {} is inconsistent: sha256sum.txt does not list {needed}",
                dir.display()
            );
        }
    }
    Ok(())
}
