//! What a TD booted in this machine reports before its app runs: MRTD and
//! RTMR0-2, from the image's files, the VM shape, and the ACPI tables the
//! QEMU that boots it builds (probed once per QEMU, firmware and shape, then
//! cached). The supervisor's simulated TDX module and `dstack image
//! measure` / `dstack verify` all call [`measure_td`], so what a sim TD
//! reports and what a verifier predicts are one computation.

use std::fs;
use std::path::{Path, PathBuf};

use dstack_firmware::{
    AcpiTables, Firmware, FirmwareError, Options, OvmfVariant, PageAddOrder, TdMeasurements,
    VmShape,
};

use crate::cache::{AcpiCache, CacheError, CacheOutcome, qemu_version};
use crate::probe::ProbeOptions;
use crate::{BootFiles, Shape};

/// Where RTMR0's ACPI tables come from.
#[derive(Debug)]
pub enum AcpiSource<'a> {
    /// Probe them from this QEMU (the one that boots the TDs), through the
    /// cache.
    Probe {
        /// The QEMU binary.
        qemu: &'a Path,
        /// Probed tables by (QEMU, firmware, machine).
        cache: &'a AcpiCache,
        /// How the probe runs.
        options: &'a ProbeOptions,
    },
    /// Tables obtained elsewhere (e.g. dumped on a TDX host), and the QEMU
    /// version that built them (it decides the page-add order).
    Given {
        /// The three blobs.
        tables: AcpiTables,
        /// QEMU's version, `X.Y[.Z]`.
        qemu_version: String,
    },
}

/// Why a boot could not be measured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeasureError {
    /// An image file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The ACPI tables could not be obtained.
    #[error("cannot obtain the ACPI tables QEMU builds for this VM")]
    Acpi(#[from] CacheError),
    /// `qemu -version` printed no version this code knows.
    #[error("cannot tell QEMU's version from {output:?}")]
    QemuVersion {
        /// What it printed.
        output: String,
    },
    /// A probe's scratch directory could not be made.
    #[error("cannot create a scratch directory for the ACPI probe")]
    Scratch(#[source] std::io::Error),
    /// The files do not measure (not TDVF firmware, not a bzImage, ...).
    #[error("cannot measure the boot")]
    Firmware(#[from] FirmwareError),
}

/// What a TD measures and where its ACPI tables came from.
#[derive(Debug, Clone)]
pub struct Measured {
    /// MRTD, RTMR0-2 and the boot event log.
    pub td: TdMeasurements,
    /// The QEMU version the prediction is for.
    pub qemu_version: String,
    /// The ACPI blobs measured into RTMR0.
    pub acpi: AcpiTables,
    /// Whether the tables were probed now, or cached (`None`: given).
    pub acpi_outcome: Option<CacheOutcome>,
}

/// `X.Y.Z` from `qemu -version`'s first line ("QEMU emulator version
/// 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)").
pub fn parse_qemu_version(output: &str) -> Option<String> {
    let rest = output.lines().next()?.split("version ").nth(1)?;
    let version = rest.split_whitespace().next()?;
    let parts: Vec<&str> = version.split('.').collect();
    let numeric = (2..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    numeric.then(|| version.to_owned())
}

/// The version of the QEMU binary `qemu`.
pub fn qemu_binary_version(qemu: &Path) -> Result<String, MeasureError> {
    let output = String::from_utf8_lossy(&qemu_version(qemu)?).into_owned();
    parse_qemu_version(&output).ok_or(MeasureError::QemuVersion { output })
}

/// Measures the boot of `image` as a VM of `shape`, as TDX would: MRTD of
/// the firmware (page-add order by QEMU version), RTMR0-2 with the ACPI
/// tables from `acpi`.
pub fn measure_td(
    image: &BootFiles<'_>,
    shape: Shape,
    acpi: AcpiSource<'_>,
) -> Result<Measured, MeasureError> {
    let read = |path: &Path| {
        fs::read(path).map_err(|source| MeasureError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let (tables, qemu_version, acpi_outcome) = match acpi {
        AcpiSource::Given {
            tables,
            qemu_version,
        } => (tables, qemu_version, None),
        AcpiSource::Probe {
            qemu,
            cache,
            options,
        } => {
            let version = qemu_binary_version(qemu)?;
            // Private (0700) and short: it holds QEMU's monitor socket.
            let scratch = tempfile::Builder::new()
                .prefix("dstack-acpi-")
                .tempdir()
                .map_err(MeasureError::Scratch)?;
            let (tables, outcome) =
                cache.get_or_probe(qemu, image, shape, scratch.path(), options)?;
            (tables, version, Some(outcome))
        }
    };
    let firmware = Firmware::parse(&read(image.firmware)?)?;
    let options = Options {
        page_add_order: PageAddOrder::for_qemu_version(&qemu_version)?,
        ovmf_variant: OvmfVariant::Pre202505,
    };
    let td = firmware.measure(
        &read(image.kernel)?,
        &read(image.initrd)?,
        image.cmdline,
        &VmShape {
            vcpus: shape.vcpus,
            memory_mb: u64::from(shape.memory_mb),
        },
        &tables,
        &options,
    )?;
    Ok(Measured {
        td,
        qemu_version,
        acpi: tables,
        acpi_outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_qemu_versions() {
        assert_eq!(
            parse_qemu_version(
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)\nCopyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers\n"
            )
            .as_deref(),
            Some("10.0.2")
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 9.1\n").as_deref(),
            Some("9.1")
        );
        assert_eq!(parse_qemu_version("not qemu"), None);
        assert_eq!(parse_qemu_version("QEMU emulator version x.y.z"), None);
        assert_eq!(parse_qemu_version(""), None);
    }

    #[test]
    fn unreadable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("ovmf.fd");
        let image = BootFiles {
            firmware: &missing,
            kernel: &missing,
            initrd: &missing,
            cmdline: "",
        };
        let err = measure_td(
            &image,
            Shape {
                vcpus: 1,
                memory_mb: 512,
            },
            AcpiSource::Given {
                tables: AcpiTables {
                    loader: vec![],
                    rsdp: vec![],
                    tables: vec![],
                },
                qemu_version: "10.0.2".into(),
            },
        )
        .unwrap_err();
        assert!(
            matches!(&err, MeasureError::Read { path, .. } if *path == missing),
            "{err}"
        );
    }
}
