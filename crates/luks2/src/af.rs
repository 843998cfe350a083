//! The anti-forensic splitter of LUKS (`af` type `luks1`), with sha256.
//!
//! A key of `n` bytes is stored as `stripes` blocks of `n` bytes: all but the
//! last are random, and the last is the key XORed with the running "diffused"
//! XOR of the others. Losing any one stripe loses the key, which is the point:
//! overwriting a small part of the keyslot area destroys it.
//!
//! The diffusion is cryptsetup's (`lib/luks1/af.c`): the buffer is cut into
//! blocks of the digest size (32 bytes for sha256), and block `i` becomes
//! `sha256(be32(i) || block)`, truncated to the block's length for a short
//! last block.

use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Diffuses `buf` in place (each output block depends only on its input
/// block, so in place is the same as cryptsetup's separate buffers).
fn diffuse(buf: &mut [u8]) {
    for (index, block) in (0u32..).zip(buf.chunks_mut(Sha256::output_size())) {
        let mut hash = Sha256::new();
        hash.update(index.to_be_bytes());
        hash.update(&*block);
        let digest = hash.finalize();
        let len = block.len();
        block.copy_from_slice(&digest[..len]);
    }
}

fn xor_into(acc: &mut [u8], other: &[u8]) {
    for (a, b) in acc.iter_mut().zip(other) {
        *a ^= b;
    }
}

/// Splits `key` into `stripes` blocks of `key.len()` bytes.
pub(crate) fn split(
    key: &[u8],
    stripes: usize,
    rng: &mut (impl CryptoRngCore + ?Sized),
) -> Zeroizing<Vec<u8>> {
    assert!(stripes >= 1, "AF needs at least one stripe");
    let n = key.len();
    let mut out = Zeroizing::new(vec![0u8; n * stripes]);
    let (random, last) = out.split_at_mut(n * (stripes - 1));
    rng.fill_bytes(random);
    let mut acc = Zeroizing::new(vec![0u8; n]);
    for stripe in random.chunks(n) {
        xor_into(&mut acc, stripe);
        diffuse(&mut acc);
    }
    last.copy_from_slice(key);
    xor_into(last, &acc);
    out
}

/// Recovers the key of `key_len` bytes from `stripes` split blocks.
///
/// `material` must hold `key_len * stripes` bytes.
pub(crate) fn merge(material: &[u8], key_len: usize, stripes: usize) -> Zeroizing<Vec<u8>> {
    assert!(stripes >= 1, "AF needs at least one stripe");
    assert_eq!(material.len(), key_len * stripes, "AF material length");
    let (head, last) = material.split_at(key_len * (stripes - 1));
    let mut acc = Zeroizing::new(vec![0u8; key_len]);
    for stripe in head.chunks(key_len) {
        xor_into(&mut acc, stripe);
        diffuse(&mut acc);
    }
    xor_into(&mut acc, last);
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::{OsRng, RngCore};

    #[test]
    fn split_then_merge_round_trips() {
        for (key_len, stripes) in [(64, 4000), (32, 1), (33, 3), (20, 7), (64, 2)] {
            let mut key = vec![0u8; key_len];
            OsRng.fill_bytes(&mut key);
            let material = split(&key, stripes, &mut OsRng);
            assert_eq!(material.len(), key_len * stripes);
            assert_eq!(&merge(&material, key_len, stripes)[..], &key[..]);
        }
    }

    #[test]
    fn every_stripe_matters() {
        let key = [0x5au8; 64];
        let material = split(&key, 16, &mut OsRng);
        for stripe in 0..16 {
            let mut damaged = material.to_vec();
            damaged[stripe * 64 + 7] ^= 1;
            assert_ne!(&merge(&damaged, 64, 16)[..], &key[..], "stripe {stripe}");
        }
    }

    /// Two stripes worked by hand: merge = s1 XOR diffuse(s0), where diffuse
    /// hashes each 32-byte block with its big-endian index in front, and
    /// truncates a short last block.
    #[test]
    fn diffusion_is_cryptsetups() {
        let s0: Vec<u8> = (0u8..40).collect();
        let s1 = [0u8; 40];
        let mut material = s0.clone();
        material.extend_from_slice(&s1);
        let mut expected = Vec::new();
        let mut h = Sha256::new();
        h.update([0, 0, 0, 0]);
        h.update(&s0[..32]);
        expected.extend_from_slice(&h.finalize());
        let mut h = Sha256::new();
        h.update([0, 0, 0, 1]);
        h.update(&s0[32..]);
        expected.extend_from_slice(&h.finalize()[..8]);
        assert_eq!(&merge(&material, 40, 2)[..], &expected[..]);
    }
}
