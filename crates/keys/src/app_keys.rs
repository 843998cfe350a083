//! An app's root keys: the P-256 app key (signs the app's certificates), the
//! disk encryption key, the secp256k1 key GetKey derives from, and in KMS
//! mode the env key and the KMS's signature over the k256 key.

use k256::ecdsa::SigningKey;
use zeroize::Zeroizing;

use crate::KeyError;
use crate::kdf::{derive_key, derive_p256_key_pair_from_bytes, p256_pkcs8_sha256};

/// The key material a KMS releases to an app (the key fields of upstream's
/// `AppKeyResponse`), borrowed from wherever it came from: a KMS's answer
/// in the guest, or [`crate::KmsAppKeys`] derived from root keys at hand.
/// `Debug` shows no secret.
#[derive(Clone, Copy)]
pub struct KmsReleasedKeys<'a> {
    /// The disk encryption key.
    pub disk_crypt_key: &'a [u8],
    /// The raw X25519 env-decryption secret (may be empty).
    pub env_crypt_key: &'a [u8],
    /// The app's secp256k1 key.
    pub k256_key: &'a [u8],
    /// The KMS root k256 key's signature over the app's k256 key.
    pub k256_signature: &'a [u8],
}

impl std::fmt::Debug for KmsReleasedKeys<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsReleasedKeys")
            .field("k256_signature", &hex_string(self.k256_signature))
            .finish_non_exhaustive()
    }
}

/// An app's keys. `Debug` shows public parts only; secrets are zeroized on drop.
pub struct AppKeys {
    pub(crate) app_key: p256::SecretKey,
    disk_crypt_key: Zeroizing<Vec<u8>>,
    pub(crate) k256_key: SigningKey,
    env_crypt_key: Zeroizing<Vec<u8>>,
    pub(crate) k256_signature: Vec<u8>,
}

impl AppKeys {
    /// Non-KMS app keys from a 32-byte seed, as upstream's
    /// `gen_app_keys_from_seed`: app key = P-256 from HKDF(seed, "app-key"),
    /// disk key = SHA-256(PKCS#8 of the P-256 key from HKDF(seed,
    /// "app-disk-key")), k256 key = HKDF(seed, "app-k256-key"); no env key
    /// and no KMS signature.
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, KeyError> {
        let app_key = derive_p256_key_pair_from_bytes(seed, &[b"app-key"])?;
        let disk_key = derive_p256_key_pair_from_bytes(seed, &[b"app-disk-key"])?;
        let k256 = derive_key(seed, &[b"app-k256-key"], 32)?;
        Ok(Self {
            app_key,
            disk_crypt_key: Zeroizing::new(p256_pkcs8_sha256(&disk_key)?.to_vec()),
            k256_key: k256_signing_key(&k256, "derived k256 key")?,
            env_crypt_key: Zeroizing::new(Vec::new()),
            k256_signature: Vec::new(),
        })
    }

    /// App keys as a KMS hands them out (UPSTREAM §4.3).
    pub fn from_parts(
        app_key: p256::SecretKey,
        disk_crypt_key: Vec<u8>,
        k256_key: &[u8],
        env_crypt_key: Vec<u8>,
        k256_signature: Vec<u8>,
    ) -> Result<Self, KeyError> {
        Ok(Self {
            app_key,
            disk_crypt_key: Zeroizing::new(disk_crypt_key),
            k256_key: k256_signing_key(k256_key, "k256_key")?,
            env_crypt_key: Zeroizing::new(env_crypt_key),
            k256_signature,
        })
    }

    /// App keys from what a KMS released. The P-256 app key (which signs
    /// the app's certificates until the KMS's SignCert is used) derives from
    /// the KMS-issued k256 key, HKDF(k256 key, "app-key"), so it too is the
    /// same for the app on every boot and host.
    pub fn from_kms(released: KmsReleasedKeys<'_>) -> Result<Self, KeyError> {
        let app_key = derive_p256_key_pair_from_bytes(released.k256_key, &[b"app-key"])?;
        Self::from_parts(
            app_key,
            released.disk_crypt_key.to_vec(),
            released.k256_key,
            released.env_crypt_key.to_vec(),
            released.k256_signature.to_vec(),
        )
    }

    /// The P-256 app key (non-KMS: signs the "App Root Cert").
    pub fn app_key(&self) -> &p256::SecretKey {
        &self.app_key
    }

    /// The disk encryption key (hex of it is the LUKS passphrase).
    pub fn disk_crypt_key(&self) -> &[u8] {
        &self.disk_crypt_key
    }

    /// The app's secp256k1 key bytes (the IKM of GetKey).
    pub fn k256_key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.k256_key.to_bytes().into())
    }

    /// The compressed SEC1 public key of the app's secp256k1 key.
    pub fn k256_public_key(&self) -> [u8; 33] {
        let point = self.k256_key.verifying_key().to_encoded_point(true);
        let mut out = [0u8; 33];
        out.copy_from_slice(point.as_bytes());
        out
    }

    /// The env decryption key (empty without a KMS).
    pub fn env_crypt_key(&self) -> &[u8] {
        &self.env_crypt_key
    }

    /// The KMS's signature over the k256 key (empty without a KMS).
    pub fn k256_signature(&self) -> &[u8] {
        &self.k256_signature
    }
}

impl std::fmt::Debug for AppKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppKeys")
            .field("k256_public_key", &hex_string(&self.k256_public_key()))
            .field("has_env_crypt_key", &!self.env_crypt_key.is_empty())
            .field("k256_signature_len", &self.k256_signature.len())
            .finish_non_exhaustive()
    }
}

pub(crate) fn k256_signing_key(bytes: &[u8], what: &'static str) -> Result<SigningKey, KeyError> {
    SigningKey::from_slice(bytes).map_err(|_| KeyError::InvalidPrivateKey { what })
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_keys_are_deterministic_and_distinct() {
        let a = AppKeys::from_seed(&[1; 32]).unwrap();
        let b = AppKeys::from_seed(&[1; 32]).unwrap();
        let c = AppKeys::from_seed(&[2; 32]).unwrap();
        assert_eq!(a.k256_key(), b.k256_key());
        assert_eq!(a.disk_crypt_key(), b.disk_crypt_key());
        assert_eq!(a.app_key().to_bytes(), b.app_key().to_bytes());
        assert_ne!(a.k256_key(), c.k256_key());
        assert_eq!(a.disk_crypt_key().len(), 32);
        assert!(a.env_crypt_key().is_empty());
        assert!(a.k256_signature().is_empty());
        // The k256 key is HKDF(seed, "app-k256-key") directly.
        let expected = derive_key(&[1; 32], &[b"app-k256-key"], 32).unwrap();
        assert_eq!(&a.k256_key()[..], &expected[..]);
    }

    #[test]
    fn debug_prints_no_secret() {
        let keys = AppKeys::from_seed(&[1; 32]).unwrap();
        let text = format!("{keys:?}");
        let secret = hex_string(&keys.k256_key()[..]);
        assert!(!text.contains(&secret), "{text}");
        assert!(!text.contains(&hex_string(keys.disk_crypt_key())), "{text}");
        assert!(text.contains(&hex_string(&keys.k256_public_key())));
    }

    #[test]
    fn kms_keys_keep_what_the_kms_released_and_derive_the_app_key() {
        let k256 = derive_key(&[7; 32], &[b"k"], 32).unwrap();
        let released = KmsReleasedKeys {
            disk_crypt_key: &[1; 32],
            env_crypt_key: &[2; 32],
            k256_key: &k256,
            k256_signature: &[3; 65],
        };
        let keys = AppKeys::from_kms(released).unwrap();
        assert_eq!(keys.disk_crypt_key(), &[1; 32]);
        assert_eq!(keys.env_crypt_key(), &[2; 32]);
        assert_eq!(&keys.k256_key()[..], &k256[..]);
        assert_eq!(keys.k256_signature(), &[3; 65]);
        let expected = derive_p256_key_pair_from_bytes(&k256, &[b"app-key"]).unwrap();
        assert_eq!(keys.app_key().to_bytes(), expected.to_bytes());
        assert!(!format!("{released:?}").contains(&hex_string(&k256)));
        let bad = KmsReleasedKeys {
            k256_key: &[0; 32],
            ..released
        };
        assert!(AppKeys::from_kms(bad).is_err());
    }

    /// The upstream simulator's k256 key and the app public key its Go SDK
    /// test (`client_web3_test.go`) expects.
    #[test]
    fn k256_public_key_matches_upstream_simulator() {
        let k256 = hex::decode("d6e88992cdeeee35fe70b5db61ab66cdb191fb9b6ec9313757ef162dd7214d5d")
            .unwrap();
        let app_key = p256::SecretKey::from_slice(&[3; 32]).unwrap();
        let keys = AppKeys::from_parts(app_key, vec![], &k256, vec![], vec![]).unwrap();
        assert_eq!(
            hex::encode(keys.k256_public_key()),
            "02818494263695e8839122dbd88e281d7380622999df4e60a14befa0f2d096fc7c"
        );
        assert!(
            AppKeys::from_parts(
                p256::SecretKey::from_slice(&[3; 32]).unwrap(),
                vec![],
                &[0; 32],
                vec![],
                vec![]
            )
            .is_err()
        );
    }
}
