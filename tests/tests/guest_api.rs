//! The official dstack SDKs, unmodified, inside real CVMs (QEMU TCG) booted
//! by our supervisor: the Python SDK (`dstack-sdk` 0.5.4) and the JS SDK
//! (`@phala/dstack-sdk`) drive every guest-API call from an app container
//! through `/var/run/dstack.sock` and check the results; the Python SDK's own
//! pytest suite runs against the same socket; a quote fetched inside the CVM
//! verifies on the host with the supervisor's simulated root, and only with it.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dstack_e2e::harness::{Supervisor, bin_dir, push_example, repo_root};

/// Boot, pull (a 40–55 MiB layer, unpacked under TCG) and run everything.
const DONE: Duration = Duration::from_secs(900);

fn compose(name: &str) -> String {
    repo_root()
        .join("examples")
        .join(name)
        .join("compose.yml")
        .display()
        .to_string()
}

/// The service's output lines (without the `service | ` prefix).
fn service_lines(sup: &Supervisor, vm: &str, service: &str) -> Vec<String> {
    let logs = sup.dstack_ok(&["vm", "logs", "-n", "20000", "--service", service, vm]);
    let prefix = format!("{service} | ");
    logs.lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

/// Deploys an example and waits until its service printed `done_marker`
/// (or exited); returns its output.
fn run_example(sup: &Supervisor, example: &str, service: &str, done_marker: &str) -> Vec<String> {
    let started = Instant::now();
    push_example(example).unwrap();
    let pushed = started.elapsed();
    sup.dstack_ok(&[
        "vm",
        "deploy",
        &compose(example),
        "--name",
        example,
        "--memory",
        "2G",
        "--timeout",
        "600",
    ]);
    let booted = started.elapsed();
    let deadline = Instant::now() + DONE;
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        lines = service_lines(sup, example, service);
        if lines.iter().any(|l| l.starts_with(done_marker)) {
            break;
        }
        let info = sup.dstack_ok(&["vm", "info", example]);
        let exited = info
            .lines()
            .any(|l| l.trim_start().starts_with(service) && l.contains("exited"));
        if exited {
            // Give the last lines time to be shipped.
            std::thread::sleep(Duration::from_secs(2));
            lines = service_lines(sup, example, service);
            break;
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    eprintln!(
        "{example}: image built+pushed in {pushed:?}, deployed (running) at {booted:?}, done at {:?}",
        started.elapsed()
    );
    for l in &lines {
        if !l.starts_with("ARTIFACT ") {
            eprintln!("{example} | {l}");
        }
    }
    assert!(
        lines.iter().any(|l| l.starts_with(done_marker)),
        "{example} did not finish ({done_marker}) within {DONE:?}; serial console:\n{}",
        sup.dstack_ok(&["vm", "logs", "--serial", "-n", "300", example])
    );
    lines
}

/// PASS/FAIL lines: check name → (passed, reason).
fn checks(lines: &[String]) -> BTreeMap<String, (bool, String)> {
    let mut out = BTreeMap::new();
    for l in lines {
        if let Some(name) = l.strip_prefix("PASS ") {
            out.insert(name.trim().to_string(), (true, String::new()));
        } else if let Some(rest) = l.strip_prefix("FAIL ") {
            let (name, why) = rest.split_once(": ").unwrap_or((rest, ""));
            out.insert(name.to_string(), (false, why.to_string()));
        }
    }
    out
}

/// Every check passed, and every expected check ran.
fn assert_checks(what: &str, lines: &[String], expected: &[&str]) {
    let found = checks(lines);
    let failed: Vec<String> = found
        .iter()
        .filter(|(_, (ok, _))| !ok)
        .map(|(n, (_, why))| format!("{n}: {why}"))
        .collect();
    let missing: Vec<&&str> = expected
        .iter()
        .filter(|n| !found.contains_key(**n))
        .collect();
    assert!(
        failed.is_empty() && missing.is_empty(),
        "{what}: failed checks {failed:#?}; checks that never ran {missing:?}"
    );
    let summary = lines
        .iter()
        .find(|l| l.starts_with(&format!("SUMMARY {what}:")))
        .unwrap_or_else(|| panic!("{what}: no summary line"));
    assert!(summary.ends_with(" 0 failed"), "{summary}");
}

/// `ARTIFACT <name> <i>/<n> <base64>` chunks put back together.
fn artifact(lines: &[String], name: &str) -> Vec<u8> {
    let mut chunks: BTreeMap<usize, String> = BTreeMap::new();
    let mut total = 0;
    for l in lines {
        let mut parts = l.splitn(4, ' ');
        if parts.next() != Some("ARTIFACT") || parts.next() != Some(name) {
            continue;
        }
        let (i, n) = parts
            .next()
            .and_then(|p| p.split_once('/'))
            .expect("chunk index");
        total = n.parse().unwrap();
        chunks.insert(i.parse().unwrap(), parts.next().unwrap_or("").to_string());
    }
    assert!(
        total > 0 && chunks.len() == total,
        "artifact {name}: {} of {total} chunks in the log",
        chunks.len()
    );
    base64_decode(&chunks.into_values().collect::<String>())
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|c| *c != b'=').collect();
        let mut n = 0u32;
        for (i, c) in data.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        for i in 0..data.len().saturating_sub(1) {
            out.push(((n >> (16 - 8 * i)) & 0xff) as u8);
        }
    }
    out
}

fn supervisor_tool(sup: &Supervisor, cmd: &str) -> String {
    let out = Command::new(bin_dir().join("dstack-supervisor"))
        .arg(cmd)
        .arg("--state-dir")
        .arg(sup.state.path())
        .output()
        .expect("dstack-supervisor runs");
    assert!(
        out.status.success(),
        "dstack-supervisor {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn quote_verify(sup: &Supervisor, args: &[&Path]) -> std::process::Output {
    let mut cmd = Command::new(bin_dir().join("dstack"));
    cmd.args(["quote", "verify", "--json"]);
    let mut it = args.iter();
    cmd.arg(it.next().unwrap());
    let flags = ["--collateral", "--event-log", "--root"];
    for (flag, path) in flags.iter().zip(it) {
        cmd.arg(flag).arg(path);
    }
    cmd.env(
        "DSTACK_SUPERVISOR",
        format!("unix:{}", sup.socket().display()),
    );
    cmd.output().expect("dstack runs")
}

const DRIVER_CHECKS: &[&str] = &[
    "info.app_id",
    "info.compose_hash",
    "info.tcb_info.rtmrs",
    "info.compose_hash_is_sha256_of_app_compose",
    "info.event_log",
    "get_key.32_bytes",
    "get_key.same_path_same_key",
    "get_key.other_path_other_key",
    "get_key.k256_alias",
    "get_key.chain_recovers_to_one_app_key",
    "get_key.ed25519_32_bytes",
    "get_key.ed25519_chain_recovers_to_app_key",
    "get_quote.report_data",
    "get_quote.event_log_replays_rtmr3",
    "get_quote.sdk_replay_rtmrs_match_quote",
    "get_tls_key.plain.pem_key",
    "get_tls_key.plain.leaf_is_key",
    "get_tls_key.plain.leaf_signed_by_chain1",
    "get_tls_key.plain.no_quote_extension",
    "get_tls_key.ra_tls.pem_key",
    "get_tls_key.ra_tls.leaf_signed_by_chain1",
    "get_tls_key.ra_tls.quote_extension",
    "get_tls_key.ra_tls.quote_binds_leaf_key",
    "sign_verify.ed25519.valid",
    "sign_verify.ed25519.tampered_data_rejected",
    "sign_verify.ed25519.tampered_signature_rejected",
    "sign_verify.ed25519.key_signed_by_app_key",
    "sign_verify.secp256k1.valid",
    "sign_verify.secp256k1.tampered_data_rejected",
    "sign_verify.secp256k1.tampered_signature_rejected",
    "sign_verify.secp256k1.key_signed_by_app_key",
    "sign_verify.secp256k1_prehashed.valid",
    "sign_verify.secp256k1_prehashed.tampered_data_rejected",
    "sign_verify.secp256k1_prehashed.tampered_signature_rejected",
    "sign_verify.secp256k1_prehashed.key_signed_by_app_key",
    "emit_event.last_in_log",
    "emit_event.replay_matches_rtmr3",
];

const NEGATIVE_CHECKS: &[&str] = &[
    "negative.oversized_report_data",
    "negative.malformed_json",
    "negative.unknown_algorithm",
    "negative.unknown_sign_algorithm",
    "negative.non_hex_bytes",
    "negative.unknown_path",
    "negative.still_serving[2]",
];

#[test]
fn python_sdk_driver_sdk_test_suite_and_quote_verify_in_a_cvm() {
    let sup = Supervisor::start("python-sdk").unwrap();
    let lines = run_example(&sup, "python-sdk", "python-sdk", "ALL-DONE");

    // The SDK's own pytest suite: one line per test.
    let mut tests = BTreeMap::new();
    for l in &lines {
        if let Some((name, rest)) = l.split_once(' ')
            && name.starts_with("tests/")
            && name.contains("::")
        {
            let outcome = rest.split_whitespace().next().unwrap_or("").to_string();
            tests.insert(name.to_string(), outcome);
        }
    }
    eprintln!("dstack-sdk 0.5.4 test suite, {} tests:", tests.len());
    for (name, outcome) in &tests {
        eprintln!("  {outcome:8} {name}");
    }
    let bad: Vec<_> = tests.iter().filter(|(_, o)| *o != "PASSED").collect();

    // The quote the driver fetched after emitting its event verifies with the
    // supervisor's simulated root, and its event log replays to RTMR3.
    let dir = dstack_e2e::harness::tempfile_dir::TempDir::new("dstack-quote").unwrap();
    let quote = dir.path().join("quote.bin");
    let response = dir.path().join("get_quote.json");
    let root = dir.path().join("sim-root.pem");
    let collateral = dir.path().join("collateral.json");
    std::fs::write(&quote, artifact(&lines, "quote.bin")).unwrap();
    std::fs::write(&response, artifact(&lines, "get_quote.json")).unwrap();
    std::fs::write(&root, supervisor_tool(&sup, "sim-root")).unwrap();
    std::fs::write(&collateral, supervisor_tool(&sup, "sim-collateral")).unwrap();
    let ok = quote_verify(&sup, &[&quote, &collateral, &response, &root]);
    let ok_text = format!(
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    eprintln!("quote verify with the sim root:\n{ok_text}");
    let without = quote_verify(&sup, &[&quote, &collateral, &response]);
    eprintln!(
        "quote verify without it:\n{}{}",
        String::from_utf8_lossy(&without.stdout),
        String::from_utf8_lossy(&without.stderr)
    );

    assert_checks("python-sdk", &lines, DRIVER_CHECKS);
    assert_checks("python-negative", &lines, NEGATIVE_CHECKS);
    assert!(tests.len() >= 100, "only {} SDK tests ran", tests.len());
    assert!(bad.is_empty(), "SDK tests not passing: {bad:#?}");
    assert!(
        ok.status.success(),
        "quote rejected with the sim root: {ok_text}"
    );
    let verdict: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(
        verdict["replay"]["result"], "match",
        "the event log does not replay to the quote's RTMRs: {verdict}"
    );
    assert!(
        verdict["replay"]["events"].as_u64().unwrap_or(0) > 0,
        "{verdict}"
    );
    assert_eq!(
        verdict["report_data"].as_str().unwrap_or(""),
        format!("{:0<128}", hex::encode("after-emit")),
        "the verified quote is not the one the driver asked for"
    );
    assert!(
        !without.status.success(),
        "a simulated quote verified without the sim root"
    );
    assert!(
        String::from_utf8_lossy(&without.stdout).contains("not trusted"),
        "rejected for another reason than the untrusted root"
    );
}

#[test]
fn js_sdk_driver_in_a_cvm() {
    let sup = Supervisor::start("js-sdk").unwrap();
    let lines = run_example(&sup, "js-sdk", "js-sdk", "SUMMARY js-sdk:");
    let mut expected: Vec<&str> = DRIVER_CHECKS.to_vec();
    expected.extend([
        "get_key.rejects_prehashed_algorithm",
        "get_quote.over_64_bytes_rejected",
    ]);
    assert_checks("js-sdk", &lines, &expected);
}
