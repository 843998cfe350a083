//! The `local` key provider end to end: an app with `key_provider: local`
//! in a real CVM (QEMU TCG) gets its keys from the supervisor's simulated
//! local key provider, through GetSealingKey on the host API. The same app on
//! the same image gets the same key after `vm rm` and a redeploy; another
//! app gets another key, and keeps it across stop/start.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::time::{Duration, Instant};

use dstack_e2e::harness::{Supervisor, push_example, repo_root};

/// Boot, pull the python-sdk image (unpacked under TCG) and run one call.
const DONE: Duration = Duration::from_secs(600);

/// The `KEY` lines the VM's service printed so far (one per boot), once
/// there are at least `boots` of them, and the key provider `vm info` shows.
fn read_keys(sup: &Supervisor, name: &str, boots: usize) -> (Vec<String>, String) {
    let started = Instant::now();
    let deadline = started + DONE;
    while Instant::now() < deadline {
        let logs = sup.dstack_ok(&["vm", "logs", "-n", "500", "--service", "app", name]);
        let keys: Vec<String> = logs
            .lines()
            .filter_map(|l| l.strip_prefix("app | KEY "))
            .map(|k| k.trim().to_owned())
            .collect();
        if keys.len() >= boots {
            eprintln!("{name}: key {boots} after {:?}", started.elapsed());
            let info = sup.dstack_ok(&["vm", "info", name]);
            let provider = info
                .lines()
                .find_map(|l| l.strip_prefix("key provider:"))
                .unwrap_or_default()
                .trim()
                .to_owned();
            return (keys, provider);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    panic!(
        "{name} printed no key; vm info:\n{}\nlogs:\n{}",
        sup.dstack_ok(&["vm", "info", name]),
        sup.dstack_ok(&["vm", "logs", "-n", "200", name])
    );
}

/// Deploys `app_compose` as `name`; returns the key its service printed and
/// the key provider `vm info` shows.
fn deploy_and_read_key(sup: &Supervisor, app_compose: &str, name: &str) -> (String, String) {
    sup.dstack_ok(&[
        "vm",
        "deploy",
        app_compose,
        "--name",
        name,
        "--memory",
        "2G",
        "--timeout",
        "600",
    ]);
    let (mut keys, provider) = read_keys(sup, name, 1);
    (keys.remove(0), provider)
}

#[test]
fn local_keys_survive_redeploy_and_belong_to_the_app() {
    push_example("python-sdk").unwrap();
    let sup = Supervisor::start("local-key").unwrap();
    let app = repo_root().join("examples/local-key/app-compose.json");
    let app = app.display().to_string();

    let (first, provider) = deploy_and_read_key(&sup, &app, "lk");
    assert_eq!(first.len(), 64, "{first}");
    assert!(
        provider.starts_with(r#"{"name":"local-sgx","id":""#),
        "{provider}"
    );

    sup.dstack_ok(&["vm", "rm", "--force", "lk"]);
    let (again, provider_again) = deploy_and_read_key(&sup, &app, "lk");
    assert_eq!(again, first, "same app, same image: same key");
    assert_eq!(provider_again, provider);
    sup.dstack_ok(&["vm", "rm", "--force", "lk"]);

    // An app that pins another provider stops at boot, naming the pin.
    let pinned = std::fs::read_to_string(repo_root().join("examples/local-key/app-compose.json"))
        .unwrap()
        .replace(
            r#""key_provider":"local""#,
            &format!(
                r#""key_provider":"local","key_provider_id":"{}""#,
                "00".repeat(32)
            ),
        );
    let dir = tempfile::tempdir().unwrap();
    let pinned_path = dir.path().join("pinned.json");
    std::fs::write(&pinned_path, pinned).unwrap();
    let out = sup.dstack(&[
        "vm",
        "deploy",
        &pinned_path.display().to_string(),
        "--name",
        "lk-pin",
        "--timeout",
        "300",
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "a wrong pin booted:\n{text}");
    assert!(text.contains("key_provider_id"), "{text}");
    sup.dstack_ok(&["vm", "rm", "--force", "lk-pin"]);

    // Another app (its name differs, and it has an instance-id): another
    // compose-hash, another key; the instance-id seed is kept across
    // stop/start, so its key is too.
    let text = std::fs::read_to_string(repo_root().join("examples/local-key/app-compose.json"))
        .unwrap()
        .replace(r#""name":"local-key""#, r#""name":"local-key-b""#)
        .replace(r#","no_instance_id":true"#, "");
    let other = dir.path().join("app-compose.json");
    std::fs::write(&other, text).unwrap();
    let (other_key, other_provider) =
        deploy_and_read_key(&sup, &other.display().to_string(), "lk-b");
    assert_ne!(other_key, first, "another app: another key");
    assert_eq!(other_provider, provider, "one provider on this host");
    sup.dstack_ok(&["vm", "stop", "lk-b"]);
    sup.dstack_ok(&["vm", "start", "lk-b"]);
    let (keys, _) = read_keys(&sup, "lk-b", 2);
    assert_eq!(
        keys[1], other_key,
        "same instance after a restart: same key"
    );
    sup.dstack_ok(&["vm", "rm", "--force", "lk-b"]);
}
