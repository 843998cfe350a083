//! The QEMU machine a TD boots in.
//!
//! - [`machine_argv`]: the TD's QEMU command line (machine, firmware,
//!   kernel, shape, devices) as one pure function; the supervisor runs it
//!   for TDX, the probe runs the same layout under TCG.
//! - [`probe_acpi_tables`]: boots that machine once under TCG and reads the
//!   ACPI blobs QEMU built for it ([`AcpiTables`]), which TDVF measures into
//!   RTMR0; [`AcpiCache`] keeps them on disk per (QEMU, firmware, machine).
//! - [`measure_td`]: MRTD and RTMR0-2 of a TD booted in that machine (the
//!   supervisor's sim TEE and the CLI's prediction are this one call).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod acpi;
mod argv;
mod cache;
mod fw_cfg;
mod measure;
mod monitor;
mod probe;

pub use acpi::{AcpiBlobs, BlobError};
pub use argv::{
    BootFiles, Devices, Machine, Platform, Serial, Shape, TD_MACHINE_OPTIONS, TD_PHYS_BITS,
    VSOCK_STAND_IN, Vsock, devices_argv, machine_argv,
};
pub use cache::{AcpiCache, CacheError, CacheKey, CacheOutcome};
pub use dstack_firmware::AcpiTables;
pub use fw_cfg::DirectoryError;
pub use measure::{
    AcpiSource, MeasureError, Measured, measure_td, parse_qemu_version, qemu_binary_version,
};
pub use monitor::MonitorError;
pub use probe::{
    DEFAULT_TIMEOUT, ProbeError, ProbeOptions, ProbeVsock, probe_acpi_tables, probe_argv,
};
