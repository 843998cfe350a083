//! `SignCert` (UPSTREAM §7.1): a TLS certificate for an attested,
//! authorised app, issued by the app's CA under the KMS root, so a peer that
//! trusts the KMS root trusts every app the KMS vouches for: chain
//! `[leaf, app CA, KMS root CA]`.
//!
//! The caller needs no client certificate. Its request (upstream's
//! `CertSigningRequestV2`) carries an attestation whose quote binds the leaf
//! key and is signed with that key; the attestation goes through the same
//! verifier and auth backend as `GetAppKey`, judged on the measurements as
//! of `boot-mr-done` (upstream's `boottime_mr`: no key provider). There is
//! no freshness window: a request carries no issue time, and replaying one
//! yields only a certificate for a key the replayer does not hold.

use std::time::{SystemTime, UNIX_EPOCH};

use dstack_attest::AttestationV0;
use dstack_attest::eventlog::names;
use dstack_proto::kms::{SignCertRequest, SignCertResponse};
use dstack_ra_tls::{
    CertAppInfo, CertIssuer, CertRequest, CertSigningRequestV2, RaTlsCert, RaTlsError,
    VerifiedPeer, pem,
};
use p256::pkcs8::EncodePrivateKey;

use super::{Kms, KmsError};
use crate::boot_info::{MeasuredAt, boot_info};

/// Special usage (OID .4) of an app certificate the KMS issues.
const APP_LEAF_USAGE: &str = "app:custom";
/// Special usage of an app CA certificate.
const APP_CA_USAGE: &str = "app:ca";
/// The signing-request version `SignCert` takes.
const CSR_VERSION: u32 = 2;
/// Upstream's default validity for the app CA and for leaves that name no end.
const TEN_YEARS: i64 = 10 * 365 * 86_400;
/// Seconds since the epoch of 10000-01-01: later times cannot be encoded.
const MAX_UNIX: u64 = 253_402_300_800;
/// The runtime event naming each init script's hash (upstream HEAD).
const INIT_SCRIPT_HASH: &str = "init-script-hash";

impl Kms {
    /// `SignCert`, judged at `at`.
    pub async fn sign_cert(
        &self,
        request: &SignCertRequest,
        at: SystemTime,
    ) -> Result<SignCertResponse, KmsError> {
        let result = self.issue_app_cert(request, at).await;
        self.count("SignCert", result)
    }

    async fn issue_app_cert(
        &self,
        request: &SignCertRequest,
        at: SystemTime,
    ) -> Result<SignCertResponse, KmsError> {
        if request.api_version != CSR_VERSION {
            return Err(KmsError::BadRequest(format!(
                "unsupported api_version {} (SignCert takes version {CSR_VERSION} requests)",
                request.api_version
            )));
        }
        let csr = CertSigningRequestV2::from_bytes(&request.csr)?;
        csr.verify(&request.signature)?;
        let peer = self
            .evidence
            .verify_attestation(
                &csr.attestation,
                &dstack_ra_tls::report_data_for_spki(&csr.pubkey),
                at,
            )
            .await?;
        let (info, _) = self
            .decide(&peer, &request.vm_config, MeasuredAt::BootMrDone, false)
            .await?;

        let now = unix_now(at);
        let leaf = self.leaf_request(&csr, &peer, &info.app_id, now)?;
        let app_ca = self.app_ca(&info.app_id, now)?;
        let leaf_der = app_ca
            .issue_for_public_key(&csr.pubkey, &leaf)
            .map_err(|e| KmsError::Internal(e.to_string()))?;
        Ok(SignCertResponse {
            certificate_chain: vec![
                pem("CERTIFICATE", &leaf_der),
                pem("CERTIFICATE", app_ca.cert_der()),
                self.ca_cert_pem.clone(),
            ],
        })
    }

    /// What the leaf says: the request's subject, names, usages and
    /// validity (upstream's defaults for what it leaves out), the app id the
    /// evidence measured, and on request the attestation and app info.
    fn leaf_request(
        &self,
        csr: &CertSigningRequestV2,
        peer: &VerifiedPeer,
        app_id: &[u8],
        now: i64,
    ) -> Result<CertRequest, KmsError> {
        let config = &csr.config;
        let not_before = config
            .not_before
            .map(|t| unix_seconds(t, "not_before"))
            .transpose()?;
        let not_after = match config.not_after {
            Some(t) => unix_seconds(t, "not_after")?,
            None => now.saturating_add(TEN_YEARS),
        };
        if let Some(before) = not_before
            && before >= not_after
        {
            return Err(KmsError::BadRequest(format!(
                "not_before ({before}) must be earlier than not_after ({not_after})"
            )));
        }
        let mut leaf = CertRequest::new(config.subject.clone());
        leaf.org_name = config.org_name.clone();
        leaf.alt_names = config.subject_alt_names.clone();
        leaf.server_auth = config.usage_server_auth;
        leaf.client_auth = config.usage_client_auth;
        leaf.usage = Some(APP_LEAF_USAGE.to_owned());
        leaf.app_id = Some(app_id.to_vec());
        leaf.not_before = not_before;
        leaf.not_after = Some(not_after);
        if config.ext_quote {
            // Verified above, so it decodes; stripped as every `.8` is.
            let attestation =
                AttestationV0::from_bytes(&csr.attestation).map_err(RaTlsError::from)?;
            leaf.attestation = Some(attestation.stripped().to_bytes());
        }
        if config.ext_app_info {
            leaf.app_info = Some(app_info(peer)?);
        }
        Ok(leaf)
    }

    /// The app's CA: its key `derive_p256_key_pair(root CA key, [app_id,
    /// "app-ca"])`, its certificate O=Dstack, CN="Dstack App CA", a CA with
    /// path length 0, the app id and usage `app:ca`, signed by the root CA.
    fn app_ca(&self, app_id: &[u8], now: i64) -> Result<CertIssuer, KmsError> {
        let internal = |e: &dyn std::fmt::Display| KmsError::Internal(e.to_string());
        let key = self
            .keys
            .root
            .app_ca_key(app_id)
            .map_err(|e| internal(&e))?
            .to_pkcs8_der()
            .map_err(|e| internal(&e))?;
        let key = dstack_ra_tls::key_pair_from_pkcs8(key.as_bytes()).map_err(|e| internal(&e))?;
        let root_key = self
            .keys
            .root
            .ca_key()
            .to_pkcs8_der()
            .map_err(|e| internal(&e))?;
        let root = CertIssuer::new(self.ca_cert_der.clone(), root_key.as_bytes())
            .map_err(|e| internal(&e))?;
        let mut request = CertRequest::new("Dstack App CA");
        request.org_name = Some("Dstack".into());
        request.ca_path_len = Some(0);
        request.app_id = Some(app_id.to_vec());
        request.usage = Some(APP_CA_USAGE.to_owned());
        request.server_auth = false;
        request.client_auth = false;
        request.not_after = Some(now.saturating_add(TEN_YEARS));
        let cert = RaTlsCert::build(&key, &request, None, Some(&root)).map_err(|e| internal(&e))?;
        CertIssuer::new(cert.cert_der, &cert.key_der).map_err(|e| internal(&e))
    }
}

/// The `.9` app info of a verified caller: its identity and its current
/// measurements (upstream's `decode_app_info(false)`), the OS image hash from
/// the VM config its attestation carried.
fn app_info(peer: &VerifiedPeer) -> Result<CertAppInfo, KmsError> {
    let info = boot_info(peer, "", MeasuredAt::Now)?;
    let digest = |bytes: Vec<u8>| {
        <[u8; 32]>::try_from(bytes).map_err(|_| KmsError::Internal("digest length".into()))
    };
    let init_script_hashes = peer
        .event_log
        .iter()
        .filter(|e| e.is_runtime())
        .take_while(|e| e.event != names::SYSTEM_READY)
        .filter(|e| e.event == INIT_SCRIPT_HASH)
        .map(|e| {
            <[u8; 32]>::try_from(e.event_payload.as_slice()).map_err(|_| {
                KmsError::BadRequest(format!(
                    "an {INIT_SCRIPT_HASH} event is {} bytes, not 32",
                    e.event_payload.len()
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(CertAppInfo {
        app_id: info.app_id,
        compose_hash: info.compose_hash,
        instance_id: info.instance_id,
        device_id: info.device_id,
        mr_system: digest(info.mr_system)?,
        mr_aggregated: digest(info.mr_aggregated)?,
        os_image_hash: info.os_image_hash,
        key_provider_info: info.key_provider_info,
        init_script_hashes,
    })
}

fn unix_now(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn unix_seconds(value: u64, field: &str) -> Result<i64, KmsError> {
    i64::try_from(value)
        .ok()
        .filter(|_| value < MAX_UNIX)
        .ok_or_else(|| KmsError::BadRequest(format!("{field} {value} is out of range")))
}
