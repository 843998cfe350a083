//! dstack's key derivation primitive (`ra-tls/src/kdf.rs` upstream):
//! HKDF-SHA256 with salt `"RATLS"` and the context slices concatenated, with
//! no separators, as the info.

use hkdf::Hkdf;
use p256::pkcs8::EncodePrivateKey;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::KeyError;

/// The HKDF salt dstack uses for every derivation.
pub const SALT: &[u8] = b"RATLS";

/// `len` bytes of HKDF-SHA256(salt = "RATLS", ikm, info = concat(context)).
pub fn derive_key(
    ikm: &[u8],
    context: &[&[u8]],
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let hkdf = Hkdf::<Sha256>::new(Some(SALT), ikm);
    let mut out = Zeroizing::new(vec![0u8; len]);
    hkdf.expand_multi_info(context, &mut out)
        .map_err(|_| KeyError::KdfLength(len))?;
    Ok(out)
}

/// A P-256 key whose scalar is `derive_key(secret, context, 32)`.
pub fn derive_p256_key_pair_from_bytes(
    secret: &[u8],
    context: &[&[u8]],
) -> Result<p256::SecretKey, KeyError> {
    let scalar = derive_key(secret, context, 32)?;
    p256::SecretKey::from_slice(&scalar).map_err(|_| KeyError::InvalidPrivateKey {
        what: "derived P-256 key",
    })
}

/// A P-256 key derived from another one: its 32-byte scalar is the IKM.
pub fn derive_p256_key_pair(
    from: &p256::SecretKey,
    context: &[&[u8]],
) -> Result<p256::SecretKey, KeyError> {
    let scalar = Zeroizing::new(from.to_bytes());
    derive_p256_key_pair_from_bytes(&scalar[..], context)
}

/// SHA-256 of a P-256 key's canonical PKCS#8 DER (public key included), as
/// dstack hashes it for disk and env secrets.
pub fn p256_pkcs8_sha256(key: &p256::SecretKey) -> Result<[u8; 32], KeyError> {
    let der = key
        .to_pkcs8_der()
        .map_err(|_| KeyError::Pkcs8 { what: "P-256 key" })?;
    Ok(Sha256::digest(der.as_bytes()).into())
}

/// dstack's DH secret: SHA-256 of the PKCS#8 DER of
/// `derive_p256_key_pair(from, context)`.
pub fn derive_dh_secret(
    from: &p256::SecretKey,
    context: &[&[u8]],
) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let derived = derive_p256_key_pair(from, context)?;
    Ok(Zeroizing::new(p256_pkcs8_sha256(&derived)?))
}

#[cfg(test)]
mod tests {
    use p256::pkcs8::DecodePrivateKey;

    use super::*;

    #[test]
    fn derive_key_is_hkdf_sha256_with_ratls_salt_and_concatenated_info() {
        let a = derive_key(b"input key material", &[b"context one"], 32).unwrap();
        let split = derive_key(b"input key material", &[b"context ", b"one"], 32).unwrap();
        assert_eq!(a, split, "info is the plain concatenation");
        assert_eq!(a.len(), 32);
        // Independent HKDF computation with the same parameters.
        let mut expected = [0u8; 32];
        Hkdf::<Sha256>::new(Some(b"RATLS"), b"input key material")
            .expand(b"context one", &mut expected)
            .unwrap();
        assert_eq!(&a[..], &expected);
        assert_eq!(
            derive_key(b"input key material", &[b"context one"], 256)
                .unwrap()
                .len(),
            256
        );
        assert_eq!(
            derive_key(b"x", &[], 255 * 32 + 1).unwrap_err(),
            KeyError::KdfLength(255 * 32 + 1)
        );
    }

    /// Upstream's fixed vector (`test_derive_dh_secret_stable_output`).
    #[test]
    fn derive_dh_secret_matches_upstream_vector() {
        let root_der = hex::decode(
            "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b02\
             01010420f57527cea4ab7ffb49af99b158cdc0e3ec06398f528349ea236b7d2a\
             fe19cec1a1440342000491f50522407ce29dce3ed7d31a15d80c1c42f13a2355\
             2d2b33a0ce09ee11e47bce95936f3e7f80d195f879e28e1b144ef37ac9ab8e36\
             a690cbf930b775897b27",
        )
        .unwrap();
        let root = p256::SecretKey::from_pkcs8_der(&root_der).unwrap();
        let secret = derive_dh_secret(&root, &[b"context one", b"context two"]).unwrap();
        assert_eq!(
            hex::encode(*secret),
            "663afd58820be8ad645f9c035e93199d114ab16f738db62393bc1d7d623e8813"
        );
    }

    #[test]
    fn p256_derivation_is_deterministic_and_context_bound() {
        let a = derive_p256_key_pair_from_bytes(&[7; 32], &[b"app-key"]).unwrap();
        let b = derive_p256_key_pair_from_bytes(&[7; 32], &[b"app-key"]).unwrap();
        let c = derive_p256_key_pair_from_bytes(&[7; 32], &[b"app-disk-key"]).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        assert_ne!(a.to_bytes(), c.to_bytes());
        let child = derive_p256_key_pair(&a, &[b"x"]).unwrap();
        let direct = derive_p256_key_pair_from_bytes(&a.to_bytes(), &[b"x"]).unwrap();
        assert_eq!(child.to_bytes(), direct.to_bytes());
    }
}
