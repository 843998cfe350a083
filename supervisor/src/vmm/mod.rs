//! The VMM layer: the [`Supervisor`] that owns every VM and executes API
//! commands.
//!
//! Unlike Firecracker's single VMM thread, commands for different VMs run
//! concurrently: a graceful stop may take 45 s and must not block `ls`.
//! Each VM has its own operation lock (start/stop/remove/auto-restart run
//! one at a time per VM), and deploys are serialised so name and port
//! checks cannot race.

mod adopt;
mod deploy;
mod info;
mod launch;
mod stop;
mod vm;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock, Weak};

use dstack_attest::SimAuthority;
use dstack_proto::supervisor::Version;

use crate::api::{Command, Reply, RequestHandler};
use crate::config::Config;
use crate::error::VmmError;
use crate::images::ImageCatalog;
use crate::key_provider::{KeyProvider, SimKeyProvider, UpstreamKeyProvider};
use crate::state::CidAllocator;
use crate::validate::looks_like_id;
use vm::Vm;

/// The supervisor: every VM on this host, and the machinery to run them.
#[derive(Debug)]
pub struct Supervisor {
    config: Arc<Config>,
    images: ImageCatalog,
    vms: RwLock<BTreeMap<String, Arc<Vm>>>,
    cids: Mutex<CidAllocator>,
    deploy_lock: tokio::sync::Mutex<()>,
    /// The simulated TEE's authority; `None` on TDX hosts.
    sim: Option<Arc<SimAuthority>>,
    /// The local key provider guests reach through GetSealingKey.
    key_provider: Option<Arc<KeyProvider>>,
    /// For tasks that outlive a request (exit watchers, restarts).
    this: Weak<Supervisor>,
}

impl Supervisor {
    /// Loads every VM from the state dir, re-adopts the ones still running
    /// and restarts those that should run. Must be called inside a tokio runtime.
    pub async fn open(config: Config) -> Result<Arc<Self>, VmmError> {
        for dir in [
            config.state_dir.clone(),
            config.images_dir(),
            config.vms_dir(),
        ] {
            // An existing entry (the images dir is often a symlink to a
            // shared build output) is used as it is.
            if dir.symlink_metadata().is_err() {
                std::fs::create_dir_all(&dir).map_err(VmmError::io("create", dir))?;
            }
        }
        let cids_file = config.cids_file();
        let cids = CidAllocator::load(&cids_file).map_err(VmmError::io("read", cids_file))?;
        let sim = match config.accel {
            crate::accel::Accel::Tdx => None,
            _ => Some(
                crate::sim_tee::load_authority(&config.state_dir).map_err(|e| {
                    VmmError::io(
                        "load the simulated TEE from",
                        config.state_dir.join(crate::sim_tee::AUTHORITY_FILE),
                    )(std::io::Error::other(e))
                })?,
            ),
        };
        let key_provider = match (&config.local_key_provider, &sim) {
            (Some(addr), _) => Some(KeyProvider::Upstream(UpstreamKeyProvider::new(
                addr.clone(),
            ))),
            (None, Some(authority)) => {
                let provider =
                    SimKeyProvider::load_or_generate(&config.state_dir, authority.clone())
                        .map_err(|e| {
                            VmmError::io(
                                "load the simulated key provider from",
                                config.state_dir.join(crate::key_provider::SECRET_FILE),
                            )(std::io::Error::other(
                                crate::error::error_chain(&e),
                            ))
                        })?;
                Some(KeyProvider::Sim(provider))
            }
            (None, None) => None,
        }
        .map(Arc::new);
        let supervisor = Arc::new_cyclic(|this| Supervisor {
            sim,
            key_provider,
            images: ImageCatalog::new(config.images_dir()),
            config: Arc::new(config),
            vms: RwLock::new(BTreeMap::new()),
            cids: Mutex::new(cids),
            deploy_lock: tokio::sync::Mutex::new(()),
            this: this.clone(),
        });
        let swept = crate::state::blobs::sweep(
            &supervisor.config.uploads_dir(),
            crate::state::blobs::UPLOAD_TTL,
            std::time::SystemTime::now(),
        );
        if swept > 0 {
            tracing::info!("removed {swept} blob upload(s) no deploy used");
        }
        supervisor.load_all().await?;
        Ok(supervisor)
    }

    /// The simulated TEE's authority; `None` on TDX hosts.
    pub fn sim_authority(&self) -> Option<Arc<SimAuthority>> {
        self.sim.clone()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn arc(&self) -> Arc<Self> {
        // `self` is only ever reached through the Arc made in `open`.
        self.this
            .upgrade()
            .expect("supervisor is alive while in use")
    }

    fn version(&self) -> Version {
        Version {
            version: env!("CARGO_PKG_VERSION").into(),
            accel: self.config.accel.as_str().into(),
        }
    }

    fn all(&self) -> Vec<Arc<Vm>> {
        self.vms
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The VM with this id, else the one with this name.
    fn find(&self, key: &str) -> Result<Arc<Vm>, VmmError> {
        let vms = self.vms.read().unwrap_or_else(|e| e.into_inner());
        if looks_like_id(key)
            && let Some(vm) = vms.get(key)
        {
            return Ok(vm.clone());
        }
        vms.values()
            .find(|vm| vm.manifest().name == key)
            .cloned()
            .ok_or_else(|| VmmError::NotFound(key.to_owned()))
    }

    fn insert(&self, vm: Arc<Vm>) {
        self.vms
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vm.id.clone(), vm);
    }

    fn forget(&self, id: &str) {
        self.vms
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Stops tasks that touch VM files (host API servers, serial readers),
    /// leaving every VM running; for a clean supervisor exit.
    pub fn detach(&self) {
        for vm in self.all() {
            if let Some(task) = vm.host_api.lock().unwrap_or_else(|e| e.into_inner()).take() {
                task.abort();
            }
        }
    }
}

impl RequestHandler for Supervisor {
    async fn handle(&self, command: Command) -> Result<Reply, VmmError> {
        match command {
            Command::Version => Ok(Reply::Version(self.version())),
            Command::PutBlob { sha256, bytes } => self
                .put_blob(sha256, bytes.0)
                .await
                .map(|()| Reply::BlobStored),
            Command::Deploy(request) => self.deploy(request).await.map(Reply::Created),
            Command::List => Ok(Reply::Vms(
                self.all().iter().map(|vm| info::summary(vm)).collect(),
            )),
            Command::Get(key) => {
                let vm = self.find(&key)?;
                Ok(Reply::Vm(info::info(&vm, true).await))
            }
            Command::Start {
                vm: key,
                format_nonempty_disk,
            } => {
                let vm = self.find(&key)?;
                self.start(&vm, Some(format_nonempty_disk)).await?;
                Ok(Reply::Vm(info::info(&vm, false).await))
            }
            Command::Stop { vm: key, force } => {
                let vm = self.find(&key)?;
                self.stop(&vm, force).await?;
                Ok(Reply::Vm(info::info(&vm, false).await))
            }
            Command::Remove { vm: key, force } => {
                let vm = self.find(&key)?;
                self.remove(&vm, force).await.map(|()| Reply::Removed)
            }
            Command::Logs { vm, query } => {
                let vm = self.find(&vm)?;
                let path = match query.channel {
                    dstack_proto::supervisor::LogChannel::App => vm.dir.app_log(),
                    dstack_proto::supervisor::LogChannel::Serial => vm.dir.serial_log(),
                };
                Ok(Reply::Logs {
                    channel: query.channel,
                    body: crate::logs::open_stream(path, query),
                })
            }
            Command::EnvKey(request) => crate::kms_proxy::env_key(&request, &self.config.kms_urls)
                .await
                .map(Reply::EnvKey),
            Command::KmsMeta(request) => crate::kms_proxy::meta(&request, &self.config.kms_urls)
                .await
                .map(|meta| Reply::KmsMeta(Box::new(meta))),
            Command::Images => Ok(Reply::Images(
                self.images
                    .list()
                    .iter()
                    .map(|image| image.info())
                    .collect(),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
