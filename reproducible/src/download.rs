//! Fetching pinned .debs into a cache keyed by their sha256.
//!
//! apt does the network part (`apt-get download NAME=VERSION`, through the
//! host's configured mirrors); trust comes only from the pinned hash, which is
//! checked before any byte of the package is used.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::BuildError;
use crate::inputs::PinnedPackage;

/// A pinned .deb, present and verified in the cache.
#[derive(Debug)]
pub(crate) struct Fetched {
    /// `<cache_dir>/<sha256>.deb`.
    pub(crate) path: PathBuf,
    /// It was already in the cache.
    pub(crate) cached: bool,
}

/// Makes every package in `pkgs` available in `cache_dir`, downloading the
/// missing ones in one apt-get run. Results are in the order of `pkgs`.
pub(crate) fn fetch_all(
    pkgs: &[PinnedPackage],
    cache_dir: &Path,
) -> Result<Vec<Fetched>, BuildError> {
    fs::create_dir_all(cache_dir).map_err(BuildError::write(cache_dir))?;
    let mut cached = Vec::with_capacity(pkgs.len());
    let mut missing = Vec::new();
    for pkg in pkgs {
        let hit = cache_path(cache_dir, pkg).is_file()
            && match verify_sha256(pkg, &cache_path(cache_dir, pkg)) {
                Ok(()) => true,
                // A damaged entry was deleted by the check: fetch it afresh.
                Err(BuildError::Sha256Mismatch { .. }) => false,
                Err(e) => return Err(e),
            };
        if !hit {
            missing.push(pkg);
        }
        cached.push(hit);
    }
    if !missing.is_empty() {
        download(&missing, cache_dir)?;
    }
    Ok(pkgs
        .iter()
        .zip(cached)
        .map(|(pkg, cached)| Fetched {
            path: cache_path(cache_dir, pkg),
            cached,
        })
        .collect())
}

/// Whether `pkg` is in the cache (its hash is checked when it is used).
pub(crate) fn is_cached(cache_dir: &Path, pkg: &PinnedPackage) -> bool {
    cache_path(cache_dir, pkg).is_file()
}

fn cache_path(cache_dir: &Path, pkg: &PinnedPackage) -> PathBuf {
    cache_dir.join(format!("{}.deb", pkg.sha256))
}

/// Downloads `pkgs` with one `apt-get download` (its start-up, reading the
/// package lists, costs more than a small package's transfer), verifies
/// each, and moves it into the cache under its hash.
fn download(pkgs: &[&PinnedPackage], cache_dir: &Path) -> Result<(), BuildError> {
    // apt-get names the files itself (`NAME_VERSION_ARCH.deb`, epochs
    // URL-escaped), so download into an empty private directory and find
    // each package by its name, which cannot contain '_'.
    let partial = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(cache_dir)
        .map_err(BuildError::write(cache_dir))?;
    let specs: Vec<String> = pkgs
        .iter()
        .map(|p| format!("{}={}", p.name, p.version))
        .collect();
    let mut apt = Command::new("apt-get");
    apt.args(["-q", "download"])
        .args(&specs)
        .current_dir(partial.path());
    if let Err(stderr) = crate::tool::run("apt-get", &mut apt)? {
        return Err(BuildError::Download {
            packages: specs.join(" "),
            stderr,
        });
    }
    for pkg in pkgs {
        let downloaded =
            find_deb(partial.path(), &pkg.name).ok_or_else(|| BuildError::DownloadMissing {
                package: pkg.name.clone(),
                dir: partial.path().to_owned(),
            })?;
        verify_sha256(pkg, &downloaded)?;
        let dest = cache_path(cache_dir, pkg);
        fs::rename(&downloaded, &dest).map_err(BuildError::write(&dest))?;
    }
    Ok(())
}

/// The `.deb` of package `name` in `dir`.
fn find_deb(dir: &Path, name: &str) -> Option<PathBuf> {
    let prefix = format!("{name}_");
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(&prefix) && f.ends_with(".deb"))
        })
}

/// Checks `path` against the pinned sha256; on a mismatch the file is
/// deleted, so an unverified package can never be picked up later.
pub(crate) fn verify_sha256(pkg: &PinnedPackage, path: &Path) -> Result<(), BuildError> {
    let actual = sha256_file(path)?;
    if actual == pkg.sha256 {
        return Ok(());
    }
    // Best effort: the mismatch is the error worth reporting, and a file
    // that cannot be removed is re-checked (and refused) on the next use.
    let _ = fs::remove_file(path);
    Err(BuildError::Sha256Mismatch {
        package: pkg.name.clone(),
        expected: pkg.sha256.clone(),
        actual,
        path: path.to_owned(),
    })
}

/// Lowercase hex sha256 of a file, read in chunks.
pub(crate) fn sha256_file(path: &Path) -> Result<String, BuildError> {
    let mut file = fs::File::open(path).map_err(BuildError::read(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BuildError::read(path)(e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::Role;

    fn pin(sha256: &str) -> PinnedPackage {
        PinnedPackage {
            name: "fake".into(),
            version: "1.0".into(),
            sha256: sha256.into(),
            size: 5,
            role: Role::Mkfs,
            dev_only: false,
        }
    }

    #[test]
    fn matching_hash_is_accepted_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("fake.deb");
        fs::write(&deb, b"hello").unwrap();
        let sha = hex::encode(Sha256::digest(b"hello"));
        verify_sha256(&pin(&sha), &deb).unwrap();
        assert!(deb.exists());
    }

    #[test]
    fn wrong_hash_is_refused_and_the_file_removed() {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("fake.deb");
        fs::write(&deb, b"tampered").unwrap();
        let wrong = "0".repeat(64);
        let err = verify_sha256(&pin(&wrong), &deb).unwrap_err();
        match err {
            BuildError::Sha256Mismatch {
                package,
                expected,
                actual,
                path,
            } => {
                assert_eq!(package, "fake");
                assert_eq!(expected, wrong);
                assert_eq!(actual, hex::encode(Sha256::digest(b"tampered")));
                assert_eq!(path, deb);
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(!deb.exists(), "a refused file must not stay on disk");
    }

    #[test]
    fn debs_are_found_by_package_name() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "libc6_2.36_amd64.deb",
            "busybox-static_1%3a1.35_amd64.deb",
            "libc6-dev_2.36_amd64.deb",
        ] {
            fs::write(dir.path().join(f), b"").unwrap();
        }
        let found = |n| find_deb(dir.path(), n).map(|p| p.file_name().unwrap().to_owned());
        assert_eq!(found("libc6").unwrap(), "libc6_2.36_amd64.deb");
        assert_eq!(
            found("busybox-static").unwrap(),
            "busybox-static_1%3a1.35_amd64.deb"
        );
        assert_eq!(found("libc"), None);
    }

    #[test]
    fn damaged_cache_entry_is_deleted_before_refetching() {
        let cache = tempfile::tempdir().unwrap();
        // Pinned to the hash of "good", but the cache holds other bytes: the
        // check removes it; the re-download then fails (no such package), and
        // the damaged file must be gone either way.
        let pkg = PinnedPackage {
            name: "dstack-no-such-package-for-tests".into(),
            ..pin(&hex::encode(Sha256::digest(b"good")))
        };
        let cached = cache.path().join(format!("{}.deb", pkg.sha256));
        fs::write(&cached, b"bad").unwrap();
        assert!(fetch_all(std::slice::from_ref(&pkg), cache.path()).is_err());
        assert!(!cached.exists());
    }
}
