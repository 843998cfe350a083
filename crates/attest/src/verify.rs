//! Quote verification: signatures, certificate chains, CRLs and TCB appraisal
//! through dcap-qvl, then our acceptance policy.
//!
//! Real and simulated quotes go through the same pipeline; the only
//! difference is the trust anchor handed to [`QuoteVerifier::new`].

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::collateral::{Collateral, CollateralError};
use crate::quote::{Quote, QuoteParseError};

/// A TCB appraisal result, as Intel names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum TcbStatus {
    /// Fully patched.
    UpToDate,
    /// Patched, but software mitigations are required.
    SWHardeningNeeded,
    /// Patched, but the platform configuration needs changes.
    ConfigurationNeeded,
    /// Both of the above.
    ConfigurationAndSWHardeningNeeded,
    /// The platform TCB is out of date.
    OutOfDate,
    /// Out of date and needs configuration changes.
    OutOfDateConfigurationNeeded,
    /// The platform's keys are revoked.
    Revoked,
}

impl TcbStatus {
    /// All statuses, most trusted first.
    pub const ALL: [TcbStatus; 7] = [
        TcbStatus::UpToDate,
        TcbStatus::SWHardeningNeeded,
        TcbStatus::ConfigurationNeeded,
        TcbStatus::ConfigurationAndSWHardeningNeeded,
        TcbStatus::OutOfDate,
        TcbStatus::OutOfDateConfigurationNeeded,
        TcbStatus::Revoked,
    ];

    /// Intel's name for the status.
    pub fn as_str(self) -> &'static str {
        match self {
            TcbStatus::UpToDate => "UpToDate",
            TcbStatus::SWHardeningNeeded => "SWHardeningNeeded",
            TcbStatus::ConfigurationNeeded => "ConfigurationNeeded",
            TcbStatus::ConfigurationAndSWHardeningNeeded => "ConfigurationAndSWHardeningNeeded",
            TcbStatus::OutOfDate => "OutOfDate",
            TcbStatus::OutOfDateConfigurationNeeded => "OutOfDateConfigurationNeeded",
            TcbStatus::Revoked => "Revoked",
        }
    }

    /// Parse Intel's name for a status.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for TcbStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a verifier accepts once a quote's signatures and chain check out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// TCB statuses that are accepted.
    pub accepted_statuses: Vec<TcbStatus>,
    /// Accept debug TDs/enclaves (their memory is readable by the host).
    pub allow_debug: bool,
}

impl Default for Policy {
    /// Patched platforms, including those whose fixes need configuration or
    /// software hardening (Intel's own "trusted with caveats" set); out-of-date
    /// and revoked platforms and debug TDs are refused.
    fn default() -> Self {
        Self {
            accepted_statuses: vec![
                TcbStatus::UpToDate,
                TcbStatus::SWHardeningNeeded,
                TcbStatus::ConfigurationNeeded,
                TcbStatus::ConfigurationAndSWHardeningNeeded,
            ],
            allow_debug: false,
        }
    }
}

impl Policy {
    /// Accept only fully up-to-date platforms.
    pub fn strict() -> Self {
        Self {
            accepted_statuses: vec![TcbStatus::UpToDate],
            allow_debug: false,
        }
    }
}

/// The platform a quote came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TeeKind {
    /// Intel TDX.
    Tdx,
    /// Intel SGX.
    Sgx,
}

/// A quote whose signatures, certificate chain and TCB were checked.
#[derive(Debug, Clone, Serialize)]
pub struct VerifiedQuote {
    /// The TEE type.
    pub tee: TeeKind,
    /// The combined TCB status (platform and QE).
    pub status: TcbStatus,
    /// Intel security advisories that apply to this TCB.
    pub advisory_ids: Vec<String>,
    /// The parsed quote.
    pub quote: Quote,
    /// The time the verification was done at.
    pub verified_at: DateTime<Utc>,
}

const TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%SZ";

/// Why a quote failed verification. Each variant names one check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The bytes are not a quote.
    #[error("quote is malformed")]
    Parse(#[from] QuoteParseError),
    /// The collateral's signed parts cannot be read.
    #[error("collateral is malformed: {0}")]
    CollateralMalformed(String),
    /// The collateral is not yet valid at the verification time.
    #[error(
        "collateral is not valid until {} (verification time {})",
        .issued.format(TIME_FORMAT),
        .at.format(TIME_FORMAT)
    )]
    CollateralNotYetValid {
        /// Its issue date.
        issued: DateTime<Utc>,
        /// The verification time.
        at: DateTime<Utc>,
    },
    /// The collateral expired before the verification time.
    #[error(
        "collateral expired at {} (verification time {}); fetch fresh collateral or verify at a time inside its window",
        .next_update.format(TIME_FORMAT),
        .at.format(TIME_FORMAT)
    )]
    CollateralExpired {
        /// Its next-update date.
        next_update: DateTime<Utc>,
        /// The verification time.
        at: DateTime<Utc>,
    },
    /// The attestation key's signature over the quote body does not verify.
    #[error("quote signature is invalid: the attestation key did not sign this header and report")]
    QuoteSignatureInvalid,
    /// The PCK key's signature over the QE report does not verify.
    #[error("QE report signature is invalid")]
    QeReportSignatureInvalid,
    /// The QE report does not bind the attestation key.
    #[error("QE report does not bind the attestation key")]
    QeReportBindingInvalid,
    /// A certificate chain does not lead to the trusted root, or a certificate is revoked.
    #[error("certificate chain is not trusted: {0}")]
    UntrustedChain(String),
    /// The TCB info or QE identity signature does not verify.
    #[error("collateral signature is invalid: {0}")]
    CollateralSignatureInvalid(String),
    /// The QE does not match the QE identity in the collateral.
    #[error("quoting enclave identity mismatch: {0}")]
    QeIdentityMismatch(String),
    /// The platform's TCB (from the PCK certificate and TD report) matches no level in the TCB info.
    #[error(
        "TCB appraisal failed: the platform TCB matches no level in the TCB info (FMSPC {fmspc}): {detail}"
    )]
    NoMatchingTcbLevel {
        /// The platform FMSPC.
        fmspc: String,
        /// dcap-qvl's reason.
        detail: String,
    },
    /// The TCB status is not one the policy accepts.
    #[error("TCB status {status} is not accepted by policy (advisories: {advisories})", advisories = advisory_ids.join(", "))]
    StatusRejected {
        /// The status.
        status: TcbStatus,
        /// Applicable advisories.
        advisory_ids: Vec<String>,
    },
    /// The TD or enclave runs in debug mode and the policy refuses that.
    #[error("quote is from a debug TD or enclave, which policy refuses")]
    DebugRefused,
    /// Another check failed; the text is dcap-qvl's reason.
    #[error("quote verification failed: {0}")]
    Other(String),
}

/// The root a verifier trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustAnchor {
    /// Intel's SGX/TDX provisioning root CA (built into dcap-qvl).
    Intel,
    /// Another root (DER), e.g. a simulated TEE's.
    Custom(Vec<u8>),
}

/// Verifies quotes against one trust anchor under one policy.
#[derive(Debug, Clone)]
pub struct QuoteVerifier {
    anchor: TrustAnchor,
    policy: Policy,
}

impl QuoteVerifier {
    /// A verifier that trusts `root_der` (e.g. a simulated TEE's root).
    pub fn new(root_der: Vec<u8>) -> Self {
        Self {
            anchor: TrustAnchor::Custom(root_der),
            policy: Policy::default(),
        }
    }

    /// A verifier that trusts Intel's production root.
    pub fn intel() -> Self {
        Self {
            anchor: TrustAnchor::Intel,
            policy: Policy::default(),
        }
    }

    /// The trust anchor.
    pub fn anchor(&self) -> &TrustAnchor {
        &self.anchor
    }

    /// Replace the acceptance policy.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The acceptance policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Verify at the current time.
    pub fn verify(
        &self,
        quote: &[u8],
        collateral: &Collateral,
    ) -> Result<VerifiedQuote, VerifyError> {
        self.verify_at(quote, collateral, SystemTime::now())
    }

    /// Check signatures and chains and appraise the TCB, without applying the
    /// policy's status list. Use [`QuoteVerifier::verify_at`] to also enforce it.
    pub fn appraise_at(
        &self,
        quote_bytes: &[u8],
        collateral: &Collateral,
        at: SystemTime,
    ) -> Result<VerifiedQuote, VerifyError> {
        let quote = Quote::parse(quote_bytes)?;
        let at_utc: DateTime<Utc> = at.into();
        let validity = collateral.validity().map_err(|e| match e {
            CollateralError::Malformed { what } => VerifyError::CollateralMalformed(what.into()),
            other => VerifyError::CollateralMalformed(other.to_string()),
        })?;
        if at_utc < validity.issued {
            return Err(VerifyError::CollateralNotYetValid {
                issued: validity.issued,
                at: at_utc,
            });
        }
        if at_utc > validity.next_update {
            return Err(VerifyError::CollateralExpired {
                next_update: validity.next_update,
                at: at_utc,
            });
        }
        let now_secs = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let inner = match &self.anchor {
            TrustAnchor::Intel => dcap_qvl::verify::QuoteVerifier::new_prod(),
            TrustAnchor::Custom(der) => dcap_qvl::verify::QuoteVerifier::new(der.clone()),
        };
        let report = inner
            .allow_debug(self.policy.allow_debug)
            .verify(quote_bytes, collateral.raw(), now_secs)
            .map_err(|e| classify(&e, collateral))?;
        let status = TcbStatus::from_name(&report.status)
            .ok_or_else(|| VerifyError::Other(format!("unknown TCB status {}", report.status)))?;
        let tee = match quote.td_report() {
            Some(_) => TeeKind::Tdx,
            None => TeeKind::Sgx,
        };
        Ok(VerifiedQuote {
            tee,
            status,
            advisory_ids: report.advisory_ids,
            quote,
            verified_at: at_utc,
        })
    }

    /// Verify at a given time (collateral validity, certificate and CRL
    /// dates are all checked at `at`), then apply the policy.
    pub fn verify_at(
        &self,
        quote: &[u8],
        collateral: &Collateral,
        at: SystemTime,
    ) -> Result<VerifiedQuote, VerifyError> {
        let verified = self.appraise_at(quote, collateral, at)?;
        if !self.policy.accepted_statuses.contains(&verified.status) {
            return Err(VerifyError::StatusRejected {
                status: verified.status,
                advisory_ids: verified.advisory_ids,
            });
        }
        Ok(verified)
    }
}

/// Map dcap-qvl's error chain onto the check that failed. dcap-qvl reports
/// failures as text; the phrases matched here are pinned by the tests below,
/// so a dependency update that rewords them fails CI instead of silently
/// degrading every error to `Other`.
fn classify(err: &anyhow::Error, collateral: &Collateral) -> VerifyError {
    let chain = format!("{err:#}");
    let has = |needle: &str| chain.contains(needle);
    if has("ISV enclave report signature is invalid") {
        VerifyError::QuoteSignatureInvalid
    } else if has("Signature is invalid for qe_report") {
        VerifyError::QeReportSignatureInvalid
    } else if has("QE report hash mismatch") || has("Invalid QE auth data length") {
        VerifyError::QeReportBindingInvalid
    } else if has("No matching TCB level found") || has("is below minimum required") {
        VerifyError::NoMatchingTcbLevel {
            fmspc: tcb_fmspc(collateral),
            detail: chain,
        }
    } else if has("Debug mode is enabled") {
        VerifyError::DebugRefused
    } else if has("Signature is invalid for tcb_info")
        || has("Signature is invalid for qe_identity")
    {
        VerifyError::CollateralSignatureInvalid(chain)
    } else if has("QE MRSIGNER")
        || has("QE ISVPRODID")
        || has("QE MISCSELECT")
        || has("QE ATTRIBUTES")
        || has("QE Identity id/version")
    {
        VerifyError::QeIdentityMismatch(chain)
    } else if has("UnknownRevocationStatus") || has("UnknownIssuer") {
        // The CRLs and chain were issued under another root than the trusted one.
        VerifyError::UntrustedChain(format!(
            "it was issued under another root CA than the trusted one (a simulated-TEE quote verifies only with that TEE's root trusted explicitly): {chain}"
        ))
    } else if has("certificate chain")
        || has("Failed to load root ca")
        || has("CRL")
        || has("Crl")
        || has("revoked")
        || has("Revoked")
        || has("RevocationStatus")
        || has("UnknownIssuer")
    {
        VerifyError::UntrustedChain(chain)
    } else if has("TCBInfo expired") || has("QE Identity expired") {
        VerifyError::CollateralExpired {
            next_update: collateral
                .validity()
                .map(|v| v.next_update)
                .unwrap_or_default(),
            at: Utc::now(),
        }
    } else {
        VerifyError::Other(chain)
    }
}

fn tcb_fmspc(collateral: &Collateral) -> String {
    serde_json::from_str::<serde_json::Value>(&collateral.raw().tcb_info)
        .ok()
        .and_then(|v| v.get("fmspc").and_then(|f| f.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{read_testdata, testdata_path};

    fn at(rfc3339: &str) -> SystemTime {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().into()
    }

    fn sample(name: &str) -> (Vec<u8>, Collateral) {
        let quote = read_testdata(name);
        let collateral =
            Collateral::load(&testdata_path(&format!("{name}_collateral.json"))).unwrap();
        (quote, collateral)
    }

    #[test]
    fn tdx_sample_is_up_to_date_at_collateral_time() {
        let (quote, collateral) = sample("tdx_quote");
        let v = QuoteVerifier::intel()
            .verify_at(&quote, &collateral, at("2025-06-20T00:00:00Z"))
            .unwrap();
        assert_eq!(v.tee, TeeKind::Tdx);
        assert_eq!(v.status, TcbStatus::UpToDate);
        assert!(v.advisory_ids.is_empty());
    }

    #[test]
    fn tdx_sample_collateral_expired_today() {
        let (quote, collateral) = sample("tdx_quote");
        let err = QuoteVerifier::intel()
            .verify_at(&quote, &collateral, at("2026-01-01T00:00:00Z"))
            .unwrap_err();
        assert!(
            matches!(err, VerifyError::CollateralExpired { .. }),
            "{err}"
        );
        let err = QuoteVerifier::intel()
            .verify_at(&quote, &collateral, at("2025-01-01T00:00:00Z"))
            .unwrap_err();
        assert!(
            matches!(err, VerifyError::CollateralNotYetValid { .. }),
            "{err}"
        );
    }

    #[test]
    fn outdated_sample_matches_no_tcb_level() {
        let (quote, collateral) = sample("tdx_quote_outdated");
        let issued = collateral.validity().unwrap().issued;
        let err = QuoteVerifier::intel()
            .verify_at(
                &quote,
                &collateral,
                (issued + chrono::Duration::hours(1)).into(),
            )
            .unwrap_err();
        match err {
            VerifyError::NoMatchingTcbLevel { fmspc, .. } => assert_eq!(fmspc.len(), 12),
            other => panic!("expected NoMatchingTcbLevel, got {other:?}"),
        }
    }

    #[test]
    fn sgx_sample_needs_configuration_and_hardening() {
        let (quote, collateral) = sample("sgx_quote");
        let issued = collateral.validity().unwrap().issued;
        let when: SystemTime = (issued + chrono::Duration::hours(1)).into();
        let v = QuoteVerifier::intel()
            .verify_at(&quote, &collateral, when)
            .unwrap();
        assert_eq!(v.tee, TeeKind::Sgx);
        assert_eq!(v.status, TcbStatus::ConfigurationAndSWHardeningNeeded);
        assert!(v.advisory_ids.contains(&"INTEL-SA-00289".to_string()));
        assert!(v.advisory_ids.contains(&"INTEL-SA-00615".to_string()));
        // A strict policy refuses the same quote and says why.
        let err = QuoteVerifier::intel()
            .with_policy(Policy::strict())
            .verify_at(&quote, &collateral, when)
            .unwrap_err();
        assert_eq!(
            err,
            VerifyError::StatusRejected {
                status: TcbStatus::ConfigurationAndSWHardeningNeeded,
                advisory_ids: v.advisory_ids.clone(),
            }
        );
    }

    #[test]
    fn flipped_body_byte_breaks_the_quote_signature() {
        let (mut quote, collateral) = sample("tdx_quote");
        // A byte inside the RTMR3 field of the signed TD report.
        let rtmr3_offset = crate::quote::HEADER_LEN + 16 + 48 * 2 + 8 * 3 + 48 * 4 + 48 * 3;
        quote[rtmr3_offset] ^= 0x01;
        let err = QuoteVerifier::intel()
            .verify_at(&quote, &collateral, at("2025-06-20T00:00:00Z"))
            .unwrap_err();
        assert_eq!(err, VerifyError::QuoteSignatureInvalid);
        assert!(err.to_string().contains("signature"));
    }

    #[test]
    fn wrong_trust_anchor_is_an_untrusted_chain() {
        let (quote, collateral) = sample("tdx_quote");
        let other_root = crate::sim::SimAuthority::generate()
            .unwrap()
            .root_der()
            .to_vec();
        let err = QuoteVerifier::new(other_root)
            .verify_at(&quote, &collateral, at("2025-06-20T00:00:00Z"))
            .unwrap_err();
        assert!(matches!(err, VerifyError::UntrustedChain(_)), "{err:?}");
    }
}
