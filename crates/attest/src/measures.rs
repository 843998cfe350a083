//! The measurements dstack derives from a TD report and the RTMR3 log
//! (UPSTREAM §2.2): what policies, app info and the KMS compare.

use sha2::{Digest, Sha256};

use crate::eventlog::names;
use crate::{Event, RuntimeEvent, TdReport};

/// What a verifier derives from one TD report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measures {
    /// SHA-256(MRTD ‖ RTMR0-3 [‖ mr_config_id ‖ mr_owner ‖ mr_owner_config]).
    pub mr_aggregated: [u8; 32],
    /// SHA-256(MRTD ‖ RTMR0-2 ‖ SHA-256(key-provider payload) or zeros).
    pub mr_system: [u8; 32],
    /// SHA-256 of the empty PPID dstack puts there on TDX.
    pub device_id: [u8; 32],
}

impl Measures {
    /// The measurements of `report` for an app whose `key-provider` event
    /// measured `key_provider_info` (empty: none measured).
    pub fn of(report: &TdReport, key_provider_info: &[u8]) -> Self {
        Self::with_rtmr3(report, &report.rtmr[3], key_provider_info)
    }

    /// The measurements as they stood at `boot-mr-done`: RTMR3 replayed from
    /// the runtime events up to and including that event, and no key
    /// provider (upstream's `boottime_mr`, used when an app asks for a
    /// certificate before its key provider is measured).
    pub fn at_boot_mr_done(report: &TdReport, events: &[Event]) -> Self {
        let mut rtmr3 = [0u8; 48];
        for event in events.iter().filter(|e| e.is_runtime()) {
            // Recomputed from name and payload: stripped logs blank the digest.
            let digest = RuntimeEvent {
                name: event.event.clone(),
                payload: event.event_payload.clone(),
            }
            .digest();
            crate::rtmr::extend(&mut rtmr3, &digest);
            if event.event == names::BOOT_MR_DONE {
                break;
            }
        }
        Self::with_rtmr3(report, &rtmr3, &[])
    }

    fn with_rtmr3(report: &TdReport, rtmr3: &[u8; 48], key_provider_info: &[u8]) -> Self {
        let mut aggregated = Sha256::new();
        aggregated.update(report.mr_td);
        for rtmr in &report.rtmr[..3] {
            aggregated.update(rtmr);
        }
        aggregated.update(rtmr3);
        if [report.mr_config_id, report.mr_owner, report.mr_owner_config] != [[0u8; 48]; 3] {
            aggregated.update(report.mr_config_id);
            aggregated.update(report.mr_owner);
            aggregated.update(report.mr_owner_config);
        }
        let mr_key_provider: [u8; 32] = if key_provider_info.is_empty() {
            [0; 32]
        } else {
            Sha256::digest(key_provider_info).into()
        };
        let mut system = Sha256::new();
        system.update(report.mr_td);
        for rtmr in &report.rtmr[..3] {
            system.update(rtmr);
        }
        system.update(mr_key_provider);
        Self {
            mr_aggregated: aggregated.finalize().into(),
            mr_system: system.finalize().into(),
            device_id: Sha256::digest(b"").into(),
        }
    }
}
