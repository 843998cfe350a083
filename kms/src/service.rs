//! The KMS methods (UPSTREAM §7.1), transport-free: the RPC layer hands in
//! the caller's client certificate and decoded arguments, and gets back the
//! answer or a named refusal. Every call is counted in [`Metrics`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dstack_proto::kms::{
    AppId, AppKeyResponse, BootInfo, BootstrapResponse, GetAppKeyRequest, GetKmsKeyRequest,
    GetMetaResponse, GetTempCaCertResponse, KmsKeyResponse, KmsKeys, PublicKeyResponse,
};
use dstack_ra_tls::{
    CertRequest, CsrError, RaTlsCert, RaTlsError, RaTlsVerifier, VerifiedPeer, pem,
};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::auth::{AuthBackend, AuthError};
use crate::boot_info::{BootInfoError, MeasuredAt, boot_info};
use crate::evidence::EvidenceChecker;
use crate::keystore::RootKeys;
use crate::metrics::Metrics;

mod sign_cert;

/// The special usage (OID .4) of a KMS RPC certificate.
pub const RPC_USAGE: &str = dstack_proto::kms::RPC_CERT_USAGE;

/// How old a caller's client certificate may be: its quote was taken when
/// it was issued, so an older one is a replayed or stale request.
pub const DEFAULT_FRESHNESS: Duration = Duration::from_secs(10 * 60);

/// Why a KMS call was refused. Each variant is one reason, counted under
/// [`KmsError::reason`] in the metrics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// A key request without an RA-TLS client certificate.
    #[error("no attestation provided: present an RA-TLS client certificate")]
    NoClientCertificate,
    /// The client certificate's evidence failed (quote, root, TCB, binding, replay).
    #[error("the caller's attestation was refused")]
    Attestation(#[from] RaTlsError),
    /// The client certificate was issued too long ago or in the future.
    #[error(
        "the caller's certificate was issued {age_secs} s ago (negative: in the future); it must be at most {max_secs} s old"
    )]
    Stale {
        /// Seconds between issue and now (negative: issued in the future).
        age_secs: i64,
        /// The freshness limit.
        max_secs: u64,
    },
    /// A certificate signing request was refused (malformed, bad
    /// signature, wrong confirm string).
    #[error("the certificate signing request was refused")]
    Csr(#[from] CsrError),
    /// The evidence does not make a valid boot info.
    #[error("the caller's boot info is invalid")]
    BootInfo(#[from] BootInfoError),
    /// Collateral for the caller's quote could not be fetched.
    #[error("cannot get collateral for the caller's quote")]
    Collateral(#[from] dstack_attest::pccs::PccsError),
    /// The authorisation backend could not answer.
    #[error("authorisation backend unavailable")]
    Auth(#[from] AuthError),
    /// The authorisation backend refused the boot.
    #[error("boot denied: {reason}")]
    Denied {
        /// The backend's reason.
        reason: String,
    },
    /// An argument is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// A key could not be derived or a certificate made.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<dstack_ra_tls::evidence::EvidenceError> for KmsError {
    fn from(e: dstack_ra_tls::evidence::EvidenceError) -> Self {
        use dstack_ra_tls::evidence::EvidenceError;
        match e {
            EvidenceError::Attestation(e) => Self::Attestation(e),
            EvidenceError::Collateral(e) => Self::Collateral(e),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl KmsError {
    /// The metrics label of this refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoClientCertificate => "no_attestation",
            Self::Attestation(e) => match e {
                RaTlsError::Quote(_) => "quote_rejected",
                RaTlsError::MissingCollateral => "no_collateral",
                RaTlsError::KeyBindingMismatch => "key_binding_mismatch",
                RaTlsError::EventLog(_) | RaTlsError::Replay(_) => "event_log_rejected",
                RaTlsError::CertificateExpired => "certificate_expired",
                _ => "attestation_malformed",
            },
            Self::Stale { .. } => "stale_request",
            Self::Csr(e) => match e {
                CsrError::Signature => "csr_bad_signature",
                CsrError::Confirm { .. } => "csr_bad_confirm",
                CsrError::PublicKey => "csr_bad_public_key",
                _ => "csr_malformed",
            },
            Self::BootInfo(_) => "boot_info_invalid",
            Self::Auth(_) => "auth_backend_failed",
            Self::Collateral(_) => "collateral_unavailable",
            Self::Denied { .. } => "denied",
            Self::BadRequest(_) => "bad_request",
            Self::Internal(_) => "internal",
        }
    }
}

/// A running KMS: its root keys, certificates, verifier and policy.
pub struct Kms {
    keys: RootKeys,
    ca_cert_der: Vec<u8>,
    ca_cert_pem: String,
    ca_spki: Vec<u8>,
    temp_ca_cert_pem: String,
    evidence: EvidenceChecker,
    auth: AuthBackend,
    bootstrap_info: Option<BootstrapResponse>,
    freshness: Duration,
    metrics: Metrics,
}

impl std::fmt::Debug for Kms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kms")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Kms {
    /// A KMS serving `keys`, checking callers with `verifier` and `auth`.
    pub fn new(
        keys: RootKeys,
        verifier: RaTlsVerifier,
        auth: AuthBackend,
    ) -> Result<Self, KmsError> {
        Self::with_checker(keys, EvidenceChecker::new(verifier), auth)
    }

    /// A KMS serving `keys`, checking callers with `evidence` and `auth`.
    pub fn with_checker(
        keys: RootKeys,
        evidence: EvidenceChecker,
        auth: AuthBackend,
    ) -> Result<Self, KmsError> {
        let root = ca_cert(keys.root.ca_key(), "Dstack KMS CA", 1)?;
        let temp = ca_cert(&keys.temp_ca_key, "Dstack Client Temp CA", 0)?;
        let ca_spki = spki(&root.cert_der)?;
        Ok(Self {
            ca_cert_pem: pem("CERTIFICATE", &root.cert_der),
            ca_cert_der: root.cert_der,
            ca_spki,
            temp_ca_cert_pem: pem("CERTIFICATE", &temp.cert_der),
            keys,
            evidence,
            auth,
            bootstrap_info: None,
            freshness: DEFAULT_FRESHNESS,
            metrics: Metrics::default(),
        })
    }

    /// Fetch collateral for callers' quotes from a PCCS (cached until its
    /// next update) instead of the verifier's fixed collateral.
    pub fn with_pccs(mut self, cache: dstack_attest::pccs::CollateralCache) -> Self {
        self.evidence = self.evidence.with_pccs(cache);
        self
    }

    /// The bootstrap answer `GetMeta` reports (for a bootstrapped KMS).
    pub fn with_bootstrap_info(mut self, info: Option<BootstrapResponse>) -> Self {
        self.bootstrap_info = info;
        self
    }

    /// Accept client certificates issued at most `freshness` ago.
    pub fn with_freshness(mut self, freshness: Duration) -> Self {
        self.freshness = freshness;
        self
    }

    /// The root CA's SubjectPublicKeyInfo DER: the KMS's identity, which
    /// apps measure as `key-provider` `{"name":"kms","id":hex(this)}`.
    pub fn ca_spki(&self) -> &[u8] {
        &self.ca_spki
    }

    /// The root CA certificate (DER): what clients pin.
    pub fn ca_cert_der(&self) -> &[u8] {
        &self.ca_cert_der
    }

    /// The TLS configuration of the KMS RPC endpoint: `key` with a
    /// certificate for `domain` (special usage `kms:rpc`, which guests
    /// require) signed by the root CA, carrying `attestation` (`.8`, bound
    /// to `key` as [`dstack_ra_tls::report_data_for_spki`] says) when the
    /// KMS runs in a TEE; chain `[rpc, root CA]`.
    pub fn rpc_server_config(
        &self,
        key: &rcgen::KeyPair,
        domain: &str,
        attestation: Option<Vec<u8>>,
    ) -> Result<rustls::ServerConfig, KmsError> {
        let internal = |e: &dyn std::fmt::Display| KmsError::Internal(e.to_string());
        let root_key = self
            .keys
            .root
            .ca_key()
            .to_pkcs8_der()
            .map_err(|e| internal(&e))?;
        let issuer = dstack_ra_tls::CertIssuer::new(self.ca_cert_der.clone(), root_key.as_bytes())
            .map_err(|e| internal(&e))?;
        let mut request = CertRequest::new(domain);
        request.alt_names = vec![domain.to_owned()];
        request.usage = Some(RPC_USAGE.to_owned());
        request.client_auth = false;
        request.attestation = attestation;
        let cert =
            RaTlsCert::build(key, &request, None, Some(&issuer)).map_err(|e| internal(&e))?;
        dstack_ra_tls::deferred_client_auth_server_config(
            vec![cert.cert_der, self.ca_cert_der.clone()],
            cert.key_der,
        )
        .map_err(|e| internal(&e))
    }

    /// The request counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// `GetMeta`.
    pub async fn get_meta(&self) -> Result<GetMetaResponse, KmsError> {
        let info = self.auth.info().await;
        let info = self.count("GetMeta", info.map_err(KmsError::from))?;
        Ok(GetMetaResponse {
            ca_cert: self.ca_cert_pem.clone(),
            allow_any_upgrade: info.is_dev,
            k256_pubkey: self.keys.root.k256_public_key().to_vec(),
            bootstrap_info: self.bootstrap_info.clone(),
            is_dev: info.is_dev,
            gateway_app_id: info.gateway_app_id,
            kms_contract_address: info.kms_contract_address,
            chain_id: info.chain_id,
            app_auth_implementation: info.app_implementation,
        })
    }

    /// `GetTempCaCert`.
    pub fn get_temp_ca_cert(&self) -> Result<GetTempCaCertResponse, KmsError> {
        let key = self
            .keys
            .temp_ca_key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KmsError::Internal(e.to_string()))?;
        self.metrics.record("GetTempCaCert", "ok");
        Ok(GetTempCaCertResponse {
            temp_ca_cert: self.temp_ca_cert_pem.clone(),
            temp_ca_key: key.to_string(),
            ca_cert: self.ca_cert_pem.clone(),
        })
    }

    /// `GetAppEnvEncryptPubKey` at Unix time `now`.
    pub fn get_app_env_encrypt_pub_key(
        &self,
        request: &AppId,
        now: u64,
    ) -> Result<PublicKeyResponse, KmsError> {
        self.counted("GetAppEnvEncryptPubKey", || {
            if request.app_id.len() != 20 {
                return Err(KmsError::BadRequest(format!(
                    "app_id must be 20 bytes, got {}",
                    request.app_id.len()
                )));
            }
            let env = self
                .keys
                .root
                .env_public_key(&request.app_id, now)
                .map_err(|e| KmsError::Internal(e.to_string()))?;
            Ok(PublicKeyResponse {
                public_key: env.public_key.to_vec(),
                signature: env.signature,
                timestamp: env.timestamp,
                signature_v1: env.signature_v1,
            })
        })
    }

    /// `GetAppKey` for the caller whose RA-TLS client certificate is
    /// `client_cert` (DER), judged at `at`.
    pub async fn get_app_key(
        &self,
        client_cert: Option<&[u8]>,
        request: &GetAppKeyRequest,
        at: SystemTime,
    ) -> Result<AppKeyResponse, KmsError> {
        let result = self.app_key(client_cert, request, at).await;
        self.count("GetAppKey", result)
    }

    async fn app_key(
        &self,
        client_cert: Option<&[u8]>,
        request: &GetAppKeyRequest,
        at: SystemTime,
    ) -> Result<AppKeyResponse, KmsError> {
        if request.api_version > 1 {
            return Err(KmsError::BadRequest(format!(
                "unsupported api_version {}",
                request.api_version
            )));
        }
        let (info, gateway_app_id) = self
            .authorise(client_cert, &request.vm_config, at, false)
            .await?;
        let keys = self
            .keys
            .root
            .app_keys(&info.app_id, &info.instance_id)
            .map_err(|e| KmsError::Internal(e.to_string()))?;
        Ok(AppKeyResponse {
            ca_cert: self.ca_cert_pem.clone(),
            disk_crypt_key: keys.disk_crypt_key.to_vec(),
            env_crypt_key: keys.env_crypt_key.to_vec(),
            k256_key: keys.k256_key.to_vec(),
            k256_signature: keys.k256_signature,
            tproxy_app_id: gateway_app_id.clone(),
            gateway_app_id,
            os_image_hash: info.os_image_hash,
        })
    }

    /// `GetKmsKey`: the root keys, for a replica KMS whose RA-TLS client
    /// certificate verifies and whose boot the backend allows as a KMS
    /// (`/bootAuth/kms`, KmsAuth `isKmsAllowed`).
    pub async fn get_kms_key(
        &self,
        client_cert: Option<&[u8]>,
        request: &GetKmsKeyRequest,
        at: SystemTime,
    ) -> Result<KmsKeyResponse, KmsError> {
        let result = self.kms_key(client_cert, request, at).await;
        self.count("GetKmsKey", result)
    }

    async fn kms_key(
        &self,
        client_cert: Option<&[u8]>,
        request: &GetKmsKeyRequest,
        at: SystemTime,
    ) -> Result<KmsKeyResponse, KmsError> {
        self.authorise(client_cert, &request.vm_config, at, true)
            .await?;
        let internal = |e: &dyn std::fmt::Display| KmsError::Internal(e.to_string());
        let pem = |key: &p256::SecretKey| {
            key.to_pkcs8_pem(LineEnding::LF)
                .map(|p| p.to_string())
                .map_err(|e| internal(&e))
        };
        Ok(KmsKeyResponse {
            temp_ca_key: pem(&self.keys.temp_ca_key)?,
            keys: vec![KmsKeys {
                ca_key: pem(self.keys.root.ca_key())?,
                k256_key: self.keys.root.k256_key().to_vec(),
            }],
        })
    }

    /// Verifies the caller and asks the backend; returns its boot info and
    /// gateway app id.
    async fn authorise(
        &self,
        client_cert: Option<&[u8]>,
        vm_config: &str,
        at: SystemTime,
        is_kms: bool,
    ) -> Result<(BootInfo, String), KmsError> {
        let cert = client_cert.ok_or(KmsError::NoClientCertificate)?;
        self.check_fresh(cert, at)?;
        let peer: VerifiedPeer = self.evidence.verify_cert(cert, at).await?;
        self.decide(&peer, vm_config, MeasuredAt::Now, is_kms).await
    }

    /// The boot info of a verified caller, as of `measured`, and the auth
    /// backend's verdict on it; returns the boot info and gateway app id.
    async fn decide(
        &self,
        peer: &VerifiedPeer,
        vm_config: &str,
        measured: MeasuredAt,
        is_kms: bool,
    ) -> Result<(BootInfo, String), KmsError> {
        let info = boot_info(peer, vm_config, measured)?;
        let verdict = self.auth.decide(&info, is_kms).await?;
        if !verdict.is_allowed {
            return Err(KmsError::Denied {
                reason: verdict.reason,
            });
        }
        Ok((info, verdict.gateway_app_id))
    }

    fn check_fresh(&self, cert: &[u8], at: SystemTime) -> Result<(), KmsError> {
        let (_, parsed) = X509Certificate::from_der(cert)
            .map_err(|e| KmsError::Attestation(RaTlsError::Certificate(e.to_string())))?;
        let issued = parsed.validity().not_before.timestamp();
        let now = at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let age = now.saturating_sub(issued);
        let max = i64::try_from(self.freshness.as_secs()).unwrap_or(i64::MAX);
        // A little clock skew is tolerated for certificates dated ahead.
        if age > max || age < -300 {
            return Err(KmsError::Stale {
                age_secs: age,
                max_secs: self.freshness.as_secs(),
            });
        }
        Ok(())
    }

    fn counted<T>(
        &self,
        method: &'static str,
        call: impl FnOnce() -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        self.count(method, call())
    }

    fn count<T>(&self, method: &'static str, result: Result<T, KmsError>) -> Result<T, KmsError> {
        match &result {
            Ok(_) => self.metrics.record(method, "ok"),
            Err(e) => self.metrics.record(method, e.reason()),
        }
        result
    }
}

fn ca_cert(key: &p256::SecretKey, subject: &str, path_len: u8) -> Result<RaTlsCert, KmsError> {
    let der = key
        .to_pkcs8_der()
        .map_err(|e| KmsError::Internal(e.to_string()))?;
    let key = dstack_ra_tls::key_pair_from_pkcs8(der.as_bytes())
        .map_err(|e| KmsError::Internal(e.to_string()))?;
    let mut request = CertRequest::new(subject);
    request.org_name = Some("Dstack".into());
    request.ca_path_len = Some(path_len);
    request.server_auth = false;
    request.client_auth = false;
    RaTlsCert::build(&key, &request, None, None).map_err(|e| KmsError::Internal(e.to_string()))
}

fn spki(cert_der: &[u8]) -> Result<Vec<u8>, KmsError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| KmsError::Internal(e.to_string()))?;
    Ok(cert.tbs_certificate.subject_pki.raw.to_vec())
}
