//! A KMS client, as a dstack guest (and the CLI) calls a KMS (UPSTREAM
//! §7.1): fetch the root and temporary CA with `GetTempCaCert`, then call
//! `GetAppKey` over mutual TLS with an RA-TLS client certificate signed by
//! the temporary CA, trusting only a server whose certificate the KMS root
//! signed for usage `kms:rpc`; and `SignCert` for the app's TLS certificates.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod onboard;

pub use onboard::{OnboardClient, bootstrap_report_data, import_key_report_data};

use std::sync::Arc;
use std::time::Duration;

use dstack_attest::Platform;
use dstack_proto::kms::{
    AppId, AppKeyResponse, GetAppKeyRequest, GetKmsKeyRequest, GetMetaResponse,
    GetTempCaCertResponse, KmsKeyResponse, PublicKeyResponse, SignCertRequest, SignCertResponse,
};
use dstack_ra_tls::{CertIssuer, CertRequest, Evidence, RaTlsCert, pem_certificate};
use serde::Serialize;
use serde::de::DeserializeOwned;
use x509_parser::prelude::{FromDer, X509Certificate};

use dstack_proto::kms::RPC_CERT_USAGE as RPC_USAGE;

/// How long one KMS call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer accepted.
const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// Why a KMS call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not `https://host:port[/prpc]`.
    #[error("KMS URL {0:?} is not https://HOST:PORT")]
    Url(String),
    /// Connecting, TLS or HTTP failed.
    #[error("cannot reach the KMS at {url}: {reason}")]
    Transport {
        /// The KMS.
        url: String,
        /// Why.
        reason: String,
    },
    /// The KMS answered with an error.
    #[error("the KMS at {url} refused: {message}")]
    Refused {
        /// The KMS.
        url: String,
        /// Its `{"error": ..}` text.
        message: String,
    },
    /// The answer is not what the API defines.
    #[error("the KMS at {url} answered garbage: {reason}")]
    BadAnswer {
        /// The KMS.
        url: String,
        /// Why.
        reason: String,
    },
    /// The KMS root is not the one the app pins (`key_provider_id`).
    #[error("the KMS root key {found} is not the pinned key_provider_id {expected}")]
    RootMismatch {
        /// The pinned SPKI, hex.
        expected: String,
        /// The KMS's, hex.
        found: String,
    },
    /// The client certificate could not be made (quote or signing failed).
    #[error("cannot make the RA-TLS client certificate")]
    Certificate(#[from] dstack_ra_tls::RaTlsError),
}

/// The KMS root as a guest learns it: the certificate and its SPKI (the
/// KMS's identity, measured as the `key-provider` id).
#[derive(Debug, Clone)]
pub struct KmsRoot {
    /// Root CA certificate (DER).
    pub cert_der: Vec<u8>,
    /// Its SubjectPublicKeyInfo (DER).
    pub spki: Vec<u8>,
}

/// A KMS at one URL.
#[derive(Debug, Clone)]
pub struct KmsClient {
    url: String,
    host: String,
    authority: String,
}

impl KmsClient {
    /// A client for `url` (`https://host:port`, a trailing `/prpc` allowed).
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::Url(url.to_owned());
        let rest = url.strip_prefix("https://").ok_or_else(bad)?;
        let rest = rest.trim_end_matches('/');
        let rest = rest.strip_suffix("/prpc").unwrap_or(rest);
        if rest.is_empty() || rest.contains('/') {
            return Err(bad());
        }
        let host = match rest.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => host,
            _ => return Err(bad()),
        };
        Ok(Self {
            url: url.to_owned(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            authority: rest.to_owned(),
        })
    }

    /// `GetTempCaCert`, without checking the server: the answer's root is
    /// then checked against a pin, and every later call trusts only it.
    pub async fn temp_ca(&self) -> Result<(GetTempCaCertResponse, KmsRoot), ClientError> {
        let config = dstack_ra_tls::unverified_client_config()?;
        let answer: GetTempCaCertResponse = self.call(config, "GetTempCaCert", &()).await?;
        let root = self.root_of(&answer.ca_cert)?;
        Ok((answer, root))
    }

    /// `GetMeta`, trusting only a server signed by `root`.
    pub async fn meta(&self, root: &KmsRoot) -> Result<GetMetaResponse, ClientError> {
        let config = dstack_ra_tls::pinned_root_client_config(&root.cert_der, RPC_USAGE, None)?;
        self.call(config, "GetMeta", &()).await
    }

    /// `GetMeta` from a server that is not checked at all (no root pinned):
    /// for a caller that trusts nothing in the answer by itself, such as
    /// the supervisor relaying it to a CLI that decides what to trust.
    pub async fn meta_unverified(&self) -> Result<GetMetaResponse, ClientError> {
        let config = dstack_ra_tls::unverified_client_config()?;
        self.call(config, "GetMeta", &()).await
    }

    /// `GetAppEnvEncryptPubKey` for `app_id`, from a server that is not
    /// checked: the answer carries the KMS root k256 key's signature, which
    /// whoever encrypts to the key must verify
    /// (`dstack_keys::verify_env_public_key`). No client certificate.
    pub async fn app_env_encrypt_pub_key(
        &self,
        app_id: &[u8],
    ) -> Result<PublicKeyResponse, ClientError> {
        let config = dstack_ra_tls::unverified_client_config()?;
        let request = AppId {
            app_id: app_id.to_vec(),
        };
        self.call(config, "GetAppEnvEncryptPubKey", &request).await
    }

    /// The app's keys: an RA-TLS client certificate quoted on `platform`
    /// and signed by the temporary CA, then `GetAppKey` to a server signed by
    /// `root`. `pinned` (the app's `key_provider_id`), when not empty, must
    /// be the root's SPKI. The platform is called from this task: with a
    /// platform that blocks on its own runtime, use the three steps
    /// ([`KmsClient::temp_ca`], [`client_certificate`],
    /// [`KmsClient::app_keys_with`]) instead.
    pub async fn app_keys(
        &self,
        platform: &dyn Platform,
        vm_config: &str,
        pinned: &[u8],
    ) -> Result<(AppKeyResponse, KmsRoot), ClientError> {
        let (temp, root) = self.temp_ca().await?;
        check_pin(&root, pinned)?;
        let client = client_certificate(platform, &temp, vm_config)?;
        let keys = self.app_keys_with(&root, &client, vm_config).await?;
        Ok((keys, root))
    }

    /// `GetAppKey` presenting `client` (from [`client_certificate`]) to a
    /// server signed by `root`.
    pub async fn app_keys_with(
        &self,
        root: &KmsRoot,
        client: &RaTlsCert,
        vm_config: &str,
    ) -> Result<AppKeyResponse, ClientError> {
        let config = dstack_ra_tls::pinned_root_client_config(
            &root.cert_der,
            RPC_USAGE,
            Some((vec![client.cert_der.clone()], client.key_der.clone())),
        )?;
        let request = GetAppKeyRequest {
            api_version: 1,
            vm_config: vm_config.to_owned(),
        };
        let keys: AppKeyResponse = self.call(config, "GetAppKey", &request).await?;
        if keys.ca_cert.is_empty() || pem_certificate(&keys.ca_cert) != Some(root.cert_der.clone())
        {
            return Err(self.garbage("GetAppKey's ca_cert is not the root it pinned"));
        }
        Ok(keys)
    }

    /// `GetKmsKey` (a replica KMS fetching the root keys) presenting
    /// `client` to a server signed by `root`. Returns the keys and the
    /// server's RPC certificate (DER), whose evidence the replica checks
    /// before it stores anything.
    pub async fn kms_keys_with(
        &self,
        root: &KmsRoot,
        client: &RaTlsCert,
        vm_config: &str,
    ) -> Result<(KmsKeyResponse, Vec<u8>), ClientError> {
        let config = dstack_ra_tls::pinned_root_client_config(
            &root.cert_der,
            RPC_USAGE,
            Some((vec![client.cert_der.clone()], client.key_der.clone())),
        )?;
        let request = GetKmsKeyRequest {
            vm_config: vm_config.to_owned(),
        };
        let (keys, server_cert) = self.call_with_peer(config, "GetKmsKey", &request).await?;
        let server_cert =
            server_cert.ok_or_else(|| self.garbage("the server presented no certificate"))?;
        Ok((keys, server_cert))
    }

    /// `SignCert` to a server signed by `root`: a certificate for the
    /// request's key, as upstream's guest asks for one (CSR version 2). No
    /// client certificate: the request carries its own attestation. The
    /// answer's chain must end at `root`.
    pub async fn sign_cert(
        &self,
        root: &KmsRoot,
        request: &SignCertRequest,
    ) -> Result<SignCertResponse, ClientError> {
        let config = dstack_ra_tls::pinned_root_client_config(&root.cert_der, RPC_USAGE, None)?;
        let answer: SignCertResponse = self.call(config, "SignCert", request).await?;
        let last = answer
            .certificate_chain
            .last()
            .map(|pem| pem_certificate(pem));
        if last != Some(Some(root.cert_der.clone())) {
            return Err(self.garbage("SignCert's chain does not end at the root it pinned"));
        }
        Ok(answer)
    }

    fn root_of(&self, pem: &str) -> Result<KmsRoot, ClientError> {
        let cert_der =
            pem_certificate(pem).ok_or_else(|| self.garbage("ca_cert is not a PEM certificate"))?;
        let (_, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|e| self.garbage(&format!("ca_cert: {e}")))?;
        let spki = cert.tbs_certificate.subject_pki.raw.to_vec();
        Ok(KmsRoot { cert_der, spki })
    }

    fn garbage(&self, reason: &str) -> ClientError {
        ClientError::BadAnswer {
            url: self.url.clone(),
            reason: reason.to_owned(),
        }
    }

    async fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        config: rustls::ClientConfig,
        method: &str,
        request: &Q,
    ) -> Result<A, ClientError> {
        Ok(self.call_with_peer(config, method, request).await?.0)
    }

    /// One call; returns the answer and the server's leaf certificate.
    async fn call_with_peer<Q: Serialize, A: DeserializeOwned>(
        &self,
        config: rustls::ClientConfig,
        method: &str,
        request: &Q,
    ) -> Result<(A, Option<Vec<u8>>), ClientError> {
        tokio::time::timeout(CALL_TIMEOUT, self.call_inner(config, method, request))
            .await
            .map_err(|_| self.transport(format!("{method} timed out after {CALL_TIMEOUT:?}")))?
    }

    async fn call_inner<Q: Serialize, A: DeserializeOwned>(
        &self,
        config: rustls::ClientConfig,
        method: &str,
        request: &Q,
    ) -> Result<(A, Option<Vec<u8>>), ClientError> {
        let tcp = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| self.transport(e.to_string()))?;
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .map_err(|_| ClientError::Url(self.url.clone()))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| self.transport(format!("TLS: {e}")))?;
        let server_cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.as_ref().to_vec());
        let path = format!("/prpc/KMS.{method}?json");
        let answer = exchange(&self.url, tls, &self.authority, &path, method, request).await?;
        Ok((answer, server_cert))
    }

    fn transport(&self, reason: String) -> ClientError {
        ClientError::Transport {
            url: self.url.clone(),
            reason,
        }
    }
}

/// One pRPC JSON call over `stream` to the KMS at `url`: the answer,
/// decoded, or the KMS's refusal or a transport error, named.
pub(crate) async fn exchange<S, Q, A>(
    url: &str,
    stream: S,
    authority: &str,
    path: &str,
    method: &str,
    request: &Q,
) -> Result<A, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    Q: Serialize,
    A: DeserializeOwned,
{
    let transport = |reason: String| ClientError::Transport {
        url: url.to_owned(),
        reason,
    };
    let body = serde_json::to_vec(request).map_err(|e| transport(e.to_string()))?;
    let answer = dstack_http_json::post_json(stream, authority, path, body, MAX_RESPONSE_BYTES)
        .await
        .map_err(|e| transport(e.to_string()))?;
    if !answer.status.is_success() {
        return Err(ClientError::Refused {
            url: url.to_owned(),
            message: answer.error_message(),
        });
    }
    serde_json::from_slice(&answer.body).map_err(|e| ClientError::BadAnswer {
        url: url.to_owned(),
        reason: format!("{method}: {e}"),
    })
}

/// Upstream's `verify_key_provider_id`: a pinned KMS (the app-compose's
/// `key_provider_id`, when not empty) must be this root's SPKI.
pub fn check_pin(root: &KmsRoot, pinned: &[u8]) -> Result<(), ClientError> {
    if !pinned.is_empty() && pinned != root.spki {
        return Err(ClientError::RootMismatch {
            expected: hex::encode(pinned),
            found: hex::encode(&root.spki),
        });
    }
    Ok(())
}

/// The key of a client certificate, made before its evidence: the evidence
/// (a quote, or a guest API attestation) must bind [`ClientKey::report_data`].
#[derive(Debug)]
pub struct ClientKey(rcgen::KeyPair);

impl ClientKey {
    /// A fresh P-256 key.
    pub fn generate() -> Result<Self, ClientError> {
        Ok(Self(
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(dstack_ra_tls::RaTlsError::from)?,
        ))
    }

    /// The report_data that binds this key (RA-TLS, UPSTREAM §6).
    pub fn report_data(&self) -> [u8; 64] {
        use rcgen::PublicKeyData;
        dstack_ra_tls::report_data_for_spki(&self.0.subject_public_key_info())
    }
}

/// An RA-TLS client certificate for a fresh key, issued now, quoted on
/// `platform`, signed by the KMS's temporary CA (upstream's flow; the KMS
/// trusts the quote, not the CA).
pub fn client_certificate(
    platform: &dyn Platform,
    temp: &GetTempCaCertResponse,
    vm_config: &str,
) -> Result<RaTlsCert, ClientError> {
    let key = ClientKey::generate()?;
    let report_data = key.report_data();
    let evidence = Evidence {
        quote: platform
            .quote(&report_data)
            .map_err(dstack_ra_tls::RaTlsError::from)?,
        event_log: platform
            .event_log()
            .map_err(dstack_ra_tls::RaTlsError::from)?,
        vm_config: vm_config.to_owned(),
        collateral: None,
    };
    issue_client_certificate(temp, &key, Some(&evidence), None)
}

/// An RA-TLS client certificate for `key` carrying `attestation` (a
/// versioned attestation over [`ClientKey::report_data`], e.g. from the
/// guest API's `Attest`), signed by the KMS's temporary CA.
pub fn attested_client_certificate(
    temp: &GetTempCaCertResponse,
    key: &ClientKey,
    attestation: Vec<u8>,
) -> Result<RaTlsCert, ClientError> {
    issue_client_certificate(temp, key, None, Some(attestation))
}

fn issue_client_certificate(
    temp: &GetTempCaCertResponse,
    key: &ClientKey,
    evidence: Option<&Evidence>,
    attestation: Option<Vec<u8>>,
) -> Result<RaTlsCert, ClientError> {
    use p256::pkcs8::DecodePrivateKey;
    let bad = |what: &str| dstack_ra_tls::RaTlsError::Certificate(what.to_owned());
    let temp_cert = pem_certificate(&temp.temp_ca_cert).ok_or_else(|| bad("temp_ca_cert"))?;
    let temp_key = p256::SecretKey::from_pkcs8_pem(&temp.temp_ca_key)
        .map_err(|_| bad("temp_ca_key is not a P-256 PKCS#8 key"))?;
    let temp_key_der =
        p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&temp_key).map_err(|_| bad("temp_ca_key"))?;
    let issuer = CertIssuer::new(temp_cert, temp_key_der.as_bytes())?;
    let mut request = CertRequest::new("dstack-guest-agent");
    request.server_auth = false;
    request.client_auth = true;
    request.attestation = attestation;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    // Issued now (minus clock skew): the KMS refuses old certificates.
    request.not_before = Some(now - 60);
    Ok(RaTlsCert::build(&key.0, &request, evidence, Some(&issuer))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_https_host_port() {
        let c = KmsClient::new("https://10.0.2.2:8000/prpc").unwrap();
        assert_eq!(
            (c.host.as_str(), c.authority.as_str()),
            ("10.0.2.2", "10.0.2.2:8000")
        );
        assert!(KmsClient::new("https://kms.example:443/").is_ok());
        for bad in [
            "http://x:1",
            "https://x",
            "https://x:port",
            "https://x:1/other",
            "",
        ] {
            assert!(KmsClient::new(bad).is_err(), "{bad}");
        }
    }
}
