//! Compatibility with upstream's official SDKs, run as they are published:
//! the Python `dstack-sdk` and the JS `@phala/dstack-sdk`, at the versions
//! pinned in `tests/sdk/requirements.txt` and `tests/sdk/package-lock.json`,
//! installed by `tests/sdk/install` (which `scripts/install-deps` runs).
//!
//! - Blobs made by each SDK's encrypt function, to the env public key our
//!   KMS code derives, open with our guest code under the env key our KMS
//!   releases.
//! - Each SDK's verify helper recovers our KMS's root key from our KMS's
//!   signatures (v1 and legacy), and ours accepts the signer as the SDK
//!   names it.
//! - A blob we seal decrypts with the spec's own Python recipe.
//!
//! A missing SDK fails the test, with how to install it: never a skip.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use dstack_envcrypt::{
    EnvVar, Signer, open, open_for_app, seal, verify_env_public_key, verify_env_public_key_legacy,
};
use dstack_keys::KmsRootKeys;
use serde_json::{Value, json};

const APP_ID: [u8; 20] = [0xa7; 20];

fn sdk_dir() -> PathBuf {
    match std::env::var_os("DSTACK_OFFICIAL_SDK_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/dstack-rs/official-sdk")
        }
    }
}

fn here() -> PathBuf {
    // The manifest dir cargo gives the running test, before the one compiled
    // in: a target dir shared by two checkouts can hold a build of the other.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/sdk")
}

#[derive(Clone, Copy, Debug)]
enum Sdk {
    Python,
    Js,
}

impl Sdk {
    /// The command that runs this SDK's driver, or a panic saying how to
    /// install the SDK.
    fn command(self) -> Command {
        let install = format!(
            "run {} (scripts/install-deps runs it), or point DSTACK_OFFICIAL_SDK_DIR at its output",
            here().join("install").display()
        );
        match self {
            Self::Python => {
                let python = sdk_dir().join("python/bin/python");
                assert!(
                    python.exists(),
                    "the official Python SDK (dstack-sdk) is not installed: {} is missing; {install}",
                    python.display()
                );
                let mut command = Command::new(python);
                command.arg(here().join("driver.py"));
                command
            }
            Self::Js => {
                let js = sdk_dir().join("js");
                assert!(
                    js.join("node_modules/@phala/dstack-sdk").exists(),
                    "the official JS SDK (@phala/dstack-sdk) is not installed in {}; {install}",
                    js.display()
                );
                let mut command = Command::new("node");
                command
                    .arg(here().join("driver.cjs"))
                    .env("DSTACK_OFFICIAL_SDK_JS", js);
                command
            }
        }
    }

    /// Runs the driver with `args`, `input` as JSON on stdin; its stdout.
    fn run(self, args: &[&str], input: &Value) -> String {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run the {self:?} SDK driver: {e}"));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{self:?} SDK driver {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
    }

    /// The installed version must be the pinned one (a stale install would
    /// test something else).
    fn check_version(self) {
        let pinned = match self {
            Self::Python => pin(&here().join("requirements.txt"), "dstack-sdk=="),
            Self::Js => pin(&here().join("package.json"), "\"@phala/dstack-sdk\": \""),
        };
        assert_eq!(
            self.run(&["version"], &json!({})),
            pinned,
            "the installed {self:?} SDK is not the pinned one: run {}",
            here().join("install").display()
        );
    }
}

/// The version after `prefix` in a pin file.
fn pin(file: &Path, prefix: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let at = text.find(prefix).expect("pinned") + prefix.len();
    text[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect()
}

fn root() -> KmsRootKeys {
    let ca = p256::SecretKey::from_slice(&[0x3c; 32]).unwrap();
    KmsRootKeys::new(ca, &[0x4d; 32]).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Variables that exercise JSON escaping both ways: quotes, backslashes,
/// control characters, non-ASCII (Python escapes it as \uXXXX, a surrogate
/// pair for the emoji), an empty value, a long one.
fn vars() -> Vec<EnvVar> {
    vec![
        EnvVar::new("DATABASE_URL", "postgres://user:p@ss@db:5432/app?x=1&y=2"),
        EnvVar::new("QUOTES", r#"say "hi" \ 'there' \n not a newline"#),
        EnvVar::new("CONTROL", "line 1\nline 2\r\n\ttabbed\u{1}"),
        EnvVar::new("UNICODE", "caf\u{e9} \u{4e2d}\u{6587} \u{1f600}"),
        EnvVar::new("EMPTY", ""),
        EnvVar::new("_LONG", "x".repeat(64 * 1024)),
    ]
}

fn env_json(vars: &[EnvVar]) -> Value {
    Value::Array(
        vars.iter()
            .map(|var| json!({"key": var.key, "value": var.value.as_str()}))
            .collect(),
    )
}

/// A blob from the SDK, to our KMS's env public key, opens with the env
/// key our KMS releases to the app.
fn sdk_blob_opens(sdk: Sdk, args: &[&str]) {
    sdk.check_version();
    let root = root();
    let env_key = root.env_public_key(&APP_ID, now()).unwrap();
    let vars = vars();
    let blob_hex = sdk.run(
        args,
        &json!({"public_key": hex::encode(env_key.public_key), "env": env_json(&vars)}),
    );
    // The SDKs give hex; the guest reads the raw bytes.
    let blob = hex::decode(&blob_hex).expect("the SDK returns hex");
    let secret = root.app_keys(&APP_ID, &[0x1d; 20]).unwrap().env_crypt_key;
    assert_eq!(open(&secret[..], &blob).unwrap(), vars);

    let allowed = vec!["UNICODE".to_string(), "EMPTY".to_string()];
    let app = open_for_app(&secret[..], &blob, &allowed).unwrap();
    assert_eq!(app.vars, vec![vars[3].clone(), vars[4].clone()]);
    assert_eq!(app.skipped, ["DATABASE_URL", "QUOTES", "CONTROL", "_LONG"]);

    // Another app's env key does not open it.
    let other = root.app_keys(&[0xa8; 20], &[]).unwrap().env_crypt_key;
    assert_eq!(
        open(&other[..], &blob),
        Err(dstack_envcrypt::EnvError::Decrypt)
    );
}

#[test]
fn python_sdk_encrypt_env_vars_opens() {
    sdk_blob_opens(Sdk::Python, &["encrypt", "async"]);
}

#[test]
fn python_sdk_encrypt_env_vars_sync_opens() {
    sdk_blob_opens(Sdk::Python, &["encrypt", "sync"]);
}

#[test]
fn js_sdk_encrypt_env_vars_opens() {
    sdk_blob_opens(Sdk::Js, &["encrypt"]);
}

/// The SDK's verify helpers recover our KMS's root key from our KMS's
/// signatures, and our verifier accepts that signer as the SDK names it.
fn sdk_accepts_our_kms_signature(sdk: Sdk) {
    sdk.check_version();
    let root = root();
    let now = now();
    let env_key = root.env_public_key(&APP_ID, now).unwrap();
    let request = |env: &dstack_keys::EnvPublicKey, app_id: &[u8]| {
        json!({
            "public_key": hex::encode(env.public_key),
            "signature_v1": hex::encode(&env.signature_v1),
            "signature": hex::encode(&env.signature),
            "app_id": hex::encode(app_id),
            "timestamp": env.timestamp,
        })
    };
    let answer: Value =
        serde_json::from_str(&sdk.run(&["verify"], &request(&env_key, &APP_ID))).unwrap();
    let root_key = format!("0x{}", hex::encode(root.k256_public_key()));
    assert_eq!(answer["v1"], Value::String(root_key.clone()), "{answer}");
    assert_eq!(
        answer["legacy"],
        Value::String(root_key.clone()),
        "{answer}"
    );

    // The signer as the SDK names it is the one our verifier trusts.
    let trusted: Signer = root_key.parse().unwrap();
    assert_eq!(
        verify_env_public_key(&env_key.signed(), &APP_ID, &trusted, now, 300),
        Ok(env_key.public_key)
    );
    let mut legacy_only = env_key.clone();
    legacy_only.signature_v1.clear();
    assert_eq!(
        verify_env_public_key_legacy(&legacy_only.signed(), &APP_ID, &trusted),
        Ok(env_key.public_key)
    );

    // For another app id, neither the SDK nor we see our KMS as the signer.
    let answer: Value =
        serde_json::from_str(&sdk.run(&["verify"], &request(&env_key, &[0xa8; 20]))).unwrap();
    assert_ne!(answer["v1"], Value::String(root_key.clone()), "{answer}");
    assert_ne!(answer["legacy"], Value::String(root_key), "{answer}");
    assert!(verify_env_public_key(&env_key.signed(), &[0xa8; 20], &trusted, now, 300).is_err());

    // A stale signature: the SDK refuses it as we do (its default is 300 s).
    let stale = root.env_public_key(&APP_ID, now - 3600).unwrap();
    let answer: Value =
        serde_json::from_str(&sdk.run(&["verify"], &request(&stale, &APP_ID))).unwrap();
    assert_eq!(answer["v1"], Value::Null, "{answer}");
    assert!(matches!(
        verify_env_public_key(&stale.signed(), &APP_ID, &trusted, now, 300),
        Err(dstack_envcrypt::EnvKeyError::Stale { .. })
    ));
}

#[test]
fn python_sdk_verifies_our_kms_signature() {
    sdk_accepts_our_kms_signature(Sdk::Python);
}

#[test]
fn js_sdk_verifies_our_kms_signature() {
    sdk_accepts_our_kms_signature(Sdk::Js);
}

/// The other way: a blob we seal decrypts with the spec's Python recipe
/// (X25519 and AES-GCM from `cryptography`, as upstream's tools use them).
#[test]
fn our_blob_decrypts_with_the_specs_python_recipe() {
    let root = root();
    let env_key = root.env_public_key(&APP_ID, now()).unwrap();
    let vars = vars();
    let blob = seal(&env_key.public_key, &vars, &mut rand::rngs::OsRng).unwrap();
    let secret = root.app_keys(&APP_ID, &[]).unwrap().env_crypt_key;
    let plaintext = Sdk::Python.run(
        &["decrypt"],
        &json!({"secret": hex::encode(&secret[..]), "blob": hex::encode(&blob)}),
    );
    let decoded: Value = serde_json::from_str(&plaintext).unwrap();
    assert_eq!(decoded, json!({"env": env_json(&vars)}));
}
