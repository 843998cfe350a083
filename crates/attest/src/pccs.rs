//! Quote collateral from a PCCS (Intel's Provisioning Certification Caching
//! Service API, v4), and a cache in front of it.
//!
//! Every verifier gets collateral the same way, on TDX and on simulated
//! hosts: from a PCCS URL — Intel's PCS or an operator's PCCS on hardware,
//! the supervisor's simulated PCCS on sim hosts — through [`CollateralCache`].
//!
//! The GETs are the ones dcap-qvl's `CollateralClient` makes (same paths,
//! query parameters, issuer-chain headers and body shapes), done here with
//! hyper over plain HTTP: dcap-qvl's client (and even its `HttpClient`
//! trait) exists only with its `report` feature, which turns on reqwest's
//! aws-lc-rs TLS (a C crypto library next to the ring we use), the
//! platform certificate verifier and hickory-dns; none belongs in the
//! static guest PID1. `https://` URLs go through dcap-qvl's client when the
//! `pccs-https` feature is on (hosts: the CLI, the KMS), and are refused
//! with [`PccsError::Url`] otherwise.
//!
//! Collateral is not secret and is checked by the verifier (every part is
//! signed under the root the verifier trusts), so a PCCS is trusted only to
//! be available, never to be honest.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hyper::Uri;
use hyper::body::Bytes;
use serde::Deserialize;

use crate::collateral::{Collateral, RawCollateral};

/// How long one GET may take, connection included.
const GET_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest answer accepted; real ones are a few KiB (CRLs, TCB info).
const MAX_BODY: usize = 1 << 20;

/// Why collateral could not be had from a PCCS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PccsError {
    /// The PCCS URL is not one this build can use.
    #[error("PCCS URL {url:?} is unusable: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// The quote does not say which collateral it needs.
    #[error("cannot tell which collateral the quote needs: {reason}")]
    Quote {
        /// What is missing or malformed.
        reason: String,
    },
    /// No HTTP answer: connection refused, reset, timed out.
    #[error("PCCS {url} is unreachable: {reason}")]
    Unreachable {
        /// The request URL.
        url: String,
        /// The transport error chain.
        reason: String,
    },
    /// The PCCS answered with an error status.
    #[error("PCCS {url} answered HTTP {status}")]
    Status {
        /// The request URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The PCCS answered, but not with collateral.
    #[error("PCCS {url} answered garbage: {what}")]
    Garbage {
        /// The request URL.
        url: String,
        /// What was wrong.
        what: String,
    },
    /// dcap-qvl's client (https URLs) failed.
    #[cfg(feature = "pccs-https")]
    #[error("cannot fetch collateral from PCCS {url}: {message}")]
    Https {
        /// The PCCS base URL.
        url: String,
        /// dcap-qvl's error chain.
        message: String,
    },
}

/// Which TEE's TCB info and QE identity a quote needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TeeType {
    /// A TDX quote: TDX TCB info and the TD QE identity.
    Tdx,
    /// An SGX quote: SGX TCB info and the QE identity.
    Sgx,
}

impl TeeType {
    /// The path segment of the PCCS API (`tdx` or `sgx`).
    pub fn path(self) -> &'static str {
        match self {
            TeeType::Tdx => "tdx",
            TeeType::Sgx => "sgx",
        }
    }
}

/// Which Intel CA issued the quote's PCK certificate (and so which PCK CRL applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PckCa {
    /// `Intel SGX PCK Processor CA`.
    Processor,
    /// `Intel SGX PCK Platform CA`.
    Platform,
}

impl PckCa {
    /// The `ca` query parameter of the PCCS API.
    pub fn as_str(self) -> &'static str {
        match self {
            PckCa::Processor => "processor",
            PckCa::Platform => "platform",
        }
    }
}

/// What identifies collateral: every quote with the same key is checked
/// against the same TCB info, QE identity and CRLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CollateralKey {
    /// TDX or SGX.
    pub tee: TeeType,
    /// The platform's FMSPC, from the PCK certificate's SGX extension.
    pub fmspc: [u8; 6],
    /// The PCK certificate's issuer.
    pub ca: PckCa,
}

impl CollateralKey {
    /// Reads the key from a quote's embedded PCK certificate chain.
    ///
    /// Quotes with an encrypted PPID instead of a chain (certification data
    /// types 2 and 3) would need a `pckcert` lookup; TDX quotes from
    /// configfs-tsm and simulated quotes always embed the chain.
    pub fn for_quote(quote: &[u8]) -> Result<Self, PccsError> {
        let reason = |e: anyhow::Error| PccsError::Quote {
            reason: format!("{e:#}"),
        };
        let parsed = dcap_qvl::quote::Quote::parse(quote).map_err(reason)?;
        let fmspc = dcap_qvl::intel::quote_fmspc(&parsed).map_err(reason)?;
        let ca = match dcap_qvl::intel::quote_ca(&parsed).map_err(reason)? {
            dcap_qvl::config::PckCa::Platform => PckCa::Platform,
            dcap_qvl::config::PckCa::Processor => PckCa::Processor,
        };
        let tee = if parsed.header.is_sgx() {
            TeeType::Sgx
        } else {
            TeeType::Tdx
        };
        Ok(Self { tee, fmspc, ca })
    }
}

/// Hit and miss counts of a [`CollateralCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Answers served from the cache.
    pub hits: u64,
    /// Answers that needed a fetch (first use, or the entry had expired).
    pub misses: u64,
}

/// The clock a cache judges expiry by.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

struct Cached {
    collateral: Collateral,
    /// The earliest next-update of its signed parts and CRLs.
    until: DateTime<Utc>,
}

/// Collateral fetched from one PCCS, kept per [`CollateralKey`] until the
/// earliest next-update date of its parts (TCB info, QE identity, PCK CRL,
/// root CA CRL), then fetched again.
pub struct CollateralCache {
    pccs_url: String,
    // Held across a fetch on purpose: concurrent verifiers of the same
    // platform wait for one fetch instead of each hitting the PCCS.
    entries: tokio::sync::Mutex<HashMap<CollateralKey, Cached>>,
    hits: AtomicU64,
    misses: AtomicU64,
    clock: Clock,
}

impl std::fmt::Debug for CollateralCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollateralCache")
            .field("pccs_url", &self.pccs_url)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl CollateralCache {
    /// A cache in front of the PCCS at `pccs_url` (its base URL; a trailing
    /// `/sgx/certification/v4` or `/tdx/certification/v4` is accepted).
    /// Fails only if this build cannot speak to that URL at all.
    pub fn new(pccs_url: impl Into<String>) -> Result<Self, PccsError> {
        let pccs_url = pccs_url.into();
        Base::parse(&pccs_url)?;
        Ok(Self {
            pccs_url,
            entries: tokio::sync::Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            clock: Arc::new(Utc::now),
        })
    }

    /// Judge expiry by `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The PCCS base URL.
    pub fn pccs_url(&self) -> &str {
        &self.pccs_url
    }

    /// Hits and misses so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// Collateral for `quote`: cached if still before its next update,
    /// fetched (and cached) otherwise. Collateral the PCCS hands out already
    /// past its next update is returned, for the verifier to name, but not kept.
    pub async fn get(&self, quote: &[u8]) -> Result<Collateral, PccsError> {
        let key = CollateralKey::for_quote(quote)?;
        self.get_for(&key).await
    }

    /// Collateral for a known key (see [`CollateralCache::get`]).
    pub async fn get_for(&self, key: &CollateralKey) -> Result<Collateral, PccsError> {
        let mut entries = self.entries.lock().await;
        let now = (self.clock)();
        if let Some(cached) = entries.get(key) {
            if now < cached.until {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(cached.collateral.clone());
            }
            entries.remove(key);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let (collateral, until) = fetch_checked(&self.pccs_url, key).await?;
        if now < until {
            entries.insert(
                *key,
                Cached {
                    collateral: collateral.clone(),
                    until,
                },
            );
        }
        Ok(collateral)
    }
}

/// Fetches collateral for `quote` from the PCCS at `pccs_url`, uncached.
pub async fn fetch_for_quote(pccs_url: &str, quote: &[u8]) -> Result<Collateral, PccsError> {
    let key = CollateralKey::for_quote(quote)?;
    fetch_checked(pccs_url, &key).await.map(|(c, _)| c)
}

/// Fetches and checks collateral, with the earliest next-update of its parts.
async fn fetch_checked(
    pccs_url: &str,
    key: &CollateralKey,
) -> Result<(Collateral, DateTime<Utc>), PccsError> {
    let base = Base::parse(pccs_url)?;
    let collateral = if base.https {
        fetch_https(pccs_url, key).await?
    } else {
        fetch_http(&base, key).await?
    };
    let garbage = |what: String| PccsError::Garbage {
        url: pccs_url.to_string(),
        what,
    };
    let validity = collateral.validity().map_err(|e| garbage(e.to_string()))?;
    let raw = collateral.raw();
    let mut until = validity.next_update;
    for (what, der) in [("PCK CRL", &raw.pck_crl), ("root CA CRL", &raw.root_ca_crl)] {
        until = until.min(crl_next_update(der).map_err(|e| garbage(format!("{what}: {e}")))?);
    }
    Ok((collateral, until))
}

/// A CRL's nextUpdate; a CRL without one is good until the TCB info says otherwise.
fn crl_next_update(der: &[u8]) -> Result<DateTime<Utc>, String> {
    let (_, crl) = x509_parser::parse_x509_crl(der).map_err(|e| format!("not a DER CRL ({e})"))?;
    Ok(match crl.next_update() {
        Some(t) => DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(DateTime::<Utc>::MAX_UTC),
        None => DateTime::<Utc>::MAX_UTC,
    })
}

#[cfg(feature = "pccs-https")]
async fn fetch_https(pccs_url: &str, key: &CollateralKey) -> Result<Collateral, PccsError> {
    let fail = |e: anyhow::Error| PccsError::Https {
        url: pccs_url.to_string(),
        message: format!("{e:#}"),
    };
    let client =
        dcap_qvl::collateral::CollateralClient::with_default_http(pccs_url).map_err(fail)?;
    client
        .fetch_for_fmspc_without_pck_chain(
            &hex::encode_upper(key.fmspc),
            key.ca.as_str(),
            key.tee == TeeType::Sgx,
        )
        .await
        .map(Collateral::from_raw)
        .map_err(fail)
}

#[cfg(not(feature = "pccs-https"))]
async fn fetch_https(pccs_url: &str, _key: &CollateralKey) -> Result<Collateral, PccsError> {
    Err(PccsError::Url {
        url: pccs_url.to_string(),
        reason: "https needs dstack-attest's pccs-https feature; this build speaks plain HTTP only",
    })
}

#[derive(Deserialize)]
struct TcbInfoBody {
    #[serde(rename = "tcbInfo")]
    tcb_info: serde_json::Value,
    signature: String,
}

#[derive(Deserialize)]
struct QeIdentityBody {
    #[serde(rename = "enclaveIdentity")]
    enclave_identity: serde_json::Value,
    signature: String,
}

/// The four GETs of dcap-qvl's `fetch_for_fmspc_without_pck_chain`, over HTTP.
async fn fetch_http(base: &Base, key: &CollateralKey) -> Result<Collateral, PccsError> {
    let tee = key.tee.path();
    let fmspc = hex::encode_upper(key.fmspc);

    let crl = base
        .get(&format!(
            "/sgx/certification/v4/pckcrl?ca={}&encoding=der",
            key.ca.as_str()
        ))
        .await?;
    let pck_crl_issuer_chain = crl.header(&["SGX-PCK-CRL-Issuer-Chain"])?;

    let tcb = base
        .get(&format!("/{tee}/certification/v4/tcb?fmspc={fmspc}"))
        .await?;
    let tcb_info_issuer_chain =
        tcb.header(&["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"])?;
    let tcb_body: TcbInfoBody = tcb.json()?;

    let qe = base
        .get(&format!(
            "/{tee}/certification/v4/qe/identity?update=standard"
        ))
        .await?;
    let qe_identity_issuer_chain = qe.header(&["SGX-Enclave-Identity-Issuer-Chain"])?;
    let qe_body: QeIdentityBody = qe.json()?;

    // A PCCS answers the root CA CRL hex-encoded (Intel's PCS has no such
    // endpoint; https URLs go through dcap-qvl, which handles that).
    let root = base.get("/sgx/certification/v4/rootcacrl").await?;
    let root_ca_crl = match std::str::from_utf8(&root.body)
        .ok()
        .and_then(|text| hex::decode(text.trim()).ok())
    {
        Some(der) => der,
        None => root.body.to_vec(),
    };

    Ok(Collateral::from_raw(RawCollateral {
        pck_crl_issuer_chain,
        root_ca_crl,
        pck_crl: crl.body.to_vec(),
        tcb_info_issuer_chain,
        // Serialised as dcap-qvl does (serde_json with preserve_order), so
        // the signed bytes come back as the PCCS sent them.
        tcb_info: tcb_body.tcb_info.to_string(),
        tcb_info_signature: tcb.hex(&tcb_body.signature, "tcbInfo signature")?,
        qe_identity_issuer_chain,
        qe_identity: qe_body.enclave_identity.to_string(),
        qe_identity_signature: qe.hex(&qe_body.signature, "enclaveIdentity signature")?,
        pck_certificate_chain: None,
    }))
}

/// A PCCS base URL, split for plain-HTTP requests.
struct Base {
    /// `scheme://authority[/prefix]`, without the `/{tee}/certification/v4` part.
    url: String,
    https: bool,
}

impl Base {
    fn parse(pccs_url: &str) -> Result<Self, PccsError> {
        let bad = |reason| PccsError::Url {
            url: pccs_url.to_string(),
            reason,
        };
        let url = pccs_url
            .trim_end_matches('/')
            .trim_end_matches("/sgx/certification/v4")
            .trim_end_matches("/tdx/certification/v4")
            .to_string();
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("the scheme must be http or https")),
        };
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        if uri.query().is_some() {
            return Err(bad("a base URL takes no query"));
        }
        Ok(Self { url, https })
    }

    /// GETs `path` (with query) below the base; anything but 2xx is an error.
    async fn get(&self, path: &str) -> Result<Answer, PccsError> {
        let url = format!("{}{path}", self.url);
        let unreachable = |reason: String| PccsError::Unreachable {
            url: url.clone(),
            reason,
        };
        let answer = tokio::time::timeout(GET_TIMEOUT, http_get(&url))
            .await
            .map_err(|_| unreachable(format!("no answer within {} s", GET_TIMEOUT.as_secs())))?
            .map_err(unreachable)?;
        if !(200..300).contains(&answer.status) {
            return Err(PccsError::Status {
                url,
                status: answer.status,
            });
        }
        Ok(Answer { url, ..answer })
    }
}

/// One buffered HTTP answer.
struct Answer {
    url: String,
    status: u16,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn garbage(&self, what: String) -> PccsError {
        PccsError::Garbage {
            url: self.url.clone(),
            what,
        }
    }

    /// The first of `names` present, percent-decoded (PCCS URL-encodes PEM chains).
    fn header(&self, names: &[&str]) -> Result<String, PccsError> {
        let value = names
            .iter()
            .find_map(|name| self.headers.get(*name))
            .ok_or_else(|| self.garbage(format!("no {} header", names[0])))?;
        percent_encoding::percent_decode(value.as_bytes())
            .decode_utf8()
            .map(|text| text.into_owned())
            .map_err(|_| self.garbage(format!("{} is not UTF-8", names[0])))
    }

    fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, PccsError> {
        serde_json::from_slice(&self.body).map_err(|e| self.garbage(format!("body: {e}")))
    }

    fn hex(&self, text: &str, what: &str) -> Result<Vec<u8>, PccsError> {
        hex::decode(text).map_err(|_| self.garbage(format!("{what} is not hex")))
    }
}

/// A plain-HTTP/1.1 GET on a fresh connection; the error is the transport's.
async fn http_get(url: &str) -> Result<Answer, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let host = uri.host().unwrap_or_default();
    // `Uri::host` keeps the brackets of an IPv6 literal; connect wants it bare.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let answer = dstack_http_json::request(
        stream,
        hyper::Method::GET,
        &authority,
        path,
        None,
        MAX_BODY,
        dstack_http_json::USER_AGENT,
    )
    .await
    .map_err(|e| e.to_string())?;
    let (status, headers, body) = (answer.status.as_u16(), answer.headers, answer.body);
    Ok(Answer {
        url: url.to_string(),
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimAuthority;
    use crate::sim::SimEnclaveIdentity;

    #[test]
    fn base_urls() {
        for url in [
            "http://10.0.2.2:8083",
            "http://10.0.2.2:8083/",
            "http://pccs.local/sgx/certification/v4",
            "https://api.trustedservices.intel.com",
            "http://[::1]:8083",
        ] {
            assert!(Base::parse(url).is_ok(), "{url}");
        }
        assert_eq!(
            Base::parse("http://p:1/tdx/certification/v4/").unwrap().url,
            "http://p:1"
        );
        for url in ["", "pccs.local", "ftp://p", "http://", "http://p/?x=1"] {
            assert!(
                matches!(Base::parse(url), Err(PccsError::Url { .. })),
                "{url}"
            );
        }
    }

    #[test]
    fn keys_come_from_the_quote() {
        let authority = SimAuthority::generate().unwrap();
        let td = authority
            .quote(&crate::SimTdIdentity::default(), &[0; 64])
            .unwrap();
        let key = CollateralKey::for_quote(&td).unwrap();
        assert_eq!(key.tee, TeeType::Tdx);
        assert_eq!(key.fmspc, authority.fmspc());
        // The simulated PCK CA is named a Platform CA.
        assert_eq!(key.ca, PckCa::Platform);
        let enclave = SimEnclaveIdentity {
            mr_enclave: [1; 32],
            mr_signer: [2; 32],
            isv_prod_id: 1,
            isv_svn: 1,
        };
        let sgx = authority.sgx_quote(&enclave, &[0; 64]).unwrap();
        assert_eq!(CollateralKey::for_quote(&sgx).unwrap().tee, TeeType::Sgx);
        assert!(matches!(
            CollateralKey::for_quote(b"not a quote"),
            Err(PccsError::Quote { .. })
        ));
    }

    #[test]
    fn crl_dates_bound_the_cache() {
        let authority = SimAuthority::generate().unwrap();
        let now = Utc::now();
        let c = authority.collateral(now).unwrap();
        let until = crl_next_update(&c.raw().pck_crl).unwrap();
        assert_eq!(until, c.validity().unwrap().next_update);
        assert!(crl_next_update(b"garbage").is_err());
    }

    #[tokio::test]
    async fn unreachable_pccs_is_named() {
        // A port nobody listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let authority = SimAuthority::generate().unwrap();
        let quote = authority
            .quote(&crate::SimTdIdentity::default(), &[0; 64])
            .unwrap();
        let cache = CollateralCache::new(format!("http://127.0.0.1:{port}")).unwrap();
        let err = cache.get(&quote).await.unwrap_err();
        assert!(matches!(err, PccsError::Unreachable { .. }), "{err}");
        assert_eq!(cache.stats(), CacheStats { hits: 0, misses: 1 });
    }

    #[cfg(not(feature = "pccs-https"))]
    #[tokio::test]
    async fn https_needs_the_feature() {
        let err = fetch_https(
            "https://x",
            &CollateralKey {
                tee: TeeType::Tdx,
                fmspc: [0; 6],
                ca: PckCa::Processor,
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(err, PccsError::Url { .. }));
    }
}
