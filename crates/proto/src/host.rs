//! The host API: what a guest asks of its host over vsock (CID 2).
//!
//! Paths (HTTP/1.1, JSON bodies):
//! - `GET  /v1/config`  → [`ConfigBundle`]
//! - `POST /v1/notify`  ← [`Notification`] → 204
//! - `POST /v1/logs`    ← [`LogBatch`] → 204
//! - `GET  /v1/blobs/sha256/<hex>` → the raw bytes of a blob the VM was
//!   deployed with (a build context its app-compose measures; [`crate::blob`])
//!
//! On hosts that simulate the TEE (DESIGN §5) the host also plays the TDX
//! module for each VM; a TDX host answers these with 404:
//! - `GET  /v1/tee`            → [`TeeInfo`]
//! - `POST /v1/tee/extend`     ← [`RtmrExtend`] → 204
//! - `POST /v1/tee/quote`      ← [`QuoteRequest`] → [`QuoteResponse`]
//! - `GET  /v1/tee/collateral` → the quote collateral (dcap-qvl JSON)
//!
//! The local key provider (upstream's host API `GetSealingKey`, UPSTREAM §9),
//! served by the sim host itself or forwarded to an upstream SGX provider:
//! - `POST` [`SEALING_KEY_PATH`] (`/v1/sealing-key`) ← [`GetSealingKeyRequest`] → [`GetSealingKeyResponse`]
//!
//! The host identifies the calling VM by the vsock connection it arrived on,
//! never by anything in the request.

use serde::{Deserialize, Serialize};

/// vsock port the host API listens on (host CID 2).
pub const HOST_API_PORT: u32 = 10000;

/// Everything the guest needs from the host to boot the app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigBundle {
    /// The exact bytes of `app-compose.json`; compose-hash is their SHA-256.
    pub app_compose: String,
    /// Encrypted environment blob (upstream format), hex; empty when none.
    #[serde(default, with = "hex::serde")]
    pub encrypted_env: Vec<u8>,
    /// Opaque user configuration, written to `/dstack/.user-config`.
    #[serde(default)]
    pub user_config: String,
    /// Host-chosen system configuration.
    pub sys_config: SysConfig,
    /// Instance identity persisted by the host (seed for the instance id).
    #[serde(default)]
    pub instance_info: InstanceInfo,
}

/// System configuration chosen by the host for this VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysConfig {
    /// The VM's id on the host.
    pub vm_id: String,
    /// The VM's name.
    pub vm_name: String,
    /// Guest network configuration.
    pub network: NetworkConfig,
    /// Registry host rewrites, e.g. `127.0.0.1:5000` → `10.0.2.2:5000`: the
    /// guest reaches the host's loopback through its user-net gateway.
    #[serde(default)]
    pub registry_aliases: Vec<RegistryAlias>,
    /// Registries (host:port, after aliasing) that may be reached over plain HTTP.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// The registry (`host[:port]`, before aliasing) the guest pulls the
    /// container engine image from, by the digest its OS image pins (so
    /// the registry is not trusted). Empty: no engine available.
    #[serde(default)]
    pub engine_registry: String,
    /// KMS URLs (empty: no KMS).
    #[serde(default)]
    pub kms_urls: Vec<String>,
    /// Gateway URLs (empty: no gateway).
    #[serde(default)]
    pub gateway_urls: Vec<String>,
    /// Base URL of the PCCS (Intel's PCCS API v4) the guest fetches quote
    /// collateral from; on sim hosts the supervisor's sim PCCS,
    /// `http://10.0.2.2:<port>`. Empty: none.
    #[serde(default)]
    pub pccs_url: String,
    /// The VM shape as a JSON string (upstream's `vm_config`).
    #[serde(default)]
    pub vm_config: String,
    /// The operator's opt-in to format a data disk that holds something
    /// other than zeros or a LUKS header (an old plain ext4 disk, another
    /// system's data). A LUKS disk is never reformatted, whatever this says.
    #[serde(default)]
    pub format_nonempty_disk: bool,
}

impl SysConfig {
    /// A VM's config with QEMU user networking and no registry aliases, KMS,
    /// gateway or PCCS; callers fill in what they use.
    pub fn new(vm_id: impl Into<String>, vm_name: impl Into<String>) -> Self {
        Self {
            vm_id: vm_id.into(),
            vm_name: vm_name.into(),
            network: NetworkConfig::default(),
            registry_aliases: Vec::new(),
            insecure_registries: Vec::new(),
            engine_registry: String::new(),
            kms_urls: Vec::new(),
            gateway_urls: Vec::new(),
            pccs_url: String::new(),
            vm_config: String::new(),
            format_nonempty_disk: false,
        }
    }
}

/// A registry host the guest must reach under another address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAlias {
    /// The registry as named in image references (`host[:port]`).
    pub from: String,
    /// Where the guest reaches it (`host[:port]`).
    pub to: String,
}

/// Static guest network settings (QEMU user networking has fixed addresses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Interface address with prefix, e.g. `10.0.2.15/24`.
    pub address: String,
    /// Default gateway, e.g. `10.0.2.2`.
    pub gateway: String,
    /// DNS servers.
    pub dns: Vec<String>,
}

impl Default for NetworkConfig {
    /// QEMU user-mode networking's fixed addresses.
    fn default() -> Self {
        Self {
            address: "10.0.2.15/24".into(),
            gateway: "10.0.2.2".into(),
            dns: vec!["10.0.2.3".into()],
        }
    }
}

/// Per-instance identity the host persists across boots (upstream `.instance_info`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Seed of the instance id, hex; empty before the first boot.
    #[serde(default, with = "hex::serde")]
    pub instance_id_seed: Vec<u8>,
    /// The instance id, hex.
    #[serde(default, with = "hex::serde")]
    pub instance_id: Vec<u8>,
    /// The app id, hex.
    #[serde(default, with = "hex::serde")]
    pub app_id: Vec<u8>,
}

/// Event names a guest notifies (upstream's names).
pub mod events {
    /// A boot phase started; payload is the phase name.
    pub const BOOT_PROGRESS: &str = "boot.progress";
    /// Boot failed; payload is the reason.
    pub const BOOT_ERROR: &str = "boot.error";
    /// Shutdown progress; payload `"powering off"` means the guest is going down now.
    pub const SHUTDOWN_PROGRESS: &str = "shutdown.progress";
    /// Instance identity to persist; payload is [`super::InstanceInfo`] JSON.
    pub const INSTANCE_INFO: &str = "instance.info";
    /// What became of the data disk; payload is one of [`DATA_DISK_STATES`],
    /// followed for `refused` by `": "` and the reason.
    pub const DATA_DISK: &str = "data-disk";
    /// The states a `data-disk` event reports.
    pub const DATA_DISK_STATES: &[&str] = &["formatted", "opened", "refused"];
    /// Boot phase the guest reports once every service has started.
    pub const PHASE_RUNNING: &str = "running";
}

/// A guest event for the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    /// Event name, see [`events`].
    pub event: String,
    /// Event payload.
    #[serde(default)]
    pub payload: String,
}

/// Which output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// The guest's own log (dstack-init).
    System,
}

/// One log line from the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogEntry {
    /// Milliseconds since the Unix epoch, guest clock.
    pub ts_ms: u64,
    /// Compose service name; `dstack-init` for the guest's own lines.
    pub service: String,
    /// The stream.
    pub stream: LogStream,
    /// The line, without its newline.
    pub line: String,
}

/// A batch of log lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogBatch {
    /// The lines, oldest first.
    pub entries: Vec<LogEntry>,
}

/// The simulated TEE a host plays for one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeeInfo {
    /// The TEE kind (`sim`).
    pub kind: String,
    /// The boot-time (RTMR0-2) event log as a JSON array of dstack event
    /// objects (`imr`, `event_type`, `digest`, `event`, `event_payload`).
    pub boot_event_log: String,
}

/// Extend an RTMR with a digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtmrExtend {
    /// Register index; guests may extend only RTMR3.
    pub index: u32,
    /// The 48-byte SHA-384 digest, hex.
    #[serde(with = "hex::serde")]
    pub digest: Vec<u8>,
}

/// Ask for a quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteRequest {
    /// The 64 bytes of report data, hex.
    #[serde(with = "hex::serde")]
    pub report_data: Vec<u8>,
}

/// A quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteResponse {
    /// The quote bytes, hex.
    #[serde(with = "hex::serde")]
    pub quote: Vec<u8>,
}

/// Path of the host API's GetSealingKey (the local key provider).
pub const SEALING_KEY_PATH: &str = "/v1/sealing-key";

/// Ask the local key provider for this TD's sealing key (upstream
/// `GetSealingKeyRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetSealingKeyRequest {
    /// The TD's quote, hex; report_data[..32] is the X25519 key to seal to.
    #[serde(with = "hex::serde")]
    pub quote: Vec<u8>,
}

/// The sealed key and the provider's evidence (upstream
/// `GetSealingKeyResponse`, plus the collateral a sim host can vouch with).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetSealingKeyResponse {
    /// The 32-byte key as a libsodium sealed box, hex.
    #[serde(with = "hex::serde")]
    pub encrypted_key: Vec<u8>,
    /// The provider's SGX quote; report_data[..32] = SHA-256(encrypted_key), hex.
    #[serde(with = "hex::serde")]
    pub provider_quote: Vec<u8>,
    /// Collateral for `provider_quote` (dcap-qvl JSON), when the host has
    /// it; empty means the guest must fetch it itself.
    #[serde(default)]
    pub provider_collateral: String,
}

/// The wire protocol of upstream's `local-key-provider` (TCP): each message
/// is a 4-byte big-endian length, then JSON whose byte fields are arrays of
/// numbers.
pub mod local_key_provider {
    use serde::{Deserialize, Serialize};

    /// The largest frame upstream's provider accepts (its JSON spells each
    /// byte as a number, so a 1 MiB quote takes up to about 4 MiB).
    pub const MAX_FRAME: usize = 8 << 20;

    /// The request: the TD's quote.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ProviderRequest {
        /// The TD's quote.
        pub quote: Vec<u8>,
    }

    /// The answer: the sealed key and the provider's SGX quote.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ProviderResponse {
        /// The sealed key.
        pub encrypted_key: Vec<u8>,
        /// The provider's SGX quote.
        pub provider_quote: Vec<u8>,
    }

    /// One frame: length (u32 BE) then the JSON bytes. `None` when the JSON
    /// is longer than [`MAX_FRAME`].
    pub fn frame<T: Serialize>(message: &T) -> Option<Vec<u8>> {
        let json = serde_json::to_vec(message).ok()?;
        if json.len() > MAX_FRAME {
            return None;
        }
        let len = u32::try_from(json.len()).ok()?;
        let mut out = Vec::with_capacity(4 + json.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&json);
        Some(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn frames_as_upstream() {
            let wire = frame(&ProviderRequest {
                quote: vec![1, 2, 3, 255],
            })
            .unwrap();
            assert_eq!(&wire[..4], &21u32.to_be_bytes());
            assert_eq!(&wire[4..], br#"{"quote":[1,2,3,255]}"#);
            let response: ProviderResponse =
                serde_json::from_slice(br#"{"encrypted_key":[1,2],"provider_quote":[3,4]}"#)
                    .unwrap();
            assert_eq!(response.provider_quote, [3, 4]);
        }
    }
}
