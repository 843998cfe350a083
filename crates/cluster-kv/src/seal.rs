//! Sealing values for a store whose host is not trusted: AES-256-GCM with a
//! key every replica derives from the app's shared secret.
//!
//! Sealed layout: `version (1) || nonce (12) || ciphertext || tag (16)`.
//! The AAD binds the format version and the full etcd key (namespace
//! included), so the host can neither edit a value nor move it to another
//! key or namespace. It can still delete a value, or put back an older
//! sealed value of the same key (a rollback); see the crate docs.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

/// The only seal format so far.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Domain separation for the AAD, so a sealed value can never be confused
/// with another protocol's AES-GCM output under the same key.
const AAD_LABEL: &[u8] = b"dstack-cluster-kv/value\0";
/// HKDF salt: fixed, so every replica derives the same key from the same
/// secret without coordinating.
const HKDF_SALT: &[u8] = b"dstack-cluster-kv/seal-key/v1";

/// The 32-byte key that seals values; zeroized on drop, never printed.
#[derive(Clone)]
pub struct SealKey(Zeroizing<[u8; 32]>);

impl SealKey {
    /// Derives the seal key from a shared secret (e.g. the app key every
    /// replica gets from the KMS) with HKDF-SHA256; `context` separates
    /// uses, e.g. `"dstack-gateway/cluster-kv"`.
    pub fn derive(secret: &[u8], context: &str) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(HKDF_SALT), secret)
            .expand(context.as_bytes(), key.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Self(key)
    }

    /// Uses 32 bytes as the key as they are.
    pub fn from_bytes(key: [u8; 32]) -> Self {
        Self(Zeroizing::new(key))
    }
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

/// Seals and opens values under one key.
pub(crate) struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    pub(crate) fn new(key: &SealKey) -> Self {
        Self {
            cipher: Aes256Gcm::new(key.0.as_ref().into()),
        }
    }

    /// Seals `plaintext` for the full etcd key `etcd_key`, with a fresh
    /// random nonce: two seals of the same value differ, which also lets a
    /// writer recognise its own write after an ambiguous failure.
    pub(crate) fn seal(&self, etcd_key: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = aad(etcd_key);
        let ciphertext = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("AES-GCM encrypts any message under the size limit");
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// Opens a value stored under `etcd_key`; `None` when it is not a value
    /// this key sealed for exactly that etcd key.
    pub(crate) fn open(&self, etcd_key: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != VERSION {
            return None;
        }
        let (nonce, ciphertext) = sealed[1..].split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        let aad = aad(etcd_key);
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

fn aad(etcd_key: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + 1 + etcd_key.len());
    aad.extend_from_slice(AAD_LABEL);
    aad.push(VERSION);
    aad.extend_from_slice(etcd_key);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_only_under_the_same_key_and_etcd_key() {
        let sealer = Sealer::new(&SealKey::derive(b"app key", "ctx"));
        let sealed = sealer.seal(b"/ns/kv/a", b"secret");
        assert_eq!(
            sealer.open(b"/ns/kv/a", &sealed).unwrap().as_slice(),
            b"secret"
        );
        assert!(sealer.open(b"/ns/kv/b", &sealed).is_none());
        assert!(sealer.open(b"/other/kv/a", &sealed).is_none());

        let other = Sealer::new(&SealKey::derive(b"app key", "other ctx"));
        assert!(other.open(b"/ns/kv/a", &sealed).is_none());

        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 1;
            assert!(sealer.open(b"/ns/kv/a", &flipped).is_none(), "byte {i}");
        }
        assert!(sealer.open(b"/ns/kv/a", &sealed[..20]).is_none());
        assert!(sealer.open(b"/ns/kv/a", b"").is_none());
    }

    #[test]
    fn nonces_are_fresh_and_the_plaintext_is_hidden() {
        let sealer = Sealer::new(&SealKey::from_bytes([7; 32]));
        let a = sealer.seal(b"k", b"same value");
        let b = sealer.seal(b"k", b"same value");
        assert_ne!(a, b);
        assert!(!a.windows(10).any(|w| w == b"same value"));
        assert_eq!(a.len(), 1 + NONCE_LEN + 10 + TAG_LEN);
    }

    #[test]
    fn derivation_is_deterministic_and_debug_is_redacted() {
        let a = SealKey::derive(b"s", "c");
        assert_eq!(*a.0, *SealKey::derive(b"s", "c").0);
        assert_ne!(*a.0, *SealKey::derive(b"s2", "c").0);
        assert_eq!(format!("{a:?}"), "SealKey(<redacted>)");
    }
}
