//! Inputs shared by the integration tests and by the example that writes
//! them out for upstream's dstack-mr (the known-answer oracle): the real
//! OVMF, and a synthetic kernel, initrd and ACPI tables generated
//! byte-for-byte from code.

#![allow(dead_code)]
// each test binary uses a different subset
// Fixture sizes are small constants: the narrowing casts cannot truncate.
#![allow(clippy::cast_possible_truncation)]

use std::sync::OnceLock;

use dstack_firmware::Firmware;
use sha2::{Digest, Sha256};

/// The firmware our image ships as `ovmf.fd`: Debian bookworm's ovmf
/// 2022.11-6+deb12u2 (scripts/install-deps installs it).
pub(crate) const OVMF_PATH: &str = "/usr/share/ovmf/OVMF.fd";
/// SHA-256 of that file.
pub(crate) const OVMF_SHA256: &str =
    "7b456907dd0786d415999e801a1ac4637b8ed4d7cf5378cfc6edbe5e574dd773";

/// The real OVMF; fails (never skips) when it is missing or another build.
pub(crate) fn ovmf() -> Vec<u8> {
    let bytes = std::fs::read(OVMF_PATH).unwrap_or_else(|e| {
        panic!("{OVMF_PATH} cannot be read ({e}): run scripts/install-deps (Debian package ovmf)")
    });
    let digest = hex::encode(Sha256::digest(&bytes));
    assert_eq!(
        digest, OVMF_SHA256,
        "{OVMF_PATH} is not the firmware these tests know (ovmf 2022.11-6+deb12u2): \
         the known answers and real-log comparisons would not apply"
    );
    bytes
}

/// The real OVMF, parsed once per test binary: parsing decompresses its DXE
/// volume, the slow part of a measurement.
pub(crate) fn parsed_ovmf() -> &'static Firmware {
    static PARSED: OnceLock<Firmware> = OnceLock::new();
    PARSED.get_or_init(|| Firmware::parse(&ovmf()).unwrap())
}

/// The command line passed to QEMU's `-append`.
pub(crate) const CMDLINE: &str = "console=ttyS0 root=/dev/vda1 ro panic=1";

/// Memory sizes (MiB) of the known answers: one below 2 GiB, one above
/// QEMU's 0xB0000000 low-memory threshold.
pub(crate) const MEMORY_MB: [u64; 2] = [1536, 4096];

#[allow(unused_imports)] // each test binary uses a different subset
pub(crate) use dstack_firmware::testing::{
    acpi_tables, acpi_tables_blob, filler, synthetic_initrd, synthetic_kernel,
};

/// Length of the known answers' kernel.
pub(crate) const KERNEL_LEN: usize = 0x6000;
/// Length of the known answers' initrd.
pub(crate) const INITRD_LEN: usize = 0x1_0000;
