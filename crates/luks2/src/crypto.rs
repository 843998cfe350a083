//! PBKDF2-HMAC-SHA256 and the keyslot area's AES-XTS (`aes-xts-plain64`).

use aes::Aes256;
use aes::cipher::KeyInit;
use sha2::Sha256;
use xts_mode::{Xts128, get_tweak_default};
use zeroize::Zeroizing;

/// The keyslot area is encrypted in 512-byte sectors whatever the data
/// segment's sector size (cryptsetup's `crypt_storage` for keyslots).
pub(crate) const AREA_SECTOR: usize = 512;

/// PBKDF2-HMAC-SHA256 of `password` into `out`.
pub(crate) fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, out);
}

/// AES-256-XTS with a 64-byte key: the first half keys the data cipher, the
/// second the tweak cipher (the kernel's and cryptsetup's convention).
fn xts(key: &[u8; 64]) -> Xts128<Aes256> {
    let data = Aes256::new_from_slice(&key[..32]).expect("AES-256 takes 32 bytes");
    let tweak = Aes256::new_from_slice(&key[32..]).expect("AES-256 takes 32 bytes");
    Xts128::new(data, tweak)
}

/// Encrypts keyslot material in place: sector `i` of the area (counted from
/// the area's start) gets IV `i` as a little-endian 64-bit number (`plain64`,
/// zero-extended to the 16-byte tweak).
pub(crate) fn encrypt_area(key: &[u8; 64], data: &mut [u8]) {
    assert_eq!(data.len() % AREA_SECTOR, 0, "whole sectors only");
    xts(key).encrypt_area(data, AREA_SECTOR, 0, get_tweak_default);
}

/// Decrypts what [`encrypt_area`] wrote.
pub(crate) fn decrypt_area(key: &[u8; 64], data: &mut [u8]) {
    assert_eq!(data.len() % AREA_SECTOR, 0, "whole sectors only");
    xts(key).decrypt_area(data, AREA_SECTOR, 0, get_tweak_default);
}

/// The 64-byte keyslot key derived from the passphrase.
pub(crate) fn keyslot_key(passphrase: &[u8], salt: &[u8], iterations: u32) -> Zeroizing<[u8; 64]> {
    let mut key = Zeroizing::new([0u8; 64]);
    pbkdf2_sha256(passphrase, salt, iterations, &mut key[..]);
    key
}

/// The LUKS2 `pbkdf2` digest of a volume key: PBKDF2 with the volume key as
/// the password, output as long as the hash (32 bytes for sha256).
pub(crate) fn volume_key_digest(volume_key: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut digest = [0u8; 32];
    pbkdf2_sha256(volume_key, salt, iterations, &mut digest);
    digest
}

/// Equality without an early exit.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7914 §11's PBKDF2-HMAC-SHA256 vector (the first 32 bytes of it).
    #[test]
    fn pbkdf2_matches_rfc7914() {
        let mut out = [0u8; 64];
        pbkdf2_sha256(b"passwd", b"salt", 1, &mut out);
        assert_eq!(
            out[..16],
            [
                0x55, 0xac, 0x04, 0x6e, 0x56, 0xe3, 0x08, 0x9f, 0xec, 0x16, 0x91, 0xc2, 0x25, 0x44,
                0xb6, 0x05
            ]
        );
    }

    /// IEEE 1619 XTS-AES-256 vector 10: key1 = 2718281828..., key2 =
    /// 3141592653..., data unit sequence number 0xff, 512 bytes of 0..=255
    /// twice; the first 16 ciphertext bytes.
    #[test]
    fn xts_matches_ieee1619_vector_10() {
        let mut key = [0u8; 64];
        let k1 = "2718281828459045235360287471352662497757247093699959574966967627";
        let k2 = "3141592653589793238462643383279502884197169399375105820974944592";
        for (i, pair) in k1
            .as_bytes()
            .chunks(2)
            .chain(k2.as_bytes().chunks(2))
            .enumerate()
        {
            key[i] = u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap();
        }
        let mut data: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
        let cipher = xts(&key);
        cipher.encrypt_sector(&mut data, get_tweak_default(0xff));
        assert_eq!(
            data[..16],
            [
                0x1c, 0x3b, 0x3a, 0x10, 0x2f, 0x77, 0x03, 0x86, 0xe4, 0x83, 0x6c, 0x99, 0xe3, 0x70,
                0xcf, 0x9b
            ]
        );
    }

    #[test]
    fn area_round_trips_and_uses_sector_ivs() {
        let key = [7u8; 64];
        let plain = vec![0u8; 3 * AREA_SECTOR];
        let mut data = plain.clone();
        encrypt_area(&key, &mut data);
        // Same plaintext in each sector, different IVs: different ciphertext.
        assert_ne!(data[..AREA_SECTOR], data[AREA_SECTOR..2 * AREA_SECTOR]);
        let mut sector1 = plain[..AREA_SECTOR].to_vec();
        xts(&key).encrypt_sector(&mut sector1, 1u128.to_le_bytes());
        assert_eq!(sector1, data[AREA_SECTOR..2 * AREA_SECTOR]);
        decrypt_area(&key, &mut data);
        assert_eq!(data, plain);
    }
}
