//! Key derivation as dstack derives keys (UPSTREAM.md §4), so that an app's
//! keys, signatures and report_data are byte-for-byte what upstream dstack
//! gives it.
//!
//! - [`kdf`]: the HKDF primitive and the P-256 / DH derivations built on it.
//! - [`AppKeys`]: an app's root keys (non-KMS: from a 32-byte seed).
//! - [`AppKeys::get_key`], [`AppKeys::sign`], [`verify`]: the guest API's
//!   GetKey, Sign and Verify.
//! - [`report_data`]: dstack's `Hash(tag ":" content)` report_data rule.
//! - [`sealing`]: the local key provider's sealing key and sealed box.
//! - [`env_key`]: checking a KMS's signature over an app's env public key.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod app_keys;
pub mod env_key;
pub mod kdf;
pub mod kms;
pub mod report_data;
pub mod sealing;
mod signing;

pub use app_keys::{AppKeys, KmsReleasedKeys};
pub use env_key::{
    EnvKeyError, SignedEnvKey, Signer, verify_env_public_key, verify_env_public_key_legacy,
};
pub use kdf::{
    derive_dh_secret, derive_key, derive_p256_key_pair, derive_p256_key_pair_from_bytes,
};
pub use kms::{EnvPublicKey, KmsAppKeys, KmsRootKeys};
pub use report_data::{HashAlgorithm, report_data_with_hash};
pub use signing::{
    DerivedKey, KeyAlgorithm, SIGNING_KEY_PATH, SIGNING_KEY_PURPOSE, SignAlgorithm, Signed, verify,
};

/// Why a key could not be derived, or a signature made or checked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// HKDF cannot produce this many bytes (more than 255 × 32).
    #[error("HKDF cannot produce {0} bytes")]
    KdfLength(usize),
    /// Derived or supplied bytes are not a valid private key for the curve.
    #[error("{what} is not a valid private key")]
    InvalidPrivateKey {
        /// Which key.
        what: &'static str,
    },
    /// A public key could not be encoded as SubjectPublicKeyInfo DER.
    #[error("cannot encode {what} as SubjectPublicKeyInfo")]
    Spki {
        /// Which key.
        what: &'static str,
    },
    /// The key could not be encoded as PKCS#8.
    #[error("cannot encode {what} as PKCS#8")]
    Pkcs8 {
        /// Which key.
        what: &'static str,
    },
    /// The algorithm name is not one dstack supports here.
    #[error("unsupported algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// `secp256k1_prehashed` signing or verification got data that is not a digest.
    #[error("pre-hashed signing requires a 32-byte digest, but received {0} bytes")]
    PrehashLength(usize),
    /// A public key given for verification is malformed.
    #[error("public_key is not a valid {algorithm} public key")]
    InvalidPublicKey {
        /// The algorithm it was given for.
        algorithm: &'static str,
    },
    /// A signature given for verification is malformed.
    #[error("signature is not a valid {algorithm} signature")]
    InvalidSignature {
        /// The algorithm it was given for.
        algorithm: &'static str,
    },
    /// ECDSA signing failed (practically unreachable).
    #[error("ECDSA signing failed")]
    Signing,
    /// The report_data hash algorithm name is unknown.
    #[error("invalid hash algorithm {0:?}")]
    UnsupportedHash(String),
    /// `raw` report_data must be exactly 64 bytes.
    #[error("raw report_data must be exactly 64 bytes, got {0}")]
    RawLength(usize),
}
