//! Fixtures shared by unit tests.

use std::fs;
use std::path::Path;

/// Writes a minimal image directory `images/<name>` with a metadata.json
/// shaped like the image builder's (plus a field it may add later).
pub(crate) fn write_image(images: &Path, name: &str, version: &str) {
    let dir = images.join(name);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("bzImage"), b"k").unwrap();
    fs::write(dir.join("initramfs.cpio.gz"), b"i").unwrap();
    fs::write(dir.join("ovmf.fd"), b"f").unwrap();
    let meta = serde_json::json!({
        "name": name, "version": version, "kernel": "bzImage",
        "initrd": "initramfs.cpio.gz", "bios": "ovmf.fd",
        "cmdline": "console=ttyS0", "is_dev": true, "inputs": {"future": 1},
    });
    fs::write(dir.join("metadata.json"), meta.to_string()).unwrap();
    fs::write(dir.join("digest.txt"), format!("{:064x}\n", version.len())).unwrap();
}

/// A minimal valid app-compose.json.
pub(crate) fn app_compose(name: &str) -> String {
    dstack_compose::app_compose_from_yaml(name, "services:\n  web:\n    image: busybox\n").unwrap()
}
