//! Blobs (packed build contexts, [`dstack_proto::blob`]) on disk, each in a
//! file named by the SHA-256 hex of its bytes.
//!
//! The CLI uploads a deploy's blobs first, into the upload directory
//! (`<state>/uploads/`); the deploy then links the ones its app-compose
//! measures into the VM's own directory (`<vm>/blobs/`), where the guest
//! fetches them and from which `vm rm` removes them. Keeping them out of
//! the manifest means no manifest read carries megabytes. An upload no
//! deploy used is swept after [`UPLOAD_TTL`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use dstack_proto::blob::{MAX_BLOB_BYTES, is_sha256_hex};
use sha2::{Digest, Sha256};

use super::write_atomic;

/// How long an upload waits for the deploy that uses it.
pub const UPLOAD_TTL: Duration = Duration::from_secs(3600);

/// Why a blob was not stored or linked.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The name is not a SHA-256 in lowercase hex.
    #[error("{0:?} is not a SHA-256 in lowercase hex (64 digits)")]
    BadName(String),
    /// More bytes than any blob may have.
    #[error("blob {sha256} has {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Its name.
        sha256: String,
        /// Its size.
        size: u64,
        /// [`MAX_BLOB_BYTES`].
        limit: u64,
    },
    /// The bytes do not hash to the name they were sent under.
    #[error("the bytes sent as blob {expected} hash to {actual}")]
    Mismatch {
        /// The name.
        expected: String,
        /// The SHA-256 of the bytes.
        actual: String,
    },
    /// A deploy needs a blob that was not uploaded.
    #[error("blob {0} was not uploaded (PUT /v1/blobs/sha256/{0} before deploying)")]
    NotUploaded(String),
    /// Reading or writing a blob file failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BlobError {
    let path = path.to_owned();
    move |source| BlobError::Io {
        action,
        path,
        source,
    }
}

/// Stores `bytes` in `dir` as blob `sha256` after checking that they hash
/// to it, atomically (a reader sees the whole blob or none). Returns its path.
pub fn put(dir: &Path, sha256: &str, bytes: &[u8]) -> Result<PathBuf, BlobError> {
    if !is_sha256_hex(sha256) {
        return Err(BlobError::BadName(sha256.to_owned()));
    }
    let size = bytes.len() as u64;
    if size > MAX_BLOB_BYTES {
        return Err(BlobError::TooLarge {
            sha256: sha256.to_owned(),
            size,
            limit: MAX_BLOB_BYTES,
        });
    }
    let actual = hex::encode(Sha256::digest(bytes));
    if actual != sha256 {
        return Err(BlobError::Mismatch {
            expected: sha256.to_owned(),
            actual,
        });
    }
    fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    let path = dir.join(sha256);
    write_atomic(&path, bytes).map_err(io_error("write", &path))?;
    Ok(path)
}

/// The path of blob `sha256` in `dir`, if it is there.
pub fn find(dir: &Path, sha256: &str) -> Option<PathBuf> {
    if !is_sha256_hex(sha256) {
        return None;
    }
    let path = dir.join(sha256);
    path.is_file().then_some(path)
}

/// Makes the uploaded blob `sha256` one of the VM's, in `to`: a hard link
/// (no copy of the bytes), or a copy where the two directories are on
/// different filesystems.
pub fn link(uploads: &Path, sha256: &str, to: &Path) -> Result<(), BlobError> {
    let from = find(uploads, sha256).ok_or_else(|| BlobError::NotUploaded(sha256.to_owned()))?;
    fs::create_dir_all(to).map_err(io_error("create", to))?;
    let target = to.join(sha256);
    match fs::hard_link(&from, &target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(_) => {
            let bytes = fs::read(&from).map_err(io_error("read", &from))?;
            write_atomic(&target, &bytes).map_err(io_error("write", &target))
        }
    }
}

/// Removes uploads older than `ttl` (a CLI that uploaded and never
/// deployed) and left-over temporary files; returns how many went.
pub fn sweep(dir: &Path, ttl: Duration, now: SystemTime) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .map(|modified| now.duration_since(modified).unwrap_or_default() > ttl)
            .unwrap_or(true);
        if old && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn a_blob_is_stored_under_its_hash_and_nothing_else_is() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = dir.path().join("uploads");
        let bytes = b"a context tar";
        let path = put(&uploads, &name(bytes), bytes).unwrap();
        assert_eq!(fs::read(&path).unwrap(), bytes);
        assert_eq!(find(&uploads, &name(bytes)), Some(path));
        // Stored again (a second deploy of the same context): same file.
        put(&uploads, &name(bytes), bytes).unwrap();

        let err = put(&uploads, &name(b"other"), bytes).unwrap_err();
        assert!(
            matches!(&err, BlobError::Mismatch { actual, .. } if *actual == name(bytes)),
            "{err}"
        );
        assert!(find(&uploads, &name(b"other")).is_none(), "nothing kept");
        for bad in ["../../etc/passwd", &name(bytes).to_uppercase(), ""] {
            assert!(matches!(
                put(&uploads, bad, bytes),
                Err(BlobError::BadName(_))
            ));
            assert!(find(&uploads, bad).is_none());
        }
        let big = vec![0u8; usize::try_from(MAX_BLOB_BYTES).unwrap() + 1];
        assert!(matches!(
            put(&uploads, &name(&big), &big),
            Err(BlobError::TooLarge { .. })
        ));
        // No temporary file is left behind by a refusal.
        assert_eq!(fs::read_dir(&uploads).unwrap().count(), 1);
    }

    #[test]
    fn a_deploy_links_its_blobs_and_old_uploads_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let (uploads, vm) = (dir.path().join("uploads"), dir.path().join("vm/blobs"));
        let bytes = b"context";
        put(&uploads, &name(bytes), bytes).unwrap();
        link(&uploads, &name(bytes), &vm).unwrap();
        assert_eq!(fs::read(vm.join(name(bytes))).unwrap(), bytes);
        let err = link(&uploads, &name(b"missing"), &vm).unwrap_err();
        assert!(matches!(err, BlobError::NotUploaded(_)));
        assert!(err.to_string().contains("PUT /v1/blobs/sha256/"), "{err}");

        // Fresh uploads stay; an hour later they go, and the VM's link stays.
        let now = SystemTime::now();
        assert_eq!(sweep(&uploads, UPLOAD_TTL, now), 0);
        assert_eq!(sweep(&uploads, UPLOAD_TTL, now + 2 * UPLOAD_TTL), 1);
        assert!(find(&uploads, &name(bytes)).is_none());
        assert_eq!(fs::read(vm.join(name(bytes))).unwrap(), bytes);
        assert_eq!(sweep(&dir.path().join("none"), UPLOAD_TTL, now), 0);
    }
}
