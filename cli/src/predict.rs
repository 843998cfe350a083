//! What a TD booted from an OS image reports before its app runs: MRTD and
//! RTMR0-2 for a VM shape, and the image's os_image_hash. `dstack image
//! measure` prints it; `dstack verify` compares quotes against it. Both go
//! through `dstack_machine::measure_td`, the computation the supervisor's
//! simulated TDX module reports from.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use dstack_attest::Event;
use dstack_machine::{
    AcpiCache, AcpiSource, AcpiTables, BootFiles, CacheOutcome, ProbeOptions, Shape, measure_td,
};
use dstack_reproducible::{ImageManifest, image_digest};

/// The VM shape a prediction is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VmShape {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mb: u32,
}

/// The QEMU a prediction models, and where RTMR0's ACPI tables come from.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct MachineArgs {
    /// The QEMU that boots the TDs: its version decides MRTD's page-add
    /// order, and the ACPI tables it builds for the VM shape go into RTMR0
    /// (read from it with one TCG boot, then cached) [default:
    /// qemu-system-x86_64 on PATH].
    #[arg(long, value_name = "PATH")]
    pub qemu: Option<PathBuf>,
    /// Cache of the ACPI tables probed from QEMU [default:
    /// ~/.cache/dstack-rs/acpi].
    #[arg(long, value_name = "DIR")]
    pub acpi_cache: Option<PathBuf>,
    /// Use these ACPI tables instead of probing QEMU: a directory holding
    /// `table-loader`, `rsdp` and `tables` (fw_cfg's etc/table-loader,
    /// etc/acpi/rsdp, etc/acpi/tables, e.g. saved with `dstack image
    /// measure --save-acpi` or dumped on the TDX host).
    #[arg(long, value_name = "DIR", requires = "qemu_version")]
    pub acpi_tables: Option<PathBuf>,
    /// The version of the QEMU the --acpi-tables come from (X.Y.Z).
    #[arg(long, value_name = "X.Y.Z", requires = "acpi_tables")]
    pub qemu_version: Option<String>,
}

/// The file names `--acpi-tables` and `--save-acpi` use, in RTMR0's order.
pub(crate) const ACPI_FILES: [&str; 3] = ["table-loader", "rsdp", "tables"];

/// The registers a TD booted from an image reports, before RTMR3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Prediction {
    /// MRTD.
    pub mr_td: [u8; 48],
    /// RTMR0-2.
    pub rtmr: [[u8; 48]; 3],
    /// The RTMR0-2 boot event log a TD writes.
    pub events: Vec<Event>,
    /// The image's os_image_hash (sha256 of its sha256sum.txt), hex.
    pub os_image_hash: String,
    /// The kernel command line the image boots with.
    pub cmdline: String,
    /// The QEMU version modelled.
    pub qemu_version: String,
    /// The ACPI blobs in RTMR0.
    pub acpi: AcpiTables,
    /// Whether the ACPI tables were probed now or cached (`None`: given).
    pub acpi_outcome: Option<CacheOutcome>,
}

fn cache_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/dstack-rs")
}

fn find_qemu() -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .context("qemu-system-x86_64 is not on PATH: install QEMU, pass --qemu, or give the tables with --acpi-tables")
}

fn read_acpi_tables(dir: &Path) -> anyhow::Result<AcpiTables> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    Ok(AcpiTables {
        loader: read(ACPI_FILES[0])?,
        rsdp: read(ACPI_FILES[1])?,
        tables: read(ACPI_FILES[2])?,
    })
}

/// Predicts the boot registers of `image_dir` booted with `shape` in the
/// machine `machine` describes.
pub(crate) fn predict(
    image_dir: &Path,
    shape: VmShape,
    machine: &MachineArgs,
) -> anyhow::Result<Prediction> {
    let manifest = ImageManifest::load(image_dir)?;
    let (firmware, kernel, initrd) = (
        image_dir.join(&manifest.bios),
        image_dir.join(&manifest.kernel),
        image_dir.join(&manifest.initrd),
    );
    let files = BootFiles {
        firmware: &firmware,
        kernel: &kernel,
        initrd: &initrd,
        cmdline: &manifest.cmdline,
    };
    let shape = Shape {
        vcpus: shape.vcpus,
        memory_mb: shape.memory_mb,
    };
    let options = ProbeOptions::default();
    let (qemu, cache);
    let source = match (&machine.acpi_tables, &machine.qemu_version) {
        (Some(dir), Some(version)) => AcpiSource::Given {
            tables: read_acpi_tables(dir)?,
            qemu_version: version.clone(),
        },
        _ => {
            qemu = match &machine.qemu {
                Some(path) => path.clone(),
                None => find_qemu()?,
            };
            cache = AcpiCache::new(
                machine
                    .acpi_cache
                    .clone()
                    .unwrap_or_else(|| cache_home().join("acpi")),
            );
            AcpiSource::Probe {
                qemu: &qemu,
                cache: &cache,
                options: &options,
            }
        }
    };
    let measured = measure_td(&files, shape, source)
        .with_context(|| format!("cannot measure a boot of {}", image_dir.display()))?;
    Ok(Prediction {
        mr_td: measured.td.mr_td,
        rtmr: measured.td.rtmr,
        events: measured.td.events,
        os_image_hash: image_digest(image_dir)?,
        cmdline: manifest.cmdline,
        qemu_version: measured.qemu_version,
        acpi: measured.acpi,
        acpi_outcome: measured.acpi_outcome,
    })
}
