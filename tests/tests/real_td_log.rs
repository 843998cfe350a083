//! The firmware our image ships, measured by our model, against a boot event
//! log from a real TDX machine running dstack (`shared/testdata/ccel.bin`):
//! every RTMR0/RTMR1 event that depends only on the firmware and the VM's
//! memory — the TD HOB (1 GiB), the CFV, the five secure-boot variables, the
//! separators, BootOrder and Boot0000, and the boot-service actions — has
//! the real log's digest. The ACPI tables (another QEMU), the kernel and
//! RTMR2 (not in that log) are that machine's own.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::path::PathBuf;

use dstack_attest::eventlog::parse_ccel;
use dstack_e2e::harness::{newest_image, repo_root};
use dstack_firmware::testing::{acpi_tables, acpi_tables_blob};
use dstack_firmware::{BootFiles, Options, VmShape, measure};

fn testdata(name: &str) -> PathBuf {
    let dir = std::env::var_os("DSTACK_TESTDATA")
        .map_or_else(|| repo_root().join("../shared/testdata"), PathBuf::from);
    assert!(
        dir.is_dir(),
        "testdata not found: set DSTACK_TESTDATA (scripts/find-testdata prints it)"
    );
    dir.join(name)
}

#[test]
fn the_shipped_firmware_reproduces_a_real_tds_firmware_events() {
    let image = newest_image();
    let read = |name: &str| std::fs::read(image.join(name)).unwrap();
    let real = parse_ccel(&std::fs::read(testdata("ccel.bin")).unwrap()).unwrap();

    let ours = measure(
        &BootFiles {
            firmware: &read("ovmf.fd"),
            kernel: &read("bzImage"),
            initrd: b"initrd",
            cmdline: "console=ttyS0",
        },
        &VmShape {
            vcpus: 1,
            memory_mb: 1024,
        },
        &acpi_tables(acpi_tables_blob()),
        &Options::default(),
    )
    .unwrap();

    // Ours has RTMR2 events the real log lacks; match the rest by position.
    let ours: Vec<_> = ours.events.iter().filter(|e| e.imr != 2).collect();
    let real: Vec<_> = real.iter().filter(|e| e.imr < 2).collect();
    assert_eq!(ours.len(), real.len(), "event counts (RTMR0-1)");
    let mut compared = 0;
    for (i, (ours, real)) in ours.iter().zip(&real).enumerate() {
        assert_eq!(
            (ours.imr, ours.event_type),
            (real.imr, real.event_type),
            "event {i}: register and type"
        );
        let machine_specific = !ours.event.is_empty() // the three ACPI blobs
            || ours.event_type == dstack_attest::eventlog::EV_EFI_BOOT_SERVICES_APPLICATION;
        if machine_specific {
            continue;
        }
        assert_eq!(
            hex::encode(&ours.digest),
            hex::encode(&real.digest),
            "event {i} (rtmr{} type {:#x}) differs from the real TD's",
            ours.imr,
            ours.event_type
        );
        compared += 1;
    }
    assert_eq!(
        compared, 14,
        "TD HOB, CFV, 5 variables, 2 separators, BootOrder, Boot0000, 3 actions"
    );
}
