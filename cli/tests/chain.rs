//! `dstack chain` through the built binary against a real anvil: deploys,
//! allow-list changes, `info`, refusals by the contracts, and inputs refused
//! before anything is sent. The signing key never shows in any output.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::path::Path;
use std::process::{Command, Output};

use dstack_contracts::anvil::Anvil;
use serde_json::{Value, json};

/// `dstack chain ARGS` with the endpoint and, if given, the key in the environment.
fn dstack(anvil: &Anvil, key: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dstack"));
    cmd.arg("chain")
        .args(args)
        .env("DSTACK_ETH_RPC_URL", anvil.rpc_url())
        .env_remove("DSTACK_ETH_PRIVATE_KEY");
    if let Some(key) = key {
        cmd.env("DSTACK_ETH_PRIVATE_KEY", key);
    }
    let out = cmd.output().expect("dstack runs");
    // Whatever happened, the key is not in what was printed.
    for k in [anvil.dev_key(), anvil.dev_key_at(1)] {
        let digits = k.trim_start_matches("0x");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(digits)
                && !String::from_utf8_lossy(&out.stderr).contains(digits),
            "a private key was printed by {args:?}"
        );
    }
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs as the owner with `--json`; the JSON printed.
fn owner(anvil: &Anvil, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = dstack(anvil, Some(anvil.dev_key()), &all);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn operator_and_app_owner_govern_the_kms() {
    let anvil = Anvil::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let deployed = owner(&anvil, &["deploy-kms"]);
    let kms = s(&deployed["kms"]);
    assert!(kms.starts_with("0x") && kms.len() == 42, "{deployed}");

    let os = "05".repeat(32);
    let tx = owner(
        &anvil,
        &["add-os-image-hash", "--kms", &kms, &format!("0x{os}")],
    );
    assert_eq!(s(&tx["call"]), "addOsImageHash");
    assert_eq!(s(&tx["value"]), os);
    assert_eq!(s(&tx["tx_hash"]).len(), 66, "{tx}");
    // The image directory form reads the digest the supervisor hands guests.
    let image = dir.path().join("image");
    std::fs::create_dir(&image).unwrap();
    let os2 = "06".repeat(32);
    write(&image, "digest.txt", &format!("{os2}\n"));
    let image_arg = image.display().to_string();
    owner(
        &anvil,
        &[
            "add-os-image-hash",
            "--kms",
            &kms,
            "--image-dir",
            &image_arg,
        ],
    );
    owner(&anvil, &["remove-os-image-hash", "--kms", &kms, &os2]);
    let mr = "a9".repeat(32);
    owner(&anvil, &["add-kms-aggregated-mr", "--kms", &kms, &mr]);
    owner(&anvil, &["add-kms-device", "--kms", &kms, &"de".repeat(32)]);
    owner(
        &anvil,
        &["remove-kms-device", "--kms", &kms, &"de".repeat(32)],
    );
    let gateway = "Ab".repeat(20);
    let tx = owner(
        &anvil,
        &["set-gateway-app-id", "--kms", &kms, &format!("0x{gateway}")],
    );
    assert_eq!(s(&tx["value"]), gateway.to_lowercase());

    // An app from a compose YAML: hashed as `vm deploy` wraps it, under the
    // directory's name unless --name says otherwise.
    let yaml = "services:\n  app:\n    image: nginx\n";
    let appdir = dir.path().join("My App");
    std::fs::create_dir(&appdir).unwrap();
    let compose = write(&appdir, "docker-compose.yml", yaml);
    let wrapped = dstack_compose::app_compose_from_yaml("my-app", yaml).unwrap();
    let hash = hex::encode(dstack_compose::compose_hash(wrapped.as_bytes()));
    let app = owner(
        &anvil,
        &[
            "deploy-app",
            "--kms",
            &kms,
            "--compose",
            &compose,
            "--allow-any-device",
        ],
    );
    assert_eq!(s(&app["compose_hash"]), hash);
    let app_id = s(&app["app_id"]);
    let other_name = dstack_compose::app_compose_from_yaml("other", yaml).unwrap();
    let v2 = hex::encode(dstack_compose::compose_hash(other_name.as_bytes()));
    let tx = owner(
        &anvil,
        &[
            "add-compose-hash",
            "--app",
            &app_id,
            "--compose",
            &compose,
            "--name",
            "other",
        ],
    );
    assert_eq!(s(&tx["value"]), v2);
    assert_eq!(s(&tx["contract"]), app_id);
    owner(&anvil, &["remove-compose-hash", "--app", &app_id, &hash]);
    owner(&anvil, &["add-device", "--app", &app_id, &"d1".repeat(32)]);
    owner(&anvil, &["set-allow-any-device", "--app", &app_id, "false"]);

    let info = owner(&anvil, &["info", "--kms", &kms, "--app", &app_id]);
    assert_eq!(info["chain_id"], 31337);
    assert_eq!(
        info["kms"],
        json!({
            "address": kms,
            "owner": s(&deployed["owner"]),
            "gateway_app_id": gateway.to_lowercase(),
            "app_implementation": s(&deployed["app_implementation"]),
            "os_image_hashes": [os],
            "kms_aggregated_mrs": [mr],
            "kms_devices": [],
            "apps": [app_id],
        })
    );
    assert_eq!(
        info["app"],
        json!({
            "address": app_id,
            "owner": s(&deployed["owner"]),
            "allow_any_device": false,
            "require_tcb_up_to_date": false,
            "compose_hashes": [v2],
            "devices": ["d1".repeat(32)],
        })
    );
    // Reading needs no key; the human form names what is allowed.
    let out = dstack(&anvil, None, &["info", "--app", &app_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&v2) && text.contains("any device:              no"),
        "{text}"
    );

    // The key may also come from a file; a stranger's changes are refused
    // by the contract, naming why.
    let key_file = write(
        dir.path(),
        "stranger.key",
        &format!("{}\n", anvil.dev_key_at(1)),
    );
    let out = dstack(
        &anvil,
        None,
        &[
            "add-compose-hash",
            "--app",
            &app_id,
            &"00".repeat(32),
            "--private-key-file",
            &key_file,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("addComposeHash reverted: OwnableUnauthorizedAccount"),
        "{}",
        stderr(&out)
    );
    // Anyone may deploy an app of their own through the factory (here with
    // no compose hash yet, printed for humans).
    let out = dstack(
        &anvil,
        None,
        &["deploy-app", "--kms", &kms, "--private-key-file", &key_file],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("compose hash") && text.contains("(none yet)"),
        "{text}"
    );
}

#[test]
fn bad_inputs_are_named_and_nothing_is_sent() {
    let anvil = Anvil::start().unwrap_or_else(|e| panic!("{e}"));
    let kms = s(&owner(&anvil, &["deploy-kms"])["kms"]);
    let key = Some(anvil.dev_key());
    let refused = |args: &[&str], needle: &str| {
        let out = dstack(&anvil, key, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    };
    // A short hash is refused, never padded.
    refused(
        &["add-os-image-hash", "--kms", &kms, &"05".repeat(31)],
        "OS image hash must be 32 bytes, got 31",
    );
    refused(
        &[
            "deploy-app",
            "--kms",
            &kms,
            "--compose-hash",
            &"c0".repeat(33),
        ],
        "--compose-hash must be 32 bytes, got 33",
    );
    refused(
        &["add-compose-hash", "--app", &kms, "xyz"],
        "compose hash \"xyz\" is not hex",
    );
    refused(
        &["add-compose-hash", "--app", "0x1234", &"c0".repeat(32)],
        "--app: bad address \"0x1234\"",
    );
    refused(
        &["set-gateway-app-id", "--kms", &kms, "gw"],
        "gateway app id: bad address",
    );
    refused(&["info", "--kms", "nope"], "--kms: bad address \"nope\"");

    // No key: say where one comes from.
    let out = dstack(&anvil, None, &["deploy-kms"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("pass --private-key-file FILE or set DSTACK_ETH_PRIVATE_KEY"),
        "{}",
        stderr(&out)
    );
    let out = dstack(&anvil, Some("0x1234"), &["deploy-kms"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("bad private key"), "{}", stderr(&out));

    // Nothing above changed the chain: the OS image list is still empty.
    let info = owner(&anvil, &["info", "--kms", &kms]);
    assert_eq!(info["kms"]["os_image_hashes"], json!([]));
    assert!(info.get("app").is_none());

    // No contract at the address: named, exit 1.
    let out = dstack(
        &anvil,
        None,
        &["info", "--app", &format!("0x{}", "42".repeat(20))],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no contract at"), "{}", stderr(&out));
}

#[test]
fn unreachable_endpoint_keeps_its_secret_path() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/v3/SECRETKEY");
    let out = Command::new(env!("CARGO_BIN_EXE_dstack"))
        .args(["chain", "info", "--kms", &format!("0x{}", "42".repeat(20))])
        .env("DSTACK_ETH_RPC_URL", &url)
        .output()
        .unwrap();
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("unreachable"), "{text}");
    assert!(text.contains(&format!("http://127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("SECRETKEY"), "{text}");
}
