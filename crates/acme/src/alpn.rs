//! TLS-ALPN-01 (RFC 8737): challenge certificates the TLS listener serves to
//! the CA's validator.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256,
};
use rustls::ServerConfig;
use rustls::crypto::ring::default_provider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::AcmeError;

/// The ALPN protocol the CA's validator offers, and the only one a challenge
/// handshake may negotiate (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Pending TLS-ALPN-01 challenge certificates by domain; cheap to clone (shared).
///
/// The gateway's TLS acceptor asks [`TlsAlpnResponder::certified_key_for`] when
/// a ClientHello offers [`ACME_TLS_ALPN`], and must then negotiate that protocol
/// (see [`TlsAlpnResponder::server_config`]). [`AcmeClient::issue`] adds a
/// certificate before telling the CA to validate and removes it afterwards.
///
/// [`AcmeClient::issue`]: crate::AcmeClient::issue
#[derive(Clone, Default)]
pub struct TlsAlpnResponder {
    pending: Arc<RwLock<HashMap<String, Arc<CertifiedKey>>>>,
}

impl fmt::Debug for TlsAlpnResponder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pending = self.pending.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("TlsAlpnResponder")
            .field("domains", &pending.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TlsAlpnResponder {
    /// An empty responder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The challenge certificate for `sni`, if a challenge for it is pending.
    pub fn certified_key_for(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let pending = self.pending.read().unwrap_or_else(PoisonError::into_inner);
        pending.get(&normalize(sni)).cloned()
    }

    /// Whether no challenge is pending.
    pub fn is_empty(&self) -> bool {
        self.pending
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// A server config that answers challenge handshakes only: it negotiates
    /// [`ACME_TLS_ALPN`] and serves the pending certificate for the SNI.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
            // RFC 8737 §4: the validator uses TLS 1.2 or later; both are fine.
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self.clone()));
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        Arc::new(config)
    }

    /// Makes and installs the challenge certificate for `domain`.
    pub(crate) fn insert(
        &self,
        domain: &str,
        key_authorization_sha256: &[u8; 32],
    ) -> Result<(), AcmeError> {
        let domain = normalize(domain);
        let key = challenge_cert(&domain, key_authorization_sha256)?;
        let mut pending = self.pending.write().unwrap_or_else(PoisonError::into_inner);
        pending.insert(domain, Arc::new(key));
        Ok(())
    }

    /// Drops the challenge certificate for `domain`.
    pub(crate) fn remove(&self, domain: &str) {
        let mut pending = self.pending.write().unwrap_or_else(PoisonError::into_inner);
        pending.remove(&normalize(domain));
    }
}

impl ResolvesServerCert for TlsAlpnResponder {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A challenge certificate is only for validators: never serve it on a
        // handshake that could go on to carry application data.
        let offers_acme = client_hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if !offers_acme {
            return None;
        }
        self.certified_key_for(client_hello.server_name()?)
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The self-signed certificate of RFC 8737 §3: one SAN, the domain, and the
/// critical acmeIdentifier extension holding sha256(key authorization).
fn challenge_cert(
    domain: &str,
    key_authorization_sha256: &[u8; 32],
) -> Result<CertifiedKey, AcmeError> {
    let rcgen_err = |source| AcmeError::Rcgen {
        what: "the TLS-ALPN-01 certificate",
        source,
    };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err)?;
    let mut params = CertificateParams::new(vec![domain.to_string()]).map_err(rcgen_err)?;
    params.distinguished_name = DistinguishedName::new();
    params
        .custom_extensions
        .push(CustomExtension::new_acme_identifier(
            key_authorization_sha256,
        ));
    let cert = params.self_signed(&key).map_err(rcgen_err)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = default_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(AcmeError::AlpnKey)?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::*;

    use super::*;

    #[test]
    fn the_challenge_certificate_carries_the_critical_acme_identifier() {
        let responder = TlsAlpnResponder::new();
        let digest = [7u8; 32];
        responder.insert("X.Apps.Test", &digest).unwrap();
        assert!(responder.certified_key_for("other.apps.test").is_none());
        let key = responder.certified_key_for("x.apps.test.").unwrap();
        let (_, cert) = parse_x509_certificate(&key.cert[0]).unwrap();
        // Not `keys_match()`: webpki rejects the unknown critical extension,
        // which is the point of this certificate.
        let spki = key.key.public_key().unwrap();
        assert_eq!(spki.as_ref(), cert.public_key().raw);
        let ext = cert
            .extensions()
            .iter()
            .find(|ext| ext.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap();
        assert!(ext.critical);
        let mut expected = vec![0x04, 32];
        expected.extend_from_slice(&digest);
        assert_eq!(ext.value, &expected[..]);
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 1);
        assert_eq!(
            format!("{}", san.value.general_names[0]),
            "DNSName(x.apps.test)"
        );

        let clone = responder.clone();
        clone.remove("x.apps.test");
        assert!(responder.is_empty());
        assert!(format!("{responder:?}").contains("domains"));
    }
}
