//! Probe boots: the host boots an OS image in a scratch VM to read what
//! QEMU shows the firmware (crate `dstack-machine`), and the guest's PID1
//! plays along, talking over the serial console only.

/// On the kernel command line: PID1 boots nothing, prints
/// [`ACPI_TABLES_READY`] and waits to be stopped, so the host can read
/// QEMU's ACPI tables (built when the firmware read them) through fw_cfg.
/// The kernel keeps dotted parameters from PID1's environment: PID1 reads
/// it from `/proc/cmdline`.
pub const ACPI_TABLES_PARAM: &str = "dstack.probe=acpi-tables";

/// What PID1 prints on the console once it runs in an
/// [`ACPI_TABLES_PARAM`] boot: the firmware has finished.
pub const ACPI_TABLES_READY: &str = "probe acpi-tables: the firmware is done, the guest idles";
