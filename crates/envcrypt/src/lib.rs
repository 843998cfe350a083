//! Encrypted environment variables, byte-compatible with upstream dstack
//! (`docs/encrypted-env-spec.md`; UPSTREAM.md §5), so that blobs made by
//! upstream's CLI and SDKs open in our guest and ours open in theirs.
//!
//! - Blob: ephemeral X25519 public key (32) ‖ IV (12) ‖ AES-256-GCM
//!   ciphertext and 16-byte tag. The AES key is the raw X25519 shared
//!   secret: no KDF, no associated data. At most 256 KiB, stored raw in
//!   `.encrypted-env`; upstream's SDKs and CLI hand it around as hex.
//! - Plaintext: `{"env":[{"key":"FOO","value":"bar"},…]}`.
//!
//! Who uses what:
//! - the CLI (`dstack vm deploy --env-file`): [`parse_dotenv`], then
//!   [`verify_env_public_key`] on the KMS's answer, then [`seal`];
//! - the guest: [`open_for_app`] (or [`open`] then [`filter_allowed`]) with
//!   the env key its key provider released; any error stops the boot.
//!
//! Values live in [`Zeroizing`](zeroize::Zeroizing) strings and never
//! appear in a `Debug` output, an error or a log line: errors name keys,
//! line numbers and lengths only.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod allowed;
mod blob;
mod dotenv;
mod error;
mod plaintext;
mod var;

pub use allowed::filter_allowed;
pub use blob::{
    AppEnv, BLOB_OVERHEAD, IV_LEN, MAX_BLOB_LEN, PUBLIC_KEY_LEN, TAG_LEN, open, open_for_app, seal,
};
pub use dotenv::{DotenvError, DotenvProblem, parse_dotenv};
pub use error::{EnvError, PlaintextError};
pub use var::{
    EnvVar, MAX_KEY_LEN, MAX_TOTAL_LEN, MAX_VALUE_LEN, MAX_VARS, check_vars, is_valid_key,
};

/// Checking the KMS's signature over an app's env public key (implemented
/// in `dstack-keys`, next to the KMS code that signs it).
pub use dstack_keys::env_key::{
    DEFAULT_MAX_AGE_SECS, EnvKeyError, MAX_FUTURE_SKEW_SECS, SignedEnvKey, Signer,
    verify_env_public_key, verify_env_public_key_legacy,
};
