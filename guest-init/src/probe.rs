//! Probe boots: the host boots the image only to read what QEMU showed the
//! firmware (crate `dstack-machine`), and says so on the kernel command
//! line. PID1 then boots nothing — no vsock, network, disk or app —
//! announces on the console that the firmware is done, and waits to be
//! stopped. The host reads fw_cfg from QEMU's monitor, not from here: our
//! kernel gives userspace no port I/O (no `ioperm`, no `/dev/port`).
//!
//! The command line is measured (RTMR2), so a probe boot can never pass
//! for the image's real boot.

use std::fs;

use dstack_proto::probe::{ACPI_TABLES_PARAM, ACPI_TABLES_READY};

use crate::state::ShutdownSignal;

/// What a probe boot asks of PID1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// [`ACPI_TABLES_PARAM`]: the host reads QEMU's ACPI tables.
    AcpiTables,
}

/// The probe the kernel command line `cmdline` asks for, if any.
pub fn requested(cmdline: &str) -> Option<Probe> {
    cmdline
        .split_ascii_whitespace()
        .any(|param| param == ACPI_TABLES_PARAM)
        .then_some(Probe::AcpiTables)
}

/// The kernel command line (`/proc/cmdline`; the early mounts mount
/// `/proc`), empty when unreadable. Dotted parameters such as
/// [`ACPI_TABLES_PARAM`] never reach PID1's environment: the kernel takes
/// them for module parameters.
pub fn kernel_cmdline() -> String {
    fs::read_to_string("/proc/cmdline").unwrap_or_default()
}

/// Runs `probe`: announces it on the console, then waits for a shutdown
/// request (usually the host just ends QEMU first).
pub async fn run(probe: Probe, shutdown: &ShutdownSignal) {
    match probe {
        Probe::AcpiTables => tracing::info!("{ACPI_TABLES_READY}"),
    }
    let reason = shutdown.wait().await;
    tracing::info!("probe boot ends ({reason})");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ShutdownReason;

    #[test]
    fn only_the_exact_parameter_asks_for_a_probe() {
        let image = "console=ttyS0 panic=-1 rdinit=/init quiet loglevel=4";
        assert_eq!(requested(image), None);
        assert_eq!(
            requested(&format!("{image} dstack.probe=acpi-tables\n")),
            Some(Probe::AcpiTables)
        );
        assert_eq!(
            requested("dstack.probe=acpi-tables console=ttyS0"),
            Some(Probe::AcpiTables)
        );
        for other in [
            "dstack.probe=acpi-tables2",
            "dstack.probe=other",
            "xdstack.probe=acpi-tables",
            "DSTACK.PROBE=acpi-tables",
        ] {
            assert_eq!(requested(&format!("{image} {other}")), None, "{other}");
        }
    }

    #[tokio::test]
    async fn a_probe_waits_for_a_shutdown_request() {
        let shutdown = ShutdownSignal::default();
        let probe = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { run(Probe::AcpiTables, &shutdown).await }
        });
        tokio::task::yield_now().await;
        assert!(!probe.is_finished());
        shutdown.request(ShutdownReason::Sigterm);
        probe.await.unwrap();
    }
}
