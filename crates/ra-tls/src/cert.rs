//! Issuing RA-TLS certificates: a fresh P-256 key whose public key is bound
//! into a TEE quote through report_data, with the quote, event log and
//! collateral carried in certificate extensions.

use dstack_attest::{AttestationV0, Collateral, Event, Platform};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    PublicKeyData,
};
use sha2::{Digest, Sha512};

use crate::RaTlsError;
use crate::app_info::CertAppInfo;
use crate::oids;

/// The report_data that binds a certificate's public key into a quote:
/// SHA-512("ratls-cert:" ‖ SubjectPublicKeyInfo DER), as dstack computes it.
pub fn report_data_for_spki(spki_der: &[u8]) -> [u8; 64] {
    let digest = Sha512::new()
        .chain_update(b"ratls-cert:")
        .chain_update(spki_der)
        .finalize();
    digest.into()
}

/// What an RA-TLS certificate should say besides its evidence.
#[derive(Debug, Clone)]
pub struct CertRequest {
    /// Subject common name.
    pub subject: String,
    /// DNS subject alternative names.
    pub alt_names: Vec<String>,
    /// Special usage (dstack OID .4), e.g. `app:custom` or `kms:rpc`.
    pub usage: Option<String>,
    /// App id (dstack OID .3).
    pub app_id: Option<Vec<u8>>,
    /// Allow TLS server authentication.
    pub server_auth: bool,
    /// Allow TLS client authentication.
    pub client_auth: bool,
    /// Validity start (Unix seconds); default an hour ago.
    pub not_before: Option<i64>,
    /// Validity end (Unix seconds); default a year from now.
    pub not_after: Option<i64>,
    /// Organization name in the subject, if any.
    pub org_name: Option<String>,
    /// Make a CA certificate with this path length constraint (adds
    /// keyCertSign and cRLSign to the key usages).
    pub ca_path_len: Option<u8>,
    /// dstack's versioned attestation (OID .8), already encoded, for a
    /// certificate built without [`Evidence`] (e.g. one carrying another
    /// key's attestation, as a CA does).
    pub attestation: Option<Vec<u8>>,
    /// dstack's app info (OID .9).
    pub app_info: Option<CertAppInfo>,
}

impl CertRequest {
    /// A request for a certificate usable as both TLS server and client.
    pub fn new(subject: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            alt_names: Vec::new(),
            usage: None,
            app_id: None,
            server_auth: true,
            client_auth: true,
            not_before: None,
            not_after: None,
            org_name: None,
            ca_path_len: None,
            attestation: None,
            app_info: None,
        }
    }
}

/// A CA that signs certificates: its certificate and private key.
pub struct CertIssuer {
    cert_der: Vec<u8>,
    key: KeyPair,
}

impl std::fmt::Debug for CertIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertIssuer")
            .field("cert_len", &self.cert_der.len())
            .finish_non_exhaustive()
    }
}

impl CertIssuer {
    /// An issuer from its certificate (DER) and PKCS#8 private key (DER).
    pub fn new(cert_der: Vec<u8>, key_der: &[u8]) -> Result<Self, RaTlsError> {
        let key = key_pair_from_pkcs8(key_der)?;
        // Parse once now so signing never meets a malformed issuer.
        Issuer::from_ca_cert_der(&cert_der.as_slice().into(), &key)?;
        Ok(Self { cert_der, key })
    }

    /// The issuer's certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }
}

/// An rcgen P-256 key pair from PKCS#8 DER.
pub fn key_pair_from_pkcs8(key_der: &[u8]) -> Result<KeyPair, RaTlsError> {
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key_der);
    Ok(KeyPair::from_pkcs8_der_and_sign_algo(
        &der,
        &PKCS_ECDSA_P256_SHA256,
    )?)
}

/// The evidence a certificate carries, as upstream's `.8` extension: the
/// quote with the stripped event log (RTMR3 events and RTMR0's ACPI DATA
/// events) in a V0 `VersionedAttestation`.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// The quote; its report_data must bind the certificate key.
    pub quote: Vec<u8>,
    /// The full event log the quote's RTMRs replay from (stripped when written).
    pub event_log: Vec<Event>,
    /// The VM config JSON string (upstream's attestation `config`).
    pub vm_config: String,
    /// Collateral, embedded under our own OID only when given: it lets a
    /// verifier without a collateral source check the quote offline, at the
    /// cost of about 16 KB per certificate. Upstream's leaves carry none.
    pub collateral: Option<Collateral>,
}

/// An issued RA-TLS certificate and its private key.
#[derive(Clone)]
pub struct RaTlsCert {
    /// The certificate (DER).
    pub cert_der: Vec<u8>,
    /// The private key (PKCS#8 DER).
    pub key_der: Vec<u8>,
}

impl std::fmt::Debug for RaTlsCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaTlsCert")
            .field("cert_len", &self.cert_der.len())
            .finish_non_exhaustive()
    }
}

impl RaTlsCert {
    /// Generate a key, quote it on `platform`, and issue a self-signed certificate.
    pub fn issue(
        platform: &dyn Platform,
        request: &CertRequest,
        collateral: Option<Collateral>,
    ) -> Result<Self, RaTlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let report_data = report_data_for_spki(&key.subject_public_key_info());
        let evidence = Evidence {
            quote: platform.quote(&report_data)?,
            event_log: platform.event_log()?,
            vm_config: String::new(),
            collateral,
        };
        Self::with_evidence(key, request, &evidence)
    }

    /// Issue a certificate for `key` carrying `evidence` as given. The caller
    /// is responsible for the evidence binding this key; verifiers check it.
    pub fn with_evidence(
        key: KeyPair,
        request: &CertRequest,
        evidence: &Evidence,
    ) -> Result<Self, RaTlsError> {
        Self::build(&key, request, Some(evidence), None)
    }

    /// Issue a certificate for `key`: with `evidence` (quote, event log,
    /// collateral extensions) or without, self-signed or signed by `issuer`.
    pub fn build(
        key: &KeyPair,
        request: &CertRequest,
        evidence: Option<&Evidence>,
        issuer: Option<&CertIssuer>,
    ) -> Result<Self, RaTlsError> {
        let mut params = cert_params(request)?;
        if let Some(evidence) = evidence {
            let attestation = AttestationV0::new(
                evidence.quote.clone(),
                evidence.event_log.clone(),
                report_data_for_spki(&key.subject_public_key_info()),
                evidence.vm_config.clone(),
            );
            push_ext(
                &mut params,
                oids::ATTESTATION,
                &attestation.stripped().to_bytes(),
            );
            if let Some(collateral) = &evidence.collateral {
                push_ext(
                    &mut params,
                    oids::COLLATERAL,
                    collateral.to_json().as_bytes(),
                );
            }
        } else if let Some(attestation) = &request.attestation {
            push_ext(&mut params, oids::ATTESTATION, attestation);
        }
        let cert = match issuer {
            Some(issuer) => {
                let signer =
                    Issuer::from_ca_cert_der(&issuer.cert_der.as_slice().into(), &issuer.key)?;
                params.signed_by(key, &signer)?
            }
            None => params.self_signed(key)?,
        };
        Ok(Self {
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        })
    }
}

impl CertIssuer {
    /// Sign a certificate for a public key this side does not hold (`spki`,
    /// SubjectPublicKeyInfo DER; e.g. a signing request's) as `request`
    /// says; its `.8` is `request.attestation`, as given. Returns the DER.
    pub fn issue_for_public_key(
        &self,
        spki: &[u8],
        request: &CertRequest,
    ) -> Result<Vec<u8>, RaTlsError> {
        let mut params = cert_params(request)?;
        if let Some(attestation) = &request.attestation {
            push_ext(&mut params, oids::ATTESTATION, attestation);
        }
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki)?;
        let signer = Issuer::from_ca_cert_der(&self.cert_der.as_slice().into(), &self.key)?;
        Ok(params.signed_by(&public_key, &signer)?.der().to_vec())
    }
}

/// Everything a certificate says besides its evidence (`.8`, collateral).
fn cert_params(request: &CertRequest) -> Result<CertificateParams, RaTlsError> {
    let mut params = CertificateParams::new(request.alt_names.clone())?;
    let mut dn = DistinguishedName::new();
    if let Some(org) = &request.org_name {
        dn.push(DnType::OrganizationName, org.clone());
    }
    dn.push(DnType::CommonName, request.subject.clone());
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if request.server_auth {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if request.client_auth {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = match request.not_before {
        Some(t) => unix(t)?,
        None => now - time::Duration::hours(1),
    };
    params.not_after = match request.not_after {
        Some(t) => unix(t)?,
        None => now + time::Duration::days(365),
    };
    if params.not_before >= params.not_after {
        return Err(RaTlsError::InvalidValidity);
    }
    if let Some(path_len) = request.ca_path_len {
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
        params.key_usages.push(KeyUsagePurpose::KeyCertSign);
        params.key_usages.push(KeyUsagePurpose::CrlSign);
    }
    // Upstream's order: app id, app info, usage (then the attestation).
    if let Some(app_id) = &request.app_id {
        push_ext(&mut params, oids::APP_ID, app_id);
    }
    if let Some(app_info) = &request.app_info {
        push_ext(&mut params, oids::APP_INFO, &app_info.encode());
    }
    if let Some(usage) = &request.usage {
        push_ext(&mut params, oids::CERT_USAGE, usage.as_bytes());
    }
    Ok(params)
}

/// PEM armour (64-column lines) of `der` under `label`, e.g. `CERTIFICATE`.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER of the first `CERTIFICATE` block in PEM `text`, or `None` if
/// there is none or it is not valid base64.
pub fn pem_certificate(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()
        .filter(|der| !der.is_empty())
}

/// A root certificate given as PEM or DER bytes, as DER.
pub fn certificate_der(bytes: &[u8]) -> Option<Vec<u8>> {
    match std::str::from_utf8(bytes) {
        Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => pem_certificate(text),
        _ => (!bytes.is_empty()).then(|| bytes.to_vec()),
    }
}

fn unix(t: i64) -> Result<time::OffsetDateTime, RaTlsError> {
    time::OffsetDateTime::from_unix_timestamp(t).map_err(|_| RaTlsError::InvalidValidity)
}

/// dstack wraps every extension's content in a DER OCTET STRING.
fn push_ext(params: &mut CertificateParams, oid: &[u64], content: &[u8]) {
    let wrapped = yasna::construct_der(|w| w.write_bytes(content));
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(oid, wrapped));
}

#[cfg(test)]
mod tests {
    #[test]
    fn pem_round_trips() {
        let der = vec![0x30, 0x03, 0x02, 0x01, 0x05];
        let text = super::pem("CERTIFICATE", &der);
        assert_eq!(super::pem_certificate(&text), Some(der.clone()));
        assert_eq!(super::certificate_der(text.as_bytes()), Some(der.clone()));
        assert_eq!(super::certificate_der(&der), Some(der));
        assert_eq!(super::pem_certificate("no pem here"), None);
    }

    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::*;

    fn ca() -> (CertIssuer, Vec<u8>) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut request = CertRequest::new("App Root Cert");
        request.ca_path_len = Some(1);
        request.org_name = Some("Dstack".into());
        request.attestation = Some(vec![0, 1, 2]);
        let cert = RaTlsCert::build(&key, &request, None, None).unwrap();
        let issuer = CertIssuer::new(cert.cert_der.clone(), &cert.key_der).unwrap();
        (issuer, cert.cert_der)
    }

    #[test]
    fn leaf_signed_by_issuer_verifies_under_it() {
        let (issuer, ca_der) = ca();
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        assert!(ca_cert.is_ca());
        assert!(
            ca_cert
                .get_extension_unique(
                    &x509_parser::oid_registry::Oid::from(&[1, 3, 6, 1, 4, 1, 62397, 1, 8])
                        .unwrap()
                )
                .unwrap()
                .is_some()
        );

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut request = CertRequest::new("leaf");
        request.alt_names = vec!["app.example".into()];
        request.client_auth = false;
        request.usage = Some("app:custom".into());
        let leaf = RaTlsCert::build(&key, &request, None, Some(&issuer)).unwrap();
        let (_, leaf_cert) = X509Certificate::from_der(&leaf.cert_der).unwrap();
        assert!(!leaf_cert.is_ca());
        assert_eq!(leaf_cert.issuer(), ca_cert.subject());
        leaf_cert
            .verify_signature(Some(ca_cert.public_key()))
            .unwrap();
        // Not self-signed: its own key does not verify it.
        assert!(leaf_cert.verify_signature(None).is_err());
        assert!(CertIssuer::new(vec![1, 2, 3], &leaf.key_der).is_err());
    }
}
