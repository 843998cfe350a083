//! Fixtures shared by unit tests.

use std::fs;
use std::path::Path;

/// A TDVF firmware for images the sim TEE measures: Debian's OVMF
/// (scripts/install-deps installs the `ovmf` package).
const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// Writes a minimal image directory `images/<name>` with a metadata.json
/// shaped like the image builder's (plus a field it may add later), whose
/// boot the sim TEE can measure: a real TDVF firmware, a synthetic bzImage.
pub(crate) fn write_image(images: &Path, name: &str, version: &str) {
    let dir = images.join(name);
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("bzImage"),
        dstack_firmware::testing::synthetic_kernel(0x6000),
    )
    .unwrap();
    fs::write(dir.join("initramfs.cpio.gz"), b"i").unwrap();
    fs::copy(OVMF, dir.join("ovmf.fd")).unwrap_or_else(|e| {
        panic!("{OVMF} cannot be copied ({e}): run scripts/install-deps (Debian package ovmf)")
    });
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
