//! The ACME account and one order run to the end.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, ChallengeType, HttpClient, Identifier, NewAccount,
    NewOrder, Order, OrderStatus, RetryPolicy,
};
use ring::digest::{SHA256, digest};
use rustls::crypto::ring::default_provider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use serde::{Deserialize, Serialize};

use crate::alpn::TlsAlpnResponder;
use crate::cert::{CertRequest, IssuedCert};
use crate::dns::{Dns01, acme_challenge_name};
use crate::error::AcmeError;

/// How long cleaning up one challenge may take after the order ended.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// An ACME account's stored form: account URI, private key and directory URL.
///
/// Serializable (JSON) so the gateway can keep it sealed in its cluster KV
/// and every node can restore the same account; `Debug` hides the key.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountCredentials(instant_acme::AccountCredentials);

impl fmt::Debug for AccountCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountCredentials(<redacted>)")
    }
}

/// The challenge type used to prove control of names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ChallengeKind {
    /// DNS-01: a TXT record at `_acme-challenge.<name>`; the only one for wildcards.
    #[serde(rename = "dns-01")]
    Dns01,
    /// TLS-ALPN-01 (RFC 8737): a challenge certificate on port 443.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl ChallengeKind {
    fn acme_type(self) -> ChallengeType {
        match self {
            Self::Dns01 => ChallengeType::Dns01,
            Self::TlsAlpn01 => ChallengeType::TlsAlpn01,
        }
    }
}

impl fmt::Display for ChallengeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Dns01 => "dns-01",
            Self::TlsAlpn01 => "tls-alpn-01",
        })
    }
}

/// How an order's challenges are answered.
#[derive(Clone, Copy, Debug)]
pub enum Solver<'a> {
    /// DNS-01 through the given DNS provider.
    Dns01(&'a dyn Dns01),
    /// TLS-ALPN-01 through the responder the TLS listener consults.
    TlsAlpn01(&'a TlsAlpnResponder),
}

impl Solver<'_> {
    /// The challenge type this solver answers.
    pub fn kind(&self) -> ChallengeKind {
        match self {
            Self::Dns01(_) => ChallengeKind::Dns01,
            Self::TlsAlpn01(_) => ChallengeKind::TlsAlpn01,
        }
    }
}

/// An ACME account on one CA, ready to order certificates.
#[derive(Clone)]
pub struct AcmeClient {
    account: Account,
    timeout: Duration,
}

impl fmt::Debug for AcmeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeClient")
            .field("account_uri", &self.account.id())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What a challenge left behind, to undo once the order has ended.
enum Provisioned {
    Txt { record: String, value: String },
    Alpn { domain: String },
}

impl AcmeClient {
    /// Creates a new account (terms of service agreed) on the CA at `directory_url`.
    ///
    /// The CA's HTTPS is trusted through Mozilla's roots plus `extra_roots`
    /// (e.g. a test CA's own listener certificate).
    pub async fn create(
        directory_url: &str,
        contact: &[String],
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<(Self, AccountCredentials), AcmeError> {
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let new_account = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, credentials) = Account::builder_with_http(http_client(extra_roots)?)
            .create(&new_account, directory_url.to_string(), None)
            .await
            .map_err(AcmeError::acme("account creation"))?;
        Ok((Self::with_account(account), AccountCredentials(credentials)))
    }

    /// Restores an account from stored credentials (fetches the CA's directory).
    pub async fn restore(
        credentials: AccountCredentials,
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<Self, AcmeError> {
        let account = Account::builder_with_http(http_client(extra_roots)?)
            .from_credentials(credentials.0)
            .await
            .map_err(AcmeError::acme("account restore"))?;
        Ok(Self::with_account(account))
    }

    fn with_account(account: Account) -> Self {
        Self {
            account,
            // Upstream's renewal timeout.
            timeout: Duration::from_secs(300),
        }
    }

    /// Sets how long one [`AcmeClient::issue`] may take in total (default 300 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The account's URI, as CAA `accounturi` pins it.
    pub fn account_uri(&self) -> &str {
        self.account.id()
    }

    /// Orders a certificate for `names`, answers every pending authorization
    /// with `solver`, finalizes with a fresh ECDSA P-256 key and downloads the
    /// chain; challenge records are removed again whatever the outcome.
    pub async fn issue(
        &self,
        names: &[String],
        solver: Solver<'_>,
    ) -> Result<IssuedCert, AcmeError> {
        if names.is_empty() {
            return Err(AcmeError::NoNames);
        }
        if let Solver::TlsAlpn01(_) = solver
            && let Some(name) = names.iter().find(|name| name.starts_with("*."))
        {
            return Err(AcmeError::WildcardNeedsDns01 { name: name.clone() });
        }
        let mut provisioned = Vec::new();
        let result = tokio::time::timeout(
            self.timeout,
            self.run_order(names, solver, &mut provisioned),
        )
        .await
        .unwrap_or(Err(AcmeError::Timeout(self.timeout)));
        cleanup(solver, provisioned).await;
        result
    }

    async fn run_order(
        &self,
        names: &[String],
        solver: Solver<'_>,
        provisioned: &mut Vec<Provisioned>,
    ) -> Result<IssuedCert, AcmeError> {
        let deadline = Instant::now() + self.timeout;
        let identifiers: Vec<Identifier> = names
            .iter()
            .map(|name| Identifier::Dns(name.clone()))
            .collect();
        let mut order = self
            .account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(AcmeError::acme("new order"))?;

        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(AcmeError::acme("fetching an authorization"))?;
            let name = authz.identifier().to_string();
            match authz.status {
                // Reused from an earlier order of this account.
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                status => {
                    return Err(AcmeError::AuthorizationFailed {
                        name,
                        detail: format!("status {status:?}"),
                    });
                }
            }
            let Identifier::Dns(domain) = authz.identifier().identifier.clone() else {
                return Err(AcmeError::AuthorizationFailed {
                    name,
                    detail: "not a DNS identifier".into(),
                });
            };
            let kind = solver.kind();
            let mut challenge = authz.challenge(kind.acme_type()).ok_or_else(|| {
                AcmeError::ChallengeUnavailable {
                    name: name.clone(),
                    kind,
                }
            })?;
            let key_authorization = challenge.key_authorization();
            match solver {
                Solver::Dns01(dns) => {
                    let record = acme_challenge_name(&domain);
                    let value = key_authorization.dns_value();
                    // Recorded first: a record added but never seen still gets removed.
                    provisioned.push(Provisioned::Txt {
                        record: record.clone(),
                        value: value.clone(),
                    });
                    dns.set_txt(&record, &value)
                        .await
                        .map_err(|source| AcmeError::Dns { record, source })?;
                }
                Solver::TlsAlpn01(responder) => {
                    let mut sha256 = [0u8; 32];
                    sha256.copy_from_slice(
                        digest(&SHA256, key_authorization.as_str().as_bytes()).as_ref(),
                    );
                    responder.insert(&domain, &sha256)?;
                    provisioned.push(Provisioned::Alpn { domain });
                }
            }
            challenge
                .set_ready()
                .await
                .map_err(AcmeError::acme("answering a challenge"))?;
        }

        let status = order.poll_ready(&self.retry_policy(deadline)).await;
        match status {
            Ok(OrderStatus::Ready) => {}
            Ok(_) | Err(instant_acme::Error::Api(_)) => {
                return Err(explain_failure(&mut order).await);
            }
            Err(err) => return Err(self.map_poll_error("polling the order")(err)),
        }

        let request = CertRequest::new(names)?;
        order
            .finalize_csr(&request.csr_der)
            .await
            .map_err(AcmeError::acme("finalizing the order"))?;
        let chain = order
            .poll_certificate(&self.retry_policy(deadline))
            .await
            .map_err(self.map_poll_error("downloading the certificate"))?;
        request.into_issued(chain)
    }

    /// Backoff from 250 ms by 1.5x, within what is left of the total timeout.
    fn retry_policy(&self, deadline: Instant) -> RetryPolicy {
        RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(deadline.saturating_duration_since(Instant::now()))
    }

    fn map_poll_error(&self, op: &'static str) -> impl FnOnce(instant_acme::Error) -> AcmeError {
        let timeout = self.timeout;
        move |err| match err {
            instant_acme::Error::Timeout(_) => AcmeError::Timeout(timeout),
            source => AcmeError::Acme { op, source },
        }
    }
}

/// Names the authorization that made the order fail, with the CA's reason.
async fn explain_failure(order: &mut Order) -> AcmeError {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        // The order's copy is from before validation; ask again.
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        if state.status == AuthorizationStatus::Valid {
            continue;
        }
        let detail = state
            .challenges
            .iter()
            .find_map(|challenge| challenge.error.as_ref().map(ToString::to_string))
            .unwrap_or_else(|| format!("status {:?}", state.status));
        return AcmeError::AuthorizationFailed {
            name: state.identifier().to_string(),
            detail,
        };
    }
    let detail = match &order.state().error {
        Some(problem) => problem.to_string(),
        None => format!("status {:?}", order.state().status),
    };
    AcmeError::OrderInvalid { detail }
}

/// Removes what the challenges left behind; failures are only logged, since
/// the order's own outcome is what the caller needs.
async fn cleanup(solver: Solver<'_>, provisioned: Vec<Provisioned>) {
    for item in provisioned.into_iter().rev() {
        match (item, solver) {
            (Provisioned::Txt { record, value }, Solver::Dns01(dns)) => {
                match tokio::time::timeout(CLEANUP_TIMEOUT, dns.remove_txt(&record, &value)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        tracing::warn!(%record, error = %err, "removing a DNS-01 record failed");
                    }
                    Err(_) => tracing::warn!(%record, "removing a DNS-01 record timed out"),
                }
            }
            (Provisioned::Alpn { domain }, Solver::TlsAlpn01(responder)) => {
                responder.remove(&domain)
            }
            _ => {}
        }
    }
}

/// Our own HTTPS client: Mozilla's roots plus `extra_roots`, ring as the
/// provider (explicit, since several providers may be compiled in).
fn http_client(extra_roots: &[CertificateDer<'static>]) -> Result<Box<dyn HttpClient>, AcmeError> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
    for root in extra_roots {
        roots.add(root.clone()).map_err(AcmeError::TrustRoot)?;
    }
    let connector = https_connector(roots).map_err(AcmeError::TrustRoot)?;
    let client: HyperClient<_, BodyWrapper<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(connector);
    Ok(Box::new(client))
}

/// An HTTPS-only HTTP/1.1 connector trusting exactly `roots`, ring as the
/// provider.
pub(crate) fn https_connector(
    roots: RootCertStore,
) -> Result<HttpsConnector<HttpConnector>, rustls::Error> {
    let config = ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build())
}

/// The certificates in a PEM bundle, e.g. extra roots from configuration.
pub fn parse_pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, AcmeError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(AcmeError::Pem)
}
