//! TDX runtime measurement registers (RTMR0-3) and the SHA-384 extend rule.
//!
//! A register starts as 48 zero bytes and only ever changes by
//! `mr = SHA384(mr || digest)`, so its value commits to the whole ordered list
//! of digests extended into it. Event-log replay (`crate::eventlog::replay`)
//! recomputes the registers this way and compares them with a quote.

use sha2::{Digest, Sha384};

/// Size of a TDX measurement (SHA-384) in bytes.
pub const MEASUREMENT_LEN: usize = 48;

/// One SHA-384 measurement: a register value or an event digest.
pub type Measurement = [u8; MEASUREMENT_LEN];

/// Number of runtime measurement registers a TD has.
pub const RTMR_COUNT: usize = 4;

/// The four TDX runtime measurement registers, RTMR0 first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rtmrs(pub [Measurement; RTMR_COUNT]);

/// All registers zero, as at TD start. (Written out because `Default` is not
/// derived for arrays longer than 32.)
impl Default for Rtmrs {
    fn default() -> Self {
        Self([[0; MEASUREMENT_LEN]; RTMR_COUNT])
    }
}

/// An RTMR index outside 0-3.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
#[error("RTMR index {index} is out of range: a TD has RTMR0-3")]
pub struct InvalidRegister {
    /// The rejected index.
    pub index: usize,
}

/// Extends `register` with `digest` the way the TDX module does:
/// `register = SHA384(register || digest)`.
pub fn extend(register: &mut Measurement, digest: &Measurement) {
    let mut hasher = Sha384::new();
    hasher.update(*register);
    hasher.update(digest);
    *register = hasher.finalize().into();
}

impl Rtmrs {
    /// Extends RTMR`index` with `digest`; `index` must be 0-3.
    pub fn extend(&mut self, index: usize, digest: &Measurement) -> Result<(), InvalidRegister> {
        let register = self.0.get_mut(index).ok_or(InvalidRegister { index })?;
        extend(register, digest);
        Ok(())
    }

    /// The value of RTMR`index`, or `None` if `index` is not 0-3.
    pub fn get(&self, index: usize) -> Option<&Measurement> {
        self.0.get(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-384 of 96 zero bytes: the first extend of a fresh register with a
    /// zero digest. Computed with `head -c 96 /dev/zero | sha384sum`.
    const SHA384_OF_96_ZEROS: &str = "f57bb7ed82c6ae4a29e6c9879338c592c7d42a39135583e8ccbe3940f2344b0eb6eb8503db0ffd6a39ddd00cd07d8317";

    #[test]
    fn extend_is_sha384_of_register_then_digest() {
        let mut register = [0x11; MEASUREMENT_LEN];
        let digest = [0x22; MEASUREMENT_LEN];
        let mut concatenated = Vec::new();
        concatenated.extend_from_slice(&[0x11; MEASUREMENT_LEN]);
        concatenated.extend_from_slice(&[0x22; MEASUREMENT_LEN]);
        let expected: Measurement = Sha384::digest(&concatenated).into();

        extend(&mut register, &digest);
        assert_eq!(register, expected);
    }

    #[test]
    fn extend_of_zero_register_with_zero_digest_matches_known_value() {
        let mut register = [0; MEASUREMENT_LEN];
        extend(&mut register, &[0; MEASUREMENT_LEN]);
        assert_eq!(hex::encode(register), SHA384_OF_96_ZEROS);
    }

    #[test]
    fn extend_order_matters() {
        let (a, b) = ([1; MEASUREMENT_LEN], [2; MEASUREMENT_LEN]);
        let mut ab = [0; MEASUREMENT_LEN];
        extend(&mut ab, &a);
        extend(&mut ab, &b);
        let mut ba = [0; MEASUREMENT_LEN];
        extend(&mut ba, &b);
        extend(&mut ba, &a);
        assert_ne!(ab, ba);
    }

    #[test]
    fn rtmrs_extend_touches_only_the_named_register() {
        let mut rtmrs = Rtmrs::default();
        rtmrs.extend(2, &[7; MEASUREMENT_LEN]).unwrap();
        let mut expected = [0; MEASUREMENT_LEN];
        extend(&mut expected, &[7; MEASUREMENT_LEN]);
        assert_eq!(rtmrs.0[2], expected);
        for untouched in [0, 1, 3] {
            assert_eq!(rtmrs.0[untouched], [0; MEASUREMENT_LEN]);
        }
        assert_eq!(rtmrs.get(2), Some(&expected));
        assert_eq!(rtmrs.get(4), None);
    }

    #[test]
    fn rtmrs_extend_rejects_index_past_rtmr3() {
        let mut rtmrs = Rtmrs::default();
        assert_eq!(
            rtmrs.extend(4, &[0; MEASUREMENT_LEN]),
            Err(InvalidRegister { index: 4 })
        );
        assert_eq!(rtmrs, Rtmrs::default());
        assert_eq!(
            InvalidRegister { index: 4 }.to_string(),
            "RTMR index 4 is out of range: a TD has RTMR0-3"
        );
    }
}
