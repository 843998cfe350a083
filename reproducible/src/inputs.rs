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

/// The Rust toolchain dstack-init must be compiled with, as `rustc -vV`
/// names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RustToolchain {
    /// `release:` line, e.g. `1.95.0`.
    pub release: String,
    /// `commit-hash:` line: the exact compiler build.
    pub commit_hash: String,
    /// The target triple dstack-init is built for.
    pub target: String,
}

impl RustToolchain {
    /// Checks `rustc -vV` output against this pin: the same release and
    /// commit hash, or [`BuildError::ToolchainMismatch`].
    pub fn check(&self, rustc_vv: &str) -> Result<(), BuildError> {
        let field = |name: &str| {
            rustc_vv
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
                .to_owned()
        };
        let (release, commit) = (field("release:"), field("commit-hash:"));
        if release == self.release && commit == self.commit_hash {
            return Ok(());
        }
        Err(BuildError::ToolchainMismatch {
            pinned: format!("{} ({})", self.release, self.commit_hash),
            used: format!("{release} ({commit})"),
        })
    }
}

/// The libseccomp source dstack-init links statically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibseccompSource {
    /// Debian source version.
    pub version: String,
    /// sha256 of its `.dsc`.
    pub dsc_sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LockFile {
    rust: RustToolchain,
    libseccomp: LibseccompSource,
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

/// The Rust toolchain pinned in `inputs.lock`.
pub fn rust_toolchain() -> Result<RustToolchain, BuildError> {
    parse_lock(INPUTS_LOCK).map(|lock| lock.rust)
}

/// The libseccomp source pinned in `inputs.lock`.
pub fn libseccomp_source() -> Result<LibseccompSource, BuildError> {
    parse_lock(INPUTS_LOCK).map(|lock| lock.libseccomp)
}

/// The checked-in `inputs.lock`, verbatim (a rebuild check compares it with
/// the source tree's).
pub fn inputs_lock_text() -> &'static str {
    INPUTS_LOCK
}

fn parse_lock(text: &str) -> Result<LockFile, BuildError> {
    let lock: LockFile = toml::from_str(text).map_err(|e| BuildError::InputsLock {
        reason: e.to_string(),
    })?;
    let digest_ok = lock
        .engine
        .digest
        .strip_prefix("sha256:")
        .is_some_and(is_sha256_hex);
    if !digest_ok || lock.engine.repository.is_empty() || lock.engine.repository.contains('@') {
        return Err(BuildError::InputsLock {
            reason: "engine: repository and a sha256:<64 hex> manifest digest are required".into(),
        });
    }
    for pkg in &lock.package {
        if !is_sha256_hex(&pkg.sha256) {
            return Err(BuildError::InputsLock {
                reason: format!("{}: sha256 must be 64 lowercase hex digits", pkg.name),
            });
        }
    }
    if !is_sha256_hex(&lock.libseccomp.dsc_sha256) {
        return Err(BuildError::InputsLock {
            reason: "libseccomp: dsc_sha256 must be 64 lowercase hex digits".into(),
        });
    }
    let commit_ok =
        lock.rust.commit_hash.len() == 40 && lock.rust.commit_hash.bytes().all(is_lower_hex);
    if lock.rust.release.is_empty() || !commit_ok {
        return Err(BuildError::InputsLock {
            reason: "rust: a release and a 40-hex-digit commit_hash are required".into(),
        });
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

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(is_lower_hex)
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

    /// The `[rust]` and `[libseccomp]` tables every test lock needs.
    const TOOLCHAIN_TABLES: &str = r#"
        [rust]
        release = "1.95.0"
        commit_hash = "59807616e1fa2540724bfbac14d7976d7e4a3860"
        target = "x86_64-unknown-linux-musl"
        [libseccomp]
        version = "2.6.0-2"
        dsc_sha256 = "d05f94536558d34fa339326c6f958a3357b51efac8234470b5d97b69472db765"
    "#;

    /// What `scripts/lock-value TABLE KEY` prints: the quoted value of the
    /// first `KEY = "..."` line between `[TABLE]` and the next table.
    fn script_value(lock: &str, table: &str, key: &str) -> Option<String> {
        let header = format!("[{table}]");
        let prefix = format!("{key} = \"");
        lock.lines()
            .skip_while(|l| *l != header)
            .skip(1)
            .take_while(|l| !l.starts_with('['))
            .find_map(|l| {
                l.strip_prefix(&prefix)?
                    .strip_suffix('"')
                    .map(str::to_owned)
            })
    }

    #[test]
    fn the_scripts_read_the_same_pins_as_the_builder() {
        // scripts/build-init and scripts/build-libseccomp read these with
        // scripts/lock-value: keep them one `key = "value"` line each.
        let rust = rust_toolchain().unwrap();
        let seccomp = libseccomp_source().unwrap();
        for (table, key, value) in [
            ("rust", "release", &rust.release),
            ("rust", "commit_hash", &rust.commit_hash),
            ("rust", "target", &rust.target),
            ("libseccomp", "version", &seccomp.version),
            ("libseccomp", "dsc_sha256", &seccomp.dsc_sha256),
        ] {
            assert_eq!(
                script_value(INPUTS_LOCK, table, key).as_ref(),
                Some(value),
                "[{table}] {key}"
            );
        }
    }

    #[test]
    fn the_running_toolchain_is_checked_against_the_pin() {
        let pin = rust_toolchain().unwrap();
        let same = format!(
            "rustc {0} (abc 2026-04-14)\nbinary: rustc\ncommit-hash: {1}\nrelease: {0}\n",
            pin.release, pin.commit_hash
        );
        pin.check(&same).unwrap();
        let other = same.replace(&pin.release, "1.96.0");
        let err = pin.check(&other).unwrap_err();
        assert!(matches!(err, BuildError::ToolchainMismatch { .. }));
        let text = err.to_string();
        assert!(
            text.contains("1.96.0") && text.contains(&pin.release),
            "{text}"
        );
        // Same release, another build of it.
        let rebuilt = same.replace(&pin.commit_hash, &"0".repeat(40));
        assert!(pin.check(&rebuilt).is_err());
    }

    #[test]
    fn bad_hash_and_unknown_fields_are_refused() {
        let bad_hash = TOOLCHAIN_TABLES.to_owned()
            + r#"
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
            parse_lock(&bad_hash),
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
        let none = TOOLCHAIN_TABLES.to_owned()
            + r#"
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
            parse_lock(&none),
            Err(BuildError::InputsLock { .. })
        ));
    }
}
