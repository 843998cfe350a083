//! Onboarding (UPSTREAM §7.1, service `Onboard`): a KMS without root keys
//! serves only this, over plain HTTP, until the operator has either
//! bootstrapped it (fresh root keys, generated here, inside the CVM) or
//! onboarded it from a running KMS (`GetKmsKey` over mutual RA-TLS), and
//! called `Finish`. Keys are written once, all or nothing ([`KeyStore`]).
//!
//! Nothing secret crosses this plain-HTTP endpoint: `Bootstrap` answers
//! public keys and the attestation that binds them, `Onboard` fetches the
//! keys itself over RA-TLS, and `GetAttestationInfo` answers measurements.

use std::time::SystemTime;

use dstack_keys::sealing::RecipientKey;
pub use dstack_kms_client::bootstrap_report_data;
use dstack_kms_client::import_key_report_data;
use dstack_kms_client::{ClientKey, KmsClient, attested_client_certificate, check_pin};
use dstack_proto::kms::{
    AttestationInfoResponse, BootInfo, BootstrapRequest, BootstrapResponse, ImportKeyResponse,
    ImportRequest, ImportedKeys, OnboardRequest, OnboardResponse,
};
use p256::pkcs8::DecodePrivateKey;
use tokio::sync::{Mutex, Notify};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::auth::AuthBackend;
use crate::boot_info::{MeasuredAt, boot_info};
use crate::evidence::EvidenceChecker;
use crate::keystore::{KeyStore, KeyStoreError, RootKeys};
use crate::tee::Tee;

/// Why an onboarding call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnboardError {
    /// The domain is not a DNS name.
    #[error(
        "domain {0:?} is not a DNS name (ASCII labels of letters, digits and '-', at most 253 bytes)"
    )]
    Domain(String),
    /// Keys exist already (bootstrap and onboarding are one-time).
    #[error(transparent)]
    Store(#[from] KeyStoreError),
    /// `Finish` before keys exist.
    #[error("this KMS has no root keys yet: bootstrap or onboard it before Finish")]
    NotReady,
    /// The guest API (sealing key, attestation) failed.
    #[error("the CVM's guest API failed")]
    Tee(#[from] dstack_guest_client::GuestApiError),
    /// This KMS runs outside a TEE, which the call needs.
    #[error("{0} needs a TEE: run the KMS in its CVM (with --guest-api)")]
    NoTee(&'static str),
    /// Evidence (own or the source KMS's) did not verify, or the boot info
    /// is invalid.
    #[error("attestation refused")]
    Attestation(#[source] crate::KmsError),
    /// The authorisation backend refused a KMS boot.
    #[error("{who} is not an allowed KMS: {reason}")]
    NotAllowed {
        /// This KMS or the source.
        who: &'static str,
        /// The backend's reason.
        reason: String,
    },
    /// The authorisation backend could not answer.
    #[error("authorisation backend unavailable")]
    Auth(#[from] crate::auth::AuthError),
    /// Talking to the source KMS failed.
    #[error("cannot onboard from the source KMS")]
    Source(#[from] dstack_kms_client::ClientError),
    /// The source KMS's answer is inconsistent.
    #[error("the source KMS answered bad keys: {0}")]
    BadKeys(String),
    /// `Import` before `GetImportKey` (or after a failed import).
    #[error("no import key: call GetImportKey first (each key serves one Import)")]
    NoImportKey,
    /// The sealed keys do not open or do not parse.
    #[error("the imported keys are unusable: {0}")]
    BadImport(String),
}

/// The onboarding service of one KMS.
#[derive(Debug)]
pub struct Onboarding {
    store: KeyStore,
    tee: Tee,
    evidence: EvidenceChecker,
    auth: AuthBackend,
    site_name: String,
    /// One bootstrap or onboarding at a time (upstream's `bootstrap_lock`).
    lock: Mutex<()>,
    /// The key `Import` opens with; only ever in this process's memory.
    import_key: Mutex<Option<RecipientKey>>,
    finished: Notify,
}

impl Onboarding {
    /// Onboarding for the KMS whose keys go to `store`.
    pub fn new(
        store: KeyStore,
        tee: Tee,
        evidence: EvidenceChecker,
        auth: AuthBackend,
        site_name: String,
    ) -> Self {
        Self {
            store,
            tee,
            evidence,
            auth,
            site_name,
            lock: Mutex::new(()),
            import_key: Mutex::new(None),
            finished: Notify::new(),
        }
    }

    /// The checker and backend, for the KMS that serves after `Finish`.
    pub fn into_parts(self) -> (EvidenceChecker, AuthBackend) {
        (self.evidence, self.auth)
    }

    /// Resolves once `Finish` succeeded.
    pub async fn finished(&self) {
        self.finished.notified().await;
    }

    /// `Bootstrap`: fresh root keys, generated here, stored sealed, and
    /// answered as public keys with the attestation that binds them. In a
    /// TEE the backend must first allow this KMS's own boot as a KMS.
    pub async fn bootstrap(
        &self,
        request: &BootstrapRequest,
    ) -> Result<BootstrapResponse, OnboardError> {
        check_domain(&request.domain)?;
        let _one_at_a_time = self.lock.lock().await;
        self.refuse_if_keys()?;
        if self.tee.is_tee() {
            let own = self.own_boot_info().await?;
            self.require_allowed(&own, "this KMS").await?;
        }
        let keys = RootKeys::generate()?;
        let ca_pubkey = {
            use p256::pkcs8::EncodePublicKey;
            keys.root
                .ca_key()
                .public_key()
                .to_public_key_der()
                .map_err(|e| OnboardError::BadKeys(e.to_string()))?
                .as_bytes()
                .to_vec()
        };
        let k256_pubkey = keys.root.k256_public_key().to_vec();
        let report_data = bootstrap_report_data(&ca_pubkey, &k256_pubkey);
        let attestation = self.tee.attest(&report_data).await?.unwrap_or_default();
        let response = BootstrapResponse {
            ca_pubkey,
            k256_pubkey,
            attestation,
        };
        self.store.store_bootstrapped(&keys, &response)?;
        Ok(response)
    }

    /// `Onboard`: the root keys of the KMS at `source_url`, fetched over
    /// mutual RA-TLS (`GetKmsKey`, which the source grants only to a KMS
    /// its backend allows), kept only if the source itself is an allowed
    /// KMS and its keys match the root it serves under.
    pub async fn onboard(&self, request: &OnboardRequest) -> Result<OnboardResponse, OnboardError> {
        check_domain(&request.domain)?;
        let _one_at_a_time = self.lock.lock().await;
        self.refuse_if_keys()?;
        if !self.tee.is_tee() {
            return Err(OnboardError::NoTee("Onboard"));
        }
        let source = KmsClient::new(&https_url(&request.source_url))?;
        let (temp, root) = source.temp_ca().await?;
        check_pin(&root, &[])?;
        let key = ClientKey::generate()?;
        let attestation = self
            .tee
            .attest(&key.report_data())
            .await?
            .ok_or(OnboardError::NoTee("Onboard"))?;
        let client = attested_client_certificate(&temp, &key, attestation)?;
        let vm_config = self.tee.vm_config().await?;
        let (answer, server_cert) = source.kms_keys_with(&root, &client, &vm_config).await?;

        // The source must be an allowed KMS too: its RPC certificate's
        // evidence, judged as a KMS boot.
        let peer = self
            .evidence
            .verify_cert(&server_cert, SystemTime::now())
            .await
            .map_err(|e| OnboardError::Attestation(e.into()))?;
        let source_info = boot_info(&peer, "", MeasuredAt::Now)
            .map_err(|e| OnboardError::Attestation(e.into()))?;
        self.require_allowed(&source_info, "the source KMS").await?;

        let [keys] = answer.keys.as_slice() else {
            return Err(OnboardError::BadKeys(format!(
                "{} key sets, expected one",
                answer.keys.len()
            )));
        };
        let pem = |text: &str, what: &str| {
            p256::SecretKey::from_pkcs8_pem(text)
                .map_err(|e| OnboardError::BadKeys(format!("{what}: {e}")))
        };
        let ca_key = pem(&keys.ca_key, "ca_key")?;
        let (_, root_cert) = X509Certificate::from_der(&root.cert_der)
            .map_err(|e| OnboardError::BadKeys(format!("root certificate: {e}")))?;
        let served = root_cert
            .tbs_certificate
            .subject_pki
            .subject_public_key
            .data;
        if served.as_ref() != ca_key.public_key().to_sec1_bytes().as_ref() {
            return Err(OnboardError::BadKeys(
                "ca_key is not the key of the root the source serves under".into(),
            ));
        }
        let root_keys = dstack_keys::KmsRootKeys::new(ca_key, &keys.k256_key)
            .map_err(|e| OnboardError::BadKeys(e.to_string()))?;
        let keys = RootKeys {
            root: root_keys,
            temp_ca_key: pem(&answer.temp_ca_key, "temp_ca_key")?,
        };
        let k256_pubkey = keys.root.k256_public_key().to_vec();
        self.store.store_new(&keys)?;
        Ok(OnboardResponse { k256_pubkey })
    }

    /// `GetImportKey`: a fresh X25519 key, held in memory only, and this
    /// CVM's attestation over it: what `dstack kms import` seals an
    /// upstream KMS's root keys to.
    pub async fn import_key(&self) -> Result<ImportKeyResponse, OnboardError> {
        if !self.tee.is_tee() {
            return Err(OnboardError::NoTee("GetImportKey"));
        }
        let key = RecipientKey::generate();
        let public_key = key.public_key().to_vec();
        let attestation = self
            .tee
            .attest(&import_key_report_data(&public_key))
            .await?
            .ok_or(OnboardError::NoTee("GetImportKey"))?;
        *self.import_key.lock().await = Some(key);
        Ok(ImportKeyResponse {
            public_key,
            attestation,
        })
    }

    /// `Import`: an upstream KMS's root keys, sealed to the import key, so
    /// its apps keep their keys. Like bootstrap, one time only, and in a
    /// TEE only if the backend allows this KMS's boot.
    pub async fn import(&self, request: &ImportRequest) -> Result<OnboardResponse, OnboardError> {
        let _one_at_a_time = self.lock.lock().await;
        self.refuse_if_keys()?;
        let key = self
            .import_key
            .lock()
            .await
            .take()
            .ok_or(OnboardError::NoImportKey)?;
        let own = self.own_boot_info().await?;
        self.require_allowed(&own, "this KMS").await?;
        let plain = key
            .open(&request.sealed_keys)
            .map_err(|e| OnboardError::BadImport(e.to_string()))?;
        let parts: ImportedKeys = serde_json::from_slice(&plain)
            .map_err(|e| OnboardError::BadImport(format!("not the key files' JSON: {e}")))?;
        let keys = RootKeys::from_upstream_parts(&parts, "imported keys")?;
        let k256_pubkey = keys.root.k256_public_key().to_vec();
        self.store.store_new(&keys)?;
        Ok(OnboardResponse { k256_pubkey })
    }

    /// `GetAttestationInfo`: what the operator registers in KmsAuth for this
    /// KMS (aggregated MR, device id, OS image hash).
    pub async fn attestation_info(&self) -> Result<AttestationInfoResponse, OnboardError> {
        if !self.tee.is_tee() {
            return Err(OnboardError::NoTee("GetAttestationInfo"));
        }
        let info = self.own_boot_info().await?;
        let (eth_rpc_url, kms_contract_address) = match self.auth.info().await {
            Ok(info) => (String::new(), info.kms_contract_address.unwrap_or_default()),
            Err(_) => (String::new(), String::new()),
        };
        Ok(AttestationInfoResponse {
            device_id: info.device_id,
            mr_aggregated: info.mr_aggregated,
            os_image_hash: info.os_image_hash,
            tee_variant: info.tee_variant,
            site_name: self.site_name.clone(),
            eth_rpc_url,
            kms_contract_address,
            ppid: Vec::new(),
        })
    }

    /// `Finish`: leave onboarding (the KMS then serves its API).
    pub fn finish(&self) -> Result<(), OnboardError> {
        if !self.store.has_keys() {
            return Err(OnboardError::NotReady);
        }
        self.finished.notify_one();
        Ok(())
    }

    /// Bootstrap, onboarding and import are one-time: refused once keys exist.
    fn refuse_if_keys(&self) -> Result<(), OnboardError> {
        if self.store.has_keys() {
            return Err(KeyStoreError::AlreadyBootstrapped {
                path: self.store.path(),
            }
            .into());
        }
        Ok(())
    }

    /// This KMS's boot info, from its own verified attestation.
    async fn own_boot_info(&self) -> Result<BootInfo, OnboardError> {
        let report_data = [0u8; 64];
        let attestation = self
            .tee
            .attest(&report_data)
            .await?
            .ok_or(OnboardError::NoTee("a self-check"))?;
        let peer = self
            .evidence
            .verify_attestation(&attestation, &report_data, SystemTime::now())
            .await
            .map_err(|e| OnboardError::Attestation(e.into()))?;
        boot_info(&peer, "", MeasuredAt::Now).map_err(|e| OnboardError::Attestation(e.into()))
    }

    async fn require_allowed(
        &self,
        info: &BootInfo,
        who: &'static str,
    ) -> Result<(), OnboardError> {
        let verdict = self.auth.decide(info, true).await?;
        if verdict.is_allowed {
            Ok(())
        } else {
            Err(OnboardError::NotAllowed {
                who,
                reason: verdict.reason,
            })
        }
    }
}

/// The source KMS's URL as the KMS client takes it (`https://host:port`).
fn https_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    let url = url.strip_suffix("/prpc").unwrap_or(url);
    url.to_owned()
}

fn check_domain(domain: &str) -> Result<(), OnboardError> {
    let bad = || OnboardError::Domain(domain.to_owned());
    if domain.is_empty() || domain.len() > 253 || !domain.is_ascii() {
        return Err(bad());
    }
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_dns_names() {
        for good in ["kms.local", "kms-1.example.com", "localhost", "10.0.2.2"] {
            assert!(check_domain(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-kms.local",
            "kms..local",
            "kms_1.local",
            "kmš.local",
            &"a".repeat(254),
        ] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
    }
}
