//! `.env` file → verified KMS key → sealed blob that the app's env secret
//! opens; every way the KMS's answer is refused; and the whole flow
//! against a fake supervisor on a unix socket.

use std::path::PathBuf;
use std::sync::Arc;

use dstack_envcrypt::open_for_app;
use dstack_keys::KmsRootKeys;
use dstack_kms_keystore::RootKeys;
use dstack_supervisor::VmmError;
use dstack_supervisor::api::{Command, Reply, RequestHandler, router, server};

use super::*;
use crate::client::Endpoint;

const APP_ID: [u8; 20] = [0x5a; 20];
const NOW: u64 = 1_750_000_000;

fn root() -> KmsRootKeys {
    RootKeys::generate().unwrap().root
}

fn response(root: &KmsRootKeys, app_id: &[u8], at: u64) -> PublicKeyResponse {
    let env = root.env_public_key(app_id, at).unwrap();
    PublicKeyResponse {
        public_key: env.public_key.to_vec(),
        signature: env.signature,
        timestamp: env.timestamp,
        signature_v1: env.signature_v1,
    }
}

fn signer_of(root: &KmsRootKeys) -> Signer {
    Signer::from_public_key(&root.k256_public_key()).unwrap()
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn rejected(result: Result<Vec<u8>, Failure>) -> String {
    match result {
        Err(Failure::Rejected(reason)) => reason,
        Err(other) => panic!("expected a rejection, got {other:?}"),
        Ok(_) => panic!("expected a rejection, got a blob"),
    }
}

#[test]
fn an_env_file_is_sealed_so_that_the_apps_secret_opens_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        ".env",
        b"# secrets\nDB_PASSWORD='p@ss $word'\nexport API_KEY=abc123 # comment\nDEBUG=1\n",
    );
    let vars = read_env_file(&path).unwrap();
    let keys: Vec<&str> = vars.iter().map(|v| v.key.as_str()).collect();
    assert_eq!(keys, ["DB_PASSWORD", "API_KEY", "DEBUG"]);
    let allowed = vec!["DB_PASSWORD".to_owned(), "API_KEY".to_owned()];
    assert_eq!(dropped_keys(&vars, &allowed), ["DEBUG"]);

    let root = root();
    let blob = seal_for(
        &vars,
        &response(&root, &APP_ID, NOW),
        &APP_ID,
        &[signer_of(&root)],
        NOW,
    )
    .unwrap();
    // What the KMS releases to this app opens it, as its guest would.
    let secret = root.app_keys(&APP_ID, &[]).unwrap().env_crypt_key;
    let env = open_for_app(&secret[..], &blob, &allowed).unwrap();
    let opened: Vec<(&str, &str)> = env
        .vars
        .iter()
        .map(|v| (v.key.as_str(), v.value.as_str()))
        .collect();
    assert_eq!(
        opened,
        [("DB_PASSWORD", "p@ss $word"), ("API_KEY", "abc123")]
    );
    assert_eq!(env.skipped, ["DEBUG"]);
    // Another app's secret does not.
    let other = root.app_keys(&[0x11; 20], &[]).unwrap().env_crypt_key;
    assert!(open_for_app(&other[..], &blob, &allowed).is_err());
}

#[test]
fn env_file_errors_name_the_line_and_never_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, ".env", b"OK=1\nSECRET=\"hunter2\n");
    let Err(Failure::BadInput(err)) = read_env_file(&path) else {
        panic!("a bad file is bad input");
    };
    let text = format!("{err:#}");
    assert!(text.contains("line 2"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(matches!(
        read_env_file(&dir.path().join("missing")),
        Err(Failure::BadInput(_))
    ));
}

#[test]
fn the_kms_key_is_refused_unless_a_trusted_signer_signed_it_recently_for_this_app() {
    let root = root();
    let vars = vec![EnvVar::new("A", "1")];
    let good = response(&root, &APP_ID, NOW);
    let trusted = signer_of(&root);

    // By address, and among other trusted signers: accepted.
    let by_address = Signer::from_address(trusted.address());
    let stranger = signer_of(&self::root());
    for signers in [vec![by_address], vec![stranger, trusted]] {
        seal_for(&vars, &good, &APP_ID, &signers, NOW).unwrap();
    }

    // Another KMS's key.
    let text = rejected(seal_for(&vars, &good, &APP_ID, &[stranger], NOW));
    assert!(
        text.contains(&hex::encode(trusted.address())) && text.contains("not by the trusted"),
        "{text}"
    );
    let another = signer_of(&self::root());
    let text = rejected(seal_for(&vars, &good, &APP_ID, &[stranger, another], NOW));
    assert!(text.contains("none of the 2 trusted KMS signers"), "{text}");

    // Stale, or from the future (upstream's SDK window).
    let text = rejected(seal_for(
        &vars,
        &good,
        &APP_ID,
        &[trusted],
        NOW + DEFAULT_MAX_AGE_SECS + 1,
    ));
    assert!(text.contains("more than the 300s allowed"), "{text}");
    seal_for(
        &vars,
        &good,
        &APP_ID,
        &[trusted],
        NOW + DEFAULT_MAX_AGE_SECS,
    )
    .unwrap();
    let text = rejected(seal_for(&vars, &good, &APP_ID, &[trusted], NOW - 61));
    assert!(text.contains("after now"), "{text}");

    // Signed for another app, or a swapped key: the signature recovers
    // some other key, which is not trusted.
    let other_app = response(&root, &[0x11; 20], NOW);
    let text = rejected(seal_for(&vars, &other_app, &APP_ID, &[trusted], NOW));
    assert!(text.contains("not by the trusted KMS signer"), "{text}");
    let mut swapped = good.clone();
    swapped.public_key = response(&self::root(), &APP_ID, NOW).public_key;
    assert!(matches!(
        verify_env_key(&swapped, &APP_ID, &[trusted], NOW),
        Err(EnvKeyError::UntrustedSigner { .. } | EnvKeyError::BadSignature { .. })
    ));

    // A response without signature_v1 (legacy only) or with a broken one.
    let mut legacy = good.clone();
    legacy.signature_v1.clear();
    assert_eq!(
        verify_env_key(&legacy, &APP_ID, &[trusted], NOW),
        Err(EnvKeyError::NoSignatureV1)
    );
    let mut broken = good.clone();
    broken.signature_v1.truncate(64);
    assert!(matches!(
        verify_env_key(&broken, &APP_ID, &[trusted], NOW),
        Err(EnvKeyError::BadSignature { .. })
    ));
    let mut short = good;
    short.public_key.pop();
    assert_eq!(
        verify_env_key(&short, &APP_ID, &[trusted], NOW),
        Err(EnvKeyError::PublicKeyLength { len: 31 })
    );
}

#[test]
fn signers_parse_as_keys_or_addresses() {
    let root = root();
    let key = hex::encode(root.k256_public_key());
    let signer = parse_signer(&format!("0x{key}")).unwrap();
    assert_eq!(signer, signer_of(&root));
    assert_eq!(parse_signer(&key).unwrap(), signer);
    let address = format!("0x{}", hex::encode(signer.address()));
    assert_eq!(parse_signer(&address).unwrap().address(), signer.address());
    assert!(parse_signer("0xnothex").unwrap_err().contains("hex"));
    assert!(parse_signer("0x1234").unwrap_err().contains("20-byte"));
    let notice = tofu_notice(&signer);
    assert!(
        notice.contains(&format!("--kms-signer 0x{key}")),
        "{notice}"
    );
}

#[test]
fn ready_blobs_are_hex_text_or_binary() {
    let dir = tempfile::tempdir().unwrap();
    let sdk = write(&dir, "sdk.hex", b"0xABcd01\n");
    assert_eq!(ready_blob(&sdk).unwrap(), "abcd01");
    let binary = write(&dir, "env.bin", &[0xff, 0x00, b'a', 0x10]);
    assert_eq!(ready_blob(&binary).unwrap(), "ff006110");
    // Over the guest's limit: passed on (with a warning), not refused.
    let big = write(&dir, "big.bin", &vec![0xee; MAX_BLOB_LEN + 1]);
    assert_eq!(ready_blob(&big).unwrap().len(), 2 * (MAX_BLOB_LEN + 1));
    let empty = write(&dir, "empty", b" \n");
    assert!(matches!(ready_blob(&empty), Err(Failure::BadInput(_))));
}

#[test]
fn the_app_id_is_the_pinned_one_or_the_composes_own() {
    let compose = r#"{"name":"x"}"#;
    let own = dstack_compose::app_id(&dstack_compose::compose_hash(compose.as_bytes()));
    assert_eq!(deploy_app_id(None, compose).unwrap(), own);
    let pinned = format!("0x{}", hex::encode(APP_ID));
    assert_eq!(deploy_app_id(Some(&pinned), compose).unwrap(), APP_ID);
    assert!(deploy_app_id(Some("0x1234"), compose).is_err());
}

fn app_compose(kms: bool) -> String {
    serde_json::json!({
        "manifest_version": 2, "name": "x", "runner": "docker-compose",
        "docker_compose_file": "services:\n  a:\n    image: ${IMAGE}\n",
        "kms_enabled": kms, "allowed_envs": ["A"],
    })
    .to_string()
}

#[test]
fn an_env_file_needs_a_kms_app() {
    assert!(kms_app(&app_compose(true)).is_ok());
    let Err(Failure::BadInput(err)) = kms_app(&app_compose(false)) else {
        panic!("refused");
    };
    assert!(err.to_string().contains("key provider is none"), "{err}");
}

/// A supervisor that answers the two KMS relays from a KMS root, and
/// records what it was asked.
struct FakeSupervisor {
    root: KmsRootKeys,
    seen: std::sync::Mutex<Vec<String>>,
}

impl RequestHandler for FakeSupervisor {
    async fn handle(&self, command: Command) -> Result<Reply, VmmError> {
        self.seen.lock().unwrap().push(format!("{command:?}"));
        match command {
            Command::EnvKey(req) => {
                let app_id = hex::decode(&req.app_id).unwrap();
                Ok(Reply::EnvKey(response(&self.root, &app_id, now_unix())))
            }
            Command::KmsMeta(_) => Ok(Reply::KmsMeta(Box::new(GetMetaResponse {
                k256_pubkey: self.root.k256_public_key().to_vec(),
                ..GetMetaResponse::default()
            }))),
            other => Err(VmmError::invalid(
                "command",
                format!("unexpected {other:?}"),
            )),
        }
    }
}

#[tokio::test]
async fn deploy_seals_through_the_supervisor_relays() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("supervisor.sock");
    let fake = Arc::new(FakeSupervisor {
        root: root(),
        seen: Default::default(),
    });
    let listener = server::bind_unix(&socket).await.unwrap();
    tokio::spawn(server::serve_unix(listener, router(fake.clone())));
    let client = Client::new(Endpoint::Unix(socket));
    let env_file = write(&dir, ".env", b"A=secret-value\n");
    let compose = app_compose(true);
    let app_id = deploy_app_id(None, &compose).unwrap();
    let allowed = ["A".to_owned()];
    let secret = fake.root.app_keys(&app_id, &[]).unwrap().env_crypt_key;

    // No signer given: the KMS's reported key is trusted (announced).
    let mut options = EnvOptions {
        env_file: Some(&env_file),
        encrypted_env: None,
        signers: &[],
        kms_url: "https://10.0.2.2:8000",
        app_id: None,
    };
    let blob = encrypted_env(&options, &compose, &client).await.unwrap();
    let env = open_for_app(&secret[..], &hex::decode(&blob).unwrap(), &allowed).unwrap();
    assert_eq!(env.vars[0].value.as_str(), "secret-value");
    {
        let seen = fake.seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(
            seen[0].contains(&hex::encode(app_id)) && seen[0].contains("https://10.0.2.2:8000"),
            "{}",
            seen[0]
        );
        assert!(seen[1].starts_with("KmsMeta"), "{}", seen[1]);
        assert!(!seen.iter().any(|s| s.contains("secret-value")));
    }

    // A pinned signer: no GetMeta; a wrong one is refused.
    let pinned = [signer_of(&fake.root)];
    options.signers = &pinned;
    let blob = encrypted_env(&options, &compose, &client).await.unwrap();
    open_for_app(&secret[..], &hex::decode(&blob).unwrap(), &allowed).unwrap();
    assert_eq!(fake.seen.lock().unwrap().len(), 3);
    let wrong = [signer_of(&root())];
    options.signers = &wrong;
    assert!(matches!(
        encrypted_env(&options, &compose, &client).await,
        Err(Failure::Rejected(_))
    ));

    // A ready blob goes as it is, without asking anyone.
    let ready = write(&dir, "env.hex", b"c0ffee\n");
    let options = EnvOptions {
        env_file: None,
        encrypted_env: Some(&ready),
        signers: &[],
        kms_url: "",
        app_id: None,
    };
    assert_eq!(
        encrypted_env(&options, &compose, &client).await.unwrap(),
        "c0ffee"
    );
    assert_eq!(fake.seen.lock().unwrap().len(), 4);
}
