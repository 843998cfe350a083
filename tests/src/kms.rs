//! A real `dstack-kms` for end-to-end tests: bootstrapped root keys, a
//! policy file allowing given apps, and the supervisor's sim quote root and
//! collateral, served on a free loopback port.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::harness::{Supervisor, bin_dir, free_port};

/// A `dstack-kms serve` process, killed on drop.
#[derive(Debug)]
pub struct KmsProcess {
    child: Child,
    /// Where the KMS logs.
    pub log: std::path::PathBuf,
}

impl Drop for KmsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn kms(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bin_dir().join("dstack-kms"))
        .arg("--state-dir")
        .arg(dir.join("kms-state"))
        .args(args)
        .output()
        .expect("dstack-kms runs (cargo build -p dstack-kms)");
    assert!(
        out.status.success(),
        "dstack-kms {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn supervisor_output(sup: &Supervisor, verb: &str) -> Vec<u8> {
    let out = Command::new(bin_dir().join("dstack-supervisor"))
        .args([verb, "--state-dir"])
        .arg(sup.state.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{verb}");
    out.stdout
}

/// Starts the KMS allowing each app id with its compose hashes; returns the
/// process and its port.
pub fn start_kms(sup: &Supervisor, allowed: &[(&str, &[&str])]) -> (KmsProcess, u16) {
    start_kms_with_gateway(sup, allowed, "")
}

/// [`start_kms`], naming `gateway_app_id` as the gateway app every allowed
/// app is handed (empty: none).
pub fn start_kms_with_gateway(
    sup: &Supervisor,
    allowed: &[(&str, &[&str])],
    gateway_app_id: &str,
) -> (KmsProcess, u16) {
    let dir = sup.state.path();
    let public = kms(dir, &["bootstrap"]);
    assert!(public.contains("k256_pubkey"), "{public}");
    // A second bootstrap is refused and changes nothing.
    let again = Command::new(bin_dir().join("dstack-kms"))
        .arg("--state-dir")
        .arg(dir.join("kms-state"))
        .arg("bootstrap")
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has root keys"));
    assert_eq!(kms(dir, &["info"]), public);

    std::fs::write(dir.join("sim-root.pem"), supervisor_output(sup, "sim-root")).unwrap();
    std::fs::write(
        dir.join("sim-collateral.json"),
        supervisor_output(sup, "sim-collateral"),
    )
    .unwrap();
    let apps: serde_json::Map<String, serde_json::Value> = allowed
        .iter()
        .map(|(app, hashes)| {
            (
                (*app).to_owned(),
                serde_json::json!({ "compose_hashes": hashes }),
            )
        })
        .collect();
    let mut policy = serde_json::json!({ "apps": apps });
    if !gateway_app_id.is_empty() {
        policy["gateway_app_id"] = gateway_app_id.into();
    }
    std::fs::write(dir.join("policy.json"), policy.to_string()).unwrap();
    serve_kms(sup)
}

/// Serves the KMS from its state dir (root keys, policy, sim root and
/// collateral already there) on a fresh port.
pub fn serve_kms(sup: &Supervisor) -> (KmsProcess, u16) {
    let dir = sup.state.path();
    let port = free_port();
    let log = dir.join("kms.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(bin_dir().join("dstack-kms"))
        .arg("--state-dir")
        .arg(dir.join("kms-state"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--auth"])
        .arg(format!("policy:{}", dir.join("policy.json").display()))
        .arg("--quote-root")
        .arg(dir.join("sim-root.pem"))
        .arg("--collateral")
        .arg(dir.join("sim-collateral.json"))
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "KMS did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    (KmsProcess { child, log }, port)
}

/// The first 20 bytes of SHA-256 of the file (hex), and the whole hash:
/// the app id of an app that pins none, and its compose hash.
pub fn app_id_and_hash(file: &Path) -> (String, String) {
    let hash = Sha256::digest(std::fs::read(file).unwrap());
    (hex::encode(&hash[..20]), hex::encode(hash))
}
