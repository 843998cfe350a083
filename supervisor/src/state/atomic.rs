//! Crash-safe file replacement: write a temporary file, fsync it, rename it
//! over the target, fsync the directory. A reader sees the old or the new
//! content, never a mix, even after power loss (DESIGN §7).

use std::io;
use std::path::Path;

use serde::Serialize;

/// Replaces `path` with `bytes` atomically (mode 0600: state may name secrets).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    dstack_fsutil::write_atomic(path, bytes, 0o600)
}

/// [`write_atomic`] of pretty JSON with a final newline.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    // The replacement itself is tested in dstack-fsutil; here, what this
    // wrapper adds: mode 0600 and JSON with a final newline.
    #[test]
    fn state_is_private_json_with_a_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        write_json_atomic(&path, &serde_json::json!({"a": 1})).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("}\n"), "{text:?}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["a"],
            1
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
