//! `RegisterCvm` over mutual RA-TLS (UPSTREAM §10.4, §10.5).
//!
//! The guest's side of the handshake is a self-signed RA-TLS client
//! certificate ([`client_certificate`]): its quote binds its key and its
//! event log says which app this is, so the gateway derives the app from
//! evidence, the same way in every key-provider mode, and trusts no CA.
//!
//! The gateway's side is checked the same way ([`GatewayCheck`]): its
//! certificate must carry a quote that verifies under this guest's trust
//! anchor with collateral from the PCCS, bind the certificate's key, and
//! replay its event log, whose `app-id` must be the gateway app the KMS
//! names. The TLS handshake only proves the server holds the certificate's
//! key; the evidence is checked after it (quote collateral comes over the
//! network, which a rustls verifier cannot wait for) and before a byte of
//! the request is sent.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dstack_attest::{Platform, PlatformError, Quote};
use dstack_proto::gateway::{RegisterCvmRequest, RegisterCvmResponse};
use dstack_ra_tls::boot_info::{BootInfoError, MeasuredAt, boot_info};
use dstack_ra_tls::evidence::{EvidenceChecker, EvidenceError};
use dstack_ra_tls::{CertAppInfo, CertRequest, Evidence, RaTlsCert, RaTlsError};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData};
use rustls::pki_types::ServerName;

/// The client certificate's subject, as upstream's guest names it.
pub(crate) const CLIENT_SUBJECT: &str = "dstack-guest-agent";
/// How long the client certificate is valid (upstream's 10 days).
pub(crate) const CLIENT_CERT_VALIDITY: Duration = Duration::from_secs(10 * 24 * 3600);
/// How long one registration may take, connecting included.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer accepted.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Why one gateway URL gave no registration. Each names the URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The URL is not `https://HOST[:PORT][/PATH]`.
    #[error("gateway URL {0:?} is not https://HOST[:PORT][/PATH]")]
    Url(String),
    /// No TCP connection.
    #[error("cannot connect to the gateway at {url}")]
    Connect {
        /// The gateway.
        url: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (the gateway may have refused the client
    /// certificate).
    #[error("TLS handshake with the gateway at {url} failed")]
    Tls {
        /// The gateway.
        url: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The call took longer than [`CALL_TIMEOUT`].
    #[error("the gateway at {url} did not answer within {secs} s")]
    Timeout {
        /// The gateway.
        url: String,
        /// The limit.
        secs: u64,
    },
    /// The server's certificate is not an attested dstack CVM's.
    #[error("the gateway at {url} presented no valid RA-TLS evidence")]
    Evidence {
        /// The gateway.
        url: String,
        /// What the check said (boxed: it is large).
        #[source]
        source: Box<EvidenceError>,
    },
    /// The evidence verified but names no app.
    #[error("the gateway at {url} has no app identity in its event log")]
    Identity {
        /// The gateway.
        url: String,
        /// Why.
        #[source]
        source: BootInfoError,
    },
    /// The server runs another app than the gateway the KMS names.
    #[error("the gateway at {url} runs app {found}, not the gateway app {allowed}")]
    AppId {
        /// The gateway.
        url: String,
        /// Its app id, hex.
        found: String,
        /// The KMS's `gateway_app_id`.
        allowed: String,
    },
    /// The HTTP exchange broke off.
    #[error("the call to the gateway at {url} failed")]
    Http {
        /// The gateway.
        url: String,
        /// Why.
        #[source]
        source: dstack_http_json::ExchangeError,
    },
    /// The gateway refused the registration.
    #[error("the gateway at {url} refused: {message}")]
    Refused {
        /// The gateway.
        url: String,
        /// Its `{"error": ..}` text, or the status and body.
        message: String,
    },
    /// The answer is not a `RegisterCvmResponse`.
    #[error("the gateway at {url} answered garbage: {reason}")]
    BadAnswer {
        /// The gateway.
        url: String,
        /// Why.
        reason: String,
    },
}

/// Upstream's `gateway_rpc_url`: the URL with `/prpc` appended unless it
/// already ends with it (a trailing `/` ignored).
pub(crate) fn rpc_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/prpc") {
        base.to_owned()
    } else {
        format!("{base}/prpc")
    }
}

/// A gateway's RPC endpoint, parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// The URL as configured, for messages.
    url: String,
    /// The host, without brackets: the TLS server name.
    host: String,
    /// `host:port`, as connected to and sent as `Host`.
    authority: String,
    /// The method's path: the RPC URL's path and `/RegisterCvm`.
    path: String,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Self, RegisterError> {
        let bad = || RegisterError::Url(url.to_owned());
        let rest = url.strip_prefix("https://").ok_or_else(bad)?;
        let rpc = rpc_url(rest);
        let (authority, base) = match rpc.find('/') {
            Some(at) => rpc.split_at(at),
            None => return Err(bad()),
        };
        if authority.is_empty() || authority.contains(['@', '?', '#']) {
            return Err(bad());
        }
        // IPv6 in brackets, an optional port (443 when absent).
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or_else(bad)?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port: u16 = match port {
            Some(port) => port.parse().map_err(|_| bad())?,
            None => 443,
        };
        if host.is_empty() {
            return Err(bad());
        }
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Self {
            url: url.to_owned(),
            host: host.to_owned(),
            authority,
            path: format!("{base}/RegisterCvm"),
        })
    }
}

/// Who this guest is, as its client certificate says (the claim the `.9`
/// extension carries; the gateway takes the identity from the quote).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientApp {
    /// 20-byte app id.
    pub app_id: Vec<u8>,
    /// 20-byte instance id, or empty.
    pub instance_id: Vec<u8>,
    /// The compose hash.
    pub compose_hash: [u8; 32],
    /// The `key-provider` payload.
    pub key_provider_info: String,
    /// The OS image hash (empty when unknown).
    pub os_image_hash: Vec<u8>,
    /// The VM config JSON, carried in the attestation (as upstream's).
    pub vm_config: String,
}

/// The guest's client certificate for the gateway: a fresh P-256 key,
/// self-signed; subject `dstack-guest-agent`; client-auth only; valid from
/// a minute ago for 10 days; the `.9` app info; and the `.8` attestation:
/// a quote whose report_data is SHA-512("ratls-cert:" ‖ SPKI) with the
/// stripped event log and the VM config. Blocks on the TEE.
pub(crate) fn client_certificate(
    platform: &dyn Platform,
    app: &ClientApp,
) -> Result<RaTlsCert, RaTlsError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let report_data = dstack_ra_tls::report_data_for_spki(&key.subject_public_key_info());
    let evidence = Evidence {
        quote: platform.quote(&report_data)?,
        event_log: platform.event_log()?,
        vm_config: app.vm_config.clone(),
        collateral: None,
    };
    let mut request = CertRequest::new(CLIENT_SUBJECT);
    request.server_auth = false;
    request.client_auth = true;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    request.not_before = Some(now.saturating_sub(60));
    request.not_after = Some(now.saturating_add_unsigned(CLIENT_CERT_VALIDITY.as_secs()));
    // The measurements of the quote the certificate carries.
    let quote = Quote::parse(&evidence.quote).map_err(PlatformError::from)?;
    if let Some(report) = quote.td_report() {
        request.app_info = Some(CertAppInfo::measured(
            report,
            &app.app_id,
            &app.compose_hash,
            &app.instance_id,
            &app.os_image_hash,
            &app.key_provider_info,
        ));
    }
    RaTlsCert::build(&key, &request, Some(&evidence), None)
}

/// Which gateway app the guest accepts (upstream's `AppIdValidator`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayAppPin {
    /// The KMS's `gateway_app_id`: the gateway's app id (hex) must occur in
    /// it, case-insensitively, as upstream checks it.
    App(String),
    /// The KMS said `any`: any attested dstack CVM.
    Any,
    /// No KMS, so nobody names the gateway app: any attested dstack CVM.
    Unpinned,
}

impl GatewayAppPin {
    /// The pin for the KMS's answer (`gateway_app_id`, `tproxy_app_id` for
    /// older KMSes); `None` when it names none (upstream refuses then).
    pub fn from_kms(gateway_app_id: &str, tproxy_app_id: &str) -> Option<Self> {
        let named = if gateway_app_id.is_empty() {
            tproxy_app_id
        } else {
            gateway_app_id
        };
        match named {
            "" => None,
            "any" => Some(Self::Any),
            app => Some(Self::App(app.to_owned())),
        }
    }

    fn check(&self, url: &str, app_id: &[u8]) -> Result<(), RegisterError> {
        let Self::App(allowed) = self else {
            return Ok(());
        };
        let found = hex::encode(app_id);
        if allowed.to_lowercase().contains(&found) {
            Ok(())
        } else {
            Err(RegisterError::AppId {
                url: url.to_owned(),
                found,
                allowed: allowed.clone(),
            })
        }
    }
}

/// How the guest judges a gateway's certificate.
#[derive(Debug)]
pub(crate) struct GatewayCheck {
    /// The quote verifier (this guest's trust anchor) and collateral source.
    pub(crate) evidence: EvidenceChecker,
    /// The gateway app accepted.
    pub(crate) pin: GatewayAppPin,
}

impl GatewayCheck {
    /// Checks `cert` (DER) of the gateway at `url`; returns its app id.
    pub(crate) async fn check(&self, url: &str, cert: &[u8]) -> Result<Vec<u8>, RegisterError> {
        let peer = self
            .evidence
            .verify_cert(cert, SystemTime::now())
            .await
            .map_err(|source| RegisterError::Evidence {
                url: url.to_owned(),
                source: Box::new(source),
            })?;
        let info =
            boot_info(&peer, "", MeasuredAt::Now).map_err(|source| RegisterError::Identity {
                url: url.to_owned(),
                source,
            })?;
        self.pin.check(url, &info.app_id)?;
        Ok(info.app_id)
    }
}

/// Registers at the gateway `url` (its `/prpc/RegisterCvm`) presenting
/// `client`, once `check` accepted the gateway's certificate. At most
/// [`CALL_TIMEOUT`].
pub(crate) async fn register(
    url: &str,
    client: &RaTlsCert,
    check: &GatewayCheck,
    request: &RegisterCvmRequest,
) -> Result<RegisterCvmResponse, RegisterError> {
    let endpoint = Endpoint::parse(url)?;
    tokio::time::timeout(CALL_TIMEOUT, call(&endpoint, client, check, request))
        .await
        .map_err(|_| RegisterError::Timeout {
            url: url.to_owned(),
            secs: CALL_TIMEOUT.as_secs(),
        })?
}

async fn call(
    endpoint: &Endpoint,
    client: &RaTlsCert,
    check: &GatewayCheck,
    request: &RegisterCvmRequest,
) -> Result<RegisterCvmResponse, RegisterError> {
    let url = endpoint.url.as_str();
    let tls_error = |source| RegisterError::Tls {
        url: url.to_owned(),
        source,
    };
    let config = client_config(client)
        .map_err(|e| tls_error(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    let name = ServerName::try_from(endpoint.host.clone())
        .map_err(|_| RegisterError::Url(url.to_owned()))?;
    let tcp = tokio::net::TcpStream::connect(&endpoint.authority)
        .await
        .map_err(|source| RegisterError::Connect {
            url: url.to_owned(),
            source,
        })?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(tls_error)?;
    let server_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.as_ref().to_vec())
        .ok_or_else(|| RegisterError::BadAnswer {
            url: url.to_owned(),
            reason: "no server certificate".into(),
        })?;
    let app_id = check.check(url, &server_cert).await?;
    tracing::info!("gateway {url}: attested, app {}", hex::encode(app_id));
    let body = serde_json::to_vec(request).map_err(|e| RegisterError::BadAnswer {
        url: url.to_owned(),
        reason: format!("cannot encode the request: {e}"),
    })?;
    let answer = dstack_http_json::post_json(
        tls,
        &endpoint.authority,
        &endpoint.path,
        body,
        MAX_ANSWER_BYTES,
    )
    .await
    .map_err(|source| RegisterError::Http {
        url: url.to_owned(),
        source,
    })?;
    if !answer.status.is_success() {
        return Err(RegisterError::Refused {
            url: url.to_owned(),
            message: answer.error_message(),
        });
    }
    serde_json::from_slice(&answer.body).map_err(|e| RegisterError::BadAnswer {
        url: url.to_owned(),
        reason: e.to_string(),
    })
}

/// A client presenting `cert` that accepts any server certificate whose key
/// signs the handshake: [`GatewayCheck`] judges the certificate right
/// after the handshake, before the request is sent.
fn client_config(cert: &RaTlsCert) -> Result<rustls::ClientConfig, dstack_ra_tls::RaTlsError> {
    dstack_ra_tls::unverified_client_config_with_auth(
        vec![cert.cert_der.clone()],
        cert.key_der.clone(),
    )
}

#[cfg(test)]
#[path = "register_tests.rs"]
mod tests;
