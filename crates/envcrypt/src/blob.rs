//! The blob: ephemeral X25519 public key (32) ‖ IV (12) ‖ AES-256-GCM
//! ciphertext ‖ tag (16), keyed by the raw X25519 shared secret (no KDF,
//! no associated data), as upstream's `dstack-util/src/crypto.rs`
//! `dh_decrypt` reads it.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use rand_core::{CryptoRng, RngCore};
use x25519_dalek::{EphemeralSecret, PublicKey, SharedSecret, StaticSecret};
use zeroize::Zeroizing;

use crate::allowed::filter_allowed;
use crate::var::{check_count, check_each, last_wins};
use crate::{EnvError, EnvVar, plaintext};

/// Length of the ephemeral X25519 public key that starts a blob.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of the AES-GCM IV that follows it.
pub const IV_LEN: usize = 12;
/// Length of the AES-GCM tag that ends a blob.
pub const TAG_LEN: usize = 16;
/// A blob's fixed parts: the size of an empty plaintext sealed.
pub const BLOB_OVERHEAD: usize = PUBLIC_KEY_LEN + IV_LEN + TAG_LEN;
/// The largest blob a guest reads: upstream copies at most 256 KiB of
/// `.encrypted-env` from the host.
pub const MAX_BLOB_LEN: usize = 256 * 1024;

/// Encrypts `vars` to an app's env public key (from the KMS, checked with
/// [`crate::verify_env_public_key`]), as upstream's SDKs and CLI do, with
/// a fresh ephemeral key and IV from `rng`. The result is the raw blob;
/// upstream's tools show it as hex.
///
/// Refuses what a guest would refuse ([`crate::check_vars`], a blob over
/// [`MAX_BLOB_LEN`]), so a mistake shows at deploy time rather than as a
/// failed boot, and refuses a low-order public key
/// ([`EnvError::WeakSharedSecret`]), which would make the AES key public.
/// A key given twice is sealed twice; the guest keeps the last.
pub fn seal(
    public_key: &[u8; 32],
    vars: &[EnvVar],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>, EnvError> {
    crate::check_vars(vars)?;
    let json = plaintext::encode(vars);
    let len = BLOB_OVERHEAD + json.len();
    if len > MAX_BLOB_LEN {
        return Err(EnvError::TooLarge { len });
    }
    seal_bytes(public_key, &json, rng)
}

/// Seals any plaintext (no checks on it).
pub(crate) fn seal_bytes(
    public_key: &[u8; 32],
    plaintext: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>, EnvError> {
    let ephemeral = EphemeralSecret::random_from_rng(&mut *rng);
    let ephemeral_public = PublicKey::from(&ephemeral);
    let shared = ephemeral.diffie_hellman(&PublicKey::from(*public_key));
    let cipher = cipher(&shared)?;
    let mut iv = [0u8; IV_LEN];
    rng.fill_bytes(&mut iv);

    let mut blob = Vec::with_capacity(BLOB_OVERHEAD + plaintext.len());
    blob.extend_from_slice(ephemeral_public.as_bytes());
    blob.extend_from_slice(&iv);
    blob.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_in_place_detached(&Nonce::from(iv), b"", &mut blob[PUBLIC_KEY_LEN + IV_LEN..])
        .map_err(|_| EnvError::TooLarge { len: blob.len() })?;
    blob.extend_from_slice(&tag);
    Ok(blob)
}

/// The variables in `blob`, decrypted with the app's env key (the raw
/// X25519 secret a KMS releases as `env_crypt_key`), every one checked
/// against the guest's limits ([`crate::check_vars`]); a key given twice
/// keeps its last value, in the place it first appeared.
///
/// An empty blob is no env at all (`Ok` and empty, whatever the key), as
/// upstream reads an absent or empty `.encrypted-env`. A non-empty blob
/// without an env key is [`EnvError::NoEnvKey`] (upstream silently drops
/// the env then).
///
/// This checks even variables the app does not allow; a guest applies
/// upstream's rules exactly with [`open_for_app`].
pub fn open(env_secret: &[u8], blob: &[u8]) -> Result<Vec<EnvVar>, EnvError> {
    let Some(json) = decrypt(env_secret, blob)? else {
        return Ok(Vec::new());
    };
    let vars = plaintext::decode(&json).map_err(EnvError::Plaintext)?;
    crate::check_vars(&vars)?;
    Ok(last_wins(vars))
}

/// What a guest gives an app from its encrypted env.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AppEnv {
    /// The variables the app allows, checked, one per key.
    pub vars: Vec<EnvVar>,
    /// Keys in the blob that the app does not allow (each once, in order),
    /// for a warning. They come from the blob: print them escaped (`{:?}`).
    pub skipped: Vec<String>,
}

/// [`open`] as upstream's guest applies it (`parse_env_file.rs`): at most
/// [`crate::MAX_VARS`] variables in the blob; then only keys listed in the
/// app's `allowed_envs` are kept, and only those are held to the key,
/// value and total limits (so a blob with an odd variable the app does not
/// use still boots, as it does upstream).
pub fn open_for_app(
    env_secret: &[u8],
    blob: &[u8],
    allowed: &[String],
) -> Result<AppEnv, EnvError> {
    let Some(json) = decrypt(env_secret, blob)? else {
        return Ok(AppEnv::default());
    };
    let vars = plaintext::decode(&json).map_err(EnvError::Plaintext)?;
    check_count(vars.len())?;
    let (kept, skipped) = filter_allowed(vars, allowed);
    check_each(&kept)?;
    Ok(AppEnv {
        vars: last_wins(kept),
        skipped,
    })
}

/// The plaintext of `blob`, or `None` for an empty blob.
pub(crate) fn decrypt(
    env_secret: &[u8],
    blob: &[u8],
) -> Result<Option<Zeroizing<Vec<u8>>>, EnvError> {
    if blob.is_empty() {
        return Ok(None);
    }
    if env_secret.is_empty() {
        return Err(EnvError::NoEnvKey);
    }
    let secret = <[u8; 32]>::try_from(env_secret).map_err(|_| EnvError::EnvKeyLength {
        len: env_secret.len(),
    })?;
    let secret = StaticSecret::from(secret);
    if blob.len() > MAX_BLOB_LEN {
        return Err(EnvError::TooLarge { len: blob.len() });
    }
    if blob.len() < BLOB_OVERHEAD {
        return Err(EnvError::Truncated { len: blob.len() });
    }
    let (ephemeral, rest) = blob.split_at(PUBLIC_KEY_LEN);
    let (iv, rest) = rest.split_at(IV_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let ephemeral = <[u8; PUBLIC_KEY_LEN]>::try_from(ephemeral).expect("split at 32 bytes");
    let iv = <[u8; IV_LEN]>::try_from(iv).expect("split at 12 bytes");
    let tag = <[u8; TAG_LEN]>::try_from(tag).expect("split at 16 bytes");
    let shared = secret.diffie_hellman(&PublicKey::from(ephemeral));
    let cipher = cipher(&shared)?;
    let mut plaintext = Zeroizing::new(ciphertext.to_vec());
    cipher
        .decrypt_in_place_detached(&Nonce::from(iv), b"", &mut plaintext, &Tag::from(tag))
        .map_err(|_| EnvError::Decrypt)?;
    Ok(Some(plaintext))
}

/// AES-256-GCM keyed by the raw shared secret, refusing an all-zero one.
fn cipher(shared: &SharedSecret) -> Result<Aes256Gcm, EnvError> {
    if !shared.was_contributory() {
        return Err(EnvError::WeakSharedSecret);
    }
    Ok(Aes256Gcm::new(shared.as_bytes().into()))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::PlaintextError;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn key_pair() -> ([u8; 32], [u8; 32]) {
        let secret = [0x42; 32];
        let public = PublicKey::from(&StaticSecret::from(secret)).to_bytes();
        (secret, public)
    }

    /// Upstream's own vector (`dstack-util/src/crypto.rs` `test_dh_decrypt`):
    /// a blob made by its JS code, with plaintext `[{"key":"","value":""}]`.
    #[test]
    fn decrypts_upstreams_vector() {
        let secret =
            hex::decode("7c282bf94b35dc47801dc953bfa0896fc2bd313381d3e8eca4e42f6536d2a96f")
                .unwrap();
        let blob = hex::decode(concat!(
            "0bd18749612f4c8b9dd583c7d6a646b90abd34e3c731a7708d0caf9039095641",
            "e1f0948e775f0b7351788db7f246d51806954626dcccb6a60d64665ca3715c6b",
            "ef75616cab476d27bba04080361200d6a58cec"
        ))
        .unwrap();
        let plaintext = decrypt(&secret, &blob).unwrap().unwrap();
        assert_eq!(&plaintext[..], br#"[{"key":"","value":""}]"#);
        // Not upstream's env shape (an array, not {"env":[…]}): refused.
        assert!(matches!(
            open(&secret, &blob),
            Err(EnvError::Plaintext(PlaintextError { kind: "data", .. }))
        ));
    }

    #[test]
    fn round_trip() {
        let (secret, public) = key_pair();
        let vars = vec![
            EnvVar::new("FOO", "bar"),
            EnvVar::new("EMPTY", ""),
            EnvVar::new("MULTI", "line 1\nline \"2\"\t\u{e9}\u{1f600}"),
        ];
        let blob = seal(&public, &vars, &mut rng()).unwrap();
        assert_eq!(open(&secret, &blob).unwrap(), vars);
        // The layout: the ephemeral key, then the IV, then ciphertext and tag.
        let json = plaintext::encode(&vars);
        assert_eq!(blob.len(), BLOB_OVERHEAD + json.len());
        assert_ne!(&blob[..32], &public[..]);
        // A fresh ephemeral key and IV each time.
        let again = seal(&public, &vars, &mut StdRng::seed_from_u64(8)).unwrap();
        assert_ne!(blob[..44], again[..44]);
        assert_eq!(open(&secret, &again).unwrap(), vars);
        // Nothing sealed: still a valid blob.
        let empty = seal(&public, &[], &mut rng()).unwrap();
        assert_eq!(open(&secret, &empty).unwrap(), vec![]);
    }

    /// The blob is decryptable with nothing but the spec: X25519, the raw
    /// shared secret as the AES-256-GCM key, the 12-byte IV, no AAD.
    #[test]
    fn layout_is_the_specs() {
        use aes_gcm::aead::Aead;
        let (secret, public) = key_pair();
        let blob = seal(&public, &[EnvVar::new("A", "b")], &mut rng()).unwrap();
        let ephemeral: [u8; 32] = blob[..32].try_into().unwrap();
        let shared = StaticSecret::from(secret).diffie_hellman(&PublicKey::from(ephemeral));
        let plain = Aes256Gcm::new_from_slice(shared.as_bytes())
            .unwrap()
            .decrypt(
                &Nonce::from(<[u8; 12]>::try_from(&blob[32..44]).unwrap()),
                &blob[44..],
            )
            .unwrap();
        assert_eq!(plain, br#"{"env":[{"key":"A","value":"b"}]}"#);
    }

    #[test]
    fn repeated_keys_keep_the_last_value() {
        let (secret, public) = key_pair();
        let vars = [
            EnvVar::new("A", "1"),
            EnvVar::new("B", "2"),
            EnvVar::new("A", "3"),
        ];
        let blob = seal(&public, &vars, &mut rng()).unwrap();
        assert_eq!(
            open(&secret, &blob).unwrap(),
            vec![EnvVar::new("A", "3"), EnvVar::new("B", "2")]
        );
    }

    #[test]
    fn wrong_key_or_altered_blob_is_decrypt() {
        let (_, public) = key_pair();
        let blob = seal(&public, &[EnvVar::new("A", "b")], &mut rng()).unwrap();
        assert_eq!(open(&[0x43; 32], &blob), Err(EnvError::Decrypt));
        let (secret, _) = key_pair();
        for at in [0, 32, 44, blob.len() - 1] {
            let mut altered = blob.clone();
            altered[at] ^= 1;
            assert_eq!(open(&secret, &altered), Err(EnvError::Decrypt), "byte {at}");
        }
        assert!(
            EnvError::Decrypt
                .to_string()
                .contains("not encrypted to this app's env key")
        );
        assert!(EnvError::Decrypt.to_string().contains("altered"));
    }

    #[test]
    fn sizes_at_their_boundaries() {
        let (secret, public) = key_pair();
        // Truncated below the 60 fixed bytes; exactly 60 is an (unauthentic) empty message.
        assert_eq!(
            open(&secret, &[1; 59]),
            Err(EnvError::Truncated { len: 59 })
        );
        assert_eq!(open(&secret, &[1; 1]), Err(EnvError::Truncated { len: 1 }));
        assert_eq!(open(&secret, &[9; 60]), Err(EnvError::Decrypt));
        // Empty: no env.
        assert_eq!(open(&secret, &[]), Ok(vec![]));

        // A valid blob of exactly 256 KiB opens; one byte more is refused
        // before anything is decrypted.
        let blob = blob_of_len(&public, MAX_BLOB_LEN);
        assert_eq!(blob.len(), MAX_BLOB_LEN);
        assert_eq!(open(&secret, &blob).unwrap().len(), 3);
        let mut longer = blob.clone();
        longer.push(0);
        assert_eq!(
            open(&secret, &longer),
            Err(EnvError::TooLarge {
                len: MAX_BLOB_LEN + 1
            })
        );
        // seal refuses to make a blob the guest would refuse.
        let vars = open(&secret, &blob).unwrap();
        let mut bigger = vars.clone();
        bigger[2].value.push('x');
        assert_eq!(
            seal(&public, &vars, &mut rng()).unwrap().len(),
            MAX_BLOB_LEN
        );
        assert_eq!(
            seal(&public, &bigger, &mut rng()),
            Err(EnvError::TooLarge {
                len: MAX_BLOB_LEN + 1
            })
        );
    }

    /// A valid blob of exactly `len` bytes: three variables whose values
    /// fill the plaintext.
    fn blob_of_len(public: &[u8; 32], len: usize) -> Vec<u8> {
        let empty = plaintext::encode(&[
            EnvVar::new("A", ""),
            EnvVar::new("B", ""),
            EnvVar::new("C", ""),
        ]);
        let fill = len - BLOB_OVERHEAD - empty.len();
        let vars = [
            EnvVar::new("A", "a".repeat(fill / 3)),
            EnvVar::new("B", "b".repeat(fill / 3)),
            EnvVar::new("C", "c".repeat(fill - 2 * (fill / 3))),
        ];
        seal(public, &vars, &mut rng()).unwrap()
    }

    /// Limits a blob can reach under 256 KiB, checked by `open` at their
    /// boundaries (the 1 MiB total cannot fit in a blob; `var.rs` tests it).
    #[test]
    fn open_checks_limits_at_their_boundaries() {
        let (secret, public) = key_pair();
        let raw = |vars: &[EnvVar]| {
            let json = plaintext::encode(vars);
            seal_bytes(&public, &json, &mut rng()).unwrap()
        };

        let value = "v".repeat(crate::MAX_VALUE_LEN);
        let ok = raw(&[EnvVar::new("BIG", value.clone())]);
        assert_eq!(
            open(&secret, &ok).unwrap()[0].value.len(),
            crate::MAX_VALUE_LEN
        );
        let over = raw(&[EnvVar::new("BIG", value + "v")]);
        assert_eq!(
            open(&secret, &over),
            Err(EnvError::ValueTooLong {
                key: "BIG".into(),
                len: crate::MAX_VALUE_LEN + 1
            })
        );

        let many: Vec<EnvVar> = (0..crate::MAX_VARS)
            .map(|i| EnvVar::new(format!("K{i}"), ""))
            .collect();
        assert_eq!(open(&secret, &raw(&many)).unwrap().len(), crate::MAX_VARS);
        let mut more = many;
        more.push(EnvVar::new("K1024", ""));
        assert_eq!(
            open(&secret, &raw(&more)),
            Err(EnvError::TooMany { count: 1025 })
        );

        let key = "K".repeat(crate::MAX_KEY_LEN);
        assert_eq!(
            open(&secret, &raw(&[EnvVar::new(key.clone(), "v")])).unwrap()[0].key,
            key
        );
        let long = key + "K";
        assert_eq!(
            open(&secret, &raw(&[EnvVar::new(long.clone(), "v")])),
            Err(EnvError::InvalidKey { key: long })
        );
        assert_eq!(
            open(&secret, &raw(&[EnvVar::new("NO-DASH", "v")])),
            Err(EnvError::InvalidKey {
                key: "NO-DASH".into()
            })
        );
    }

    /// An all-zero shared secret, from a low-order point, is refused both
    /// ways: sealing to such a public key, and opening a blob whose
    /// ephemeral key is one.
    #[test]
    fn low_order_points_give_weak_shared_secret() {
        let (secret, public) = key_pair();
        // u = 0 and u = 1 are points of small order on Curve25519.
        let mut one = [0u8; 32];
        one[0] = 1;
        for low in [[0u8; 32], one] {
            assert_eq!(
                seal(&low, &[EnvVar::new("A", "b")], &mut rng()),
                Err(EnvError::WeakSharedSecret)
            );
            let mut blob = seal(&public, &[EnvVar::new("A", "b")], &mut rng()).unwrap();
            blob[..32].copy_from_slice(&low);
            assert_eq!(open(&secret, &blob), Err(EnvError::WeakSharedSecret));
        }
    }

    #[test]
    fn missing_or_malformed_env_key() {
        let (_, public) = key_pair();
        let blob = seal(&public, &[EnvVar::new("A", "b")], &mut rng()).unwrap();
        assert_eq!(open(&[], &blob), Err(EnvError::NoEnvKey));
        assert_eq!(
            open(&[1; 31], &blob),
            Err(EnvError::EnvKeyLength { len: 31 })
        );
        // No env and no key: nothing to do.
        assert_eq!(open(&[], &[]), Ok(vec![]));
        assert_eq!(open_for_app(&[], &[], &[]), Ok(AppEnv::default()));
        assert_eq!(open_for_app(&[], &blob, &[]), Err(EnvError::NoEnvKey));
    }

    #[test]
    fn open_for_app_applies_upstreams_rules() {
        let (secret, public) = key_pair();
        let allowed = vec!["A".to_string(), "C".to_string()];
        let raw = |vars: &[EnvVar]| {
            let json = plaintext::encode(vars);
            seal_bytes(&public, &json, &mut rng()).unwrap()
        };
        let blob = raw(&[
            EnvVar::new("A", "1"),
            EnvVar::new("B", "2"),
            // Not allowed, so neither its name nor its size matter.
            EnvVar::new("not-a-name", "x".repeat(crate::MAX_VALUE_LEN + 1)),
            EnvVar::new("C", "3"),
            EnvVar::new("A", "4"),
        ]);
        let env = open_for_app(&secret, &blob, &allowed).unwrap();
        assert_eq!(env.vars, vec![EnvVar::new("A", "4"), EnvVar::new("C", "3")]);
        assert_eq!(env.skipped, vec!["B".to_string(), "not-a-name".to_string()]);
        // `open` holds every variable to the limits.
        assert!(matches!(
            open(&secret, &blob),
            Err(EnvError::InvalidKey { .. })
        ));

        // Allowed variables are checked; the count covers the whole blob.
        let bad = raw(&[EnvVar::new("A", "x".repeat(crate::MAX_VALUE_LEN + 1))]);
        assert!(matches!(
            open_for_app(&secret, &bad, &allowed),
            Err(EnvError::ValueTooLong { .. })
        ));
        let many: Vec<EnvVar> = (0..=crate::MAX_VARS)
            .map(|i| EnvVar::new(format!("K{i}"), ""))
            .collect();
        assert_eq!(
            open_for_app(&secret, &raw(&many), &allowed),
            Err(EnvError::TooMany { count: 1025 })
        );
    }

    /// No error, from any path, shows a value.
    #[test]
    fn errors_never_show_values() {
        const SECRET: &str = "s3cr3t-VALUE-do-not-print";
        let (secret, public) = key_pair();
        let raw = |json: &[u8]| seal_bytes(&public, json, &mut rng()).unwrap();
        // One byte over the value limit, and exactly at it.
        let big = format!("{SECRET}{}", "x".repeat(crate::MAX_VALUE_LEN));
        let full = big[..crate::MAX_VALUE_LEN].to_string();
        let many: Vec<EnvVar> = (0..=crate::MAX_VARS)
            .map(|i| EnvVar::new(format!("K{i}"), SECRET))
            .collect();
        let huge: Vec<EnvVar> = (0..9)
            .map(|i| EnvVar::new(format!("K{i}"), full.clone()))
            .collect();
        let mut errors = vec![
            open(&secret, &raw(format!(r#"{{"env":"{SECRET}"}}"#).as_bytes())).unwrap_err(),
            open(&secret, &raw(format!(r#"{{"env":[{SECRET}]}}"#).as_bytes())).unwrap_err(),
            open(
                &secret,
                &raw(format!(r#"{{"env":[{{"key":"K","value":"{SECRET}"#).as_bytes()),
            )
            .unwrap_err(),
            open(
                &secret,
                &raw(&plaintext::encode(&[EnvVar::new("BIG", big.clone())])),
            )
            .unwrap_err(),
            open(
                &secret,
                &raw(&plaintext::encode(&[EnvVar::new("A B", SECRET)])),
            )
            .unwrap_err(),
            open(&secret, &raw(&plaintext::encode(&many))).unwrap_err(),
            open(
                &[0x43; 32],
                &raw(&plaintext::encode(&[EnvVar::new("A", SECRET)])),
            )
            .unwrap_err(),
            seal(&public, &huge, &mut rng()).unwrap_err(),
            seal(&public, &[EnvVar::new("A", big.clone())], &mut rng()).unwrap_err(),
            seal(&[0; 32], &[EnvVar::new("A", SECRET)], &mut rng()).unwrap_err(),
            seal(&public, &huge[..2], &mut rng()).unwrap_err(),
            crate::check_vars(&huge).unwrap_err(),
        ];
        errors.push(EnvError::NoEnvKey);
        // Every kind of refusal a value could reach.
        let kinds: std::collections::BTreeSet<String> = errors
            .iter()
            .map(|e| {
                format!("{e:?}")
                    .split([' ', '('])
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            [
                "Decrypt",
                "InvalidKey",
                "NoEnvKey",
                "Plaintext",
                "TooLarge",
                "TooMany",
                "TotalTooLarge",
                "ValueTooLong",
                "WeakSharedSecret"
            ]
        );
        for err in errors {
            let text = format!("{err} | {err:?}");
            assert!(!text.contains("s3cr3t"), "{text}");
        }
    }
}
