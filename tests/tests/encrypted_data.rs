//! The host holds an app's disk and its configuration but reads neither its
//! data nor its secrets, end to end with a real KMS and CVMs (QEMU TCG):
//!
//! - the data disk is LUKS2, keyed by the KMS's disk key: a marker the app
//!   writes is nowhere in the raw disk file, `cryptsetup luksDump` reads
//!   the header, the data survives stop/start, and another app's disk is
//!   refused and left byte for byte as it was;
//! - `--env-file` values reach the container, keys outside `allowed_envs`
//!   do not, a blob from the official Python SDK's `encrypt_env_vars`
//!   works, and a blob for another app, a truncated one and one over
//!   256 KiB stop the boot with named errors;
//! - no env value is anywhere in the supervisor's state, logs or serial
//!   console.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use dstack_e2e::harness::{Supervisor, free_port, http_get, push_example, repo_root};
use dstack_e2e::kms::{app_id_and_hash, start_kms};

const BOOT: Duration = Duration::from_secs(600);
/// What the app writes to its volume; the host must never see it.
const MARKER: &str = "dstack-disk-marker-3f9a1c";
/// Values the host must never see.
const SECRET: &str = "s3cr3t-from-env-file-7d1e";
const NOT_ALLOWED: &str = "not-allowed-value-58b2";
const SDK_SECRET: &str = "s3cr3t-from-python-sdk-a41c";

/// An app-compose.json (KMS keys, `allowed_envs`) whose service writes the
/// marker and the env it got to its volume and serves them.
fn write_app(dir: &Path, name: &str) -> PathBuf {
    let yaml = format!(
        r#"services:
  app:
    image: 127.0.0.1:5000/dstack-examples/counter:latest
    command:
      - /bin/sh
      - -c
      - >-
        mkdir -p /data/www &&
        for i in 1 2 3 4 5 6 7 8; do echo {MARKER}; done >> /data/www/marker.txt &&
        printf 'token=%s other=%s\n' "$$SECRET_TOKEN" "$$OTHER" > /data/www/env.txt &&
        sync && exec httpd -f -p 8080 -h /data/www
    environment:
      - SECRET_TOKEN
      - OTHER
      - FROM_COMPOSE=${{SECRET_TOKEN:-unset}}
    volumes:
      - state:/data
    ports:
      - "80:8080"
volumes:
  state: {{}}
"#
    );
    let app = serde_json::json!({
        "allowed_envs": ["SECRET_TOKEN"],
        "docker_compose_file": yaml,
        "kms_enabled": true,
        "manifest_version": 2,
        "name": name,
        "runner": "docker-compose",
    });
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, app.to_string()).unwrap();
    path
}

fn deploy(sup: &Supervisor, app: &Path, name: &str, kms_port: u16, extra: &[&str]) -> Output {
    let kms = format!("https://10.0.2.2:{kms_port}");
    let port = free_port().to_string();
    let port_arg = format!("{port}:80");
    let app = app.display().to_string();
    let mut args = vec![
        "vm",
        "deploy",
        &app,
        "--name",
        name,
        "--memory",
        "1G",
        "--disk",
        "1",
        "--kms",
        &kms,
        "--port",
        &port_arg,
        "--timeout",
        "600",
    ];
    args.extend_from_slice(extra);
    sup.dstack(&args)
}

fn vm_info(sup: &Supervisor, name: &str) -> serde_json::Value {
    serde_json::from_str(&sup.dstack_ok(&["vm", "info", name, "--json"])).unwrap()
}

fn vm_dir(sup: &Supervisor, name: &str) -> PathBuf {
    let id = vm_info(sup, name)["id"].as_str().unwrap().to_owned();
    sup.state.path().join("vms").join(id)
}

fn host_port(sup: &Supervisor, name: &str) -> u16 {
    let info = vm_info(sup, name);
    u16::try_from(info["ports"][0]["host_port"].as_u64().unwrap()).unwrap()
}

fn serial(sup: &Supervisor, name: &str) -> String {
    String::from_utf8_lossy(
        &sup.dstack(&["vm", "logs", "--serial", "-n", "400", name])
            .stdout,
    )
    .into_owned()
}

/// Waits until the VM's boot failed; returns its error text.
fn boot_error(sup: &Supervisor, name: &str) -> String {
    let deadline = Instant::now() + BOOT;
    while Instant::now() < deadline {
        let info = vm_info(sup, name);
        if let Some(error) = info["error"].as_str() {
            return format!("{error} | data disk: {}", info["data_disk"]);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    panic!("{name} did not fail; serial:\n{}", serial(sup, name));
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir` holding one of `needles`, with the needle.
fn files_containing(dir: &Path, needles: &[&str], found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            files_containing(&path, needles, found);
        } else if kind.is_file() && path.file_name() != Some("disk.img".as_ref()) {
            let bytes = std::fs::read(&path).unwrap_or_default();
            for needle in needles {
                if contains(&bytes, needle.as_bytes()) {
                    found.push(format!("{} holds {needle}", path.display()));
                }
            }
        }
    }
}

/// No env value anywhere under the supervisor's state dir (VM state,
/// serial consoles, logs), except the `.env` files the test wrote itself.
/// Called before each `vm rm`, which deletes that VM's files.
fn assert_no_values_on_host(sup: &Supervisor, own: &[&Path]) {
    let mut found = Vec::new();
    files_containing(
        sup.state.path(),
        &[SECRET, NOT_ALLOWED, SDK_SECRET],
        &mut found,
    );
    // The scan sees the test's own .env file: it would see a leak too.
    assert!(
        own.iter().all(|f| found
            .iter()
            .any(|hit| hit.starts_with(&f.display().to_string()))),
        "the scan missed the test's own env file: {found:?}"
    );
    found.retain(|hit| {
        !own.iter()
            .any(|f| hit.starts_with(&f.display().to_string()))
    });
    assert!(found.is_empty(), "env values on the host: {found:?}");
}

fn sha256_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// The official Python SDK (scripts/install-deps installs it) encrypting
/// `env` to `public_key` with `encrypt_env_vars`; returns its hex.
fn python_sdk_blob(public_key: &str, env: &[(&str, &str)]) -> String {
    let home = std::env::var_os("HOME").unwrap();
    let python = Path::new(&home).join(".cache/dstack-rs/official-sdk/python/bin/python");
    assert!(
        python.exists(),
        "the official Python SDK is missing: run scripts/install-deps"
    );
    let env: Vec<_> = env
        .iter()
        .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
        .collect();
    let request = serde_json::json!({"public_key": public_key, "env": env}).to_string();
    let mut child = Command::new(python)
        .arg(repo_root().join("crates/envcrypt/tests/sdk/driver.py"))
        .args(["encrypt", "async"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The app's env public key, as `dstack vm env-key` fetches and checks it.
fn env_public_key(sup: &Supervisor, app: &Path, kms_port: u16, signer: &str) -> String {
    let kms = format!("https://10.0.2.2:{kms_port}");
    let app = app.display().to_string();
    let out = sup.dstack_ok(&["vm", "env-key", &app, "--kms", &kms, "--kms-signer", signer]);
    out.trim().to_owned()
}

#[test]
fn disk_and_env_are_sealed_from_the_host() {
    push_example("counter").unwrap();
    let sup = Supervisor::start("sealed").unwrap();
    let dir = sup.state.path().to_owned();
    let app = write_app(&dir, "sealed-a");
    let other = write_app(&dir, "sealed-b");
    let (app_id, app_hash) = app_id_and_hash(&app);
    let (other_id, other_hash) = app_id_and_hash(&other);
    let (kms_process, kms_port) = start_kms(
        &sup,
        &[(&app_id, &[&app_hash]), (&other_id, &[&other_hash])],
    );
    let kms_url = format!("https://127.0.0.1:{kms_port}");
    let kms_info: serde_json::Value =
        serde_json::from_str(&sup.dstack_ok(&["kms", "info", &kms_url, "--json"])).unwrap();
    let signer = kms_info["k256_pubkey"].as_str().unwrap().to_owned();

    // App A: env from a .env file, sealed by the CLI to the KMS-signed key.
    let env_file = dir.join("a.env");
    std::fs::write(
        &env_file,
        format!("# secrets\nSECRET_TOKEN={SECRET}\nOTHER=\"{NOT_ALLOWED}\"\n"),
    )
    .unwrap();
    let env_arg = env_file.display().to_string();
    let out = deploy(
        &sup,
        &app,
        "a",
        kms_port,
        &["--env-file", &env_arg, "--kms-signer", &signer],
    );
    assert!(
        out.status.success(),
        "{}\nKMS log:\n{}\nserial:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&kms_process.log).unwrap_or_default(),
        serial(&sup, "a")
    );
    // Values never printed, even by the CLI.
    let cli_output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!cli_output.contains(SECRET) && !cli_output.contains(NOT_ALLOWED));
    let port = host_port(&sup, "a");
    let env = http_get(port, "/env.txt", BOOT).unwrap();
    assert_eq!(
        env.trim(),
        format!("token={SECRET} other="),
        "OTHER is not in allowed_envs"
    );
    let marker = http_get(port, "/marker.txt", BOOT).unwrap();
    assert_eq!(marker.lines().count(), 8);
    let info = vm_info(&sup, "a");
    assert_eq!(info["data_disk"], "formatted", "{info}");

    // Stopped: the raw disk holds a LUKS2 header and no trace of the marker.
    sup.dstack_ok(&["vm", "stop", "a"]);
    let disk = vm_dir(&sup, "a").join("disk.img");
    let raw = std::fs::read(&disk).unwrap();
    assert!(raw.starts_with(b"LUKS\xba\xbe\x00\x02"));
    // Long needles only: a short one turns up in a gigabyte of ciphertext by chance.
    for needle in [MARKER, SECRET] {
        assert!(
            !contains(&raw, needle.as_bytes()),
            "{needle} is readable in the raw disk"
        );
    }
    drop(raw);
    let dump = Command::new("cryptsetup")
        .args(["luksDump"])
        .arg(&disk)
        .output()
        .expect("cryptsetup (cryptsetup-bin) is installed");
    let dump_text = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert!(dump_text.contains("Version:       \t2"), "{dump_text}");
    assert!(dump_text.contains("aes-xts-plain64"), "{dump_text}");

    // Started again: the same data, opened rather than formatted.
    sup.dstack_ok(&["vm", "start", "a"]);
    let marker_again = http_get(port, "/marker.txt", BOOT).unwrap();
    assert_eq!(marker_again.lines().count(), 16, "the data did not survive");
    assert_eq!(vm_info(&sup, "a")["data_disk"], "opened");
    sup.dstack_ok(&["vm", "stop", "a"]);

    // App B, created stopped, gets A's disk: refused, and not one byte changes.
    let out = deploy(&sup, &other, "b", kms_port, &["--stopped"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b_disk = vm_dir(&sup, "b").join("disk.img");
    std::fs::copy(&disk, &b_disk).unwrap();
    let before = sha256_file(&b_disk);
    sup.dstack_ok(&["vm", "start", "b"]);
    let error = boot_error(&sup, "b");
    assert!(error.contains("encrypted with another key"), "{error}");
    assert!(error.contains("refused"), "{error}");
    sup.dstack_ok(&["vm", "stop", "b"]);
    assert_eq!(sha256_file(&b_disk), before, "the refused disk changed");
    assert_no_values_on_host(&sup, &[&env_file]);
    sup.dstack_ok(&["vm", "rm", "--force", "b"]);

    // A blob from the official Python SDK, for app B's key.
    let b_key = env_public_key(&sup, &other, kms_port, &signer);
    let blob = python_sdk_blob(&b_key, &[("SECRET_TOKEN", SDK_SECRET)]);
    let blob_file = dir.join("b.env.hex");
    std::fs::write(&blob_file, &blob).unwrap();
    let blob_arg = blob_file.display().to_string();
    let out = deploy(&sup, &other, "b", kms_port, &["--encrypted-env", &blob_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = http_get(host_port(&sup, "b"), "/env.txt", BOOT).unwrap();
    assert_eq!(env.trim(), format!("token={SDK_SECRET} other="));
    assert_no_values_on_host(&sup, &[&env_file]);
    sup.dstack_ok(&["vm", "rm", "--force", "b"]);

    // Refused blobs stop the boot with a named error: B's blob for app A,
    // the blob cut short, and one over upstream's 256 KiB limit.
    let bytes = hex::decode(&blob).unwrap();
    let cases = [
        (
            "wrong-app",
            hex::encode(&bytes),
            "not encrypted to this app",
        ),
        ("truncated", hex::encode(&bytes[..40]), "a cut-short file"),
        ("too-large", "00".repeat(256 * 1024 + 1), "(256 kib)"),
    ];
    for (name, blob, want) in cases {
        let file = dir.join(format!("{name}.hex"));
        std::fs::write(&file, blob).unwrap();
        let file_arg = file.display().to_string();
        let out = deploy(
            &sup,
            &app,
            name,
            kms_port,
            &["--encrypted-env", &file_arg, "--no-wait"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let error = boot_error(&sup, name);
        assert!(
            error.contains("encrypted env") && error.to_lowercase().contains(want),
            "{name}: {error}"
        );
        assert_no_values_on_host(&sup, &[&env_file]);
        sup.dstack_ok(&["vm", "rm", "--force", name]);
    }

    // Nothing on the host holds a value: state, logs, serial consoles.
    assert_no_values_on_host(&sup, &[&env_file]);
    let logs = sup.dstack_ok(&["vm", "logs", "-n", "2000", "a"]);
    let console = serial(&sup, "a");
    for value in [SECRET, NOT_ALLOWED] {
        assert!(
            !logs.contains(value) && !console.contains(value),
            "{value} in logs"
        );
    }
}
