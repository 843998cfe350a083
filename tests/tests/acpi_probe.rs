//! The ACPI probe for real: the built image's OVMF, kernel and initrd booted
//! under TCG in the TD's machine (crate dstack-machine), its PID1 in probe
//! mode, and QEMU's three ACPI blobs read back through fw_cfg. Two VM shapes
//! give tables of QEMU's shape that differ where the shape must show (the
//! MADT lists one LAPIC per vCPU); a second probe of a shape gives the same
//! bytes, and the cache answers it without QEMU; the vsock stand-in reads
//! the same blobs as a real vhost-user vsock device.
//!
//! Needs a built image (`make image`, or `DSTACK_IMAGES_DIR`), QEMU
//! (`qemu-system-x86_64` on PATH, or `DSTACK_QEMU`) and vhost-device-vsock
//! (on PATH or in ~/.cargo/bin).
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dstack_e2e::harness::newest_image;
use dstack_e2e::harness::tempfile_dir::TempDir;
use dstack_machine::{
    AcpiBlobs, AcpiCache, AcpiTables, BootFiles, CacheOutcome, ProbeOptions, ProbeVsock, Shape,
    probe_acpi_tables,
};

/// Generous: two probes may run side by side on a loaded 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(300);

const ONE: Shape = Shape {
    vcpus: 1,
    memory_mb: 1024,
};
const TWO: Shape = Shape {
    vcpus: 2,
    memory_mb: 2048,
};

/// The newest built image: its directory and metadata.json.
struct Image {
    dir: PathBuf,
    firmware: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    cmdline: String,
}

impl Image {
    fn newest() -> Self {
        let dir = newest_image();
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("metadata.json")).unwrap()).unwrap();
        let file = |key: &str| {
            let path = dir.join(meta[key].as_str().unwrap_or_else(|| panic!("no {key}")));
            assert!(
                path.is_file(),
                "{} is missing: run `make image`",
                path.display()
            );
            path
        };
        Self {
            firmware: file("bios"),
            kernel: file("kernel"),
            initrd: file("initrd"),
            cmdline: meta["cmdline"].as_str().expect("no cmdline").to_owned(),
            dir,
        }
    }

    fn boot(&self) -> BootFiles<'_> {
        BootFiles {
            firmware: &self.firmware,
            kernel: &self.kernel,
            initrd: &self.initrd,
            cmdline: &self.cmdline,
        }
    }
}

fn find_program(name: &str, env: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return path.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    std::env::split_paths(&path)
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH (or set {env})"))
}

fn qemu() -> PathBuf {
    find_program("qemu-system-x86_64", "DSTACK_QEMU")
}

fn probe(image: &Image, shape: Shape, work: &Path, vsock: ProbeVsock) -> AcpiTables {
    let started = Instant::now();
    let blobs = probe_acpi_tables(
        &qemu(),
        &image.boot(),
        shape,
        work,
        &ProbeOptions {
            timeout: TIMEOUT,
            vsock,
            ..ProbeOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("probe of {shape:?} ({}) failed: {e}", image.dir.display()));
    eprintln!(
        "probe {shape:?}: {:.1} s, {blobs:?}",
        started.elapsed().as_secs_f64()
    );
    blobs
}

/// The MADT's processor entries (type 0, local APIC) that are enabled.
fn enabled_lapics(madt: &[u8]) -> usize {
    // 36-byte header, local APIC address, flags; then type-length entries.
    let mut at = 44;
    let mut count = 0;
    while at + 2 <= madt.len() {
        let (kind, len) = (madt[at], usize::from(madt[at + 1]));
        if kind == 0 && madt.get(at + 4).is_some_and(|flags| flags & 1 == 1) {
            count += 1;
        }
        if len == 0 {
            break;
        }
        at += len;
    }
    count
}

/// The DSDT's 64-bit memory window (a QWord address space descriptor of
/// the memory type): where the firmware put 64-bit BARs, as QEMU saw it.
fn pci_window64(dsdt: &[u8]) -> Option<(u64, u64)> {
    let at = dsdt
        .windows(4)
        .position(|w| w[..3] == [0x8a, 0x2b, 0x00] && w[3] == 0)?;
    let field = |n: usize| {
        let from = at + 6 + 8 * n;
        u64::from_le_bytes(dsdt[from..from + 8].try_into().unwrap())
    };
    Some((field(1), field(2)))
}

/// What QEMU 10's q35 builds for our machine: tables in build order, no
/// HPET (hpet=off), a loader of whole commands, an ACPI 1.0 RSDP.
fn assert_qemu_shaped(blobs: &AcpiTables) {
    blobs.check().expect("blobs of QEMU's shape");
    assert_eq!(blobs.loader.len(), 4096, "QEMU pads the loader to 4 KiB");
    assert!(
        blobs.loader.len().is_multiple_of(128),
        "whole 128-byte commands"
    );
    assert!(blobs.rsdp.starts_with(b"RSD PTR "), "{blobs:?}");
    assert!(
        blobs.tables.len().is_multiple_of(0x1000),
        "QEMU pads the tables"
    );
    let signatures = blobs.table_signatures();
    for sig in ["FACS", "DSDT", "FACP", "APIC", "MCFG"] {
        assert!(
            signatures.iter().any(|s| s == sig),
            "{sig} in {signatures:?}"
        );
    }
    assert_eq!(signatures[0], "FACS", "{signatures:?}");
    assert!(
        !signatures.iter().any(|s| s == "HPET"),
        "hpet=off: {signatures:?}"
    );
    // The firmware put the 64-bit BARs at the top eighth of the address
    // space the probe's CPU reports, as TDVF does in a TD (TD_PHYS_BITS).
    let bits = u32::from(dstack_machine::TD_PHYS_BITS);
    let dsdt = blobs.table("DSDT").unwrap();
    let (start, _) = pci_window64(dsdt).expect("a 64-bit PCI window");
    assert_eq!(start, (1u64 << bits) - (1u64 << (bits - 3)), "{start:#x}");
}

#[test]
fn two_shapes_and_a_cached_repeat() {
    let image = Image::newest();
    let work = TempDir::new("acpi-probe").unwrap();
    let one = probe(&image, ONE, &work.path().join("one"), ProbeVsock::StandIn);
    let two = probe(&image, TWO, &work.path().join("two"), ProbeVsock::StandIn);
    for blobs in [&one, &two] {
        assert_qemu_shaped(blobs);
    }
    let (madt1, madt2) = (one.table("APIC").unwrap(), two.table("APIC").unwrap());
    assert_ne!(madt1, madt2, "the MADT follows the vCPUs");
    assert_eq!(enabled_lapics(madt1), 1);
    assert_eq!(enabled_lapics(madt2), 2);
    assert_ne!(one.tables, two.tables);

    // Through the cache: a miss probes (and gives the same bytes as the
    // first probe: probing is deterministic), a second lookup does not.
    let cache = AcpiCache::new(work.path().join("cache"));
    let options = ProbeOptions {
        timeout: TIMEOUT,
        ..ProbeOptions::default()
    };
    let lookup = |dir: &str| {
        let started = Instant::now();
        let (blobs, outcome) = cache
            .get_or_probe(
                &qemu(),
                &image.boot(),
                ONE,
                &work.path().join(dir),
                &options,
            )
            .unwrap_or_else(|e| panic!("cached probe failed: {e}"));
        (blobs, outcome, started.elapsed())
    };
    let (probed, outcome, took) = lookup("cached");
    assert_eq!(outcome, CacheOutcome::Miss);
    assert_eq!(probed, one, "a second probe reads the same bytes");
    eprintln!("cache miss (probe): {:.1} s", took.as_secs_f64());
    let (cached, outcome, took) = lookup("unused");
    assert_eq!(outcome, CacheOutcome::Hit);
    assert_eq!(cached, one);
    assert!(!work.path().join("unused").exists(), "no probe ran");
    eprintln!("cache hit: {:.1} ms", took.as_secs_f64() * 1000.0);
}

/// The stand-in in the vsock slot reads the same blobs as the real device
/// it replaces: `vhost-user-vsock-pci`, served by vhost-device-vsock.
#[test]
fn the_vsock_stand_in_changes_no_blob() {
    let image = Image::newest();
    let work = TempDir::new("acpi-vsock").unwrap();
    let backend = find_program("vhost-device-vsock", "DSTACK_VHOST_VSOCK");
    let real = probe(
        &image,
        ONE,
        &work.path().join("real"),
        ProbeVsock::VhostUser { backend },
    );
    let stand_in = probe(
        &image,
        ONE,
        &work.path().join("stand-in"),
        ProbeVsock::StandIn,
    );
    assert_eq!(real.loader, stand_in.loader, "etc/table-loader");
    assert_eq!(real.rsdp, stand_in.rsdp, "etc/acpi/rsdp");
    assert_eq!(real.tables, stand_in.tables, "etc/acpi/tables");
}
