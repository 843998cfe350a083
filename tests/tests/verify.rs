//! One-step verification end to end: two CVMs of the same app in two VM
//! shapes, booted by our supervisor (TCG, simulated TDX module). For each,
//! `dstack image measure` predicts exactly the MRTD and RTMR0-2 its quote
//! reports, and `dstack verify --url` accepts the live app. Then `dstack
//! verify` names the cause when one input differs: the compose file by a
//! trailing newline, the kernel command line, the image, the VM shape, an
//! RTMR3 event appended to the log, and a quote from the other VM.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use dstack_e2e::harness::tempfile_dir::TempDir;
use dstack_e2e::harness::{Supervisor, bin_dir, free_port, newest_image, push_example, repo_root};
use serde_json::Value;
use sha2::{Digest, Sha256};

const BOOT: Duration = Duration::from_secs(600);

/// One booted VM of the app and its shape.
struct Cvm {
    name: &'static str,
    vcpus: u32,
    memory: &'static str,
    port: u16,
}

fn app_compose() -> PathBuf {
    repo_root().join("examples/attested-web/app-compose.json")
}

fn dstack(args: &[&str]) -> Output {
    Command::new(bin_dir().join("dstack"))
        .args(args)
        .output()
        .expect("cannot run dstack")
}

fn curl(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sfk", "--max-time", "60", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_https(sup: &Supervisor, cvm: &Cvm) {
    let deadline = Instant::now() + BOOT;
    let url = format!("https://127.0.0.1:{}/", cvm.port);
    while Instant::now() < deadline {
        if curl(&url).is_some_and(|body| body.contains("attested")) {
            return;
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    panic!(
        "{} never answered on {url}; vm info:\n{}\nlogs:\n{}",
        cvm.name,
        sup.dstack_ok(&["vm", "info", cvm.name]),
        sup.dstack_ok(&["vm", "logs", "-n", "100", cvm.name])
    );
}

fn json_of(out: &Output, what: &str) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}); exit {:?}\nstdout: {}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `dstack verify` with the sim root and PCCS; `evidence` selects the quote.
fn verify(
    sup: &Supervisor,
    root: &Path,
    image: &Path,
    compose: &Path,
    shape: (u32, &str),
    evidence: &[&str],
) -> (Option<i32>, Value) {
    let vcpu = shape.0.to_string();
    let mut args = vec![
        "verify",
        "--json",
        "--image",
        image.to_str().unwrap(),
        "--compose",
        compose.to_str().unwrap(),
        "--vcpu",
        &vcpu,
        "--memory",
        shape.1,
        "--sim-root",
        root.to_str().unwrap(),
    ];
    let pccs = sup.host_pccs_url();
    args.extend(["--pccs", &pccs]);
    args.extend(evidence);
    let out = dstack(&args);
    let verdict = json_of(&out, "dstack verify --json");
    eprintln!(
        "verify {evidence:?} {shape:?}: exit {:?}, {}",
        out.status.code(),
        verdict["first_failure"]
    );
    (out.status.code(), verdict)
}

fn check<'a>(verdict: &'a Value, name: &str) -> &'a Value {
    verdict["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["check"] == name))
        .unwrap_or_else(|| panic!("no {name} check in {verdict}"))
}

fn assert_rejected_at(result: &(Option<i32>, Value), expected_check: &str, words: &str) {
    let (code, verdict) = result;
    assert_eq!(
        *code,
        Some(1),
        "expected a rejection at {expected_check}: {verdict}"
    );
    assert_eq!(verdict["verdict"], "rejected");
    let first = &verdict["first_failure"];
    assert_eq!(first["check"], expected_check, "first failure: {first}");
    let message = first["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(words),
        "the finding at {expected_check} does not say {words:?}: {message}"
    );
}

/// A copy of the image with `change` applied, its sha256sum.txt and
/// digest.txt rewritten so it is a consistent (but different) image.
fn altered_image(base: &Path, into: &Path, change: impl FnOnce(&Path)) -> PathBuf {
    let dir = into.join(base.file_name().unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(base).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    change(&dir);
    let sums = std::fs::read_to_string(dir.join("sha256sum.txt")).unwrap();
    let mut rewritten = String::new();
    for line in sums.lines() {
        let (_, name) = line.split_once("  ").expect("sha256sum line");
        let hash = hex::encode(Sha256::digest(std::fs::read(dir.join(name)).unwrap()));
        rewritten.push_str(&format!("{hash}  {name}\n"));
    }
    std::fs::write(dir.join("sha256sum.txt"), &rewritten).unwrap();
    std::fs::write(
        dir.join("digest.txt"),
        format!("{}\n", hex::encode(Sha256::digest(rewritten.as_bytes()))),
    )
    .unwrap();
    dir
}

#[test]
fn measure_predicts_the_quote_and_verify_names_what_differs() {
    push_example("python-sdk").expect("push the python-sdk example image");
    let sup = Supervisor::start("verify").unwrap();
    let work = TempDir::new("dstack-verify").unwrap();
    let root = work.path().join("sim-root.pem");
    let sim_root = Command::new(bin_dir().join("dstack-supervisor"))
        .args(["sim-root", "--state-dir"])
        .arg(sup.state.path())
        .output()
        .unwrap();
    assert!(sim_root.status.success());
    std::fs::write(&root, &sim_root.stdout).unwrap();

    let compose = app_compose();
    let cvms = [
        Cvm {
            name: "attested-a",
            vcpus: 1,
            memory: "1G",
            port: free_port(),
        },
        Cvm {
            name: "attested-b",
            vcpus: 2,
            memory: "1536M",
            port: free_port(),
        },
    ];
    for cvm in &cvms {
        let (vcpu, port) = (
            cvm.vcpus.to_string(),
            format!("127.0.0.1:{}:8443", cvm.port),
        );
        sup.dstack_ok(&[
            "vm",
            "deploy",
            compose.to_str().unwrap(),
            "--name",
            cvm.name,
            "--vcpu",
            &vcpu,
            "--memory",
            cvm.memory,
            "--port",
            &port,
            "--no-wait",
        ]);
    }
    for cvm in &cvms {
        wait_https(&sup, cvm);
    }
    let image = newest_image();

    // The prediction equals what each quote reports, and the live app verifies.
    let mut predicted = Vec::new();
    for cvm in &cvms {
        let vcpu = cvm.vcpus.to_string();
        let out = dstack(&[
            "image",
            "measure",
            image.to_str().unwrap(),
            "--vcpu",
            &vcpu,
            "--memory",
            cvm.memory,
            "--json",
        ]);
        assert!(
            out.status.success(),
            "measure: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let measured = json_of(&out, "dstack image measure --json");
        let url = format!("https://127.0.0.1:{}", cvm.port);
        let result = verify(
            &sup,
            &root,
            &image,
            &compose,
            (cvm.vcpus, cvm.memory),
            &["--url", &url],
        );
        assert_eq!(
            result.0,
            Some(0),
            "{} does not verify: {}",
            cvm.name,
            result.1
        );
        assert_eq!(result.1["verdict"], "verified");
        for register in ["mrtd", "rtmr0", "rtmr1", "rtmr2"] {
            let quoted = &check(&result.1, register)["actual"];
            assert_eq!(
                measured[register], *quoted,
                "{}: measure predicts {register} {} but the quote reports {quoted}",
                cvm.name, measured[register]
            );
        }
        predicted.push(measured);
    }
    // The two shapes differ where a shape must: RTMR0 (TD HOB, ACPI) and RTMR1 (memory in the kernel header).
    assert_eq!(predicted[0]["mrtd"], predicted[1]["mrtd"]);
    assert_ne!(predicted[0]["rtmr0"], predicted[1]["rtmr0"]);
    assert_eq!(predicted[0]["rtmr2"], predicted[1]["rtmr2"]);

    let a = &cvms[0];
    let shape_a = (a.vcpus, a.memory);
    let url_a = format!("https://127.0.0.1:{}", a.port);

    // The compose file differs by one trailing newline.
    let newline = work.path().join("app-compose-newline.json");
    let mut bytes = std::fs::read(&compose).unwrap();
    bytes.push(b'\n');
    std::fs::write(&newline, bytes).unwrap();
    assert_rejected_at(
        &verify(&sup, &root, &image, &newline, shape_a, &["--url", &url_a]),
        "compose-hash",
        "trailing newline",
    );

    // The kernel command line differs (an otherwise identical image).
    let cmdline = altered_image(&image, &work.path().join("cmdline"), |dir| {
        let path = dir.join("metadata.json");
        let mut metadata: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let line = format!("{} dstack.extra=1", metadata["cmdline"].as_str().unwrap());
        metadata["cmdline"] = Value::String(line);
        std::fs::write(&path, serde_json::to_vec_pretty(&metadata).unwrap()).unwrap();
    });
    assert_rejected_at(
        &verify(&sup, &root, &cmdline, &compose, shape_a, &["--url", &url_a]),
        "rtmr2",
        "command line",
    );

    // The image differs: one byte of the kernel.
    let kernel = altered_image(&image, &work.path().join("kernel"), |dir| {
        let path = dir.join("bzImage");
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 100;
        bytes[at] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
    });
    assert_rejected_at(
        &verify(&sup, &root, &kernel, &compose, shape_a, &["--url", &url_a]),
        "rtmr1",
        "kernel",
    );

    // The VM shape differs: the app runs with 1 GiB, not 2.
    assert_rejected_at(
        &verify(
            &sup,
            &root,
            &image,
            &compose,
            (a.vcpus, "2G"),
            &["--url", &url_a],
        ),
        "rtmr0",
        "VM shape",
    );

    // An extra RTMR3 event appended to a fresh quote's log.
    let nonce_a = "a1".repeat(32);
    let quote_a = curl(&format!("{url_a}/quote?nonce={nonce_a}")).expect("GET /quote from a");
    let mut response: Value = serde_json::from_str(&quote_a).unwrap();
    let plain = work.path().join("quote-a.json");
    std::fs::write(&plain, &quote_a).unwrap();
    assert_eq!(
        verify(
            &sup,
            &root,
            &image,
            &compose,
            shape_a,
            &[
                "--quote",
                plain.to_str().unwrap(),
                "--report-data",
                &nonce_a
            ]
        )
        .0,
        Some(0),
        "the unaltered quote and log verify"
    );
    let mut events: Vec<Value> =
        serde_json::from_str(response["event_log"].as_str().unwrap()).unwrap();
    events.push(serde_json::json!({
        "imr": 3, "event_type": 134217729u32, "digest": "",
        "event": "extra", "event_payload": "01"
    }));
    response["event_log"] = Value::String(serde_json::to_string(&events).unwrap());
    let appended = work.path().join("quote-a-appended.json");
    std::fs::write(&appended, serde_json::to_vec(&response).unwrap()).unwrap();
    assert_rejected_at(
        &verify(
            &sup,
            &root,
            &image,
            &compose,
            shape_a,
            &[
                "--quote",
                appended.to_str().unwrap(),
                "--report-data",
                &nonce_a,
            ],
        ),
        "rtmr3",
        "event",
    );

    // A quote from the other VM, presented for the nonce we sent to this one.
    let b = &cvms[1];
    let quote_b = curl(&format!(
        "https://127.0.0.1:{}/quote?nonce={}",
        b.port,
        "b2".repeat(32)
    ))
    .expect("GET /quote from b");
    let other = work.path().join("quote-b.json");
    std::fs::write(&other, quote_b).unwrap();
    assert_rejected_at(
        &verify(
            &sup,
            &root,
            &image,
            &compose,
            shape_a,
            &[
                "--quote",
                other.to_str().unwrap(),
                "--report-data",
                &nonce_a,
            ],
        ),
        "report-data",
        "another VM",
    );

    for cvm in &cvms {
        sup.dstack_ok(&["vm", "rm", cvm.name]);
    }
}
