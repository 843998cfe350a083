//! One environment variable, and the limits upstream's guest puts on them
//! (`dstack-util/src/parse_env_file.rs`).

use std::collections::HashMap;
use std::fmt;

use zeroize::Zeroizing;

use crate::EnvError;

/// The longest key, in bytes (a common Linux limit, upstream says).
pub const MAX_KEY_LEN: usize = 255;
/// The longest value, in bytes: 128 KiB.
pub const MAX_VALUE_LEN: usize = 128 * 1024;
/// The most variables in one blob.
pub const MAX_VARS: usize = 1024;
/// The most bytes of keys and values together: 1 MiB.
pub const MAX_TOTAL_LEN: usize = 1024 * 1024;

/// An environment variable. The value is wiped from memory when dropped,
/// and `Debug` shows the key only.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvVar {
    /// The name, `[A-Za-z_][A-Za-z0-9_]*` once checked.
    pub key: String,
    /// The value: a secret.
    pub value: Zeroizing<String>,
}

impl EnvVar {
    /// A variable (not checked: see [`check_vars`]).
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: Zeroizing::new(value.into()),
        }
    }
}

impl fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvVar")
            .field("key", &self.key)
            .field("value_len", &self.value.len())
            .finish_non_exhaustive()
    }
}

/// Whether `key` is a name the guest accepts: `^[a-zA-Z_][a-zA-Z0-9_]*$`
/// and at most [`MAX_KEY_LEN`] bytes.
pub fn is_valid_key(key: &str) -> bool {
    let mut bytes = key.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    key.len() <= MAX_KEY_LEN
        && (first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Upstream's limits on what a guest will use: at most [`MAX_VARS`]
/// variables, each key valid ([`is_valid_key`]), each value at most
/// [`MAX_VALUE_LEN`] bytes, and keys plus values at most [`MAX_TOTAL_LEN`]
/// bytes (a repeated key counts each time, as upstream counts it).
pub fn check_vars(vars: &[EnvVar]) -> Result<(), EnvError> {
    check_count(vars.len())?;
    check_each(vars)
}

pub(crate) fn check_count(count: usize) -> Result<(), EnvError> {
    if count > MAX_VARS {
        return Err(EnvError::TooMany { count });
    }
    Ok(())
}

/// The per-variable and total limits, without the count (upstream counts
/// every variable in the blob, but checks only those it keeps).
pub(crate) fn check_each(vars: &[EnvVar]) -> Result<(), EnvError> {
    let mut total = 0usize;
    for var in vars {
        if !is_valid_key(&var.key) {
            return Err(EnvError::InvalidKey {
                key: var.key.clone(),
            });
        }
        if var.value.len() > MAX_VALUE_LEN {
            return Err(EnvError::ValueTooLong {
                key: var.key.clone(),
                len: var.value.len(),
            });
        }
        total = total.saturating_add(var.key.len() + var.value.len());
        if total > MAX_TOTAL_LEN {
            return Err(EnvError::TotalTooLarge { len: total });
        }
    }
    Ok(())
}

/// One variable per key: a key given again replaces the earlier value (as
/// upstream's guest, which collects them in a map, and docker compose do),
/// keeping the place where the key first appeared.
pub(crate) fn last_wins(vars: Vec<EnvVar>) -> Vec<EnvVar> {
    let mut index: HashMap<String, usize> = HashMap::with_capacity(vars.len());
    let mut out: Vec<EnvVar> = Vec::with_capacity(vars.len());
    for var in vars {
        match index.get(&var.key) {
            // The replaced value is wiped as it drops.
            Some(&at) => out[at].value = var.value,
            None => {
                index.insert(var.key.clone(), out.len());
                out.push(var);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rule_is_upstreams_regex_and_length() {
        for ok in ["A", "_", "_1", "foo_BAR_9", "a".repeat(255).as_str()] {
            assert!(is_valid_key(ok), "{ok}");
        }
        for bad in [
            "",
            "1A",
            "A-B",
            "A.B",
            "A B",
            " A",
            "A=",
            "É",
            "a".repeat(256).as_str(),
        ] {
            assert!(!is_valid_key(bad), "{bad}");
        }
    }

    #[test]
    fn limits_at_their_boundaries() {
        // 1024 variables pass, 1025 do not.
        let many: Vec<EnvVar> = (0..MAX_VARS)
            .map(|i| EnvVar::new(format!("K{i}"), ""))
            .collect();
        assert_eq!(check_vars(&many), Ok(()));
        let mut more = many.clone();
        more.push(EnvVar::new("ONE_MORE", ""));
        assert_eq!(check_vars(&more), Err(EnvError::TooMany { count: 1025 }));

        // A 128 KiB value passes, one byte more does not.
        let value = "v".repeat(MAX_VALUE_LEN);
        assert_eq!(check_vars(&[EnvVar::new("BIG", value.clone())]), Ok(()));
        assert_eq!(
            check_vars(&[EnvVar::new("BIG", value + "v")]),
            Err(EnvError::ValueTooLong {
                key: "BIG".into(),
                len: MAX_VALUE_LEN + 1
            })
        );

        // Keys and values of exactly 1 MiB pass; one byte more does not.
        // Eight variables `Kn` (2 bytes) with values filling the rest.
        let per_var = MAX_TOTAL_LEN / 8;
        let mut vars: Vec<EnvVar> = (0..8)
            .map(|i| EnvVar::new(format!("K{i}"), "x".repeat(per_var - 2)))
            .collect();
        assert_eq!(check_vars(&vars), Ok(()));
        vars[7].value.push('x');
        assert_eq!(
            check_vars(&vars),
            Err(EnvError::TotalTooLarge {
                len: MAX_TOTAL_LEN + 1
            })
        );

        // A 255-byte key passes, 256 bytes do not.
        let key = "K".repeat(MAX_KEY_LEN);
        assert_eq!(check_vars(&[EnvVar::new(key.clone(), "v")]), Ok(()));
        let long = key + "K";
        assert_eq!(
            check_vars(&[EnvVar::new(long.clone(), "v")]),
            Err(EnvError::InvalidKey { key: long })
        );
    }

    #[test]
    fn last_wins_keeps_first_place() {
        let vars = vec![
            EnvVar::new("A", "1"),
            EnvVar::new("B", "2"),
            EnvVar::new("A", "3"),
        ];
        let out = last_wins(vars);
        assert_eq!(out, vec![EnvVar::new("A", "3"), EnvVar::new("B", "2")]);
    }

    #[test]
    fn debug_shows_the_key_not_the_value() {
        let text = format!("{:?}", EnvVar::new("TOKEN", "hunter2-secret"));
        assert!(text.contains("TOKEN"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
