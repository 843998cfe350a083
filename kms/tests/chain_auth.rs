//! The on-chain backend against a real anvil: the owner changes the
//! contracts and the KMS's next decision follows.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dstack_attest::{
    Platform, QuoteVerifier, RuntimeEvent, SimAuthority, SimPlatform, SimTdIdentity,
};
use dstack_contracts::admin::{Admin, KmsDeployment, NewApp};
use dstack_contracts::alloy::primitives::Address;
use dstack_contracts::anvil::Anvil;
use dstack_kms::auth::{AuthBackend, AuthError, ChainBackend};
use dstack_kms::keystore::RootKeys;
use dstack_kms::{Kms, KmsError};
use dstack_proto::kms::{BootInfo, GetAppKeyRequest};
use dstack_ra_tls::{CertRequest, RaTlsCert, RaTlsVerifier};

const OS: [u8; 32] = [0x05; 32];
const COMPOSE: [u8; 32] = [0xc0; 32];
const NEXT_COMPOSE: [u8; 32] = [0xc1; 32];
const KMS_MR: [u8; 32] = [0xa9; 32];
const KMS_DEVICE: [u8; 32] = [0xde; 32];

struct Chain {
    // Kept alive for the test: dropping it stops anvil.
    anvil: Anvil,
    owner: Admin,
    kms: KmsDeployment,
    app_id: [u8; 20],
    auth: AuthBackend,
}

/// Anvil, KmsAuth deployed, one OS image, one app with one compose hash
/// (any device), one KMS MR and device, the gateway app id set; and a KMS
/// backend built from its spec, as the binary builds it.
async fn chain() -> Chain {
    let anvil = Anvil::start().unwrap_or_else(|e| panic!("{e}"));
    let owner = Admin::connect(anvil.rpc_url(), anvil.dev_key()).unwrap();
    let kms = owner.deploy_kms().await.unwrap();
    owner.add_os_image_hash(kms.kms, OS).await.unwrap();
    owner.add_kms_aggregated_mr(kms.kms, KMS_MR).await.unwrap();
    owner.add_kms_device(kms.kms, KMS_DEVICE).await.unwrap();
    owner.set_gateway_app_id(kms.kms, "gw-app").await.unwrap();
    let app = NewApp {
        owner: owner.address(),
        allow_any_device: true,
        compose_hash: COMPOSE,
        ..NewApp::default()
    };
    let app_id = owner.deploy_and_register_app(kms.kms, &app).await.unwrap();
    let spec = format!(
        "chain:{}#{}",
        anvil.rpc_url(),
        Address::from(kms.kms).to_checksum(None)
    );
    let auth = AuthBackend::from_spec(&spec).unwrap();
    Chain {
        anvil,
        owner,
        kms,
        app_id,
        auth,
    }
}

fn boot(app_id: [u8; 20], compose_hash: [u8; 32]) -> BootInfo {
    BootInfo {
        tee_variant: "dstack-tdx".into(),
        mr_aggregated: KMS_MR.to_vec(),
        os_image_hash: OS.to_vec(),
        mr_system: vec![0x55; 32],
        app_id: app_id.to_vec(),
        compose_hash: compose_hash.to_vec(),
        instance_id: vec![0x11; 20],
        device_id: KMS_DEVICE.to_vec(),
        tcb_status: "UpToDate".into(),
        ..BootInfo::default()
    }
}

#[tokio::test]
async fn app_versions_follow_the_contract() {
    let c = chain().await;
    let verdict = c
        .auth
        .decide(&boot(c.app_id, COMPOSE), false)
        .await
        .unwrap();
    assert!(verdict.is_allowed, "{verdict:?}");
    assert_eq!(verdict.gateway_app_id, "gw-app");

    // A compose hash the owner never added: the app contract's reason.
    let verdict = c
        .auth
        .decide(&boot(c.app_id, NEXT_COMPOSE), false)
        .await
        .unwrap();
    assert!(!verdict.is_allowed);
    assert_eq!(verdict.reason, "Compose hash not allowed");

    // An upgrade: the new version is allowed once added.
    c.owner
        .add_compose_hash(c.app_id, NEXT_COMPOSE)
        .await
        .unwrap();
    let verdict = c
        .auth
        .decide(&boot(c.app_id, NEXT_COMPOSE), false)
        .await
        .unwrap();
    assert!(verdict.is_allowed, "{verdict:?}");

    // Removing the old version refuses its next boot.
    c.owner
        .remove_compose_hash(c.app_id, COMPOSE)
        .await
        .unwrap();
    let verdict = c
        .auth
        .decide(&boot(c.app_id, COMPOSE), false)
        .await
        .unwrap();
    assert!(!verdict.is_allowed);
    assert_eq!(verdict.reason, "Compose hash not allowed");

    // The KMS contract's own checks come first.
    let verdict = c
        .auth
        .decide(&boot([0x77; 20], NEXT_COMPOSE), false)
        .await
        .unwrap();
    assert_eq!(verdict.reason, "App not registered");
    let mut other_os = boot(c.app_id, NEXT_COMPOSE);
    other_os.os_image_hash = vec![0x06; 32];
    let verdict = c.auth.decide(&other_os, false).await.unwrap();
    assert_eq!(verdict.reason, "OS image is not allowed");
    // No instance id is the zero address, not a refusal.
    let mut no_instance = boot(c.app_id, NEXT_COMPOSE);
    no_instance.instance_id.clear();
    assert!(c.auth.decide(&no_instance, false).await.unwrap().is_allowed);
}

#[tokio::test]
async fn wrong_lengths_are_refused_naming_the_field() {
    let c = chain().await;
    // A 31-byte compose hash that auth-eth would pad into a different value.
    let mut short = boot(c.app_id, COMPOSE);
    short.compose_hash.truncate(31);
    let verdict = c.auth.decide(&short, false).await.unwrap();
    assert!(!verdict.is_allowed);
    assert_eq!(verdict.reason, "compose_hash must be 32 bytes, got 31");
    let mut long = boot(c.app_id, COMPOSE);
    long.app_id.push(0);
    let verdict = c.auth.decide(&long, true).await.unwrap();
    assert_eq!(verdict.reason, "app_id must be 20 bytes, got 21");
}

#[tokio::test]
async fn kms_replicas_need_an_allowed_mr_device_and_up_to_date_tcb() {
    let c = chain().await;
    let replica = boot(c.app_id, COMPOSE);
    let verdict = c.auth.decide(&replica, true).await.unwrap();
    assert!(verdict.is_allowed, "{verdict:?}");

    let mut stale = replica.clone();
    stale.tcb_status = "OutOfDate".into();
    let verdict = c.auth.decide(&stale, true).await.unwrap();
    assert_eq!(verdict.reason, "TCB status is not up to date");

    let mut other_mr = replica.clone();
    other_mr.mr_aggregated = vec![0xaa; 32];
    let verdict = c.auth.decide(&other_mr, true).await.unwrap();
    assert_eq!(verdict.reason, "Aggregated MR not allowed");

    let mut other_device = replica.clone();
    other_device.device_id = vec![0xdf; 32];
    let verdict = c.auth.decide(&other_device, true).await.unwrap();
    assert_eq!(verdict.reason, "KMS is not allowed to boot on this device");

    // The owner withdraws the MR: the same replica is refused next time.
    c.owner
        .remove_kms_aggregated_mr(c.kms.kms, KMS_MR)
        .await
        .unwrap();
    let verdict = c.auth.decide(&replica, true).await.unwrap();
    assert_eq!(verdict.reason, "Aggregated MR not allowed");
}

#[tokio::test]
async fn info_reads_the_contract() {
    let c = chain().await;
    let info = c.auth.info().await.unwrap();
    assert!(!info.is_dev);
    assert_eq!(info.gateway_app_id.as_deref(), Some("gw-app"));
    assert_eq!(info.chain_id, Some(31337));
    assert_eq!(
        info.kms_contract_address,
        Some(Address::from(c.kms.kms).to_checksum(None))
    );
    assert_eq!(
        info.app_implementation,
        Some(Address::from(c.kms.app_implementation).to_checksum(None))
    );
    drop(c.anvil);
}

#[tokio::test]
async fn unreachable_rpc_is_a_backend_error() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/SECRET-API-KEY");
    let auth = AuthBackend::Chain(
        ChainBackend::new(&url, [1; 20])
            .unwrap()
            .with_timeout(Duration::from_secs(3)),
    );
    for result in [
        auth.decide(&boot([2; 20], COMPOSE), false).await.map(drop),
        auth.info().await.map(drop),
    ] {
        match result {
            Err(AuthError::Backend {
                backend: "chain",
                reason,
            }) => {
                assert!(
                    reason.contains(&format!("http://127.0.0.1:{port}")),
                    "{reason}"
                );
                assert!(!reason.contains("SECRET-API-KEY"), "{reason}");
            }
            other => panic!("expected a chain Backend error, got {other:?}"),
        }
    }
}

/// A simulated app booted with `app_id` and `compose_hash`, measured as
/// dstack-init measures them.
fn sim_app(authority: &Arc<SimAuthority>, app_id: [u8; 20], compose_hash: [u8; 32]) -> SimPlatform {
    let td = SimPlatform::new(authority.clone(), SimTdIdentity::default(), vec![]).unwrap();
    for (name, payload) in [
        ("system-preparing", vec![]),
        ("app-id", app_id.to_vec()),
        ("compose-hash", compose_hash.to_vec()),
        ("instance-id", vec![0x1d; 20]),
        ("boot-mr-done", vec![]),
        ("key-provider", br#"{"name":"kms","id":""}"#.to_vec()),
    ] {
        td.emit_event(&RuntimeEvent {
            name: name.into(),
            payload,
        })
        .unwrap();
    }
    td
}

fn client_cert(td: &SimPlatform) -> Vec<u8> {
    let mut request = CertRequest::new("dstack-guest-agent");
    request.server_auth = false;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // A minute back, as the guest's client does: a test may judge at a
    // `now` taken just before this second began.
    request.not_before = Some(i64::try_from(now).unwrap() - 60);
    RaTlsCert::issue(td, &request, None).unwrap().cert_der
}

#[tokio::test]
async fn a_kms_releases_keys_only_while_the_contract_allows_the_app() {
    let c = chain().await;
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = sim_app(&authority, c.app_id, COMPOSE);
    let verifier = RaTlsVerifier::new(QuoteVerifier::new(authority.root_der().to_vec()))
        .with_collateral(td.collateral().unwrap().unwrap());
    let kms = Kms::new(RootKeys::generate().unwrap(), verifier, c.auth).unwrap();
    let request = GetAppKeyRequest {
        api_version: 1,
        vm_config: format!(r#"{{"os_image_hash":"{}"}}"#, hex::encode(OS)),
    };

    let keys = kms
        .get_app_key(Some(&client_cert(&td)), &request, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(keys.gateway_app_id, "gw-app");

    c.owner
        .remove_compose_hash(c.app_id, COMPOSE)
        .await
        .unwrap();
    let err = kms
        .get_app_key(Some(&client_cert(&td)), &request, SystemTime::now())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, KmsError::Denied { reason } if reason == "Compose hash not allowed"),
        "{err}"
    );

    // GetMeta publishes what the contract says.
    let meta = kms.get_meta().await.unwrap();
    assert_eq!(meta.chain_id, Some(31337));
    assert_eq!(meta.gateway_app_id.as_deref(), Some("gw-app"));
    assert!(!meta.is_dev);
}
