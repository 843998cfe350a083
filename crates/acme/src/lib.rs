//! Certificates from an ACME CA (RFC 8555) for the gateway: the base domain's
//! wildcard and custom domains.
//!
//! - [`AcmeClient`] holds an ACME account (created, or restored from stored
//!   [`AccountCredentials`]) and runs one order to the end with [`AcmeClient::issue`]:
//!   solve each authorization, finalize with a fresh ECDSA P-256 key, download
//!   the chain.
//! - DNS-01 goes through any [`Dns01`] implementation; [`Rfc2136`] is one that
//!   sends TSIG-signed DNS UPDATE messages to the zone's primary server, and
//!   also pins the account in CAA records ([`Rfc2136::set_caa`]).
//! - TLS-ALPN-01 (RFC 8737) is answered by the gateway's TLS listener through a
//!   [`TlsAlpnResponder`] that holds the pending challenge certificates.
//!
//! [`testing`] starts real `named` (bind9) and `pebble` processes for tests.

mod alpn;
mod cert;
mod client;
mod dns;
mod error;
#[doc(hidden)]
pub mod testing;

pub use alpn::{ACME_TLS_ALPN, TlsAlpnResponder};
pub use cert::{IssuedCert, not_after_from_pem, renew_due};
pub use client::{AccountCredentials, AcmeClient, ChallengeKind, Solver, parse_pem_certs};
pub use dns::{
    CaaRecord, Dns01, DnsError, DnsFuture, Rfc2136, TsigAlgorithm, TsigKey, acme_challenge_name,
    caa_issuer_value,
};
pub use error::AcmeError;
