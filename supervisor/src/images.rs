//! OS images in `<state>/images/<name>/`, as written by `dstack image build`
//! (crate `dstack-reproducible`): `metadata.json` + `digest.txt` + the files
//! metadata names.
//!
//! `metadata.json` is read leniently here (missing fields take the builder's
//! file names, unknown fields are ignored) instead of through the builder's
//! `ImageManifest`, so that the supervisor does not link the image builder
//! and a newer builder's extra fields never make an image unbootable.

use std::cmp::Ordering;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use dstack_proto::supervisor::ImageInfo;
use serde::Deserialize;

use crate::error::VmmError;

/// An image the supervisor can boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Name (its directory name).
    pub name: String,
    /// Version from metadata.json.
    pub version: String,
    /// The kernel (bzImage).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The firmware (OVMF/TDVF); used for TDX.
    pub bios: PathBuf,
    /// Kernel command line, exactly as measured.
    pub cmdline: String,
    /// A -dev image (has a shell).
    pub is_dev: bool,
    /// os_image_hash from digest.txt ("" when missing).
    pub digest: String,
    modified: Option<SystemTime>,
}

impl Image {
    /// The API view of it.
    pub fn info(&self) -> ImageInfo {
        ImageInfo {
            name: self.name.clone(),
            version: self.version.clone(),
            digest: self.digest.clone(),
            is_dev: self.is_dev,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Metadata {
    #[serde(default)]
    version: String,
    #[serde(default = "kernel")]
    kernel: String,
    #[serde(default = "initrd")]
    initrd: String,
    #[serde(default = "bios")]
    bios: String,
    #[serde(default)]
    cmdline: String,
    #[serde(default)]
    is_dev: bool,
}

fn kernel() -> String {
    "bzImage".into()
}

fn initrd() -> String {
    "initramfs.cpio.gz".into()
}

fn bios() -> String {
    "ovmf.fd".into()
}

/// The images directory.
#[derive(Debug, Clone)]
pub struct ImageCatalog {
    dir: PathBuf,
}

impl ImageCatalog {
    /// The catalog of `dir` (usually `<state>/images`).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Every bootable image, sorted by name. Directories starting with `.`
    /// (builds in progress) and ones without a readable metadata.json are
    /// skipped with a warning rather than failing the whole list.
    pub fn list(&self) -> Vec<Image> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut images: Vec<Image> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_str()?.to_owned();
                if name.starts_with('.') || !entry.path().is_dir() {
                    return None;
                }
                match load(&entry.path(), name) {
                    Ok(image) => Some(image),
                    Err(reason) => {
                        tracing::warn!(dir = %entry.path().display(), "skipping image: {reason}");
                        None
                    }
                }
            })
            .collect();
        images.sort_by(|a, b| a.name.cmp(&b.name));
        images
    }

    /// The image a deploy asked for: by name, or the newest when `requested` is empty.
    pub fn resolve(&self, requested: &str) -> Result<Image, VmmError> {
        let images = self.list();
        if requested.is_empty() {
            return images.into_iter().max_by(newer).ok_or_else(|| {
                VmmError::invalid(
                    "image",
                    format!(
                        "no OS image is installed in {} (run `dstack image build`)",
                        self.dir.display()
                    ),
                )
            });
        }
        images
            .into_iter()
            .find(|image| image.name == requested)
            .ok_or_else(|| VmmError::invalid("image", format!("no image named {requested:?}")))
    }
}

fn load(dir: &Path, name: String) -> Result<Image, String> {
    let path = dir.join("metadata.json");
    let bytes = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let meta: Metadata = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is invalid: {e}", path.display()))?;
    let kernel = dir.join(&meta.kernel);
    let initrd = dir.join(&meta.initrd);
    let bios = dir.join(&meta.bios);
    // The firmware boots TDs and is what the sim TEE's MRTD measures.
    for file in [&kernel, &initrd, &bios] {
        if !file.is_file() {
            return Err(format!("{} is missing", file.display()));
        }
    }
    let digest = fs::read_to_string(dir.join("digest.txt"))
        .map(|d| d.trim().to_owned())
        .unwrap_or_default();
    Ok(Image {
        name,
        version: meta.version,
        kernel,
        initrd,
        bios,
        cmdline: meta.cmdline,
        is_dev: meta.is_dev,
        digest,
        modified: fs::metadata(&path).and_then(|m| m.modified()).ok(),
    })
}

/// Orders images by version (numeric parts compared as numbers), then by
/// when their metadata was written.
fn newer(a: &Image, b: &Image) -> Ordering {
    version_key(&a.version)
        .cmp(&version_key(&b.version))
        .then(a.modified.cmp(&b.modified))
        .then(a.name.cmp(&b.name))
}

fn version_key(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .map(|part| part.parse().unwrap_or(u64::MAX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::write_image;

    #[test]
    fn lists_resolves_and_picks_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = ImageCatalog::new(dir.path().to_owned());
        assert!(catalog.list().is_empty());
        let err = catalog.resolve("").unwrap_err();
        assert!(err.to_string().starts_with("image: no OS image"), "{err}");

        write_image(dir.path(), "dstack-0.9.0", "0.9.0");
        write_image(dir.path(), "dstack-0.10.0", "0.10.0");
        fs::create_dir_all(dir.path().join(".building")).unwrap();
        fs::create_dir_all(dir.path().join("broken")).unwrap();
        fs::write(dir.path().join("broken/metadata.json"), b"{}").unwrap();

        let names: Vec<_> = catalog.list().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["dstack-0.10.0", "dstack-0.9.0"]);
        assert_eq!(catalog.resolve("").unwrap().name, "dstack-0.10.0");
        let image = catalog.resolve("dstack-0.9.0").unwrap();
        assert_eq!(image.cmdline, "console=ttyS0");
        assert_eq!(image.digest.len(), 64);
        assert!(image.info().is_dev);
        let err = catalog.resolve("nope").unwrap_err();
        assert_eq!(err.to_string(), "image: no image named \"nope\"");
    }
}
