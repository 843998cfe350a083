//! `dstack verify` through the built binary: exit codes, the `--json`
//! verdict, and `--url` against an RA-TLS server on loopback.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

mod support {
    pub(crate) mod sim_app;
}

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use dstack_attest::SimAuthority;
use dstack_ra_tls::{CertRequest, RaTlsCert, report_data_for_spki, server_config};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData};
use sha2::{Digest, Sha256};
use support::sim_app::{
    CMDLINE, COMPOSE, GuestBoot, QEMU_VERSION, SimTd, kernel, write_acpi_tables, write_image,
};

fn dstack(args: &[&str], images_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dstack"))
        .args(args)
        .env("DSTACK_IMAGES_DIR", images_dir)
        .output()
        .expect("dstack runs")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A host with one image, the sim root and its collateral on disk.
struct Host {
    dir: tempfile::TempDir,
    image: PathBuf,
    authority: Arc<SimAuthority>,
    root_pem: PathBuf,
    collateral: PathBuf,
    compose: PathBuf,
}

impl Host {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        let image = write_image(&images, "dstack-test", &kernel(), CMDLINE);
        write_acpi_tables(&dir.path().join("acpi"));
        let authority = Arc::new(SimAuthority::generate().unwrap());
        let root_pem = dir.path().join("sim-root.pem");
        std::fs::write(&root_pem, authority.root_pem()).unwrap();
        let collateral = dir.path().join("collateral.json");
        std::fs::write(
            &collateral,
            authority.collateral(chrono::Utc::now()).unwrap().to_json(),
        )
        .unwrap();
        let compose = dir.path().join("app-compose.json");
        std::fs::write(&compose, COMPOSE).unwrap();
        Self {
            dir,
            image,
            authority,
            root_pem,
            collateral,
            compose,
        }
    }

    fn images(&self) -> PathBuf {
        self.dir.path().join("images")
    }

    fn base_args(&self) -> Vec<String> {
        let acpi = self.dir.path().join("acpi");
        [
            "verify",
            "--image",
            p(&self.image),
            "--compose",
            p(&self.compose),
            "--vcpu",
            "2",
            "--memory",
            "2G",
            "--collateral",
            p(&self.collateral),
            "--acpi-tables",
            p(&acpi),
            "--qemu-version",
            QEMU_VERSION,
        ]
        .map(String::from)
        .to_vec()
    }

    fn run(&self, extra: &[&str]) -> Output {
        let mut args = self.base_args();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        dstack(&args, &self.images())
    }

    /// Writes a /GetQuote response (quote + event log) to a file.
    fn write_quote(&self, td: &SimTd, name: &str) -> PathBuf {
        let response = serde_json::json!({
            "quote": hex::encode(td.quote(&[0; 64])),
            "event_log": serde_json::to_string(&td.events).unwrap(),
        });
        let path = self.dir.path().join(name);
        std::fs::write(&path, response.to_string()).unwrap();
        path
    }

    /// What the verifier predicts for this image and shape, read off its
    /// own report: the registers a TD booted from the image must have.
    fn predicted(&self) -> ([u8; 48], [[u8; 48]; 3]) {
        let blank = SimTd::launch(self.authority.clone(), [0; 48], [[0; 48]; 3], [0; 48]);
        let quote = self.write_quote(&blank, "blank.json");
        let out = self.run(&[
            "--quote",
            p(&quote),
            "--sim-root",
            p(&self.root_pem),
            "--json",
        ]);
        let verdict = json(&out);
        let expected = |name: &str| -> [u8; 48] {
            let check = verdict["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["check"] == name)
                .unwrap();
            hex::decode(check["expected"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap()
        };
        (
            expected("mrtd"),
            [expected("rtmr0"), expected("rtmr1"), expected("rtmr2")],
        )
    }

    /// A TD booted from the image running `COMPOSE`.
    fn app(&self) -> SimTd {
        let (mr_td, rtmr) = self.predicted();
        let mut td = SimTd::launch(self.authority.clone(), mr_td, rtmr, [0; 48]);
        td.boot(&GuestBoot::of(COMPOSE.as_bytes()));
        td
    }
}

#[test]
fn verified_rejected_and_bad_input_exit_0_1_2_with_a_json_verdict() {
    let host = Host::new();
    let quote = host.write_quote(&host.app(), "quote.json");
    let sim_root = ["--quote", p(&quote), "--sim-root", p(&host.root_pem)];

    let out = host.run(&[&sim_root[..], &["--json"]].concat());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdict = json(&out);
    assert_eq!(verdict["verdict"], "verified");
    assert_eq!(verdict["first_failure"], serde_json::Value::Null);
    let checks = verdict["checks"].as_array().unwrap();
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "quote",
            "report-data",
            "mrtd",
            "rtmr0",
            "rtmr1",
            "rtmr2",
            "rtmr3",
            "event-order",
            "compose-hash",
            "app-id",
            "instance-id",
            "key-provider",
            "os-image-hash",
            "mr-config-id"
        ]
    );
    for check in checks {
        let status = check["status"].as_str().unwrap();
        assert!(["pass", "skipped"].contains(&status), "{check}");
        assert!(check.get("expected").is_some() && check.get("actual").is_some());
    }
    let digest = std::fs::read_to_string(host.image.join("digest.txt")).unwrap();
    assert_eq!(verdict["image"]["os_image_hash"], digest.trim());

    // The human report, and the image named by its digest.
    let mut args = host.base_args();
    args[2] = digest.trim().to_owned();
    args.extend(sim_root.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = dstack(&args, &host.images());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("verdict:   VERIFIED"), "{stdout}");

    // One trailing newline in the compose file: rejected at compose-hash.
    std::fs::write(&host.compose, format!("{COMPOSE}\n")).unwrap();
    let out = host.run(&[&sim_root[..], &["--json"]].concat());
    assert_eq!(out.status.code(), Some(1));
    let verdict = json(&out);
    assert_eq!(verdict["verdict"], "rejected");
    assert_eq!(verdict["first_failure"]["check"], "compose-hash");
    assert_eq!(verdict["first_failure"]["finding"], "compose-hash-mismatch");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("rejected: compose-hash"), "{stderr}");
    let file_hash = hex::encode(Sha256::digest(format!("{COMPOSE}\n").as_bytes()));
    assert!(stderr.contains(&file_hash), "{stderr}");
    std::fs::write(&host.compose, COMPOSE).unwrap();

    // Without the sim root the quote is not trusted.
    let out = host.run(&["--quote", p(&quote), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["first_failure"]["finding"], "quote-not-trusted");

    // Another VM shape.
    let mut args = host.base_args();
    args[8] = "4G".into();
    args.extend(sim_root.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = dstack(&args, &host.images());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("rejected: RTMR0"));

    // Bad input: exit 2, and still a JSON verdict.
    let out = host.run(&["--quote", "/nonexistent/quote", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let verdict = json(&out);
    assert_eq!(verdict["verdict"], "error");
    assert!(
        verdict["error"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/quote")
    );
    let out = host.run(&["--url", "https://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2));
    // Neither --quote nor --url: clap's usage error, also 2.
    assert_eq!(host.run(&[]).status.code(), Some(2));
}

/// `--url`: the binary connects, takes the server's RA-TLS certificate,
/// checks that the quote binds its key, and verifies the app.
#[test]
fn url_verifies_a_live_app_by_its_ra_tls_certificate() {
    let host = Host::new();
    let td = host.app();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let evidence = dstack_ra_tls::Evidence {
        quote: td.quote(&report_data_for_spki(&key.subject_public_key_info())),
        event_log: td.events.clone(),
        vm_config: String::new(),
        collateral: Some(td.collateral()),
    };
    let cert = RaTlsCert::with_evidence(key, &CertRequest::new("app"), &evidence).unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(&cert, None).unwrap()));
    runtime.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });

    // The certificate carries its collateral: no --collateral needed.
    let acpi = host.dir.path().join("acpi");
    let args = [
        "verify",
        "--image",
        p(&host.image),
        "--compose",
        p(&host.compose),
        "--vcpu",
        "2",
        "--memory",
        "2048",
        "--url",
        &url,
        "--sim-root",
        p(&host.root_pem),
        "--acpi-tables",
        p(&acpi),
        "--qemu-version",
        QEMU_VERSION,
        "--json",
    ];
    let out = dstack(&args, &host.images());
    let verdict = json(&out);
    assert_eq!(out.status.code(), Some(0), "{verdict:#}");
    let binding = verdict["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "report-data")
        .unwrap();
    assert_eq!(binding["status"], "pass");
    assert!(
        verdict["evidence"]
            .as_str()
            .unwrap()
            .contains("RA-TLS certificate")
    );

    // Another image's kernel: the live app is refused at RTMR1.
    let mut other_kernel = kernel();
    other_kernel[5] ^= 1;
    let other = write_image(&host.images(), "other", &other_kernel, CMDLINE);
    let mut args = args.to_vec();
    args[2] = p(&other);
    let out = dstack(&args, &host.images());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["first_failure"]["check"], "rtmr1");
}
