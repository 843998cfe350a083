//! `Inspector`: the allow-lists as the contracts hold them now, rebuilt
//! from events and confirmed against the mappings.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests
mod common;

use common::*;
use dstack_contracts::ChainError;
use dstack_contracts::alloy::providers::Provider;
use dstack_contracts::inspect::Inspector;

#[tokio::test]
async fn kms_lists_what_is_allowed_now() {
    let chain = deployed().await;
    let inspect = Inspector::new(chain.anvil.rpc_url()).unwrap();
    let kms = chain.kms.kms;

    let empty = inspect.kms(kms, 0).await.unwrap();
    assert_eq!(empty.owner, chain.owner.address());
    assert_eq!(empty.app_implementation, chain.kms.app_implementation);
    assert_eq!(empty.gateway_app_id, "");
    assert!(empty.os_image_hashes.is_empty() && empty.apps.is_empty());

    // The fixture app allows OS; a second image is added, removed, then
    // re-added after a third: the list is the state, in first-added order.
    let app = chain.app(true, false).await;
    let (second, third) = ([0x06; 32], [0x07; 32]);
    chain.owner.add_os_image_hash(kms, second).await.unwrap();
    chain.owner.remove_os_image_hash(kms, second).await.unwrap();
    chain.owner.add_os_image_hash(kms, third).await.unwrap();
    chain.owner.add_kms_aggregated_mr(kms, MR).await.unwrap();
    chain
        .owner
        .add_kms_aggregated_mr(kms, [0xaa; 32])
        .await
        .unwrap();
    chain
        .owner
        .remove_kms_aggregated_mr(kms, [0xaa; 32])
        .await
        .unwrap();
    chain.owner.add_kms_device(kms, DEVICE).await.unwrap();
    chain.owner.set_gateway_app_id(kms, "gw").await.unwrap();

    let state = inspect.kms(kms, 0).await.unwrap();
    assert_eq!(state.os_image_hashes, vec![OS, third]);
    assert_eq!(state.kms_aggregated_mrs, vec![MR]);
    assert_eq!(state.kms_devices, vec![DEVICE]);
    assert_eq!(state.apps, vec![app]);
    assert_eq!(state.gateway_app_id, "gw");

    chain.owner.add_os_image_hash(kms, second).await.unwrap();
    chain.owner.remove_kms_device(kms, DEVICE).await.unwrap();
    let state = inspect.kms(kms, 0).await.unwrap();
    assert_eq!(state.os_image_hashes, vec![OS, second, third]);
    assert!(state.kms_devices.is_empty());
}

#[tokio::test]
async fn app_lists_what_is_allowed_now() {
    let chain = deployed().await;
    let inspect = Inspector::new(chain.anvil.rpc_url()).unwrap();
    let app = chain.app(false, true).await;

    let state = inspect.app(app, 0).await.unwrap();
    assert_eq!(state.owner, chain.owner.address());
    assert!(!state.allow_any_device);
    assert!(state.require_tcb_up_to_date);
    assert_eq!(state.compose_hashes, vec![COMPOSE]);
    assert_eq!(state.devices, vec![DEVICE]);

    let v2 = [0xc2; 32];
    chain.owner.add_compose_hash(app, v2).await.unwrap();
    chain.owner.remove_compose_hash(app, COMPOSE).await.unwrap();
    chain.owner.remove_device(app, DEVICE).await.unwrap();
    chain.owner.set_allow_any_device(app, true).await.unwrap();
    let state = inspect.app(app, 0).await.unwrap();
    assert_eq!(state.compose_hashes, vec![v2]);
    assert!(state.devices.is_empty());
    assert!(state.allow_any_device);

    // Events from a later block only: what was added before it is not seen.
    let head = chain.owner.provider().get_block_number().await.unwrap();
    let v3 = [0xc3; 32];
    chain.owner.add_compose_hash(app, v3).await.unwrap();
    assert_eq!(
        inspect.app(app, head + 1).await.unwrap().compose_hashes,
        vec![v3]
    );
    assert_eq!(inspect.chain_id().await.unwrap(), 31337);
}

#[tokio::test]
async fn no_contract_is_named() {
    let chain = deployed().await;
    let inspect = Inspector::new(chain.anvil.rpc_url()).unwrap();
    let nobody = [0x42; 20];
    assert!(matches!(
        inspect.app(nobody, 0).await,
        Err(ChainError::NoContract { call: "owner", .. })
    ));
    assert!(matches!(
        inspect.kms(nobody, 0).await,
        Err(ChainError::NoContract { call: "owner", .. })
    ));
}
