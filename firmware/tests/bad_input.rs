//! Bad inputs give named errors, never panics.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

mod common;

use common::{CMDLINE, INITRD_LEN, KERNEL_LEN};
use dstack_firmware::{
    AcpiTables, BootFiles, FirmwareError, Options, PageAddOrder, TdMeasurements, VmShape, measure,
    mr_td,
};

const SHAPE: VmShape = VmShape {
    vcpus: 2,
    memory_mb: 1536,
};

fn acpi() -> AcpiTables {
    common::acpi_tables(common::acpi_tables_blob())
}

/// What a test replaces in the real OVMF / synthetic kernel and initrd.
#[derive(Default)]
struct Swap<'a> {
    firmware: Option<&'a [u8]>,
    kernel: Option<&'a [u8]>,
    initrd: Option<&'a [u8]>,
    cmdline: Option<&'a str>,
}

fn measure_with(
    swap: Swap<'_>,
    shape: &VmShape,
    acpi: &AcpiTables,
) -> Result<TdMeasurements, FirmwareError> {
    let kernel = common::synthetic_kernel(KERNEL_LEN);
    let initrd = common::synthetic_initrd(INITRD_LEN);
    let (kernel, initrd, cmdline) = (
        swap.kernel.unwrap_or(&kernel),
        swap.initrd.unwrap_or(&initrd),
        swap.cmdline.unwrap_or(CMDLINE),
    );
    let options = Options::default();
    match swap.firmware {
        Some(firmware) => {
            let files = BootFiles {
                firmware,
                kernel,
                initrd,
                cmdline,
            };
            measure(&files, shape, acpi, &options)
        }
        // The real OVMF, parsed once: decompressing it is the slow part.
        None => common::parsed_ovmf().measure(kernel, initrd, cmdline, shape, acpi, &options),
    }
}

#[test]
fn firmware_without_tdvf_metadata() {
    let ovmf = common::ovmf();
    // Not a firmware at all; and the real one with its footer GUID broken.
    let mut broken_footer = ovmf.clone();
    let footer = broken_footer.len() - 32 - 16;
    broken_footer[footer] ^= 0xFF;
    for firmware in [vec![0xFF; 2 << 20], broken_footer] {
        assert!(matches!(
            mr_td(&firmware, PageAddOrder::SinglePass),
            Err(FirmwareError::NoTdvfMetadata { .. })
        ));
        assert!(matches!(
            measure_with(
                Swap {
                    firmware: Some(&firmware),
                    ..Swap::default()
                },
                &SHAPE,
                &acpi()
            ),
            Err(FirmwareError::NoTdvfMetadata { .. })
        ));
    }
}

#[test]
fn truncated_firmware() {
    let ovmf = common::ovmf();
    // The front half: no footer table at its end.
    assert!(matches!(
        mr_td(&ovmf[..ovmf.len() / 2], PageAddOrder::SinglePass),
        Err(FirmwareError::NoTdvfMetadata { .. })
    ));
    // The last 4 KiB: footer and descriptor intact, the sections' data gone.
    assert!(matches!(
        mr_td(&ovmf[ovmf.len() - 0x1000..], PageAddOrder::SinglePass),
        Err(FirmwareError::BadSection { index: 0, .. })
    ));
    // The last 2 KiB: the descriptor would start before the image.
    assert!(matches!(
        mr_td(&ovmf[ovmf.len() - 0x800..], PageAddOrder::SinglePass),
        Err(FirmwareError::BadTdvfDescriptor { .. })
    ));
    for len in [0, 1, 31, 32, 50] {
        assert!(matches!(
            mr_td(&ovmf[ovmf.len() - len..], PageAddOrder::SinglePass),
            Err(FirmwareError::NoTdvfMetadata { .. })
        ));
    }
}

#[test]
fn corrupt_metadata_bytes_never_panic() {
    let ovmf = common::ovmf();
    // Every byte of the footer table and TDVF descriptor, flipped in turn.
    let descriptor = ovmf.len() - 0x840;
    let regions = [
        ovmf.len() - 32 - 136..ovmf.len() - 32,
        descriptor..descriptor + 16 + 6 * 32,
    ];
    for at in regions.into_iter().flatten() {
        let mut firmware = ovmf.clone();
        firmware[at] ^= 0xFF;
        let _ = mr_td(&firmware, PageAddOrder::SinglePass);
    }
}

#[test]
fn kernel_that_is_not_a_pe_image() {
    // A Linux setup header without the PE/COFF header of an EFI stub.
    let mut no_pe = common::synthetic_kernel(KERNEL_LEN);
    no_pe[..2].copy_from_slice(b"XX");
    let result = measure_with(
        Swap {
            kernel: Some(&no_pe),
            ..Swap::default()
        },
        &SHAPE,
        &acpi(),
    );
    assert!(
        matches!(result, Err(FirmwareError::NotPeKernel { .. })),
        "{result:?}"
    );
    // Not a Linux kernel at all, and too short to be one.
    let elf = common::filler(KERNEL_LEN, 9);
    for kernel in [&elf[..], &elf[..0x100], &[][..]] {
        let result = measure_with(
            Swap {
                kernel: Some(kernel),
                ..Swap::default()
            },
            &SHAPE,
            &acpi(),
        );
        assert!(
            matches!(result, Err(FirmwareError::NotLinuxKernel { .. })),
            "{result:?}"
        );
    }
}

#[test]
fn vm_and_initrd_that_qemu_refuses() {
    let result = measure_with(
        Swap::default(),
        &VmShape {
            vcpus: 2,
            memory_mb: 0,
        },
        &acpi(),
    );
    assert!(matches!(result, Err(FirmwareError::BadMemorySize { .. })));
    let result = measure_with(
        Swap::default(),
        &VmShape {
            vcpus: 2,
            memory_mb: u64::MAX,
        },
        &acpi(),
    );
    assert!(matches!(result, Err(FirmwareError::BadMemorySize { .. })));
    // The firmware's TempMem sections end above 8 MiB.
    let result = measure_with(
        Swap::default(),
        &VmShape {
            vcpus: 2,
            memory_mb: 8,
        },
        &acpi(),
    );
    assert!(matches!(
        result,
        Err(FirmwareError::SectionOutsideRam { .. })
    ));
    // 17 MiB of initrd do not fit below 16 MiB of RAM.
    let initrd = common::filler(17 << 20, 3);
    let result = measure_with(
        Swap {
            initrd: Some(&initrd),
            ..Swap::default()
        },
        &VmShape {
            vcpus: 2,
            memory_mb: 16,
        },
        &acpi(),
    );
    assert!(
        matches!(result, Err(FirmwareError::InitrdTooLarge { .. })),
        "{result:?}"
    );
    let result = measure_with(
        Swap {
            cmdline: Some("a\0b"),
            ..Swap::default()
        },
        &SHAPE,
        &acpi(),
    );
    assert!(matches!(result, Err(FirmwareError::CmdlineHasNul)));
}

#[test]
fn acpi_loader_that_ovmf_refuses() {
    let mut bad = acpi();
    bad.loader.truncate(100);
    let result = measure_with(Swap::default(), &SHAPE, &bad);
    assert!(
        matches!(result, Err(FirmwareError::BadAcpiLoader { .. })),
        "{result:?}"
    );
    bad.loader = vec![0; 4096];
    let result = measure_with(Swap::default(), &SHAPE, &bad);
    assert!(
        matches!(result, Err(FirmwareError::BadAcpiLoader { .. })),
        "{result:?}"
    );
}

#[test]
fn errors_say_what_is_wrong() {
    let err = mr_td(&[0; 64], PageAddOrder::SinglePass).unwrap_err();
    assert_eq!(
        err.to_string(),
        "firmware has no TDVF metadata: no OVMF footer table GUID before the reset vector"
    );
    let no_pe = common::filler(KERNEL_LEN, 9);
    let err = measure_with(
        Swap {
            kernel: Some(&no_pe),
            ..Swap::default()
        },
        &SHAPE,
        &acpi(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "kernel is not a bootable Linux image: no \"HdrS\" setup header"
    );
}
