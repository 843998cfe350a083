//! The boot sequence, step by step. Each step records a phase (shown in
//! guest info with its time), logs what it did, and, once the host is
//! known, reports the phase to it as `boot.progress`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dstack_compose::{AppCompose, Compose, ComposeError};
use dstack_proto::guest::GUEST_CONTROL_PORT;
use dstack_proto::host::{ConfigBundle, LogEntry, events};
use tokio::sync::mpsc;

use crate::app::{AppParams, AppRuntime, RuntimeFactory};
use crate::containers::ContainerError;
use crate::control::Control;
use crate::disk::{self, DiskError, DiskOutcome};
use crate::hostapi::{HostApiError, HostClient, HostEndpoint};
use crate::hostshared::{self, WriteError};
use crate::logship::LogShipper;
use crate::modules::{self, ModuleError, ModuleOutcome};
use crate::mounts::{self, MountError};
use crate::network::{self, NetworkError};
use crate::notify::Notifier;
use crate::reaper::Reaper;
use crate::state::{GuestState, ShutdownSignal};
use crate::sys::{RebootCmd, Syscall};
use crate::{console, identity, power};

/// Phase names, in boot order.
pub mod phase {
    /// Early pseudo-filesystems.
    pub const MOUNTS: &str = "mounting filesystems";
    /// Kernel modules.
    pub const MODULES: &str = "loading modules";
    /// Fetching the config bundle.
    pub const HOST: &str = "connecting to host";
    /// Hostname, compose, identity, host-shared files.
    pub const CONFIG: &str = "applying config";
    /// Network and data disk (concurrently).
    pub const NETWORK_AND_DISK: &str = "configuring network and data disk";
    /// Image pulls.
    pub const PULL: &str = "pulling images";
    /// Container starts.
    pub const START: &str = "starting containers";
    /// Everything runs.
    pub const RUNNING: &str = dstack_proto::host::events::PHASE_RUNNING;
    /// The boot failed.
    pub const FAILED: &str = "failed";
}

/// A boot step failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Early mounts.
    #[error("mounting the early filesystems failed")]
    Mounts(#[from] MountError),
    /// Kernel modules.
    #[error("loading kernel modules failed")]
    Modules(#[from] ModuleError),
    /// The config bundle.
    #[error("fetching the config from the host failed")]
    Config(#[source] HostApiError),
    /// app-compose.json.
    #[error("app-compose.json is invalid")]
    Compose(#[source] ComposeError),
    /// Identity derivation (no randomness).
    #[error("deriving the instance id failed")]
    Identity(#[source] std::io::Error),
    /// Host-shared files.
    #[error("writing the config files failed")]
    HostShared(#[from] WriteError),
    /// Network.
    #[error("configuring the network failed")]
    Network(#[from] NetworkError),
    /// Data disk.
    #[error("preparing the data disk failed")]
    Disk(#[from] DiskError),
    /// Image pulls.
    #[error("pulling images failed")]
    Pull(#[source] ContainerError),
    /// Container starts.
    #[error("starting containers failed")]
    Start(#[source] ContainerError),
    /// A blocking step's thread died.
    #[error("a boot step's thread failed")]
    Task(#[from] tokio::task::JoinError),
}

/// Paths and endpoints of a boot; [`Default`] is the guest's.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// The console stdout/stderr go to.
    pub console: PathBuf,
    /// cgroup v2 root.
    pub cgroup_root: PathBuf,
    /// `/lib/modules`.
    pub modules_root: PathBuf,
    /// The host API.
    pub host: HostEndpoint,
    /// How long to keep trying to reach the host at boot.
    pub host_patience: Duration,
    /// The data disk device.
    pub data_device: PathBuf,
    /// Its mount point.
    pub data_dir: PathBuf,
    /// Runtime state directory.
    pub run_dir: PathBuf,
    /// The guest API socket directory (`/var/run` links to `/run`).
    pub guest_socket_dir: PathBuf,
    /// Upstream's host-shared file directory.
    pub host_shared_dir: PathBuf,
    /// The guest's `/etc`.
    pub etc_dir: PathBuf,
    /// `/var/run`, made a link to `/run`.
    pub var_run: PathBuf,
    /// `/sys/class/input`, searched for the ACPI power button.
    pub input_class: PathBuf,
    /// The guest control vsock port (`None`: no guest control, for tests).
    pub control_port: Option<u32>,
}

impl Default for BootConfig {
    fn default() -> Self {
        Self {
            console: "/dev/console".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
            modules_root: "/lib/modules".into(),
            host: HostEndpoint::default(),
            host_patience: Duration::from_secs(15),
            data_device: "/dev/vda".into(),
            data_dir: "/data".into(),
            run_dir: "/run/dstack".into(),
            guest_socket_dir: "/var/run/dstack".into(),
            host_shared_dir: hostshared::HOST_SHARED_DIR.into(),
            etc_dir: "/etc".into(),
            var_run: "/var/run".into(),
            input_class: "/sys/class/input".into(),
            control_port: Some(GUEST_CONTROL_PORT),
        }
    }
}

/// The boot in progress and what it has set up so far.
#[derive(Debug)]
pub struct Boot {
    /// The kernel.
    pub sys: Arc<dyn Syscall>,
    /// Paths.
    pub cfg: BootConfig,
    /// Shared guest state.
    pub state: Arc<GuestState>,
    /// Shutdown requests.
    pub shutdown: ShutdownSignal,
    /// The zombie reaper.
    pub reaper: Arc<Reaper>,
    /// Host notifications (detached until the host answered).
    pub notifier: Notifier,
    /// The log shipper, once the host answered.
    pub shipper: Option<LogShipper>,
    /// Whether the data disk is mounted.
    pub data_mounted: bool,
    /// Where log lines for the host go, once the host answered.
    pub logs: Option<mpsc::Sender<LogEntry>>,
}

fn ms(since: Instant) -> u128 {
    since.elapsed().as_millis()
}

impl Boot {
    /// A boot that has done nothing yet.
    pub fn new(sys: Arc<dyn Syscall>, cfg: BootConfig) -> Self {
        Self {
            sys,
            cfg,
            state: Arc::new(GuestState::default()),
            shutdown: ShutdownSignal::default(),
            reaper: Arc::new(Reaper::default()),
            notifier: Notifier::detached(),
            shipper: None,
            data_mounted: false,
            logs: None,
        }
    }

    /// Enters phase `name`: recorded, logged and reported.
    pub fn phase(&self, name: &str) {
        self.state.enter_phase(name);
        tracing::info!("== {name}");
        self.notifier.send(events::BOOT_PROGRESS, name);
    }

    /// Mounts, console, ctrl-alt-del, cgroup controllers, run directories.
    pub fn early(&self) -> Result<(), BootError> {
        self.phase(phase::MOUNTS);
        let result = mounts::mount_all(&*self.sys, &mounts::early_mounts());
        // Whatever happened, stderr should reach the console now.
        match self.sys.attach_console(&self.cfg.console) {
            Ok(()) => {}
            Err(e) => tracing::warn!("cannot open {}: {e}", self.cfg.console.display()),
        }
        if let Some(log) = console::get() {
            log.console_ready();
        }
        result?;
        if let Ok(uptime) = std::fs::read_to_string("/proc/uptime") {
            let secs = uptime.split_whitespace().next().unwrap_or("?");
            tracing::info!(
                "dstack-init {} is PID1 (kernel up {secs} s)",
                env!("CARGO_PKG_VERSION")
            );
        }
        if let Err(e) = self.sys.reboot(RebootCmd::CadOff) {
            tracing::warn!("cannot turn ctrl-alt-del into SIGINT: {e}");
        }
        match mounts::enable_controllers(&self.cfg.cgroup_root) {
            Ok(enabled) => tracing::info!("cgroup controllers: {}", enabled.join(" ")),
            Err(e) => tracing::warn!("{}", error_chain(&e)),
        }
        let var = self.cfg.var_run.parent().unwrap_or(Path::new("/"));
        for dir in [&self.cfg.run_dir, var] {
            if let Err(e) = self.sys.mkdir_all(dir, 0o755) {
                tracing::warn!("cannot create {}: {e}", dir.display());
            }
        }
        // Apps and SDKs look for sockets under /var/run.
        if let Err(e) = std::os::unix::fs::symlink("/run", &self.cfg.var_run)
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            tracing::warn!("cannot link {} to /run: {e}", self.cfg.var_run.display());
        }
        Ok(())
    }

    /// Loads the kernel modules the image lists; then configfs, the power
    /// button and guest control, which need them.
    pub async fn load_modules(&self) -> Result<(), BootError> {
        self.phase(phase::MODULES);
        let started = Instant::now();
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let path = modules::load_order_path(&self.cfg.modules_root, release.trim());
        match modules::read_load_order(&path)? {
            None => tracing::warn!("no {}: loading no modules", path.display()),
            Some(order) => {
                let dir = path.parent().map(Path::to_owned).unwrap_or_default();
                let sys = self.sys.clone();
                let report =
                    tokio::task::spawn_blocking(move || modules::load_all(&*sys, &dir, &order))
                        .await??;
                log_module_report(&report, started);
            }
        }
        if let Err(e) = mounts::mount_all(&*self.sys, &[mounts::configfs_mount()]) {
            tracing::warn!("{}", error_chain(&e));
        }
        let buttons = power::watch_power_buttons(&self.cfg.input_class, &self.shutdown);
        if buttons.is_empty() {
            tracing::warn!("no ACPI power button found: power-off requests will not be graceful");
        }
        let control = Control {
            state: self.state.clone(),
            shutdown: self.shutdown.clone(),
        };
        if let Some(port) = self.cfg.control_port {
            match control.spawn_vsock(port) {
                Ok(_) => tracing::info!("guest control listening on vsock port {port}"),
                Err(e) => tracing::warn!("guest control is unavailable: {e}"),
            }
        }
        Ok(())
    }

    /// Fetches the config bundle and starts notifications and log shipping.
    pub async fn fetch_config(&mut self) -> Result<ConfigBundle, BootError> {
        self.phase(phase::HOST);
        let started = Instant::now();
        let client = HostClient::new(self.cfg.host.clone(), Duration::from_secs(10));
        let bundle = client
            .get_config(self.cfg.host_patience)
            .await
            .map_err(BootError::Config)?;
        tracing::info!(
            "config from {} in {} ms ({} bytes of app-compose)",
            client.endpoint(),
            ms(started),
            bundle.app_compose.len()
        );
        self.notifier = Notifier::start(client.clone());
        let (shipper, tx) = LogShipper::start(client);
        if let Some(log) = console::get() {
            log.ship_to(tx.clone());
        }
        self.shipper = Some(shipper);
        self.logs = Some(tx);
        Ok(bundle)
    }

    /// Hostname, compose, identity and host-shared files.
    pub fn apply_config(&self, bundle: &ConfigBundle) -> Result<Compose, BootError> {
        self.phase(phase::CONFIG);
        let hostname = network::sanitize_hostname(&bundle.sys_config.vm_name);
        if let Err(e) = self.sys.set_hostname(&hostname) {
            tracing::warn!("cannot set hostname {hostname}: {e}");
        }
        let (app, compose) = AppCompose::parse(&bundle.app_compose).map_err(BootError::Compose)?;
        let derived = identity::derive(
            bundle.app_compose.as_bytes(),
            &app,
            &bundle.instance_info,
            &mut identity::random_seed,
        )
        .map_err(BootError::Identity)?;
        let id = &derived.identity;
        tracing::info!(
            "app {:?}: compose-hash {}, app-id {}, instance-id {}",
            app.name,
            id.compose_hash,
            id.app_id,
            if id.instance_id.is_empty() {
                "-"
            } else {
                &id.instance_id
            }
        );
        self.state.set_identity(derived.identity.clone());
        let instance = derived
            .persist
            .clone()
            .unwrap_or(bundle.instance_info.clone());
        if let Some(info) = &derived.persist {
            let payload = serde_json::to_string(info).unwrap_or_default();
            self.notifier.send(events::INSTANCE_INFO, payload);
        }
        hostshared::write_bundle(&self.cfg.host_shared_dir, bundle, &instance)?;
        Ok(compose)
    }

    /// Network and data disk, at the same time (both mostly wait on the
    /// kernel, and neither needs the other).
    pub async fn network_and_disk(&mut self, bundle: &ConfigBundle) -> Result<(), BootError> {
        self.phase(phase::NETWORK_AND_DISK);
        let started = Instant::now();
        let net_config = bundle.sys_config.network.clone();
        let hostname = network::sanitize_hostname(&bundle.sys_config.vm_name);
        let etc = self.cfg.etc_dir.clone();
        let net =
            tokio::task::spawn_blocking(move || network::configure(&net_config, &hostname, &etc));
        let (sys, device, target) = (
            self.sys.clone(),
            self.cfg.data_device.clone(),
            self.cfg.data_dir.clone(),
        );
        let disk = tokio::task::spawn_blocking(move || {
            disk::wait_for_device(&device, Duration::from_secs(5))?;
            disk::prepare(&*sys, &device, &target, &disk::mke2fs)
        });
        let (net, disk) = tokio::join!(net, disk);
        // Record a mount even if the network failed, so shutdown unmounts it.
        let disk = disk?;
        self.data_mounted = disk.is_ok();
        let outcome = disk?;
        let summary = net??;
        tracing::info!(
            "network: {} {}/{} via {}",
            summary.interface,
            summary.address,
            summary.prefix,
            summary.gateway
        );
        let how = match outcome {
            DiskOutcome::Formatted => "formatted and mounted",
            DiskOutcome::Mounted => "mounted",
        };
        tracing::info!(
            "data disk {} {how} at {} ({} ms for network and disk)",
            self.cfg.data_device.display(),
            self.cfg.data_dir.display(),
            ms(started)
        );
        Ok(())
    }

    /// Pulls and starts the app's services.
    pub async fn run_app(
        &self,
        bundle: &ConfigBundle,
        compose: Compose,
        factory: RuntimeFactory,
    ) -> Result<Arc<dyn AppRuntime>, BootError> {
        let sys_config = &bundle.sys_config;
        // Without a host there is nowhere to ship to; the lines are dropped.
        let logs = self.logs.clone().unwrap_or_else(|| mpsc::channel(1).0);
        let runtime = factory(AppParams {
            data_dir: self.cfg.data_dir.clone(),
            run_dir: self.cfg.run_dir.clone(),
            guest_socket_dir: self.cfg.guest_socket_dir.clone(),
            registry_aliases: sys_config.registry_aliases.clone(),
            insecure_registries: sys_config.insecure_registries.clone(),
            dns: sys_config.network.dns.clone(),
            compose,
            logs,
        });
        self.reaper.set_owner(runtime.clone());
        self.state.set_services(runtime.clone());

        self.phase(phase::PULL);
        let started = Instant::now();
        let notifier = self.notifier.clone();
        let progress = move |line: String| {
            tracing::info!("{line}");
            notifier.send(events::BOOT_PROGRESS, line);
        };
        runtime.pull_all(&progress).await.map_err(BootError::Pull)?;
        tracing::info!("images ready in {} ms", ms(started));

        self.phase(phase::START);
        let started = Instant::now();
        runtime.start_all().await.map_err(BootError::Start)?;
        tracing::info!("services started in {} ms", ms(started));
        Ok(runtime)
    }
}

fn log_module_report(report: &[(String, ModuleOutcome)], started: Instant) {
    for (name, outcome) in report {
        match outcome {
            ModuleOutcome::Failed(e) => tracing::warn!("module {name} failed to load: {e}"),
            ModuleOutcome::NoDevice => tracing::info!("module {name}: no such device here"),
            ModuleOutcome::Loaded | ModuleOutcome::AlreadyLoaded => {}
        }
    }
    let loaded = report
        .iter()
        .filter(|(_, o)| *o == ModuleOutcome::Loaded)
        .count();
    tracing::info!(
        "loaded {loaded} of {} modules in {} ms",
        report.len(),
        ms(started)
    );
}

/// An error and its causes on one line: `a: b: c`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
#[path = "boot_tests.rs"]
mod tests;
