//! One VM as the supervisor holds it in memory: its files, its definition,
//! what the guest reported, and its processes.

mod guest_sink;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dstack_proto::host::{RegistryAlias, events};
use dstack_proto::supervisor::VmState;
use tokio::task::JoinHandle;

use crate::key_provider::KeyProvider;
use crate::logs::RotatingLog;
use crate::qemu::process::Proc;
use crate::sim_tee::SimTd;
use crate::state::{Desired, GuestStatus, Manifest, VmDir};

/// Back-off before the first automatic restart.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest back-off between automatic restarts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A QEMU that ran this long before exiting resets the back-off.
const STABLE_UPTIME: Duration = Duration::from_secs(60);

/// How the last run ended, when no QEMU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LastExit {
    /// Never ran, or stopped on request.
    Clean,
    /// Exited unexpectedly; a restart is scheduled.
    Crashed,
    /// The guest reported a boot error, then exited; not restarted.
    Failed,
}

/// The host side of a VM's life.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) qemu: Option<Arc<Proc>>,
    pub(crate) vsock: Option<Arc<Proc>>,
    pub(crate) serial: Option<JoinHandle<()>>,
    pub(crate) stopping: bool,
    pub(crate) last_exit: LastExit,
    /// Why the last (re)start failed, shown as the VM's error.
    pub(crate) launch_error: Option<String>,
    pub(crate) launched_at: Option<Instant>,
    pub(crate) backoff: Duration,
}

/// One VM.
#[derive(Debug)]
pub(crate) struct Vm {
    pub(crate) id: String,
    pub(crate) dir: VmDir,
    /// The exact app-compose.json bytes (immutable for the VM's life).
    pub(crate) app_compose: String,
    manifest: Mutex<Manifest>,
    guest: Mutex<GuestStatus>,
    run: Mutex<Run>,
    /// Serialises start, stop, remove and automatic restarts.
    pub(crate) op: tokio::sync::Mutex<()>,
    /// Serialises the clean-up after QEMU exits (the exit watcher and a
    /// stop may both get there).
    pub(crate) cleanup: tokio::sync::Mutex<()>,
    pub(crate) app_log: Mutex<RotatingLog>,
    pub(crate) serial_log: Arc<Mutex<RotatingLog>>,
    pub(crate) host_api: Mutex<Option<JoinHandle<()>>>,
    pub(crate) removed: AtomicBool,
    /// The simulated TDX module of the current boot (sim TEE hosts only).
    sim_td: Mutex<Option<Arc<SimTd>>>,
    /// The booted image's os_image_hash (hex), for the guest's vm_config.
    os_image_hash: Mutex<String>,
    /// The host's local key provider, if it runs one.
    key_provider: Mutex<Option<Arc<KeyProvider>>>,
    registry_aliases: Vec<RegistryAlias>,
    engine_registry: String,
    insecure_registries: Vec<String>,
    /// The PCCS URL the guest gets (empty: none).
    pccs_url: String,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these leaves plain data behind, still usable.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Vm {
    /// A VM from its directory's files.
    pub(crate) fn new(
        dir: VmDir,
        manifest: Manifest,
        app_compose: String,
        log_max_bytes: u64,
        registry_aliases: Vec<RegistryAlias>,
        engine_registry: String,
        pccs_url: String,
    ) -> Self {
        let guest = GuestStatus::load(&dir.events());
        Self {
            id: manifest.id.clone(),
            app_log: Mutex::new(RotatingLog::new(dir.app_log(), log_max_bytes)),
            serial_log: Arc::new(Mutex::new(RotatingLog::new(
                dir.serial_log(),
                log_max_bytes,
            ))),
            insecure_registries: crate::config::insecure_registries(&registry_aliases),
            registry_aliases,
            engine_registry,
            pccs_url,
            dir,
            app_compose,
            manifest: Mutex::new(manifest),
            guest: Mutex::new(guest),
            run: Mutex::new(Run {
                qemu: None,
                vsock: None,
                serial: None,
                stopping: false,
                last_exit: LastExit::Clean,
                launch_error: None,
                launched_at: None,
                backoff: FIRST_BACKOFF,
            }),
            op: tokio::sync::Mutex::new(()),
            cleanup: tokio::sync::Mutex::new(()),
            host_api: Mutex::new(None),
            removed: AtomicBool::new(false),
            sim_td: Mutex::new(None),
            os_image_hash: Mutex::new(String::new()),
            key_provider: Mutex::new(None),
        }
    }

    /// The simulated TDX module of the current boot, if the host plays one.
    pub(crate) fn sim_td(&self) -> Option<Arc<SimTd>> {
        lock(&self.sim_td).clone()
    }

    /// Installs (or clears) the simulated TDX module for a boot.
    pub(crate) fn set_sim_td(&self, td: Option<Arc<SimTd>>) {
        *lock(&self.sim_td) = td;
    }

    /// The host's local key provider, for GetSealingKey.
    pub(crate) fn key_provider(&self) -> Option<Arc<KeyProvider>> {
        lock(&self.key_provider).clone()
    }

    /// Sets the host's local key provider (`None`: the host runs none).
    pub(crate) fn set_key_provider(&self, provider: Option<Arc<KeyProvider>>) {
        *lock(&self.key_provider) = provider;
    }

    /// Records the os_image_hash of the image this boot uses.
    pub(crate) fn set_os_image_hash(&self, hash: String) {
        *lock(&self.os_image_hash) = hash;
    }

    /// The os_image_hash of the image the current boot uses (hex).
    pub(crate) fn os_image_hash(&self) -> String {
        lock(&self.os_image_hash).clone()
    }

    /// A copy of the manifest.
    pub(crate) fn manifest(&self) -> Manifest {
        lock(&self.manifest).clone()
    }

    /// A copy of what the guest reported.
    pub(crate) fn guest(&self) -> GuestStatus {
        lock(&self.guest).clone()
    }

    /// The host-side run state, locked.
    pub(crate) fn run(&self) -> MutexGuard<'_, Run> {
        lock(&self.run)
    }

    /// Changes and persists the desired state.
    pub(crate) fn set_desired(&self, desired: Desired) -> io::Result<()> {
        self.change_manifest(|m| m.desired = desired)
    }

    /// Sets and persists the one-shot opt-in to format a non-empty data
    /// disk ([`Manifest::format_nonempty_disk`]).
    pub(crate) fn set_format_nonempty_disk(&self, allow: bool) -> io::Result<()> {
        self.change_manifest(|m| m.format_nonempty_disk = allow)
    }

    /// Applies `change` to the manifest and writes it (atomically) if that
    /// changed anything; memory follows the file.
    fn change_manifest(&self, change: impl FnOnce(&mut Manifest)) -> io::Result<()> {
        let mut manifest = lock(&self.manifest);
        let mut updated = manifest.clone();
        change(&mut updated);
        if updated != *manifest {
            updated.save(&self.dir.manifest())?;
            *manifest = updated;
        }
        Ok(())
    }

    /// Changes what the guest reported and persists it.
    pub(crate) fn update_guest(&self, change: impl FnOnce(&mut GuestStatus)) {
        let mut guest = lock(&self.guest);
        change(&mut guest);
        if let Err(e) = guest.save(&self.dir.events()) {
            tracing::warn!(vm = %self.id, "cannot write events.json: {e}");
        }
    }

    /// Whether the VM has been removed (its tasks must stop touching it).
    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }

    /// The running QEMU, if any.
    pub(crate) fn qemu(&self) -> Option<Arc<Proc>> {
        self.run().qemu.clone()
    }

    /// The state shown to operators, derived from the host and guest views.
    pub(crate) fn state(&self) -> VmState {
        let run = self.run();
        let guest = lock(&self.guest);
        if run.stopping {
            return VmState::Stopping;
        }
        if run.qemu.is_some() {
            return if guest.error.is_some() {
                VmState::Failed
            } else if guest.powering_off {
                VmState::Stopping
            } else if guest.phase == events::PHASE_RUNNING {
                VmState::Running
            } else {
                VmState::Booting
            };
        }
        match run.last_exit {
            LastExit::Crashed => VmState::Crashed,
            LastExit::Failed => VmState::Failed,
            LastExit::Clean => VmState::Stopped,
        }
    }

    /// The back-off before the next automatic restart; doubles each time,
    /// back to the start after a QEMU that ran for a while.
    pub(crate) fn next_backoff(&self) -> Duration {
        let mut run = self.run();
        if run
            .launched_at
            .is_some_and(|t| t.elapsed() >= STABLE_UPTIME)
        {
            run.backoff = FIRST_BACKOFF;
        }
        let delay = run.backoff;
        run.backoff = (run.backoff * 2).min(MAX_BACKOFF);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let dir = tempfile::tempdir().unwrap();
        let vm = guest_sink::tests::vm(dir.path());
        let delays: Vec<u64> = (0..8).map(|_| vm.next_backoff().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        vm.run().launched_at = Some(Instant::now() - STABLE_UPTIME);
        assert_eq!(vm.next_backoff(), FIRST_BACKOFF);
    }
}
