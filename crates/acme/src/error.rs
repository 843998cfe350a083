//! Errors of the ACME client.

use std::time::Duration;

use crate::client::ChallengeKind;
use crate::dns::DnsError;

/// Why obtaining a certificate (or setting up the account) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcmeError {
    /// A trusted root for the ACME server's HTTPS is not a usable certificate.
    #[error("invalid trusted root for the ACME server")]
    TrustRoot(#[source] rustls::Error),
    /// A PEM bundle could not be read.
    #[error("malformed PEM certificate bundle")]
    Pem(#[source] rustls::pki_types::pem::Error),
    /// A request to the ACME server failed (transport, or a problem document).
    #[error("ACME {op} failed")]
    Acme {
        /// What was being done, e.g. "new order".
        op: &'static str,
        /// The ACME client's error, with the server's problem document if any.
        #[source]
        source: instant_acme::Error,
    },
    /// An order was requested for no names.
    #[error("no names to certify")]
    NoNames,
    /// TLS-ALPN-01 cannot prove control of a wildcard name (RFC 8737 §3).
    #[error("{name} is a wildcard: wildcards need DNS-01, not TLS-ALPN-01")]
    WildcardNeedsDns01 {
        /// The wildcard name.
        name: String,
    },
    /// The CA did not offer the chosen challenge type for a name.
    #[error("the CA offers no {kind} challenge for {name}")]
    ChallengeUnavailable {
        /// The name of the authorization.
        name: String,
        /// The challenge type that was asked for.
        kind: ChallengeKind,
    },
    /// The authorization of a name ended in a state other than valid.
    #[error("authorization for {name} failed: {detail}")]
    AuthorizationFailed {
        /// The name of the authorization.
        name: String,
        /// The CA's explanation (problem document of the challenge), or the status.
        detail: String,
    },
    /// The order became invalid without a failed authorization to blame.
    #[error("the order became invalid: {detail}")]
    OrderInvalid {
        /// The CA's explanation, or the status.
        detail: String,
    },
    /// Publishing or removing a DNS-01 TXT record failed.
    #[error("DNS-01 record {record} failed")]
    Dns {
        /// The TXT owner name, e.g. `_acme-challenge.example.com`.
        record: String,
        /// What the DNS side reported.
        #[source]
        source: DnsError,
    },
    /// The whole order did not complete in time.
    #[error("the order did not complete within {0:?}")]
    Timeout(Duration),
    /// Generating the certificate key, the CSR or a challenge certificate failed.
    #[error("generating {what} failed")]
    Rcgen {
        /// What was being generated.
        what: &'static str,
        /// The generator's error.
        #[source]
        source: rcgen::Error,
    },
    /// A challenge certificate's key was rejected by rustls.
    #[error("loading the TLS-ALPN-01 certificate key failed")]
    AlpnKey(#[source] rustls::Error),
    /// The CA returned something that is not a usable certificate chain.
    #[error("malformed certificate chain: {0}")]
    BadChain(String),
    /// The issued leaf certificate does not carry the key the CSR was made with.
    #[error("the issued certificate does not carry the requested key")]
    KeyMismatch,
}

impl AcmeError {
    pub(crate) fn acme(op: &'static str) -> impl FnOnce(instant_acme::Error) -> Self {
        move |source| Self::Acme { op, source }
    }
}
