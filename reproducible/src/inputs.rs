//! The pinned inputs of the image: `inputs.lock`, compiled into the crate so
//! that a build can only ever use the packages this source tree names.

use serde::{Deserialize, Serialize};

use crate::error::BuildError;

/// The checked-in lock file.
const INPUTS_LOCK: &str = include_str!("../inputs.lock");

/// What the builder takes from a pinned package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Role {
    /// Debian's stock kernel image and its modules (`--kernel debian`).
    Kernel,
    /// The kernel source our own kernel is compiled from (the default).
    KernelSource,
    /// The OVMF firmware.
    Firmware,
    /// The Mozilla CA roots.
    CaCertificates,
    /// mke2fs or one of its shared libraries.
    Mkfs,
    /// busybox, in the -dev variant only.
    Shell,
}

/// One Debian package pinned by exact version and .deb sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedPackage {
    /// Debian package name.
    pub name: String,
    /// Exact Debian version, epoch included.
    pub version: String,
    /// Lowercase hex sha256 of the .deb file.
    pub sha256: String,
    /// Size of the .deb in bytes (for progress; the hash is what is checked).
    pub size: u64,
    /// What the builder uses it for.
    pub role: Role,
    /// Only the -dev image variant includes it.
    #[serde(default)]
    pub dev_only: bool,
}

/// The container engine image, pinned by manifest digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineImage {
    /// Repository path, without a registry host (the guest pulls it from
    /// the registry its host names).
    pub repository: String,
    /// `sha256:<hex>` of the image manifest.
    pub digest: String,
}

impl EngineImage {
    /// `repository@digest`, as the guest reads it from
    /// [`ENGINE_IMAGE_PATH`].
    pub fn reference(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }
}

/// Where the OS image carries the engine pin.
pub const ENGINE_IMAGE_PATH: &str = "/etc/dstack/engine-image";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LockFile {
    engine: EngineImage,
    package: Vec<PinnedPackage>,
}

/// Returns every package pinned in `inputs.lock`, in file order.
pub fn pinned_packages() -> Result<Vec<PinnedPackage>, BuildError> {
    parse_lock(INPUTS_LOCK).map(|lock| lock.package)
}

/// The container engine image pinned in `inputs.lock`.
pub fn engine_image() -> Result<EngineImage, BuildError> {
    parse_lock(INPUTS_LOCK).map(|lock| lock.engine)
}

fn parse_lock(text: &str) -> Result<LockFile, BuildError> {
    let lock: LockFile = toml::from_str(text).map_err(|e| BuildError::InputsLock {
        reason: e.to_string(),
    })?;
    let digest_ok = lock
        .engine
        .digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
    if !digest_ok || lock.engine.repository.is_empty() || lock.engine.repository.contains('@') {
        return Err(BuildError::InputsLock {
            reason: "engine: repository and a sha256:<64 hex> manifest digest are required".into(),
        });
    }
    for pkg in &lock.package {
        let is_hex = pkg.sha256.len() == 64
            && pkg
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !is_hex {
            return Err(BuildError::InputsLock {
                reason: format!("{}: sha256 must be 64 lowercase hex digits", pkg.name),
            });
        }
    }
    for (role, what) in [
        (Role::Kernel, "kernel"),
        (Role::KernelSource, "kernel-source"),
    ] {
        let count = lock.package.iter().filter(|p| p.role == role).count();
        if count != 1 {
            return Err(BuildError::InputsLock {
                reason: format!("exactly one {what} package must be pinned, found {count}"),
            });
        }
    }
    Ok(lock)
}

/// The kernel release (`uname -r`) of a Debian kernel image package, e.g.
/// `6.12.117+deb12-cloud-amd64` for `linux-image-6.12.117+deb12-cloud-amd64`.
pub(crate) fn kernel_release(kernel: &PinnedPackage) -> Result<&str, BuildError> {
    kernel
        .name
        .strip_prefix("linux-image-")
        .filter(|rest| !rest.is_empty())
        .ok_or_else(|| BuildError::InputsLock {
            reason: format!(
                "kernel package {} is not named linux-image-<release>",
                kernel.name
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_lock_parses_with_one_kernel() {
        let pkgs = pinned_packages().unwrap();
        let kernel = pkgs.iter().find(|p| p.role == Role::Kernel).unwrap();
        assert!(kernel_release(kernel).unwrap().starts_with("6.12."));
        let source = pkgs.iter().find(|p| p.role == Role::KernelSource).unwrap();
        assert!(source.name.starts_with("linux-source-7."));
        assert!(pkgs.iter().any(|p| p.role == Role::Firmware));
        assert!(pkgs.iter().any(|p| p.role == Role::CaCertificates));
        // Only the shell is dev-only: the production image must not depend on it.
        assert!(
            pkgs.iter()
                .filter(|p| p.dev_only)
                .all(|p| p.role == Role::Shell)
        );
    }

    #[test]
    fn the_engine_is_pinned_by_digest() {
        let engine = engine_image().unwrap();
        assert_eq!(engine.repository, "dstack/engine");
        assert!(engine.reference().starts_with("dstack/engine@sha256:"));
        let unpinned = INPUTS_LOCK.replace(&engine.digest, "latest");
        assert!(matches!(
            parse_lock(&unpinned),
            Err(BuildError::InputsLock { .. })
        ));
    }

    #[test]
    fn bad_hash_and_unknown_fields_are_refused() {
        let bad_hash = r#"
            [engine]
            repository = "dstack/engine"
            digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
            [[package]]
            name = "linux-image-x"
            version = "1"
            sha256 = "ABC"
            size = 1
            role = "kernel"
        "#;
        assert!(matches!(
            parse_lock(bad_hash),
            Err(BuildError::InputsLock { .. })
        ));
        let unknown = bad_hash.replace("size = 1", "size = 1\nurl = \"x\"");
        assert!(matches!(
            parse_lock(&unknown),
            Err(BuildError::InputsLock { .. })
        ));
    }

    #[test]
    fn exactly_one_kernel_and_kernel_source_are_required() {
        let none = r#"
            [engine]
            repository = "dstack/engine"
            digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
            [[package]]
            name = "ovmf"
            version = "1"
            sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
            size = 1
            role = "firmware"
        "#;
        assert!(matches!(
            parse_lock(none),
            Err(BuildError::InputsLock { .. })
        ));
    }
}
