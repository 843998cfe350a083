//! DNS-01 records: the [`Dns01`] seam, and RFC 2136 dynamic updates signed
//! with TSIG as one implementation of it.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

mod rfc2136;
mod wire;

pub use rfc2136::{CaaRecord, Rfc2136};

/// What [`Dns01`] methods return: boxed so the trait stays object safe.
pub type DnsFuture<'a> = Pin<Box<dyn Future<Output = Result<(), DnsError>> + Send + 'a>>;

/// Where DNS-01 challenge records are published.
pub trait Dns01: Send + Sync + fmt::Debug {
    /// Adds the TXT record `value` at `name` (next to any others there, as a
    /// wildcard and its base name share one owner) and returns once the zone's
    /// authoritative server answers it, so the CA can be told to validate.
    fn set_txt<'a>(&'a self, name: &'a str, value: &'a str) -> DnsFuture<'a>;

    /// Removes the TXT record `value` at `name`, leaving other values there.
    fn remove_txt<'a>(&'a self, name: &'a str, value: &'a str) -> DnsFuture<'a>;
}

/// The owner of the DNS-01 TXT record for `domain`: `_acme-challenge.<domain>`,
/// where `*.example` validates at `_acme-challenge.example` (RFC 8555 §8.4).
pub fn acme_challenge_name(domain: &str) -> String {
    let base = domain.strip_prefix("*.").unwrap_or(domain);
    format!("_acme-challenge.{}", base.trim_end_matches('.'))
}

/// The CAA `issue`/`issuewild` value upstream pins: only `ca_domain`, only
/// through DNS-01, only for this account (RFC 8657 parameters).
pub fn caa_issuer_value(ca_domain: &str, account_uri: &str) -> String {
    format!("{ca_domain};validationmethods=dns-01;accounturi={account_uri}")
}

/// TSIG MAC algorithms (RFC 8945) that updates can be signed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TsigAlgorithm {
    /// `hmac-sha256`, the one RFC 8945 recommends.
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    /// `hmac-sha512`.
    #[serde(rename = "hmac-sha512")]
    HmacSha512,
}

impl TsigAlgorithm {
    /// The algorithm's name as bind9's `named.conf` and `nsupdate` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::HmacSha512 => "hmac-sha512",
        }
    }

    fn to_hickory(self) -> hickory_proto::dnssec::rdata::tsig::TsigAlgorithm {
        use hickory_proto::dnssec::rdata::tsig::TsigAlgorithm as H;
        match self {
            Self::HmacSha256 => H::HmacSha256,
            Self::HmacSha512 => H::HmacSha512,
        }
    }
}

impl fmt::Display for TsigAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A TSIG key shared with the DNS server; the secret is redacted in `Debug`
/// and wiped on drop.
#[derive(Clone)]
pub struct TsigKey {
    name: String,
    algorithm: TsigAlgorithm,
    secret: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl TsigKey {
    /// A key from its name (as the server knows it), algorithm and secret bytes.
    pub fn new(name: impl Into<String>, algorithm: TsigAlgorithm, secret: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            algorithm,
            secret: Zeroizing::new(secret),
        }
    }

    /// A key whose secret is base64, as in `named.conf` and `tsig-keygen` output.
    pub fn from_base64(
        name: impl Into<String>,
        algorithm: TsigAlgorithm,
        secret: &str,
    ) -> Result<Self, DnsError> {
        let secret = STANDARD
            .decode(secret.trim())
            .map_err(|_| DnsError::TsigSecret)?;
        Ok(Self::new(name, algorithm, secret))
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key's MAC algorithm.
    pub fn algorithm(&self) -> TsigAlgorithm {
        self.algorithm
    }

    /// The secret as base64, for writing a server's configuration.
    pub fn secret_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(&self.secret[..]))
    }

    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret
    }
}

/// Why a DNS update or query failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// A name is not a valid DNS name.
    #[error("invalid DNS name {name:?}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// The parser's complaint.
        #[source]
        source: hickory_proto::ProtoError,
    },
    /// A name lies outside the zone the updates go to.
    #[error("{name} is not inside zone {zone}")]
    NotInZone {
        /// The name as given.
        name: String,
        /// The configured zone.
        zone: String,
    },
    /// A TSIG secret is not valid base64.
    #[error("TSIG secret is not valid base64")]
    TsigSecret,
    /// The server refused the request (REFUSED): e.g. updates not allowed for this key.
    #[error("{server} refused the request (REFUSED)")]
    Refused {
        /// The server.
        server: SocketAddr,
    },
    /// The server is not authoritative for the zone, or rejected the TSIG (NOTAUTH).
    #[error("{server} is not authoritative or rejected the signature (NOTAUTH)")]
    NotAuth {
        /// The server.
        server: SocketAddr,
    },
    /// The server rejected the TSIG MAC: wrong secret or algorithm (BADSIG).
    #[error("{server} rejected the TSIG signature (BADSIG): wrong secret?")]
    BadSig {
        /// The server.
        server: SocketAddr,
    },
    /// The server does not know the TSIG key name or algorithm (BADKEY).
    #[error("{server} does not know the TSIG key (BADKEY)")]
    BadKey {
        /// The server.
        server: SocketAddr,
    },
    /// The server rejected the TSIG time: clocks too far apart (BADTIME).
    #[error("{server} rejected the TSIG time (BADTIME): clock skew?")]
    BadTime {
        /// The server.
        server: SocketAddr,
    },
    /// An update's prerequisite did not hold (YXDOMAIN, YXRRSET, NXDOMAIN, NXRRSET).
    #[error("{server} found the records changed concurrently ({rcode})")]
    PrerequisiteFailed {
        /// The server.
        server: SocketAddr,
        /// The response code's name.
        rcode: String,
    },
    /// Any other error response code (or TSIG error).
    #[error("{server} answered {rcode}")]
    Rcode {
        /// The server.
        server: SocketAddr,
        /// The response code's name.
        rcode: String,
    },
    /// A response to a signed request was not correctly signed by the key.
    #[error("response from {server} failed TSIG verification")]
    ResponseSignature {
        /// The server.
        server: SocketAddr,
        /// The verifier's complaint.
        #[source]
        source: hickory_proto::ProtoError,
    },
    /// Talking to the server failed.
    #[error("DNS exchange with {server} failed")]
    Io {
        /// The server.
        server: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The server did not answer in time.
    #[error("DNS exchange with {server} timed out after {after:?}")]
    Timeout {
        /// The server.
        server: SocketAddr,
        /// The time allowed.
        after: Duration,
    },
    /// A message could not be encoded, or the response decoded.
    #[error("malformed DNS message")]
    Proto(#[source] hickory_proto::ProtoError),
    /// The response does not belong to the request.
    #[error("{server} answered with a mismatched message id")]
    IdMismatch {
        /// The server.
        server: SocketAddr,
    },
    /// A TXT record did not show up on the authoritative server in time.
    #[error("TXT {name} not answered by {server} within {after:?}")]
    NotVisible {
        /// The record's owner.
        name: String,
        /// The server queried.
        server: SocketAddr,
        /// The time waited.
        after: Duration,
    },
    /// Another [`Dns01`] implementation's error.
    #[error("DNS provider failed")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_names_strip_the_wildcard_label() {
        assert_eq!(
            acme_challenge_name("*.apps.test"),
            "_acme-challenge.apps.test"
        );
        assert_eq!(
            acme_challenge_name("apps.test"),
            "_acme-challenge.apps.test"
        );
        assert_eq!(
            acme_challenge_name("x.apps.test."),
            "_acme-challenge.x.apps.test"
        );
    }

    #[test]
    fn caa_value_matches_upstream() {
        assert_eq!(
            caa_issuer_value("letsencrypt.org", "https://acme/acct/1"),
            "letsencrypt.org;validationmethods=dns-01;accounturi=https://acme/acct/1"
        );
    }

    #[test]
    fn tsig_secret_is_redacted() {
        let key = TsigKey::from_base64("k", TsigAlgorithm::HmacSha256, "c2VjcmV0c2VjcmV0").unwrap();
        assert_eq!(key.secret(), b"secretsecret");
        assert_eq!(&*key.secret_base64(), "c2VjcmV0c2VjcmV0");
        let debug = format!("{key:?}");
        assert!(
            !debug.contains("c2Vj") && !debug.contains("secretsecret"),
            "{debug}"
        );
        assert!(matches!(
            TsigKey::from_base64("k", TsigAlgorithm::HmacSha256, "!!"),
            Err(DnsError::TsigSecret)
        ));
        let json = serde_json::to_string(&TsigAlgorithm::HmacSha512).unwrap();
        assert_eq!(json, "\"hmac-sha512\"");
    }
}
