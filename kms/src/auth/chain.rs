//! On-chain authorisation: the KMS asks its KmsAuth contract directly
//! (`isAppAllowed` / `isKmsAllowed`), doing in-process what upstream's
//! auth-eth webhook does in Node (UPSTREAM §7.3).
//!
//! Unlike auth-eth, which left-pads short hex values to 20 or 32 bytes, a
//! value of the wrong length is refused naming the field: padding would
//! make a truncated compose hash match an allow-list entry it is not.

use std::error::Error;
use std::future::Future;
use std::time::Duration;

use dstack_contracts::alloy::primitives::Address;
use dstack_contracts::{AppBootInfo, ChainAuth, ChainError, fixed, public_endpoint};
use dstack_proto::kms::{BootAuthResponse, BootInfo};

use super::{AuthError, AuthInfo};

/// How long one decision or info lookup may take. An unreachable node fails
/// fast on its own; this bounds a node that accepts and never answers.
pub const CHAIN_TIMEOUT: Duration = Duration::from_secs(10);

const BACKEND: &str = "chain";

/// The on-chain backend: a read-only client of one KmsAuth contract.
#[derive(Clone)]
pub struct ChainBackend {
    auth: ChainAuth,
    /// The RPC endpoint without path or query, which often hold an API key.
    endpoint: String,
    timeout: Duration,
}

impl std::fmt::Debug for ChainBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainBackend")
            .field("endpoint", &self.endpoint)
            .field("kms_contract", &Address::from(self.auth.kms_contract()))
            .finish_non_exhaustive()
    }
}

impl ChainBackend {
    /// A backend reading the KmsAuth contract at `kms_contract` over the
    /// JSON-RPC endpoint `rpc_url`. Nothing is sent until the first call.
    pub fn new(rpc_url: &str, kms_contract: [u8; 20]) -> Result<Self, ChainError> {
        Ok(Self {
            auth: ChainAuth::new(rpc_url, kms_contract)?,
            endpoint: public_endpoint(rpc_url),
            timeout: CHAIN_TIMEOUT,
        })
    }

    /// Gives up on a call after `timeout` instead of [`CHAIN_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The KmsAuth contract's address.
    pub fn kms_contract(&self) -> [u8; 20] {
        self.auth.kms_contract()
    }

    /// `isKmsAllowed` for a replica, `isAppAllowed` for an app; the gateway
    /// app id comes from the contract. A field of the wrong length is a
    /// refusal naming it, decided before anything is sent.
    pub async fn decide(
        &self,
        info: &BootInfo,
        is_kms: bool,
    ) -> Result<BootAuthResponse, AuthError> {
        let boot = match app_boot_info(info) {
            Ok(boot) => boot,
            Err(e) => {
                return Ok(BootAuthResponse {
                    is_allowed: false,
                    gateway_app_id: String::new(),
                    reason: e.to_string(),
                });
            }
        };
        let verdict = if is_kms {
            self.bounded(self.auth.is_kms_allowed(&boot)).await?
        } else {
            self.bounded(self.auth.is_app_allowed(&boot)).await?
        };
        // The gateway id only matters to an allowed app; a refusal saves the call.
        let gateway_app_id = if verdict.allowed {
            self.bounded(self.auth.gateway_app_id()).await?
        } else {
            String::new()
        };
        Ok(BootAuthResponse {
            is_allowed: verdict.allowed,
            gateway_app_id,
            reason: verdict.reason,
        })
    }

    /// The contract address, chain id, gateway app id and app implementation.
    pub async fn info(&self) -> Result<AuthInfo, AuthError> {
        let (chain_id, gateway_app_id, app_implementation) = self
            .bounded(async {
                tokio::try_join!(
                    self.auth.chain_id(),
                    self.auth.gateway_app_id(),
                    self.auth.app_implementation()
                )
            })
            .await?;
        Ok(AuthInfo {
            is_dev: false,
            gateway_app_id: Some(gateway_app_id),
            kms_contract_address: Some(Address::from(self.auth.kms_contract()).to_checksum(None)),
            chain_id: Some(chain_id),
            app_implementation: Some(Address::from(app_implementation).to_checksum(None)),
        })
    }

    /// Runs a chain call under the timeout, turning its failure into an
    /// [`AuthError`] that names the endpoint without its secret parts.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, ChainError>>,
    ) -> Result<T, AuthError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(AuthError::Backend {
                backend: BACKEND,
                reason: chain_of(&e).replace(self.auth.rpc_url(), &self.endpoint),
            }),
            Err(_) => Err(AuthError::Timeout {
                backend: BACKEND,
                target: self.endpoint.clone(),
                after: self.timeout,
            }),
        }
    }
}

/// The contracts' `AppBootInfo` from a boot info, every length exact. An
/// empty instance id (an app without one) and an empty OS image hash (a
/// caller whose VM config has none) are the zero value the contracts use
/// for "none"; any other wrong length is an error naming the field.
pub fn app_boot_info(info: &BootInfo) -> Result<AppBootInfo, ChainError> {
    let or_zero = |field, bytes: &[u8]| {
        if bytes.is_empty() {
            Ok([0u8; 32])
        } else {
            fixed::<32>(field, bytes)
        }
    };
    Ok(AppBootInfo {
        app_id: fixed("app_id", &info.app_id)?,
        compose_hash: fixed("compose_hash", &info.compose_hash)?,
        instance_id: if info.instance_id.is_empty() {
            [0; 20]
        } else {
            fixed("instance_id", &info.instance_id)?
        },
        device_id: fixed("device_id", &info.device_id)?,
        mr_aggregated: fixed("mr_aggregated", &info.mr_aggregated)?,
        mr_system: fixed("mr_system", &info.mr_system)?,
        os_image_hash: or_zero("os_image_hash", &info.os_image_hash)?,
        tcb_status: info.tcb_status.clone(),
        advisory_ids: info.advisory_ids.clone(),
    })
}

/// An error and its sources, one sentence each, for a log line.
fn chain_of(error: &dyn Error) -> String {
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
mod tests {
    use super::*;

    fn boot() -> BootInfo {
        BootInfo {
            tee_variant: "dstack-tdx".into(),
            mr_aggregated: vec![9; 32],
            os_image_hash: vec![8; 32],
            mr_system: vec![7; 32],
            app_id: vec![1; 20],
            compose_hash: vec![2; 32],
            instance_id: vec![3; 20],
            device_id: vec![4; 32],
            tcb_status: "UpToDate".into(),
            ..BootInfo::default()
        }
    }

    #[test]
    fn converts_with_exact_lengths() {
        let b = app_boot_info(&boot()).unwrap();
        assert_eq!(b.app_id, [1; 20]);
        assert_eq!(b.instance_id, [3; 20]);
        assert_eq!(b.mr_system, [7; 32]);
        assert_eq!(b.os_image_hash, [8; 32]);
        let mut none = boot();
        none.instance_id.clear();
        none.os_image_hash.clear();
        let b = app_boot_info(&none).unwrap();
        assert_eq!((b.instance_id, b.os_image_hash), ([0; 20], [0; 32]));
    }

    #[test]
    fn wrong_lengths_name_the_field_and_are_never_padded() {
        type Change = fn(&mut BootInfo);
        let cases: [(Change, &str); 8] = [
            (|b| b.app_id.truncate(19), "app_id must be 20 bytes, got 19"),
            (|b| b.app_id.clear(), "app_id must be 20 bytes, got 0"),
            (
                |b| b.instance_id.push(0),
                "instance_id must be 20 bytes, got 21",
            ),
            (
                |b| b.compose_hash.truncate(31),
                "compose_hash must be 32 bytes, got 31",
            ),
            (|b| b.device_id.clear(), "device_id must be 32 bytes, got 0"),
            (
                |b| b.mr_aggregated.push(1),
                "mr_aggregated must be 32 bytes, got 33",
            ),
            (
                |b| b.mr_system.truncate(20),
                "mr_system must be 32 bytes, got 20",
            ),
            (
                |b| b.os_image_hash.truncate(1),
                "os_image_hash must be 32 bytes, got 1",
            ),
        ];
        for (change, message) in cases {
            let mut b = boot();
            change(&mut b);
            assert_eq!(app_boot_info(&b).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn debug_shows_no_rpc_secret() {
        let backend = ChainBackend::new("http://127.0.0.1:8545/SECRETKEY", [0xab; 20]).unwrap();
        let debug = format!("{backend:?}");
        assert!(!debug.contains("SECRETKEY"), "{debug}");
        assert!(debug.contains("http://127.0.0.1:8545"), "{debug}");
    }
}
