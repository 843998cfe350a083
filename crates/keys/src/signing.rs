//! GetKey, Sign and Verify as dstack's guest agent implements them
//! (`guest-agent/src/rpc_service.rs` upstream).

use ed25519_dalek::{Signer as _, Verifier as _};
use k256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use sha3::{Digest, Keccak256};
use zeroize::Zeroizing;

use crate::app_keys::k256_signing_key;
use crate::kdf::derive_key;
use crate::{AppKeys, KeyError};

/// How GetKey's 32 derived bytes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// A secp256k1 scalar (the default; also `""` and `k256`).
    Secp256k1,
    /// An ed25519 seed.
    Ed25519,
}

impl KeyAlgorithm {
    /// Parses GetKey's `algorithm`: `secp256k1`, `k256`, `""` or `ed25519`.
    pub fn parse(name: &str) -> Result<Self, KeyError> {
        match name {
            "" | "secp256k1" | "k256" => Ok(Self::Secp256k1),
            "ed25519" => Ok(Self::Ed25519),
            other => Err(KeyError::UnsupportedAlgorithm(other.to_owned())),
        }
    }

    /// The public key of a 32-byte private key: compressed SEC1 (33 bytes)
    /// for secp256k1, the raw 32-byte key for ed25519.
    fn public_key(self, key: &[u8; 32]) -> Result<Vec<u8>, KeyError> {
        Ok(match self {
            Self::Secp256k1 => k256_signing_key(key, "derived secp256k1 key")?
                .verifying_key()
                .to_encoded_point(true)
                .as_bytes()
                .to_vec(),
            Self::Ed25519 => ed25519_dalek::SigningKey::from_bytes(key)
                .verifying_key()
                .to_bytes()
                .to_vec(),
        })
    }
}

/// A GetKey result.
pub struct DerivedKey {
    /// The 32-byte private key.
    pub key: Zeroizing<[u8; 32]>,
    /// Its public key (see [`KeyAlgorithm`]).
    pub public_key: Vec<u8>,
    /// `[app k256 signature over Keccak256(purpose ":" hex(public_key)) as
    /// r‖s‖v, the KMS's k256 signature (empty without a KMS)]`.
    pub signature_chain: Vec<Vec<u8>>,
}

impl std::fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DerivedKey")
            .field("public_key", &self.public_key)
            .field("signature_chain", &self.signature_chain)
            .finish_non_exhaustive()
    }
}

/// Sign's algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignAlgorithm {
    /// Ed25519 over the data.
    Ed25519,
    /// ECDSA secp256k1 over SHA-256(data).
    Secp256k1,
    /// ECDSA secp256k1 over data, which must be a 32-byte digest.
    Secp256k1Prehashed,
}

impl SignAlgorithm {
    /// Parses Sign/Verify's `algorithm` (`k256` is an alias of `secp256k1`).
    pub fn parse(name: &str) -> Result<Self, KeyError> {
        match name {
            "ed25519" => Ok(Self::Ed25519),
            "secp256k1" | "k256" => Ok(Self::Secp256k1),
            "secp256k1_prehashed" => Ok(Self::Secp256k1Prehashed),
            other => Err(KeyError::UnsupportedAlgorithm(other.to_owned())),
        }
    }

    fn key_algorithm(self) -> KeyAlgorithm {
        match self {
            Self::Ed25519 => KeyAlgorithm::Ed25519,
            Self::Secp256k1 | Self::Secp256k1Prehashed => KeyAlgorithm::Secp256k1,
        }
    }
}

/// A Sign result.
#[derive(Debug, Clone)]
pub struct Signed {
    /// Ed25519: 64 bytes; secp256k1: r‖s (64 bytes, low-S).
    pub signature: Vec<u8>,
    /// `[signature, GetKey chain[0], GetKey chain[1]]`.
    pub signature_chain: Vec<Vec<u8>>,
    /// The signing public key (ed25519 32 bytes, secp256k1 compressed 33 bytes).
    pub public_key: Vec<u8>,
}

/// The GetKey path and purpose of the key Sign uses.
pub const SIGNING_KEY_PATH: &str = "vms";
/// See [`SIGNING_KEY_PATH`].
pub const SIGNING_KEY_PURPOSE: &str = "signing";

impl AppKeys {
    /// GetKey: the key at `path` (HKDF over the app k256 key), with the app
    /// key's recoverable signature over Keccak256(`purpose:hex(pubkey)`).
    pub fn get_key(
        &self,
        path: &str,
        purpose: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<DerivedKey, KeyError> {
        let ikm = self.k256_key();
        let derived = derive_key(&ikm[..], &[path.as_bytes()], 32)?;
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&derived);
        let public_key = algorithm.public_key(&key)?;
        let message = format!("{purpose}:{}", hex_lower(&public_key));
        let (signature, recid) = self
            .k256_key
            .sign_digest_recoverable(Keccak256::new_with_prefix(message.as_bytes()))
            .map_err(|_| KeyError::Signing)?;
        let mut app_signature = signature.to_bytes().to_vec();
        app_signature.push(recid.to_byte());
        Ok(DerivedKey {
            key,
            public_key,
            signature_chain: vec![app_signature, self.k256_signature.clone()],
        })
    }

    /// Sign: signs `data` with the GetKey key at path `vms`, purpose `signing`.
    pub fn sign(&self, algorithm: SignAlgorithm, data: &[u8]) -> Result<Signed, KeyError> {
        if algorithm == SignAlgorithm::Secp256k1Prehashed && data.len() != 32 {
            return Err(KeyError::PrehashLength(data.len()));
        }
        let derived = self.get_key(
            SIGNING_KEY_PATH,
            SIGNING_KEY_PURPOSE,
            algorithm.key_algorithm(),
        )?;
        let signature = match algorithm {
            SignAlgorithm::Ed25519 => ed25519_dalek::SigningKey::from_bytes(&derived.key)
                .sign(data)
                .to_bytes()
                .to_vec(),
            SignAlgorithm::Secp256k1 => {
                let key = k256_signing_key(&derived.key[..], "signing key")?;
                let signature: k256::ecdsa::Signature =
                    k256::ecdsa::signature::Signer::try_sign(&key, data)
                        .map_err(|_| KeyError::Signing)?;
                signature.to_bytes().to_vec()
            }
            SignAlgorithm::Secp256k1Prehashed => {
                let key = k256_signing_key(&derived.key[..], "signing key")?;
                let signature: k256::ecdsa::Signature =
                    key.sign_prehash(data).map_err(|_| KeyError::Signing)?;
                signature.to_bytes().to_vec()
            }
        };
        let mut signature_chain = vec![signature.clone()];
        signature_chain.extend(derived.signature_chain);
        Ok(Signed {
            signature,
            signature_chain,
            public_key: derived.public_key,
        })
    }
}

/// Verify: whether `signature` is `public_key`'s signature over `data`.
/// Malformed keys or signatures are errors, a wrong signature is `false`.
pub fn verify(
    algorithm: SignAlgorithm,
    data: &[u8],
    signature: &[u8],
    public_key: &[u8],
) -> Result<bool, KeyError> {
    Ok(match algorithm {
        SignAlgorithm::Ed25519 => {
            let key: &[u8; 32] = public_key
                .try_into()
                .map_err(|_| KeyError::InvalidPublicKey {
                    algorithm: "ed25519",
                })?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(key).map_err(|_| {
                KeyError::InvalidPublicKey {
                    algorithm: "ed25519",
                }
            })?;
            let signature = ed25519_dalek::Signature::from_slice(signature).map_err(|_| {
                KeyError::InvalidSignature {
                    algorithm: "ed25519",
                }
            })?;
            key.verify(data, &signature).is_ok()
        }
        SignAlgorithm::Secp256k1 | SignAlgorithm::Secp256k1Prehashed => {
            let key = k256::ecdsa::VerifyingKey::from_sec1_bytes(public_key).map_err(|_| {
                KeyError::InvalidPublicKey {
                    algorithm: "secp256k1",
                }
            })?;
            let signature = k256::ecdsa::Signature::from_slice(signature).map_err(|_| {
                KeyError::InvalidSignature {
                    algorithm: "secp256k1",
                }
            })?;
            if algorithm == SignAlgorithm::Secp256k1 {
                k256::ecdsa::signature::Verifier::verify(&key, data, &signature).is_ok()
            } else {
                if data.len() != 32 {
                    return Err(KeyError::PrehashLength(data.len()));
                }
                key.verify_prehash(data, &signature).is_ok()
            }
        }
    })
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
    use sha2::Sha256;

    use super::*;

    fn upstream_sim_keys() -> AppKeys {
        let k256 = hex::decode("d6e88992cdeeee35fe70b5db61ab66cdb191fb9b6ec9313757ef162dd7214d5d")
            .unwrap();
        let app_key = p256::SecretKey::from_slice(&[3; 32]).unwrap();
        AppKeys::from_parts(app_key, vec![], &k256, vec![], vec![0xaa; 65]).unwrap()
    }

    fn recover(message: &str, sig: &[u8]) -> [u8; 33] {
        assert_eq!(sig.len(), 65);
        let signature = Signature::from_slice(&sig[..64]).unwrap();
        let recid = RecoveryId::from_byte(sig[64]).unwrap();
        let key = VerifyingKey::recover_from_digest(
            Keccak256::new_with_prefix(message.as_bytes()),
            &signature,
            recid,
        )
        .unwrap();
        key.to_encoded_point(true).as_bytes().try_into().unwrap()
    }

    /// Mirrors upstream's Go SDK test `TestGetKeySignatureVerification`:
    /// the app signature recovers to the app k256 public key.
    #[test]
    fn get_key_signature_recovers_to_app_key() {
        let keys = upstream_sim_keys();
        let derived = keys
            .get_key("/test/path", "test-purpose", KeyAlgorithm::Secp256k1)
            .unwrap();
        assert_eq!(derived.signature_chain.len(), 2);
        assert_eq!(derived.signature_chain[1], vec![0xaa; 65]);
        let expected_key = derive_key(&keys.k256_key()[..], &[b"/test/path"], 32).unwrap();
        assert_eq!(&derived.key[..], &expected_key[..]);
        assert_eq!(derived.public_key.len(), 33);
        let message = format!("test-purpose:{}", hex::encode(&derived.public_key));
        let recovered = recover(&message, &derived.signature_chain[0]);
        assert_eq!(
            hex::encode(recovered),
            "02818494263695e8839122dbd88e281d7380622999df4e60a14befa0f2d096fc7c"
        );
    }

    #[test]
    fn algorithms_share_the_key_bytes_and_differ_in_public_key() {
        let keys = upstream_sim_keys();
        let k = keys.get_key("p", "x", KeyAlgorithm::Secp256k1).unwrap();
        let e = keys.get_key("p", "x", KeyAlgorithm::Ed25519).unwrap();
        assert_eq!(k.key, e.key);
        assert_eq!(e.public_key.len(), 32);
        let message = format!("x:{}", hex::encode(&e.public_key));
        assert_eq!(
            recover(&message, &e.signature_chain[0]),
            keys.k256_public_key()
        );
        assert_eq!(KeyAlgorithm::parse("").unwrap(), KeyAlgorithm::Secp256k1);
        assert_eq!(
            KeyAlgorithm::parse("k256").unwrap(),
            KeyAlgorithm::Secp256k1
        );
        assert_eq!(
            KeyAlgorithm::parse("secp256k1_prehashed").unwrap_err(),
            KeyError::UnsupportedAlgorithm("secp256k1_prehashed".into())
        );
    }

    #[test]
    fn sign_and_verify_round_trip_for_every_algorithm() {
        let keys = upstream_sim_keys();
        let digest: [u8; 32] = Sha256::digest(b"hello").into();
        for (algorithm, data) in [
            (SignAlgorithm::Ed25519, &b"hello"[..]),
            (SignAlgorithm::Secp256k1, &b"hello"[..]),
            (SignAlgorithm::Secp256k1Prehashed, &digest[..]),
        ] {
            let signed = keys.sign(algorithm, data).unwrap();
            assert_eq!(signed.signature.len(), 64, "{algorithm:?}");
            assert_eq!(signed.signature_chain.len(), 3);
            assert_eq!(signed.signature_chain[0], signed.signature);
            let expected = keys
                .get_key("vms", "signing", algorithm.key_algorithm())
                .unwrap();
            assert_eq!(signed.public_key, expected.public_key);
            assert_eq!(signed.signature_chain[1], expected.signature_chain[0]);
            assert!(verify(algorithm, data, &signed.signature, &signed.public_key).unwrap());
            let mut tampered = data.to_vec();
            tampered[0] ^= 1;
            assert!(!verify(algorithm, &tampered, &signed.signature, &signed.public_key).unwrap());
        }
        // secp256k1 signs SHA-256(data): the prehashed signature of the digest verifies too.
        let signed = keys.sign(SignAlgorithm::Secp256k1, b"hello").unwrap();
        assert!(
            verify(
                SignAlgorithm::Secp256k1Prehashed,
                &digest,
                &signed.signature,
                &signed.public_key
            )
            .unwrap()
        );
    }

    #[test]
    fn bad_inputs_are_named_errors() {
        let keys = upstream_sim_keys();
        assert_eq!(
            keys.sign(SignAlgorithm::Secp256k1Prehashed, b"short")
                .unwrap_err(),
            KeyError::PrehashLength(5)
        );
        assert_eq!(
            SignAlgorithm::parse("rsa").unwrap_err(),
            KeyError::UnsupportedAlgorithm("rsa".into())
        );
        assert!(matches!(
            verify(SignAlgorithm::Ed25519, b"x", &[0; 64], &[1; 31]),
            Err(KeyError::InvalidPublicKey { .. })
        ));
        let signed = keys.sign(SignAlgorithm::Secp256k1, b"x").unwrap();
        assert!(matches!(
            verify(SignAlgorithm::Secp256k1, b"x", &[0; 10], &signed.public_key),
            Err(KeyError::InvalidSignature { .. })
        ));
    }
}
