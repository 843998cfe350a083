//! A guest API served on a unix socket in a temporary directory, backed by
//! the simulated TEE after a dstack-shaped boot: for tests of services that
//! run as dstack apps and call `dstack.sock` (the KMS, the guest client).

use std::path::PathBuf;
use std::sync::Arc;

use dstack_attest::{Event, Platform, RuntimeEvent, SimAuthority, SimPlatform, SimTdIdentity};
use dstack_keys::AppKeys;
use sha2::{Digest, Sha256};

use crate::{AppInfo, CertSigner, Flavor, GuestApi};

/// How a [`SimGuest`] boots.
#[derive(Debug, Clone)]
pub struct SimBoot {
    /// The app-compose JSON measured as the compose hash.
    pub app_compose: String,
    /// The instance id.
    pub instance_id: Vec<u8>,
    /// The `key-provider` event and app info field.
    pub key_provider_info: String,
    /// The seed of the app keys.
    pub seed: [u8; 32],
    /// MRTD of the simulated TD.
    pub mr_td: [u8; 48],
}

impl Default for SimBoot {
    fn default() -> Self {
        Self {
            app_compose: r#"{"name":"test-app","runner":"docker-compose"}"#.into(),
            instance_id: vec![9; 20],
            key_provider_info: r#"{"name":"none","id":""}"#.into(),
            seed: [0x11; 32],
            mr_td: [0x42; 48],
        }
    }
}

/// A running guest API (dstack.sock and tappd.sock), served until the
/// runtime that started it ends.
#[derive(Debug)]
pub struct SimGuest {
    _dir: tempfile::TempDir,
    /// `dstack.sock`.
    pub dstack: PathBuf,
    /// `tappd.sock`.
    pub tappd: PathBuf,
    /// The simulated TD.
    pub platform: Arc<SimPlatform>,
    /// What the API reports as the app.
    pub app: AppInfo,
}

impl SimGuest {
    /// Boots a simulated TD under `authority` as dstack-init would (three
    /// firmware events, then the RTMR3 boot events) and serves its API.
    /// Must be called inside a tokio runtime.
    pub fn start(authority: Arc<SimAuthority>, boot: SimBoot) -> std::io::Result<Self> {
        Self::start_with_signer(authority, boot, None)
    }

    /// [`SimGuest::start`], with `signer` (a KMS, or a stand-in) certifying
    /// the app's TLS keys.
    pub fn start_with_signer(
        authority: Arc<SimAuthority>,
        boot: SimBoot,
        signer: Option<Arc<dyn CertSigner>>,
    ) -> std::io::Result<Self> {
        let firmware: Vec<Event> = (0u8..3)
            .map(|imr| Event {
                imr: u32::from(imr),
                event_type: 0x8000_0003,
                digest: vec![imr + 1; 48],
                event: String::new(),
                event_payload: vec![0xaa; 4],
            })
            .collect();
        let platform = Arc::new(
            SimPlatform::new(
                authority,
                SimTdIdentity {
                    mr_td: boot.mr_td,
                    ..SimTdIdentity::default()
                },
                firmware,
            )
            .map_err(std::io::Error::other)?,
        );
        let compose_hash: [u8; 32] = Sha256::digest(boot.app_compose.as_bytes()).into();
        for (name, payload) in [
            ("system-preparing", vec![]),
            ("app-id", compose_hash[..20].to_vec()),
            ("compose-hash", compose_hash.to_vec()),
            ("instance-id", boot.instance_id.clone()),
            ("boot-mr-done", vec![]),
            ("key-provider", boot.key_provider_info.clone().into_bytes()),
            ("storage-fs", b"ext4".to_vec()),
            ("system-ready", vec![]),
        ] {
            platform
                .emit_event(&RuntimeEvent {
                    name: name.into(),
                    payload,
                })
                .map_err(std::io::Error::other)?;
        }
        let app_name = serde_json::from_str::<serde_json::Value>(&boot.app_compose)
            .ok()
            .and_then(|v| v["name"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let app = AppInfo {
            app_id: compose_hash[..20].to_vec(),
            instance_id: boot.instance_id,
            compose_hash,
            app_name,
            app_compose: boot.app_compose,
            vm_config: r#"{"os_image_hash":""}"#.into(),
            os_image_hash: vec![5; 32],
            key_provider_info: boot.key_provider_info,
            cloud_vendor: "vendor".into(),
            cloud_product: "product".into(),
        };
        let keys = AppKeys::from_seed(&boot.seed).map_err(std::io::Error::other)?;
        let dyn_platform: Arc<dyn Platform> = platform.clone();
        let mut api =
            GuestApi::new(dyn_platform, app.clone(), keys).map_err(std::io::Error::other)?;
        if let Some(signer) = signer {
            api = api.with_cert_signer(signer);
        }
        let api = Arc::new(api);
        let dir = tempfile::tempdir()?;
        let dstack = dir.path().join("dstack.sock");
        let tappd = dir.path().join("tappd.sock");
        let listener = tokio::net::UnixListener::bind(&dstack)?;
        tokio::spawn(api.clone().serve(listener, Flavor::Dstack));
        let listener = tokio::net::UnixListener::bind(&tappd)?;
        tokio::spawn(api.serve(listener, Flavor::Tappd));
        Ok(Self {
            _dir: dir,
            dstack,
            tappd,
            platform,
            app,
        })
    }
}
