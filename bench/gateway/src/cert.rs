//! The benchmark's one certificate: self-signed, ECDSA P-256 (what ACME
//! issues the gateway in production), a wildcard for the base domain.
//! Both proxies load the same files, so the TLS work is the same on both.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sha2::Digest;

/// Why the certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertError {
    /// rcgen refused.
    #[error("cannot generate the certificate")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Writes a self-signed certificate for `*.<domain>` and `<domain>` to
/// `chain`, its key to `key` (mode 0600); returns the certificate's
/// SHA-256, hex.
pub(crate) fn write_self_signed(
    domain: &str,
    chain: &Path,
    key: &Path,
) -> Result<String, CertError> {
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![format!("*.{domain}"), domain.to_owned()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("*.{domain}"));
    let cert = params.self_signed(&key_pair)?;
    write(chain, cert.pem().as_bytes(), 0o644)?;
    write(key, key_pair.serialize_pem().as_bytes(), 0o600)?;
    Ok(hex::encode(sha2::Sha256::digest(cert.der())))
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(bytes))
        .map_err(|source| CertError::Write {
            path: path.to_owned(),
            source,
        })
}
