//! libcontainer glue: a service's writable root (overlayfs over the unpacked
//! image), its bundle, and create/start, exec, signal and delete. Everything
//! here blocks; callers run it on `spawn_blocking` while holding a
//! [`SpawnGuard`](super::reap::SpawnGuard) when a process is created.
//! Create and exec run in the container helper (`helper.rs`): PID1 calls
//! [`create_and_start`] and [`exec`], the helper the `libcontainer_*` pair.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::Signal;
use oci_spec::runtime::Spec;

use super::helper::{Action, Helper, Request};
use crate::containers::{ContainerError, error_chain};

/// Where one service's files live.
#[derive(Debug, Clone)]
pub(crate) struct ServicePaths {
    /// `<run_dir>/containers/<service>`: bundle (config.json), hosts, resolv.conf.
    pub(crate) bundle: PathBuf,
    /// `<bundle>/rootfs`: the overlay mount.
    pub(crate) rootfs: PathBuf,
    /// `<data_dir>/containers/<service>`: overlay upper and work dirs.
    pub(crate) writable: PathBuf,
}

impl ServicePaths {
    /// The paths of `service`.
    pub(crate) fn new(run_dir: &Path, data_dir: &Path, service: &str) -> Self {
        let bundle = run_dir.join("containers").join(service);
        ServicePaths {
            rootfs: bundle.join("rootfs"),
            bundle,
            writable: data_dir.join("containers").join(service),
        }
    }
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ContainerError + 'a {
    move |e| ContainerError::io(what, path, e)
}

/// Mounts a fresh writable root: the upper layer is reset on every boot (a
/// container's changes outside volumes do not outlive the boot, as with
/// `docker compose up` recreating containers), but kept across restarts
/// within one boot.
pub(crate) fn mount_rootfs(
    service: &str,
    paths: &ServicePaths,
    image_root: &Path,
) -> Result<(), ContainerError> {
    let upper = paths.writable.join("upper");
    let work = paths.writable.join("work");
    if paths.writable.exists() {
        fs::remove_dir_all(&paths.writable).map_err(io_err("resetting", &paths.writable))?;
    }
    for dir in [&upper, &work, &paths.rootfs] {
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        image_root.display(),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &paths.rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|source| ContainerError::Mount {
        service: service.into(),
        target: paths.rootfs.clone(),
        source,
    })
}

/// Unmounts a service's root (lazily: a straggler must not block shutdown).
pub(crate) fn unmount_rootfs(paths: &ServicePaths) {
    let _ = nix::mount::umount2(&paths.rootfs, MntFlags::MNT_DETACH);
}

/// RLIMIT_NOFILE for containers: docker's 1048576 when we may raise limits
/// (CAP_SYS_RESOURCE, as PID1 has), otherwise our own hard limit, since
/// libcontainer's setrlimit fails with EPERM above it.
pub(crate) fn nofile_limit() -> u64 {
    const DOCKER_NOFILE: u64 = 1_048_576;
    const CAP_SYS_RESOURCE: u32 = 24;
    let can_raise = fs::read_to_string("/proc/self/status")
        .ok()
        .is_some_and(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
        });
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(1024);
    if can_raise {
        DOCKER_NOFILE.max(hard)
    } else {
        hard.min(DOCKER_NOFILE)
    }
}

/// Writes `config.json` into the bundle.
pub(crate) fn write_bundle(paths: &ServicePaths, spec: &Spec) -> Result<(), ContainerError> {
    let path = paths.bundle.join("config.json");
    let json = serde_json::to_vec_pretty(spec)
        .map_err(|e| ContainerError::io("encoding", &path, std::io::Error::other(e)))?;
    fs::write(&path, json).map_err(io_err("writing", &path))
}

fn dev_null() -> std::io::Result<OwnedFd> {
    Ok(fs::File::open("/dev/null")?.into())
}

fn null_error(e: std::io::Error) -> ContainerError {
    ContainerError::io("opening", "/dev/null", e)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), ContainerError> {
    // CLOEXEC on our ends; the helper gets the write end as its stdout or
    // stderr, and libcontainer dup2()s that onto the container's.
    nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| ContainerError::io("creating pipe", Path::new("pipe"), e.into()))
}

/// How long the helper may take to create and start a container.
const CREATE_TIMEOUT: Duration = Duration::from_secs(120);

/// A started container: its init pid and the read ends of its output pipes.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) pid: i32,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
}

/// Creates and starts container `id` from the bundle, in the container
/// helper. Its init is PID1's child: call with the reap lock's spawn side
/// held until its pid is registered.
pub(crate) fn create_and_start(
    helper: &Helper,
    state_root: &Path,
    id: &str,
    paths: &ServicePaths,
) -> Result<Started, ContainerError> {
    // A container left over from an earlier run of this service is removed first.
    delete(state_root, id);
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let request = Request::Create {
        state_root: state_root.to_path_buf(),
        id: id.to_string(),
        bundle: paths.bundle.clone(),
    };
    let pid = helper
        .run(&request, Some((stdout_w, stderr_w)), CREATE_TIMEOUT)
        .map_err(|(action, e)| ContainerError::runtime(id, action.as_str(), e))?;
    Ok(Started {
        pid,
        stdout: stdout_r,
        stderr: stderr_r,
    })
}

/// Runs `args` inside the running container `id` (its namespaces, cgroup,
/// user and capabilities) with output discarded, in the container helper;
/// returns its pid (a child of PID1, like a container init). Fails when
/// the helper has not answered within `timeout`.
pub(crate) fn exec(
    helper: &Helper,
    state_root: &Path,
    id: &str,
    args: &[String],
    timeout: Duration,
) -> Result<i32, ContainerError> {
    let request = Request::Exec {
        state_root: state_root.to_path_buf(),
        id: id.to_string(),
        args: args.to_vec(),
    };
    helper
        .run(&request, None, timeout)
        .map_err(|(action, e)| ContainerError::runtime(id, action.as_str(), e))
}

fn base_builder(
    state_root: &Path,
    id: &str,
) -> Result<ContainerBuilder, libcontainer::error::LibcontainerError> {
    ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(state_root)?
        .validate_id()
}

/// The cgroup v2 hierarchy's mount point in the guest.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Removes every cgroup below `cgroup` (not `cgroup` itself), deepest
/// first; a cgroup still in use stays (rmdir refuses it).
fn remove_nested_cgroups(cgroup: &Path) {
    let Ok(entries) = fs::read_dir(cgroup) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let child = entry.path();
            remove_nested_cgroups(&child);
            let _ = fs::remove_dir(&child);
        }
    }
}

/// In the helper: creates and starts container `id` (DESIGN §6: systemd
/// off, no pivot_root — the guest root is an initramfs). As a sibling: the
/// init is a child of the helper's parent, PID1.
pub(crate) fn libcontainer_create(
    state_root: &Path,
    id: &str,
    bundle: &Path,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> Result<i32, (Action, String)> {
    let stdin = dev_null().map_err(|e| failed(Action::Create, &null_error(e)))?;
    let mut container = base_builder(state_root, id)
        .and_then(|builder| {
            builder
                .with_stdin(stdin)
                .with_stdout(stdout)
                .with_stderr(stderr)
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .with_no_pivot(true)
                .as_sibling(true)
                .build()
        })
        .map_err(|e| failed(Action::Create, &e))?;
    container.start().map_err(|e| failed(Action::Start, &e))?;
    container
        .pid()
        .map(|pid| pid.as_raw())
        .ok_or_else(|| (Action::Start, "libcontainer reported no init pid".into()))
}

/// In the helper: starts `args` in container `id`, as a sibling (a child
/// of PID1), with output discarded.
pub(crate) fn libcontainer_exec(
    state_root: &Path,
    id: &str,
    args: &[String],
) -> Result<i32, (Action, String)> {
    let null = || dev_null().map_err(|e| failed(Action::Exec, &null_error(e)));
    let (stdin, stdout, stderr) = (null()?, null()?, null()?);
    base_builder(state_root, id)
        .and_then(|builder| {
            builder
                .with_stdin(stdin)
                .with_stdout(stdout)
                .with_stderr(stderr)
                .as_tenant()
                .with_container_args(args.to_vec())
                .with_detach(true)
                .as_sibling(true)
                .build()
        })
        .map(|pid| pid.as_raw())
        .map_err(|e| failed(Action::Exec, &e))
}

/// A failure as the helper reports it: the step and the whole error chain.
fn failed(action: Action, error: &dyn std::error::Error) -> (Action, String) {
    (action, error_chain(error))
}

/// Sends `signal` to the container's init (or, with `all`, every process in its cgroup).
pub(crate) fn signal(
    state_root: &Path,
    id: &str,
    signal: Signal,
    all: bool,
) -> Result<(), ContainerError> {
    let mut container =
        Container::load(state_root.join(id)).map_err(|e| ContainerError::runtime(id, "kill", e))?;
    container
        .kill(signal, all)
        .map_err(|e| ContainerError::runtime(id, "kill", e))
}

/// Deletes container `id` (kills what is left, removes its cgroup and
/// state); a container that does not exist is not an error.
pub(crate) fn delete(state_root: &Path, id: &str) {
    let dir = state_root.join(id);
    if !dir.exists() {
        return;
    }
    // A service that runs containers itself (the engine) leaves cgroups of
    // its own under its cgroup; its processes are gone by now, so they
    // can go, deepest first, before the service's own cgroup is removed.
    remove_nested_cgroups(
        &Path::new(CGROUP_ROOT)
            .join(super::spec::CGROUP_PARENT)
            .join(id),
    );
    // The cgroup can stay busy for a moment after the last process exits.
    for _ in 0..10 {
        match Container::load(dir.clone()).and_then(|mut c| c.delete(true)) {
            Ok(()) => return,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    let _ = fs::remove_dir_all(&dir);
}
