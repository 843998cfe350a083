//! One fresh chain per test: anvil, the KMS deployed by the first dev account
//! (the owner), and a second funded account that owns nothing.
#![allow(dead_code, unreachable_pub)] // each test binary uses part of it

use dstack_contracts::admin::{Admin, KmsDeployment, NewApp};
use dstack_contracts::alloy::primitives::{B256, keccak256};
use dstack_contracts::alloy::rpc::types::TransactionReceipt;
use dstack_contracts::alloy::sol_types::SolEvent;
use dstack_contracts::anvil::Anvil;
use dstack_contracts::{AppBootInfo, ChainError};

pub struct Chain {
    pub anvil: Anvil,
    pub owner: Admin,
    pub stranger: Admin,
    pub kms: KmsDeployment,
}

pub async fn deployed() -> Chain {
    // Fails (never skips) without anvil: the error says how to install it.
    let anvil = Anvil::start().unwrap_or_else(|e| panic!("{e}"));
    let owner = Admin::connect(anvil.rpc_url(), anvil.dev_key()).expect("owner signer");
    let stranger = Admin::connect(anvil.rpc_url(), anvil.dev_key_at(1)).expect("stranger signer");
    let kms = owner.deploy_kms().await.expect("deploy KMS");
    Chain {
        anvil,
        owner,
        stranger,
        kms,
    }
}

pub const OS: [u8; 32] = [0x05; 32];
pub const COMPOSE: [u8; 32] = [0xc0; 32];
pub const DEVICE: [u8; 32] = [0xde; 32];
pub const MR: [u8; 32] = [0xa9; 32];

impl Chain {
    /// An app deployed through the factory with one compose hash, one device,
    /// and the OS image allowed at the KMS.
    pub async fn app(&self, allow_any_device: bool, require_tcb_up_to_date: bool) -> [u8; 20] {
        self.owner
            .add_os_image_hash(self.kms.kms, OS)
            .await
            .expect("allow OS");
        let app = NewApp {
            owner: self.owner.address(),
            disable_upgrades: false,
            require_tcb_up_to_date,
            allow_any_device,
            device_id: DEVICE,
            compose_hash: COMPOSE,
        };
        self.owner
            .deploy_and_register_app(self.kms.kms, &app)
            .await
            .expect("deploy app")
    }
}

/// A boot that every check of a freshly set-up app accepts.
pub fn boot(app_id: [u8; 20]) -> AppBootInfo {
    AppBootInfo {
        app_id,
        compose_hash: COMPOSE,
        instance_id: [0x11; 20],
        device_id: DEVICE,
        mr_aggregated: MR,
        mr_system: [0x55; 32],
        os_image_hash: OS,
        tcb_status: "UpToDate".into(),
        advisory_ids: vec![],
    }
}

/// The one event of type `E` in the receipt.
pub fn event<E: SolEvent>(r: &TransactionReceipt) -> E {
    r.decoded_log::<E>()
        .unwrap_or_else(|| panic!("no {} in receipt", E::SIGNATURE))
        .data
}

/// Every `E` in the receipt, in order.
pub fn events<E: SolEvent>(r: &TransactionReceipt) -> Vec<E> {
    r.inner
        .logs()
        .iter()
        .filter_map(|l| l.log_decode::<E>().ok())
        .map(|l| l.inner.data)
        .collect()
}

pub fn policy(name: &str) -> B256 {
    keccak256(name.as_bytes())
}

pub fn word(a: [u8; 20]) -> B256 {
    let mut w = [0u8; 32];
    w[12..].copy_from_slice(&a);
    B256::from(w)
}

#[track_caller]
pub fn assert_not_owner<T: std::fmt::Debug>(result: Result<T, ChainError>) {
    match result {
        Err(ChainError::Reverted { reason, .. }) => {
            assert!(
                reason.contains("OwnableUnauthorizedAccount"),
                "unexpected revert reason: {reason}"
            )
        }
        other => panic!("expected an OwnableUnauthorizedAccount revert, got {other:?}"),
    }
}

#[track_caller]
pub fn assert_reverted<T: std::fmt::Debug>(result: Result<T, ChainError>, needle: &str) {
    match result {
        Err(ChainError::Reverted { reason, .. }) => assert!(
            reason.contains(needle),
            "revert reason {reason:?} lacks {needle:?}"
        ),
        other => panic!("expected a revert with {needle:?}, got {other:?}"),
    }
}
