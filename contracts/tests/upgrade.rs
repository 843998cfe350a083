//! UUPS upgrades: the owner moves a proxy to a new implementation and the
//! state stays; a stranger cannot; `disableUpgrades` freezes an app.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests
mod common;

use common::*;
use dstack_contracts::ChainAuth;
use dstack_contracts::alloy::primitives::{Address, B256};
use dstack_contracts::bindings::app_v2::DstackAppV2;
use dstack_contracts::bindings::kms::DstackKms;
use dstack_contracts::bindings::kms_v2::DstackKmsV2;

#[tokio::test]
async fn owner_upgrades_kms_and_state_survives() {
    let chain = deployed().await;
    let k = chain.kms.kms;
    let app = chain.app(false, false).await;
    chain.owner.set_gateway_app_id(k, "gw").await.unwrap();

    let v2 = *DstackKmsV2::deploy(chain.owner.provider())
        .await
        .unwrap()
        .address();
    assert_not_owner(chain.stranger.upgrade(k, v2.0.0).await);
    let r = chain.owner.upgrade(k, v2.0.0).await.unwrap();
    assert_eq!(event::<DstackKms::Upgraded>(&r).implementation, v2);
    let p = event::<DstackKms::PolicyChanged>(&r);
    assert_eq!(
        (p.policy, p.value, p.enabled),
        (policy("implementation-upgrade"), word(v2.0.0), true)
    );

    let upgraded = DstackKmsV2::new(Address::from(k), chain.owner.provider());
    assert_eq!(
        upgraded.upgradeMarker().call().await.unwrap(),
        "DstackKmsV2"
    );
    let auth = ChainAuth::new(chain.anvil.rpc_url(), k).unwrap();
    assert_eq!(auth.gateway_app_id().await.unwrap(), "gw");
    assert_eq!(
        auth.app_implementation().await.unwrap(),
        chain.kms.app_implementation
    );
    assert!(
        auth.is_app_allowed(&boot(app)).await.unwrap().allowed,
        "allow-lists survive the upgrade"
    );
    assert_eq!(
        upgraded.owner().call().await.unwrap(),
        Address::from(chain.owner.address())
    );
}

#[tokio::test]
async fn owner_upgrades_app_until_upgrades_are_disabled() {
    let chain = deployed().await;
    let app = chain.app(false, false).await;
    let v2 = *DstackAppV2::deploy(chain.owner.provider())
        .await
        .unwrap()
        .address();

    assert_not_owner(chain.stranger.upgrade(app, v2.0.0).await);
    let r = chain.owner.upgrade(app, v2.0.0).await.unwrap();
    assert_eq!(event::<DstackAppV2::Upgraded>(&r).implementation, v2);
    let upgraded = DstackAppV2::new(Address::from(app), chain.owner.provider());
    assert_eq!(
        upgraded.upgradeMarker().call().await.unwrap(),
        "DstackAppV2"
    );
    assert!(
        upgraded
            .allowedComposeHashes(B256::from(COMPOSE))
            .call()
            .await
            .unwrap()
    );
    let auth = ChainAuth::new(chain.anvil.rpc_url(), chain.kms.kms).unwrap();
    assert!(auth.is_app_allowed(&boot(app)).await.unwrap().allowed);

    chain.owner.disable_upgrades(app).await.unwrap();
    let v3 = chain.owner.deploy_app_implementation().await.unwrap();
    assert_reverted(
        chain.owner.upgrade(app, v3).await,
        "Upgrades are permanently disabled",
    );
    assert_eq!(
        upgraded.upgradeMarker().call().await.unwrap(),
        "DstackAppV2"
    );
}

#[tokio::test]
async fn apps_deployed_frozen_cannot_be_upgraded() {
    let chain = deployed().await;
    chain
        .owner
        .add_os_image_hash(chain.kms.kms, OS)
        .await
        .unwrap();
    let new = dstack_contracts::admin::NewApp {
        owner: chain.owner.address(),
        disable_upgrades: true,
        allow_any_device: true,
        compose_hash: COMPOSE,
        ..Default::default()
    };
    let app = chain
        .owner
        .deploy_and_register_app(chain.kms.kms, &new)
        .await
        .unwrap();
    let v2 = *DstackAppV2::deploy(chain.owner.provider())
        .await
        .unwrap()
        .address();
    assert_reverted(
        chain.owner.upgrade(app, v2.0.0).await,
        "Upgrades are permanently disabled",
    );
}

#[tokio::test]
async fn upgrade_to_a_non_uups_contract_is_refused() {
    // OpenZeppelin's proxiableUUID check stops a proxy from being bricked.
    let chain = deployed().await;
    let k = chain.kms.kms;
    assert_reverted(
        chain.owner.upgrade(k, chain.kms.kms).await,
        "ERC1967InvalidImplementation",
    );
}
