//! What a TDX TD measures when it boots our image (DESIGN §3, UPSTREAM §8):
//! MRTD as the TDX module computes it while QEMU builds the TD from the
//! firmware's TDVF metadata, and RTMR0-2 with the boot event log the
//! firmware (TDVF/OVMF) and the Linux EFI stub write, from the firmware,
//! kernel, initrd, command line, VM shape and QEMU's ACPI tables.
//!
//! The log is in the order a real TD writes it (events of different
//! registers interleave as in a CCEL), and replaying it gives the RTMRs.
//!
//! Everything here is a pure function of its inputs: no files, no QEMU.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod acpi;
mod authenticode;
mod boot_option;
mod bytes;
mod error;
mod event;
mod fv;
mod hob;
mod kernel;
mod stub;
mod tdvf;
#[doc(hidden)]
pub mod testing;
mod variables;

use dstack_attest::eventlog::{EV_SEPARATOR, Event};

pub use error::FirmwareError;

use crate::boot_option::BootManagerMenu;
use crate::event::self_describing;
use crate::tdvf::{Metadata, SectionKind};
use crate::variables::VariableStore;
use sha2::{Digest, Sha384};

/// The files QEMU boots a TD from.
#[derive(Debug, Clone, Copy)]
pub struct BootFiles<'a> {
    /// The firmware image (`-bios`), a TDVF build of OVMF.
    pub firmware: &'a [u8],
    /// The kernel image (`-kernel`), a Linux bzImage with an EFI stub.
    pub kernel: &'a [u8],
    /// The initrd (`-initrd`); empty for none.
    pub initrd: &'a [u8],
    /// The kernel command line exactly as passed to QEMU's `-append`: the
    /// firmware appends `" initrd=initrd"` itself when there is an initrd.
    pub cmdline: &'a str,
}

/// The shape of the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmShape {
    /// Virtual CPUs. Measured only through the ACPI tables QEMU builds.
    pub vcpus: u32,
    /// Guest memory (`-m`) in MiB.
    pub memory_mb: u64,
}

/// The three fw_cfg files QEMU serves for ACPI, exactly as the firmware
/// reads them (before the table-loader patches anything).
#[derive(Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// fw_cfg `etc/table-loader`: the loader script.
    pub loader: Vec<u8>,
    /// fw_cfg `etc/acpi/rsdp`.
    pub rsdp: Vec<u8>,
    /// fw_cfg `etc/acpi/tables`.
    pub tables: Vec<u8>,
}

impl std::fmt::Debug for AcpiTables {
    // Lengths and digest prefixes: 130 KiB of bytes would bury every
    // assertion message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digest = |b: &[u8]| {
            Sha384::digest(b)[..8]
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
        };
        f.debug_struct("AcpiTables")
            .field("loader", &(self.loader.len(), digest(&self.loader)))
            .field("rsdp", &(self.rsdp.len(), digest(&self.rsdp)))
            .field("tables", &(self.tables.len(), digest(&self.tables)))
            .finish()
    }
}

/// The order in which QEMU has the TDX module add and measure the firmware's
/// pages; it changes MRTD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PageAddOrder {
    /// Each page is added then extended before the next (QEMU 9.0 and later).
    #[default]
    SinglePass,
    /// All of a section's pages are added, then all extended (QEMU 8.x).
    TwoPass,
}

impl PageAddOrder {
    /// The order the given QEMU version (`MAJOR.MINOR[.PATCH]`) uses, as
    /// upstream dstack-mr documents it: 8.x adds in two passes, 9.0 and
    /// later in one; older versions do not run TDX guests this way.
    pub fn for_qemu_version(version: &str) -> Result<Self, FirmwareError> {
        let unsupported = || FirmwareError::UnsupportedQemuVersion {
            version: version.to_owned(),
        };
        let mut parts = version.split('.');
        let mut number = || -> Result<u32, FirmwareError> {
            parts
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or_else(unsupported)
        };
        let major = number()?;
        let _minor = number()?;
        if parts.clone().count() > 1 || parts.next().is_some_and(|p| p.parse::<u32>().is_err()) {
            return Err(unsupported());
        }
        match major {
            0..=7 => Err(unsupported()),
            8 => Ok(Self::TwoPass),
            _ => Ok(Self::SinglePass),
        }
    }
}

/// Which OVMF event layout the firmware writes into RTMR0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OvmfVariant {
    /// OVMF before edk2-stable202505, as dstack ships it (upstream's
    /// `Pre202505`): RTMR0 ends with `BootOrder` and `Boot0000`.
    #[default]
    Pre202505,
}

/// How the VM is built, beyond its files and shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// QEMU's page-add order (see [`PageAddOrder::for_qemu_version`]).
    pub page_add_order: PageAddOrder,
    /// The firmware's RTMR0 event layout.
    pub ovmf_variant: OvmfVariant,
}

/// What a TD measured at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdMeasurements {
    /// MRTD.
    pub mr_td: [u8; 48],
    /// RTMR0-2.
    pub rtmr: [[u8; 48]; 3],
    /// The RTMR0-2 boot event log, in the order the TD writes it; replaying
    /// it gives `rtmr`.
    pub events: Vec<Event>,
}

/// What the TD measures when QEMU boots `files` as a VM of `shape` with
/// `acpi`.
pub fn measure(
    files: &BootFiles<'_>,
    shape: &VmShape,
    acpi: &AcpiTables,
    options: &Options,
) -> Result<TdMeasurements, FirmwareError> {
    Firmware::parse(files.firmware)?.measure(
        files.kernel,
        files.initrd,
        files.cmdline,
        shape,
        acpi,
        options,
    )
}

/// MRTD of a TD built from `firmware` with QEMU's page-add `order`.
pub fn mr_td(firmware: &[u8], order: PageAddOrder) -> Result<[u8; 48], FirmwareError> {
    Ok(Metadata::parse(firmware)?.mr_td(firmware, order))
}

/// A firmware image parsed once, for measuring many boots of it: finding
/// the boot option means decompressing the firmware's DXE volume.
#[derive(Clone)]
pub struct Firmware {
    bytes: Vec<u8>,
    metadata: Metadata,
    /// CFV blob event, then SecureBoot, PK, KEK, db, dbx.
    config_events: Vec<Event>,
    /// `BootOrder`, `Boot0000`.
    boot_events: Vec<Event>,
}

impl std::fmt::Debug for Firmware {
    // Without the image's bytes: megabytes of them help no one reading a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Firmware")
            .field("len", &self.bytes.len())
            .field("metadata", &self.metadata)
            .field("config_events", &self.config_events)
            .field("boot_events", &self.boot_events)
            .finish()
    }
}

impl Firmware {
    /// Parses `bytes`: the TDVF metadata, the variable store in the CFV, and
    /// the boot manager menu in the DXE volume.
    pub fn parse(bytes: &[u8]) -> Result<Self, FirmwareError> {
        let metadata = Metadata::parse(bytes)?;
        let cfv = metadata.raw_data(bytes, metadata.section(SectionKind::Cfv)?);
        let store = VariableStore::parse(cfv)?;
        let mut config_events = vec![variables::cfv_event(&metadata, bytes)?];
        config_events.extend(store.secure_boot_events());

        let bfv = metadata.raw_data(bytes, metadata.section(SectionKind::Bfv)?);
        let menu = BootManagerMenu::find(&fv::volumes(bfv)?)?;
        let boot_events = menu.boot_events(&store)?;
        Ok(Self {
            bytes: bytes.to_vec(),
            metadata,
            config_events,
            boot_events,
        })
    }

    /// MRTD of a TD built from this firmware with QEMU's page-add `order`.
    pub fn mr_td(&self, order: PageAddOrder) -> [u8; 48] {
        self.metadata.mr_td(&self.bytes, order)
    }

    /// What the TD measures when QEMU boots this firmware with `kernel`,
    /// `initrd` (empty for none) and `cmdline` (QEMU's `-append`) as a VM of
    /// `shape` with `acpi`.
    pub fn measure(
        &self,
        kernel: &[u8],
        initrd: &[u8],
        cmdline: &str,
        shape: &VmShape,
        acpi: &AcpiTables,
        options: &Options,
    ) -> Result<TdMeasurements, FirmwareError> {
        let memory = shape
            .memory_mb
            .checked_mul(1 << 20)
            .filter(|&m| m > 0)
            .ok_or(FirmwareError::BadMemorySize {
                memory: shape.memory_mb.saturating_mul(1 << 20),
                reason: "must be more than zero and fit in 64 bits",
            })?;
        // The boot variables are what the variants differ in.
        let boot_events = match options.ovmf_variant {
            OvmfVariant::Pre202505 => &self.boot_events,
        };

        let td_hob = hob::td_hob_event(&self.metadata, memory)?;
        let acpi_events = acpi::acpi_events(acpi)?;
        let patched = kernel::patch(kernel, initrd.len(), memory, cmdline)?;
        let [kernel_event, calling, rtmr1_separator, exit, exited] =
            kernel::rtmr1_events(&patched)?;
        let rtmr2 = stub::rtmr2_events(cmdline, initrd)?;

        // The order a TD writes them: SEC measures the HOB and CFV; DXE the
        // secure-boot variables (then the RTMR0 separator) and the ACPI
        // tables; BDS loads the kernel (RTMR1) before ReadyToBoot measures
        // the boot variables and the RTMR1 action and separator; the stub
        // runs and measures into RTMR2; ExitBootServices comes last.
        let mut events = Vec::with_capacity(20);
        events.push(td_hob);
        events.extend(self.config_events.iter().cloned());
        events.push(self_describing(0, EV_SEPARATOR, &[0; 4]));
        events.extend(acpi_events);
        events.push(kernel_event);
        events.extend(boot_events.iter().cloned());
        events.extend([calling, rtmr1_separator]);
        events.extend(rtmr2);
        events.extend([exit, exited]);

        Ok(TdMeasurements {
            mr_td: self.mr_td(options.page_add_order),
            rtmr: event::fold(&events),
            events,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_add_order_follows_the_qemu_version() {
        assert_eq!(
            PageAddOrder::for_qemu_version("8.2.2").unwrap(),
            PageAddOrder::TwoPass
        );
        assert_eq!(
            PageAddOrder::for_qemu_version("8.0").unwrap(),
            PageAddOrder::TwoPass
        );
        for v in ["9.0.0", "9.1", "10.0.2"] {
            assert_eq!(
                PageAddOrder::for_qemu_version(v).unwrap(),
                PageAddOrder::SinglePass,
                "{v}"
            );
        }
        for v in ["7.2.0", "", "9", "9.x", "9.1.0.1", "v9.1.0", "9.1.x"] {
            assert!(
                matches!(
                    PageAddOrder::for_qemu_version(v),
                    Err(FirmwareError::UnsupportedQemuVersion { .. })
                ),
                "{v}"
            );
        }
        assert_eq!(Options::default().page_add_order, PageAddOrder::SinglePass);
    }
}
