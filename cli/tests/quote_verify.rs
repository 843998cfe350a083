//! `dstack quote verify` end to end: the real sample quotes, a tampered one,
//! and a simulated-TEE quote, through the built binary.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use dstack_attest::{Platform, RuntimeEvent, SimAuthority, SimPlatform, SimTdIdentity};

fn manifest_dir() -> PathBuf {
    // The manifest dir cargo gives the running test, before the one compiled
    // in: a target dir shared by two checkouts can hold a build of the other.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

fn testdata(name: &str) -> PathBuf {
    let dir = std::env::var_os("DSTACK_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("../../shared/testdata"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "testdata not found at {}: set DSTACK_TESTDATA to the shared/testdata directory",
        path.display()
    );
    path
}

fn dstack(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dstack"))
        .args(args)
        .output()
        .expect("dstack runs")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn collateral_issue_time(collateral: &Path) -> String {
    let outer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(collateral).unwrap()).unwrap();
    let tcb: serde_json::Value = serde_json::from_str(outer["tcb_info"].as_str().unwrap()).unwrap();
    tcb["issueDate"].as_str().unwrap().to_string()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn tdx_sample_is_up_to_date_at_its_collateral_time() {
    let quote = testdata("tdx_quote");
    let collateral = testdata("tdx_quote_collateral.json");
    let out = dstack(&[
        "quote",
        "verify",
        p(&quote),
        "--collateral",
        p(&collateral),
        "--at",
        "2025-06-20T00:00:00Z",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("tcb status:    UpToDate"), "{stdout}");
    assert!(stdout.contains("mrtd:"), "{stdout}");
    for i in 0..4 {
        assert!(stdout.contains(&format!("rtmr{i}:")), "{stdout}");
    }
    assert!(stdout.contains("report_data:"), "{stdout}");

    let out = dstack(&[
        "quote",
        "verify",
        p(&quote),
        "--collateral",
        p(&collateral),
        "--at",
        "2025-06-20T00:00:00Z",
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["tcb_status"], "UpToDate");
    assert_eq!(json["mrtd"].as_str().unwrap().len(), 96);
    assert_eq!(json["rtmr3"].as_str().unwrap().len(), 96);
}

#[test]
fn expired_collateral_is_reported_by_default() {
    let out = dstack(&[
        "quote",
        "verify",
        p(&testdata("tdx_quote")),
        "--collateral",
        p(&testdata("tdx_quote_collateral.json")),
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("collateral expired at 2025-07-19T10:16:03Z"),
        "{stderr}"
    );
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one-line reason: {stderr}"
    );
}

#[test]
fn outdated_platform_is_refused_with_the_appraisal_reason() {
    let collateral = testdata("tdx_quote_outdated_collateral.json");
    let at = collateral_issue_time(&collateral);
    let out = dstack(&[
        "quote",
        "verify",
        p(&testdata("tdx_quote_outdated")),
        "--collateral",
        p(&collateral),
        "--at",
        &at,
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("platform TCB matches no level in the TCB info"),
        "{stderr}"
    );
}

#[test]
fn sgx_sample_reports_status_and_advisories() {
    let collateral = testdata("sgx_quote_collateral.json");
    let at = collateral_issue_time(&collateral);
    let out = dstack(&[
        "quote",
        "verify",
        p(&testdata("sgx_quote")),
        "--collateral",
        p(&collateral),
        "--at",
        &at,
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out).1);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["tcb_status"], "ConfigurationAndSWHardeningNeeded");
    let advisories: Vec<&str> = json["advisory_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(advisories.contains(&"INTEL-SA-00289"), "{advisories:?}");
    assert!(advisories.contains(&"INTEL-SA-00615"), "{advisories:?}");
    // Narrowing the policy to UpToDate refuses it, naming the status.
    let out = dstack(&[
        "quote",
        "verify",
        p(&testdata("sgx_quote")),
        "--collateral",
        p(&collateral),
        "--at",
        &at,
        "--accept",
        "UpToDate",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out)
            .1
            .contains("ConfigurationAndSWHardeningNeeded is not accepted")
    );
}

#[test]
fn flipped_byte_in_the_signed_body_breaks_the_signature() {
    let dir = tempfile::tempdir().unwrap();
    let mut quote = std::fs::read(testdata("tdx_quote")).unwrap();
    quote[48 + 200] ^= 0x80; // inside the TD report, which the attestation key signs
    let tampered = dir.path().join("tampered");
    std::fs::write(&tampered, &quote).unwrap();
    let out = dstack(&[
        "quote",
        "verify",
        p(&tampered),
        "--collateral",
        p(&testdata("tdx_quote_collateral.json")),
        "--at",
        "2025-06-20T00:00:00Z",
    ]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("quote signature is invalid"), "{stderr}");
}

#[test]
fn bad_input_is_exit_2_with_a_reason() {
    let out = dstack(&[
        "quote",
        "verify",
        "/nonexistent/quote",
        "--collateral",
        "/nonexistent/c",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("cannot read /nonexistent/quote"));
    let out = dstack(&[
        "quote",
        "verify",
        p(&testdata("tdx_quote")),
        "--collateral",
        p(&testdata("tdx_quote_collateral.json")),
        "--at",
        "yesterday",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("RFC 3339"));
}

#[test]
fn sim_quote_verifies_only_with_the_sim_root_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = SimPlatform::new(authority.clone(), SimTdIdentity::default(), vec![]).unwrap();
    td.emit_event(&RuntimeEvent {
        name: "compose-hash".into(),
        payload: vec![0xcd; 32],
    })
    .unwrap();
    let quote = td.quote(&[0x01; 64]).unwrap();
    // As dstack's /GetQuote returns it: hex quote, event log as a JSON string.
    let response = serde_json::json!({
        "quote": hex::encode(&quote),
        "event_log": serde_json::to_string(&td.event_log().unwrap()).unwrap(),
        "report_data": hex::encode([0x01; 64]),
    });
    let quote_path = dir.path().join("quote.json");
    std::fs::write(&quote_path, response.to_string()).unwrap();
    let collateral_path = dir.path().join("collateral.json");
    std::fs::write(
        &collateral_path,
        td.collateral().unwrap().unwrap().to_json(),
    )
    .unwrap();
    let root_path = dir.path().join("root.pem");
    std::fs::write(&root_path, authority.root_pem()).unwrap();

    let out = dstack(&[
        "quote",
        "verify",
        p(&quote_path),
        "--collateral",
        p(&collateral_path),
        "--root",
        p(&root_path),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("1 events replay to RTMR0-3: match"),
        "{stdout}"
    );

    let out = dstack(&[
        "quote",
        "verify",
        p(&quote_path),
        "--collateral",
        p(&collateral_path),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("certificate chain is not trusted"),
        "{}",
        text(&out).1
    );
}

/// `--pccs` against the supervisor's sim PCCS, served on loopback: the same
/// fetch a verifier does against Intel's PCS on hardware.
#[test]
fn sim_quote_verifies_with_collateral_from_the_sim_pccs() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let pccs = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(dstack_supervisor::sim_pccs::serve(
        listener,
        authority.clone(),
    ));

    let td = SimPlatform::new(authority.clone(), SimTdIdentity::default(), vec![]).unwrap();
    let quote_path = dir.path().join("quote.bin");
    std::fs::write(&quote_path, td.quote(&[0x02; 64]).unwrap()).unwrap();
    let root_path = dir.path().join("root.pem");
    std::fs::write(&root_path, authority.root_pem()).unwrap();

    let out = dstack(&[
        "quote",
        "verify",
        p(&quote_path),
        "--pccs",
        &pccs,
        "--root",
        p(&root_path),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("tcb status:    UpToDate"), "{stdout}");

    // Another host's sim PCCS: collateral arrives but is not under this root.
    let other = SimAuthority::generate().unwrap();
    std::fs::write(&root_path, other.root_pem()).unwrap();
    let out = dstack(&[
        "quote",
        "verify",
        p(&quote_path),
        "--pccs",
        &pccs,
        "--root",
        p(&root_path),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out).1);

    // Nobody listening: a named fetch error, not a verification verdict.
    drop(runtime);
    let out = dstack(&["quote", "verify", p(&quote_path), "--pccs", &pccs]);
    let (_, stderr) = text(&out);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr.contains("unreachable"), "{stderr}");
}
