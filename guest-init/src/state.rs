//! What the guest knows about itself, shared between the boot sequence,
//! the guest control server and shutdown; and the shutdown request.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use dstack_attest::{Platform, PlatformKind};
use dstack_proto::guest::{BootPhase, ContainerInfo, GuestInfo, MeasuredEvent};
use tokio::sync::watch;

use crate::console;

/// The container side as PID1 sees it once it exists.
pub trait Services: Send + Sync {
    /// The services' containers.
    fn list(&self) -> Vec<ContainerInfo>;
    /// Stops every service (SIGTERM, grace, SIGKILL, cleanup).
    fn stop_all(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// A shared handle on the container side.
pub type ServicesRef = Arc<dyn Services>;

/// The app's identity, hex.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// compose-hash.
    pub compose_hash: String,
    /// app-id.
    pub app_id: String,
    /// instance-id (empty with `no_instance_id`).
    pub instance_id: String,
}

#[derive(Debug, Default)]
struct Inner {
    phases: Vec<BootPhase>,
    identity: Identity,
    key_provider: String,
    error: Option<String>,
}

/// Shared guest state.
#[derive(Default)]
pub struct GuestState {
    inner: Mutex<Inner>,
    services: OnceLock<Arc<dyn Services>>,
    platform: OnceLock<Arc<dyn Platform>>,
}

impl std::fmt::Debug for GuestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestState")
            .field("inner", &self.inner)
            .field("platform", &self.platform.get().map(|p| p.kind()))
            .field("services", &self.services.get().is_some())
            .finish()
    }
}

impl GuestState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that phase `name` begins now.
    pub fn enter_phase(&self, name: &str) {
        self.enter_phase_at(name, console::elapsed_ms());
    }

    /// Records that phase `name` began at `at_ms`.
    pub fn enter_phase_at(&self, name: &str, at_ms: u64) {
        self.lock().phases.push(BootPhase {
            name: name.into(),
            at_ms,
        });
    }

    /// The current phase (`""` before the first).
    pub fn phase(&self) -> String {
        self.lock()
            .phases
            .last()
            .map(|p| p.name.clone())
            .unwrap_or_default()
    }

    /// Records the app's identity.
    pub fn set_identity(&self, identity: Identity) {
        self.lock().identity = identity;
    }

    /// Records why the boot failed.
    pub fn set_error(&self, error: String) {
        self.lock().error = Some(error);
    }

    /// Why the boot failed, if it did.
    pub fn error(&self) -> Option<String> {
        self.lock().error.clone()
    }

    /// Registers the TEE, once known.
    pub fn set_platform(&self, platform: Arc<dyn Platform>) {
        let _ = self.platform.set(platform);
    }

    /// The TEE, once known.
    pub fn platform(&self) -> Option<Arc<dyn Platform>> {
        self.platform.get().cloned()
    }

    /// Records the measured key provider.
    pub fn set_key_provider(&self, info: String) {
        self.lock().key_provider = info;
    }

    /// Registers the container side.
    pub fn set_services(&self, services: Arc<dyn Services>) {
        let _ = self.services.set(services);
    }

    /// The container side, once registered.
    pub fn services(&self) -> Option<Arc<dyn Services>> {
        self.services.get().cloned()
    }

    /// The containers (empty before the container side exists).
    pub fn containers(&self) -> Vec<ContainerInfo> {
        self.services().map(|s| s.list()).unwrap_or_default()
    }

    /// What `GET /v1/info` answers.
    pub fn info(&self) -> GuestInfo {
        let containers = self.containers();
        let (tee, rtmr3_events) = match self.platform() {
            None => (String::new(), Vec::new()),
            Some(platform) => {
                let events = match platform.event_log() {
                    Ok(events) => events
                        .into_iter()
                        .filter(|e| e.imr == 3)
                        .map(|e| MeasuredEvent {
                            event: e.event,
                            payload: e.event_payload,
                            digest: e.digest,
                        })
                        .collect(),
                    Err(e) => {
                        tracing::warn!("cannot read the event log: {e}");
                        Vec::new()
                    }
                };
                let kind = match platform.kind() {
                    PlatformKind::Tdx => "tdx",
                    PlatformKind::Sim => "sim",
                };
                (kind.to_string(), events)
            }
        };
        let inner = self.lock();
        GuestInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            phase: inner
                .phases
                .last()
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            boot_phases: inner.phases.clone(),
            compose_hash: inner.identity.compose_hash.clone(),
            app_id: inner.identity.app_id.clone(),
            instance_id: inner.identity.instance_id.clone(),
            tee,
            key_provider: inner.key_provider.clone(),
            rtmr3_events,
            containers,
        }
    }
}

/// Why the guest shuts down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    /// SIGTERM to PID1.
    Sigterm,
    /// ctrl-alt-del (SIGINT to PID1 once CAD is off).
    CtrlAltDel,
    /// The ACPI power button (QEMU `system_powerdown`).
    PowerButton,
    /// `POST /v1/shutdown` from the host.
    HostRequest,
    /// The boot failed.
    BootFailed,
}

impl std::fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ShutdownReason::Sigterm => "SIGTERM",
            ShutdownReason::CtrlAltDel => "ctrl-alt-del",
            ShutdownReason::PowerButton => "ACPI power button",
            ShutdownReason::HostRequest => "host request",
            ShutdownReason::BootFailed => "boot failed",
        })
    }
}

/// A one-shot, many-sender shutdown request.
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    tx: Arc<watch::Sender<Option<ShutdownReason>>>,
}

impl Default for ShutdownSignal {
    fn default() -> Self {
        Self {
            tx: Arc::new(watch::channel(None).0),
        }
    }
}

impl ShutdownSignal {
    /// Requests shutdown; the first reason wins.
    pub fn request(&self, reason: ShutdownReason) {
        self.tx.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// The request, if any yet.
    pub fn requested(&self) -> Option<ShutdownReason> {
        *self.tx.borrow()
    }

    /// Waits for a request.
    pub async fn wait(&self) -> ShutdownReason {
        let mut rx = self.tx.subscribe();
        loop {
            if let Some(reason) = *rx.borrow_and_update() {
                return reason;
            }
            // The sender lives in self, so the channel never closes here.
            if rx.changed().await.is_err() {
                return ShutdownReason::BootFailed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_reports_phases_and_identity() {
        let state = GuestState::default();
        assert_eq!(state.phase(), "");
        state.enter_phase_at("loading modules", 5);
        state.enter_phase_at("running", 900);
        state.set_identity(Identity {
            compose_hash: "ab".into(),
            app_id: "cd".into(),
            instance_id: String::new(),
        });
        let info = state.info();
        assert_eq!(info.phase, "running");
        assert_eq!(info.boot_phases.len(), 2);
        assert_eq!(info.boot_phases[1].at_ms, 900);
        assert_eq!(info.compose_hash, "ab");
        assert!(info.containers.is_empty());
    }

    #[tokio::test]
    async fn the_first_shutdown_reason_wins() {
        let signal = ShutdownSignal::default();
        let waiter = {
            let s = signal.clone();
            tokio::spawn(async move { s.wait().await })
        };
        signal.request(ShutdownReason::PowerButton);
        signal.request(ShutdownReason::Sigterm);
        assert_eq!(waiter.await.unwrap(), ShutdownReason::PowerButton);
        assert_eq!(signal.requested(), Some(ShutdownReason::PowerButton));
        assert_eq!(signal.wait().await, ShutdownReason::PowerButton);
    }
}
