//! A second, independent check: MRTD and RTMR0-2 for the real OVMF and the
//! synthetic kernel, recomputed here with sha2 straight from the documented
//! steps (UPSTREAM.md §8, the TDX module ABI, QEMU's Linux loader, EDK II's
//! measurements), with every layout fact written out by hand rather than
//! taken from the crate.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

mod common;

use common::{CMDLINE, INITRD_LEN, KERNEL_LEN};
use dstack_firmware::{Options, PageAddOrder, TdMeasurements, VmShape, mr_td};
use sha2::{Digest, Sha384};

fn sha384(data: &[u8]) -> [u8; 48] {
    Sha384::digest(data).into()
}

/// `mr = SHA384(mr || digest)` from 48 zero bytes.
fn fold(digests: &[[u8; 48]]) -> [u8; 48] {
    digests
        .iter()
        .fold([0; 48], |mr, d| sha384(&[&mr[..], &d[..]].concat()))
}

fn measured(memory_mb: u64) -> TdMeasurements {
    let acpi = common::acpi_tables(common::acpi_tables_blob());
    common::parsed_ovmf()
        .measure(
            &common::synthetic_kernel(KERNEL_LEN),
            &common::synthetic_initrd(INITRD_LEN),
            CMDLINE,
            &VmShape {
                vcpus: 2,
                memory_mb,
            },
            &acpi,
            &Options::default(),
        )
        .unwrap()
}

/// Debian OVMF 2022.11's TDVF sections: (data offset, raw size, GPA,
/// memory size, extended), as its metadata lists them.
const SECTIONS: [(usize, usize, u64, u64, bool); 6] = [
    (0x2_0000, 0x1E_0000, 0xFFE2_0000, 0x1E_0000, true), // BFV
    (0, 0x2_0000, 0xFFE0_0000, 0x2_0000, false),         // CFV
    (0, 0, 0x81_0000, 0x1_0000, false),                  // TempMem
    (0, 0, 0x80_B000, 0x2000, false),                    // TempMem
    (0, 0, 0x80_9000, 0x2000, false),                    // TD_HOB
    (0, 0, 0x80_0000, 0x6000, false),                    // TempMem
];

#[test]
fn mrtd_by_the_tdx_module_abi() {
    let fw = common::ovmf();
    let record = |name: &[u8], gpa: u64| {
        let mut block = [0u8; 128];
        block[..name.len()].copy_from_slice(name);
        block[16..24].copy_from_slice(&gpa.to_le_bytes());
        block
    };
    let mut h = Sha384::new();
    for (offset, _raw, gpa, size, extended) in SECTIONS {
        for page in 0..size / 0x1000 {
            let page_gpa = gpa + page * 0x1000;
            h.update(record(b"MEM.PAGE.ADD", page_gpa));
            if extended {
                let at = offset + usize::try_from(page * 0x1000).unwrap();
                for chunk in 0..16u64 {
                    h.update(record(b"MR.EXTEND", page_gpa + chunk * 256));
                    let c = at + usize::try_from(chunk * 256).unwrap();
                    h.update(&fw[c..c + 256]);
                }
            }
        }
    }
    let expected: [u8; 48] = h.finalize().into();
    assert_eq!(mr_td(&fw, PageAddOrder::SinglePass).unwrap(), expected);
}

#[test]
fn rtmr2_is_the_utf16_cmdline_then_the_initrd() {
    let measured_cmdline = format!("{CMDLINE} initrd=initrd");
    let mut utf16: Vec<u8> = measured_cmdline
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    utf16.extend_from_slice(&[0, 0]);
    let initrd = common::synthetic_initrd(INITRD_LEN);
    let expected = fold(&[sha384(&utf16), sha384(&initrd)]);
    assert_eq!(measured(1536).rtmr[2], expected);
}

#[test]
fn rtmr1_is_the_patched_kernel_then_the_fixed_events() {
    for (memory_mb, below_4g) in [(1536u64, 1536u32 << 20), (4096, 0x8000_0000)] {
        // QEMU's header patch for a protocol 2.15 kernel that may have its
        // initrd anywhere below 4 GiB, with 0x28000 bytes of ACPI data.
        let initrd_len = u32::try_from(INITRD_LEN).unwrap();
        let initrd_max = below_4g - 0x28000 - 1;
        let initrd_addr = (initrd_max - initrd_len) & !0xFFF;
        let mut k = common::synthetic_kernel(KERNEL_LEN);
        k[0x210] = 0xB0; // type_of_loader
        k[0x211] |= 0x80; // CAN_USE_HEAP
        k[0x224..0x226].copy_from_slice(&0xFE00u16.to_le_bytes()); // heap_end_ptr
        k[0x228..0x22C].copy_from_slice(&0x2_0000u32.to_le_bytes()); // cmd_line_ptr
        k[0x218..0x21C].copy_from_slice(&initrd_addr.to_le_bytes());
        k[0x21C..0x220].copy_from_slice(&initrd_len.to_le_bytes());

        // Authenticode: headers (0..0x1000) without CheckSum (optional
        // header at 0x58, +64) and the certificate directory entry (+112 +
        // 4*8), then the sections in file order; nothing trails them.
        let checksum = 0x58 + 64;
        let cert_dir = 0x58 + 112 + 32;
        let authenticode = sha384(
            &[
                &k[..checksum],
                &k[checksum + 4..cert_dir],
                &k[cert_dir + 8..0x1000],
                &k[0x1000..0x2000],
                &k[0x2000..],
            ]
            .concat(),
        );
        let expected = fold(&[
            authenticode,
            sha384(b"Calling EFI Application from Boot Option"),
            sha384(&[0; 4]),
            sha384(b"Exit Boot Services Invocation"),
            sha384(b"Exit Boot Services Returned with Success"),
        ]);
        assert_eq!(measured(memory_mb).rtmr[1], expected, "{memory_mb} MiB");
    }
}

/// `UEFI_VARIABLE_DATA` for an absent variable.
fn empty_variable(guid: [u8; 16], name: &str) -> Vec<u8> {
    let mut out = guid.to_vec();
    out.extend_from_slice(&(name.len() as u64).to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend(name.encode_utf16().flat_map(u16::to_le_bytes));
    out
}

#[test]
fn rtmr0_is_hob_cfv_variables_separator_acpi_and_boot_variables() {
    let fw = common::ovmf();
    let memory: u64 = 1536 << 20;

    // The TD HOB: a PHIT, then one resource per RAM range, the TD_HOB and
    // TempMem sections accepted (type 0), the rest unaccepted (type 7).
    let ranges: [(u32, u64, u64); 8] = [
        (7, 0, 0x80_0000),
        (0, 0x80_0000, 0x6000),
        (7, 0x80_6000, 0x3000),
        (0, 0x80_9000, 0x2000),
        (0, 0x80_B000, 0x2000),
        (7, 0x80_D000, 0x3000),
        (0, 0x81_0000, 0x1_0000),
        (7, 0x82_0000, memory - 0x82_0000),
    ];
    let mut hob = Vec::new();
    hob.extend_from_slice(&[1, 0, 56, 0, 0, 0, 0, 0]);
    hob.extend_from_slice(&9u32.to_le_bytes());
    hob.extend_from_slice(&[0; 4 + 32]);
    let end_of_list = 0x80_9000 + 56 + 48 * ranges.len() as u64 + 8;
    hob.extend_from_slice(&end_of_list.to_le_bytes());
    for (kind, start, len) in ranges {
        hob.extend_from_slice(&[3, 0, 48, 0, 0, 0, 0, 0]);
        hob.extend_from_slice(&[0; 16]);
        hob.extend_from_slice(&kind.to_le_bytes());
        hob.extend_from_slice(&7u32.to_le_bytes());
        hob.extend_from_slice(&start.to_le_bytes());
        hob.extend_from_slice(&len.to_le_bytes());
    }

    let global = [
        0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b,
        0x8c,
    ];
    let security = [
        0xcb, 0xb2, 0x19, 0xd7, 0x3a, 0x3d, 0x96, 0x45, 0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65,
        0x6f,
    ];
    // Boot0000: ACTIVE|HIDDEN|APP, a 44-byte path, "UiApp", then the DXE
    // volume (7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1) and UiApp's file
    // (462caa21-7614-4503-836e-8ab6f4662331), as this firmware has them.
    let mut boot0000 = vec![0x09, 0x01, 0, 0, 0x2C, 0];
    boot0000.extend("UiApp\0".encode_utf16().flat_map(u16::to_le_bytes));
    boot0000.extend_from_slice(&[0x04, 0x07, 0x14, 0x00]);
    boot0000.extend_from_slice(&[
        0xc9, 0xbd, 0xb8, 0x7c, 0xeb, 0xf8, 0x34, 0x4f, 0xaa, 0xea, 0x3e, 0xe4, 0xaf, 0x65, 0x16,
        0xa1,
    ]);
    boot0000.extend_from_slice(&[0x04, 0x06, 0x14, 0x00]);
    boot0000.extend_from_slice(&[
        0x21, 0xaa, 0x2c, 0x46, 0x14, 0x76, 0x03, 0x45, 0x83, 0x6e, 0x8a, 0xb6, 0xf4, 0x66, 0x23,
        0x31,
    ]);
    boot0000.extend_from_slice(&[0x7F, 0xFF, 0x04, 0x00]);

    let acpi = common::acpi_tables(common::acpi_tables_blob());
    let expected = fold(&[
        sha384(&hob),
        sha384(&fw[..0x2_0000]),
        sha384(&empty_variable(global, "SecureBoot")),
        sha384(&empty_variable(global, "PK")),
        sha384(&empty_variable(global, "KEK")),
        sha384(&empty_variable(security, "db")),
        sha384(&empty_variable(security, "dbx")),
        sha384(&[0; 4]),
        sha384(&acpi.loader),
        sha384(&acpi.rsdp),
        sha384(&acpi.tables),
        sha384(&[0, 0]),
        sha384(&boot0000),
    ]);
    assert_eq!(measured(1536).rtmr[0], expected);
}
