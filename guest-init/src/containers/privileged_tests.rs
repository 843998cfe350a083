//! Runs real containers on this host with libcontainer. Needs root and the
//! built `dstack-init` binary (the container helper), so it is ignored unless
//! asked for:
//! `cargo build -p dstack-init && DSTACK_PRIVILEGED_TESTS=1 cargo test -p dstack-init -- --ignored privileged`.
//! The helper is `dstack-init` next to the test binary's `deps/` directory,
//! or `$DSTACK_INIT_BIN`.
//! Each test re-executes itself in private mount and network namespaces
//! (`unshare -m -n`), so the cgroup2 mount it may need, the overlays, the
//! container mounts and the compose networks never touch the host's.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dstack_compose::Compose;
use dstack_proto::guest::ContainerState;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const TESTS: &str = "containers::privileged_tests::";
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
        "sh", "echo", "head", "id", "httpd", "wget", "cat", "sleep", "hostname", "true",
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

/// PID1's reaper, as documented on [`ServiceManager`], for whichever manager
/// `current` holds (one reaper per process: a second would steal exits).
fn spawn_reaper(current: Arc<Mutex<Option<ServiceManager>>>) {
    tokio::spawn(async move {
        loop {
            let manager = current.lock().unwrap().clone();
            if let Some(manager) = manager {
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

/// The built `dstack-init`, which the tests run as the container helper.
fn helper_binary() -> PathBuf {
    let path = std::env::var_os("DSTACK_INIT_BIN").map_or_else(
        || {
            let exe = std::env::current_exe().unwrap();
            // <target>/debug/deps/dstack_init-<hash> -> <target>/debug/dstack-init
            exe.parent().unwrap().parent().unwrap().join("dstack-init")
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p dstack-init` first, or set DSTACK_INIT_BIN",
        path.display()
    );
    path
}

/// Whether to run `test` here: false when privileged tests are off, or
/// after running it again in a private mount namespace (which must pass).
fn in_private_namespace(test: &str) -> bool {
    if std::env::var("DSTACK_PRIVILEGED_TESTS").as_deref() != Ok("1") {
        return false;
    }
    if std::env::var("DSTACK_PRIVATE_MOUNT_NS").is_ok() {
        ensure_cgroup2();
        return true;
    }
    let status = Command::new("unshare")
        // A network namespace too: the compose networks (bridges, veths,
        // forwarding, nftables) are laid out there, not on this host.
        .args(["--mount", "--net", "--propagation", "private", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &format!("{TESTS}{test}"),
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DSTACK_PRIVATE_MOUNT_NS", "1")
        .status()
        .unwrap();
    assert!(status.success(), "{test} failed in its mount namespace");
    false
}

fn test_env(root: &Path) -> ContainerEnv {
    ContainerEnv {
        data_dir: root.join("data"),
        run_dir: root.join("run"),
        registry_aliases: Vec::new(),
        insecure_registries: Vec::new(),
        dns: vec!["10.0.2.3".into()],
        guest_socket_dir: root.join("sockets"),
    }
}

/// A manager whose busybox image is already unpacked (standing in for `pull_all`).
fn busybox_manager(
    env: &ContainerEnv,
    compose: &str,
    logs: mpsc::Sender<LogEntry>,
) -> ServiceManager {
    let image_root = env.data_dir.join("images/rootfs/0000");
    if !image_root.exists() {
        busybox_root(&image_root);
    }
    let compose = Compose::parse(compose).unwrap();
    let manager = ServiceManager::with_helper(env.clone(), compose, logs, helper_binary());
    let config = serde_json::from_value(serde_json::json!({
        "architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap();
    manager.inner.images.lock().unwrap().insert(
        "local/busybox:1".into(),
        ImageRoot {
            digest: "sha256:test".into(),
            config,
            rootfs: image_root,
        },
    );
    manager
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
    if !in_private_namespace("privileged_busybox_services_run_restart_and_stop") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let env = test_env(tmp.path());
    let (logs_tx, _logs_rx) = mpsc::channel(1024);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let manager = busybox_manager(&env, COMPOSE, logs_tx);
        spawn_reaper(Arc::new(Mutex::new(Some(manager.clone()))));
        manager.start_all().await.expect("start_all");

        wait_until(&manager, "hello to exit", |l| {
            state(l, "hello").state == ContainerState::Exited
        })
        .await;
        assert_eq!(state(&manager.list(), "hello").exit_code, Some(0));
        let lines: Vec<String> = manager
            .recent_logs("hello")
            .into_iter()
            .map(|e| e.line)
            .collect();
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.as_str() != "oops")
                .cloned()
                .collect::<Vec<_>>(),
            [
                "hello from hello",
                "127.0.0.1\tlocalhost flaky hello web",
                "0"
            ],
            "{lines:?}"
        );
        assert!(lines.contains(&"oops".to_string()));

        wait_until(&manager, "web to be healthy", |l| {
            state(l, "web").state == ContainerState::Healthy
        })
        .await;
        let mut conn = tokio::net::TcpStream::connect("127.0.0.1:18081")
            .await
            .unwrap();
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
        assert!(
            list.iter()
                .all(|i| i.state == ContainerState::Exited && i.pid.is_none()),
            "{list:#?}"
        );
        // busybox httpd as a namespace's init ignores SIGTERM: SIGKILL after the grace period.
        assert!(stopping.elapsed() < Duration::from_secs(20));
        assert!(!env.run_dir.join("youki/web").exists());
        assert!(
            tokio::net::TcpStream::connect("127.0.0.1:18081")
                .await
                .is_err()
        );
    });
}

/// Three copies of one service, started at once each round.
fn stress_compose() -> String {
    let mut compose = String::from("services:\n");
    for name in ["spin1", "spin2", "spin3"] {
        compose.push_str(&format!(
            r#"  {name}:
    image: local/busybox:1
    command: ["sleep", "1000"]
    stop_grace_period: 0s
    healthcheck:
      test: ["CMD", "true"]
      interval: 100ms
      timeout: 10s
      retries: 3
"#
        ));
    }
    compose
}

/// Allocates and frees blocks of many sizes until `stop`, yielding between
/// rounds: keeps the allocator's locks busy on every runtime worker.
async fn allocate(stop: Arc<AtomicBool>, blocks: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        let round: Vec<Vec<u8>> = (1..=256usize)
            .map(|i| vec![0u8; (i * 37) % 8192 + 1])
            .collect();
        blocks.fetch_add(round.len() as u64, Ordering::Relaxed);
        drop(round);
        tokio::task::yield_now().await;
    }
}

/// The hang this guards against: libcontainer's raw `clone3` in a
/// multi-threaded process while another thread holds the malloc lock. With
/// the helper, no clone happens in this process.
#[test]
#[ignore = "runs real containers: needs root and DSTACK_PRIVILEGED_TESTS=1"]
fn privileged_stress_start_and_stop_while_other_tasks_allocate() {
    const ROUNDS: usize = 20;
    if !in_private_namespace("privileged_stress_start_and_stop_while_other_tasks_allocate") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let env = test_env(tmp.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let current = Arc::new(Mutex::new(None));
        spawn_reaper(current.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let blocks = Arc::new(AtomicU64::new(0));
        let churn: Vec<_> = (0..6)
            .map(|_| tokio::spawn(allocate(stop.clone(), blocks.clone())))
            .collect();
        let mut starts = Vec::new();
        for round in 0..ROUNDS {
            let (logs_tx, _logs_rx) = mpsc::channel(1024);
            let manager = busybox_manager(&env, &stress_compose(), logs_tx);
            *current.lock().unwrap() = Some(manager.clone());
            // A fresh parent cgroup each round: concurrent creates race on it.
            let _ = std::fs::remove_dir(Path::new(CGROUP_ROOT).join(spec::CGROUP_PARENT));
            let started = Instant::now();
            tokio::time::timeout(Duration::from_secs(60), manager.start_all())
                .await
                .unwrap_or_else(|_| panic!("round {round}: start_all hung"))
                .expect("start_all");
            starts.push(started.elapsed());
            wait_until(&manager, "every spin to be healthy", |l| {
                l.iter().all(|i| i.state == ContainerState::Healthy)
            })
            .await;
            tokio::time::timeout(Duration::from_secs(60), manager.stop_all())
                .await
                .unwrap_or_else(|_| panic!("round {round}: stop_all hung"));
            let list = manager.list();
            assert!(
                list.iter()
                    .all(|i| i.state == ContainerState::Exited && i.pid.is_none()),
                "round {round}: {list:#?}"
            );
        }
        stop.store(true, Ordering::Relaxed);
        for task in churn {
            task.await.unwrap();
        }
        assert!(blocks.load(Ordering::Relaxed) > 0);
        starts.sort();
        eprintln!(
            "{ROUNDS} starts of 3 containers under allocation load: min {:?}, median {:?}, max {:?}",
            starts[0],
            starts[ROUNDS / 2],
            starts[ROUNDS - 1]
        );
    });
}
