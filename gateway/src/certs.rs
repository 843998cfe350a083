//! The certificates the terminate path serves, chosen by SNI: a base
//! domain's wildcard (for `<id>.<base>` and `<base>`), and TLS-ALPN-01
//! challenge certificates while an issuance is pending. Swapped whole on
//! every change, so a renewal reaches new handshakes at once and never
//! touches connections already open. An operator's own certificate
//! (`[proxy] cert_chain`/`cert_key`) sits underneath: it is served for a
//! base domain whenever ACME has none for it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The PEM holds no certificate or no key.
    #[error("{domain}: {reason}")]
    Pem {
        /// The domain it was for (or, for an operator's file, its path).
        domain: String,
        /// What is missing or wrong.
        reason: String,
    },
    /// An operator's certificate or key file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Certificates by base domain, plus pending ACME challenges.
#[derive(Debug, Default)]
pub struct CertStore {
    /// ACME's certificates, from the cluster's records.
    by_domain: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// The operator's certificate per base domain, fixed at start. Kept
    /// apart from ACME's so that removing an ACME record falls back to it
    /// rather than to no certificate at all.
    fallback: HashMap<String, Arc<CertifiedKey>>,
    challenges: Option<dstack_acme::TlsAlpnResponder>,
}

/// Parses a PEM chain and key into what rustls serves.
pub fn certified_key(
    domain: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<CertifiedKey, CertError> {
    let bad = |reason: String| CertError::Pem {
        domain: domain.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("chain PEM: {e}")))?;
    if chain.is_empty() {
        return Err(bad("no certificate in the chain PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| bad("no private key in the key PEM".into()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad(format!("unusable private key: {e}")))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// Reads an operator's PEM chain and key files (`[proxy] cert_chain` and
/// `cert_key`) into what rustls serves.
pub fn certified_key_from_files(chain: &Path, key: &Path) -> Result<CertifiedKey, CertError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| CertError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let chain_pem = read(chain)?;
    let key_pem = zeroize::Zeroizing::new(read(key)?);
    certified_key(&chain.display().to_string(), &chain_pem, &key_pem)
}

impl CertStore {
    /// A store that also answers TLS-ALPN-01 challenges from `responder`.
    pub fn new(challenges: Option<dstack_acme::TlsAlpnResponder>) -> Self {
        Self {
            by_domain: ArcSwap::default(),
            fallback: HashMap::new(),
            challenges,
        }
    }

    /// Serves `key` for each of `domains` (and its wildcard) whenever no
    /// ACME certificate is set for it.
    pub fn with_fallback(mut self, domains: &[String], key: CertifiedKey) -> Self {
        let key = Arc::new(key);
        self.fallback = domains
            .iter()
            .map(|d| (d.to_ascii_lowercase(), key.clone()))
            .collect();
        self
    }

    /// Serves `key` for `domain` and `*.domain`, replacing what was there.
    pub fn set(&self, domain: &str, key: CertifiedKey) {
        let key = Arc::new(key);
        self.by_domain.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.insert(domain.to_ascii_lowercase(), key.clone());
            next
        });
    }

    /// Stops serving ACME's certificate for `domain` (the operator's, if
    /// any, is served again).
    pub fn remove(&self, domain: &str) {
        self.by_domain.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.remove(&domain.to_ascii_lowercase());
            next
        });
    }

    /// Whether a wildcard for `domain` is loaded (from ACME or the operator).
    pub fn has(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        self.by_domain.load().contains_key(&domain) || self.fallback.contains_key(&domain)
    }

    /// The certificate for a server name: the domain's own, or its parent's
    /// wildcard; ACME's first, then the operator's.
    pub fn lookup(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let sni = sni.to_ascii_lowercase();
        let find = |map: &HashMap<String, Arc<CertifiedKey>>| {
            map.get(&sni).cloned().or_else(|| {
                let (_, parent) = sni.split_once('.')?;
                map.get(parent).cloned()
            })
        };
        find(&self.by_domain.load()).or_else(|| find(&self.fallback))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name()?;
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == dstack_acme::ACME_TLS_ALPN));
        if acme {
            return self.challenges.as_ref()?.certified_key_for(sni);
        }
        self.lookup(sni)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn wildcards_cover_one_label_and_the_base() {
        let store = CertStore::new(None);
        let (chain, key) = self_signed("*.apps.test");
        store.set(
            "apps.test",
            certified_key("apps.test", &chain, &key).unwrap(),
        );
        assert!(store.lookup("abc.apps.test").is_some());
        assert!(store.lookup("ABC.Apps.Test").is_some());
        assert!(store.lookup("apps.test").is_some());
        assert!(store.lookup("a.b.apps.test").is_none());
        assert!(store.lookup("other.test").is_none());
        store.remove("apps.test");
        assert!(store.lookup("abc.apps.test").is_none());
    }

    /// Which certificate a lookup served, by its leaf.
    fn leaf(key: Option<Arc<CertifiedKey>>) -> Option<Vec<u8>> {
        key.map(|k| k.cert[0].to_vec())
    }

    #[test]
    fn the_operators_certificate_serves_until_acme_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, key) = self_signed("*.apps.test");
        let (chain_path, key_path) = (dir.path().join("chain.pem"), dir.path().join("key.pem"));
        std::fs::write(&chain_path, &chain).unwrap();
        std::fs::write(&key_path, &key).unwrap();
        let operator = certified_key_from_files(&chain_path, &key_path).unwrap();
        let operator_leaf = operator.cert[0].to_vec();
        let domains = vec!["apps.test".to_owned(), "Other.Test".to_owned()];
        let store = CertStore::new(None).with_fallback(&domains, operator);
        assert_eq!(
            leaf(store.lookup("abc.apps.test")),
            Some(operator_leaf.clone())
        );
        assert_eq!(
            leaf(store.lookup("abc.other.test")),
            Some(operator_leaf.clone())
        );
        assert!(store.has("apps.test"));
        assert!(store.lookup("abc.unknown.test").is_none());

        let (acme_chain, acme_key) = self_signed("*.apps.test");
        let acme = certified_key("apps.test", &acme_chain, &acme_key).unwrap();
        let acme_leaf = acme.cert[0].to_vec();
        store.set("apps.test", acme);
        assert_eq!(leaf(store.lookup("abc.apps.test")), Some(acme_leaf));
        assert_eq!(
            leaf(store.lookup("abc.other.test")),
            Some(operator_leaf.clone())
        );
        // The ACME record is deleted: back to the operator's, not to nothing.
        store.remove("apps.test");
        assert_eq!(leaf(store.lookup("abc.apps.test")), Some(operator_leaf));
    }

    #[test]
    fn unreadable_certificate_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = certified_key_from_files(&missing, &missing).unwrap_err();
        assert!(matches!(&err, CertError::Read { path, .. } if *path == missing));
        let (chain, _) = self_signed("*.apps.test");
        let chain_path = dir.path().join("chain.pem");
        std::fs::write(&chain_path, &chain).unwrap();
        // A chain where the key should be: named by the chain's file.
        let err = certified_key_from_files(&chain_path, &chain_path).unwrap_err();
        assert!(err.to_string().contains("no private key"), "{err}");
        assert!(err.to_string().contains("chain.pem"), "{err}");
    }

    #[test]
    fn bad_pem_is_named() {
        let (chain, _) = self_signed("x.test");
        let err = certified_key("x.test", &chain, "nothing").unwrap_err();
        assert!(err.to_string().contains("no private key"));
        let err = certified_key("x.test", "", "").unwrap_err();
        assert!(err.to_string().contains("no certificate"));
    }
}
