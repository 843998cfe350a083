//! An image's `metadata.json`, its `sha256sum.txt` and `digest.txt`, and
//! listing the images in a directory.
//!
//! Field names and the digest rule follow upstream dstack's images, so its
//! tools read ours: the OS image hash is the sha256 of `sha256sum.txt`, which
//! lists the other files in upstream's order.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::BuildError;

/// The kernel file in an image directory.
pub const KERNEL_FILE: &str = "bzImage";
/// The initramfs file in an image directory.
pub const INITRD_FILE: &str = "initramfs.cpio.lz4";
/// The firmware file in an image directory.
pub const BIOS_FILE: &str = "ovmf.fd";
/// The metadata file in an image directory.
pub const METADATA_FILE: &str = "metadata.json";
/// The checksum list in an image directory.
pub const SHA256SUM_FILE: &str = "sha256sum.txt";
/// The OS image hash file in an image directory.
pub const DIGEST_FILE: &str = "digest.txt";

/// The files `sha256sum.txt` covers, in upstream's order.
pub(crate) const CHECKSUMMED: [&str; 4] = [BIOS_FILE, KERNEL_FILE, INITRD_FILE, METADATA_FILE];

/// What an image is, exactly as stored in its `metadata.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    /// Image name, also its directory name (e.g. `dstack-dev-0.1.0`).
    pub name: String,
    /// Version of the builder that made it.
    pub version: String,
    /// Kernel file name in the image directory.
    pub kernel: String,
    /// Initramfs file name in the image directory.
    pub initrd: String,
    /// Firmware file name in the image directory.
    pub bios: String,
    /// Kernel command line the VM must be booted with (it is measured).
    pub cmdline: String,
    /// The -dev variant (has a shell); never for production.
    pub is_dev: bool,
    /// Kernel release (`uname -r` in the guest).
    pub kernel_version: String,
    /// Everything the image was built from.
    pub inputs: ImageInputs,
}

/// The inputs an image was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInputs {
    /// The Debian packages used, from inputs.lock.
    pub packages: Vec<InputPackage>,
    /// The dstack-init binary installed as `/init`.
    pub init: InitInput,
    /// How our own kernel was built (absent with Debian's stock kernel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_build: Option<KernelBuildInput>,
}

/// The inputs of a kernel compiled from source, besides its source package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelBuildInput {
    /// The config fragments, in merge order.
    pub fragments: Vec<String>,
    /// sha256 over source, fragments, toolchain and recipe.
    pub cache_key: String,
    /// The host compiler, linker and make, one line each.
    pub toolchain: String,
}

/// One pinned package an image used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputPackage {
    /// Debian package name.
    pub name: String,
    /// Exact Debian version.
    pub version: String,
    /// sha256 of the .deb.
    pub sha256: String,
}

/// The init binary an image used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitInput {
    /// sha256 of the binary.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// How it was compiled, from its build record (absent for a binary not
    /// built by `scripts/build-init`, e.g. a test PID1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<InitBuild>,
}

/// How dstack-init was compiled: what `scripts/build-init` records beside
/// the binary. Nothing in it depends on the build machine's paths or users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitBuild {
    /// `rustc -vV`, verbatim.
    pub rustc: String,
    /// `cargo -V`.
    pub cargo: String,
    /// sha256 of the Cargo.lock it was built `--locked` against.
    pub cargo_lock_sha256: String,
    /// Target triple.
    pub target: String,
    /// Cargo profile.
    pub profile: String,
    /// The libseccomp source version linked in (inputs.lock `[libseccomp]`).
    pub libseccomp_version: String,
    /// sha256 of the static libseccomp.a linked in.
    pub libseccomp_sha256: String,
    /// The C compiler, linker and musl that compiled and linked the C parts,
    /// one line each.
    pub c_toolchain: String,
}

impl ImageManifest {
    /// Reads `<dir>/metadata.json`.
    pub fn load(dir: &Path) -> Result<Self, BuildError> {
        let path = dir.join(METADATA_FILE);
        let bytes = fs::read(&path).map_err(BuildError::read(&path))?;
        serde_json::from_slice(&bytes).map_err(|source| BuildError::Metadata { path, source })
    }

    /// The exact bytes of `metadata.json`: pretty JSON in field order, with
    /// a final newline.
    pub(crate) fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut out = serde_json::to_vec_pretty(self)?;
        out.push(b'\n');
        Ok(out)
    }
}

/// Lists the images in `images_dir`: every subdirectory with a
/// `metadata.json`, sorted by name. A missing `images_dir` has no images;
/// directories starting with `.` (builds in progress) are skipped.
pub fn list_images(images_dir: &Path) -> Result<Vec<ImageManifest>, BuildError> {
    let entries = match fs::read_dir(images_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(BuildError::read(images_dir)(e)),
    };
    let mut images = Vec::new();
    for entry in entries {
        let entry = entry.map_err(BuildError::read(images_dir))?;
        let dir = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden || !dir.is_dir() || !dir.join(METADATA_FILE).is_file() {
            continue;
        }
        let manifest = ImageManifest::load(&dir)?;
        if entry.file_name().to_str() != Some(manifest.name.as_str()) {
            return Err(BuildError::NameMismatch {
                dir,
                name: manifest.name,
            });
        }
        images.push(manifest);
    }
    images.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(images)
}

/// The OS image hash of the image in `dir`, from its `digest.txt`.
pub fn image_digest(dir: &Path) -> Result<String, BuildError> {
    let path = dir.join(DIGEST_FILE);
    let text = fs::read_to_string(&path).map_err(BuildError::read(&path))?;
    Ok(text.trim().to_owned())
}

/// `sha256sum.txt` content for files given as (name, sha256 hex), in the
/// given order: the format of coreutils' `sha256sum`.
pub(crate) fn sha256sum_text(files: &[(&str, String)]) -> String {
    files
        .iter()
        .map(|(name, hash)| format!("{hash}  {name}\n"))
        .collect()
}

/// `digest.txt` content: the sha256 of `sha256sum.txt`, as upstream writes
/// it (`sha256sum sha256sum.txt | awk '{print $1}'`).
pub(crate) fn digest_text(sha256sum: &str) -> String {
    format!("{}\n", hex::encode(Sha256::digest(sha256sum.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str) -> ImageManifest {
        ImageManifest {
            name: name.into(),
            version: "0.1.0".into(),
            kernel: KERNEL_FILE.into(),
            initrd: INITRD_FILE.into(),
            bios: BIOS_FILE.into(),
            cmdline: "console=ttyS0".into(),
            is_dev: false,
            kernel_version: "6.12.0".into(),
            inputs: ImageInputs {
                packages: vec![InputPackage {
                    name: "ovmf".into(),
                    version: "1".into(),
                    sha256: "00".repeat(32),
                }],
                init: InitInput {
                    sha256: "11".repeat(32),
                    size: 7,
                    build: None,
                },
                kernel_build: None,
            },
        }
    }

    #[test]
    fn metadata_round_trips_with_upstream_field_names() {
        let m = manifest("a");
        let json = m.to_json().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        for key in [
            "name", "version", "kernel", "initrd", "bios", "cmdline", "is_dev",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        let back: ImageManifest = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn list_images_reads_sorted_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b", "a"] {
            fs::create_dir(dir.path().join(name)).unwrap();
            fs::write(
                dir.path().join(name).join(METADATA_FILE),
                manifest(name).to_json().unwrap(),
            )
            .unwrap();
        }
        fs::create_dir(dir.path().join(".b.tmp")).unwrap();
        fs::write(dir.path().join(".b.tmp").join(METADATA_FILE), b"{").unwrap();
        fs::create_dir(dir.path().join("empty")).unwrap();
        fs::write(dir.path().join("stray-file"), b"x").unwrap();
        let names: Vec<String> = list_images(dir.path())
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert!(list_images(&dir.path().join("none")).unwrap().is_empty());

        fs::create_dir(dir.path().join("c")).unwrap();
        fs::write(
            dir.path().join("c").join(METADATA_FILE),
            manifest("other").to_json().unwrap(),
        )
        .unwrap();
        assert!(matches!(
            list_images(dir.path()),
            Err(BuildError::NameMismatch { .. })
        ));
        fs::write(dir.path().join("c").join(METADATA_FILE), b"not json").unwrap();
        assert!(matches!(
            list_images(dir.path()),
            Err(BuildError::Metadata { .. })
        ));
    }

    #[test]
    fn digest_is_sha256_of_the_checksum_file() {
        let text = sha256sum_text(&[("ovmf.fd", "ab".repeat(32)), ("bzImage", "cd".repeat(32))]);
        assert_eq!(
            text,
            format!(
                "{}  ovmf.fd\n{}  bzImage\n",
                "ab".repeat(32),
                "cd".repeat(32)
            )
        );
        // Same rule as `sha256sum sha256sum.txt | awk '{print $1}'`.
        let expected = hex::encode(Sha256::digest(text.as_bytes()));
        assert_eq!(digest_text(&text), format!("{expected}\n"));
    }
}
