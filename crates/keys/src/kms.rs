//! What a dstack KMS derives for an app from its root keys (UPSTREAM §4.3),
//! byte for byte as upstream's KMS does, so the same root keys give the same
//! app keys under either KMS:
//!
//! - disk key: `derive_dh_secret(root_ca_key, [app_id, instance_id, "app-disk-crypt-key"])`
//! - env key: `derive_dh_secret(root_ca_key, [app_id, "env-encrypt-key"])`, a raw X25519 secret
//! - k256 key: `derive_key(root_k256, [app_id, "app-key"], 32)`, with the root
//!   k256 key's recoverable signature over
//!   Keccak256(`"dstack-kms-issued:"` ‖ app_id ‖ compressed app k256 public key)
//! - app CA key: `derive_p256_key_pair(root_ca_key, [app_id, "app-ca"])`

use k256::ecdsa::SigningKey;
use sha3::{Digest, Keccak256};
use zeroize::Zeroizing;

use crate::KeyError;
use crate::app_keys::k256_signing_key;
use crate::kdf::{derive_dh_secret, derive_key, derive_p256_key_pair};

/// Signature prefix of an app k256 key issued by a KMS.
pub const KMS_ISSUED_PREFIX: &[u8] = b"dstack-kms-issued";
/// Signature prefix of an app's env-encryption public key.
pub const ENV_PUBKEY_PREFIX: &[u8] = b"dstack-env-encrypt-pubkey";

/// A KMS's long-lived secrets: the P-256 root CA key (disk, env and app CA
/// keys derive from it) and the secp256k1 root key (app k256 keys derive
/// from it and are signed by it). `Debug` shows public parts only.
pub struct KmsRootKeys {
    ca_key: p256::SecretKey,
    k256_key: SigningKey,
}

/// The keys a KMS releases to one app instance (upstream `AppKeyResponse`).
pub struct KmsAppKeys {
    /// LUKS passphrase source: the guest uses `hex(disk_crypt_key)`.
    pub disk_crypt_key: Zeroizing<[u8; 32]>,
    /// The app's raw X25519 env-decryption secret.
    pub env_crypt_key: Zeroizing<[u8; 32]>,
    /// The app's secp256k1 key (GetKey's IKM).
    pub k256_key: Zeroizing<[u8; 32]>,
    /// The root k256 key's 65-byte recoverable signature over the app key.
    pub k256_signature: Vec<u8>,
}

impl KmsAppKeys {
    /// The released keys, as [`crate::AppKeys::from_kms`] takes them.
    pub fn released(&self) -> crate::KmsReleasedKeys<'_> {
        crate::KmsReleasedKeys {
            disk_crypt_key: &self.disk_crypt_key[..],
            env_crypt_key: &self.env_crypt_key[..],
            k256_key: &self.k256_key[..],
            k256_signature: &self.k256_signature,
        }
    }
}

impl std::fmt::Debug for KmsAppKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsAppKeys")
            .field("k256_signature", &hex_lower(&self.k256_signature))
            .finish_non_exhaustive()
    }
}

/// An app's env-encryption public key with the KMS's signatures over it
/// (upstream `GetAppEnvEncryptPubKey`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvPublicKey {
    /// X25519 public key.
    pub public_key: [u8; 32],
    /// Legacy signature: Keccak256(prefix ":" app_id ‖ public_key).
    pub signature: Vec<u8>,
    /// Unix seconds covered by `signature_v1`.
    pub timestamp: u64,
    /// Keccak256(prefix ":" app_id ‖ timestamp (u64 BE) ‖ public_key).
    pub signature_v1: Vec<u8>,
}

impl KmsRootKeys {
    /// Root keys from their secret scalars.
    pub fn new(ca_key: p256::SecretKey, k256_key: &[u8]) -> Result<Self, KeyError> {
        Ok(Self {
            ca_key,
            k256_key: k256_signing_key(k256_key, "root k256 key")?,
        })
    }

    /// The P-256 root CA key.
    pub fn ca_key(&self) -> &p256::SecretKey {
        &self.ca_key
    }

    /// The root CA's SubjectPublicKeyInfo (DER): the KMS's identity, which
    /// a guest measures as `key-provider` `{"name":"kms","id":hex(this)}`
    /// and an app pins as `key_provider_id`. The same bytes as the public
    /// key of the KMS's root CA certificate.
    pub fn ca_spki(&self) -> Result<Vec<u8>, KeyError> {
        use p256::pkcs8::EncodePublicKey;
        self.ca_key
            .public_key()
            .to_public_key_der()
            .map(|der| der.into_vec())
            .map_err(|_| KeyError::Spki {
                what: "root CA public key",
            })
    }

    /// The root secp256k1 key bytes.
    pub fn k256_key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.k256_key.to_bytes().into())
    }

    /// The compressed SEC1 public key of the root k256 key (GetMeta's `k256_pubkey`).
    pub fn k256_public_key(&self) -> [u8; 33] {
        compressed(&self.k256_key)
    }

    /// The keys of instance `instance_id` of app `app_id` (instance_id may be
    /// empty for apps measured without one).
    pub fn app_keys(&self, app_id: &[u8], instance_id: &[u8]) -> Result<KmsAppKeys, KeyError> {
        let disk = derive_dh_secret(&self.ca_key, &[app_id, instance_id, b"app-disk-crypt-key"])?;
        let env = self.env_secret(app_id)?;
        let k256 = derive_key(&self.k256_key()[..], &[app_id, b"app-key"], 32)?;
        let app_k256 = k256_signing_key(&k256, "derived app k256 key")?;
        let k256_signature = self.sign(kms_digest(
            KMS_ISSUED_PREFIX,
            app_id,
            &[&compressed(&app_k256)],
        ))?;
        let mut k256_key = Zeroizing::new([0u8; 32]);
        k256_key.copy_from_slice(&k256);
        Ok(KmsAppKeys {
            disk_crypt_key: disk,
            env_crypt_key: env,
            k256_key,
            k256_signature,
        })
    }

    /// The app's env-encryption public key, signed (legacy and v1 at
    /// `timestamp`) in the layout `verify_env_public_key` checks (both
    /// build it with one function).
    pub fn env_public_key(&self, app_id: &[u8], timestamp: u64) -> Result<EnvPublicKey, KeyError> {
        let secret = x25519_dalek::StaticSecret::from(*self.env_secret(app_id)?);
        let public_key = x25519_dalek::PublicKey::from(&secret).to_bytes();
        Ok(EnvPublicKey {
            public_key,
            signature: self.sign(env_key_digest(app_id, None, &public_key))?,
            timestamp,
            signature_v1: self.sign(env_key_digest(app_id, Some(timestamp), &public_key))?,
        })
    }

    /// The P-256 key of the app's CA (signs the app's certificates in `SignCert`).
    pub fn app_ca_key(&self, app_id: &[u8]) -> Result<p256::SecretKey, KeyError> {
        derive_p256_key_pair(&self.ca_key, &[app_id, b"app-ca"])
    }

    fn env_secret(&self, app_id: &[u8]) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        derive_dh_secret(&self.ca_key, &[app_id, b"env-encrypt-key"])
    }

    /// The root k256 key's recoverable signature over `digest` (see
    /// [`kms_digest`]), as r ‖ s ‖ v (v = 0 or 1).
    fn sign(&self, digest: Keccak256) -> Result<Vec<u8>, KeyError> {
        let (signature, recid) = self
            .k256_key
            .sign_digest_recoverable(digest)
            .map_err(|_| KeyError::Signing)?;
        let mut out = signature.to_bytes().to_vec();
        out.push(recid.to_byte());
        Ok(out)
    }
}

impl std::fmt::Debug for KmsRootKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsRootKeys")
            .field("k256_public_key", &hex_lower(&self.k256_public_key()))
            .finish_non_exhaustive()
    }
}

/// Keccak256(prefix ‖ ":" ‖ app_id ‖ parts…): what the KMS root k256 key
/// signs (upstream `sign_message`), the one layout its signer and
/// verifiers share.
pub(crate) fn kms_digest(prefix: &[u8], app_id: &[u8], parts: &[&[u8]]) -> Keccak256 {
    let mut digest = Keccak256::new();
    digest.update(prefix);
    digest.update(b":");
    digest.update(app_id);
    for part in parts {
        digest.update(part);
    }
    digest
}

/// The digest behind an env public key's signatures: `signature_v1` covers
/// the timestamp (u64 big-endian) before the key, the legacy `signature`
/// has none.
pub(crate) fn env_key_digest(
    app_id: &[u8],
    timestamp: Option<u64>,
    public_key: &[u8],
) -> Keccak256 {
    match timestamp {
        Some(timestamp) => kms_digest(
            ENV_PUBKEY_PREFIX,
            app_id,
            &[&timestamp.to_be_bytes(), public_key],
        ),
        None => kms_digest(ENV_PUBKEY_PREFIX, app_id, &[public_key]),
    }
}

/// The secp256k1 key whose 65-byte recoverable signature (r ‖ s ‖ v) over
/// `digest` this is.
pub(crate) fn recover_key(
    signature: &[u8],
    digest: Keccak256,
) -> Result<k256::ecdsa::VerifyingKey, KeyError> {
    let invalid = || KeyError::InvalidSignature {
        algorithm: "secp256k1",
    };
    let (sig, v) = match signature {
        [sig @ .., v] if sig.len() == 64 => (sig, *v),
        _ => return Err(invalid()),
    };
    let sig = k256::ecdsa::Signature::from_slice(sig).map_err(|_| invalid())?;
    let recid = k256::ecdsa::RecoveryId::from_byte(v).ok_or_else(invalid)?;
    k256::ecdsa::VerifyingKey::recover_from_digest(digest, &sig, recid).map_err(|_| invalid())
}

/// Recovers the compressed secp256k1 public key that made `signature` (r ‖ s
/// ‖ v) over Keccak256(prefix ‖ ":" ‖ app_id ‖ parts…): how a client checks
/// that a KMS signed an env public key or an app key.
pub fn recover_signer(
    signature: &[u8],
    prefix: &[u8],
    app_id: &[u8],
    parts: &[&[u8]],
) -> Result<[u8; 33], KeyError> {
    let key = recover_key(signature, kms_digest(prefix, app_id, parts))?;
    Ok(compressed_point(&key))
}

pub(crate) fn compressed_point(key: &k256::ecdsa::VerifyingKey) -> [u8; 33] {
    let point = key.to_encoded_point(true);
    let mut out = [0u8; 33];
    out.copy_from_slice(point.as_bytes());
    out
}

fn compressed(key: &SigningKey) -> [u8; 33] {
    compressed_point(key.verifying_key())
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use hkdf::Hkdf;
    use p256::pkcs8::EncodePrivateKey;
    use sha2::Sha256;

    use super::*;

    const APP_ID: [u8; 20] = [0x11; 20];
    const INSTANCE_ID: [u8; 20] = [0x22; 20];

    fn root() -> KmsRootKeys {
        let ca = p256::SecretKey::from_slice(&[0x5a; 32]).unwrap();
        KmsRootKeys::new(ca, &[0x6b; 32]).unwrap()
    }

    /// HKDF-SHA256 with salt "RATLS" over the concatenated info, written out
    /// again here so the vector does not depend on the code under test.
    fn hkdf(ikm: &[u8], info: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        Hkdf::<Sha256>::new(Some(b"RATLS"), ikm)
            .expand(info, &mut out)
            .unwrap();
        out
    }

    fn dh_secret(root: &[u8; 32], info: &[u8]) -> [u8; 32] {
        let derived = p256::SecretKey::from_slice(&hkdf(root, info)).unwrap();
        Sha256::digest(derived.to_pkcs8_der().unwrap().as_bytes()).into()
    }

    /// The documented derivation (UPSTREAM §4.3), recomputed step by step.
    #[test]
    fn app_keys_follow_upstream_derivation() {
        let keys = root().app_keys(&APP_ID, &INSTANCE_ID).unwrap();
        let disk_info = [&APP_ID[..], &INSTANCE_ID[..], b"app-disk-crypt-key"].concat();
        assert_eq!(*keys.disk_crypt_key, dh_secret(&[0x5a; 32], &disk_info));
        let env_info = [&APP_ID[..], b"env-encrypt-key"].concat();
        assert_eq!(*keys.env_crypt_key, dh_secret(&[0x5a; 32], &env_info));
        let k256_info = [&APP_ID[..], b"app-key"].concat();
        assert_eq!(*keys.k256_key, hkdf(&[0x6b; 32], &k256_info));

        // The signature recovers to the root k256 key over the app public key.
        let app_pub = compressed(&SigningKey::from_slice(&keys.k256_key[..]).unwrap());
        assert_eq!(keys.k256_signature.len(), 65);
        let signer = recover_signer(
            &keys.k256_signature,
            KMS_ISSUED_PREFIX,
            &APP_ID,
            &[&app_pub],
        )
        .unwrap();
        assert_eq!(signer, root().k256_public_key());
    }

    /// Fixed output for fixed root keys, computed outside Rust (Python's
    /// `cryptography`: HKDF-SHA256 salt "RATLS", P-256 PKCS#8 DER, SHA-256)
    /// from the documented derivation.
    #[test]
    fn app_keys_vector() {
        let keys = root().app_keys(&APP_ID, &INSTANCE_ID).unwrap();
        assert_eq!(
            hex_lower(&keys.disk_crypt_key[..]),
            "2ad173f091832eaf624dc9ba033c81d98e9e5b96921a132c950d13c317b2a900"
        );
        assert_eq!(
            hex_lower(&keys.env_crypt_key[..]),
            "c14a1dd200b1c86ba9b3f288f1c1e7fa40e24c3670c0b5766bf628dcf8373590"
        );
        assert_eq!(
            hex_lower(&keys.k256_key[..]),
            "3095e0d0135227822c9084c79751d9a196a77946d7d7e995f8f324917dbbb024"
        );
        let other_instance = root().app_keys(&APP_ID, &[0x33; 20]).unwrap();
        assert_ne!(*keys.disk_crypt_key, *other_instance.disk_crypt_key);
        assert_eq!(*keys.env_crypt_key, *other_instance.env_crypt_key);
        assert_eq!(*keys.k256_key, *other_instance.k256_key);
        let other_app = root().app_keys(&[0x12; 20], &INSTANCE_ID).unwrap();
        assert_ne!(*keys.k256_key, *other_app.k256_key);
        assert_ne!(*keys.env_crypt_key, *other_app.env_crypt_key);
    }

    #[test]
    fn env_public_key_signatures_recover_to_the_root() {
        let root = root();
        let env = root.env_public_key(&APP_ID, 1_700_000_000).unwrap();
        let secret = root.app_keys(&APP_ID, &[]).unwrap().env_crypt_key;
        let expected = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*secret));
        assert_eq!(env.public_key, expected.to_bytes());
        let legacy = recover_signer(
            &env.signature,
            ENV_PUBKEY_PREFIX,
            &APP_ID,
            &[&env.public_key],
        )
        .unwrap();
        assert_eq!(legacy, root.k256_public_key());
        let v1 = recover_signer(
            &env.signature_v1,
            ENV_PUBKEY_PREFIX,
            &APP_ID,
            &[&1_700_000_000u64.to_be_bytes(), &env.public_key],
        )
        .unwrap();
        assert_eq!(v1, root.k256_public_key());
        // Another timestamp does not recover to the root.
        let wrong = recover_signer(
            &env.signature_v1,
            ENV_PUBKEY_PREFIX,
            &APP_ID,
            &[&1_700_000_001u64.to_be_bytes(), &env.public_key],
        );
        assert_ne!(wrong.ok(), Some(root.k256_public_key()));
        assert!(recover_signer(&[0; 10], ENV_PUBKEY_PREFIX, &APP_ID, &[]).is_err());
    }

    /// Upstream's simulator fixture (`sdk/simulator`): the KMS CA key in its
    /// `appkeys.json` and the `key-provider` id its attestation measures.
    #[test]
    fn ca_spki_is_the_id_upstream_measures() {
        let ca = p256::SecretKey::from_slice(
            &hex::decode("d4f60214a61f0e651fbf97e4b2da696ac7f898f1aa9f3d1f1282c49c6c7c0a72")
                .unwrap(),
        )
        .unwrap();
        let root = KmsRootKeys::new(ca, &[0x6b; 32]).unwrap();
        assert_eq!(
            hex_lower(&root.ca_spki().unwrap()),
            concat!(
                "3059301306072a8648ce3d020106082a8648ce3d0301070342000419b2457dd9b8aa",
                "6446d980f136fff7812ecd6c77740eeb0e28b10d56c0c00028a5b6e59dcea307d583",
                "bd1f70769e9c116df2bcfb1758a95d8613e7de1c8482c0"
            )
        );
    }

    /// What an app gets through the guest API in KMS mode: GetKey's
    /// `signature_chain[1]` is the KMS's signature, which recovers to the
    /// root k256 key over the app's k256 public key.
    #[test]
    fn released_keys_give_a_chain_that_recovers_to_the_root() {
        let root = root();
        let released = root.app_keys(&APP_ID, &INSTANCE_ID).unwrap();
        let app = crate::AppKeys::from_kms(released.released()).unwrap();
        assert_eq!(&app.k256_key()[..], &released.k256_key[..]);
        assert_eq!(app.disk_crypt_key(), &released.disk_crypt_key[..]);
        let derived = app
            .get_key("wallet", "eth", crate::KeyAlgorithm::Secp256k1)
            .unwrap();
        assert_eq!(derived.signature_chain[1], released.k256_signature);
        let signer = recover_signer(
            &derived.signature_chain[1],
            KMS_ISSUED_PREFIX,
            &APP_ID,
            &[&app.k256_public_key()],
        )
        .unwrap();
        assert_eq!(signer, root.k256_public_key());
    }

    #[test]
    fn app_ca_key_is_derived_from_the_root_ca_key() {
        let ca = root().app_ca_key(&APP_ID).unwrap();
        let info = [&APP_ID[..], b"app-ca"].concat();
        assert_eq!(ca.to_bytes()[..], hkdf(&[0x5a; 32], &info)[..]);
    }

    #[test]
    fn debug_shows_no_secret() {
        let root = root();
        let text = format!("{root:?} {:?}", root.app_keys(&APP_ID, &[]).unwrap());
        assert!(!text.contains(&hex_lower(&[0x6b; 32])), "{text}");
        assert!(!text.contains(&hex_lower(&[0x5a; 32])), "{text}");
    }
}
