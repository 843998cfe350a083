//! The build record `scripts/build-init` writes beside dstack-init
//! (`dstack-init.build.json`): the binary's sha256 and how it was compiled.
//! An image build copies it into `metadata.json` after checking that it
//! describes this very binary and the toolchain `inputs.lock` pins.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::BuildError;
use crate::inputs;
use crate::manifest::InitBuild;

/// What `scripts/build-init` writes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InitBuildRecord {
    init_sha256: String,
    build: InitBuild,
}

/// Where the build record of the init binary `init` is: `<init>.build.json`.
pub fn record_path(init: &Path) -> PathBuf {
    let mut name = init.file_name().unwrap_or_default().to_os_string();
    name.push(".build.json");
    init.with_file_name(name)
}

/// The build record of `init` (whose bytes are `data`), checked: `None`
/// when the binary has none (not built by `scripts/build-init`).
pub(crate) fn load(init: &Path, data: &[u8]) -> Result<Option<InitBuild>, BuildError> {
    let path = record_path(init);
    if let Err(e) = fs::metadata(&path)
        && e.kind() == io::ErrorKind::NotFound
    {
        return Ok(None);
    }
    let build = read(&path, init, data)?;
    inputs::rust_toolchain()?.check(&build.rustc)?;
    Ok(Some(build))
}

/// The build record at `path` of `init` (whose bytes are `data`), checked
/// to describe this very binary, whatever toolchain it names: another build
/// system (the Yocto layer's) records its own compiler.
pub(crate) fn read(path: &Path, init: &Path, data: &[u8]) -> Result<InitBuild, BuildError> {
    let text = fs::read(path).map_err(BuildError::read(path))?;
    let record: InitBuildRecord =
        serde_json::from_slice(&text).map_err(|source| BuildError::InitRecord {
            path: path.to_owned(),
            source,
        })?;
    let actual = hex::encode(Sha256::digest(data));
    if record.init_sha256 != actual {
        return Err(BuildError::InitRecordMismatch {
            record: path.to_owned(),
            init: init.to_owned(),
            recorded: record.init_sha256,
            actual,
        });
    }
    Ok(record.build)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(init_sha256: &str, rustc: &str) -> String {
        serde_json::json!({
            "init_sha256": init_sha256,
            "build": {
                "rustc": rustc,
                "cargo": "cargo 1.95.0",
                "cargo_lock_sha256": "00".repeat(32),
                "target": "x86_64-unknown-linux-musl",
                "profile": "guest",
                "libseccomp_version": "2.6.0-2",
                "libseccomp_sha256": "11".repeat(32),
                "c_toolchain": "cc (Debian 12.2.0-14+deb12u1) 12.2.0",
            }
        })
        .to_string()
    }

    fn pinned_rustc() -> String {
        let pin = inputs::rust_toolchain().unwrap();
        format!(
            "rustc {0}\ncommit-hash: {1}\nrelease: {0}\n",
            pin.release, pin.commit_hash
        )
    }

    #[test]
    fn the_record_sits_beside_the_binary() {
        assert_eq!(
            record_path(Path::new("/t/guest/dstack-init")),
            Path::new("/t/guest/dstack-init.build.json")
        );
    }

    #[test]
    fn a_matching_record_is_read_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let init = dir.path().join("dstack-init");
        let data = b"\x7fELF init";
        assert!(load(&init, data).unwrap().is_none());
        let sha = hex::encode(Sha256::digest(data));
        fs::write(record_path(&init), record(&sha, &pinned_rustc())).unwrap();
        let build = load(&init, data).unwrap().unwrap();
        assert_eq!(build.profile, "guest");
    }

    #[test]
    fn a_record_of_another_binary_or_toolchain_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let init = dir.path().join("dstack-init");
        let data = b"\x7fELF init";
        fs::write(
            record_path(&init),
            record(&"ab".repeat(32), &pinned_rustc()),
        )
        .unwrap();
        assert!(matches!(
            load(&init, data),
            Err(BuildError::InitRecordMismatch { .. })
        ));
        let sha = hex::encode(Sha256::digest(data));
        let other = pinned_rustc().replace("release: ", "release: 9");
        fs::write(record_path(&init), record(&sha, &other)).unwrap();
        assert!(matches!(
            load(&init, data),
            Err(BuildError::ToolchainMismatch { .. })
        ));
        fs::write(record_path(&init), b"{").unwrap();
        assert!(matches!(
            load(&init, data),
            Err(BuildError::InitRecord { .. })
        ));
    }
}
