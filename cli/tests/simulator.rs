//! `dstack simulator` end to end: the built binary serving dstack.sock,
//! called over the socket as the SDKs call it, restarted with the same and
//! with another state directory, and in KMS mode from a dstack-kms root.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dstack_keys::kms::{KMS_ISSUED_PREFIX, recover_signer};
use dstack_kms_keystore::{KeyStore, RootKeys};
use serde_json::{Value, json};

/// A running simulator, stopped when dropped.
struct Simulator {
    child: Child,
    socket: PathBuf,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dstack(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dstack"));
    cmd.args(args);
    cmd
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Starts the simulator with its sockets in a fresh directory under `work`
/// and waits until dstack.sock answers.
fn start(work: &Path, run: &str, extra: &[&str]) -> Simulator {
    let dir = work.join(run);
    let mut args = vec!["simulator", "--dir", p(&dir)];
    args.extend_from_slice(extra);
    let child = dstack(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("dstack runs");
    let mut sim = Simulator {
        child,
        socket: dir.join("dstack.sock"),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if UnixStream::connect(&sim.socket).is_ok() {
            return sim;
        }
        if let Some(status) = sim.child.try_wait().unwrap() {
            panic!("the simulator exited with {status}");
        }
        assert!(Instant::now() < deadline, "dstack.sock never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Simulator {
    /// POSTs `body` to `/method`, as the SDKs do, and returns the JSON answer.
    fn call(&self, method: &str, body: Value) -> Value {
        let body = body.to_string();
        let mut stream = UnixStream::connect(&self.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "POST /{method} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{method}: {response}");
        serde_json::from_str(body).unwrap()
    }

    fn get_key(&self, path: &str) -> Value {
        self.call(
            "GetKey",
            json!({"path": path, "purpose": "ethereum", "algorithm": "secp256k1"}),
        )
    }
}

fn hex_field(value: &Value, field: &str) -> Vec<u8> {
    hex::decode(value[field].as_str().unwrap()).unwrap()
}

/// The SubjectPublicKeyInfo (hex) of the last certificate of GetTlsKey's
/// chain: the app key that issues the app's TLS certificates (each call's
/// own key is fresh, as upstream's).
fn tls_issuer_spki(sim: &Simulator) -> String {
    let tls = sim.call(
        "GetTlsKey",
        json!({"subject": "app", "usage_server_auth": true}),
    );
    let chain = tls["certificate_chain"].as_array().unwrap();
    assert!(chain.len() >= 2, "{tls}");
    let pem = chain.last().unwrap().as_str().unwrap();
    let der = dstack_ra_tls::pem_certificate(pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    hex::encode(cert.tbs_certificate.subject_pki.raw)
}

/// What a restart must keep: keys, signatures and the measured identity.
fn snapshot(sim: &Simulator) -> Value {
    let info = sim.call("Info", json!({}));
    let tcb: Value = serde_json::from_str(info["tcb_info"].as_str().unwrap()).unwrap();
    json!({
        "key": sim.get_key("wallet/0"),
        "sign": sim.call("Sign", json!({"algorithm": "ed25519", "data": "00ff"})),
        "tls_issuer": tls_issuer_spki(sim),
        "app_id": info["app_id"],
        "instance_id": info["instance_id"],
        "key_provider_info": info["key_provider_info"],
        "rtmr3": tcb["rtmr3"],
    })
}

#[test]
fn restart_keeps_keys_and_identity_and_another_state_dir_does_not() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let first = snapshot(&start(work.path(), "run1", &["--state-dir", p(&state)]));
    let again = snapshot(&start(work.path(), "run2", &["--state-dir", p(&state)]));
    assert_eq!(first, again);
    assert!(
        first["key_provider_info"]
            .as_str()
            .unwrap()
            .starts_with(r#"{"name":"kms","id":"3059"#),
        "{first}"
    );
    // The default app is a KMS app: the chain carries the root's signature.
    assert_eq!(
        first["key"]["signature_chain"][1].as_str().unwrap().len(),
        130
    );

    let other_state = work.path().join("other");
    let other = snapshot(&start(
        work.path(),
        "run3",
        &["--state-dir", p(&other_state)],
    ));
    assert_eq!(other["app_id"], first["app_id"], "the same app");
    assert_ne!(other["instance_id"], first["instance_id"]);
    assert_ne!(other["key"]["key"], first["key"]["key"]);
    assert_ne!(
        other["sign"]["public_key"], first["sign"]["public_key"],
        "another root signs for another key"
    );
    assert_ne!(other["tls_issuer"], first["tls_issuer"]);
    assert_ne!(other["key_provider_info"], first["key_provider_info"]);
    assert_ne!(other["rtmr3"], first["rtmr3"]);
}

#[test]
fn kms_root_gives_the_roots_keys_and_signature() {
    let work = tempfile::tempdir().unwrap();
    let kms_dir = work.path().join("kms-state");
    let store = KeyStore::open(&kms_dir).unwrap();
    store.store_new(&RootKeys::generate().unwrap()).unwrap();
    let root = store.load().unwrap().root;
    let app_id = [0x5c; 20];
    let sim = start(
        work.path(),
        "run",
        &[
            "--state-dir",
            p(&work.path().join("state")),
            "--kms-root",
            p(&kms_dir),
            "--app-id",
            &hex::encode(app_id),
        ],
    );
    let info = sim.call("Info", json!({}));
    assert_eq!(hex_field(&info, "app_id"), app_id);
    assert_eq!(
        info["key_provider_info"].as_str().unwrap(),
        format!(
            r#"{{"name":"kms","id":"{}"}}"#,
            hex::encode(root.ca_spki().unwrap())
        )
    );
    let instance_id = hex_field(&info, "instance_id");

    // The key: upstream's GetKey derivation over the k256 key the KMS
    // root releases to this app.
    let released = root.app_keys(&app_id, &instance_id).unwrap();
    let got = sim.get_key("wallet/0");
    let expected = dstack_keys::derive_key(&released.k256_key[..], &[b"wallet/0"], 32).unwrap();
    assert_eq!(hex_field(&got, "key"), expected.to_vec());

    // signature_chain[1] is the root's signature over the app's k256 key.
    let chain: Vec<Vec<u8>> = got["signature_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| hex::decode(s.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(chain[1], released.k256_signature);
    let app_key = dstack_keys::AppKeys::from_kms(released.released()).unwrap();
    let signer = recover_signer(
        &chain[1],
        KMS_ISSUED_PREFIX,
        &app_id,
        &[&app_key.k256_public_key()],
    )
    .unwrap();
    assert_eq!(signer, root.k256_public_key());
}

#[test]
fn a_missing_kms_root_is_a_named_error() {
    let work = tempfile::tempdir().unwrap();
    let missing = work.path().join("no-kms-here");
    let out = dstack(&[
        "simulator",
        "--dir",
        p(&work.path().join("run")),
        "--state-dir",
        p(&work.path().join("state")),
        "--kms-root",
        p(&missing),
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "bad input");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--kms-root"), "{stderr}");
    assert!(stderr.contains(p(&missing)), "{stderr}");
    assert!(!missing.exists(), "the simulator created the KMS dir");
    assert!(
        !work.path().join("run/dstack.sock").exists(),
        "served without keys"
    );
}
