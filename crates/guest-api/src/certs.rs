//! Certificates the guest API issues: the app root certificate (made once)
//! and `/GetTlsKey` / tappd `DeriveKey` leaves signed by it (UPSTREAM §1.3,
//! non-KMS mode: chain `[leaf, app root]`), or in KMS mode signed by the KMS
//! from a signing request (chain `[leaf, app CA, KMS root]`).

use std::sync::Mutex;

use dstack_attest::{AttestationV0, Platform};
pub(crate) use dstack_ra_tls::pem;
use dstack_ra_tls::{
    CertAppInfo, CertConfigV2, CertIssuer, CertRequest, CertSigningRequestV2, Evidence, RaTlsCert,
    RaTlsError,
};
use p256::pkcs8::EncodePrivateKey;
use rcgen::{KeyPair, PublicKeyData};

use crate::{AppInfo, GuestApiError, take_evidence};

/// Special usage of app leaf certificates (dstack OID .4).
const LEAF_USAGE: &str = "app:custom";

/// The app root certificate and the issuer made from it.
pub(crate) struct AppRoot {
    pub(crate) cert_pem: String,
    issuer: CertIssuer,
}

impl AppRoot {
    /// "App Root Cert": self-signed by the app key, a CA, carrying a quote
    /// that binds the app key and the attestation extension (.8).
    pub(crate) fn issue(
        platform: &dyn Platform,
        measure: &Mutex<()>,
        keys: &dstack_keys::AppKeys,
        app: &AppInfo,
    ) -> Result<Self, GuestApiError> {
        let key = rcgen_key(keys.app_key())?;
        let mut request = CertRequest::new("App Root Cert");
        request.server_auth = false;
        request.client_auth = false;
        request.ca_path_len = Some(1);
        request.not_after = Some(ten_years_from_now());
        let evidence = evidence_for(platform, measure, &key, &app.vm_config)?;
        let cert = RaTlsCert::build(&key, &request, Some(&evidence), None)?;
        let issuer = CertIssuer::new(cert.cert_der.clone(), &cert.key_der)?;
        Ok(Self {
            cert_pem: pem("CERTIFICATE", &cert.cert_der),
            issuer,
        })
    }
}

/// What a leaf should say (GetTlsKey / DeriveKey arguments).
pub(crate) struct LeafSpec {
    pub(crate) subject: String,
    pub(crate) alt_names: Vec<String>,
    pub(crate) ra_tls: bool,
    pub(crate) server_auth: bool,
    pub(crate) client_auth: bool,
    pub(crate) not_before: Option<i64>,
    pub(crate) not_after: Option<i64>,
    /// Add the `.9` app-info extension.
    pub(crate) with_app_info: bool,
}

/// The `GetTlsKey`/`DeriveKey` answer: a leaf for `key` signed by the
/// signer (the KMS) if there is one, else by the app root.
pub(crate) fn tls_key_response(
    api: &crate::GuestApi,
    key: &p256::SecretKey,
    spec: LeafSpec,
) -> Result<dstack_proto::guest_api::GetTlsKeyResponse, GuestApiError> {
    let (key, certificate_chain) = match &api.signer {
        Some(signer) => signed_leaf(
            api.platform.as_ref(),
            &api.measure,
            signer.as_ref(),
            &api.app,
            key,
            spec,
        )?,
        None => issue_leaf(
            api.platform.as_ref(),
            &api.measure,
            &api.root,
            &api.app,
            key,
            spec,
        )?,
    };
    Ok(dstack_proto::guest_api::GetTlsKeyResponse {
        key,
        certificate_chain,
    })
}

/// A leaf for `key` signed by the app root: `(key PEM, [leaf PEM, root PEM])`.
pub(crate) fn issue_leaf(
    platform: &dyn Platform,
    measure: &Mutex<()>,
    root: &AppRoot,
    app: &AppInfo,
    key: &p256::SecretKey,
    spec: LeafSpec,
) -> Result<(String, Vec<String>), GuestApiError> {
    let key = rcgen_key(key)?;
    let mut request = CertRequest::new(spec.subject);
    request.alt_names = spec.alt_names;
    request.server_auth = spec.server_auth;
    request.client_auth = spec.client_auth;
    request.usage = Some(LEAF_USAGE.to_owned());
    request.not_before = spec.not_before;
    request.not_after = Some(spec.not_after.unwrap_or_else(ten_years_from_now));
    let evidence = if spec.ra_tls {
        Some(evidence_for(platform, measure, &key, &app.vm_config)?)
    } else {
        None
    };
    if spec.with_app_info {
        // The measurements of the quote in the certificate, else of a fresh one.
        let quote = match &evidence {
            Some(evidence) => evidence.quote.clone(),
            None => take_evidence(platform, measure, &[0; 64])?.quote,
        };
        let quote =
            dstack_attest::Quote::parse(&quote).map_err(|e| GuestApiError::Platform(e.into()))?;
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
    }
    let leaf = RaTlsCert::build(&key, &request, evidence.as_ref(), Some(&root.issuer))?;
    Ok((
        key.serialize_pem(),
        vec![pem("CERTIFICATE", &leaf.cert_der), root.cert_pem.clone()],
    ))
}

/// A leaf for `key` from `signer`: a certificate signing request (upstream's
/// `CertSigningRequestV2`) for what `spec` asks, carrying a fresh quote that
/// binds the key, signed with the key: `(key PEM, chain from the signer)`.
pub(crate) fn signed_leaf(
    platform: &dyn Platform,
    measure: &Mutex<()>,
    signer: &dyn crate::CertSigner,
    app: &AppInfo,
    key: &p256::SecretKey,
    spec: LeafSpec,
) -> Result<(String, Vec<String>), GuestApiError> {
    let key = rcgen_key(key)?;
    let pubkey = key.subject_public_key_info();
    let report_data = dstack_ra_tls::report_data_for_spki(&pubkey);
    let taken = take_evidence(platform, measure, &report_data)?;
    // Stripped as a certificate's `.8`: the RTMR3 log is what is checked.
    let attestation = AttestationV0::new(
        taken.quote,
        taken.events,
        report_data,
        app.vm_config.clone(),
    )
    .stripped()
    .to_bytes();
    let unsigned = |t: i64| u64::try_from(t).map_err(|_| RaTlsError::InvalidValidity);
    let config = CertConfigV2 {
        org_name: None,
        subject: spec.subject,
        subject_alt_names: spec.alt_names,
        usage_server_auth: spec.server_auth,
        usage_client_auth: spec.client_auth,
        ext_quote: spec.ra_tls,
        ext_app_info: spec.with_app_info,
        not_before: spec.not_before.map(unsigned).transpose()?,
        not_after: spec.not_after.map(unsigned).transpose()?,
    };
    let csr = CertSigningRequestV2::new(pubkey, config, attestation);
    let signature = csr.sign(&key)?;
    let chain = signer
        .sign(&csr, &signature)
        .map_err(GuestApiError::Signer)?;
    Ok((key.serialize_pem(), chain))
}

/// Quotes `key`'s SPKI (SHA-512("ratls-cert:" ‖ SPKI)): the evidence the
/// certificate's `.8` extension carries. No collateral: verifiers bring
/// their own (from a PCCS or the sim root's), as upstream's leaves assume.
fn evidence_for(
    platform: &dyn Platform,
    measure: &Mutex<()>,
    key: &KeyPair,
    vm_config: &str,
) -> Result<Evidence, GuestApiError> {
    let report_data = dstack_ra_tls::report_data_for_spki(&key.subject_public_key_info());
    let taken = take_evidence(platform, measure, &report_data)?;
    Ok(Evidence {
        quote: taken.quote,
        event_log: taken.events,
        vm_config: vm_config.to_owned(),
        collateral: None,
    })
}

fn rcgen_key(key: &p256::SecretKey) -> Result<KeyPair, GuestApiError> {
    let der = key
        .to_pkcs8_der()
        .map_err(|_| dstack_keys::KeyError::Pkcs8 { what: "P-256 key" })?;
    Ok(dstack_ra_tls::key_pair_from_pkcs8(der.as_bytes())?)
}

fn ten_years_from_now() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2));
    now.saturating_add(10 * 365 * 86_400)
}
