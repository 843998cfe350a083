//! The compose services of the app: pulled from registries, unpacked onto
//! the data disk, run with libcontainer (youki) as children of PID1.
//!
//! Layout: `<data_dir>/images/{blobs/sha256,rootfs}/<hex>` (cache and
//! unpacked images, kept across boots), `<data_dir>/containers/<service>`
//! (overlay upper/work, reset each boot), `<data_dir>/volumes/<name>`,
//! `<run_dir>/containers/<service>` (bundle, hosts, resolv.conf, rootfs
//! mount) and `<run_dir>/youki` (libcontainer state).

mod build;
mod engine;
mod error;
mod hardening;
mod health;
mod helper;
mod lifecycle;
mod logs;
mod netns;
mod netplan;
mod proxy;
mod pull;
mod reap;
mod reference;
mod registry;
mod runner;
mod seccomp;
mod spec;
mod unpack;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dstack_compose::{Compose, ComposeError};
use dstack_proto::guest::{ContainerInfo, ContainerState};
use dstack_proto::host::{LogEntry, LogStream, RegistryAlias};
pub use engine::{EngineError, add_engine};
pub use error::{ContainerError, RuntimeError};
pub use helper::{HELPER_COMMAND, helper_main};
use nix::sys::signal::Signal;
use oci_spec::image::ImageConfiguration;
pub use reap::ReapGuard;
pub use registry::RegistryError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
pub use unpack::UnpackError;

/// Where containers live and how they reach registries and DNS.
#[derive(Debug, Clone)]
pub struct ContainerEnv {
    /// The mounted data disk (`/data`): image cache, volumes, writable layers.
    pub data_dir: PathBuf,
    /// A tmpfs for runtime state (`/run/dstack`).
    pub run_dir: PathBuf,
    /// Registry rewrites, e.g. `127.0.0.1:5000` → `10.0.2.2:5000`.
    pub registry_aliases: Vec<RegistryAlias>,
    /// Registries (host:port, after aliasing) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// DNS servers for each container's /etc/resolv.conf.
    pub dns: Vec<String>,
    /// Directory of `dstack.sock`/`tappd.sock` (`/var/run/dstack`).
    pub guest_socket_dir: PathBuf,
}

/// Where cgroup2 is mounted (libcgroups' default root).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// An unpacked image.
#[derive(Debug, Clone)]
pub(crate) struct ImageRoot {
    digest: String,
    config: ImageConfiguration,
    rootfs: PathBuf,
}

/// One service's live state.
#[derive(Debug)]
pub(crate) struct Slot {
    info: watch::Sender<ContainerInfo>,
    recent: logs::Recent,
    stopping: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
    paths: runner::ServicePaths,
    /// Whether its published ports are open (once per boot).
    published: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
pub(crate) struct Inner {
    env: ContainerEnv,
    compose: Compose,
    order: Result<Vec<String>, ComposeError>,
    logs: mpsc::Sender<LogEntry>,
    puller: pull::Puller,
    reaping: reap::Reaping,
    images: Mutex<HashMap<String, ImageRoot>>,
    slots: BTreeMap<String, Slot>,
    state_root: PathBuf,
    helper: helper::Helper,
    proxies: Mutex<Vec<JoinHandle<()>>>,
    /// The compose networks' layout (set up by the first `start_all`).
    netplan: Result<netplan::NetPlan, netplan::NetPlanError>,
    networks_ready: tokio::sync::Mutex<bool>,
}

// The whole chain (`error: cause: cause`), for `ContainerInfo::error`.
pub(crate) use crate::boot::error_chain;

impl Inner {
    fn system_log(&self, line: String) {
        let entry = LogEntry {
            ts_ms: logs::now_ms(),
            service: "dstack-init".into(),
            stream: LogStream::System,
            line,
        };
        let _ = self.logs.try_send(entry);
    }

    fn image_root(&self, service: &str) -> Result<ImageRoot, ContainerError> {
        let image = &self.compose.services[service].image;
        self.images
            .lock()
            .ok()
            .and_then(|images| images.get(image).cloned())
            .ok_or_else(|| ContainerError::NotPulled {
                service: service.into(),
                image: image.clone(),
            })
    }
}

/// Runs the compose services. Cheap to clone (an `Arc` inside).
///
/// # Rules for PID1
/// - Call everything from inside a tokio runtime; `start_all` spawns tasks.
/// - **Reaping.** Container inits and health-check processes are children of
///   PID1, and so is the short-lived container helper that creates them
///   (see `helper.rs`: libcontainer never clones inside PID1). The helper
///   is waited for by pid, with its own `waitpid`, while the spawn side of
///   the lock below is held — from before the helper starts until the pid
///   it reports is registered — so the reaper never sees the helper, and
///   never an init or check before its waiter exists. So PID1's reaper must
///   1. take `let guard = manager.lock_for_reaping().await;`,
///   2. loop `waitpid(-1, WNOHANG)` until it returns no child, calling
///      [`child_exited`](Self::child_exited) for *every* reaped pid (it
///      returns false for pids that are not ours: PID1's own children are
///      then its business),
///   3. drop the guard before waiting for the next SIGCHLD.
///
///   The guard is exclusive with container creation, so a pid is always
///   registered before it can be reaped. Never hold it across an `await`
///   on anything else, and never reap children outside it.
/// - `stop_all` before unmounting `data_dir`.
#[derive(Debug, Clone)]
pub struct ServiceManager {
    inner: Arc<Inner>,
}

impl ServiceManager {
    /// A manager for `compose`; container output goes to `logs` (lines are
    /// dropped, never waited for, when the channel is full). Containers are
    /// created by re-executing this binary (`/proc/self/exe`) as the helper.
    pub fn new(env: ContainerEnv, compose: Compose, logs: mpsc::Sender<LogEntry>) -> Self {
        Self::with_helper(env, compose, logs, helper::default_helper())
    }

    /// [`new`](Self::new) with another container helper: an executable that
    /// behaves like `dstack-init` when run as `<helper> __container <op>`.
    pub fn with_helper(
        env: ContainerEnv,
        compose: Compose,
        logs: mpsc::Sender<LogEntry>,
        helper: PathBuf,
    ) -> Self {
        let images_dir = env.data_dir.join("images");
        let puller = pull::Puller::new(
            &images_dir,
            env.registry_aliases.clone(),
            env.insecure_registries.clone(),
        );
        let slots = compose
            .services
            .iter()
            .map(|(name, service)| {
                let info = ContainerInfo {
                    service: name.clone(),
                    image: service.image.clone(),
                    image_digest: String::new(),
                    state: ContainerState::Pending,
                    pid: None,
                    restarts: 0,
                    exit_code: None,
                    error: None,
                };
                let slot = Slot {
                    info: watch::Sender::new(info),
                    recent: logs::Recent::default(),
                    stopping: watch::Sender::new(false),
                    task: Mutex::new(None),
                    published: std::sync::atomic::AtomicBool::new(false),
                    paths: runner::ServicePaths::new(&env.run_dir, &env.data_dir, name),
                };
                (name.clone(), slot)
            })
            .collect();
        let inner = Inner {
            order: compose.start_order(),
            netplan: netplan::NetPlan::new(&compose),
            networks_ready: tokio::sync::Mutex::new(false),
            state_root: env.run_dir.join("youki"),
            helper: helper::Helper::new(helper),
            env,
            compose,
            logs,
            puller,
            reaping: reap::Reaping::default(),
            images: Mutex::default(),
            slots,
            proxies: Mutex::default(),
        };
        ServiceManager {
            inner: Arc::new(inner),
        }
    }

    fn fail_services_of(&self, image: &str, error: &ContainerError) {
        for (name, service) in &self.inner.compose.services {
            if service.image == image {
                self.inner.slots[name].info.send_modify(|i| {
                    i.state = ContainerState::Failed;
                    i.error = Some(error_chain(error));
                });
            }
        }
    }

    /// Pulls and unpacks every service's image (each distinct image once),
    /// reporting progress lines like `web: layer 2/3 (1.2 MiB)`. Stops at the
    /// first failure; the services using that image are marked failed.
    pub async fn pull_all(
        &self,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<(), ContainerError> {
        let inner = &self.inner;
        let rootfs_dir = inner.env.data_dir.join("images/rootfs");
        std::fs::create_dir_all(&rootfs_dir)
            .map_err(|e| ContainerError::io("creating", &rootfs_dir, e))?;
        let order = inner.order.clone()?;
        for name in &order {
            let image = inner.compose.services[name].image.clone();
            // Built in the CVM when the service starts (after the engine).
            if inner.compose.services[name].build.is_some() || inner.image_root(name).is_ok() {
                continue;
            }
            let result = async {
                let is_unpacked = |hex: &str| rootfs_dir.join(hex).is_dir();
                let pulled = inner
                    .puller
                    .pull(name, &image, is_unpacked, progress)
                    .await?;
                let (dir, hex, layers) = (
                    rootfs_dir.clone(),
                    pulled.config_hex.clone(),
                    pulled.layers.clone(),
                );
                let count = layers.len();
                let (tx, mut rx) = mpsc::unbounded_channel();
                let unpack = tokio::task::spawn_blocking(move || {
                    unpack::unpack_image(&dir, &hex, &layers, |i, _| {
                        let _ = tx.send(i);
                    })
                });
                while let Some(i) = rx.recv().await {
                    progress(format!("{name}: unpacked layer {}/{count}", i + 1));
                }
                let rootfs = unpack
                    .await
                    .map_err(|e| ContainerError::spec(name, format!("unpacking panicked: {e}")))?
                    .map_err(|(i, source)| ContainerError::Unpack {
                        image: image.clone(),
                        layer: format!("{}/{count}", i + 1),
                        source,
                    })?;
                Ok::<_, ContainerError>(ImageRoot {
                    digest: pulled.digest,
                    config: pulled.config,
                    rootfs,
                })
            }
            .await;
            match result {
                Ok(root) => {
                    for (other, service) in &inner.compose.services {
                        if service.image == image {
                            inner.slots[other]
                                .info
                                .send_modify(|i| i.image_digest = root.digest.clone());
                        }
                    }
                    if let Ok(mut images) = inner.images.lock() {
                        images.insert(image, root);
                    }
                }
                Err(e) => {
                    self.fail_services_of(&image, &e);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Starts every service in dependency order, honouring `depends_on`
    /// conditions, and returns once each has started (or failed: the first
    /// error is returned, the other services keep running). Call
    /// [`pull_all`](Self::pull_all) first.
    pub async fn start_all(&self) -> Result<(), ContainerError> {
        let order = self.inner.order.clone()?;
        // libcgroups creates each level of a cgroup path with "exists? else
        // mkdir", so helpers creating the first containers at once race on
        // the shared parent (EEXIST). Create it first; if this fails,
        // libcontainer reports why.
        let _ = std::fs::create_dir(Path::new(CGROUP_ROOT).join(spec::CGROUP_PARENT));
        self.set_up_networks().await?;
        let mut waiting = Vec::new();
        for name in order {
            let (tx, rx) = oneshot::channel();
            let task = tokio::spawn(lifecycle::supervise(self.inner.clone(), name.clone(), tx));
            if let Ok(mut slot) = self.inner.slots[&name].task.lock() {
                *slot = Some(task);
            }
            waiting.push(rx);
        }
        let mut first_error = None;
        for rx in waiting {
            if let Ok(Err(e)) = rx.await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Lays out the compose networks once per boot, before any service runs.
    async fn set_up_networks(&self) -> Result<(), ContainerError> {
        let mut ready = self.inner.networks_ready.lock().await;
        if *ready {
            return Ok(());
        }
        let plan = self.inner.netplan.clone()?;
        let run_dir = self.inner.env.run_dir.clone();
        tokio::task::spawn_blocking(move || netns::set_up(&plan, &run_dir))
            .await
            .map_err(|e| ContainerError::spec("*", format!("network setup panicked: {e}")))??;
        let bridges = match &self.inner.netplan {
            Ok(plan) => plan
                .bridges
                .iter()
                .map(|b| format!("{} {}/24", b.network, b.gateway))
                .collect::<Vec<_>>()
                .join(", "),
            Err(_) => String::new(),
        };
        if !bridges.is_empty() {
            self.inner
                .system_log(format!("compose networks: {bridges}"));
        }
        *ready = true;
        Ok(())
    }

    /// PID1's reaper reports every reaped child here; true when the pid was
    /// a container init or health check of ours. See the type's docs.
    pub fn child_exited(&self, pid: i32, status: ExitStatus) -> bool {
        self.inner.reaping.exited(pid, status)
    }

    /// The guard PID1's reaper holds around `waitpid(-1)` (see the type's docs).
    pub async fn lock_for_reaping(&self) -> ReapGuard {
        self.inner.reaping.reap_guard().await
    }

    /// Every service's state, in name order.
    pub fn list(&self) -> Vec<ContainerInfo> {
        self.inner
            .slots
            .values()
            .map(|slot| slot.info.borrow().clone())
            .collect()
    }

    /// The last lines a service wrote (at most 200), oldest first.
    pub fn recent_logs(&self, service: &str) -> Vec<LogEntry> {
        self.inner
            .slots
            .get(service)
            .and_then(|slot| {
                slot.recent
                    .lock()
                    .ok()
                    .map(|ring| ring.iter().cloned().collect())
            })
            .unwrap_or_default()
    }

    /// Stops every service in reverse start order: its stop signal
    /// (`stop_signal`, default SIGTERM) to its init,
    /// `stop_grace_period`, then SIGKILL to all its processes; deletes the
    /// container and unmounts its root. Published-port proxies are closed.
    pub async fn stop_all(&self) {
        let inner = &self.inner;
        let order = inner
            .order
            .clone()
            .unwrap_or_else(|_| inner.slots.keys().cloned().collect());
        for name in order.iter().rev() {
            let slot = &inner.slots[name];
            slot.stopping.send_replace(true);
            let grace = inner.compose.services[name].stop_grace_period;
            let stop_signal = inner.compose.services[name]
                .stop_signal
                .and_then(|n| Signal::try_from(n).ok())
                .unwrap_or(Signal::SIGTERM);
            let mut info = slot.info.subscribe();
            if info.borrow().pid.is_some() {
                let kill = |signal, all| {
                    let (root, id) = (inner.state_root.clone(), name.clone());
                    tokio::task::spawn_blocking(move || runner::signal(&root, &id, signal, all))
                };
                let _ = kill(stop_signal, false).await;
                let gone = tokio::time::timeout(grace, info.wait_for(|i| i.pid.is_none()))
                    .await
                    .is_ok();
                if !gone {
                    let _ = kill(Signal::SIGKILL, true).await;
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        info.wait_for(|i| i.pid.is_none()),
                    )
                    .await;
                }
            }
            let task = slot.task.lock().ok().and_then(|mut t| t.take());
            if let Some(task) = task
                && tokio::time::timeout(Duration::from_secs(5), task)
                    .await
                    .is_err()
            {
                inner.system_log(format!("{name}: did not stop in time"));
            }
            let paths = slot.paths.clone();
            let _ = tokio::task::spawn_blocking(move || runner::unmount_rootfs(&paths)).await;
        }
        if let Ok(mut proxies) = inner.proxies.lock() {
            proxies.drain(..).for_each(|task| task.abort());
        }
        // Once nothing runs in them, the services' namespaces are unbound.
        if let Ok(plan) = &inner.netplan
            && *inner.networks_ready.lock().await
        {
            netns::tear_down(plan, &inner.env.run_dir);
        }
    }
}

#[cfg(test)]
#[path = "privileged_tests.rs"]
mod privileged_tests;
