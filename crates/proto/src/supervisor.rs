//! The supervisor's REST API, used by the CLI and the web UI.
//!
//! Served on a unix socket (mode 0600) by default; on TCP only with a bearer
//! token. Paths (JSON bodies; errors are [`crate::ApiError`] with a 4xx/5xx):
//! - `GET    /v1/version`              → [`Version`]
//! - `PUT    /v1/blobs/sha256/<hex>`   ← raw bytes → 204: a blob (a build
//!   context) a deploy's app-compose measures, uploaded before the deploy
//!   ([`crate::blob`])
//! - `POST   /v1/vms`                  ← [`DeployRequest`] → 201 [`VmInfo`]
//! - `GET    /v1/vms`                  → `Vec<`[`VmSummary`]`>`
//! - `GET    /v1/vms/{vm}`             → [`VmInfo`] (`{vm}` is an id or a name)
//! - `POST   /v1/vms/{vm}/start[?format_nonempty_disk=true]` → [`VmInfo`]
//! - `POST   /v1/vms/{vm}/stop`        → [`VmInfo`] (graceful: guest, then ACPI, then kill)
//! - `DELETE /v1/vms/{vm}`             → 204 (stops it first; removes every file)
//! - `GET    /v1/vms/{vm}/logs?follow=&service=&channel=&lines=` → text (one [`LogLine`] JSON per line)
//! - `GET    /v1/images`               → `Vec<`[`ImageInfo`]`>`
//! - `POST   /v1/env-key`              ← [`EnvKeyRequest`] → the KMS's
//!   [`crate::kms::PublicKeyResponse`], unchanged (the caller checks its signature)
//! - `POST   /v1/kms-meta`             ← [`KmsMetaRequest`] → the KMS's
//!   [`crate::kms::GetMetaResponse`], unchanged

use serde::{Deserialize, Serialize};

use crate::guest::{BootPhase, ContainerInfo};

/// Supervisor version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Crate version.
    pub version: String,
    /// Accelerator the supervisor uses: `tcg`, `kvm` or `tdx`.
    pub accel: String,
}

/// A port published from the guest on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    /// `tcp` (the only protocol QEMU user networking forwards reliably).
    #[serde(default = "tcp")]
    pub protocol: String,
    /// Host address to bind (default 127.0.0.1).
    #[serde(default = "loopback")]
    pub host_address: String,
    /// Host port.
    pub host_port: u16,
    /// Guest port.
    pub vm_port: u16,
}

fn tcp() -> String {
    "tcp".into()
}

fn loopback() -> String {
    "127.0.0.1".into()
}

/// Create and boot a VM. `Debug` shows `encrypted_env`'s length only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// VM name (unique on this host; `[a-z0-9][a-z0-9-]*`).
    pub name: String,
    /// OS image name (see `GET /v1/images`); empty: the newest image.
    #[serde(default)]
    pub image: String,
    /// The exact bytes of `app-compose.json`.
    pub app_compose: String,
    /// Virtual CPUs.
    #[serde(default = "one")]
    pub vcpu: u32,
    /// Memory in MiB.
    #[serde(default = "default_memory")]
    pub memory_mb: u32,
    /// Data disk in GiB.
    #[serde(default = "default_disk")]
    pub disk_gb: u32,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// Encrypted environment (upstream format), hex.
    #[serde(default)]
    pub encrypted_env: String,
    /// Opaque user configuration.
    #[serde(default)]
    pub user_config: String,
    /// Create the VM without starting it.
    #[serde(default)]
    pub stopped: bool,
    /// KMS URLs (`https://host:port`) the guest asks for its keys, in order;
    /// empty: the supervisor's default KMS, if it has one.
    #[serde(default)]
    pub kms_urls: Vec<String>,
    /// Gateway URLs (`https://host:port[/path]`) the guest registers with,
    /// in order; empty: the supervisor's default gateways, if it has any.
    /// An app-compose with `gateway_enabled` needs one from either.
    #[serde(default)]
    pub gateway_urls: Vec<String>,
    /// Pins the app id (hex, 20 bytes): with a KMS, this deploy is an
    /// upgrade of that app and gets its keys; without one it must be the
    /// compose's own (the first 20 bytes of its compose-hash). Empty: the
    /// compose's own.
    #[serde(default)]
    pub app_id: String,
    /// Allow the guest to format a data disk that holds something other
    /// than zeros or a LUKS header ([`crate::host::SysConfig::format_nonempty_disk`]).
    #[serde(default)]
    pub format_nonempty_disk: bool,
}

impl std::fmt::Debug for DeployRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ciphertext, but no log line or debug dump needs to carry it.
        f.debug_struct("DeployRequest")
            .field("name", &self.name)
            .field("image", &self.image)
            .field("app_compose_len", &self.app_compose.len())
            .field("vcpu", &self.vcpu)
            .field("memory_mb", &self.memory_mb)
            .field("disk_gb", &self.disk_gb)
            .field("ports", &self.ports)
            .field("encrypted_env_len", &self.encrypted_env.len())
            .field("user_config_len", &self.user_config.len())
            .field("stopped", &self.stopped)
            .field("kms_urls", &self.kms_urls)
            .field("gateway_urls", &self.gateway_urls)
            .field("app_id", &self.app_id)
            .field("format_nonempty_disk", &self.format_nonempty_disk)
            .finish()
    }
}

/// `POST /v1/env-key` arguments: the app whose env-encryption key to
/// fetch from the KMS (upstream's VMM `GetAppEnvEncryptPubKey`, which the
/// supervisor proxies because the KMS URL is the one guests reach).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvKeyRequest {
    /// The app id (hex, 20 bytes).
    pub app_id: String,
    /// The KMS to ask (as guests reach it); empty: the supervisor's default.
    #[serde(default)]
    pub kms_url: String,
}

/// `POST /v1/kms-meta` arguments: the KMS whose `GetMeta` to fetch (its
/// `k256_pubkey` signs env keys; a CLI given no trusted signer falls back
/// to it, and says so).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsMetaRequest {
    /// The KMS to ask (as guests reach it); empty: the supervisor's default.
    #[serde(default)]
    pub kms_url: String,
}

fn one() -> u32 {
    1
}

fn default_memory() -> u32 {
    1024
}

fn default_disk() -> u32 {
    4
}

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Not running and not meant to run.
    Stopped,
    /// QEMU is up; the guest is booting.
    Booting,
    /// The guest reported that its services run.
    Running,
    /// A graceful stop is under way.
    Stopping,
    /// QEMU exited unexpectedly; the supervisor restarts it after a back-off.
    Crashed,
    /// Boot failed (the guest reported an error).
    Failed,
}

/// One line of `GET /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSummary {
    /// VM id.
    pub id: String,
    /// VM name.
    pub name: String,
    /// State.
    pub state: VmState,
    /// The last boot progress phase the guest reported.
    pub phase: String,
    /// OS image.
    pub image: String,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: u64,
}

/// A guest event the supervisor recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmEvent {
    /// ms since the Unix epoch, host clock.
    pub ts_ms: u64,
    /// Event name (host::events).
    pub event: String,
    /// Payload.
    pub payload: String,
}

/// Everything about one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The summary fields.
    #[serde(flatten)]
    pub summary: VmSummary,
    /// Virtual CPUs.
    pub vcpu: u32,
    /// Memory in MiB.
    pub memory_mb: u32,
    /// Data disk in GiB.
    pub disk_gb: u32,
    /// vsock CID.
    pub cid: u32,
    /// compose-hash (hex SHA-256 of app-compose.json).
    pub compose_hash: String,
    /// app-id (hex).
    pub app_id: String,
    /// instance-id (hex), once the guest has reported it.
    #[serde(default)]
    pub instance_id: String,
    /// The KMS URLs the guest was handed (as it reaches them).
    #[serde(default)]
    pub kms_urls: Vec<String>,
    /// The gateway URLs the guest was handed (as it reaches them).
    #[serde(default)]
    pub gateway_urls: Vec<String>,
    /// QEMU pid when running.
    #[serde(default)]
    pub pid: Option<u32>,
    /// The last guest events (boot progress, errors).
    pub events: Vec<VmEvent>,
    /// Boot phases as the guest timed them, when it answers.
    #[serde(default)]
    pub boot_phases: Vec<BootPhase>,
    /// Containers, when the guest answers.
    #[serde(default)]
    pub containers: Vec<ContainerInfo>,
    /// The TEE the guest runs in (`tdx` or `sim`), when the guest answers.
    #[serde(default)]
    pub tee: String,
    /// The measured key provider (JSON), when the guest answers.
    #[serde(default)]
    pub key_provider: String,
    /// The RTMR3 event log, when the guest answers.
    #[serde(default)]
    pub rtmr3_events: Vec<crate::guest::MeasuredEvent>,
    /// The encrypted data disk as the guest last reported it: `formatted`
    /// (this boot made it), `opened`, or `refused: <reason>`; empty until
    /// the guest reports.
    #[serde(default)]
    pub data_disk: String,
    /// The last boot error, if any.
    #[serde(default)]
    pub error: Option<String>,
}

/// Which log a `logs` request reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogChannel {
    /// Container output and dstack-init's own log, shipped over vsock.
    #[default]
    App,
    /// The serial console (kernel and early boot).
    Serial,
}

/// One line of `GET /v1/vms/{vm}/logs` in the app channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// ms since the Unix epoch (guest clock).
    pub ts_ms: u64,
    /// Service name, or `dstack-init`.
    pub service: String,
    /// `stdout`, `stderr` or `system`.
    pub stream: String,
    /// The text.
    pub line: String,
}

/// An OS image the supervisor can boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Image name (directory name).
    pub name: String,
    /// Image version.
    pub version: String,
    /// os_image_hash: SHA-256 of the image's sha256sum.txt, hex.
    pub digest: String,
    /// Whether this is a -dev image (has a shell).
    pub is_dev: bool,
}
