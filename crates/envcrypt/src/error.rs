//! Why an encrypted env was refused. The guest stops its boot on any of
//! these, so each says what to do; none ever holds a value.

use std::fmt;

use crate::blob::{BLOB_OVERHEAD, MAX_BLOB_LEN};
use crate::var::{MAX_KEY_LEN, MAX_TOTAL_LEN, MAX_VALUE_LEN, MAX_VARS};

/// Why an env could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    /// The blob is larger than a guest reads.
    #[error(
        "the encrypted env is {len} bytes, more than the {MAX_BLOB_LEN} (256 KiB) a guest \
         accepts: pass fewer or shorter variables"
    )]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// The blob is shorter than its fixed parts.
    #[error(
        "the encrypted env is only {len} bytes, shorter than the {BLOB_OVERHEAD} of its fixed \
         parts (32-byte X25519 key, 12-byte IV, 16-byte tag): a cut-short file, or not an \
         encrypted env"
    )]
    Truncated {
        /// Its length.
        len: usize,
    },
    /// The X25519 shared secret is all zero (a low-order public key), so the
    /// AES key would be known to anyone.
    #[error(
        "the X25519 shared secret is all zero (a low-order public key): anyone could read \
         such an env, so it is refused; encrypt again to the app's real env public key"
    )]
    WeakSharedSecret,
    /// AES-GCM authentication failed.
    #[error(
        "the encrypted env does not decrypt: it was not encrypted to this app's env key \
         (made for another app id or another KMS?), or it was altered"
    )]
    Decrypt,
    /// The decrypted bytes are not the expected JSON.
    #[error(transparent)]
    Plaintext(PlaintextError),
    /// A key is not a valid variable name.
    #[error(
        "env key {} is not a valid name: it must match ^[a-zA-Z_][a-zA-Z0-9_]*$ and be at \
         most {MAX_KEY_LEN} bytes",
        ShownKey(key)
    )]
    InvalidKey {
        /// The key.
        key: String,
    },
    /// A value is longer than a guest accepts.
    #[error(
        "the value of {} is {len} bytes, more than the {MAX_VALUE_LEN} (128 KiB) a guest \
         accepts",
        ShownKey(key)
    )]
    ValueTooLong {
        /// Its key.
        key: String,
        /// The value's length.
        len: usize,
    },
    /// More variables than a guest accepts.
    #[error("{count} env variables, more than the {MAX_VARS} a guest accepts")]
    TooMany {
        /// How many.
        count: usize,
    },
    /// Keys and values are larger together than a guest accepts.
    #[error(
        "the env's keys and values add up to more than the {MAX_TOTAL_LEN} bytes (1 MiB) a \
         guest accepts (at least {len})"
    )]
    TotalTooLarge {
        /// The running total when the limit was passed.
        len: usize,
    },
    /// There is an encrypted env but the key provider gave no env key.
    #[error(
        "this app has an encrypted env, but its key provider gave no env key: only a KMS \
         releases one (upstream's none, local and tpm key providers do not), so deploy with \
         a KMS or without an encrypted env"
    )]
    NoEnvKey,
    /// The env key is not a 32-byte X25519 secret.
    #[error("the env key from the key provider is {len} bytes, not a 32-byte X25519 secret")]
    EnvKeyLength {
        /// Its length.
        len: usize,
    },
}

/// The decrypted env is not `{"env":[{"key":…,"value":…},…]}`. Only the
/// kind of mistake and where it is are kept: the JSON parser's own message
/// can quote the input, which holds values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the decrypted env is not the JSON {{\"env\":[{{\"key\":…,\"value\":…}},…]}} with string \
     keys and values ({kind} error at line {line}, column {column}): it was encrypted by a \
     tool that does not speak dstack's env format"
)]
pub struct PlaintextError {
    /// `syntax` (not JSON, or not UTF-8), `data` (JSON of another shape)
    /// or `eof` (cut short).
    pub kind: &'static str,
    /// 1-based line of the mistake.
    pub line: usize,
    /// 1-based column of the mistake.
    pub column: usize,
}

/// A key as errors show it: quoted and escaped (it comes from the blob, so
/// it may hold anything) and cut at 64 characters.
struct ShownKey<'a>(&'a str);

impl fmt::Display for ShownKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 64;
        match self.0.char_indices().nth(SHOWN) {
            Some((end, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..end], self.0.len()),
            None => write!(f, "{:?}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_escaped_and_cut() {
        let err = EnvError::InvalidKey { key: "A\nB".into() };
        assert!(err.to_string().contains(r#""A\nB""#), "{err}");
        let long = EnvError::InvalidKey {
            key: "K".repeat(300),
        };
        let text = long.to_string();
        assert!(
            text.contains(&format!("\"{}\"… (300 bytes)", "K".repeat(64))),
            "{text}"
        );
        assert!(!text.contains(&"K".repeat(65)), "{text}");
    }
}
