//! What the simulated TDX module measures when a TD boots: MRTD from the
//! firmware, and RTMR0-2 events over the VM shape, the kernel, its command
//! line and the initrd, in the registers TDX firmware uses for them.
//!
//! These are stand-ins with the right bindings (change any input and the
//! registers change), not the values TDX hardware would compute from the
//! same files: those depend on how TDVF lays out and measures pages.

use sha2::{Digest, Sha384};

use crate::eventlog::Event;
use crate::rtmr::Measurement;

/// TCG `EV_PLATFORM_CONFIG_FLAGS`: the VM's shape, in RTMR0 as TDVF puts
/// its configuration there.
pub(crate) const EV_PLATFORM_CONFIG_FLAGS: u32 = 0x0000_000a;
/// TCG `EV_EFI_BOOT_SERVICES_APPLICATION`: the kernel image, in RTMR1.
pub(crate) const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
/// TCG `EV_EVENT_TAG`: the command line and initrd, in RTMR2.
pub(crate) const EV_EVENT_TAG: u32 = 0x0000_0006;

/// What a booting TD consists of.
#[derive(Debug, Clone, Copy)]
pub struct BootInputs<'a> {
    /// The firmware image (OVMF).
    pub firmware: &'a [u8],
    /// The kernel image.
    pub kernel: &'a [u8],
    /// The initrd.
    pub initrd: &'a [u8],
    /// The kernel command line.
    pub cmdline: &'a str,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mb: u32,
}

/// The boot-time measurements of a simulated TD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootMeasurements {
    /// MRTD.
    pub mr_td: Measurement,
    /// The boot event log (RTMR0-2); replaying it gives RTMR0-2.
    pub events: Vec<Event>,
}

fn event(imr: u32, event_type: u32, digest: Measurement, payload: &str) -> Event {
    Event {
        imr,
        event_type,
        digest: digest.to_vec(),
        event: String::new(),
        event_payload: payload.as_bytes().to_vec(),
    }
}

/// Measures a TD's boot.
pub fn measure_boot(inputs: &BootInputs<'_>) -> BootMeasurements {
    let shape = format!("vcpus={} memory={}M", inputs.vcpus, inputs.memory_mb);
    let events = vec![
        event(
            0,
            EV_PLATFORM_CONFIG_FLAGS,
            Sha384::digest(shape.as_bytes()).into(),
            &shape,
        ),
        event(
            1,
            EV_EFI_BOOT_SERVICES_APPLICATION,
            Sha384::digest(inputs.kernel).into(),
            "kernel",
        ),
        event(
            2,
            EV_EVENT_TAG,
            Sha384::digest(inputs.cmdline.as_bytes()).into(),
            inputs.cmdline,
        ),
        event(
            2,
            EV_EVENT_TAG,
            Sha384::digest(inputs.initrd).into(),
            "initrd",
        ),
    ];
    BootMeasurements {
        mr_td: Sha384::digest(inputs.firmware).into(),
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::replay;

    fn inputs<'a>(kernel: &'a [u8], cmdline: &'a str) -> BootInputs<'a> {
        BootInputs {
            firmware: b"ovmf",
            kernel,
            initrd: b"initrd",
            cmdline,
            vcpus: 1,
            memory_mb: 1024,
        }
    }

    #[test]
    fn every_input_changes_the_registers() {
        let base = measure_boot(&inputs(b"kernel", "console=ttyS0"));
        let rtmrs = replay(&base.events).unwrap().0;
        assert_ne!(rtmrs[0], [0; 48]);
        assert_eq!(rtmrs[3], [0; 48], "RTMR3 is the app's");
        let other_kernel = replay(&measure_boot(&inputs(b"kernel2", "console=ttyS0")).events)
            .unwrap()
            .0;
        assert_ne!(other_kernel[1], rtmrs[1]);
        assert_eq!(other_kernel[2], rtmrs[2]);
        let other_cmdline = replay(&measure_boot(&inputs(b"kernel", "quiet")).events)
            .unwrap()
            .0;
        assert_ne!(other_cmdline[2], rtmrs[2]);
        assert_eq!(base, measure_boot(&inputs(b"kernel", "console=ttyS0")));
    }
}
