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
