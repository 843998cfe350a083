//! rustls configurations for RA-TLS servers and clients (ring provider, TLS 1.3 and 1.2).

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, ServerConfig};

use crate::verify::RaTlsCertVerifier;
use crate::{RaTlsCert, RaTlsError};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn chain_and_key(cert: &RaTlsCert) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    (
        vec![CertificateDer::from(cert.cert_der.clone())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der.clone())),
    )
}

/// A server presenting `cert`; with `clients`, clients must present RA-TLS
/// certificates that pass it (mutual RA-TLS).
pub fn server_config(
    cert: &RaTlsCert,
    clients: Option<Arc<RaTlsCertVerifier>>,
) -> Result<ServerConfig, RaTlsError> {
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match clients {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let (chain, key) = chain_and_key(cert);
    Ok(builder.with_single_cert(chain, key)?)
}

/// A client that accepts servers passing `servers`, presenting `cert` when given.
pub fn client_config(
    servers: Arc<RaTlsCertVerifier>,
    cert: Option<&RaTlsCert>,
) -> Result<ClientConfig, RaTlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        // Safe here: RaTlsCertVerifier replaces CA trust with quote verification.
        .with_custom_certificate_verifier(servers);
    Ok(match cert {
        Some(cert) => {
            let (chain, key) = chain_and_key(cert);
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    })
}

/// A server presenting `chain` (leaf first) with `key_der` (PKCS#8), which
/// asks clients for a certificate but lets them connect without one, and
/// accepts any client certificate whose key the client proves it holds.
/// The application must then check the certificate's evidence itself (e.g.
/// with [`crate::RaTlsVerifier::verify_cert`]): that way a refused caller gets
/// a named error in the response instead of a failed handshake, and calls
/// that need no evidence (a KMS's `GetMeta`) work without a certificate.
pub fn deferred_client_auth_server_config(
    chain: Vec<Vec<u8>>,
    key_der: Vec<u8>,
) -> Result<ServerConfig, RaTlsError> {
    let verifier = Arc::new(DeferredClientCert {
        algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
    });
    let chain = chain.into_iter().map(CertificateDer::from).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der));
    Ok(ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?)
}

/// A client presenting `client` (`(chain, PKCS#8 key)`, when given) that
/// trusts a server only if its leaf is signed by the root certificate
/// `root_der` and carries the special usage `usage` (e.g. `kms:rpc`), as a
/// dstack guest trusts its KMS: by the KMS root it pins, not by host name
/// (KMS URLs are often bare IPs behind port forwards).
pub fn pinned_root_client_config(
    root_der: &[u8],
    usage: &str,
    client: Option<(Vec<Vec<u8>>, Vec<u8>)>,
) -> Result<ClientConfig, RaTlsError> {
    let verifier = Arc::new(PinnedRoot {
        root_der: root_der.to_vec(),
        usage: usage.to_owned(),
        algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        // Safe here: PinnedRoot checks the leaf's signature by the pinned root.
        .with_custom_certificate_verifier(verifier);
    Ok(match client {
        Some((chain, key)) => builder.with_client_auth_cert(
            chain.into_iter().map(CertificateDer::from).collect(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )?,
        None => builder.with_no_client_auth(),
    })
}

/// See [`pinned_root_client_config`].
#[derive(Debug)]
struct PinnedRoot {
    root_der: Vec<u8>,
    usage: String,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl PinnedRoot {
    fn check(&self, leaf: &[u8], now: rustls::pki_types::UnixTime) -> Result<(), String> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, root) = X509Certificate::from_der(&self.root_der)
            .map_err(|e| format!("pinned root is malformed: {e}"))?;
        let (_, cert) = X509Certificate::from_der(leaf)
            .map_err(|e| format!("certificate is malformed: {e}"))?;
        cert.verify_signature(Some(root.public_key()))
            .map_err(|_| "certificate is not signed by the pinned root".to_owned())?;
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let validity = cert.validity();
        if now < validity.not_before.timestamp() || now > validity.not_after.timestamp() {
            return Err("certificate is expired or not yet valid".into());
        }
        let usage = crate::verify::extension(&cert, crate::oids::CERT_USAGE)?;
        if usage.as_deref() != Some(self.usage.as_bytes()) {
            return Err(format!(
                "certificate usage is {:?}, expected {:?}",
                usage.map(|u| String::from_utf8_lossy(&u).into_owned()),
                self.usage
            ));
        }
        Ok(())
    }
}

impl rustls::client::danger::ServerCertVerifier for PinnedRoot {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.check(end_entity.as_ref(), now)
            .map(|()| rustls::client::danger::ServerCertVerified::assertion())
            .map_err(|reason| {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                    rustls::OtherError(Arc::new(RaTlsError::PolicyRejected(reason))),
                ))
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A client that does not check the server at all, for the one call whose
/// answer it checks itself afterwards: fetching a KMS's root CA before
/// pinning it (the root is then bound by `key_provider_id` or measured).
pub fn unverified_client_config() -> Result<ClientConfig, RaTlsError> {
    Ok(unverified_builder()?.with_no_client_auth())
}

/// [`unverified_client_config`], presenting `chain` (leaf first) with
/// `key_der` (PKCS#8): for a caller that judges the server's RA-TLS
/// certificate itself right after the handshake, before sending anything
/// (a CVM registering with its gateway).
pub fn unverified_client_config_with_auth(
    chain: Vec<Vec<u8>>,
    key_der: Vec<u8>,
) -> Result<ClientConfig, RaTlsError> {
    Ok(unverified_builder()?.with_client_auth_cert(
        chain.into_iter().map(CertificateDer::from).collect(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)),
    )?)
}

fn unverified_builder()
-> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, RaTlsError> {
    let verifier = Arc::new(AnyServer {
        algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
    });
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        // Safe only for callers that check the certificate afterwards (see above).
        .with_custom_certificate_verifier(verifier))
}

/// See [`unverified_client_config`].
#[derive(Debug)]
struct AnyServer {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Accepts any client certificate at the TLS layer; see
/// [`deferred_client_auth_server_config`].
#[derive(Debug)]
struct DeferredClientCert {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::server::danger::ClientCertVerifier for DeferredClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        // Deliberately no chain check: the evidence inside the certificate is
        // what the application trusts, and it checks that per call.
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
