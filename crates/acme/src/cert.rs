//! The issued certificate, its key, and renewal timing.

use std::fmt;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use zeroize::Zeroizing;

use crate::error::AcmeError;

/// A certificate chain from the CA with the private key it was issued for.
#[derive(Clone)]
pub struct IssuedCert {
    /// The chain as PEM, leaf first, as the CA sent it.
    pub chain_pem: String,
    /// The leaf's private key (ECDSA P-256) as PKCS#8 PEM; wiped on drop.
    pub key_pem: Zeroizing<String>,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
    /// The leaf's SubjectPublicKeyInfo, DER: what attestation quotes and CT monitoring compare.
    pub public_key_der: Vec<u8>,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("chain_pem", &format_args!("{} bytes", self.chain_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("not_after", &self.not_after)
            .field(
                "public_key_der",
                &format_args!("{} bytes", self.public_key_der.len()),
            )
            .finish()
    }
}

/// A fresh key and a CSR for `names`, made with it.
pub(crate) struct CertRequest {
    pub(crate) key: KeyPair,
    pub(crate) csr_der: Vec<u8>,
}

impl CertRequest {
    pub(crate) fn new(names: &[String]) -> Result<Self, AcmeError> {
        let rcgen_err = |what| move |source| AcmeError::Rcgen { what, source };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(rcgen_err("the certificate key"))?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(rcgen_err("the CSR"))?;
        // The CA takes the names from the SANs; a subject would only be ignored.
        params.distinguished_name = DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(rcgen_err("the CSR"))?;
        Ok(Self {
            key,
            csr_der: csr.der().to_vec(),
        })
    }

    /// Checks the CA's chain against this request's key and packs the result.
    pub(crate) fn into_issued(self, chain_pem: String) -> Result<IssuedCert, AcmeError> {
        let leaf = leaf_der(&chain_pem)?;
        let (not_after, spki) = parse_leaf(&leaf)?;
        let public_key_der = self.key.subject_public_key_info();
        if spki != public_key_der {
            return Err(AcmeError::KeyMismatch);
        }
        Ok(IssuedCert {
            chain_pem,
            key_pem: Zeroizing::new(self.key.serialize_pem()),
            not_after,
            public_key_der,
        })
    }
}

fn leaf_der(chain_pem: &str) -> Result<CertificateDer<'static>, AcmeError> {
    match CertificateDer::pem_slice_iter(chain_pem.as_bytes()).next() {
        Some(Ok(der)) => Ok(der),
        Some(Err(err)) => Err(AcmeError::BadChain(err.to_string())),
        None => Err(AcmeError::BadChain("no certificate in the PEM".into())),
    }
}

fn parse_leaf(der: &[u8]) -> Result<(SystemTime, Vec<u8>), AcmeError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| AcmeError::BadChain(format!("leaf certificate: {err}")))?;
    let timestamp = cert.validity().not_after.timestamp();
    let not_after = u64::try_from(timestamp)
        .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .map_err(|_| AcmeError::BadChain(format!("notAfter before 1970: {timestamp}")))?;
    Ok((not_after, cert.public_key().raw.to_vec()))
}

/// The notAfter of the first (leaf) certificate in a PEM chain.
pub fn not_after_from_pem(chain_pem: &str) -> Result<SystemTime, AcmeError> {
    Ok(parse_leaf(&leaf_der(chain_pem)?)?.0)
}

/// Whether a certificate expiring at `not_after` is due for renewal at `now`,
/// renewing `before` ahead of expiry (upstream renews 30 days before).
pub fn renew_due(not_after: SystemTime, now: SystemTime, before: Duration) -> bool {
    match now.checked_add(before) {
        Some(deadline) => deadline >= not_after,
        // `now + before` past the clock's range is after any notAfter.
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn renewal_is_due_from_the_window_start_on() {
        let not_after = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let before = 30 * DAY;
        assert!(!renew_due(
            not_after,
            not_after - before - Duration::from_secs(1),
            before
        ));
        assert!(renew_due(not_after, not_after - before, before));
        assert!(renew_due(not_after, not_after - DAY, before));
        assert!(renew_due(not_after, not_after, before));
        assert!(renew_due(not_after, not_after + DAY, before));
        assert!(!renew_due(not_after, not_after - DAY, Duration::ZERO));
        assert!(renew_due(not_after, SystemTime::UNIX_EPOCH, Duration::MAX));
    }

    #[test]
    fn not_after_and_key_come_from_the_leaf() {
        let request = CertRequest::new(&["a.example".into()]).unwrap();
        let mut params = CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(2_000_000_000).unwrap();
        let leaf = params.self_signed(&request.key).unwrap();
        let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let second = CertificateParams::new(vec!["b.example".to_string()])
            .unwrap()
            .self_signed(&other)
            .unwrap();
        let chain = format!("{}{}", leaf.pem(), second.pem());

        let expected = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        assert_eq!(not_after_from_pem(&chain).unwrap(), expected);
        let spki = request.key.subject_public_key_info();
        let issued = request.into_issued(chain.clone()).unwrap();
        assert_eq!(issued.not_after, expected);
        assert_eq!(issued.public_key_der, spki);
        assert!(issued.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let debug = format!("{issued:?}");
        assert!(!debug.contains("PRIVATE"), "{debug}");

        let wrong = CertRequest::new(&["a.example".into()]).unwrap();
        assert!(matches!(
            wrong.into_issued(chain),
            Err(AcmeError::KeyMismatch)
        ));
        assert!(matches!(
            not_after_from_pem("junk"),
            Err(AcmeError::BadChain(_))
        ));
    }
}
