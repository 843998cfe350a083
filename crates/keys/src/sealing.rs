//! The local key provider's cryptography (UPSTREAM.md §9, upstream
//! `dstack/local-key-provider`): the sealing key a provider derives for a TD,
//! the libsodium sealed box (`crypto_box_seal`) it travels in, and the
//! binding between that box and the provider's own quote.
//!
//! The guest puts an ephemeral X25519 public key in the first 32 bytes of its
//! quote's report_data; the provider derives
//! `SHA-256(provider secret ‖ MRTD ‖ RTMR0 ‖ RTMR1 ‖ RTMR2 ‖ RTMR3)`, seals it
//! to that key, and quotes `SHA-256(encrypted_key)` in report_data[..32] of
//! its own (SGX) quote, so the guest knows which enclave produced the box.

use crypto_box::aead::OsRng;
use crypto_box::{PublicKey, SecretKey};
use curve25519_dalek::MontgomeryPoint;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Length of a sealing key, and of an X25519 public key.
pub const SEALING_KEY_LEN: usize = 32;
/// A sealed box's overhead: the sender's ephemeral public key and the MAC.
pub const SEALED_BOX_OVERHEAD: usize = 32 + 16;

/// Why sealing, opening or checking a sealed key failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealingError {
    /// The recipient key is a low-order point: every box to it would be
    /// readable by anyone.
    #[error("the X25519 public key in report_data is a low-order point")]
    WeakPublicKey,
    /// The box did not open: it was not sealed to this key or was altered.
    #[error("the sealed box does not open with this key (tampered, or sealed to another key)")]
    Open,
    /// The opened box does not hold a 32-byte key.
    #[error("the sealed key has {0} bytes, not 32")]
    KeyLength(usize),
    /// Sealing failed (practically unreachable).
    #[error("sealing failed")]
    Seal,
    /// The provider's quote does not bind this box.
    #[error(
        "the provider's quote does not bind the sealed key: report_data[..32] is {found}, SHA-256(encrypted_key) is {expected}"
    )]
    Evidence {
        /// report_data[..32] of the provider's quote, hex.
        found: String,
        /// SHA-256 of the sealed box, hex.
        expected: String,
    },
}

/// The TD measurements a sealing key is bound to, as a quote states them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdMeasurements<'a> {
    /// MRTD.
    pub mr_td: &'a [u8; 48],
    /// RTMR0..=3.
    pub rtmr: &'a [[u8; 48]; 4],
}

/// The sealing key for a TD: `SHA-256(secret ‖ MRTD ‖ RTMR0..3)`, as upstream's
/// provider derives it from its SGX sealing key. A TD with other firmware,
/// kernel, command line, initrd or app measurements gets another key.
pub fn derive_sealing_key(
    provider_secret: &[u8],
    td: &TdMeasurements<'_>,
) -> Zeroizing<[u8; SEALING_KEY_LEN]> {
    let mut h = Sha256::new();
    h.update(provider_secret);
    h.update(td.mr_td);
    for rtmr in td.rtmr {
        h.update(rtmr);
    }
    Zeroizing::new(h.finalize().into())
}

/// The recipient public key a guest put in its quote's report_data.
pub fn recipient_from_report_data(report_data: &[u8; 64]) -> [u8; SEALING_KEY_LEN] {
    let mut pk = [0u8; SEALING_KEY_LEN];
    pk.copy_from_slice(&report_data[..SEALING_KEY_LEN]);
    pk
}

/// Seals `message` to `recipient` in libsodium's `crypto_box_seal` format:
/// ephemeral public key ‖ XSalsa20-Poly1305 box, nonce = BLAKE2b-24(epk ‖ pk).
pub fn seal(recipient: &[u8; SEALING_KEY_LEN], message: &[u8]) -> Result<Vec<u8>, SealingError> {
    // The ephemeral scalar is clamped (a multiple of 8), so a point of order
    // at most 8 maps to the identity whatever the scalar: checked with any.
    let probe = Zeroizing::new(SecretKey::generate(&mut OsRng).to_bytes());
    if MontgomeryPoint(*recipient).mul_clamped(*probe).0 == [0u8; 32] {
        return Err(SealingError::WeakPublicKey);
    }
    PublicKey::from(*recipient)
        .seal(&mut OsRng, message)
        .map_err(|_| SealingError::Seal)
}

/// SHA-256 of a sealed box, placed in report_data[..32] of the provider's quote.
pub fn evidence_report_data(encrypted_key: &[u8]) -> [u8; 64] {
    let mut report_data = [0u8; 64];
    report_data[..32].copy_from_slice(&Sha256::digest(encrypted_key));
    report_data
}

/// Checks that the provider's quote binds this sealed box (upstream's
/// "Invalid key hash" check).
pub fn check_evidence(
    encrypted_key: &[u8],
    provider_report_data: &[u8; 64],
) -> Result<(), SealingError> {
    let expected = Sha256::digest(encrypted_key);
    if provider_report_data[..32] != expected[..] {
        return Err(SealingError::Evidence {
            found: hex_of(&provider_report_data[..32]),
            expected: hex_of(&expected),
        });
    }
    Ok(())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The guest's ephemeral X25519 key: its public half goes into the quote,
/// and only this process can open what the provider seals to it.
pub struct RecipientKey {
    secret: SecretKey,
}

impl std::fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecipientKey")
            .field("public", &hex_of(&self.public_key()))
            .finish_non_exhaustive()
    }
}

impl RecipientKey {
    /// A fresh key from the OS's randomness.
    pub fn generate() -> Self {
        Self {
            secret: SecretKey::generate(&mut OsRng),
        }
    }

    /// A key from fixed bytes (tests).
    pub fn from_bytes(secret: [u8; 32]) -> Self {
        Self {
            secret: SecretKey::from(secret),
        }
    }

    /// The X25519 public key.
    pub fn public_key(&self) -> [u8; SEALING_KEY_LEN] {
        *self.secret.public_key().as_bytes()
    }

    /// report_data for the quote sent to the provider: the public key, then zeros.
    pub fn report_data(&self) -> [u8; 64] {
        let mut report_data = [0u8; 64];
        report_data[..SEALING_KEY_LEN].copy_from_slice(&self.public_key());
        report_data
    }

    /// Opens a sealed box addressed to this key.
    pub fn open(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealingError> {
        self.secret
            .unseal(sealed)
            .map(Zeroizing::new)
            .map_err(|_| SealingError::Open)
    }

    /// Opens a sealed 32-byte sealing key.
    pub fn open_sealing_key(
        &self,
        sealed: &[u8],
    ) -> Result<Zeroizing<[u8; SEALING_KEY_LEN]>, SealingError> {
        let opened = self.open(sealed)?;
        let key: [u8; SEALING_KEY_LEN] = opened
            .as_slice()
            .try_into()
            .map_err(|_| SealingError::KeyLength(opened.len()))?;
        Ok(Zeroizing::new(key))
    }
}

#[cfg(test)]
mod tests {
    use blake2::Blake2bVar;
    use blake2::digest::{Update, VariableOutput};
    use crypto_box::SalsaBox;
    use crypto_box::aead::Aead;

    use super::*;

    #[test]
    fn derivation_matches_an_independent_sha256() {
        // python3: sha256(b"\x11"*32 + b"\x01"*48 + b"\x02"*48 + b"\x03"*48 + b"\x04"*48 + b"\x05"*48)
        let rtmr = [[2u8; 48], [3; 48], [4; 48], [5; 48]];
        let key = derive_sealing_key(
            &[0x11; 32],
            &TdMeasurements {
                mr_td: &[1; 48],
                rtmr: &rtmr,
            },
        );
        assert_eq!(
            hex_of(&key[..]),
            "fbdda5ab5ff4b817658483b35a91c3761caad5ffbc27b760950b08d58dbb147e"
        );
        // Any register changes the key.
        let mut other = rtmr;
        other[3][0] ^= 1;
        let moved = derive_sealing_key(
            &[0x11; 32],
            &TdMeasurements {
                mr_td: &[1; 48],
                rtmr: &other,
            },
        );
        assert_ne!(*key, *moved);
    }

    #[test]
    fn seals_in_libsodium_format_and_opens() {
        let recipient = RecipientKey::from_bytes([0x25; 32]);
        let report_data = recipient.report_data();
        assert_eq!(report_data[32..], [0u8; 32]);
        let pk = recipient_from_report_data(&report_data);
        let sealed = seal(&pk, &[7u8; 32]).unwrap();
        assert_eq!(sealed.len(), 32 + SEALED_BOX_OVERHEAD);
        assert_eq!(*recipient.open_sealing_key(&sealed).unwrap(), [7u8; 32]);

        // The format by hand: epk ‖ box, nonce = BLAKE2b-24(epk ‖ pk).
        let epk: [u8; 32] = sealed[..32].try_into().unwrap();
        let mut nonce = [0u8; 24];
        let mut hasher = Blake2bVar::new(24).unwrap();
        hasher.update(&epk);
        hasher.update(&pk);
        hasher.finalize_variable(&mut nonce).unwrap();
        let secret = SecretKey::from([0x25; 32]);
        let plain = SalsaBox::new(&PublicKey::from(epk), &secret)
            .decrypt(&nonce.into(), &sealed[32..])
            .unwrap();
        assert_eq!(plain, [7u8; 32]);
    }

    #[test]
    fn refuses_tampered_boxes_wrong_keys_and_weak_recipients() {
        let recipient = RecipientKey::generate();
        let mut sealed = seal(&recipient.public_key(), &[1u8; 32]).unwrap();
        let other = RecipientKey::generate();
        assert_eq!(other.open(&sealed).unwrap_err(), SealingError::Open);
        sealed[40] ^= 1;
        assert_eq!(recipient.open(&sealed).unwrap_err(), SealingError::Open);
        assert_eq!(recipient.open(&[0; 10]).unwrap_err(), SealingError::Open);

        let short = seal(&recipient.public_key(), &[1u8; 31]).unwrap();
        assert_eq!(
            recipient.open_sealing_key(&short).unwrap_err(),
            SealingError::KeyLength(31)
        );
        // The identity and a point of order 8.
        assert_eq!(
            seal(&[0u8; 32], b"k").unwrap_err(),
            SealingError::WeakPublicKey
        );
        let mut order8 = [0u8; 32];
        order8[..8].copy_from_slice(&[0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae]);
        order8[8..16].copy_from_slice(&[0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a]);
        order8[16..24].copy_from_slice(&[0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd]);
        order8[24..].copy_from_slice(&[0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00]);
        assert_eq!(
            seal(&order8, b"k").unwrap_err(),
            SealingError::WeakPublicKey
        );
    }

    #[test]
    fn evidence_binds_the_box() {
        let sealed = seal(&RecipientKey::generate().public_key(), &[1u8; 32]).unwrap();
        let report_data = evidence_report_data(&sealed);
        check_evidence(&sealed, &report_data).unwrap();
        let mut other = sealed.clone();
        other[0] ^= 1;
        let err = check_evidence(&other, &report_data).unwrap_err();
        assert!(matches!(err, SealingError::Evidence { .. }), "{err}");
    }
}
