//! Owner actions on the governance contracts, signed by a local private key:
//! what an operator's `dstack chain` commands and the KMS end-to-end tests do.
//!
//! Every action waits for its receipt and fails with
//! [`ChainError::Reverted`] when the contract refuses (e.g. the signer is not
//! the owner), so a returned receipt means the change is on chain.

use std::time::Duration;

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256, Bytes};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::client::RpcClient;
use alloy::rpc::types::TransactionReceipt;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;

use crate::ChainError;
use crate::bindings::app::DstackApp;
use crate::bindings::kms::DstackKms;
use crate::bindings::proxy::ERC1967Proxy;
use crate::client::parse_url;

/// Addresses of a fresh KmsAuth deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KmsDeployment {
    /// The KmsAuth proxy: the address the KMS is configured with.
    pub kms: [u8; 20],
    /// The DstackKms implementation behind the proxy.
    pub kms_implementation: [u8; 20],
    /// The DstackApp implementation the factory deploys apps with.
    pub app_implementation: [u8; 20],
}

/// The factory's parameters for a new app (`deployAndRegisterApp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NewApp {
    /// Who may change the app's policy.
    pub owner: [u8; 20],
    /// Make the app's contract immutable from the start.
    pub disable_upgrades: bool,
    /// Refuse platforms whose TCB status is not UpToDate.
    pub require_tcb_up_to_date: bool,
    /// Let any device boot the app.
    pub allow_any_device: bool,
    /// A first allowed device (all zero: none).
    pub device_id: [u8; 32],
    /// A first allowed compose hash (all zero: none).
    pub compose_hash: [u8; 32],
}

/// The KMS identity published on chain (`DstackKms.KmsInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KmsInfo {
    /// The KMS root k256 public key.
    pub k256_pubkey: Vec<u8>,
    /// The KMS root CA public key.
    pub ca_pubkey: Vec<u8>,
    /// The quote vouching for the keys.
    pub quote: Vec<u8>,
    /// The event log that goes with the quote.
    pub eventlog: Vec<u8>,
}

/// A signer connected to a chain, acting as (or trying to act as) owner.
#[derive(Debug, Clone)]
pub struct Admin {
    url: String,
    from: Address,
    provider: DynProvider,
}

impl Admin {
    /// Connects to `rpc_url` with the secp256k1 key `private_key_hex` (32
    /// bytes, `0x` optional). Nothing is sent until the first action.
    pub fn connect(rpc_url: &str, private_key_hex: &str) -> Result<Self, ChainError> {
        let signer: PrivateKeySigner = private_key_hex
            .trim()
            .parse()
            .map_err(|_| ChainError::BadKey)?;
        let from = signer.address();
        let client = RpcClient::new_http(parse_url(rpc_url)?);
        if client.is_local() {
            // A local dev chain mines on submission; the 250 ms default
            // receipt poll would dominate test time.
            client.set_poll_interval(Duration::from_millis(20));
        }
        // The recommended nonce filler caches and increments the nonce even
        // when gas estimation then fails (a refused call), leaving a gap that
        // stalls every later transaction: ask the node for each one instead.
        let provider = ProviderBuilder::new()
            .disable_recommended_fillers()
            .with_gas_estimation()
            .with_simple_nonce_management()
            .fetch_chain_id()
            .wallet(EthereumWallet::from(signer))
            .connect_client(client)
            .erased();
        Ok(Self {
            url: rpc_url.to_owned(),
            from,
            provider,
        })
    }

    /// The signer's address.
    pub fn address(&self) -> [u8; 20] {
        self.from.0.0
    }

    /// The provider, for calls this module does not wrap.
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// Deploys the DstackApp implementation, the DstackKms implementation and
    /// a proxy initialised with the signer as owner and that app implementation.
    pub async fn deploy_kms(&self) -> Result<KmsDeployment, ChainError> {
        let app_implementation = self.deploy_app_implementation().await?;
        let kms_implementation = DstackKms::deploy_builder(&self.provider)
            .deploy()
            .await
            .map_err(|e| self.err("deploy DstackKms", Address::ZERO, e))?;
        let init = DstackKms::initializeCall {
            initialOwner: self.from,
            _appImplementation: Address::from(app_implementation),
        }
        .abi_encode();
        let kms = self.deploy_proxy(kms_implementation.0.0, init).await?;
        Ok(KmsDeployment {
            kms,
            kms_implementation: kms_implementation.0.0,
            app_implementation,
        })
    }

    /// Deploys a DstackApp implementation (to pass to
    /// [`set_app_implementation`](Self::set_app_implementation) or to upgrade to).
    pub async fn deploy_app_implementation(&self) -> Result<[u8; 20], ChainError> {
        let a = DstackApp::deploy_builder(&self.provider)
            .deploy()
            .await
            .map_err(|e| self.err("deploy DstackApp", Address::ZERO, e))?;
        Ok(a.0.0)
    }

    /// Deploys an ERC1967 proxy to `implementation`, calling `init` (ABI
    /// encoded) on it in the same transaction.
    pub async fn deploy_proxy(
        &self,
        implementation: [u8; 20],
        init: Vec<u8>,
    ) -> Result<[u8; 20], ChainError> {
        let a = ERC1967Proxy::deploy_builder(
            &self.provider,
            Address::from(implementation),
            Bytes::from(init),
        )
        .deploy()
        .await
        .map_err(|e| self.err("deploy ERC1967Proxy", Address::ZERO, e))?;
        Ok(a.0.0)
    }

    /// `DstackKms.deployAndRegisterApp` (6 arguments); returns the new app's
    /// address, its app id.
    pub async fn deploy_and_register_app(
        &self,
        kms: [u8; 20],
        app: &NewApp,
    ) -> Result<[u8; 20], ChainError> {
        const CALL: &str = "deployAndRegisterApp";
        let c = self.kms(kms);
        let receipt = self
            .send(
                CALL,
                kms,
                c.deployAndRegisterApp_1(
                    Address::from(app.owner),
                    app.disable_upgrades,
                    app.require_tcb_up_to_date,
                    app.allow_any_device,
                    B256::from(app.device_id),
                    B256::from(app.compose_hash),
                ),
            )
            .await?;
        let deployed = receipt
            .decoded_log::<DstackKms::AppDeployedViaFactory>()
            .ok_or_else(|| ChainError::BadReceipt {
                call: CALL,
                what: "AppDeployedViaFactory event",
                tx_hash: receipt.transaction_hash.to_string(),
            })?;
        Ok(deployed.appId.0.0)
    }

    /// `DstackKms.registerApp` (open to any caller).
    pub async fn register_app(
        &self,
        kms: [u8; 20],
        app: [u8; 20],
    ) -> Result<TransactionReceipt, ChainError> {
        self.send(
            "registerApp",
            kms,
            self.kms(kms).registerApp(Address::from(app)),
        )
        .await
    }

    /// `DstackKms.setAppImplementation`.
    pub async fn set_app_implementation(
        &self,
        kms: [u8; 20],
        implementation: [u8; 20],
    ) -> Result<TransactionReceipt, ChainError> {
        self.send(
            "setAppImplementation",
            kms,
            self.kms(kms)
                .setAppImplementation(Address::from(implementation)),
        )
        .await
    }

    /// `DstackKms.addOsImageHash`.
    pub async fn add_os_image_hash(
        &self,
        kms: [u8; 20],
        hash: [u8; 32],
    ) -> Result<TransactionReceipt, ChainError> {
        self.send(
            "addOsImageHash",
            kms,
            self.kms(kms).addOsImageHash(B256::from(hash)),
        )
        .await
    }

    /// `DstackKms.removeOsImageHash`.
    pub async fn remove_os_image_hash(
        &self,
        kms: [u8; 20],
        hash: [u8; 32],
    ) -> Result<TransactionReceipt, ChainError> {
        self.send(
            "removeOsImageHash",
            kms,
            self.kms(kms).removeOsImageHash(B256::from(hash)),
        )
        .await
    }

    /// `DstackKms.addKmsAggregatedMr`.
    pub async fn add_kms_aggregated_mr(
        &self,
        kms: [u8; 20],
        mr: [u8; 32],
    ) -> Result<TransactionReceipt, ChainError> {
        self.send(
            "addKmsAggregatedMr",
            kms,
            self.kms(kms).addKmsAggregatedMr(B256::from(mr)),
        )
        .await
    }

    /// `DstackKms.removeKmsAggregatedMr`.
    pub async fn remove_kms_aggregated_mr(
        &self,
        kms: [u8; 20],
        mr: [u8; 32],
    ) -> Result<TransactionReceipt, ChainError> {
        self.send(
            "removeKmsAggregatedMr",
            kms,
            self.kms(kms).removeKmsAggregatedMr(B256::from(mr)),
        )
        .await
    }

    /// `DstackKms.addKmsDevice`.
    pub async fn add_kms_device(
        &self,
        kms: [u8; 20],
        device: [u8; 32],
    ) -> Result<TransactionReceipt, ChainError> {
        self.send(
            "addKmsDevice",
            kms,
            self.kms(kms).addKmsDevice(B256::from(device)),
        )
        .await
    }

    /// `DstackKms.removeKmsDevice`.
    pub async fn remove_kms_device(
        &self,
        kms: [u8; 20],
        device: [u8; 32],
    ) -> Result<TransactionReceipt, ChainError> {
        self.send(
            "removeKmsDevice",
            kms,
            self.kms(kms).removeKmsDevice(B256::from(device)),
        )
        .await
    }

    /// `DstackKms.setGatewayAppId`.
    pub async fn set_gateway_app_id(
        &self,
        kms: [u8; 20],
        app_id: &str,
    ) -> Result<TransactionReceipt, ChainError> {
        self.send(
            "setGatewayAppId",
            kms,
            self.kms(kms).setGatewayAppId(app_id.to_owned()),
        )
        .await
    }

    /// `DstackKms.setKmsInfo`.
    pub async fn set_kms_info(
        &self,
        kms: [u8; 20],
        info: &KmsInfo,
    ) -> Result<TransactionReceipt, ChainError> {
        let info = DstackKms::KmsInfo {
            k256Pubkey: Bytes::from(info.k256_pubkey.clone()),
            caPubkey: Bytes::from(info.ca_pubkey.clone()),
            quote: Bytes::from(info.quote.clone()),
            eventlog: Bytes::from(info.eventlog.clone()),
        };
        self.send("setKmsInfo", kms, self.kms(kms).setKmsInfo(info))
            .await
    }

    /// `DstackApp.addComposeHash`.
    pub async fn add_compose_hash(
        &self,
        app: [u8; 20],
        hash: [u8; 32],
    ) -> Result<TransactionReceipt, ChainError> {
        self.send(
            "addComposeHash",
            app,
            self.app(app).addComposeHash(B256::from(hash)),
        )
        .await
    }

    /// `DstackApp.removeComposeHash`.
    pub async fn remove_compose_hash(
        &self,
        app: [u8; 20],
        hash: [u8; 32],
    ) -> Result<TransactionReceipt, ChainError> {
        self.send(
            "removeComposeHash",
            app,
            self.app(app).removeComposeHash(B256::from(hash)),
        )
        .await
    }

    /// `DstackApp.addDevice`.
    pub async fn add_device(
        &self,
        app: [u8; 20],
        device: [u8; 32],
    ) -> Result<TransactionReceipt, ChainError> {
        self.send(
            "addDevice",
            app,
            self.app(app).addDevice(B256::from(device)),
        )
        .await
    }

    /// `DstackApp.removeDevice`.
    pub async fn remove_device(
        &self,
        app: [u8; 20],
        device: [u8; 32],
    ) -> Result<TransactionReceipt, ChainError> {
        self.send(
            "removeDevice",
            app,
            self.app(app).removeDevice(B256::from(device)),
        )
        .await
    }

    /// `DstackApp.setAllowAnyDevice`.
    pub async fn set_allow_any_device(
        &self,
        app: [u8; 20],
        allow: bool,
    ) -> Result<TransactionReceipt, ChainError> {
        self.send(
            "setAllowAnyDevice",
            app,
            self.app(app).setAllowAnyDevice(allow),
        )
        .await
    }

    /// `DstackApp.setRequireTcbUpToDate`.
    pub async fn set_require_tcb_up_to_date(
        &self,
        app: [u8; 20],
        require: bool,
    ) -> Result<TransactionReceipt, ChainError> {
        self.send(
            "setRequireTcbUpToDate",
            app,
            self.app(app).setRequireTcbUpToDate(require),
        )
        .await
    }

    /// `DstackApp.disableUpgrades`: irreversible.
    pub async fn disable_upgrades(&self, app: [u8; 20]) -> Result<TransactionReceipt, ChainError> {
        self.send("disableUpgrades", app, self.app(app).disableUpgrades())
            .await
    }

    /// `upgradeToAndCall(implementation, "")` on a UUPS proxy (either contract).
    pub async fn upgrade(
        &self,
        proxy: [u8; 20],
        implementation: [u8; 20],
    ) -> Result<TransactionReceipt, ChainError> {
        let contract = self.kms(proxy);
        self.send(
            "upgradeToAndCall",
            proxy,
            contract.upgradeToAndCall(Address::from(implementation), Bytes::new()),
        )
        .await
    }

    /// `transferOwnership` on either contract: the first of two steps; the
    /// signer stays owner until `new_owner` calls
    /// [`accept_ownership`](Self::accept_ownership) (e.g. after configuring
    /// a fresh deployment for a multisig).
    pub async fn transfer_ownership(
        &self,
        contract: [u8; 20],
        new_owner: [u8; 20],
    ) -> Result<TransactionReceipt, ChainError> {
        let c = self.kms(contract);
        self.send(
            "transferOwnership",
            contract,
            c.transferOwnership(Address::from(new_owner)),
        )
        .await
    }

    /// `acceptOwnership` on either contract, by the pending owner.
    pub async fn accept_ownership(
        &self,
        contract: [u8; 20],
    ) -> Result<TransactionReceipt, ChainError> {
        let c = self.kms(contract);
        self.send("acceptOwnership", contract, c.acceptOwnership())
            .await
    }

    /// Sends `call`, waits for its receipt, and turns a refusal or a failed
    /// transaction into a named error.
    pub async fn send<P: Provider, D: alloy::contract::CallDecoder>(
        &self,
        name: &'static str,
        to: [u8; 20],
        call: alloy::contract::CallBuilder<P, D>,
    ) -> Result<TransactionReceipt, ChainError> {
        let to = Address::from(to);
        let pending = call.send().await.map_err(|e| self.err(name, to, e))?;
        let receipt = pending
            .get_receipt()
            .await
            .map_err(|e| self.err(name, to, alloy::contract::Error::PendingTransactionError(e)))?;
        if !receipt.status() {
            return Err(ChainError::TxFailed {
                call: name,
                tx_hash: receipt.transaction_hash.to_string(),
            });
        }
        Ok(receipt)
    }

    fn kms(&self, address: [u8; 20]) -> DstackKms::DstackKmsInstance<&DynProvider> {
        DstackKms::new(Address::from(address), &self.provider)
    }

    fn app(&self, address: [u8; 20]) -> DstackApp::DstackAppInstance<&DynProvider> {
        DstackApp::new(Address::from(address), &self.provider)
    }

    fn err(&self, call: &'static str, address: Address, e: alloy::contract::Error) -> ChainError {
        ChainError::from_contract(call, &self.url, address, e)
    }
}
