//! Runs real containers on this host with libcontainer. Needs root, so it is
//! ignored unless asked for:
//! `DSTACK_PRIVILEGED_TESTS=1 cargo test -p dstack-init -- --ignored privileged`.
//! It re-executes itself in a private mount namespace (`unshare -m`), so the
//! cgroup2 mount it may need, the overlays and the container mounts never
//! touch the host's mount table.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dstack_compose::Compose;
use dstack_proto::guest::ContainerState;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const TEST_NAME: &str =
    "containers::privileged_tests::privileged_busybox_services_run_restart_and_stop";
const BUSYBOX: &str = "/bin/busybox";

const COMPOSE: &str = r#"
services:
  hello:
    image: local/busybox:1
    command: ["sh", "-c", "echo hello from `hostname`; head -n1 /etc/hosts; id -u; echo oops >&2"]
  web:
    image: local/busybox:1
    command: ["httpd", "-f", "-p", "18080", "-h", "/www"]
    ports: ["18081:18080"]
    volumes: ["data:/data"]
    depends_on:
      hello:
        condition: service_completed_successfully
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:18080/"]
      interval: 300ms
      retries: 3
  flaky:
    image: local/busybox:1
    command: ["sh", "-c", "exit 3"]
    restart: on-failure:1
volumes:
  data: {}
"#;

/// A one-layer "image": busybox-static and its applets, /etc/passwd, a page.
fn busybox_root(root: &Path) {
    for dir in ["bin", "etc", "www", "tmp"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "echo", "head", "id", "httpd", "wget", "cat", "sleep", "hostname",
    ] {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("www/index.html"), "hello from the guest\n").unwrap();
}

fn ensure_cgroup2() {
    let cgroup = Path::new("/sys/fs/cgroup");
    let is_v2 = nix::sys::statfs::statfs(cgroup)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    if !is_v2 {
        // Only inside our private mount namespace: the host keeps its own.
        nix::mount::mount(
            Some("cgroup2"),
            cgroup,
            Some("cgroup2"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount cgroup2");
    }
}

/// PID1's reaper, as documented on [`ServiceManager`].
fn spawn_reaper(manager: ServiceManager) {
    tokio::spawn(async move {
        loop {
            {
                let _guard = manager.lock_for_reaping().await;
                loop {
                    match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::Exited(pid, code)) => {
                            manager.child_exited(
                                pid.as_raw(),
                                std::os::unix::process::ExitStatusExt::from_raw(code << 8),
                            );
                        }
                        Ok(WaitStatus::Signaled(pid, signal, _)) => {
                            manager.child_exited(
                                pid.as_raw(),
                                std::os::unix::process::ExitStatusExt::from_raw(signal as i32),
                            );
                        }
                        Ok(WaitStatus::StillAlive) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

async fn wait_until(manager: &ServiceManager, what: &str, test: impl Fn(&[ContainerInfo]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !test(&manager.list()) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:#?}",
            manager.list()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn state(list: &[ContainerInfo], service: &str) -> ContainerInfo {
    list.iter().find(|i| i.service == service).cloned().unwrap()
}

#[test]
#[ignore = "runs real containers: needs root and DSTACK_PRIVILEGED_TESTS=1"]
fn privileged_busybox_services_run_restart_and_stop() {
    if std::env::var("DSTACK_PRIVILEGED_TESTS").as_deref() != Ok("1") {
        return;
    }
    if std::env::var("DSTACK_PRIVATE_MOUNT_NS").is_err() {
        let status = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--"])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                TEST_NAME,
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("DSTACK_PRIVATE_MOUNT_NS", "1")
            .status()
            .unwrap();
        assert!(status.success(), "the test failed in its mount namespace");
        return;
    }
    ensure_cgroup2();
    let tmp = tempfile::tempdir().unwrap();
    let env = ContainerEnv {
        data_dir: tmp.path().join("data"),
        run_dir: tmp.path().join("run"),
        registry_aliases: Vec::new(),
        insecure_registries: Vec::new(),
        dns: vec!["10.0.2.3".into()],
        guest_socket_dir: tmp.path().join("sockets"),
    };
    let image_root = env.data_dir.join("images/rootfs/0000");
    busybox_root(&image_root);
    let (logs_tx, _logs_rx) = mpsc::channel(1024);
    let compose = Compose::parse(COMPOSE).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let manager = ServiceManager::new(env.clone(), compose, logs_tx);
        // Stand in for pull_all: the image is already unpacked.
        manager.inner.images.lock().unwrap().insert(
            "local/busybox:1".into(),
            ImageRoot { digest: "sha256:test".into(), config: serde_json::from_value(serde_json::json!({
                "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}
            })).unwrap(), rootfs: image_root },
        );
        spawn_reaper(manager.clone());
        manager.start_all().await.expect("start_all");

        wait_until(&manager, "hello to exit", |l| state(l, "hello").state == ContainerState::Exited).await;
        assert_eq!(state(&manager.list(), "hello").exit_code, Some(0));
        let lines: Vec<String> = manager.recent_logs("hello").into_iter().map(|e| e.line).collect();
        assert_eq!(lines.iter().filter(|l| l.as_str() != "oops").cloned().collect::<Vec<_>>(),
            ["hello from hello", "127.0.0.1\tlocalhost flaky hello web", "0"], "{lines:?}");
        assert!(lines.contains(&"oops".to_string()));

        wait_until(&manager, "web to be healthy", |l| state(l, "web").state == ContainerState::Healthy).await;
        let mut conn = tokio::net::TcpStream::connect("127.0.0.1:18081").await.unwrap();
        conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).await.unwrap();
        assert!(reply.contains("hello from the guest"), "{reply}");
        assert!(env.data_dir.join("volumes/data").is_dir());

        wait_until(&manager, "flaky to give up", |l| {
            let f = state(l, "flaky");
            f.state == ContainerState::Exited && f.restarts == 1
        })
        .await;
        assert_eq!(state(&manager.list(), "flaky").exit_code, Some(3));

        let stopping = Instant::now();
        manager.stop_all().await;
        let list = manager.list();
        assert!(list.iter().all(|i| i.state == ContainerState::Exited && i.pid.is_none()), "{list:#?}");
        // busybox httpd as a namespace's init ignores SIGTERM: SIGKILL after the grace period.
        assert!(stopping.elapsed() < Duration::from_secs(20));
        assert!(!env.run_dir.join("youki/web").exists());
        assert!(tokio::net::TcpStream::connect("127.0.0.1:18081").await.is_err());
    });
}
