//! DstackKms (KmsAuth): every state-changing function by its owner (succeeds,
//! emits its events) and by a stranger (reverts), and `isKmsAllowed` /
//! `isAppAllowed` verdicts.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests
mod common;

use common::*;
use dstack_contracts::ChainAuth;
use dstack_contracts::admin::{KmsInfo, NewApp};
use dstack_contracts::alloy::primitives::{Address, B256, Bytes, keccak256};
use dstack_contracts::alloy::sol_types::SolCall;
use dstack_contracts::bindings::kms::DstackKms;

fn kms_contract(
    chain: &Chain,
) -> DstackKms::DstackKmsInstance<&dstack_contracts::alloy::providers::DynProvider> {
    DstackKms::new(Address::from(chain.kms.kms), chain.owner.provider())
}

#[tokio::test]
async fn deploy_sets_owner_and_app_implementation() {
    let chain = deployed().await;
    let kms = kms_contract(&chain);
    assert_eq!(
        kms.owner().call().await.unwrap(),
        Address::from(chain.owner.address())
    );
    let auth = ChainAuth::new(chain.anvil.rpc_url(), chain.kms.kms).unwrap();
    assert_eq!(
        auth.app_implementation().await.unwrap(),
        chain.kms.app_implementation
    );
    assert_eq!(auth.chain_id().await.unwrap(), 31337);
    assert_eq!(auth.gateway_app_id().await.unwrap(), "");
    // The proxy is initialised once; the implementation never.
    let again = kms.initialize(Address::from(chain.stranger.address()), Address::ZERO);
    assert_reverted(
        chain.owner.send("initialize", chain.kms.kms, again).await,
        "InvalidInitialization",
    );
    let imp = DstackKms::new(
        Address::from(chain.kms.kms_implementation),
        chain.owner.provider(),
    );
    let direct = imp.initialize(Address::from(chain.stranger.address()), Address::ZERO);
    assert_reverted(
        chain
            .owner
            .send("initialize", chain.kms.kms_implementation, direct)
            .await,
        "InvalidInitialization",
    );
}

#[tokio::test]
async fn os_image_allow_list_is_owner_only() {
    let chain = deployed().await;
    let k = chain.kms.kms;
    let kms = kms_contract(&chain);
    let h = B256::from(OS);

    assert_not_owner(chain.stranger.add_os_image_hash(k, OS).await);
    assert!(!kms.allowedOsImages(h).call().await.unwrap());
    let r = chain.owner.add_os_image_hash(k, OS).await.unwrap();
    assert_eq!(event::<DstackKms::OsImageHashAdded>(&r).osImageHash, h);
    let p = event::<DstackKms::PolicyChanged>(&r);
    assert_eq!(
        (p.actor, p.policy, p.value, p.enabled),
        (
            Address::from(chain.owner.address()),
            policy("os-image"),
            h,
            true
        )
    );
    assert!(kms.allowedOsImages(h).call().await.unwrap());

    assert_not_owner(chain.stranger.remove_os_image_hash(k, OS).await);
    assert!(kms.allowedOsImages(h).call().await.unwrap());
    let r = chain.owner.remove_os_image_hash(k, OS).await.unwrap();
    assert_eq!(event::<DstackKms::OsImageHashRemoved>(&r).osImageHash, h);
    let p = event::<DstackKms::PolicyChanged>(&r);
    assert_eq!(
        (p.policy, p.value, p.enabled),
        (policy("os-image"), h, false)
    );
    assert!(!kms.allowedOsImages(h).call().await.unwrap());
}

#[tokio::test]
async fn kms_aggregated_mr_allow_list_is_owner_only() {
    let chain = deployed().await;
    let k = chain.kms.kms;
    let kms = kms_contract(&chain);
    let h = B256::from(MR);

    assert_not_owner(chain.stranger.add_kms_aggregated_mr(k, MR).await);
    let r = chain.owner.add_kms_aggregated_mr(k, MR).await.unwrap();
    assert_eq!(event::<DstackKms::KmsAggregatedMrAdded>(&r).mrAggregated, h);
    let p = event::<DstackKms::PolicyChanged>(&r);
    assert_eq!(
        (p.policy, p.value, p.enabled),
        (policy("kms-aggregated-mr"), h, true)
    );
    assert!(kms.kmsAllowedAggregatedMrs(h).call().await.unwrap());

    assert_not_owner(chain.stranger.remove_kms_aggregated_mr(k, MR).await);
    let r = chain.owner.remove_kms_aggregated_mr(k, MR).await.unwrap();
    assert_eq!(
        event::<DstackKms::KmsAggregatedMrRemoved>(&r).mrAggregated,
        h
    );
    let p = event::<DstackKms::PolicyChanged>(&r);
    assert_eq!(
        (p.policy, p.value, p.enabled),
        (policy("kms-aggregated-mr"), h, false)
    );
    assert!(!kms.kmsAllowedAggregatedMrs(h).call().await.unwrap());
}

#[tokio::test]
async fn kms_device_allow_list_is_owner_only() {
    let chain = deployed().await;
    let k = chain.kms.kms;
    let kms = kms_contract(&chain);
    let h = B256::from(DEVICE);

    assert_not_owner(chain.stranger.add_kms_device(k, DEVICE).await);
    let r = chain.owner.add_kms_device(k, DEVICE).await.unwrap();
    assert_eq!(event::<DstackKms::KmsDeviceAdded>(&r).deviceId, h);
    let p = event::<DstackKms::PolicyChanged>(&r);
    assert_eq!(
        (p.policy, p.value, p.enabled),
        (policy("kms-device"), h, true)
    );
    assert!(kms.kmsAllowedDeviceIds(h).call().await.unwrap());

    assert_not_owner(chain.stranger.remove_kms_device(k, DEVICE).await);
    let r = chain.owner.remove_kms_device(k, DEVICE).await.unwrap();
    assert_eq!(event::<DstackKms::KmsDeviceRemoved>(&r).deviceId, h);
    let p = event::<DstackKms::PolicyChanged>(&r);
    assert_eq!(
        (p.policy, p.value, p.enabled),
        (policy("kms-device"), h, false)
    );
    assert!(!kms.kmsAllowedDeviceIds(h).call().await.unwrap());
}

#[tokio::test]
async fn kms_info_quote_and_eventlog_are_owner_only() {
    let chain = deployed().await;
    let k = chain.kms.kms;
    let kms = kms_contract(&chain);
    let info = KmsInfo {
        k256_pubkey: vec![2; 33],
        ca_pubkey: vec![3; 65],
        quote: vec![4; 100],
        eventlog: b"[]".to_vec(),
    };

    assert_not_owner(chain.stranger.set_kms_info(k, &info).await);
    let r = chain.owner.set_kms_info(k, &info).await.unwrap();
    assert_eq!(
        event::<DstackKms::KmsInfoSet>(&r).k256Pubkey,
        Bytes::from(info.k256_pubkey.clone())
    );
    let p = event::<DstackKms::PolicyChanged>(&r);
    assert_eq!(
        (p.policy, p.value, p.enabled),
        (policy("kms-info"), keccak256(&info.k256_pubkey), true)
    );
    let stored = kms.kmsInfo().call().await.unwrap();
    assert_eq!(stored.caPubkey, Bytes::from(info.ca_pubkey.clone()));
    assert_eq!(stored.quote, Bytes::from(info.quote.clone()));

    let as_stranger = DstackKms::new(Address::from(k), chain.stranger.provider());
    assert_not_owner(
        chain
            .stranger
            .send(
                "setKmsQuote",
                k,
                as_stranger.setKmsQuote(Bytes::from(vec![9; 8])),
            )
            .await,
    );
    let r = chain
        .owner
        .send("setKmsQuote", k, kms.setKmsQuote(Bytes::from(vec![9; 8])))
        .await
        .unwrap();
    assert!(
        r.inner.logs().is_empty(),
        "setKmsQuote emits nothing upstream either"
    );
    assert_not_owner(
        chain
            .stranger
            .send(
                "setKmsEventlog",
                k,
                as_stranger.setKmsEventlog(Bytes::from(vec![8; 8])),
            )
            .await,
    );
    chain
        .owner
        .send(
            "setKmsEventlog",
            k,
            kms.setKmsEventlog(Bytes::from(vec![8; 8])),
        )
        .await
        .unwrap();
    let stored = kms.kmsInfo().call().await.unwrap();
    assert_eq!(stored.quote, Bytes::from(vec![9; 8]));
    assert_eq!(stored.eventlog, Bytes::from(vec![8; 8]));
    assert_eq!(stored.k256Pubkey, Bytes::from(info.k256_pubkey));
}

#[tokio::test]
async fn gateway_app_id_is_owner_only() {
    let chain = deployed().await;
    let k = chain.kms.kms;
    let id = "fa1d7e1d6a9b4f8ce5a7f3c2b1d0e9f8a7b6c5d4";
    assert_not_owner(chain.stranger.set_gateway_app_id(k, id).await);
    let r = chain.owner.set_gateway_app_id(k, id).await.unwrap();
    assert_eq!(event::<DstackKms::GatewayAppIdSet>(&r).gatewayAppId, id);
    let p = event::<DstackKms::PolicyChanged>(&r);
    assert_eq!(
        (p.policy, p.value, p.enabled),
        (policy("gateway-app-id"), keccak256(id.as_bytes()), true)
    );
    let auth = ChainAuth::new(chain.anvil.rpc_url(), k).unwrap();
    assert_eq!(auth.gateway_app_id().await.unwrap(), id);
}

#[tokio::test]
async fn app_implementation_is_owner_only() {
    let chain = deployed().await;
    let k = chain.kms.kms;
    let new_impl = chain.owner.deploy_app_implementation().await.unwrap();
    assert_not_owner(chain.stranger.set_app_implementation(k, new_impl).await);
    assert_reverted(
        chain.owner.set_app_implementation(k, [0; 20]).await,
        "Invalid implementation address",
    );
    let r = chain
        .owner
        .set_app_implementation(k, new_impl)
        .await
        .unwrap();
    assert_eq!(
        event::<DstackKms::AppImplementationSet>(&r).implementation,
        Address::from(new_impl)
    );
    let p = event::<DstackKms::PolicyChanged>(&r);
    assert_eq!(
        (p.policy, p.value, p.enabled),
        (policy("app-implementation"), word(new_impl), true)
    );
    let auth = ChainAuth::new(chain.anvil.rpc_url(), k).unwrap();
    assert_eq!(auth.app_implementation().await.unwrap(), new_impl);
}

#[tokio::test]
async fn register_app_is_open_to_anyone_but_not_for_zero() {
    // Upstream keeps registration permissionless: it grants nothing without
    // an allowed OS image and the app contract's own approval.
    let chain = deployed().await;
    let k = chain.kms.kms;
    let someone = [0x42; 20];
    let r = chain.stranger.register_app(k, someone).await.unwrap();
    assert_eq!(
        event::<DstackKms::AppRegistered>(&r).appId,
        Address::from(someone)
    );
    let p = event::<DstackKms::PolicyChanged>(&r);
    assert_eq!(
        (p.actor, p.policy, p.value, p.enabled),
        (
            Address::from(chain.stranger.address()),
            policy("registered-app"),
            word(someone),
            true
        )
    );
    assert!(
        ChainAuth::new(chain.anvil.rpc_url(), k)
            .unwrap()
            .is_registered_app(someone)
            .await
            .unwrap()
    );
    assert_reverted(chain.owner.register_app(k, [0; 20]).await, "Invalid app ID");
}

#[tokio::test]
async fn factory_deploys_registers_and_initialises_apps() {
    let chain = deployed().await;
    let k = chain.kms.kms;
    // Open to anyone, like registerApp: the deployer need not be the KMS owner.
    let new = NewApp {
        owner: chain.stranger.address(),
        require_tcb_up_to_date: true,
        compose_hash: COMPOSE,
        ..NewApp::default()
    };
    let app = chain
        .stranger
        .deploy_and_register_app(k, &new)
        .await
        .unwrap();
    let auth = ChainAuth::new(chain.anvil.rpc_url(), k).unwrap();
    assert!(auth.is_registered_app(app).await.unwrap());
    let a =
        dstack_contracts::bindings::app::DstackApp::new(Address::from(app), chain.owner.provider());
    assert_eq!(
        a.owner().call().await.unwrap(),
        Address::from(chain.stranger.address())
    );
    assert!(a.requireTcbUpToDate().call().await.unwrap());
    assert!(
        a.allowedComposeHashes(B256::from(COMPOSE))
            .call()
            .await
            .unwrap()
    );
    // Zero device id means "no initial device".
    assert!(!a.allowedDeviceIds(B256::ZERO).call().await.unwrap());

    assert_reverted(
        chain
            .owner
            .deploy_and_register_app(k, &NewApp::default())
            .await,
        "Invalid owner address",
    );
}

#[tokio::test]
async fn factory_events_and_legacy_overload() {
    let chain = deployed().await;
    let k = chain.kms.kms;
    let kms = kms_contract(&chain);
    assert_eq!(
        DstackKms::deployAndRegisterApp_0Call::SIGNATURE,
        "deployAndRegisterApp(address,bool,bool,bytes32,bytes32)"
    );
    assert_eq!(
        DstackKms::deployAndRegisterApp_1Call::SIGNATURE,
        "deployAndRegisterApp(address,bool,bool,bool,bytes32,bytes32)"
    );
    let owner = Address::from(chain.owner.address());
    let call = kms.deployAndRegisterApp_0(owner, false, true, B256::ZERO, B256::from(COMPOSE));
    let r = chain
        .owner
        .send("deployAndRegisterApp", k, call)
        .await
        .unwrap();
    let deployed = event::<DstackKms::AppDeployedViaFactory>(&r);
    assert_eq!(deployed.deployer, owner);
    assert_eq!(event::<DstackKms::AppRegistered>(&r).appId, deployed.appId);
    let a = dstack_contracts::bindings::app::DstackApp::new(deployed.appId, chain.owner.provider());
    assert!(
        !a.requireTcbUpToDate().call().await.unwrap(),
        "legacy overload leaves the TCB flag off"
    );
    assert!(a.allowAnyDevice().call().await.unwrap());
    assert_eq!(
        a.version().call().await.unwrap(),
        dstack_contracts::alloy::primitives::U256::from(2)
    );

    // Without an app implementation the factory refuses.
    let bare = chain.owner.deploy_proxy(
        chain.kms.kms_implementation,
        SolCall::abi_encode(&DstackKms::initializeCall {
            initialOwner: owner,
            _appImplementation: Address::ZERO,
        }),
    );
    let bare = bare.await.unwrap();
    let app = NewApp {
        owner: chain.owner.address(),
        ..NewApp::default()
    };
    assert_reverted(
        chain.owner.deploy_and_register_app(bare, &app).await,
        "DstackApp implementation not set",
    );
}

#[tokio::test]
async fn is_kms_allowed_checks_tcb_then_image_then_mr_then_device() {
    let chain = deployed().await;
    let k = chain.kms.kms;
    let auth = ChainAuth::new(chain.anvil.rpc_url(), k).unwrap();
    let mut b = boot([0; 20]);
    let verdict = |v: dstack_contracts::Verdict| (v.allowed, v.reason);

    b.tcb_status = "OutOfDate".into();
    assert_eq!(
        verdict(auth.is_kms_allowed(&b).await.unwrap()),
        (false, "TCB status is not up to date".into())
    );
    b.tcb_status = "UpToDate".into();
    assert_eq!(
        verdict(auth.is_kms_allowed(&b).await.unwrap()),
        (false, "OS image is not allowed".into())
    );
    chain.owner.add_os_image_hash(k, OS).await.unwrap();
    assert_eq!(
        verdict(auth.is_kms_allowed(&b).await.unwrap()),
        (false, "Aggregated MR not allowed".into())
    );
    chain.owner.add_kms_aggregated_mr(k, MR).await.unwrap();
    assert_eq!(
        verdict(auth.is_kms_allowed(&b).await.unwrap()),
        (false, "KMS is not allowed to boot on this device".into())
    );
    chain.owner.add_kms_device(k, DEVICE).await.unwrap();
    assert_eq!(
        verdict(auth.is_kms_allowed(&b).await.unwrap()),
        (true, String::new())
    );
    // Even an allowed KMS is refused on a platform that needs TCB updates.
    b.tcb_status = "SWHardeningNeeded".into();
    assert!(!auth.is_kms_allowed(&b).await.unwrap().allowed);
}

#[tokio::test]
async fn is_app_allowed_checks_registration_image_code_then_app() {
    let chain = deployed().await;
    let k = chain.kms.kms;
    let auth = ChainAuth::new(chain.anvil.rpc_url(), k).unwrap();
    let verdict = |v: dstack_contracts::Verdict| (v.allowed, v.reason);

    let unregistered = boot([0x77; 20]);
    assert_eq!(
        verdict(auth.is_app_allowed(&unregistered).await.unwrap()),
        (false, "App not registered".into())
    );

    let app = chain.app(false, false).await;
    let mut b = boot(app);
    assert_eq!(
        verdict(auth.is_app_allowed(&b).await.unwrap()),
        (true, String::new())
    );

    b.os_image_hash = [0x06; 32];
    assert_eq!(
        verdict(auth.is_app_allowed(&b).await.unwrap()),
        (false, "OS image is not allowed".into())
    );
    chain.owner.remove_os_image_hash(k, OS).await.unwrap();
    b.os_image_hash = OS;
    assert_eq!(
        verdict(auth.is_app_allowed(&b).await.unwrap()),
        (false, "OS image is not allowed".into())
    );
    chain.owner.add_os_image_hash(k, OS).await.unwrap();

    // Registered, but no code at the address.
    let eoa = [0x78; 20];
    chain.stranger.register_app(k, eoa).await.unwrap();
    assert_eq!(
        verdict(auth.is_app_allowed(&boot(eoa)).await.unwrap()),
        (false, "App not deployed or invalid address".into())
    );

    // The app's own policy answers last.
    b.compose_hash = [0xc1; 32];
    assert_eq!(
        verdict(auth.is_app_allowed(&b).await.unwrap()),
        (false, "Compose hash not allowed".into())
    );
}

#[tokio::test]
async fn ownership_moves_in_two_steps() {
    let chain = deployed().await;
    let k = chain.kms.kms;
    let kms = kms_contract(&chain);
    let stranger = Address::from(chain.stranger.address());
    assert_not_owner(
        chain
            .stranger
            .transfer_ownership(k, chain.stranger.address())
            .await,
    );
    let r = chain
        .owner
        .transfer_ownership(k, chain.stranger.address())
        .await
        .unwrap();
    let started = event::<DstackKms::OwnershipTransferStarted>(&r);
    assert_eq!(
        (started.previousOwner, started.newOwner),
        (Address::from(chain.owner.address()), stranger)
    );
    // Until accepted, the old owner still governs.
    assert_eq!(
        kms.owner().call().await.unwrap(),
        Address::from(chain.owner.address())
    );
    let r = chain.stranger.accept_ownership(k).await.unwrap();
    assert_eq!(
        event::<DstackKms::OwnershipTransferred>(&r).newOwner,
        stranger
    );
    assert_eq!(kms.owner().call().await.unwrap(), stranger);
    assert_not_owner(chain.owner.add_os_image_hash(k, OS).await);
    chain.stranger.add_os_image_hash(k, OS).await.unwrap();
    // Only the owner may walk away from the contract.
    assert_not_owner(
        chain
            .owner
            .send("renounceOwnership", k, kms.renounceOwnership())
            .await,
    );
}
