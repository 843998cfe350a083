//! Compose apps in real CVMs (QEMU TCG) behind a real supervisor, pulled from
//! a real local registry, driven through the `dstack` CLI.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::net::TcpListener;
use std::time::Duration;

use dstack_e2e::harness::{Supervisor, free_port, http_get, push_example, repo_root};

const BOOT: Duration = Duration::from_secs(120);

fn example(name: &str) -> String {
    repo_root()
        .join("examples")
        .join(name)
        .join("compose.yml")
        .display()
        .to_string()
}

fn serial(sup: &Supervisor, vm: &str) -> String {
    sup.dstack_ok(&["vm", "logs", "--serial", "-n", "2000", vm])
}

#[test]
fn hello_deploys_serves_logs_survives_supervisor_kill_and_leaves_nothing() {
    push_example("hello").unwrap();
    let mut sup = Supervisor::start("hello").unwrap();
    let port = free_port();
    let port_arg = format!("{port}:80");
    sup.dstack_ok(&[
        "vm",
        "deploy",
        &example("hello"),
        "--name",
        "hello",
        "--port",
        &port_arg,
    ]);
    let body = http_get(port, "/", BOOT).unwrap();
    assert!(body.contains("Hello from a dstack-rs CVM"), "{body}");

    // The container's own output (busybox httpd -v logs each request) reaches the host.
    let mut logs = String::new();
    for _ in 0..40 {
        logs = sup.dstack_ok(&["vm", "logs", "hello"]);
        if logs.contains("web |") && logs.contains("response:200") {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        logs.contains("web |") && logs.contains("response:200"),
        "container log missing:\n{logs}"
    );

    // Kill the supervisor outright: the VM keeps running and is managed again after a restart.
    sup.kill();
    assert!(
        http_get(port, "/", Duration::from_secs(10)).is_ok(),
        "VM died with the supervisor"
    );
    sup.spawn().unwrap();
    let ls = sup.dstack_ok(&["vm", "ls"]);
    assert!(ls.contains("hello") && ls.contains("running"), "{ls}");
    let info = sup.dstack_ok(&["vm", "info", "hello"]);
    assert!(info.contains("compose-hash:"), "{info}");

    // Graceful stop: the guest unmounts its data disk before powering off.
    sup.dstack_ok(&["vm", "stop", "hello"]);
    let console = serial(&sup, "hello");
    assert!(
        console.contains("unmounted /data cleanly"),
        "no clean unmount on the console:\n{console}"
    );
    assert!(
        http_get(port, "/", Duration::from_secs(2)).is_err(),
        "port still answers after stop"
    );

    sup.dstack_ok(&["vm", "rm", "hello"]);
    assert!(
        sup.vm_processes().is_empty(),
        "processes left behind: {:?}",
        sup.vm_processes()
    );
    let vms_dir = sup.state.path().join("vms");
    let left: Vec<_> = std::fs::read_dir(&vms_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

#[test]
fn a_web_service_reaches_a_second_service_by_name() {
    push_example("two-services").unwrap();
    let sup = Supervisor::start("two").unwrap();
    let port = free_port();
    let port_arg = format!("{port}:80");
    sup.dstack_ok(&[
        "vm",
        "deploy",
        &example("two-services"),
        "--name",
        "two",
        "--port",
        &port_arg,
    ]);
    let body = http_get(port, "/cgi-bin/hello", BOOT).unwrap();
    assert!(body.contains("web got: backend says hi"), "{body}");
}

#[test]
fn named_volume_survives_stop_and_start() {
    push_example("counter").unwrap();
    let sup = Supervisor::start("counter").unwrap();
    let port = free_port();
    let port_arg = format!("{port}:80");
    // The data disk is encrypted with the app's disk key: keeping data
    // across boots needs a key provider that gives the same key each boot
    // (here the local one the sim host serves; `none` makes a new key).
    let yaml = std::fs::read_to_string(example("counter")).unwrap();
    let app = sup.state.path().join("counter.json");
    let manifest = serde_json::json!({
        "docker_compose_file": yaml,
        "key_provider": "local",
        "manifest_version": 2,
        "name": "counter",
        "runner": "docker-compose",
    });
    std::fs::write(&app, manifest.to_string()).unwrap();
    sup.dstack_ok(&[
        "vm",
        "deploy",
        app.to_str().unwrap(),
        "--name",
        "counter",
        "--port",
        &port_arg,
    ]);
    let first = http_get(port, "/boots.txt", BOOT).unwrap();
    assert_eq!(first.lines().count(), 1, "{first}");
    sup.dstack_ok(&["vm", "stop", "counter"]);
    sup.dstack_ok(&["vm", "start", "counter"]);
    let second = http_get(port, "/boots.txt", BOOT).unwrap();
    assert_eq!(
        second.lines().count(),
        2,
        "the volume lost its data: {second}"
    );
    assert!(second.starts_with(first.trim()), "{first} / {second}");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let sup = Supervisor::start("bad").unwrap();
    let dir = dstack_e2e::harness::tempfile_dir::TempDir::new("dstack-bad").unwrap();

    let bad = dir.path().join("compose.yml");
    std::fs::write(&bad, "services:\n  web:\n    ports: [\"80\"]\n").unwrap();
    let out = sup.dstack(&["vm", "deploy", bad.to_str().unwrap(), "--name", "bad"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("services.web.image"), "{err}");

    let out = sup.dstack(&[
        "vm",
        "deploy",
        &example("hello"),
        "--name",
        "noimage",
        "--image",
        "no-such-image",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-image"), "{err}");

    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let port_arg = format!("{busy_port}:80");
    let out = sup.dstack(&[
        "vm",
        "deploy",
        &example("hello"),
        "--name",
        "busy",
        "--port",
        &port_arg,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&busy_port.to_string()), "{err}");

    let out = sup.dstack(&["vm", "info", "no-such-vm"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-vm"));

    let ls = sup.dstack_ok(&["vm", "ls", "--json"]);
    let vms: Vec<serde_json::Value> = serde_json::from_str(&ls).unwrap();
    assert!(vms.is_empty(), "a refused deploy left a VM: {ls}");
    let vms_dir = sup.state.path().join("vms");
    let left: Vec<_> = std::fs::read_dir(&vms_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a refused deploy left files: {left:?}");
}
