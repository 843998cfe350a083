//! The `local` key provider, guest side (UPSTREAM §9, upstream
//! `dstack-util` `get_sealing_key`): an ephemeral X25519 key goes into the
//! quote's report_data, the host's provider answers with the TD's sealing key
//! sealed to it plus its own SGX quote binding SHA-256 of the sealed box, and
//! the opened key seeds the app keys (UPSTREAM §4.4).
//!
//! The key depends on MRTD and RTMR0-3 at the time of the request, so it
//! follows the image, the VM shape and the app's identity (app-id,
//! compose-hash, instance-id): call this after `boot-mr-done` and before
//! `key-provider` is measured, as upstream does.
//!
//! The provider's SGX quote is checked against collateral from the PCCS in
//! `SysConfig.pccs_url` (Intel's PCS or the operator's PCCS on TDX hosts, the
//! supervisor's sim PCCS on sim hosts), so both paths run the same code.
//! Collateral the host sends along is used only when no PCCS is configured:
//! it is signed, so it is as trustworthy, but upstream's provider sends none.

use dstack_attest::quote::EnclaveReport;
use dstack_attest::{
    Collateral, CollateralError, PccsError, Platform, PlatformError, PlatformKind, Quote,
    QuoteParseError, QuoteVerifier, Report, VerifyError,
};
use dstack_keys::sealing::{RecipientKey, SealingError, check_evidence};
use dstack_proto::host::{GetSealingKeyRequest, GetSealingKeyResponse};
use zeroize::Zeroizing;

use crate::hostapi::HostApiError;

/// What the local key provider gave.
pub struct LocalKey {
    /// The 32-byte sealing key: the seed of the app keys.
    pub seed: Zeroizing<[u8; 32]>,
    /// The provider enclave's MRENCLAVE: the provider id that is measured.
    pub mr_enclave: [u8; 32],
}

impl std::fmt::Debug for LocalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKey")
            .field("mr_enclave", &hex::encode(self.mr_enclave))
            .finish_non_exhaustive()
    }
}

/// Why the local key provider gave no usable key. Each stops the boot.
#[derive(Debug, thiserror::Error)]
pub enum LocalKeyError {
    /// The TEE could not quote the request.
    #[error("the TEE could not quote the sealing-key request")]
    Quote(#[source] PlatformError),
    /// The host refused or failed.
    #[error("the host's local key provider gave no key")]
    Host(#[source] HostApiError),
    /// The provider's quote is not a quote, or ours names no root.
    #[error("the key provider's quote is malformed")]
    ProviderQuote(#[source] QuoteParseError),
    /// The provider's evidence is not an SGX enclave's.
    #[error("the key provider's quote is not an SGX quote")]
    NotSgx,
    /// No PCCS is configured and the host sent no collateral.
    #[error(
        "no PCCS to fetch the key provider's collateral from: the host set no pccs_url (dstack-supervisor --pccs-url) and sent no collateral"
    )]
    NoPccs,
    /// The PCCS gave no collateral for the provider's quote.
    #[error("cannot get collateral for the key provider's quote")]
    Pccs(#[source] PccsError),
    /// The collateral is unreadable.
    #[error("the key provider's collateral is malformed")]
    Collateral(#[source] CollateralError),
    /// On a simulated TEE, the TD's own quote carries no root to trust.
    #[error("the TEE's own quote names no root certificate")]
    NoRoot,
    /// The provider's quote did not verify.
    #[error("the key provider's quote does not verify")]
    ProviderVerify(#[source] VerifyError),
    /// The box or its binding is wrong.
    #[error("the sealed key is unusable")]
    Sealing(#[source] SealingError),
}

/// Collateral for a quote, from the PCCS (in the guest, a cache in front of it).
pub type CollateralSource<'a> = &'a mut dyn FnMut(&[u8]) -> Result<Collateral, PccsError>;

/// Asks the provider (through `fetch`, the host API) for this TD's sealing
/// key, checks the provider's evidence against collateral from `pccs` (`None`:
/// no PCCS configured) and opens the key. Blocks on the TEE and the PCCS.
pub fn request(
    platform: &dyn Platform,
    fetch: &mut dyn FnMut(GetSealingKeyRequest) -> Result<GetSealingKeyResponse, HostApiError>,
    pccs: Option<CollateralSource<'_>>,
) -> Result<LocalKey, LocalKeyError> {
    let recipient = RecipientKey::generate();
    let quote = platform
        .quote(&recipient.report_data())
        .map_err(LocalKeyError::Quote)?;
    let response = fetch(GetSealingKeyRequest {
        quote: quote.clone(),
    })
    .map_err(LocalKeyError::Host)?;
    let provider = verify_provider(platform.kind(), &quote, &response, pccs)?;
    check_evidence(&response.encrypted_key, &provider.report_data)
        .map_err(LocalKeyError::Sealing)?;
    let seed = recipient
        .open_sealing_key(&response.encrypted_key)
        .map_err(LocalKeyError::Sealing)?;
    Ok(LocalKey {
        seed,
        mr_enclave: provider.mr_enclave,
    })
}

/// Verifies the provider's SGX quote: under Intel's root on TDX; on the
/// simulated TEE under the root this TD's own quotes chain to, the only
/// authority a sim guest has.
fn verify_provider(
    kind: PlatformKind,
    own_quote: &[u8],
    response: &GetSealingKeyResponse,
    pccs: Option<CollateralSource<'_>>,
) -> Result<EnclaveReport, LocalKeyError> {
    let collateral = match pccs {
        Some(fetch) => fetch(&response.provider_quote).map_err(LocalKeyError::Pccs)?,
        None if response.provider_collateral.is_empty() => return Err(LocalKeyError::NoPccs),
        None => Collateral::from_json(&response.provider_collateral)
            .map_err(LocalKeyError::Collateral)?,
    };
    let verifier = match kind {
        PlatformKind::Tdx => QuoteVerifier::intel(),
        PlatformKind::Sim => {
            let own = Quote::parse(own_quote).map_err(LocalKeyError::ProviderQuote)?;
            QuoteVerifier::new(
                own.signature
                    .chain_root_der()
                    .ok_or(LocalKeyError::NoRoot)?,
            )
        }
    };
    let verified = verifier
        .verify(&response.provider_quote, &collateral)
        .map_err(LocalKeyError::ProviderVerify)?;
    match verified.quote.report {
        Report::Sgx(report) => Ok(report),
        Report::Td(_) => Err(LocalKeyError::NotSgx),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::Utc;
    use dstack_attest::sim::SimEnclaveIdentity;
    use dstack_attest::{SimAuthority, SimPlatform, SimTdIdentity};
    use dstack_keys::sealing::{
        TdMeasurements, derive_sealing_key, evidence_report_data, recipient_from_report_data, seal,
    };

    use super::*;

    const ENCLAVE: SimEnclaveIdentity = SimEnclaveIdentity {
        mr_enclave: [0xee; 32],
        mr_signer: [0x55; 32],
        isv_prod_id: 1,
        isv_svn: 1,
    };

    /// A provider as the supervisor plays it, in a few lines.
    fn provide(authority: &SimAuthority, quote: &[u8]) -> GetSealingKeyResponse {
        let td = Quote::parse(quote).unwrap().td_report().unwrap().clone();
        let key = derive_sealing_key(
            &[9; 32],
            &TdMeasurements {
                mr_td: &td.mr_td,
                rtmr: &td.rtmr,
            },
        );
        let encrypted_key = seal(&recipient_from_report_data(&td.report_data), &key[..]).unwrap();
        GetSealingKeyResponse {
            provider_quote: authority
                .sgx_quote(&ENCLAVE, &evidence_report_data(&encrypted_key))
                .unwrap(),
            encrypted_key,
            provider_collateral: authority.sgx_collateral(Utc::now()).unwrap().to_json(),
        }
    }

    fn platform(authority: Arc<SimAuthority>) -> SimPlatform {
        SimPlatform::new(authority, SimTdIdentity::default(), vec![]).unwrap()
    }

    #[test]
    fn opens_the_key_the_provider_derived() {
        let authority = Arc::new(SimAuthority::generate().unwrap());
        let td = platform(authority.clone());
        let mut fetch = |r: GetSealingKeyRequest| Ok(provide(&authority, &r.quote));
        let first = request(&td, &mut fetch, None).unwrap();
        assert_eq!(first.mr_enclave, [0xee; 32]);
        // Same TD, fresh ephemeral key: same sealing key.
        let again = request(&td, &mut fetch, None).unwrap();
        assert_eq!(*first.seed, *again.seed);
        let expected = derive_sealing_key(
            &[9; 32],
            &TdMeasurements {
                mr_td: &[0; 48],
                rtmr: &[[0; 48]; 4],
            },
        );
        assert_eq!(*first.seed, *expected);
    }

    #[test]
    fn refuses_unbound_foreign_or_bare_evidence() {
        let authority = Arc::new(SimAuthority::generate().unwrap());
        let td = platform(authority.clone());

        // The provider's quote binds another box.
        let mut swapped = |r: GetSealingKeyRequest| {
            let mut response = provide(&authority, &r.quote);
            let other = provide(&authority, &r.quote);
            response.provider_quote = other.provider_quote;
            Ok(response)
        };
        let err = request(&td, &mut swapped, None).unwrap_err();
        assert!(
            matches!(err, LocalKeyError::Sealing(SealingError::Evidence { .. })),
            "{err:?}"
        );

        // Evidence signed under another root.
        let foreign = SimAuthority::generate().unwrap();
        let mut forged = |r: GetSealingKeyRequest| {
            let mut response = provide(&authority, &r.quote);
            response.provider_quote = foreign
                .sgx_quote(&ENCLAVE, &evidence_report_data(&response.encrypted_key))
                .unwrap();
            response.provider_collateral = foreign.sgx_collateral(Utc::now()).unwrap().to_json();
            Ok(response)
        };
        let err = request(&td, &mut forged, None).unwrap_err();
        assert!(matches!(err, LocalKeyError::ProviderVerify(_)), "{err:?}");

        // No collateral (what an upstream provider sends).
        let mut bare = |r: GetSealingKeyRequest| {
            let mut response = provide(&authority, &r.quote);
            response.provider_collateral.clear();
            Ok(response)
        };
        let err = request(&td, &mut bare, None).unwrap_err();
        assert!(matches!(err, LocalKeyError::NoPccs), "{err:?}");

        // The host refuses.
        let mut refused = |_r: GetSealingKeyRequest| {
            Err(HostApiError::Status {
                path: "/v1/sealing-key".into(),
                status: 404,
                message: "no provider".into(),
            })
        };
        let err = request(&td, &mut refused, None).unwrap_err();
        assert!(matches!(err, LocalKeyError::Host(_)), "{err:?}");
    }

    #[test]
    fn collateral_comes_from_the_pccs_when_one_is_configured() {
        let authority = Arc::new(SimAuthority::generate().unwrap());
        let td = platform(authority.clone());
        // The host's collateral is unusable: only the PCCS's can make this pass.
        let mut fetch = |r: GetSealingKeyRequest| {
            let mut response = provide(&authority, &r.quote);
            response.provider_collateral = "{}".into();
            Ok(response)
        };
        let mut asked = Vec::new();
        let mut pccs = |quote: &[u8]| {
            asked.push(Quote::parse(quote).unwrap().report.clone());
            Ok(authority.sgx_collateral(Utc::now()).unwrap())
        };
        let key = request(&td, &mut fetch, Some(&mut pccs)).unwrap();
        assert_eq!(key.mr_enclave, [0xee; 32]);
        // It was asked for the provider's SGX quote, not the TD's own.
        assert!(matches!(asked.as_slice(), [Report::Sgx(_)]), "{asked:?}");

        let mut down = |_: &[u8]| {
            Err(PccsError::Unreachable {
                url: "http://10.0.2.2:8083/sgx/certification/v4/pckcrl".into(),
                reason: "connection refused".into(),
            })
        };
        let err = request(&td, &mut fetch, Some(&mut down)).unwrap_err();
        assert!(matches!(err, LocalKeyError::Pccs(_)), "{err:?}");
    }
}
