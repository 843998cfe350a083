//! The CA bundle at `/etc/ssl/certs/ca-certificates.crt`.
//!
//! Debian's package ships the roots one per file and builds the bundle in a
//! maintainer script (update-ca-certificates), which never runs here; this
//! does what that script does for the default selection: every
//! `mozilla/*.crt` in name order, each ending in a newline.

use std::fs;
use std::path::Path;

use crate::error::BuildError;

/// Where the package keeps the individual roots.
const MOZILLA_DIR: &str = "usr/share/ca-certificates/mozilla";

/// Concatenates the staged Mozilla roots into one PEM bundle.
pub(crate) fn bundle(root: &Path, package: &str) -> Result<Vec<u8>, BuildError> {
    let dir = root.join(MOZILLA_DIR);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .map_err(|_| BuildError::MissingFile {
            package: package.to_owned(),
            path: format!("/{MOZILLA_DIR}"),
        })?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(BuildError::read(&dir))?;
    files.retain(|p| p.extension().is_some_and(|e| e == "crt"));
    // Byte order of file names, independent of the host's locale.
    files.sort();
    if files.is_empty() {
        return Err(BuildError::MissingFile {
            package: package.to_owned(),
            path: format!("/{MOZILLA_DIR}/*.crt"),
        });
    }
    let mut out = Vec::new();
    for file in files {
        let pem = fs::read(&file).map_err(BuildError::read(&file))?;
        out.extend_from_slice(&pem);
        if !pem.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_concatenated_in_name_order_with_newlines() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(MOZILLA_DIR);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("b.crt"), b"B").unwrap();
        fs::write(dir.join("A.crt"), b"A\n").unwrap();
        fs::write(dir.join("notes.txt"), b"ignored").unwrap();
        assert_eq!(bundle(root.path(), "ca-certificates").unwrap(), b"A\nB\n");
    }

    #[test]
    fn no_roots_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(
            bundle(root.path(), "ca-certificates"),
            Err(BuildError::MissingFile { .. })
        ));
    }
}
