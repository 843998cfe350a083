//! Issuing RA-TLS certificates: a fresh P-256 key whose public key is bound
//! into a TEE quote through report_data, with the quote, event log and
//! collateral carried in certificate extensions.

use dstack_attest::{Collateral, Event, Platform};
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData,
};
use sha2::{Digest, Sha512};

use crate::RaTlsError;
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
        }
    }
}

/// The evidence a certificate carries.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// The quote; its report_data must bind the certificate key.
    pub quote: Vec<u8>,
    /// The event log the quote's RTMRs replay from.
    pub event_log: Vec<Event>,
    /// Collateral for offline verification.
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
        let mut params = CertificateParams::new(request.alt_names.clone())?;
        let mut dn = DistinguishedName::new();
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
        let event_log = serde_json::to_vec(&evidence.event_log)
            .map_err(|e| RaTlsError::Encode(e.to_string()))?;
        push_ext(&mut params, oids::TDX_QUOTE, &evidence.quote);
        push_ext(&mut params, oids::EVENT_LOG, &event_log);
        if let Some(collateral) = &evidence.collateral {
            push_ext(
                &mut params,
                oids::COLLATERAL,
                collateral.to_json().as_bytes(),
            );
        }
        if let Some(usage) = &request.usage {
            push_ext(&mut params, oids::CERT_USAGE, usage.as_bytes());
        }
        if let Some(app_id) = &request.app_id {
            push_ext(&mut params, oids::APP_ID, app_id);
        }
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        })
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
