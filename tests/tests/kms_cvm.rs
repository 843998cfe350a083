//! The KMS as a CVM, governed on chain: a real anvil with our KmsAuth and
//! AppAuth contracts, the `dstack/kms` image (kms/image.json) booted by the
//! supervisor with `key_provider = local`, measured, then registered on
//! chain and bootstrapped (`dstack kms attestation-info`, `bootstrap`). An
//! app registered in its AppAuth gets keys, the same after `rm` and a
//! redeploy; the KMS CVM is stopped and started and keeps its sealed root
//! keys; an unregistered compose hash is refused by name, registering one
//! is an upgrade that keeps the keys, removing one fails the next boot; a
//! replica of the same compose onboards and serves the same keys; a KMS of
//! another compose is refused; an upstream KMS's key files import.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::path::Path;
use std::time::{Duration, Instant};

use dstack_contracts::admin::{Admin, NewApp};
use dstack_contracts::anvil::Anvil;
use dstack_e2e::harness::{Supervisor, free_port, push_example, push_image, repo_root};
use sha2::{Digest, Sha256};

const BOOT: Duration = Duration::from_secs(600);

/// The KMS's app-compose: the KMS image serving on 8000 with its state on
/// a named volume, the guest API mounted, the chain and quote root in its
/// (measured) command line.
fn kms_compose(name: &str, auth: &str, root_pem: &str, pccs: &str) -> String {
    let compose = format!(
        "services:\n  kms:\n    image: 127.0.0.1:5000/dstack/kms:latest\n    command: {command}\n    environment:\n      DSTACK_KMS_QUOTE_ROOT_PEM: {root}\n    ports:\n      - \"8000:8000\"\n    volumes:\n      - /var/run/dstack.sock:/var/run/dstack.sock\n      - kms-state:/var/lib/dstack-kms\n    restart: always\nvolumes:\n  kms-state: {{}}\n",
        command = serde_json::json!([
            "/usr/bin/dstack-kms",
            "serve",
            "--auth",
            auth,
            "--pccs",
            pccs,
            "--domain",
            "kms.local"
        ]),
        root = serde_json::to_string(root_pem).unwrap(),
    );
    serde_json::json!({
        "docker_compose_file": compose,
        "key_provider": "local",
        "manifest_version": 2,
        "name": name,
        "no_instance_id": true,
        "runner": "docker-compose",
    })
    .to_string()
}

fn sim_root(sup: &Supervisor) -> String {
    let out = std::process::Command::new(dstack_e2e::harness::bin_dir().join("dstack-supervisor"))
        .args(["sim-root", "--state-dir"])
        .arg(sup.state.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn deploy_kms(sup: &Supervisor, file: &Path, name: &str, port: u16) {
    let publish = format!("127.0.0.1:{port}:8000");
    let file = file.display().to_string();
    let out = sup.dstack(&[
        "vm",
        "deploy",
        &file,
        "--name",
        name,
        "--memory",
        "1G",
        "--timeout",
        "600",
        "--port",
        &publish,
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        sup.dstack_ok(&["vm", "logs", "-n", "100", name])
    );
}

/// Runs `dstack <args>` until it succeeds (the KMS may still be starting).
fn retry(sup: &Supervisor, name: &str, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = sup.dstack(args);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        if Instant::now() > deadline {
            panic!(
                "dstack {args:?}: {}\nKMS logs:\n{}",
                String::from_utf8_lossy(&out.stderr),
                sup.dstack_ok(&["vm", "logs", "-n", "100", name])
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn hex32(value: &serde_json::Value) -> [u8; 32] {
    hex::decode(value.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn deploy_app(sup: &Supervisor, app: &Path, kms_port: u16, app_id: &str) -> std::process::Output {
    let kms = format!("https://10.0.2.2:{kms_port}");
    sup.dstack(&[
        "vm",
        "deploy",
        &app.display().to_string(),
        "--name",
        "app",
        "--memory",
        "2G",
        "--timeout",
        "600",
        "--kms",
        &kms,
        "--app-id",
        app_id,
    ])
}

/// Deploys `app` (the kms-key app or a version of it) against the KMS on
/// `kms_port` as `app_id`; returns the key it printed and removes it.
fn app_key(sup: &Supervisor, app: &Path, kms_port: u16, app_id: &str) -> String {
    let out = deploy_app(sup, app, kms_port, app_id);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        sup.dstack_ok(&["vm", "logs", "-n", "100", "--serial", "app"])
    );
    let deadline = Instant::now() + BOOT;
    while Instant::now() < deadline {
        let logs = sup.dstack_ok(&["vm", "logs", "-n", "500", "--service", "app", "app"]);
        if let Some(key) = logs.lines().find_map(|l| l.strip_prefix("app | KEY ")) {
            let key = key.trim().to_owned();
            sup.dstack_ok(&["vm", "rm", "--force", "app"]);
            return key;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    panic!("the app printed no key");
}

/// Deploys `app` and expects its boot to stop with `reason` from the KMS.
fn app_refused(sup: &Supervisor, app: &Path, kms_port: u16, app_id: &str, reason: &str) {
    let out = deploy_app(sup, app, kms_port, app_id);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(reason), "expected {reason:?}: {text}");
    sup.dstack_ok(&["vm", "rm", "--force", "app"]);
}

/// A version of the kms-key app: another name, so another compose hash.
fn app_version(sup: &Supervisor, name: &str) -> (std::path::PathBuf, [u8; 32]) {
    let text = std::fs::read_to_string(repo_root().join("examples/kms-key/app-compose.json"))
        .unwrap()
        .replace("\"kms-key\"", &format!("\"{name}\""));
    let path = sup.state.path().join(format!("{name}.json"));
    std::fs::write(&path, &text).unwrap();
    (path, Sha256::digest(text.as_bytes()).into())
}

#[test]
fn a_kms_cvm_bootstraps_on_chain_keeps_its_keys_and_onboards_replicas() {
    push_image(&repo_root().join("kms")).unwrap();
    push_example("python-sdk").unwrap();
    let sup = Supervisor::start("kms-cvm").unwrap();
    let anvil = Anvil::start().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let admin = runtime
        .block_on(async { Admin::connect(anvil.rpc_url(), anvil.dev_key()) })
        .unwrap();
    let kms_contract = runtime.block_on(admin.deploy_kms()).unwrap().kms;
    // The guest reaches the host's loopback (anvil, the sim PCCS) at 10.0.2.2.
    let rpc_port = anvil.rpc_url().rsplit(':').next().unwrap().to_owned();
    let auth = format!(
        "chain:http://10.0.2.2:{rpc_port}#0x{}",
        hex::encode(kms_contract)
    );
    let root_pem = sim_root(&sup);
    std::fs::write(sup.state.path().join("sim-root.pem"), &root_pem).unwrap();
    let compose = sup.state.path().join("kms-compose.json");
    std::fs::write(
        &compose,
        kms_compose("dstack-kms", &auth, &root_pem, &sup.guest_pccs_url()),
    )
    .unwrap();

    // Boot the KMS: without keys it serves onboarding over HTTP.
    let port = free_port();
    deploy_kms(&sup, &compose, "kms", port);
    let onboarding = format!("http://127.0.0.1:{port}");
    let info = json(&retry(
        &sup,
        "kms",
        &["kms", "attestation-info", &onboarding, "--json"],
    ));
    // Bootstrap is refused until KmsAuth allows this KMS's measurements.
    let refused = sup.dstack(&[
        "kms",
        "bootstrap",
        &onboarding,
        "--domain",
        "kms.local",
        "--pccs",
        &sup.host_pccs_url(),
    ]);
    assert!(!refused.status.success());
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(text.contains("not an allowed KMS"), "{text}");
    runtime.block_on(async {
        admin
            .add_os_image_hash(kms_contract, hex32(&info["os_image_hash"]))
            .await
            .unwrap();
        admin
            .add_kms_aggregated_mr(kms_contract, hex32(&info["mr_aggregated"]))
            .await
            .unwrap();
        admin
            .add_kms_device(kms_contract, hex32(&info["device_id"]))
            .await
            .unwrap();
    });
    let root_file = sup.state.path().join("sim-root.pem").display().to_string();
    let boot = json(&sup.dstack_ok(&[
        "kms",
        "bootstrap",
        &onboarding,
        "--domain",
        "kms.local",
        "--root",
        &root_file,
        "--pccs",
        &sup.host_pccs_url(),
        "--json",
    ]));
    assert_eq!(boot["attested"], true, "{boot}");
    assert_eq!(boot["mr_aggregated"], info["mr_aggregated"]);
    let key_provider_id = boot["key_provider_id"].as_str().unwrap().to_owned();
    let kms_url = format!("https://127.0.0.1:{port}");
    let meta = json(&retry(&sup, "kms", &["kms", "info", &kms_url, "--json"]));
    assert_eq!(meta["key_provider_id"], key_provider_id.as_str());
    // One time only.
    let again = sup.dstack(&["kms", "bootstrap", &onboarding, "--domain", "kms.local"]);
    assert!(!again.status.success());

    // An app registered in its AppAuth gets keys.
    let app_file = repo_root().join("examples/kms-key/app-compose.json");
    let compose_hash: [u8; 32] = Sha256::digest(std::fs::read(&app_file).unwrap()).into();
    let app_id = runtime
        .block_on(admin.deploy_and_register_app(
            kms_contract,
            &NewApp {
                owner: admin.address(),
                disable_upgrades: false,
                require_tcb_up_to_date: false,
                allow_any_device: true,
                device_id: [0; 32],
                compose_hash,
            },
        ))
        .unwrap();
    let app_address = app_id;
    let app_id = hex::encode(app_id);
    let key = app_key(&sup, &app_file, port, &app_id);
    assert_eq!(key.len(), 64, "{key}");

    // The KMS CVM stops and starts: its sealed root keys come back, and the
    // app (rm'd and redeployed) gets the same key.
    sup.dstack_ok(&["vm", "stop", "kms"]);
    sup.dstack_ok(&["vm", "start", "kms"]);
    let meta = json(&retry(&sup, "kms", &["kms", "info", &kms_url, "--json"]));
    assert_eq!(meta["key_provider_id"], key_provider_id.as_str());
    assert_eq!(app_key(&sup, &app_file, port, &app_id), key);

    // Governed on chain: a compose hash the app's AppAuth does not list is
    // refused, naming the reason; registering one is an upgrade that keeps
    // the keys; removing one makes the next boot of it fail.
    let (v2, v2_hash) = app_version(&sup, "kms-key-v2");
    app_refused(&sup, &v2, port, &app_id, "Compose hash not allowed");
    runtime
        .block_on(admin.add_compose_hash(app_address, v2_hash))
        .unwrap();
    assert_eq!(app_key(&sup, &v2, port, &app_id), key);
    runtime
        .block_on(admin.remove_compose_hash(app_address, compose_hash))
        .unwrap();
    app_refused(&sup, &app_file, port, &app_id, "Compose hash not allowed");

    // A replica of the same compose onboards from it and serves the same keys.
    let replica_port = free_port();
    deploy_kms(&sup, &compose, "kms-2", replica_port);
    let replica = format!("http://127.0.0.1:{replica_port}");
    let source = format!("https://10.0.2.2:{port}");
    retry(&sup, "kms-2", &["kms", "attestation-info", &replica]);
    let onboarded = json(&sup.dstack_ok(&[
        "kms",
        "onboard",
        &replica,
        "--source",
        &source,
        "--domain",
        "kms-2.local",
        "--json",
    ]));
    assert_eq!(onboarded["k256_pubkey"], meta["k256_pubkey"]);
    let replica_url = format!("https://127.0.0.1:{replica_port}");
    let replica_meta = json(&retry(
        &sup,
        "kms-2",
        &["kms", "info", &replica_url, "--json"],
    ));
    assert_eq!(replica_meta["key_provider_id"], key_provider_id.as_str());
    sup.dstack_ok(&["vm", "stop", "kms"]);
    assert_eq!(app_key(&sup, &v2, replica_port, &app_id), key);

    // A KMS of another compose (other measurements) is refused by KmsAuth.
    let rogue = sup.state.path().join("rogue-compose.json");
    std::fs::write(
        &rogue,
        kms_compose("rogue-kms", &auth, &root_pem, &sup.guest_pccs_url()),
    )
    .unwrap();
    let rogue_port = free_port();
    deploy_kms(&sup, &rogue, "rogue", rogue_port);
    let rogue_url = format!("http://127.0.0.1:{rogue_port}");
    retry(&sup, "rogue", &["kms", "attestation-info", &rogue_url]);
    let replica_source = format!("https://10.0.2.2:{replica_port}");
    let out = sup.dstack(&[
        "kms",
        "onboard",
        &rogue_url,
        "--source",
        &replica_source,
        "--domain",
        "rogue.local",
    ]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Aggregated MR not allowed"), "{text}");

    sup.dstack_ok(&["vm", "rm", "--force", "rogue"]);

    // An upstream KMS's key files go into a fresh KMS CVM, sealed to the key
    // it attests: it then serves under the upstream root.
    let upstream = sup.state.path().join("upstream-certs");
    std::fs::create_dir_all(&upstream).unwrap();
    std::fs::write(upstream.join("root-ca.key"), upstream_pem(0x5a)).unwrap();
    std::fs::write(upstream.join("tmp-ca.key"), upstream_pem(0x3c)).unwrap();
    std::fs::write(upstream.join("root-k256.key"), [0x6b; 32]).unwrap();
    let expected = std::process::Command::new(dstack_e2e::harness::bin_dir().join("dstack-kms"))
        .arg("--state-dir")
        .arg(sup.state.path().join("host-import"))
        .args(["import", "--from"])
        .arg(&upstream)
        .output()
        .unwrap();
    assert!(expected.status.success());
    let expected = json(&String::from_utf8_lossy(&expected.stdout));
    let import_port = free_port();
    deploy_kms(&sup, &compose, "kms-3", import_port);
    let importing = format!("http://127.0.0.1:{import_port}");
    retry(&sup, "kms-3", &["kms", "attestation-info", &importing]);
    let from = upstream.display().to_string();
    sup.dstack_ok(&[
        "kms",
        "import",
        &importing,
        "--from",
        &from,
        "--root",
        &root_file,
        "--pccs",
        &sup.host_pccs_url(),
    ]);
    let imported_url = format!("https://127.0.0.1:{import_port}");
    let imported = json(&retry(
        &sup,
        "kms-3",
        &["kms", "info", &imported_url, "--json"],
    ));
    assert_eq!(imported["k256_pubkey"], expected["k256_pubkey"]);
}

/// A P-256 PKCS#8 PEM key of 32 equal bytes, as an upstream KMS stores
/// its CA keys.
fn upstream_pem(byte: u8) -> String {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    p256::SecretKey::from_slice(&[byte; 32])
        .unwrap()
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap()
        .to_string()
}
