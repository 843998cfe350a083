//! The simulated TEE (DESIGN §5): for hosts without TDX. A [`SimAuthority`]
//! plays Intel (root CA, PCK chain, TCB info, quoting enclave) and a
//! [`SimPlatform`] plays one TD's TDX module (MRTD, RTMRs, quotes).
//!
//! Simulated quotes have the byte layout of real TDX v4 quotes and verify
//! through the same dcap-qvl pipeline; only the trust anchor differs, and a
//! verifier accepts them only when handed the simulated root explicitly.

mod authority;
mod quote_builder;

use std::sync::{Arc, Mutex, PoisonError};

use chrono::Utc;

pub use authority::{SimAuthority, SimError};
pub use quote_builder::{
    ENCLAVE_ATTRIBUTES_PRODUCTION, SimEnclaveIdentity, SimTdIdentity, TD_ATTRIBUTES_PRODUCTION,
    XFAM_DEFAULT,
};

use crate::collateral::Collateral;
use crate::eventlog::{Event, RuntimeEvent, replay};
use crate::platform::{Platform, PlatformError, PlatformKind};

/// One simulated TD: its measurements, event log and quoting.
#[derive(Debug)]
pub struct SimPlatform {
    authority: Arc<SimAuthority>,
    td: Mutex<SimTd>,
}

#[derive(Debug)]
struct SimTd {
    identity: SimTdIdentity,
    events: Vec<Event>,
}

impl SimPlatform {
    /// A TD whose RTMR0-2 are what `boot_events` replay to and whose RTMR3 starts at zero.
    pub fn new(
        authority: Arc<SimAuthority>,
        mut identity: SimTdIdentity,
        boot_events: Vec<Event>,
    ) -> Result<Self, PlatformError> {
        let replayed = replay(&boot_events)?;
        identity.rtmr = replayed.0;
        Ok(Self {
            authority,
            td: Mutex::new(SimTd {
                identity,
                events: boot_events,
            }),
        })
    }

    /// The TD's current identity (MRTD, RTMRs, config ids).
    pub fn identity(&self) -> SimTdIdentity {
        self.td
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .identity
            .clone()
    }

    /// The authority that signs this TD's quotes.
    pub fn authority(&self) -> &Arc<SimAuthority> {
        &self.authority
    }
}

impl Platform for SimPlatform {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Sim
    }

    fn quote(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, PlatformError> {
        let identity = self.identity();
        Ok(self.authority.quote(&identity, report_data)?)
    }

    fn emit_event(&self, event: &RuntimeEvent) -> Result<(), PlatformError> {
        let mut td = self.td.lock().unwrap_or_else(PoisonError::into_inner);
        let digest = event.digest();
        crate::rtmr::extend(&mut td.identity.rtmr[3], &digest);
        td.events.push(event.to_event());
        Ok(())
    }

    fn collateral(&self) -> Result<Option<Collateral>, PlatformError> {
        Ok(Some(self.authority.collateral(Utc::now())?))
    }

    fn event_log(&self) -> Result<Vec<Event>, PlatformError> {
        Ok(self
            .td
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .events
            .clone())
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::eventlog::check_replay;
    use crate::rtmr::Rtmrs;
    use crate::verify::{QuoteVerifier, TcbStatus, VerifyError};

    fn authority() -> Arc<SimAuthority> {
        Arc::new(SimAuthority::generate().unwrap())
    }

    fn boot_event(imr: u32, byte: u8) -> Event {
        Event {
            imr,
            event_type: 0x80000001,
            digest: vec![byte; 48],
            event: String::new(),
            event_payload: vec![byte],
        }
    }

    fn td(authority: Arc<SimAuthority>) -> SimPlatform {
        let identity = SimTdIdentity {
            mr_td: [0x42; 48],
            ..SimTdIdentity::default()
        };
        let events = vec![
            boot_event(0, 1),
            boot_event(1, 2),
            boot_event(2, 3),
            boot_event(0, 4),
        ];
        SimPlatform::new(authority, identity, events).unwrap()
    }

    #[test]
    fn sim_quote_round_trips_with_the_sim_root() {
        let platform = td(authority());
        platform
            .emit_event(&RuntimeEvent {
                name: "app-id".into(),
                payload: vec![7; 20],
            })
            .unwrap();
        let report_data = [0x5a; 64];
        let quote = platform.quote(&report_data).unwrap();
        let collateral = platform.collateral().unwrap().unwrap();
        let verified = QuoteVerifier::new(platform.authority().root_der().to_vec())
            .verify(&quote, &collateral)
            .unwrap();
        assert_eq!(verified.status, TcbStatus::UpToDate);
        let report = verified.quote.td_report().unwrap();
        assert_eq!(report.report_data, report_data);
        assert_eq!(report.mr_td, [0x42; 48]);
        // The event log replays to the quoted registers, RTMR3 included.
        let events = platform.event_log().unwrap();
        check_replay(&events, &Rtmrs(report.rtmr)).unwrap();
        assert_ne!(report.rtmr[3], [0; 48]);
    }

    #[test]
    fn sim_sgx_quote_verifies_with_sgx_collateral_only() {
        let authority = authority();
        let enclave = SimEnclaveIdentity {
            mr_enclave: [0x3c; 32],
            mr_signer: [0x4d; 32],
            isv_prod_id: 1,
            isv_svn: 2,
        };
        let quote = authority.sgx_quote(&enclave, &[0x6e; 64]).unwrap();
        let verifier = QuoteVerifier::new(authority.root_der().to_vec());
        let verified = verifier
            .verify(&quote, &authority.sgx_collateral(Utc::now()).unwrap())
            .unwrap();
        assert_eq!(verified.status, TcbStatus::UpToDate);
        let crate::Report::Sgx(report) = &verified.quote.report else {
            panic!("not an SGX report");
        };
        assert_eq!(report.mr_enclave, [0x3c; 32]);
        assert_eq!(report.report_data, [0x6e; 64]);
        assert_eq!(
            verified.quote.signature.chain_root_der().unwrap(),
            authority.root_der()
        );
        // TDX collateral does not vouch for an SGX quote.
        assert!(
            verifier
                .verify(&quote, &authority.collateral(Utc::now()).unwrap())
                .is_err()
        );
    }

    #[test]
    fn sim_quote_fails_without_the_sim_root() {
        let platform = td(authority());
        let quote = platform.quote(&[0; 64]).unwrap();
        let collateral = platform.collateral().unwrap().unwrap();
        let err = QuoteVerifier::intel()
            .verify(&quote, &collateral)
            .unwrap_err();
        assert!(matches!(err, VerifyError::UntrustedChain(_)), "{err:?}");
        // Another simulated authority's root is no better.
        let err = QuoteVerifier::new(authority().root_der().to_vec())
            .verify(&quote, &collateral)
            .unwrap_err();
        assert!(matches!(err, VerifyError::UntrustedChain(_)), "{err:?}");
    }

    #[test]
    fn tampered_sim_quote_is_rejected() {
        let platform = td(authority());
        let mut quote = platform.quote(&[0; 64]).unwrap();
        quote[48 + 136] ^= 0xff; // a byte of MRTD
        let err = QuoteVerifier::new(platform.authority().root_der().to_vec())
            .verify(&quote, &platform.collateral().unwrap().unwrap())
            .unwrap_err();
        assert_eq!(err, VerifyError::QuoteSignatureInvalid);
    }

    #[test]
    fn debug_td_is_refused_by_default() {
        let authority = authority();
        let identity = SimTdIdentity {
            td_attributes: [1, 0, 0, 0x10, 0, 0, 0, 0],
            ..SimTdIdentity::default()
        };
        let platform = SimPlatform::new(authority.clone(), identity, vec![]).unwrap();
        let quote = platform.quote(&[0; 64]).unwrap();
        let err = QuoteVerifier::new(authority.root_der().to_vec())
            .verify(&quote, &platform.collateral().unwrap().unwrap())
            .unwrap_err();
        assert_eq!(err, VerifyError::DebugRefused);
    }

    #[test]
    fn collateral_expires() {
        let platform = td(authority());
        let quote = platform.quote(&[0; 64]).unwrap();
        let collateral = platform.collateral().unwrap().unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(31 * 86400);
        let err = QuoteVerifier::new(platform.authority().root_der().to_vec())
            .verify_at(&quote, &collateral, later)
            .unwrap_err();
        assert!(
            matches!(err, VerifyError::CollateralExpired { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn authority_survives_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sim-tee.json");
        let first = SimAuthority::load_or_generate(&path).unwrap();
        let again = SimAuthority::load_or_generate(&path).unwrap();
        assert_eq!(first.root_der(), again.root_der());
        // A quote from the reloaded authority verifies under the first one's root.
        let platform = SimPlatform::new(Arc::new(again), SimTdIdentity::default(), vec![]).unwrap();
        let quote = platform.quote(&[3; 64]).unwrap();
        QuoteVerifier::new(first.root_der().to_vec())
            .verify(&quote, &platform.collateral().unwrap().unwrap())
            .unwrap();
        assert!(SimAuthority::from_json("{}").is_err());
    }
}
