//! Container hardening in a real CVM (QEMU TCG): a service gets docker's
//! default seccomp profile, capabilities and read-only /proc paths, plus
//! no_new_privs; a `privileged: true` service gets none of that.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dstack_e2e::harness::{Supervisor, push_image, repo_root, tempfile_dir::TempDir};

/// CAP_SYS_ADMIN's bit in /proc/<pid>/status's CapEff.
const CAP_SYS_ADMIN_BIT: u32 = 21;

const COMPOSE: &str = r#"
services:
  confined:
    image: 127.0.0.1:5000/dstack-tests/hardening:latest
    command:
      - /bin/sh
      - -c
      - >-
        /probe;
        /bin/busybox unshare -U /bin/busybox true;
        echo "unshare-exit=$$?";
        echo done
  privileged:
    image: 127.0.0.1:5000/dstack-tests/hardening:latest
    privileged: true
    command: ["/bin/sh", "-c", "/probe; echo done"]
"#;

/// Builds the probe (tests/probes/hardening-probe.rs) static for musl with
/// plain rustc: it needs no crates.
fn build_probe(out: &Path) {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let status = Command::new(rustc)
        .args(["--edition", "2021", "-O", "-C", "strip=symbols"])
        .args(["--target", "x86_64-unknown-linux-musl", "-o"])
        .arg(out)
        .arg(repo_root().join("tests/probes/hardening-probe.rs"))
        .status()
        .unwrap();
    assert!(status.success(), "building the probe failed");
}

/// The `probe ...` line a service printed, as key=value pairs.
fn probe_line(logs: &str, service: &str) -> Option<Vec<(String, String)>> {
    let prefix = format!("{service} |");
    logs.lines()
        .filter_map(|l| l.split_once(&prefix).map(|(_, rest)| rest.trim()))
        .find_map(|l| l.strip_prefix("probe "))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
}

fn get<'a>(probe: &'a [(String, String)], key: &str) -> &'a str {
    probe
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {probe:?}"))
}

fn has_cap(cap_eff: &str, bit: u32) -> bool {
    let mask = u64::from_str_radix(cap_eff, 16).unwrap();
    mask & (1 << bit) != 0
}

#[test]
fn services_are_confined_unless_privileged() {
    let dir = TempDir::new("dstack-hardening").unwrap();
    build_probe(&dir.path().join("probe"));
    std::fs::write(
        dir.path().join("image.json"),
        r#"{"repository": "dstack-tests/hardening", "tag": "latest", "busybox": true,
            "files": {"/probe": "probe"}}"#,
    )
    .unwrap();
    push_image(dir.path()).unwrap();
    let compose = dir.path().join("compose.yml");
    std::fs::write(&compose, COMPOSE).unwrap();

    let sup = Supervisor::start("hardening").unwrap();
    sup.dstack_ok(&["vm", "deploy", compose.to_str().unwrap(), "--name", "hard"]);
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut logs = String::new();
    while Instant::now() < deadline {
        logs = sup.dstack_ok(&["vm", "logs", "hard"]);
        let finished = |svc: &str| logs.contains(&format!("{svc} | done"));
        if finished("confined") && finished("privileged") {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let confined = probe_line(&logs, "confined").unwrap_or_else(|| panic!("no probe:\n{logs}"));
    // Refused by docker's profile: EPERM, not the kernel's own answer.
    assert_eq!(get(&confined, "keyctl"), "EPERM", "{logs}");
    assert_eq!(get(&confined, "add_key"), "EPERM", "{logs}");
    assert_eq!(get(&confined, "unshare_user"), "EPERM", "{logs}");
    assert_eq!(get(&confined, "vsock"), "EPERM", "{logs}");
    // Writing /proc/sysrq-trigger fails: read-only where the kernel has
    // magic SysRq (Debian's), absent where it has not (ours).
    let sysrq = get(&confined, "sysrq");
    assert!(sysrq == "EROFS" || sysrq == "ENOENT", "{logs}");
    // /proc/sys is mounted read-only.
    assert_eq!(get(&confined, "procsys"), "EROFS", "{logs}");
    assert!(
        !has_cap(get(&confined, "capeff"), CAP_SYS_ADMIN_BIT),
        "{logs}"
    );
    // Docker's 14 default capabilities: 0xa80425fb.
    assert_eq!(get(&confined, "capeff"), "00000000a80425fb", "{logs}");
    assert_eq!(get(&confined, "nnp"), "1", "{logs}");
    assert_eq!(get(&confined, "seccomp"), "2", "{logs}");
    // busybox's unshare -U fails the same way.
    assert!(
        logs.lines()
            .any(|l| l.contains("confined | unshare:") && l.contains("Operation not permitted")),
        "{logs}"
    );
    assert!(!logs.contains("confined | unshare-exit=0"), "{logs}");

    let privileged = probe_line(&logs, "privileged").unwrap_or_else(|| panic!("no probe:\n{logs}"));
    assert!(
        has_cap(get(&privileged, "capeff"), CAP_SYS_ADMIN_BIT),
        "{logs}"
    );
    assert_eq!(get(&privileged, "seccomp"), "0", "{logs}");
    assert_ne!(get(&privileged, "keyctl"), "EPERM", "{logs}");
    assert_ne!(get(&privileged, "sysrq"), "EROFS", "{logs}");
    assert_eq!(get(&privileged, "procsys"), "ok", "{logs}");
}
