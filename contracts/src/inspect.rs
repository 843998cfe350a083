//! What a KmsAuth or AppAuth contract allows right now, for operators
//! (`dstack chain info`).
//!
//! The allow-lists are Solidity mappings, which cannot be enumerated. The
//! candidate keys come from the contract's own `…Added` events (and
//! `AppRegistered`), and each candidate is then looked up in its mapping:
//! the lists report the contract's state, so a later removal, or a key
//! re-added after one, shows as it stands now rather than as the log tells it.

use alloy::primitives::{Address, B256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{Filter, Log};
use alloy::sol_types::SolEvent;

use crate::ChainError;
use crate::bindings::app::DstackApp;
use crate::bindings::kms::DstackKms;
use crate::client::parse_url;

/// A KmsAuth contract's governance state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsState {
    /// Who may change it.
    pub owner: [u8; 20],
    /// The gateway's app id as set (empty when unset).
    pub gateway_app_id: String,
    /// The DstackApp implementation the factory deploys.
    pub app_implementation: [u8; 20],
    /// OS images any CVM (app or KMS) may boot, in the order first allowed.
    pub os_image_hashes: Vec<[u8; 32]>,
    /// Aggregated measurements a KMS replica may have.
    pub kms_aggregated_mrs: Vec<[u8; 32]>,
    /// Devices a KMS replica may run on.
    pub kms_devices: Vec<[u8; 32]>,
    /// Registered apps (app ids).
    pub apps: Vec<[u8; 20]>,
}

/// An AppAuth contract's governance state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppState {
    /// Who may change it (the app developer).
    pub owner: [u8; 20],
    /// Whether any device may boot the app (`devices` is then ignored).
    pub allow_any_device: bool,
    /// Whether only platforms with an UpToDate TCB may boot it.
    pub require_tcb_up_to_date: bool,
    /// Compose hashes (app versions) that may boot, in the order first allowed.
    pub compose_hashes: Vec<[u8; 32]>,
    /// Devices that may boot it.
    pub devices: Vec<[u8; 32]>,
}

/// A read-only client for inspecting governance contracts.
#[derive(Debug, Clone)]
pub struct Inspector {
    url: String,
    provider: DynProvider,
}

impl Inspector {
    /// A client over the JSON-RPC endpoint `rpc_url`. Nothing is sent until
    /// the first call.
    pub fn new(rpc_url: &str) -> Result<Self, ChainError> {
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .connect_http(parse_url(rpc_url)?)
            .erased();
        Ok(Self {
            url: rpc_url.to_owned(),
            provider,
        })
    }

    /// The chain id the endpoint reports.
    pub async fn chain_id(&self) -> Result<u64, ChainError> {
        self.provider
            .get_chain_id()
            .await
            .map_err(|e| ChainError::from_transport("eth_chainId", &self.url, e))
    }

    /// The KmsAuth contract at `kms`, its lists built from events since
    /// `from_block` (0 for the whole chain; public endpoints that limit log
    /// ranges need the deployment's block).
    pub async fn kms(&self, kms: [u8; 20], from_block: u64) -> Result<KmsState, ChainError> {
        let at = Address::from(kms);
        let c = DstackKms::new(at, &self.provider);
        let err = |call| move |e| ChainError::from_contract(call, &self.url, at, e);
        let owner = c.owner().call().await.map_err(err("owner"))?;
        let gateway_app_id = c.gatewayAppId().call().await.map_err(err("gatewayAppId"))?;
        let app_implementation = c
            .appImplementation()
            .call()
            .await
            .map_err(err("appImplementation"))?;

        let logs = self
            .logs(
                at,
                from_block,
                &[
                    DstackKms::OsImageHashAdded::SIGNATURE_HASH,
                    DstackKms::KmsAggregatedMrAdded::SIGNATURE_HASH,
                    DstackKms::KmsDeviceAdded::SIGNATURE_HASH,
                    DstackKms::AppRegistered::SIGNATURE_HASH,
                ],
            )
            .await?;
        let mut os_candidates = Vec::new();
        let mut mr_candidates = Vec::new();
        let mut device_candidates = Vec::new();
        let mut app_candidates = Vec::new();
        for log in &logs {
            if let Ok(e) = log.log_decode::<DstackKms::OsImageHashAdded>() {
                push_new(&mut os_candidates, e.inner.data.osImageHash.0);
            } else if let Ok(e) = log.log_decode::<DstackKms::KmsAggregatedMrAdded>() {
                push_new(&mut mr_candidates, e.inner.data.mrAggregated.0);
            } else if let Ok(e) = log.log_decode::<DstackKms::KmsDeviceAdded>() {
                push_new(&mut device_candidates, e.inner.data.deviceId.0);
            } else if let Ok(e) = log.log_decode::<DstackKms::AppRegistered>() {
                push_new(&mut app_candidates, e.inner.data.appId.0.0);
            }
        }

        let mut os_image_hashes = Vec::new();
        for h in os_candidates {
            if c.allowedOsImages(B256::from(h))
                .call()
                .await
                .map_err(err("allowedOsImages"))?
            {
                os_image_hashes.push(h);
            }
        }
        let mut kms_aggregated_mrs = Vec::new();
        for h in mr_candidates {
            if c.kmsAllowedAggregatedMrs(B256::from(h))
                .call()
                .await
                .map_err(err("kmsAllowedAggregatedMrs"))?
            {
                kms_aggregated_mrs.push(h);
            }
        }
        let mut kms_devices = Vec::new();
        for h in device_candidates {
            if c.kmsAllowedDeviceIds(B256::from(h))
                .call()
                .await
                .map_err(err("kmsAllowedDeviceIds"))?
            {
                kms_devices.push(h);
            }
        }
        let mut apps = Vec::new();
        for a in app_candidates {
            if c.registeredApps(Address::from(a))
                .call()
                .await
                .map_err(err("registeredApps"))?
            {
                apps.push(a);
            }
        }
        Ok(KmsState {
            owner: owner.0.0,
            gateway_app_id,
            app_implementation: app_implementation.0.0,
            os_image_hashes,
            kms_aggregated_mrs,
            kms_devices,
            apps,
        })
    }

    /// The AppAuth contract at `app` (an app id), its lists built from
    /// events since `from_block` (see [`kms`](Self::kms)).
    pub async fn app(&self, app: [u8; 20], from_block: u64) -> Result<AppState, ChainError> {
        let at = Address::from(app);
        let c = DstackApp::new(at, &self.provider);
        let err = |call| move |e| ChainError::from_contract(call, &self.url, at, e);
        let owner = c.owner().call().await.map_err(err("owner"))?;
        let allow_any_device = c
            .allowAnyDevice()
            .call()
            .await
            .map_err(err("allowAnyDevice"))?;
        let require_tcb_up_to_date = c
            .requireTcbUpToDate()
            .call()
            .await
            .map_err(err("requireTcbUpToDate"))?;

        let logs = self
            .logs(
                at,
                from_block,
                &[
                    DstackApp::ComposeHashAdded::SIGNATURE_HASH,
                    DstackApp::DeviceAdded::SIGNATURE_HASH,
                ],
            )
            .await?;
        let mut hash_candidates = Vec::new();
        let mut device_candidates = Vec::new();
        for log in &logs {
            if let Ok(e) = log.log_decode::<DstackApp::ComposeHashAdded>() {
                push_new(&mut hash_candidates, e.inner.data.composeHash.0);
            } else if let Ok(e) = log.log_decode::<DstackApp::DeviceAdded>() {
                push_new(&mut device_candidates, e.inner.data.deviceId.0);
            }
        }
        let mut compose_hashes = Vec::new();
        for h in hash_candidates {
            if c.allowedComposeHashes(B256::from(h))
                .call()
                .await
                .map_err(err("allowedComposeHashes"))?
            {
                compose_hashes.push(h);
            }
        }
        let mut devices = Vec::new();
        for h in device_candidates {
            if c.allowedDeviceIds(B256::from(h))
                .call()
                .await
                .map_err(err("allowedDeviceIds"))?
            {
                devices.push(h);
            }
        }
        Ok(AppState {
            owner: owner.0.0,
            allow_any_device,
            require_tcb_up_to_date,
            compose_hashes,
            devices,
        })
    }

    /// The contract's logs whose first topic is one of `events`, oldest first.
    async fn logs(
        &self,
        address: Address,
        from_block: u64,
        events: &[B256],
    ) -> Result<Vec<Log>, ChainError> {
        let filter = Filter::new()
            .address(address)
            .event_signature(events.to_vec())
            .from_block(from_block);
        self.provider
            .get_logs(&filter)
            .await
            .map_err(|e| ChainError::from_transport("eth_getLogs", &self.url, e))
    }
}

fn push_new<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}
