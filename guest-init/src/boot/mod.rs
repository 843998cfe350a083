//! The boot sequence, step by step. Each step records a phase (shown in
//! guest info with its time), logs what it did, and, once the host is
//! known, reports the phase to it as `boot.progress`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dstack_attest::eventlog::{key_provider, names};
use dstack_attest::{CollateralCache, Platform};
use dstack_compose::{AppCompose, Compose, KeyProviderKind};
use dstack_guest_api::{AppInfo, Flavor, GuestApi};
use dstack_keys::AppKeys;
use dstack_proto::host::{ConfigBundle, GetSealingKeyRequest, LogEntry, events};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::app::{AppParams, AppRuntime, RuntimeFactory};
use crate::build_context;
use crate::control::Control;
use crate::disk;
use crate::gateway::{self, ClientApp, GatewayAppPin, GatewayKeeper, GatewayLink, GatewaySetup};
use crate::hostapi::HostClient;
use crate::hostshared;
use crate::local_key::LocalKeyError;
use crate::logship::LogShipper;
use crate::measure::{self, AppMeasurement};
use crate::modules::{self, ModuleOutcome};
use crate::mounts;
use crate::network;
use crate::notify::Notifier;
use crate::reaper::Reaper;
use crate::state::{GuestState, ShutdownSignal};
use crate::sys::{RebootCmd, Syscall};
use crate::{console, identity, local_key, power, tee};

mod config;
mod error;
mod kms_signer;

pub use config::{BootConfig, phase};
pub use error::{BootError, error_chain};

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
    /// The plaintext device of the data disk, once it is mapped and mounted.
    pub data_mounted: Option<std::path::PathBuf>,
    /// Maps the encrypted data disk (device-mapper; tests use a fake).
    pub mapper: Arc<dyn disk::Mapper>,
    /// Makes the filesystem inside a new encrypted disk.
    pub mkfs: fn(&Path) -> Result<(), disk::DiskError>,
    /// Where log lines for the host go, once the host answered.
    pub logs: Option<mpsc::Sender<LogEntry>>,
    /// Boot work running in the background, awaited before containers.
    pub background: Vec<tokio::task::JoinHandle<Result<(), BootError>>>,
    /// The TEE, once known (tests may set it before the boot).
    pub platform: Option<Arc<dyn Platform>>,
    /// The link to dstack-gateway, once registered.
    pub gateway: Option<GatewayLink>,
    /// The guest's network interface, once configured.
    uplink: Option<String>,
    /// Identity derivation, its measurement and the key provider's seed
    /// (`None`: the `none` provider, a random seed), running in the background.
    identity: Option<tokio::task::JoinHandle<Result<Measured, BootError>>>,
}

/// A 32-byte app-key seed, wiped when dropped.
type KeySeed = Zeroizing<[u8; 32]>;

/// Where the app's keys come from. `Debug` shows no key.
enum KeySource {
    /// The `none` provider: a fresh random seed.
    Random,
    /// A provider's 32-byte seed (local).
    Seed(KeySeed),
    /// Keys released by a KMS, which also signs the app's TLS certificates.
    Kms(
        Box<dstack_proto::kms::AppKeyResponse>,
        kms_signer::KmsCertSigner,
    ),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Random => "KeySource::Random",
            Self::Seed(_) => "KeySource::Seed",
            Self::Kms(..) => "KeySource::Kms",
        })
    }
}

/// The measured app and where its keys come from.
type Measured = (AppMeasurement, KeySource);

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
            data_mounted: None,
            mapper: Arc::new(disk::DmMapper),
            mkfs: disk::mke2fs,
            logs: None,
            background: Vec::new(),
            platform: None,
            gateway: None,
            uplink: None,
            identity: None,
        }
    }

    /// Runs the boot on `platform` instead of detecting the TEE.
    pub fn use_platform(&mut self, platform: Arc<dyn Platform>) {
        self.state.set_platform(platform.clone());
        self.platform = Some(platform);
    }

    /// Extends RTMR3 with one event on a blocking thread.
    async fn emit(&self, name: &'static str, payload: Vec<u8>) -> Result<(), BootError> {
        let platform = self.platform()?;
        tokio::task::spawn_blocking(move || measure::emit(&*platform, name, &payload)).await??;
        Ok(())
    }

    fn platform(&self) -> Result<Arc<dyn Platform>, BootError> {
        self.platform
            .clone()
            .ok_or_else(|| BootError::GuestApi("no TEE platform was selected".into()))
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

    /// Loads the kernel modules the boot needs now ([`modules::EARLY`] and
    /// their dependencies) and starts guest control. The rest load on a
    /// background thread: first [`modules::FOR_APP`] (awaited by
    /// [`Boot::finish_background`] before the containers), then everything
    /// else, after which configfs is mounted and the power button watched.
    pub async fn load_modules(&mut self) -> Result<(), BootError> {
        self.phase(phase::MODULES);
        let started = Instant::now();
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let path = modules::load_order_path(&self.cfg.modules_root, release.trim());
        let order = modules::read_load_order(&path)?.unwrap_or_else(|| {
            if Path::new("/proc/modules").exists() {
                tracing::warn!("no {}: loading no modules", path.display());
            } else {
                tracing::info!("kernel without module support: everything is built in");
            }
            Vec::new()
        });
        let dir = path.parent().map(Path::to_owned).unwrap_or_default();
        let (early, late) = modules::split_after(order, modules::EARLY);
        let (for_app, later) = modules::split_after(late, modules::FOR_APP);
        let (sys, early_dir) = (self.sys.clone(), dir.clone());
        let report =
            tokio::task::spawn_blocking(move || modules::load_all(&*sys, &early_dir, &early))
                .await??;
        log_module_report(&report, started);

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

        // The app's modules, then the rest; only the first part is awaited
        // (before the containers start).
        let (app_ready, app_modules) = tokio::sync::oneshot::channel();
        let (sys, shutdown, input) = (
            self.sys.clone(),
            self.shutdown.clone(),
            self.cfg.input_class.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let result = modules::load_all(&*sys, &dir, &for_app);
            let failed = result.is_err();
            if let Ok(report) = &result {
                log_module_report(report, started);
            }
            let _ = app_ready.send(result.map(|_| ()).map_err(BootError::from));
            if failed {
                return;
            }
            let started = Instant::now();
            match modules::load_all(&*sys, &dir, &later) {
                Ok(report) => log_module_report(&report, started),
                Err(e) => tracing::error!("{}", error_chain(&e)),
            }
            if let Err(e) = mounts::mount_all(&*sys, &[mounts::configfs_mount()]) {
                tracing::warn!("{}", error_chain(&e));
            }
            if power::watch_power_buttons(&input, &shutdown).is_empty() {
                tracing::warn!(
                    "no ACPI power button found: power-off requests will not be graceful"
                );
            }
        });
        self.background.push(tokio::spawn(
            async move { app_modules.await.unwrap_or(Ok(())) },
        ));
        Ok(())
    }

    /// Waits for the boot's background work (the late modules, the
    /// identity): containers need overlay, and "running" means all is done.
    pub async fn finish_background(&mut self) -> Result<(), BootError> {
        for task in std::mem::take(&mut self.background) {
            task.await??;
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
        if self.platform.is_none() {
            let platform = tee::select(client.clone()).await?;
            self.use_platform(platform);
        }
        let kind = self.platform()?.kind();
        tracing::info!("TEE: {kind:?}");
        self.emit(names::SYSTEM_PREPARING, Vec::new()).await?;
        let (shipper, tx) = LogShipper::start(client);
        if let Some(log) = console::get() {
            log.ship_to(tx.clone());
        }
        self.shipper = Some(shipper);
        self.logs = Some(tx);
        Ok(bundle)
    }

    /// Applies the config: hostname and the app-compose manifest first (a
    /// bad manifest stops the boot before anything is touched), then the
    /// network, with the identity and keys in the background. The compose
    /// YAML is read in [`Boot::unlock`], once the app's env is decrypted.
    pub async fn apply_config(&mut self, bundle: &ConfigBundle) -> Result<(), BootError> {
        self.phase(phase::CONFIG);
        let hostname = network::sanitize_hostname(&bundle.sys_config.vm_name);
        if let Err(e) = self.sys.set_hostname(&hostname) {
            tracing::warn!("cannot set hostname {hostname}: {e}");
        }
        let app = AppCompose::parse_manifest(&bundle.app_compose).map_err(BootError::Compose)?;
        tracing::info!("app {:?}", app.name);

        self.phase(phase::NETWORK_AND_DISK);
        let started = Instant::now();
        let (net_config, etc) = (bundle.sys_config.network.clone(), self.cfg.etc_dir.clone());
        let configure_network = self.cfg.configure_network;
        let net = tokio::task::spawn_blocking(move || {
            configure_network
                .then(|| network::configure(&net_config, &hostname, &etc))
                .transpose()
        });
        // The identity task may fetch collateral from the PCCS: not before the network is up.
        let (net_up, net_ready) = tokio::sync::watch::channel(false);
        self.spawn_identity(bundle, app, net_ready);
        let net = net.await;
        let _ = net_up.send(true);
        match net?? {
            Some(net) => {
                tracing::info!(
                    "network: {} {}/{} via {} ({} ms)",
                    net.interface,
                    net.address,
                    net.prefix,
                    net.gateway,
                    ms(started)
                );
                self.uplink = Some(net.interface);
            }
            None => tracing::info!("network left as it is"),
        }
        Ok(())
    }

    /// Derives the identity and writes the host-shared files in the
    /// background: a fresh instance-id seed may wait for the kernel's
    /// entropy pool (a second under TCG without RDRAND), and nothing before
    /// the containers needs it.
    fn spawn_identity(
        &mut self,
        bundle: &ConfigBundle,
        app: AppCompose,
        mut net_ready: tokio::sync::watch::Receiver<bool>,
    ) {
        let (bundle, shared_dir) = (bundle.clone(), self.cfg.host_shared_dir.clone());
        let (state, notifier) = (self.state.clone(), self.notifier.clone());
        let platform = self.platform.clone();
        // The provider verifies a quote and may forward to an SGX enclave.
        let host = HostClient::new(self.cfg.host.clone(), Duration::from_secs(60));
        let runtime = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || -> Result<Measured, BootError> {
            let kind = measure::check_key_provider_supported(&app, &bundle.sys_config.kms_urls)?;
            let pinned = measure::pinned_key_provider_id(&app)?;
            let derived = identity::derive(
                bundle.app_compose.as_bytes(),
                &app,
                &bundle.instance_info,
                &mut identity::random_seed,
            )
            .map_err(BootError::Identity)?;
            let instance = derived
                .persist
                .clone()
                .unwrap_or(bundle.instance_info.clone());
            hostshared::write_bundle(&shared_dir, &bundle, &instance)?;
            hostshared::lay_out_app_dir(
                &shared_dir,
                app.docker_compose_file.as_deref().unwrap_or_default(),
            )?;
            let id = &derived.identity;
            let instance_id = if id.instance_id.is_empty() {
                "-"
            } else {
                &id.instance_id
            };
            tracing::info!(
                "compose-hash {}, app-id {}, instance-id {instance_id}",
                id.compose_hash,
                id.app_id,
            );
            state.set_identity(derived.identity.clone());
            if let Some(info) = &derived.persist {
                let payload = serde_json::to_string(info).unwrap_or_default();
                notifier.send(events::INSTANCE_INFO, payload);
            }
            let mut measured = AppMeasurement {
                app_id: hex::decode(&derived.identity.app_id).unwrap_or_default(),
                instance_id: hex::decode(&derived.identity.instance_id).unwrap_or_default(),
                compose_hash: derived.compose_hash,
                key_provider_info: key_provider::NONE.into(),
            };
            let platform = platform
                .ok_or_else(|| BootError::GuestApi("no TEE platform was selected".into()))?;
            measure::measure_identity(&*platform, &measured)?;
            let source = match kind {
                KeyProviderKind::Kms => {
                    // The KMS is reached over the network, which comes up
                    // in parallel with this task.
                    runtime.block_on(async {
                        let _ = net_ready.wait_for(|up| *up).await;
                    });
                    let started = Instant::now();
                    notifier.send(events::BOOT_PROGRESS, "requesting app keys from the KMS");
                    let (keys, root, client) = kms_keys(
                        &runtime,
                        &*platform,
                        &bundle.sys_config.kms_urls,
                        &bundle.sys_config.vm_config,
                        &pinned,
                    )?;
                    measure::check_key_provider_id(&pinned, &root.spki)?;
                    // Upstream measures the image the KMS vouched for before the provider.
                    measure::emit(&*platform, names::OS_IMAGE_HASH, &keys.os_image_hash)?;
                    measured.key_provider_info = key_provider::kms(&root.spki);
                    tracing::info!("app keys from the KMS ({} ms)", ms(started));
                    let signer = kms_signer::KmsCertSigner {
                        client,
                        root,
                        vm_config: bundle.sys_config.vm_config.clone(),
                        runtime: runtime.clone(),
                    };
                    KeySource::Kms(Box::new(keys), signer)
                }
                KeyProviderKind::Local => {
                    let started = Instant::now();
                    let mut fetch = |request: GetSealingKeyRequest| {
                        runtime.block_on(host.get_sealing_key(&request))
                    };
                    let pccs_url = &bundle.sys_config.pccs_url;
                    let cache = (!pccs_url.is_empty())
                        .then(|| CollateralCache::new(pccs_url.clone()))
                        .transpose()
                        .map_err(|e| BootError::LocalKey(Box::new(LocalKeyError::Pccs(e))))?;
                    let mut via_cache;
                    let source: Option<local_key::CollateralSource<'_>> = match &cache {
                        Some(cache) => {
                            via_cache = |quote: &[u8]| {
                                runtime.block_on(async {
                                    // A failed network setup drops the sender: fetch
                                    // anyway, and let the PCCS error name the problem.
                                    let _ = net_ready.wait_for(|up| *up).await;
                                    cache.get(quote).await
                                })
                            };
                            Some(&mut via_cache)
                        }
                        None => None,
                    };
                    let local = local_key::request(&*platform, &mut fetch, source)
                        .map_err(|e| BootError::LocalKey(Box::new(e)))?;
                    measure::check_key_provider_id(&pinned, &local.mr_enclave)?;
                    measured.key_provider_info = key_provider::local_sgx(&local.mr_enclave);
                    tracing::info!(
                        "app keys from the local key provider {} ({} ms)",
                        hex::encode(local.mr_enclave),
                        ms(started)
                    );
                    KeySource::Seed(local.seed)
                }
                _ => {
                    measure::check_key_provider_id(&pinned, &[])?;
                    KeySource::Random
                }
            };
            measure::measure_key_provider(&*platform, &app, &measured)?;
            state.set_key_provider(measured.key_provider_info.clone());
            Ok((measured, source))
        });
        self.identity = Some(task);
    }

    /// Once the identity is measured and the keys are in: decrypts the
    /// app's env, reads the compose with it, opens (or formats) the
    /// encrypted data disk with the disk key, completes the measurements
    /// (`storage-fs`, `system-ready`), then serves the guest API
    /// (`dstack.sock`, `tappd.sock`) so services can mount it, and links
    /// the CVM to dstack-gateway when the app asks for it. A bad env, a
    /// bad compose or a refused disk stops the boot here, before any
    /// service runs; an unreachable gateway does not.
    pub async fn unlock(&mut self, bundle: &ConfigBundle) -> Result<Compose, BootError> {
        let Some(identity) = self.identity.take() else {
            return Err(BootError::GuestApi(
                "the app identity was never derived".into(),
            ));
        };
        let (measured, source) = identity.await??;
        // The KMS names the gateway app to trust; without a KMS nobody does.
        let gateway_pin = match &source {
            KeySource::Kms(keys, _) => {
                GatewayAppPin::from_kms(&keys.gateway_app_id, &keys.tproxy_app_id)
            }
            KeySource::Random | KeySource::Seed(_) => Some(GatewayAppPin::Unpinned),
        };
        let (keys, signer) = tokio::task::spawn_blocking(move || {
            let (keys, signer) = match source {
                KeySource::Random => {
                    let seed =
                        Zeroizing::new(identity::random_seed32().map_err(BootError::Identity)?);
                    (AppKeys::from_seed(&seed), None)
                }
                KeySource::Seed(seed) => (AppKeys::from_seed(&seed), None),
                KeySource::Kms(keys, signer) => (app_keys_from_kms(&keys), Some(signer)),
            };
            let keys = keys.map_err(|e| BootError::GuestApi(e.into()))?;
            Ok::<_, BootError>((keys, signer))
        })
        .await??;

        self.phase(phase::UNLOCK);
        let vars = app_env(bundle, &keys)?;
        let (app, compose, unset) =
            AppCompose::parse_with_vars(&bundle.app_compose, &vars).map_err(BootError::Compose)?;
        drop(vars);
        let compose = crate::containers::add_engine(
            compose,
            &bundle.sys_config,
            &self.cfg.etc_dir.join("dstack/engine-image"),
        )?;
        if !unset.is_empty() {
            tracing::warn!(
                "the compose file uses variables the app's env does not set (empty): {}",
                unset.join(", ")
            );
        }
        tracing::info!("compose: {} services", compose.services.len());

        self.emit(names::STORAGE_FS, measure::STORAGE_FS.as_bytes().to_vec())
            .await?;
        let ephemeral_key = measured.key_provider_info == key_provider::NONE;
        self.prepare_disk(bundle, &keys, ephemeral_key).await?;
        self.emit(names::SYSTEM_READY, Vec::new()).await?;
        let client = ClientApp {
            app_id: measured.app_id.clone(),
            instance_id: measured.instance_id.clone(),
            compose_hash: measured.compose_hash,
            key_provider_info: measured.key_provider_info.clone(),
            os_image_hash: os_image_hash(&bundle.sys_config.vm_config),
            vm_config: bundle.sys_config.vm_config.clone(),
        };
        self.serve_guest_api(bundle, measured, keys, signer).await?;
        if app.uses_gateway() {
            self.link_gateway(bundle, &app, client, gateway_pin).await;
        }
        Ok(compose)
    }

    /// Registers with dstack-gateway and brings up the tunnel (before any
    /// service starts, so the quote and event log it sends agree), then
    /// leaves a task re-registering periodically. As upstream, a failure
    /// does not stop the boot: the app runs without ingress until a later
    /// registration succeeds, and the host hears it as `boot.error` with
    /// upstream's words (only this once: later failures are only logged).
    async fn link_gateway(
        &mut self,
        bundle: &ConfigBundle,
        app: &AppCompose,
        client: ClientApp,
        pin: Option<GatewayAppPin>,
    ) {
        self.phase(phase::GATEWAY);
        if !self.cfg.configure_network {
            tracing::info!("network left as it is: not linking to dstack-gateway");
            return;
        }
        let started = Instant::now();
        let result = match (pin, self.platform()) {
            (None, _) => Err(gateway::GatewayError::NoGatewayApp),
            (_, Err(e)) => {
                tracing::warn!("dstack-gateway: {}", error_chain(&e));
                return;
            }
            (Some(pin), Ok(platform)) => {
                let setup = GatewaySetup {
                    urls: bundle.sys_config.gateway_urls.clone(),
                    pccs_url: bundle.sys_config.pccs_url.clone(),
                    port_policy: app.port_policy.clone().unwrap_or_default(),
                    app: client,
                    pin,
                    uplink: self.uplink.clone(),
                    cache_path: self.cfg.run_dir.join("gateway-cache.json"),
                };
                let mut keeper = GatewayKeeper::new(platform, setup);
                let result = keeper.register().await;
                // Kept registered for the CVM's life, as the guest API is
                // served: a task of this runtime. A gateway down now gets
                // the CVM later; only a misconfiguration is not retried.
                if !result
                    .as_ref()
                    .is_err_and(gateway::GatewayError::is_permanent)
                {
                    tokio::spawn(keeper.keep_alive(result.is_ok(), self.shutdown.clone()));
                }
                result
            }
        };
        match result {
            Ok(link) => {
                tracing::info!(
                    "dstack-gateway: {} in the tunnel via {}, apps under {} ({} ms)",
                    link.client_ip,
                    link.gateway_url,
                    link.agent.domain,
                    ms(started)
                );
                self.gateway = Some(link);
            }
            Err(e) => {
                let reason = format!(
                    "dstack-gateway registration failed, the app has no ingress route: {}",
                    error_chain(&e)
                );
                tracing::warn!("{reason}");
                self.notifier.send(events::BOOT_ERROR, reason);
            }
        }
    }

    /// Opens or formats the encrypted data disk and reports the outcome.
    async fn prepare_disk(
        &mut self,
        bundle: &ConfigBundle,
        keys: &AppKeys,
        ephemeral_key: bool,
    ) -> Result<(), BootError> {
        let started = Instant::now();
        let passphrase = Zeroizing::new(hex::encode(keys.disk_crypt_key()).into_bytes());
        let format_nonempty = bundle.sys_config.format_nonempty_disk;
        let (sys, mapper, mkfs) = (self.sys.clone(), self.mapper.clone(), self.mkfs);
        let (device, target) = (self.cfg.data_device.clone(), self.cfg.data_dir.clone());
        let result = tokio::task::spawn_blocking(move || {
            disk::wait_for_device(&device, Duration::from_secs(5))?;
            let params = disk::DiskParams {
                passphrase: &passphrase,
                format_nonempty,
                ephemeral_key,
            };
            disk::prepare(&*sys, &*mapper, &device, &target, &params, &mkfs)
        })
        .await?;
        match result {
            Ok((outcome, plain)) => {
                self.notifier.send(events::DATA_DISK, outcome.state());
                tracing::info!(
                    "data disk {} {} and mounted at {} ({} ms)",
                    self.cfg.data_device.display(),
                    outcome.state(),
                    self.cfg.data_dir.display(),
                    ms(started)
                );
                self.data_mounted = Some(plain);
                Ok(())
            }
            Err(e) => {
                let reason = error_chain(&e);
                self.notifier
                    .send(events::DATA_DISK, format!("refused: {reason}"));
                Err(e.into())
            }
        }
    }

    async fn serve_guest_api(
        &self,
        bundle: &ConfigBundle,
        measured: AppMeasurement,
        keys: AppKeys,
        signer: Option<kms_signer::KmsCertSigner>,
    ) -> Result<(), BootError> {
        let platform = self.platform()?;
        let app = AppInfo {
            app_id: measured.app_id,
            instance_id: measured.instance_id,
            compose_hash: measured.compose_hash,
            app_name: serde_json::from_str::<serde_json::Value>(&bundle.app_compose)
                .ok()
                .and_then(|v| v.get("name")?.as_str().map(str::to_owned))
                .unwrap_or_default(),
            app_compose: bundle.app_compose.clone(),
            vm_config: bundle.sys_config.vm_config.clone(),
            os_image_hash: os_image_hash(&bundle.sys_config.vm_config),
            key_provider_info: measured.key_provider_info,
            cloud_vendor: dmi("sys_vendor"),
            cloud_product: dmi("product_name"),
        };
        let dir = self.cfg.guest_socket_dir.clone();
        let started = Instant::now();
        let api = tokio::task::spawn_blocking(move || -> Result<GuestApi, BootError> {
            let api =
                GuestApi::new(platform, app, keys).map_err(|e| BootError::GuestApi(e.into()))?;
            Ok(match signer {
                Some(signer) => api.with_cert_signer(Arc::new(signer)),
                None => api,
            })
        })
        .await??;
        let api = Arc::new(api);
        std::fs::create_dir_all(&dir).map_err(|e| BootError::GuestApi(e.into()))?;
        for (file, flavor) in [
            ("dstack.sock", Flavor::Dstack),
            ("tappd.sock", Flavor::Tappd),
        ] {
            let path = dir.join(file);
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path).map_err(|e| {
                BootError::GuestApi(format!("cannot listen on {}: {e}", path.display()).into())
            })?;
            // Any container user that mounts the socket may call it, as upstream's 0777.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
                .map_err(|e| BootError::GuestApi(e.into()))?;
            tokio::spawn(api.clone().serve(listener, flavor));
        }
        tracing::info!(
            "guest API on {} ({} ms)",
            dir.join("dstack.sock").display(),
            ms(started)
        );
        Ok(())
    }

    /// Fetches the build contexts the app-compose measures, checks each
    /// against its hash and unpacks it where the engine builds from it.
    async fn provide_build_contexts(&self, compose: &Compose) -> Result<(), BootError> {
        let shipped = compose.services.values().any(|s| {
            s.build
                .as_ref()
                .is_some_and(|b| b.shipped_context.is_some())
        });
        if !shipped {
            return Ok(());
        }
        self.phase(phase::BUILD_CONTEXTS);
        let started = Instant::now();
        // Up to 64 MiB each over vsock.
        let client = HostClient::new(self.cfg.host.clone(), Duration::from_secs(600));
        let notifier = self.notifier.clone();
        let progress = move |line: String| {
            tracing::info!("{line}");
            notifier.send(events::BOOT_PROGRESS, line);
        };
        let provided =
            build_context::provide_all(&client, compose, &self.cfg.data_dir, &progress).await?;
        tracing::info!(
            "{} build context(s) checked and unpacked in {} ms",
            provided.len(),
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
        self.provide_build_contexts(&compose).await?;
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

/// Asks each KMS in turn for the app's keys; the first answer wins, and
/// that KMS (its client and root) signs the app's certificates later.
fn kms_keys(
    runtime: &tokio::runtime::Handle,
    platform: &dyn Platform,
    urls: &[String],
    vm_config: &str,
    pinned: &[u8],
) -> Result<
    (
        dstack_proto::kms::AppKeyResponse,
        dstack_kms_client::KmsRoot,
        dstack_kms_client::KmsClient,
    ),
    BootError,
> {
    use dstack_kms_client::{KmsClient, check_pin, client_certificate};
    // The platform blocks on the runtime itself (the sim TEE asks the host),
    // so it is called between the network steps, never inside them.
    let fetch = |url: &str| {
        let client = KmsClient::new(url)?;
        let (temp, root) = runtime.block_on(client.temp_ca())?;
        check_pin(&root, pinned)?;
        let cert = client_certificate(platform, &temp, vm_config)?;
        let keys = runtime.block_on(client.app_keys_with(&root, &cert, vm_config))?;
        Ok::<_, dstack_kms_client::ClientError>((keys, root, client))
    };
    let mut last = None;
    for url in urls {
        let result = fetch(url);
        match result {
            Ok(found) => return Ok(found),
            Err(e) => {
                tracing::warn!("KMS {url}: {}", dstack_proto::error_chain(&e));
                last = Some(e);
            }
        }
    }
    Err(BootError::Kms {
        tried: urls.len(),
        source: Box::new(
            last.unwrap_or_else(|| dstack_kms_client::ClientError::Url("no KMS URL".into())),
        ),
    })
}

/// The app's env: the encrypted blob decrypted with the env key and kept to
/// `allowed_envs`. Values are never logged; names of dropped keys are.
fn app_env(bundle: &ConfigBundle, keys: &AppKeys) -> Result<dstack_compose::Vars, BootError> {
    let mut vars = dstack_compose::Vars::new();
    if bundle.encrypted_env.is_empty() {
        return Ok(vars);
    }
    let app = AppCompose::parse_manifest(&bundle.app_compose).map_err(BootError::Compose)?;
    let env = dstack_envcrypt::open_for_app(
        keys.env_crypt_key(),
        &bundle.encrypted_env,
        &app.allowed_envs,
    )
    .map_err(BootError::Env)?;
    if !env.skipped.is_empty() {
        tracing::warn!(
            "encrypted env: dropped {} not in allowed_envs: {}",
            env.skipped.len(),
            env.skipped
                .iter()
                .map(|k| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    tracing::info!(
        "encrypted env: {} variable(s) decrypted ({} bytes of ciphertext)",
        env.vars.len(),
        bundle.encrypted_env.len()
    );
    for var in env.vars {
        vars.insert(var.key.clone(), var.value.to_string());
    }
    Ok(vars)
}

/// App keys from a KMS answer (the conversion `dstack simulator` shares).
/// In KMS mode the app key signs only the "App Root Cert" that `/Info`
/// shows; the KMS signs the app's TLS certificates.
fn app_keys_from_kms(
    keys: &dstack_proto::kms::AppKeyResponse,
) -> Result<AppKeys, dstack_keys::KeyError> {
    AppKeys::from_kms(dstack_keys::KmsReleasedKeys {
        disk_crypt_key: &keys.disk_crypt_key,
        env_crypt_key: &keys.env_crypt_key,
        k256_key: &keys.k256_key,
        k256_signature: &keys.k256_signature,
    })
}

/// The `os_image_hash` a VM config JSON names (empty when none).
fn os_image_hash(vm_config: &str) -> Vec<u8> {
    serde_json::from_str::<serde_json::Value>(vm_config)
        .ok()
        .and_then(|v| hex::decode(v.get("os_image_hash")?.as_str()?).ok())
        .unwrap_or_default()
}

/// A DMI identification string (upstream's cloud_vendor/cloud_product).
fn dmi(name: &str) -> String {
    std::fs::read_to_string(Path::new("/sys/class/dmi/id").join(name))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
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

#[cfg(test)]
mod tests;
