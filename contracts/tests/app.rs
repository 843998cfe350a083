//! DstackApp (AppAuth): every state-changing function by its owner and by a
//! stranger, the app's own boot policy, and ERC-165.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests
mod common;

use common::*;
use dstack_contracts::ChainAuth;
use dstack_contracts::alloy::primitives::{Address, B256, FixedBytes};
use dstack_contracts::alloy::providers::DynProvider;
use dstack_contracts::alloy::sol_types::SolCall;
use dstack_contracts::bindings::app::{DstackApp, IAppAuth};

fn app_contract(chain: &Chain, app: [u8; 20]) -> DstackApp::DstackAppInstance<&DynProvider> {
    DstackApp::new(Address::from(app), chain.owner.provider())
}

#[tokio::test]
async fn compose_hash_allow_list_is_owner_only() {
    let chain = deployed().await;
    let app = chain.app(false, false).await;
    let a = app_contract(&chain, app);
    let h = [0xc2; 32];

    assert_not_owner(chain.stranger.add_compose_hash(app, h).await);
    assert!(!a.allowedComposeHashes(B256::from(h)).call().await.unwrap());
    let r = chain.owner.add_compose_hash(app, h).await.unwrap();
    assert_eq!(
        event::<DstackApp::ComposeHashAdded>(&r).composeHash,
        B256::from(h)
    );
    let p = event::<DstackApp::PolicyChanged>(&r);
    assert_eq!(
        (p.actor, p.policy, p.value, p.enabled),
        (
            Address::from(chain.owner.address()),
            policy("compose-hash"),
            B256::from(h),
            true
        )
    );
    assert!(a.allowedComposeHashes(B256::from(h)).call().await.unwrap());

    assert_not_owner(chain.stranger.remove_compose_hash(app, h).await);
    let r = chain.owner.remove_compose_hash(app, h).await.unwrap();
    assert_eq!(
        event::<DstackApp::ComposeHashRemoved>(&r).composeHash,
        B256::from(h)
    );
    let p = event::<DstackApp::PolicyChanged>(&r);
    assert_eq!(
        (p.policy, p.value, p.enabled),
        (policy("compose-hash"), B256::from(h), false)
    );
    assert!(!a.allowedComposeHashes(B256::from(h)).call().await.unwrap());
}

#[tokio::test]
async fn device_allow_list_is_owner_only() {
    let chain = deployed().await;
    let app = chain.app(false, false).await;
    let a = app_contract(&chain, app);
    let d = [0xd1; 32];

    assert_not_owner(chain.stranger.add_device(app, d).await);
    let r = chain.owner.add_device(app, d).await.unwrap();
    assert_eq!(event::<DstackApp::DeviceAdded>(&r).deviceId, B256::from(d));
    let p = event::<DstackApp::PolicyChanged>(&r);
    assert_eq!(
        (p.policy, p.value, p.enabled),
        (policy("device"), B256::from(d), true)
    );
    assert!(a.allowedDeviceIds(B256::from(d)).call().await.unwrap());

    assert_not_owner(chain.stranger.remove_device(app, d).await);
    let r = chain.owner.remove_device(app, d).await.unwrap();
    assert_eq!(
        event::<DstackApp::DeviceRemoved>(&r).deviceId,
        B256::from(d)
    );
    let p = event::<DstackApp::PolicyChanged>(&r);
    assert_eq!(
        (p.policy, p.value, p.enabled),
        (policy("device"), B256::from(d), false)
    );
    assert!(!a.allowedDeviceIds(B256::from(d)).call().await.unwrap());
}

#[tokio::test]
async fn flags_are_owner_only() {
    let chain = deployed().await;
    let app = chain.app(false, false).await;
    let a = app_contract(&chain, app);

    assert_not_owner(chain.stranger.set_allow_any_device(app, true).await);
    let r = chain.owner.set_allow_any_device(app, true).await.unwrap();
    assert!(event::<DstackApp::AllowAnyDeviceSet>(&r).allowAny);
    let p = event::<DstackApp::PolicyChanged>(&r);
    assert_eq!(
        (p.policy, p.value, p.enabled),
        (policy("allow-any-device"), B256::ZERO, true)
    );
    assert!(a.allowAnyDevice().call().await.unwrap());

    assert_not_owner(chain.stranger.set_require_tcb_up_to_date(app, true).await);
    let r = chain
        .owner
        .set_require_tcb_up_to_date(app, true)
        .await
        .unwrap();
    assert!(event::<DstackApp::RequireTcbUpToDateSet>(&r).requireUpToDate);
    let p = event::<DstackApp::PolicyChanged>(&r);
    assert_eq!(
        (p.policy, p.value, p.enabled),
        (policy("require-tcb-up-to-date"), B256::ZERO, true)
    );
    assert!(a.requireTcbUpToDate().call().await.unwrap());

    let r = chain
        .owner
        .set_require_tcb_up_to_date(app, false)
        .await
        .unwrap();
    assert!(!event::<DstackApp::RequireTcbUpToDateSet>(&r).requireUpToDate);
    assert!(!event::<DstackApp::PolicyChanged>(&r).enabled);

    let as_stranger = DstackApp::new(Address::from(app), chain.stranger.provider());
    let stranger = Address::from(chain.stranger.address());
    assert_not_owner(
        chain
            .stranger
            .send(
                "transferOwnership",
                app,
                as_stranger.transferOwnership(stranger),
            )
            .await,
    );
    assert_not_owner(
        chain
            .stranger
            .send("renounceOwnership", app, as_stranger.renounceOwnership())
            .await,
    );

    assert_not_owner(chain.stranger.disable_upgrades(app).await);
    let r = chain.owner.disable_upgrades(app).await.unwrap();
    assert_eq!(events::<DstackApp::UpgradesDisabled>(&r).len(), 1);
    let p = event::<DstackApp::PolicyChanged>(&r);
    assert_eq!(
        (p.policy, p.value, p.enabled),
        (policy("upgrades-disabled"), B256::ZERO, true)
    );
}

#[tokio::test]
async fn initialise_once_with_initial_hash_and_device_events() {
    let chain = deployed().await;
    let app = chain.app(false, false).await;
    let a = app_contract(&chain, app);
    let owner = Address::from(chain.owner.address());
    let again = a.initialize_1(owner, false, false, false, B256::ZERO, B256::ZERO);
    assert_reverted(
        chain.owner.send("initialize", app, again).await,
        "InvalidInitialization",
    );
    let legacy = a.initialize_0(owner, false, false, B256::ZERO, B256::ZERO);
    assert_reverted(
        chain.owner.send("initialize", app, legacy).await,
        "InvalidInitialization",
    );
    assert_eq!(
        DstackApp::initialize_0Call::SIGNATURE,
        "initialize(address,bool,bool,bytes32,bytes32)"
    );
    assert_eq!(
        DstackApp::initialize_1Call::SIGNATURE,
        "initialize(address,bool,bool,bool,bytes32,bytes32)"
    );

    // A factory deploy logs the initial device and compose hash.
    let kms = dstack_contracts::bindings::kms::DstackKms::new(
        Address::from(chain.kms.kms),
        chain.owner.provider(),
    );
    let call = kms.deployAndRegisterApp_1(
        owner,
        false,
        false,
        false,
        B256::from(DEVICE),
        B256::from(COMPOSE),
    );
    let r = chain
        .owner
        .send("deployAndRegisterApp", chain.kms.kms, call)
        .await
        .unwrap();
    assert_eq!(
        events::<DstackApp::DeviceAdded>(&r),
        vec![DstackApp::DeviceAdded {
            deviceId: B256::from(DEVICE)
        }]
    );
    assert_eq!(
        events::<DstackApp::ComposeHashAdded>(&r),
        vec![DstackApp::ComposeHashAdded {
            composeHash: B256::from(COMPOSE)
        }]
    );
    let policies: Vec<_> = events::<DstackApp::PolicyChanged>(&r)
        .into_iter()
        .map(|p| p.policy)
        .collect();
    assert_eq!(
        policies,
        vec![
            policy("device"),
            policy("compose-hash"),
            policy("registered-app")
        ]
    );
}

#[tokio::test]
async fn app_policy_compose_hash_device_and_tcb() {
    let chain = deployed().await;
    let app = chain.app(false, false).await;
    let auth = ChainAuth::new(chain.anvil.rpc_url(), chain.kms.kms).unwrap();
    let verdict = |v: dstack_contracts::Verdict| (v.allowed, v.reason);
    let mut b = boot(app);

    assert_eq!(
        verdict(auth.is_app_allowed(&b).await.unwrap()),
        (true, String::new())
    );
    // Without requireTcbUpToDate, an outdated TCB is the app's own risk.
    b.tcb_status = "OutOfDate".into();
    assert!(auth.is_app_allowed(&b).await.unwrap().allowed);
    chain
        .owner
        .set_require_tcb_up_to_date(app, true)
        .await
        .unwrap();
    assert_eq!(
        verdict(auth.is_app_allowed(&b).await.unwrap()),
        (false, "TCB status is not up to date".into())
    );
    b.tcb_status = "UpToDate".into();
    assert!(auth.is_app_allowed(&b).await.unwrap().allowed);

    chain.owner.remove_compose_hash(app, COMPOSE).await.unwrap();
    assert_eq!(
        verdict(auth.is_app_allowed(&b).await.unwrap()),
        (false, "Compose hash not allowed".into())
    );
    chain.owner.add_compose_hash(app, COMPOSE).await.unwrap();

    b.device_id = [0xdf; 32];
    assert_eq!(
        verdict(auth.is_app_allowed(&b).await.unwrap()),
        (false, "Device not allowed".into())
    );
    chain.owner.add_device(app, [0xdf; 32]).await.unwrap();
    assert!(auth.is_app_allowed(&b).await.unwrap().allowed);
    chain.owner.remove_device(app, [0xdf; 32]).await.unwrap();
    assert!(!auth.is_app_allowed(&b).await.unwrap().allowed);
    chain.owner.set_allow_any_device(app, true).await.unwrap();
    assert_eq!(
        verdict(auth.is_app_allowed(&b).await.unwrap()),
        (true, String::new())
    );

    // The app contract answers the same when asked directly.
    let a = app_contract(&chain, app);
    let direct = a
        .isAppAllowed(IAppAuth::AppBootInfo::from(&b))
        .call()
        .await
        .unwrap();
    assert!(direct.isAllowed);
}

#[tokio::test]
async fn erc165_ids_match_upstream() {
    let chain = deployed().await;
    let app = chain.app(true, false).await;
    let a = app_contract(&chain, app);
    let kms = dstack_contracts::bindings::kms::DstackKms::new(
        Address::from(chain.kms.kms),
        chain.owner.provider(),
    );
    let iapp_auth = FixedBytes::from([0x1e, 0x07, 0x91, 0x98]);
    let basic_management = FixedBytes::from([0x8f, 0xd3, 0x75, 0x27]);
    let erc165 = FixedBytes::from([0x01, 0xff, 0xc9, 0xa7]);
    // The interface id of a one-function interface is that function's selector.
    assert_eq!(DstackApp::isAppAllowedCall::SELECTOR, iapp_auth.0);
    for id in [iapp_auth, basic_management, erc165] {
        assert!(
            a.supportsInterface(id).call().await.unwrap(),
            "app lacks {id}"
        );
    }
    assert!(kms.supportsInterface(iapp_auth).call().await.unwrap());
    assert!(kms.supportsInterface(erc165).call().await.unwrap());
    assert!(
        !kms.supportsInterface(basic_management)
            .call()
            .await
            .unwrap()
    );
    assert!(
        !a.supportsInterface(FixedBytes::from([0xff; 4]))
            .call()
            .await
            .unwrap()
    );
}
