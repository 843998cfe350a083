//! The boot sequence against the recording syscall fake, a unix-socket
//! host, and a fake app runtime.

use std::fs;
use std::process::ExitStatus;
use std::sync::Mutex;

use dstack_proto::guest::ContainerInfo;
use nix::errno::Errno;

use std::path::PathBuf;

use super::*;
use crate::app::BoxFuture;
use crate::containers::ContainerError;
use crate::hostapi::HostEndpoint;
use crate::reaper::ChildOwner;
use crate::state::Services;
use crate::sys::fake::{Call, RecordingSyscall};
use crate::testutil::{APP_COMPOSE, bundle, serve};

/// A fresh (all-zero, sparse) 24 MiB data disk.
fn empty_disk(dir: &Path) -> PathBuf {
    let path = dir.join("vda");
    fs::File::create(&path).unwrap().set_len(24 << 20).unwrap();
    path
}

/// "mkfs": stamps the ext4 magic on the plaintext stand-in.
fn stamp_ext4(plain: &Path) -> Result<(), crate::disk::DiskError> {
    let mut disk = vec![0u8; 1 << 20];
    disk[1080..1082].copy_from_slice(&[0x53, 0xef]);
    fs::write(plain, disk).unwrap();
    Ok(())
}

/// A boot whose data disk maps onto a plain file in `dir`.
fn boot_in(dir: &Path, sys: Arc<RecordingSyscall>, cfg: BootConfig) -> Boot {
    let mut boot = Boot::new(sys, cfg);
    boot.mapper = Arc::new(crate::disk::fake::FakeMapper::onto(&dir.join("plain")));
    boot.mkfs = stamp_ext4;
    boot
}

fn config(dir: &Path) -> BootConfig {
    let cgroup = dir.join("cgroup");
    fs::create_dir_all(&cgroup).unwrap();
    fs::write(cgroup.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
    // The fake makes no directories; /var/run's parent must exist.
    fs::create_dir_all(dir.join("var")).unwrap();
    BootConfig {
        console: dir.join("console"),
        cgroup_root: cgroup,
        modules_root: dir.join("modules"),
        host: HostEndpoint::Unix(dir.join("host.sock")),
        host_patience: Duration::from_secs(2),
        data_device: empty_disk(dir),
        data_dir: dir.join("data"),
        run_dir: dir.join("run/dstack"),
        guest_socket_dir: dir.join("var/run/dstack"),
        host_shared_dir: dir.join("dstack/.host-shared"),
        etc_dir: dir.join("etc"),
        var_run: dir.join("var/run"),
        input_class: dir.join("input"),
        control_port: None,
        configure_network: false,
    }
}

#[test]
fn early_setup_mounts_then_attaches_the_console_then_disables_cad() {
    let dir = tempfile::tempdir().unwrap();
    let sys = Arc::new(RecordingSyscall::default());
    let boot = Boot::new(sys.clone(), config(dir.path()));
    boot.early().unwrap();
    let calls = sys.calls();
    let mounts: Vec<usize> = (0..calls.len())
        .filter(|&i| matches!(calls[i], Call::Mount(_)))
        .collect();
    let console = calls
        .iter()
        .position(|c| matches!(c, Call::AttachConsole(_)))
        .unwrap();
    let cad = calls
        .iter()
        .position(|c| *c == Call::Reboot(RebootCmd::CadOff))
        .unwrap();
    assert_eq!(mounts.len(), 8);
    assert!(mounts.iter().all(|&m| m < console) && console < cad);
    let subtree = fs::read_to_string(dir.path().join("cgroup/cgroup.subtree_control")).unwrap();
    assert_eq!(subtree, "+cpu +memory +pids");
    assert_eq!(
        fs::read_link(dir.path().join("var/run")).unwrap(),
        Path::new("/run")
    );
    assert_eq!(boot.state.phase(), phase::MOUNTS);
}

#[test]
fn a_failed_early_mount_still_attaches_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let sys = Arc::new(RecordingSyscall::default());
    sys.fail("/sys", Errno::ENODEV);
    let boot = Boot::new(sys.clone(), config(dir.path()));
    let err = boot.early().unwrap_err();
    assert_eq!(
        error_chain(&err),
        "mounting the early filesystems failed: cannot mount sysfs at /sys: ENODEV: No such device"
    );
    assert!(
        sys.calls()
            .iter()
            .any(|c| matches!(c, Call::AttachConsole(_)))
    );
}

#[tokio::test]
async fn loads_modules_in_order_then_mounts_configfs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let order = modules::load_order_path(&cfg.modules_root, release.trim());
    fs::create_dir_all(order.parent().unwrap()).unwrap();
    fs::write(&order, "kernel/a/vsock.ko\nkernel/b/evdev.ko\n").unwrap();
    let sys = Arc::new(RecordingSyscall::default());
    let mut boot = Boot::new(sys.clone(), cfg);
    boot.load_modules().await.unwrap();
    boot.finish_background().await.unwrap();
    // The modules no boot step waits for finish on their own time.
    let configfs = |calls: &[Call]| {
        calls
            .iter()
            .any(|c| matches!(c, Call::Mount(m) if m.fstype == "configfs"))
    };
    for _ in 0..100 {
        if configfs(&sys.calls()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let calls = sys.calls();
    assert!(matches!(&calls[0], Call::LoadModule(p) if p.ends_with("kernel/a/vsock.ko")));
    assert!(matches!(&calls[1], Call::LoadModule(p) if p.ends_with("kernel/b/evdev.ko")));
    assert!(configfs(&calls[2..]), "{calls:?}");
}

/// An in-process simulated TD with no boot events.
fn sim_platform() -> Arc<dyn Platform> {
    let authority = Arc::new(dstack_attest::SimAuthority::generate().unwrap());
    Arc::new(
        dstack_attest::SimPlatform::new(authority, dstack_attest::SimTdIdentity::default(), vec![])
            .unwrap(),
    )
}

/// A runtime that records what the boot asked of it.
#[derive(Default)]
struct FakeRuntime {
    steps: Mutex<Vec<String>>,
    fail_start: bool,
}

impl Services for FakeRuntime {
    fn list(&self) -> Vec<ContainerInfo> {
        Vec::new()
    }
    fn stop_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(async { self.steps.lock().unwrap().push("stop".into()) })
    }
}

impl ChildOwner for FakeRuntime {
    fn child_exited(&self, _pid: i32, _status: ExitStatus) -> bool {
        false
    }
}

impl AppRuntime for FakeRuntime {
    fn pull_all<'a>(
        &'a self,
        progress: &'a (dyn Fn(String) + Send + Sync),
    ) -> BoxFuture<'a, Result<(), ContainerError>> {
        Box::pin(async move {
            progress("web: pulled busybox".into());
            self.steps.lock().unwrap().push("pull".into());
            Ok(())
        })
    }
    fn start_all(&self) -> BoxFuture<'_, Result<(), ContainerError>> {
        Box::pin(async move {
            self.steps.lock().unwrap().push("start".into());
            if self.fail_start {
                Err(ContainerError::spec("web", "no such user"))
            } else {
                Ok(())
            }
        })
    }
}

#[tokio::test]
async fn config_then_app_with_progress_reported_to_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut seen = serve(
        &dir.path().join("host.sock"),
        "200 OK",
        serde_json::to_string(&bundle()).unwrap(),
    );
    let sys = Arc::new(RecordingSyscall::default());
    let mut boot = boot_in(dir.path(), sys.clone(), cfg.clone());
    let platform = sim_platform();
    boot.use_platform(platform.clone());
    let fetched = boot.fetch_config().await.unwrap();
    boot.apply_config(&fetched).await.unwrap();
    boot.finish_background().await.unwrap();
    let compose = boot.unlock(&fetched).await.unwrap();
    // Measured in upstream's order, and the guest API is up.
    let names: Vec<String> = platform
        .event_log()
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(
        names,
        [
            "system-preparing",
            "app-id",
            "compose-hash",
            "instance-id",
            "boot-mr-done",
            "key-provider",
            "storage-fs",
            "system-ready"
        ]
    );
    assert!(cfg.guest_socket_dir.join("dstack.sock").exists());
    assert!(cfg.guest_socket_dir.join("tappd.sock").exists());
    assert_eq!(boot.state.info().rtmr3_events.len(), 8);
    assert_eq!(boot.state.info().tee, "sim");
    assert!(sys.calls().contains(&Call::SetHostname("hello".into())));
    assert_eq!(boot.data_mounted, Some(dir.path().join("plain")));
    // The disk got a LUKS2 header keyed by the app's disk key.
    let mut disk = fs::File::open(&cfg.data_device).unwrap();
    assert!(dstack_luks2::probe(&mut disk).unwrap());
    let data_mount = sys.calls().into_iter().find_map(|c| match c {
        Call::Mount(m) if m.fstype == "ext4" => Some(m.target),
        _ => None,
    });
    assert_eq!(data_mount, Some(cfg.data_dir.display().to_string()));
    let shared = fs::read(cfg.host_shared_dir.join("app-compose.json")).unwrap();
    assert_eq!(shared, APP_COMPOSE.as_bytes());
    let info = boot.state.info();
    assert_eq!(info.app_id.len(), 40);
    assert_eq!(info.instance_id.len(), 40);

    let runtime = Arc::new(FakeRuntime::default());
    let handed = runtime.clone();
    let factory: RuntimeFactory = Box::new(move |params| {
        assert_eq!(params.compose.services["web"].image, "busybox");
        handed
    });
    boot.run_app(&fetched, compose, factory).await.unwrap();
    assert_eq!(*runtime.steps.lock().unwrap(), ["pull", "start"]);
    assert!(boot.state.services().is_some());
    boot.notifier.flush(Duration::from_secs(2)).await;

    let mut events = Vec::new();
    while let Ok(req) = seen.try_recv() {
        if req.request_line.starts_with("POST /v1/notify") {
            let n: dstack_proto::host::Notification = serde_json::from_slice(&req.body).unwrap();
            events.push(format!("{}={}", n.event, n.payload));
        }
    }
    let want = [
        "boot.progress=applying config",
        "boot.progress=configuring network and keys",
        "instance.info=",
        "boot.progress=unlocking env and data disk",
        "data-disk=formatted",
        "boot.progress=pulling images",
        "boot.progress=web: pulled busybox",
        "boot.progress=starting containers",
    ];
    for (got, want) in events.iter().zip(want) {
        assert!(got.starts_with(want), "{got} vs {want}: {events:?}");
    }
    assert_eq!(events.len(), want.len(), "{events:?}");
}

#[tokio::test]
async fn a_bad_compose_and_a_failed_start_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sys = Arc::new(RecordingSyscall::default());
    let mut boot = boot_in(dir.path(), sys, config(dir.path()));
    boot.use_platform(sim_platform());
    let mut bad = bundle();
    bad.app_compose = r#"{"manifest_version":2,"name":"a","runner":"podman"}"#.into();
    let err = boot.apply_config(&bad).await.unwrap_err();
    assert_eq!(
        error_chain(&err),
        "app-compose.json is invalid: runner \"podman\" is not supported (only \"docker-compose\" or \"nerdctl-compose\")"
    );

    let good = bundle();
    boot.apply_config(&good).await.unwrap();
    boot.finish_background().await.unwrap();
    let compose = boot.unlock(&good).await.unwrap();
    let runtime = Arc::new(FakeRuntime {
        fail_start: true,
        ..Default::default()
    });
    let factory: RuntimeFactory = Box::new(move |_| runtime);
    let result = boot.run_app(&good, compose, factory).await;
    assert!(matches!(result, Err(BootError::Start(_))));
    assert_eq!(boot.state.phase(), phase::START);
}

#[tokio::test]
async fn an_encrypted_env_without_an_env_key_stops_the_boot_before_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let sys = Arc::new(RecordingSyscall::default());
    let cfg = config(dir.path());
    let mut boot = boot_in(dir.path(), sys.clone(), cfg.clone());
    boot.use_platform(sim_platform());
    // The `none` key provider releases no env key: the blob cannot be read,
    // and dropping it silently (upstream) would run the app without its secrets.
    let mut with_env = bundle();
    with_env.encrypted_env = vec![7; 100];
    boot.apply_config(&with_env).await.unwrap();
    boot.finish_background().await.unwrap();
    let err = boot.unlock(&with_env).await.unwrap_err();
    assert!(
        matches!(err, BootError::Env(dstack_envcrypt::EnvError::NoEnvKey)),
        "{err:?}"
    );
    assert_eq!(boot.data_mounted, None);
    let mut disk = fs::File::open(&cfg.data_device).unwrap();
    assert!(
        !dstack_luks2::probe(&mut disk).unwrap(),
        "the disk was not touched"
    );
    assert!(
        !sys.calls()
            .iter()
            .any(|c| matches!(c, Call::Mount(m) if m.fstype == "ext4"))
    );
}
