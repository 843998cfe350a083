//! Checking that an app's env-encryption public key (upstream
//! `GetAppEnvEncryptPubKey`) comes from a trusted KMS, before anything is
//! encrypted to it.
//!
//! The KMS's root secp256k1 key signs, recoverably (r ‖ s ‖ v, v = 0 or 1):
//! - `signature_v1`: Keccak256(`"dstack-env-encrypt-pubkey"` ‖ `":"` ‖
//!   app_id ‖ timestamp (u64 big-endian) ‖ public_key);
//! - `signature` (legacy): the same without the timestamp. Any response
//!   ever served for the app replays forever, so it is checked only when
//!   asked for, and only when the KMS gave no `signature_v1`.
//!
//! The signer ([`crate::KmsRootKeys::env_public_key`]) and this verifier
//! build the message with the same function (`kms::env_key_digest`).
//!
//! Upstream's clients, for comparison: the SDKs
//! (`verify_env_encrypt_public_key` in Python, `verifyEnvEncryptPublicKey`
//! in JS and Go) refuse a `signature_v1` older than 300 s (by default) or
//! more than 60 s ahead of the local clock, return the recovered signer's
//! compressed public key, and leave the trust decision to the caller;
//! their legacy variants are separate, deprecated functions. `vmm-cli.py`
//! checks no timestamp at all and falls back to the legacy signature when
//! `signature_v1` does not verify; its whitelist of trusted signers
//! (`~/.dstack-vmm/kms-whitelist.json`) holds compressed public keys.

use std::fmt;
use std::str::FromStr;

use k256::ecdsa::VerifyingKey;
use sha3::{Digest, Keccak256};

use crate::kms::{EnvPublicKey, compressed_point, env_key_digest, recover_key};

/// The maximum age of a `signature_v1` that upstream's SDKs accept by default.
pub const DEFAULT_MAX_AGE_SECS: u64 = 300;
/// How far ahead of the local clock a `signature_v1` timestamp may be (as
/// upstream's SDKs allow).
pub const MAX_FUTURE_SKEW_SECS: u64 = 60;

/// A KMS's answer to `GetAppEnvEncryptPubKey`, borrowed from wherever it
/// was decoded (the wire type, or [`EnvPublicKey`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedEnvKey<'a> {
    /// The app's X25519 env public key (32 bytes when well formed).
    pub public_key: &'a [u8],
    /// The legacy signature (no timestamp); may be empty.
    pub signature: &'a [u8],
    /// Unix seconds covered by `signature_v1`.
    pub timestamp: u64,
    /// The timestamped signature; empty from a KMS that predates it.
    pub signature_v1: &'a [u8],
}

impl EnvPublicKey {
    /// This key and its signatures, for [`verify_env_public_key`].
    pub fn signed(&self) -> SignedEnvKey<'_> {
        SignedEnvKey {
            public_key: &self.public_key,
            signature: &self.signature,
            timestamp: self.timestamp,
            signature_v1: &self.signature_v1,
        }
    }
}

/// Who must have signed an env public key: the KMS's root secp256k1 key,
/// named either by its Ethereum address or by the key itself (what a KMS's
/// `GetMeta` returns as `k256_pubkey`, and what upstream's `vmm-cli.py kms
/// add` whitelists).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signer(SignerRepr);

#[derive(Clone, Copy, PartialEq, Eq)]
enum SignerRepr {
    Address([u8; 20]),
    PublicKey {
        compressed: [u8; 33],
        address: [u8; 20],
    },
}

impl Signer {
    /// A signer named by its Ethereum address: Keccak256(uncompressed
    /// public key without its 0x04 tag)[12..].
    pub fn from_address(address: [u8; 20]) -> Self {
        Self(SignerRepr::Address(address))
    }

    /// A signer named by its secp256k1 public key (SEC1, 33-byte compressed
    /// or 65-byte uncompressed).
    pub fn from_public_key(sec1: &[u8]) -> Result<Self, EnvKeyError> {
        let invalid = || EnvKeyError::InvalidSigner { len: sec1.len() };
        if !matches!(sec1.len(), 33 | 65) {
            return Err(invalid());
        }
        let key = VerifyingKey::from_sec1_bytes(sec1).map_err(|_| invalid())?;
        Ok(Self(SignerRepr::PublicKey {
            compressed: compressed_point(&key),
            address: ethereum_address(&key),
        }))
    }

    /// A signer named by 20 bytes (an address) or 33/65 bytes (a public key).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvKeyError> {
        match <[u8; 20]>::try_from(bytes) {
            Ok(address) => Ok(Self::from_address(address)),
            Err(_) => Self::from_public_key(bytes),
        }
    }

    /// This signer's Ethereum address.
    pub fn address(&self) -> [u8; 20] {
        match self.0 {
            SignerRepr::Address(address) | SignerRepr::PublicKey { address, .. } => address,
        }
    }

    /// This signer's compressed public key, when it was named by its key.
    pub fn public_key(&self) -> Option<[u8; 33]> {
        match self.0 {
            SignerRepr::Address(_) => None,
            SignerRepr::PublicKey { compressed, .. } => Some(compressed),
        }
    }

    fn is(&self, key: &VerifyingKey) -> bool {
        match self.0 {
            SignerRepr::Address(address) => address == ethereum_address(key),
            SignerRepr::PublicKey { compressed, .. } => compressed == compressed_point(key),
        }
    }
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            SignerRepr::Address(address) => write!(f, "address 0x{}", hex::encode(address)),
            SignerRepr::PublicKey { compressed, .. } => {
                write!(f, "public key 0x{}", hex::encode(compressed))
            }
        }
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer({self})")
    }
}

/// Hex, with or without `0x`: 20 bytes name an address, 33 or 65 a public key.
impl FromStr for Signer {
    type Err = EnvKeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let digits = text.strip_prefix("0x").unwrap_or(text);
        let bytes = hex::decode(digits).map_err(|_| EnvKeyError::SignerNotHex)?;
        Self::from_bytes(&bytes)
    }
}

/// The Ethereum address of a secp256k1 key.
pub fn ethereum_address(key: &VerifyingKey) -> [u8; 20] {
    let point = key.to_encoded_point(false);
    let hash = Keccak256::digest(&point.as_bytes()[1..]);
    let mut address = [0u8; 20];
    address.copy_from_slice(&hash[12..]);
    address
}

/// Why an env public key was refused. Nothing here is secret: the messages
/// name keys, signers and times.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvKeyError {
    /// The response's public key is not a 32-byte X25519 key.
    #[error("the KMS's env public key is {len} bytes, not a 32-byte X25519 key")]
    PublicKeyLength {
        /// Its length.
        len: usize,
    },
    /// The KMS gave no `signature_v1`.
    #[error(
        "the KMS gave no signature_v1 (the timestamped signature over the env public key): \
         a KMS older than upstream's v1 signatures, or a stripped response; its legacy \
         signature can be replayed forever, so it is checked only when legacy signatures \
         are explicitly allowed"
    )]
    NoSignatureV1,
    /// The legacy check was asked for, but the KMS gave a `signature_v1`
    /// (checking the legacy signature instead would skip its freshness).
    #[error(
        "the KMS gave a signature_v1: check it (with its timestamp) rather than the legacy \
         signature"
    )]
    HasSignatureV1,
    /// The KMS gave neither signature.
    #[error("the KMS gave no signature over the env public key")]
    NoSignature,
    /// A signature is not 65 recoverable bytes, or recovers no key.
    #[error("the KMS's {which} is not a valid 65-byte recoverable secp256k1 signature")]
    BadSignature {
        /// `signature_v1` or `signature`.
        which: &'static str,
    },
    /// The signature is valid but was made by another key.
    #[error(
        "the env public key was signed by address 0x{} (public key 0x{}), not by the trusted \
         KMS signer ({trusted}): another KMS, or a forged response",
        hex::encode(recovered_address),
        hex::encode(recovered_public_key)
    )]
    UntrustedSigner {
        /// The Ethereum address of the key that signed.
        recovered_address: [u8; 20],
        /// That key, compressed.
        recovered_public_key: [u8; 33],
        /// The signer that was expected.
        trusted: Signer,
    },
    /// `signature_v1`'s timestamp is older than allowed.
    #[error(
        "the KMS signed this env public key at Unix time {timestamp}, {}s before now ({now}), \
         more than the {max_age_secs}s allowed: a replayed response, or a wrong clock here \
         or at the KMS",
        now - timestamp
    )]
    Stale {
        /// The signed timestamp.
        timestamp: u64,
        /// The local time it was judged at.
        now: u64,
        /// The allowed age.
        max_age_secs: u64,
    },
    /// `signature_v1`'s timestamp is more than [`MAX_FUTURE_SKEW_SECS`] ahead.
    #[error(
        "the KMS signed this env public key at Unix time {timestamp}, {}s after now ({now}); \
         more than {MAX_FUTURE_SKEW_SECS}s ahead is refused: check the clocks here and at the KMS",
        timestamp - now
    )]
    FromTheFuture {
        /// The signed timestamp.
        timestamp: u64,
        /// The local time it was judged at.
        now: u64,
    },
    /// A trusted signer given as bytes is neither an address nor a key.
    #[error(
        "a KMS signer is a 20-byte Ethereum address or a 33/65-byte secp256k1 public key; \
         got {len} bytes that are neither"
    )]
    InvalidSigner {
        /// The length given.
        len: usize,
    },
    /// A trusted signer given as text is not hex.
    #[error("a KMS signer must be hex (an address or a public key, 0x optional)")]
    SignerNotHex,
}

/// The app's X25519 env public key from `response`, once its
/// `signature_v1` is shown to be `trusted`'s signature over it, `app_id`
/// and its timestamp, and that timestamp is at most `max_age_secs` before
/// `now_unix` and at most [`MAX_FUTURE_SKEW_SECS`] after it (the same
/// window as upstream's SDKs; [`DEFAULT_MAX_AGE_SECS`] is their default).
///
/// A response without `signature_v1` is refused ([`EnvKeyError::NoSignatureV1`]);
/// only then may a caller that explicitly allows it fall back to
/// [`verify_env_public_key_legacy`]. A `signature_v1` that fails is never
/// a reason to try the legacy signature.
pub fn verify_env_public_key(
    response: &SignedEnvKey<'_>,
    app_id: &[u8; 20],
    trusted: &Signer,
    now_unix: u64,
    max_age_secs: u64,
) -> Result<[u8; 32], EnvKeyError> {
    let public_key = public_key(response)?;
    if response.signature_v1.is_empty() {
        return Err(EnvKeyError::NoSignatureV1);
    }
    let timestamp = response.timestamp;
    if timestamp > now_unix {
        if timestamp - now_unix > MAX_FUTURE_SKEW_SECS {
            return Err(EnvKeyError::FromTheFuture {
                timestamp,
                now: now_unix,
            });
        }
    } else if now_unix - timestamp > max_age_secs {
        return Err(EnvKeyError::Stale {
            timestamp,
            now: now_unix,
            max_age_secs,
        });
    }
    let digest = env_key_digest(app_id, Some(timestamp), &public_key);
    check_signer(response.signature_v1, "signature_v1", digest, trusted)?;
    Ok(public_key)
}

/// The app's env public key from a KMS that gives no `signature_v1`,
/// checked by its legacy signature alone: no freshness, so a response
/// captured at any time in the past passes. Refuses a response that has a
/// `signature_v1` ([`EnvKeyError::HasSignatureV1`]): that one must be
/// checked by [`verify_env_public_key`]. Upstream's SDKs keep this as a
/// separate, deprecated function; call it only when the user asked for it.
pub fn verify_env_public_key_legacy(
    response: &SignedEnvKey<'_>,
    app_id: &[u8; 20],
    trusted: &Signer,
) -> Result<[u8; 32], EnvKeyError> {
    let public_key = public_key(response)?;
    if !response.signature_v1.is_empty() {
        return Err(EnvKeyError::HasSignatureV1);
    }
    if response.signature.is_empty() {
        return Err(EnvKeyError::NoSignature);
    }
    let digest = env_key_digest(app_id, None, &public_key);
    check_signer(response.signature, "signature", digest, trusted)?;
    Ok(public_key)
}

fn public_key(response: &SignedEnvKey<'_>) -> Result<[u8; 32], EnvKeyError> {
    <[u8; 32]>::try_from(response.public_key).map_err(|_| EnvKeyError::PublicKeyLength {
        len: response.public_key.len(),
    })
}

fn check_signer(
    signature: &[u8],
    which: &'static str,
    digest: Keccak256,
    trusted: &Signer,
) -> Result<(), EnvKeyError> {
    let key = recover_key(signature, digest).map_err(|_| EnvKeyError::BadSignature { which })?;
    if trusted.is(&key) {
        Ok(())
    } else {
        Err(EnvKeyError::UntrustedSigner {
            recovered_address: ethereum_address(&key),
            recovered_public_key: compressed_point(&key),
            trusted: *trusted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KmsRootKeys;

    const APP_ID: [u8; 20] = [0x11; 20];
    const NOW: u64 = 1_700_000_000;

    fn root(k256: u8) -> KmsRootKeys {
        let ca = p256::SecretKey::from_slice(&[0x5a; 32]).unwrap();
        KmsRootKeys::new(ca, &[k256; 32]).unwrap()
    }

    fn signer(root: &KmsRootKeys) -> Signer {
        Signer::from_bytes(&root.k256_public_key()).unwrap()
    }

    #[test]
    fn accepts_our_kms_signature_by_key_or_address() {
        let root = root(0x6b);
        let env = root.env_public_key(&APP_ID, NOW).unwrap();
        let by_key = signer(&root);
        let by_address = Signer::from_address(by_key.address());
        for trusted in [by_key, by_address] {
            assert_eq!(
                verify_env_public_key(&env.signed(), &APP_ID, &trusted, NOW, 300),
                Ok(env.public_key)
            );
        }
        // The uncompressed form names the same signer.
        let uncompressed = VerifyingKey::from_sec1_bytes(&root.k256_public_key())
            .unwrap()
            .to_encoded_point(false);
        assert_eq!(Signer::from_bytes(uncompressed.as_bytes()).unwrap(), by_key);
    }

    /// The address is the usual Ethereum one: the well-known key 1 ↦ 0x7e5f…bdf.
    #[test]
    fn address_matches_ethereum() {
        let mut one = [0u8; 32];
        one[31] = 1;
        let key = k256::ecdsa::SigningKey::from_slice(&one).unwrap();
        assert_eq!(
            hex::encode(ethereum_address(key.verifying_key())),
            "7e5f4552091a69125d5dfcb7b8c2659029395bdf"
        );
        let signer: Signer = "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"
            .parse()
            .unwrap();
        assert_eq!(
            signer,
            Signer::from_address(ethereum_address(key.verifying_key()))
        );
    }

    #[test]
    fn refuses_another_signer_and_names_it() {
        let env = root(0x6b).env_public_key(&APP_ID, NOW).unwrap();
        let other = root(0x6c);
        let err =
            verify_env_public_key(&env.signed(), &APP_ID, &signer(&other), NOW, 300).unwrap_err();
        let signer_key = root(0x6b).k256_public_key();
        let EnvKeyError::UntrustedSigner {
            recovered_address,
            recovered_public_key,
            ..
        } = err
        else {
            panic!("{err:?}");
        };
        assert_eq!(recovered_public_key, signer_key);
        assert_eq!(
            recovered_address,
            Signer::from_bytes(&signer_key).unwrap().address()
        );
        assert!(err.to_string().contains(&hex::encode(recovered_address)));
    }

    #[test]
    fn refuses_a_signature_over_other_bytes() {
        let root = root(0x6b);
        let trusted = signer(&root);
        let env = root.env_public_key(&APP_ID, NOW).unwrap();
        // Another app id, another key, another timestamp: each recovers some
        // other key (or none), never the KMS's.
        let other_app = [0x12; 20];
        let mut other_key = env.clone();
        other_key.public_key[0] ^= 1;
        let mut other_time = env.clone();
        other_time.timestamp += 1;
        for (response, app) in [
            (&env, &other_app),
            (&other_key, &APP_ID),
            (&other_time, &APP_ID),
        ] {
            let err =
                verify_env_public_key(&response.signed(), app, &trusted, NOW, 300).unwrap_err();
            assert!(
                matches!(
                    err,
                    EnvKeyError::UntrustedSigner { .. } | EnvKeyError::BadSignature { .. }
                ),
                "{err:?}"
            );
        }
        // The legacy signature is not a v1 signature.
        let mut swapped = env.clone();
        swapped.signature_v1 = env.signature.clone();
        assert!(verify_env_public_key(&swapped.signed(), &APP_ID, &trusted, NOW, 300).is_err());
        let mut short = env.clone();
        short.signature_v1.pop();
        assert_eq!(
            verify_env_public_key(&short.signed(), &APP_ID, &trusted, NOW, 300),
            Err(EnvKeyError::BadSignature {
                which: "signature_v1"
            })
        );
    }

    #[test]
    fn timestamp_window_boundaries() {
        let root = root(0x6b);
        let trusted = signer(&root);
        let env = root.env_public_key(&APP_ID, NOW).unwrap();
        let check = |now| verify_env_public_key(&env.signed(), &APP_ID, &trusted, now, 300);
        assert!(check(NOW + 300).is_ok());
        assert_eq!(
            check(NOW + 301),
            Err(EnvKeyError::Stale {
                timestamp: NOW,
                now: NOW + 301,
                max_age_secs: 300
            })
        );
        assert!(check(NOW - 60).is_ok());
        assert_eq!(
            check(NOW - 61),
            Err(EnvKeyError::FromTheFuture {
                timestamp: NOW,
                now: NOW - 61
            })
        );
        assert!(verify_env_public_key(&env.signed(), &APP_ID, &trusted, NOW + 3600, 3600).is_ok());
        assert!(check(NOW + 301).unwrap_err().to_string().contains("301s"));
    }

    #[test]
    fn legacy_only_when_there_is_no_v1() {
        let root = root(0x6b);
        let trusted = signer(&root);
        let env = root.env_public_key(&APP_ID, NOW).unwrap();
        assert_eq!(
            verify_env_public_key_legacy(&env.signed(), &APP_ID, &trusted),
            Err(EnvKeyError::HasSignatureV1)
        );
        let mut old_kms = env.clone();
        old_kms.signature_v1.clear();
        old_kms.timestamp = 0;
        assert_eq!(
            verify_env_public_key(&old_kms.signed(), &APP_ID, &trusted, NOW, 300),
            Err(EnvKeyError::NoSignatureV1)
        );
        // No freshness: a legacy signature passes at any time.
        assert_eq!(
            verify_env_public_key_legacy(&old_kms.signed(), &APP_ID, &trusted),
            Ok(env.public_key)
        );
        let other = signer(&self::root(0x6c));
        assert!(matches!(
            verify_env_public_key_legacy(&old_kms.signed(), &APP_ID, &other),
            Err(EnvKeyError::UntrustedSigner { .. })
        ));
        old_kms.signature.clear();
        assert_eq!(
            verify_env_public_key_legacy(&old_kms.signed(), &APP_ID, &trusted),
            Err(EnvKeyError::NoSignature)
        );
    }

    /// A signature from upstream's KMS: the example in upstream's
    /// `vmm-cli.py` (`verify_signature` docstring), a legacy signature for
    /// the all-zero app id. Ours recovers the signer it names.
    #[test]
    fn accepts_upstreams_legacy_vector() {
        let public_key =
            hex::decode("e33a1832c6562067ff8f844a61e51ad051f1180b66ec2551fb0251735f3ee90a")
                .unwrap();
        let signature = hex::decode(concat!(
            "8542c49081fbf4e03f62034f13fbf70630bdf256a53032e38465a27c36fd6bed",
            "7a5e7111652004aef37f7fd92fbfc1285212c4ae6a6154203a48f5e16cad2cef00"
        ))
        .unwrap();
        let response = SignedEnvKey {
            public_key: &public_key,
            signature: &signature,
            timestamp: 0,
            signature_v1: &[],
        };
        // Upstream prints the signer as 0x + compressed key; that parses.
        let trusted: Signer =
            "0x0217610d74cbd39b6143842c6d8bc310d79da1d82cc9d17f8876376221eda0c38f"
                .parse()
                .unwrap();
        assert_eq!(
            verify_env_public_key_legacy(&response, &[0; 20], &trusted).map(|key| key.to_vec()),
            Ok(public_key.clone())
        );
        assert_eq!(
            verify_env_public_key_legacy(
                &response,
                &[0; 20],
                &Signer::from_address(trusted.address())
            )
            .map(|key| key.to_vec()),
            Ok(public_key.clone())
        );
        assert!(verify_env_public_key_legacy(&response, &[1; 20], &trusted).is_err());
        // Without explicit consent (the v1 check), it is refused.
        assert_eq!(
            verify_env_public_key(&response, &[0; 20], &trusted, NOW, 300),
            Err(EnvKeyError::NoSignatureV1)
        );
    }

    #[test]
    fn refuses_a_malformed_public_key_or_signer() {
        let root = root(0x6b);
        let env = root.env_public_key(&APP_ID, NOW).unwrap();
        let mut response = env.signed();
        response.public_key = &env.public_key[..31];
        assert_eq!(
            verify_env_public_key(&response, &APP_ID, &signer(&root), NOW, 300),
            Err(EnvKeyError::PublicKeyLength { len: 31 })
        );
        assert_eq!(
            Signer::from_bytes(&[2; 32]),
            Err(EnvKeyError::InvalidSigner { len: 32 })
        );
        // 33 bytes that are not a point on the curve.
        assert_eq!(
            Signer::from_bytes(&[5; 33]),
            Err(EnvKeyError::InvalidSigner { len: 33 })
        );
        assert_eq!("0xzz".parse::<Signer>(), Err(EnvKeyError::SignerNotHex));
    }
}
