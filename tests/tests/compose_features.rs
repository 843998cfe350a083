//! Compose keys beyond the basics, in a real CVM (QEMU TCG): `configs`
//! files with their mode and owner, `tmpfs`, `read_only`, `ulimits`,
//! `sysctls`, `hostname`, `extra_hosts`, `group_add`, `devices`, binds of
//! the CVM's own paths (`/tapp`, a directory the app makes), `stop_signal`,
//! and a memory limit the kernel enforces: the service is OOM-killed and
//! restarted as its policy says. `dstack vm deploy --check` reads the same
//! file without a supervisor.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::time::{Duration, Instant};

use dstack_e2e::harness::{Supervisor, bin_dir, push_image, tempfile_dir::TempDir};

const IMAGE: &str = "127.0.0.1:5000/dstack-tests/features:latest";

fn compose() -> String {
    format!(
        r#"
name: features
x-common: &common
  image: {IMAGE}
  labels: {{purpose: e2e}}
  logging: {{driver: json-file}}
configs:
  greeting:
    content: "hello from configs"
  settings:
    content: |
      mode=${{MODE:-strict}}
services:
  writer:
    <<: *common
    volumes: ["/run/app-shared:/shared"]
    command: ["/bin/sh", "-c", "echo shared-by-writer > /shared/note; echo done"]
  files:
    <<: *common
    depends_on:
      writer: {{condition: service_completed_successfully}}
    configs:
      - source: greeting
        target: /etc/greeting
        mode: 0440
        uid: "1000"
        gid: "1001"
      - settings
    tmpfs: ["/scratch:size=1m,mode=0700"]
    read_only: true
    ulimits: {{nofile: {{soft: 100, hard: 200}}}}
    sysctls: {{kernel.shm_rmid_forced: 1}}
    hostname: filesbox
    extra_hosts: ["db.internal:10.1.2.3"]
    group_add: ["1234"]
    devices: ["/dev/zero:/dev/myzero:r"]
    stop_signal: SIGUSR1
    volumes:
      - /tapp:/tapp:ro
      - /run/app-shared:/shared:ro
    command:
      - /bin/sh
      - -c
      - >-
        echo "greeting=$$(cat /etc/greeting) stat=$$(stat -c '%a:%u:%g' /etc/greeting)";
        echo "settings=$$(cat /settings)";
        touch /rootfile 2>/dev/null; echo "rootwrite=$$?";
        touch /scratch/x && echo "scratch=$$(stat -c %a /scratch)";
        echo "nofile=$$(ulimit -n)";
        echo "shm_rmid_forced=$$(cat /proc/sys/kernel/shm_rmid_forced)";
        echo "hostname=$$(hostname)";
        echo "hosts=$$(grep db.internal /etc/hosts | tr -s '\t ' '_')";
        echo "groups=$$(id -G | tr ' ' ,)";
        echo "myzero=$$(head -c 3 /dev/myzero | od -An -tx1 | tr -d ' ')";
        echo "tapp=$$(head -c 10 /tapp/docker-compose.yaml | tr -d '\n')";
        echo "shared=$$(cat /shared/note)";
        echo done;
        exec sleep 3600
  hog:
    <<: *common
    deploy:
      resources:
        limits: {{memory: 16m, pids: 50}}
    restart: on-failure:2
    command: ["/bin/sh", "-c", "echo hog-start; exec dd if=/dev/zero of=/dev/null bs=64M count=1"]
"#
    )
}

fn value<'a>(logs: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    logs.lines()
        .filter_map(|l| l.split_once("files | ").map(|(_, rest)| rest))
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key}= line in the logs:\n{logs}"))
        .trim()
}

#[test]
fn compose_keys_take_effect_in_the_cvm() {
    let dir = TempDir::new("dstack-features").unwrap();
    std::fs::write(
        dir.path().join("image.json"),
        r#"{"repository": "dstack-tests/features", "tag": "latest", "busybox": true}"#,
    )
    .unwrap();
    push_image(dir.path()).unwrap();
    let compose_path = dir.path().join("compose.yml");
    std::fs::write(&compose_path, compose()).unwrap();

    // --check needs no supervisor: run the CLI against nothing.
    let check = std::process::Command::new(bin_dir().join("dstack"))
        .args([
            "--supervisor",
            "unix:/nonexistent/supervisor.sock",
            "vm",
            "deploy",
            "--check",
        ])
        .arg(&compose_path)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        out.contains("accepted (3 services: files, hog, writer)"),
        "{out}"
    );
    assert!(out.contains("ignored  services.files.labels"), "{out}");

    let sup = Supervisor::start("features").unwrap();
    sup.dstack_ok(&[
        "vm",
        "deploy",
        compose_path.to_str().unwrap(),
        "--name",
        "feat",
    ]);
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut logs = String::new();
    while Instant::now() < deadline {
        logs = sup.dstack_ok(&["vm", "logs", "feat"]);
        let hog_runs = logs.matches("hog | hog-start").count();
        if logs.contains("files | done") && hog_runs >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    assert_eq!(
        value(&logs, "greeting"),
        "hello from configs stat=440:1000:1001"
    );
    assert_eq!(value(&logs, "settings"), "mode=strict");
    assert_ne!(
        value(&logs, "rootwrite"),
        "0",
        "the root filesystem is read-only"
    );
    assert_eq!(value(&logs, "scratch"), "700");
    assert_eq!(value(&logs, "nofile"), "100");
    assert_eq!(value(&logs, "shm_rmid_forced"), "1");
    assert_eq!(value(&logs, "hostname"), "filesbox");
    assert_eq!(value(&logs, "hosts"), "10.1.2.3_db.internal");
    assert!(
        value(&logs, "groups").split(',').any(|g| g == "1234"),
        "{logs}"
    );
    assert_eq!(value(&logs, "myzero"), "000000");
    // The compose file as written, under upstream's legacy /tapp name.
    assert_eq!(value(&logs, "tapp"), "name: fea");
    assert_eq!(value(&logs, "shared"), "shared-by-writer");

    // 16 MiB cannot hold a 64 MiB buffer: killed, restarted twice, then left.
    assert_eq!(logs.matches("hog | hog-start").count(), 3, "{logs}");
    let info = sup.dstack_ok(&["vm", "info", "feat", "--json"]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let hog = info["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["service"] == "hog")
        .unwrap_or_else(|| panic!("no hog in {info:#}"));
    assert_eq!(hog["restarts"], 2, "{info:#}");
    assert_eq!(hog["exit_code"], 137, "SIGKILL by the OOM killer: {info:#}");

    sup.dstack_ok(&["vm", "stop", "feat"]);
}
