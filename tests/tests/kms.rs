//! `key_provider = kms` end to end: a real `dstack-kms` (bootstrapped, a
//! policy file, the supervisor's sim root and collateral) and apps in real
//! CVMs (QEMU TCG) that fetch their keys over RA-TLS with the official
//! Python SDK calling GetKey. The same app gets the same key after `vm rm`
//! and a redeploy, the KMS signs it (`signature_chain[1]`), and an app the
//! policy does not allow stops its boot naming the reason.
//!
//! The KMS runs on the host here; the KMS-as-a-CVM test comes with its image.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::path::Path;
use std::time::{Duration, Instant};

use dstack_e2e::harness::{Supervisor, push_example, repo_root};
use dstack_e2e::kms::{app_id_and_hash, serve_kms, start_kms};

const DONE: Duration = Duration::from_secs(600);

/// Waits for the app's `KEY`/`CHAIN` lines; returns (key, chain[1], provider).
fn read_key(sup: &Supervisor, name: &str) -> (String, String, String) {
    let deadline = Instant::now() + DONE;
    while Instant::now() < deadline {
        let logs = sup.dstack_ok(&["vm", "logs", "-n", "500", "--service", "app", name]);
        let key = logs.lines().find_map(|l| l.strip_prefix("app | KEY "));
        let chain = logs.lines().find_map(|l| l.strip_prefix("app | CHAIN 2 "));
        if let (Some(key), Some(chain)) = (key, chain) {
            let info = sup.dstack_ok(&["vm", "info", name]);
            let provider = info
                .lines()
                .find_map(|l| l.strip_prefix("key provider:"))
                .unwrap_or_default()
                .trim()
                .to_owned();
            return (key.trim().into(), chain.trim().into(), provider);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    panic!(
        "{name} printed no key; vm info:\n{}\nlogs:\n{}",
        sup.dstack_ok(&["vm", "info", name]),
        sup.dstack_ok(&["vm", "logs", "-n", "200", name])
    );
}

fn deploy(sup: &Supervisor, file: &Path, name: &str, kms_port: u16) -> std::process::Output {
    deploy_as(sup, file, name, kms_port, &[])
}

fn deploy_as(
    sup: &Supervisor,
    file: &Path,
    name: &str,
    kms_port: u16,
    extra: &[&str],
) -> std::process::Output {
    let kms = format!("https://10.0.2.2:{kms_port}");
    let file = file.display().to_string();
    let mut args = vec![
        "vm",
        "deploy",
        &file,
        "--name",
        name,
        "--memory",
        "2G",
        "--timeout",
        "600",
        "--kms",
        &kms,
    ];
    args.extend_from_slice(extra);
    sup.dstack(&args)
}

#[test]
fn kms_keys_are_stable_signed_and_only_for_allowed_apps() {
    push_example("python-sdk").unwrap();
    let sup = Supervisor::start("kms").unwrap();
    let app = repo_root().join("examples/kms-key/app-compose.json");
    let (app_id, compose_hash) = app_id_and_hash(&app);

    // A second app, registered with another compose hash than its own.
    let text = std::fs::read_to_string(&app).unwrap();
    let other = sup.state.path().join("other-app-compose.json");
    std::fs::write(&other, text.replace("\"kms-key\"", "\"kms-other\"")).unwrap();
    let (other_id, _) = app_id_and_hash(&other);
    // Version 2 of the first app: another compose hash under the same app id.
    let v2 = sup.state.path().join("v2-app-compose.json");
    std::fs::write(&v2, text.replace("\"kms-key\"", "\"kms-key-v2\"")).unwrap();
    let (_, v2_hash) = app_id_and_hash(&v2);
    let bogus = "ab".repeat(32);
    let (kms_process, port) = start_kms(
        &sup,
        &[
            (&app_id, &[&compose_hash, &v2_hash]),
            (&other_id, &[&bogus]),
        ],
    );

    let out = deploy(&sup, &app, "kk", port);
    assert!(
        out.status.success(),
        "{}\nKMS log:\n{}\nserial:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&kms_process.log).unwrap_or_default(),
        String::from_utf8_lossy(
            &sup.dstack(&["vm", "logs", "-n", "80", "--serial", "kk"])
                .stdout
        )
    );
    let (key, kms_signature, provider) = read_key(&sup, "kk");
    assert_eq!(key.len(), 64, "{key}");
    assert_eq!(
        kms_signature.len(),
        130,
        "a 65-byte KMS signature: {kms_signature}"
    );
    assert!(
        provider.starts_with(r#"{"name":"kms","id":"3059"#),
        "{provider}"
    );
    // What an operator pins: `dstack kms info` names the same root.
    let kms_url = format!("https://127.0.0.1:{port}");
    let info: serde_json::Value =
        serde_json::from_str(&sup.dstack_ok(&["kms", "info", &kms_url, "--json"])).unwrap();
    let pin = info["key_provider_id"].as_str().unwrap().to_owned();
    assert_eq!(provider, format!(r#"{{"name":"kms","id":"{pin}"}}"#));
    sup.dstack_ok(&["kms", "info", &kms_url, "--pin", &pin]);
    let wrong = sup.dstack(&["kms", "info", &kms_url, "--pin", "3059"]);
    assert!(!wrong.status.success());

    // Same app after rm and redeploy (a new instance): the same key.
    sup.dstack_ok(&["vm", "rm", "--force", "kk"]);
    assert!(deploy(&sup, &app, "kk", port).status.success());
    let (again, signature_again, _) = read_key(&sup, "kk");
    assert_eq!(again, key);
    assert_eq!(signature_again, kms_signature);

    // An upgrade: the new compose hash, deployed as the same app, keeps the keys.
    sup.dstack_ok(&["vm", "rm", "--force", "kk"]);
    let out = deploy_as(&sup, &v2, "kk", port, &["--app-id", &app_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (upgraded, _, _) = read_key(&sup, "kk");
    assert_eq!(upgraded, key);
    sup.dstack_ok(&["vm", "rm", "--force", "kk"]);

    // The KMS restarts from its state dir: same root keys, same app keys.
    drop(kms_process);
    let (_restarted, port) = serve_kms(&sup);
    assert!(deploy(&sup, &app, "kk", port).status.success());
    let (after_restart, _, _) = read_key(&sup, "kk");
    assert_eq!(after_restart, key);
    sup.dstack_ok(&["vm", "rm", "--force", "kk"]);

    // Not allowed: the boot stops naming the KMS's reason.
    let out = deploy(&sup, &other, "ko", port);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("compose hash not allowed"), "{text}");
}
