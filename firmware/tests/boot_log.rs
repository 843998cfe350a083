//! The boot log for the real OVMF: its shape against a real TDX dstack VM's
//! CCEL, replay, and which registers each input moves.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

mod common;

use std::path::PathBuf;

use common::{CMDLINE, INITRD_LEN, KERNEL_LEN};
use dstack_attest::eventlog::{Event, parse_ccel, replay};
use dstack_firmware::{
    AcpiTables, BootFiles, Firmware, Options, PageAddOrder, TdMeasurements, VmShape, measure,
};

/// `shared/testdata/ccel.bin`: the CCEL table of a real TDX dstack VM.
fn real_ccel() -> Vec<Event> {
    let dir = std::env::var_os("DSTACK_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_MANIFEST_DIR")
                .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
                .join("../../shared/testdata")
        });
    let path = dir.join("ccel.bin");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}): set DSTACK_TESTDATA to the shared/testdata directory",
            path.display()
        )
    });
    parse_ccel(&bytes).unwrap()
}

struct Inputs {
    firmware: Vec<u8>,
    kernel: Vec<u8>,
    initrd: Vec<u8>,
    cmdline: String,
    shape: VmShape,
    acpi: AcpiTables,
    options: Options,
}

impl Inputs {
    fn new() -> Self {
        Self {
            firmware: common::ovmf(),
            kernel: common::synthetic_kernel(KERNEL_LEN),
            initrd: common::synthetic_initrd(INITRD_LEN),
            cmdline: CMDLINE.to_owned(),
            shape: VmShape {
                vcpus: 2,
                memory_mb: 1536,
            },
            acpi: common::acpi_tables(common::acpi_tables_blob()),
            options: Options::default(),
        }
    }

    /// Measures through [`measure`], or through the parsed OVMF when the
    /// firmware is the real one (the same, as `parsed_firmware_measures_the_same`
    /// checks, but without decompressing it again).
    fn measure(&self) -> TdMeasurements {
        let pristine = common::parsed_ovmf();
        if self.firmware == common::ovmf() {
            return pristine
                .measure(
                    &self.kernel,
                    &self.initrd,
                    &self.cmdline,
                    &self.shape,
                    &self.acpi,
                    &self.options,
                )
                .unwrap();
        }
        let files = BootFiles {
            firmware: &self.firmware,
            kernel: &self.kernel,
            initrd: &self.initrd,
            cmdline: &self.cmdline,
        };
        measure(&files, &self.shape, &self.acpi, &self.options).unwrap()
    }
}

#[test]
fn log_has_the_shape_of_a_real_tdx_boot_and_reproduces_its_fixed_digests() {
    let real = real_ccel();
    let ours = Inputs::new().measure().events;

    // The same events in the same order, by register and type, except that
    // the real log has no RTMR2 events (its kernel's EFI stub did not log
    // through the CC measurement protocol) and ours has the stub's two.
    let shape = |events: &[Event]| -> Vec<(u32, u32)> {
        events
            .iter()
            .filter(|e| e.imr != 2)
            .map(|e| (e.imr, e.event_type))
            .collect()
    };
    assert_eq!(shape(&ours), shape(&real));
    assert!(real.iter().all(|e| e.imr != 2));
    let ours_rtmr01: Vec<&Event> = ours.iter().filter(|e| e.imr != 2).collect();

    // Digest and payload, event for event, where the real log's inputs are
    // the same as ours: SecureBoot, PK, KEK, db, dbx (absent from both
    // variable stores), the separators, BootOrder, Boot0000 (the same DXE
    // volume name and UiApp file in dstack's OVMF and Debian's) and the
    // fixed RTMR1 actions.
    for i in [2, 3, 4, 5, 6, 7, 12, 13, 14, 15, 16, 17] {
        assert_eq!(ours_rtmr01[i], &real[i], "event {i}");
    }
    // Payloads where only the digest depends on this VM: the TD HOB's handoff
    // table (the same TD_HOB address) and the three ACPI DATA markers.
    for i in [0, 8, 9, 10] {
        assert_eq!(
            ours_rtmr01[i].event_payload, real[i].event_payload,
            "event {i}"
        );
        assert_eq!(ours_rtmr01[i].event, real[i].event, "event {i}");
    }
    // The CFV blob: the same description, this firmware's base and length.
    assert_eq!(
        ours_rtmr01[1].event_payload[..42],
        real[1].event_payload[..42]
    );
    assert_eq!(
        ours_rtmr01[1].event_payload[42..],
        [0xFFE0_0000u64.to_le_bytes(), 0x2_0000u64.to_le_bytes()].concat()
    );
    // The kernel: the same device path (QemuKernelLoaderFs "kernel") and link
    // address; its length is this kernel's; its load address is unknowable.
    let (kernel, real_kernel) = (&ours_rtmr01[11].event_payload, &real[11].event_payload);
    assert_eq!(kernel[16..], real_kernel[16..]);
    assert_eq!(kernel[8..16], (KERNEL_LEN as u64).to_le_bytes());
}

#[test]
fn events_replay_to_the_registers() {
    let mut inputs = Inputs::new();
    for (memory_mb, order) in [
        (1536, PageAddOrder::SinglePass),
        (4096, PageAddOrder::TwoPass),
    ] {
        inputs.shape.memory_mb = memory_mb;
        inputs.options.page_add_order = order;
        let m = inputs.measure();
        let rtmrs = replay(&m.events).unwrap();
        assert_eq!(rtmrs.0[..3], m.rtmr);
        assert_eq!(rtmrs.0[3], [0; 48], "RTMR3 is the app's");
        assert!(m.events.iter().all(|e| e.digest.len() == 48 && e.imr <= 2));
        assert_eq!(m.events.len(), 13 + 5 + 2);
    }
}

#[test]
fn parsed_firmware_measures_the_same() {
    let inputs = Inputs::new();
    let files = BootFiles {
        firmware: &inputs.firmware,
        kernel: &inputs.kernel,
        initrd: &inputs.initrd,
        cmdline: &inputs.cmdline,
    };
    let direct = measure(&files, &inputs.shape, &inputs.acpi, &inputs.options).unwrap();
    let firmware = Firmware::parse(&inputs.firmware).unwrap();
    let parsed = firmware
        .measure(
            &inputs.kernel,
            &inputs.initrd,
            &inputs.cmdline,
            &inputs.shape,
            &inputs.acpi,
            &inputs.options,
        )
        .unwrap();
    assert_eq!(direct, parsed);
    assert_eq!(firmware.mr_td(PageAddOrder::SinglePass), direct.mr_td);
}

/// Which of MRTD, RTMR0, RTMR1, RTMR2 differ between two measurements.
fn moved(a: &TdMeasurements, b: &TdMeasurements) -> [bool; 4] {
    [
        a.mr_td != b.mr_td,
        a.rtmr[0] != b.rtmr[0],
        a.rtmr[1] != b.rtmr[1],
        a.rtmr[2] != b.rtmr[2],
    ]
}

#[test]
fn each_input_moves_only_its_registers() {
    let base = Inputs::new().measure();
    //                     MRTD   RTMR0  RTMR1  RTMR2
    let only_rtmr0 = [false, true, false, false];
    let only_rtmr1 = [false, false, true, false];
    let only_rtmr2 = [false, false, false, true];
    let only_mrtd = [true, false, false, false];

    let check = |name: &str, change: &dyn Fn(&mut Inputs), expected: [bool; 4]| {
        let mut inputs = Inputs::new();
        change(&mut inputs);
        assert_eq!(moved(&base, &inputs.measure()), expected, "{name}");
    };

    check("kernel byte", &|i| i.kernel[0x3000] ^= 1, only_rtmr1);
    check("kernel header byte", &|i| i.kernel[0x300] ^= 1, only_rtmr1);
    check("initrd byte", &|i| i.initrd[100] ^= 1, only_rtmr2);
    check("cmdline", &|i| i.cmdline.push_str(" quiet"), only_rtmr2);
    check("ACPI tables byte", &|i| i.acpi.tables[200] ^= 1, only_rtmr0);
    check("ACPI RSDP byte", &|i| i.acpi.rsdp[9] ^= 1, only_rtmr0);
    // In the CFV's variable store, in its erased (free) part: measured as
    // part of the CFV blob, never extended into MRTD.
    check("CFV byte", &|i| i.firmware[0x1000] ^= 1, only_rtmr0);
    // In FVMAIN_COMPACT's free space: extended into MRTD, not measured again.
    check("BFV byte", &|i| i.firmware[0x1B_0000] ^= 1, only_mrtd);
    check(
        "page-add order",
        &|i| i.options.page_add_order = PageAddOrder::TwoPass,
        only_mrtd,
    );
    // The TD HOB describes the RAM; QEMU places the initrd, whose address is
    // patched into the kernel, at the top of RAM below 4 GiB.
    check(
        "memory below 2 GiB",
        &|i| i.shape.memory_mb = 1600,
        [false, true, true, false],
    );
    // The initrd size is patched into the kernel too.
    check(
        "initrd size",
        &|i| i.initrd.push(0),
        [false, false, true, true],
    );
    // vCPUs reach the registers only through the ACPI tables QEMU builds.
    check("vcpus", &|i| i.shape.vcpus = 8, [false; 4]);

    // From 0xB0000000 up, low RAM stays at 2 GiB and the kernel stops moving.
    let mut big = Inputs::new();
    big.shape.memory_mb = 4096;
    let four = big.measure();
    big.shape.memory_mb = 8192;
    assert_eq!(moved(&four, &big.measure()), only_rtmr0);
}
