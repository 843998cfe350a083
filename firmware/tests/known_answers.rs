//! Known answers from upstream's own measurement tool.
//!
//! Obtained with upstream dstack's `dstack-mr` library (Dstack-TEE/dstack
//! commit 312dc605, `dstack/dstack-mr`), built from that tree and driven by
//! a small program calling `Machine::builder()...measure_with_logs()` with
//! `cpu_count 2`, `root_verity true`, `two_pass_add_pages` false and true, a
//! `dstack-acpi-tables` on PATH that prints `common::acpi_tables_blob()`,
//! and these inputs, written by `examples/write_oracle_inputs.rs`:
//! - firmware: /usr/share/ovmf/OVMF.fd (Debian ovmf 2022.11-6+deb12u2);
//! - kernel: `common::synthetic_kernel(0x6000)`;
//! - initrd: `common::synthetic_initrd(0x10000)`;
//! - kernel_cmdline: `common::CMDLINE` + `" initrd=initrd"` (upstream's
//!   `measured_kernel_cmdline`: the firmware appends it, so ours takes QEMU's
//!   `-append` string and appends it itself);
//! - memory_size: 1536 MiB and 4096 MiB.
//!
//! Upstream hard-codes the CFV digest of dstack's own firmware (`344bc51c…`)
//! where this crate measures the CFV of the firmware it is given, so RTMR0
//! is compared event by event, and as a whole with that one digest swapped.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

mod common;

use common::{CMDLINE, INITRD_LEN, KERNEL_LEN, MEMORY_MB};
use dstack_firmware::{BootFiles, Options, PageAddOrder, TdMeasurements, VmShape, measure, mr_td};

const MRTD_SINGLE_PASS: &str = "4c7206f0f483c524f12c366c711e9049030a8d47c471ee5aa9c4999a08de4057fb887fed0744d5631a212967fb231c47";
const MRTD_TWO_PASS: &str = "acccbcc870a381adab0d3919d90a7f268ac3b0364771f202ed4bb4e892d045b33db3b32e6924cba830a724eed443f7e1";

/// Upstream's hard-coded CFV digest (dstack's firmware, not Debian's).
const UPSTREAM_CFV: &str = "344bc51c980ba621aaa00da3ed7436f7d6e549197dfe699515dfa2c6583d95e6412af21c097d473155875ffd561d6790";

/// Upstream's RTMR0 log, 1536 MiB: TD HOB, CFV, SecureBoot, PK, KEK, db,
/// dbx, separator, ACPI loader, RSDP, tables, BootOrder, Boot0000.
const RTMR0_LOG_1536: [&str; 13] = [
    "7e929445d167e52109118269e26dacd9325bf189ff124e45701fd83b3a02fde04255cc34f0f4fd385077c330fccf2245",
    UPSTREAM_CFV,
    "9dc3a1f80bcec915391dcda5ffbb15e7419f77eab462bbf72b42166fb70d50325e37b36f93537a863769bcf9bedae6fb",
    "6f2e3cbc14f9def86980f5f66fd85e99d63e69a73014ed8a5633ce56eca5b64b692108c56110e22acadcef58c3250f1b",
    "d607c0efb41c0d757d69bca0615c3a9ac0b1db06c557d992e906c6b7dee40e0e031640c7bfd7bcd35844ef9edeadc6f9",
    "08a74f8963b337acb6c93682f934496373679dd26af1089cb4eaf0c30cf260a12e814856385ab8843e56a9acea19e127",
    "18cc6e01f0c6ea99aa23f8a280423e94ad81d96d0aeb5180504fc0f7a40cb3619dd39bd6a95ec1680a86ed6ab0f9828d",
    "394341b7182cd227c5c6b07ef8000cdfd86136c4292b8e576573ad7ed9ae41019f5818b4b971c9effc60e1ad9f1289f0",
    "01519c7bf56860f7d8572702dab091e93097090478af9dbc597268b8c474102ab180cc07c36c6f562062f7fc4b93930b",
    "351fca4cd804589d03a6fab6e79e659a4aaf39b58eab50b14668a41528f05933100802bf2f8b447db36d4e8ce42f19db",
    "cf4bacf85503bd922db0c9653a2a1a8dcf2c254669c978877b152e0a3cddc9687fac19d0bc1cfb8986dc9cbcaeb2115f",
    "1dd6f7b457ad880d840d41c961283bab688e94e4b59359ea45686581e90feccea3c624b1226113f824f315eb60ae0a7c",
    "23ada07f5261f12f34a0bd8e46760962d6b4d576a416f1fea1c64bc656b1d28eacf7047ae6e967c58fd2a98bfa74c298",
];
/// The TD HOB digest at 4096 MiB; the rest of the log is as at 1536 MiB.
const TD_HOB_4096: &str = "5b684faf8d02a733945f821d9cdd170802e72103977acf66949c9382500283adc90cbec57f8e7653f8bee1cab83689de";

/// Upstream's registers per memory size: (RTMR0, RTMR1, RTMR2).
const REGISTERS: [(u64, [&str; 3]); 2] = [
    (
        1536,
        [
            "78af56710df1427b963039670a166fd6dfe58a5310a76e0793f714f6d70be0d244d44ce885263ee7ffcd92dfc596d900",
            "4d4f8575075b23ed602a3ee3f684ef856369c70fe2fdadd96db90c7e5a9b1b1f6cad85325f2ffb579d8dd8eed6461229",
            "d7659741db3ce526c34a3417982f4dd001a788240839b4718bf59357cd6d9a833ec2b32f576c95a6f7045afe968e1753",
        ],
    ),
    (
        4096,
        [
            "4bf9578ba4cdc51cc6eb5f4605ecb832c3bf65de0cd5944fa1afe1ddc42708e2fe8f89cdaab4cf44bb8c24b762a59bed",
            "7350e6116ea20ce749c5625d82b7ef1449fa200d18742e17f98a953cdcaa2cff00db1011428ef570c9a84aaa5ef7837c",
            "d7659741db3ce526c34a3417982f4dd001a788240839b4718bf59357cd6d9a833ec2b32f576c95a6f7045afe968e1753",
        ],
    ),
];
/// Upstream's kernel (Authenticode) digests per memory size, RTMR1's first.
const KERNEL_DIGEST: [(u64, &str); 2] = [
    (
        1536,
        "c8b91c11d20af44b1bac20652d7b593dc8c96f522fb82777914912e99e7074a4000378d7a4d429f82ce144726de04cc6",
    ),
    (
        4096,
        "79961704260681717f8f3f69c15bf49c270fdfaedf209644dad2590aec9cbbe948b54108f9165185669d051cfda81e0a",
    ),
];

fn measured(memory_mb: u64) -> TdMeasurements {
    let firmware = common::ovmf();
    let kernel = common::synthetic_kernel(KERNEL_LEN);
    let initrd = common::synthetic_initrd(INITRD_LEN);
    let files = BootFiles {
        firmware: &firmware,
        kernel: &kernel,
        initrd: &initrd,
        cmdline: CMDLINE,
    };
    let shape = VmShape {
        vcpus: 2,
        memory_mb,
    };
    let acpi = common::acpi_tables(common::acpi_tables_blob());
    // The public entry point once, the parsed firmware (same result, no
    // second decompression) after that.
    static DIRECT: std::sync::Once = std::sync::Once::new();
    let mut result = None;
    DIRECT.call_once(|| result = Some(measure(&files, &shape, &acpi, &Options::default())));
    result
        .unwrap_or_else(|| {
            common::parsed_ovmf().measure(
                &kernel,
                &initrd,
                CMDLINE,
                &shape,
                &acpi,
                &Options::default(),
            )
        })
        .unwrap()
}

fn rtmr_digests(m: &TdMeasurements, imr: u32) -> Vec<String> {
    m.events
        .iter()
        .filter(|e| e.imr == imr)
        .map(|e| hex::encode(&e.digest))
        .collect()
}

#[test]
fn mrtd_matches_upstream_in_both_orders() {
    let firmware = common::ovmf();
    assert_eq!(
        hex::encode(mr_td(&firmware, PageAddOrder::SinglePass).unwrap()),
        MRTD_SINGLE_PASS
    );
    assert_eq!(
        hex::encode(mr_td(&firmware, PageAddOrder::TwoPass).unwrap()),
        MRTD_TWO_PASS
    );
    assert_eq!(hex::encode(measured(1536).mr_td), MRTD_SINGLE_PASS);
}

#[test]
fn rtmr0_events_match_upstream_except_the_cfv() {
    for memory in MEMORY_MB {
        let m = measured(memory);
        let ours = rtmr_digests(&m, 0);
        let mut upstream = RTMR0_LOG_1536.map(str::to_owned);
        if memory == 4096 {
            upstream[0] = TD_HOB_4096.to_owned();
        }
        assert_eq!(ours.len(), upstream.len());
        for (i, (ours, theirs)) in ours.iter().zip(&upstream).enumerate() {
            if i == 1 {
                // This crate measures the given firmware's CFV.
                assert_ne!(ours, theirs, "CFV of Debian's OVMF is not dstack's");
            } else {
                assert_eq!(ours, theirs, "RTMR0 event {i} at {memory} MiB");
            }
        }
    }
}

#[test]
fn registers_match_upstream() {
    for (memory, [rtmr0, rtmr1, rtmr2]) in REGISTERS {
        let m = measured(memory);
        assert_eq!(hex::encode(m.rtmr[1]), rtmr1, "RTMR1 at {memory} MiB");
        assert_eq!(hex::encode(m.rtmr[2]), rtmr2, "RTMR2 at {memory} MiB");
        let kernel = KERNEL_DIGEST
            .iter()
            .find(|(mb, _)| *mb == memory)
            .unwrap()
            .1;
        assert_eq!(rtmr_digests(&m, 1)[0], kernel);

        // RTMR0 with upstream's CFV constant in place of ours.
        let mut events = m.events.clone();
        let cfv = events
            .iter_mut()
            .find(|e| e.event_type == dstack_attest::eventlog::EV_EFI_PLATFORM_FIRMWARE_BLOB2)
            .unwrap();
        cfv.digest = hex::decode(UPSTREAM_CFV).unwrap();
        let replayed = dstack_attest::eventlog::replay(&events).unwrap();
        assert_eq!(hex::encode(replayed.0[0]), rtmr0, "RTMR0 at {memory} MiB");
    }
}
