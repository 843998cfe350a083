//! The simulated TEE (DESIGN §5): on hosts without TDX the supervisor plays
//! each VM's TDX module. It measures the image a VM boots (MRTD, RTMR0-2),
//! binds the app through `mr_config_id`, holds RTMR3, extends it when that
//! VM's guest asks over its own host API socket, and signs quotes with the
//! host's simulated attestation key. Verifiers trust these quotes only when
//! handed the sim root (`dstack-supervisor sim-root`) explicitly.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use dstack_attest::eventlog::Event;
use dstack_attest::{SimAuthority, SimError, SimTdIdentity, rtmr};
use dstack_proto::host::TeeInfo;
use serde::{Deserialize, Serialize};

use crate::state::write_json_atomic;
use dstack_firmware::TdMeasurements;

/// The file holding the host's simulated attestation keys.
pub const AUTHORITY_FILE: &str = "sim-tee.json";

/// Why a simulated-TEE request failed.
#[derive(Debug, thiserror::Error)]
pub enum SimTeeError {
    /// The host plays no TEE for this VM (a TDX host, or not booted yet).
    #[error("this VM has no simulated TEE (the host runs real TDX, or the VM is not booted)")]
    Absent,
    /// A guest may extend only RTMR3.
    #[error("index: only RTMR3 may be extended by the guest, not RTMR{0}")]
    Register(u32),
    /// Bad input length.
    #[error("{field}: expected {expected} bytes, got {got}")]
    Length {
        /// Which field.
        field: &'static str,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// Reading the image or the stored state failed.
    #[error("cannot {operation} {}", path.display())]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The stored TD state is unreadable.
    #[error("{} is invalid: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Signing failed.
    #[error("the simulated quoting enclave failed")]
    Sim(#[from] SimError),
}

/// The host's simulated Intel: loaded once, shared by every VM.
pub fn load_authority(state_dir: &Path) -> Result<Arc<SimAuthority>, SimError> {
    SimAuthority::load_or_generate(&state_dir.join(AUTHORITY_FILE)).map(Arc::new)
}

/// What a TD is launched with: what it measured at boot (computed by
/// `dstack_machine::measure_td`, the code verifiers predict with) and the
/// `mr_config_id` the host binds.
#[derive(Debug, Clone, Copy)]
pub struct TdLaunch<'a> {
    /// MRTD, RTMR0-2 and the boot event log.
    pub measured: &'a TdMeasurements,
    /// `mr_config_id` the host binds at launch.
    pub mr_config_id: [u8; 48],
}

/// The persisted state of one simulated TD, so a restarted supervisor keeps
/// answering for a running guest with the registers it already extended.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    #[serde(with = "hex::serde")]
    mr_td: Vec<u8>,
    rtmr: [String; 4],
    #[serde(with = "hex::serde")]
    mr_config_id: Vec<u8>,
    boot_events: Vec<Event>,
}

/// One VM's simulated TDX module.
#[derive(Debug)]
pub struct SimTd {
    authority: Arc<SimAuthority>,
    path: PathBuf,
    boot_events: Vec<Event>,
    identity: Mutex<SimTdIdentity>,
}

fn array48(bytes: &[u8], path: &Path) -> Result<[u8; 48], SimTeeError> {
    bytes.try_into().map_err(|_| SimTeeError::Corrupt {
        path: path.to_owned(),
        reason: format!("a measurement has {} bytes, not 48", bytes.len()),
    })
}

impl SimTd {
    /// A freshly booted TD: the registers it measured, RTMR3 at zero,
    /// saved at `path`.
    pub fn boot(
        authority: Arc<SimAuthority>,
        launch: &TdLaunch<'_>,
        path: PathBuf,
    ) -> Result<Self, SimTeeError> {
        let measured = launch.measured;
        let mut rtmr = [[0u8; 48]; 4];
        rtmr[..3].copy_from_slice(&measured.rtmr);
        let identity = SimTdIdentity {
            mr_td: measured.mr_td,
            rtmr,
            mr_config_id: launch.mr_config_id,
            ..SimTdIdentity::default()
        };
        let td = Self {
            authority,
            path,
            boot_events: measured.events.clone(),
            identity: Mutex::new(identity),
        };
        td.save(&td.identity())?;
        Ok(td)
    }

    /// The TD a previous supervisor saved at `path`, if any.
    pub fn resume(
        authority: Arc<SimAuthority>,
        path: PathBuf,
    ) -> Result<Option<Self>, SimTeeError> {
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SimTeeError::Io {
                    operation: "read",
                    path,
                    source,
                });
            }
        };
        let saved: Saved = serde_json::from_slice(&bytes).map_err(|e| SimTeeError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut rtmr = [[0u8; 48]; 4];
        for (register, text) in rtmr.iter_mut().zip(&saved.rtmr) {
            let bytes = hex::decode(text).map_err(|e| SimTeeError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            *register = array48(&bytes, &path)?;
        }
        let identity = SimTdIdentity {
            mr_td: array48(&saved.mr_td, &path)?,
            rtmr,
            mr_config_id: array48(&saved.mr_config_id, &path)?,
            ..SimTdIdentity::default()
        };
        Ok(Some(Self {
            authority,
            path,
            boot_events: saved.boot_events,
            identity: Mutex::new(identity),
        }))
    }

    fn identity(&self) -> SimTdIdentity {
        self.identity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn save(&self, identity: &SimTdIdentity) -> Result<(), SimTeeError> {
        let saved = Saved {
            mr_td: identity.mr_td.to_vec(),
            rtmr: identity.rtmr.map(hex::encode),
            mr_config_id: identity.mr_config_id.to_vec(),
            boot_events: self.boot_events.clone(),
        };
        write_json_atomic(&self.path, &saved).map_err(|source| SimTeeError::Io {
            operation: "write",
            path: self.path.clone(),
            source,
        })
    }

    /// `GET /v1/tee`.
    pub fn info(&self) -> TeeInfo {
        TeeInfo {
            kind: "sim".into(),
            // A Vec of plain structs always serialises.
            boot_event_log: serde_json::to_string(&self.boot_events).unwrap_or_default(),
        }
    }

    /// `POST /v1/tee/extend`: extends RTMR3, persisted before it is acknowledged.
    pub fn extend(&self, index: u32, digest: &[u8]) -> Result<(), SimTeeError> {
        if index != 3 {
            return Err(SimTeeError::Register(index));
        }
        let digest: [u8; 48] = digest.try_into().map_err(|_| SimTeeError::Length {
            field: "digest",
            expected: 48,
            got: digest.len(),
        })?;
        let mut identity = self.identity.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = identity.clone();
        rtmr::extend(&mut next.rtmr[3], &digest);
        self.save(&next)?;
        *identity = next;
        Ok(())
    }

    /// `POST /v1/tee/quote`.
    pub fn quote(&self, report_data: &[u8]) -> Result<Vec<u8>, SimTeeError> {
        let report_data: [u8; 64] = report_data.try_into().map_err(|_| SimTeeError::Length {
            field: "report_data",
            expected: 64,
            got: report_data.len(),
        })?;
        Ok(self.authority.quote(&self.identity(), &report_data)?)
    }

    /// `GET /v1/tee/collateral`: dcap-qvl collateral JSON, valid from now.
    pub fn collateral_json(&self) -> Result<String, SimTeeError> {
        Ok(self.authority.collateral(Utc::now())?.to_json())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use dstack_attest::eventlog::{check_replay, parse_event_log_json};
    use dstack_attest::{Quote, QuoteVerifier, Rtmrs, RuntimeEvent};

    use super::*;

    /// A boot log of two events and the registers it replays to.
    pub(crate) fn measured() -> TdMeasurements {
        let events = vec![
            Event {
                imr: 0,
                event_type: 0x8000_000b,
                digest: vec![1; 48],
                event: String::new(),
                event_payload: b"hob".to_vec(),
            },
            Event {
                imr: 2,
                event_type: 0x0000_000d,
                digest: vec![2; 48],
                event: String::new(),
                event_payload: b"initrd".to_vec(),
            },
        ];
        let mut rtmr = [[0u8; 48]; 3];
        rtmr::extend(&mut rtmr[0], &[1; 48]);
        rtmr::extend(&mut rtmr[2], &[2; 48]);
        TdMeasurements {
            mr_td: [7; 48],
            rtmr,
            events,
        }
    }

    #[test]
    fn quotes_replay_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let authority = Arc::new(SimAuthority::generate().unwrap());
        let path = dir.path().join("sim-td.json");
        let measured = measured();
        let launch = TdLaunch {
            measured: &measured,
            mr_config_id: dstack_compose::mr_config_id_v1(&[5; 32]),
        };
        let td = SimTd::boot(authority.clone(), &launch, path.clone()).unwrap();
        let event = RuntimeEvent {
            name: "app-id".into(),
            payload: vec![1; 20],
        };
        td.extend(3, &event.digest()).unwrap();
        assert!(matches!(
            td.extend(2, &[0; 48]),
            Err(SimTeeError::Register(2))
        ));
        assert!(matches!(
            td.extend(3, &[0; 47]),
            Err(SimTeeError::Length { .. })
        ));
        assert!(td.quote(&[0; 63]).is_err());

        // A new supervisor picks up where this one left off.
        drop(td);
        let td = SimTd::resume(authority.clone(), path).unwrap().unwrap();
        let quote = td.quote(&[9; 64]).unwrap();
        let collateral =
            dstack_attest::Collateral::from_json(&td.collateral_json().unwrap()).unwrap();
        let verified = QuoteVerifier::new(authority.root_der().to_vec())
            .verify(&quote, &collateral)
            .unwrap();
        let report = verified.quote.td_report().unwrap();
        assert_eq!(report.mr_config_id[0], 1);
        assert_eq!(report.mr_td, [7; 48]);
        assert_eq!(report.rtmr[..3], measured.rtmr);
        let mut events = parse_event_log_json(&td.info().boot_event_log).unwrap();
        events.push(event.to_event());
        check_replay(&events, &Rtmrs(report.rtmr)).unwrap();
        assert!(Quote::parse(&quote).is_ok());
    }
}
