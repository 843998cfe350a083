//! Guest control: what the host asks of a guest over vsock (guest CID, port
//! [`GUEST_CONTROL_PORT`]).
//!
//! Paths (HTTP/1.1, JSON):
//! - `GET  /v1/info`       → [`GuestInfo`]
//! - `GET  /v1/containers` → `Vec<`[`ContainerInfo`]`>`
//! - `POST /v1/shutdown`   → 202; the guest stops its services, unmounts and powers off.

use serde::{Deserialize, Serialize};

/// vsock port guest control listens on.
pub const GUEST_CONTROL_PORT: u32 = 8000;

/// What a running guest reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    /// dstack-init version.
    pub version: String,
    /// The current boot phase (see host::events).
    pub phase: String,
    /// Boot phases with milliseconds since PID1 started.
    pub boot_phases: Vec<BootPhase>,
    /// compose-hash, hex.
    #[serde(default)]
    pub compose_hash: String,
    /// app-id, hex.
    #[serde(default)]
    pub app_id: String,
    /// instance-id, hex.
    #[serde(default)]
    pub instance_id: String,
    /// The TEE the guest runs in: `tdx`, `sim`, or empty before it is known.
    #[serde(default)]
    pub tee: String,
    /// The measured key provider (`key-provider` event payload, JSON).
    #[serde(default)]
    pub key_provider: String,
    /// The runtime events measured into RTMR3 so far, in order.
    #[serde(default)]
    pub rtmr3_events: Vec<MeasuredEvent>,
    /// The services.
    pub containers: Vec<ContainerInfo>,
}

/// One runtime event measured into RTMR3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasuredEvent {
    /// Event name, e.g. `compose-hash`.
    pub event: String,
    /// Its payload, hex.
    #[serde(with = "hex::serde")]
    pub payload: Vec<u8>,
    /// The SHA-384 digest extended into RTMR3, hex.
    #[serde(with = "hex::serde")]
    pub digest: Vec<u8>,
}

/// A boot phase and when it began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootPhase {
    /// Phase name.
    pub name: String,
    /// Milliseconds since PID1 started.
    pub at_ms: u64,
}

/// State of one compose service's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// Waiting for dependencies or its image.
    Pending,
    /// Running.
    Running,
    /// Running and its healthcheck passes.
    Healthy,
    /// Running and its healthcheck fails.
    Unhealthy,
    /// Exited and will be restarted after a back-off.
    Restarting,
    /// Exited and will not be restarted.
    Exited,
    /// Could not be created (bad image, bad spec).
    Failed,
}

/// One compose service's container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// Compose service name.
    pub service: String,
    /// Image reference as written in the compose file.
    pub image: String,
    /// Resolved image digest (`sha256:...`), once pulled.
    #[serde(default)]
    pub image_digest: String,
    /// State.
    pub state: ContainerState,
    /// Init process pid in the guest, when running.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Times restarted.
    pub restarts: u32,
    /// Last exit code.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why it failed, when it did.
    #[serde(default)]
    pub error: Option<String>,
}
