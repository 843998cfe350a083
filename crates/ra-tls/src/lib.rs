//! RA-TLS: TLS certificates that carry TEE evidence, and rustls verifiers
//! that accept a peer because of its quote rather than a CA signature.
//!
//! Certificates use dstack's extension OIDs (quote, event log, app id,
//! usage) and bind their public key into the quote with dstack's report_data
//! rule, SHA-512("ratls-cert:" ‖ SPKI), so dstack's tools can read them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app_info;
pub mod boot_info;
mod cert;
mod config;
mod csr;
#[cfg(feature = "pccs")]
pub mod evidence;
pub mod oids;
mod verify;

pub use app_info::{AppInfoDecodeError, CertAppInfo};
pub use cert::{
    CertIssuer, CertRequest, Evidence, RaTlsCert, certificate_der, key_pair_from_pkcs8, pem,
    pem_certificate, report_data_for_spki,
};
pub use config::{
    client_config, deferred_client_auth_server_config, pinned_root_client_config, server_config,
    unverified_client_config, unverified_client_config_with_auth,
};
pub use csr::{CSR_CONFIRM, CertConfigV2, CertSigningRequestV2, CsrError};
pub use verify::{
    CertEvidence, PeerPolicy, RaTlsCertVerifier, RaTlsVerifier, VerifiedPeer, certificate_quote,
    decode_certificate,
};

/// Why an RA-TLS certificate could not be issued or was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaTlsError {
    /// Certificate generation failed.
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
    /// The platform could not produce evidence.
    #[error("TEE platform failed")]
    Platform(#[from] dstack_attest::PlatformError),
    /// Evidence could not be encoded into the certificate.
    #[error("cannot encode evidence: {0}")]
    Encode(String),
    /// not_before is not before not_after, or out of range.
    #[error("certificate validity window is empty or out of range")]
    InvalidValidity,
    /// The certificate cannot be parsed.
    #[error("certificate is malformed: {0}")]
    Certificate(String),
    /// The certificate is outside its validity window.
    #[error("certificate is expired or not yet valid")]
    CertificateExpired,
    /// The certificate carries no quote.
    #[error("certificate carries no quote")]
    MissingQuote,
    /// No collateral in the certificate and none configured.
    #[error("certificate carries no collateral and the verifier has none")]
    MissingCollateral,
    /// The quote failed verification.
    #[error("quote rejected")]
    Quote(#[from] dstack_attest::VerifyError),
    /// The quote does not bind this certificate's public key.
    #[error("quote report_data does not bind the certificate's public key")]
    KeyBindingMismatch,
    /// The `.8` attestation extension cannot be decoded.
    #[error("attestation extension is malformed")]
    Attestation(#[from] dstack_attest::AttestationDecodeError),
    /// The `.9` app-info extension cannot be decoded.
    #[error("app-info extension is malformed")]
    AppInfo(#[from] AppInfoDecodeError),
    /// The event log is malformed or a runtime event's digest is wrong.
    #[error("event log rejected")]
    EventLog(#[from] dstack_attest::EventLogError),
    /// The event log does not replay to the quoted RTMRs.
    #[error("event log does not match the quote")]
    Replay(#[from] dstack_attest::ReplayMismatch),
    /// The caller's policy refused the peer.
    #[error("peer refused by policy: {0}")]
    PolicyRejected(String),
    /// A TLS configuration could not be built.
    #[error("TLS configuration failed")]
    Tls(#[from] rustls::Error),
}
