//! Bootstrap and replica onboarding between KMSs that run as dstack apps:
//! each calls a real guest API (over the simulated TEE) for its sealing key
//! and evidence, the source serves over real HTTPS, and a replica copies
//! its keys only when the policy allows its boot as a KMS.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::sync::Arc;
use std::time::SystemTime;

use dstack_attest::{Platform, QuoteVerifier, SimAuthority};
use dstack_guest_api::testing::{SimBoot, SimGuest};
use dstack_guest_client::GuestClient;
use dstack_kms::auth::{AuthBackend, PolicyFile};
use dstack_kms::evidence::EvidenceChecker;
use dstack_kms::keystore::{KeyStore, KeyStoreError};
use dstack_kms::onboard::{OnboardError, Onboarding, bootstrap_report_data};
use dstack_kms::tee::Tee;
use dstack_kms::{Kms, KmsError};
use dstack_proto::kms::{BootstrapRequest, OnboardRequest};
use dstack_ra_tls::RaTlsVerifier;

const KMS_COMPOSE: &str = r#"{"name":"kms","no_instance_id":true,"runner":"docker-compose"}"#;

fn kms_boot(compose: &str) -> SimBoot {
    SimBoot {
        app_compose: compose.into(),
        instance_id: Vec::new(),
        key_provider_info: r#"{"name":"local","id":"00"}"#.into(),
        ..SimBoot::default()
    }
}

fn checker(authority: &SimAuthority, guest: &SimGuest) -> EvidenceChecker {
    EvidenceChecker::new(
        RaTlsVerifier::new(QuoteVerifier::new(authority.root_der().to_vec()))
            .with_collateral(guest.platform.collateral().unwrap().unwrap()),
    )
}

/// A policy allowing KMS boots with these aggregated MRs (any device and OS).
fn policy(mrs: &[Vec<u8>]) -> AuthBackend {
    let mrs: Vec<String> = mrs.iter().map(hex::encode).collect();
    AuthBackend::Policy(
        PolicyFile::parse(
            &serde_json::json!({
                "kms": { "mr_aggregated": mrs, "allow_any_device": true },
            })
            .to_string(),
        )
        .unwrap(),
    )
}

struct Node {
    _dir: tempfile::TempDir,
    guest: SimGuest,
    store: KeyStore,
}

async fn node(authority: &Arc<SimAuthority>, compose: &str) -> Node {
    let guest = SimGuest::start(authority.clone(), kms_boot(compose)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tee = Tee::Guest(GuestClient::new(&guest.dstack));
    let key = tee.seal_key().await.unwrap().unwrap();
    let store = KeyStore::open(dir.path()).unwrap().sealed_with(key);
    Node {
        _dir: dir,
        guest,
        store,
    }
}

fn onboarding(authority: &SimAuthority, node: &Node, auth: AuthBackend) -> Onboarding {
    Onboarding::new(
        node.store.clone(),
        Tee::Guest(GuestClient::new(&node.guest.dstack)),
        checker(authority, &node.guest),
        auth,
        "site-a".into(),
    )
}

#[tokio::test]
async fn bootstrap_is_attested_and_once_and_replicas_onboard_only_when_allowed() {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let source = node(&authority, KMS_COMPOSE).await;

    // The operator reads the KMS's measurements before allowing them.
    let unlisted = onboarding(&authority, &source, policy(&[]));
    let info = unlisted.attestation_info().await.unwrap();
    assert_eq!(info.mr_aggregated.len(), 32);
    assert_eq!(info.device_id.len(), 32);
    assert_eq!(info.site_name, "site-a");
    let bootstrap = BootstrapRequest {
        domain: "kms.test".into(),
    };
    let err = unlisted.bootstrap(&bootstrap).await.unwrap_err();
    assert!(
        matches!(&err, OnboardError::NotAllowed { who: "this KMS", reason } if reason.contains("aggregated MR")),
        "{err}"
    );
    assert!(!source.store.has_keys());

    let allowed = onboarding(
        &authority,
        &source,
        policy(std::slice::from_ref(&info.mr_aggregated)),
    );
    assert!(matches!(allowed.finish(), Err(OnboardError::NotReady)));
    let answer = allowed.bootstrap(&bootstrap).await.unwrap();
    // The answer's attestation binds both public keys, under the TEE root.
    let report_data = bootstrap_report_data(&answer.ca_pubkey, &answer.k256_pubkey);
    checker(&authority, &source.guest)
        .verify_attestation(&answer.attestation, &report_data, SystemTime::now())
        .await
        .unwrap();
    let keys = source.store.load().unwrap();
    assert_eq!(answer.k256_pubkey, keys.root.k256_public_key().to_vec());
    assert_eq!(source.store.bootstrap_info().unwrap(), Some(answer.clone()));
    // One time only: a second bootstrap changes nothing.
    let before = std::fs::read(source.store.path()).unwrap();
    let again = allowed.bootstrap(&bootstrap).await.unwrap_err();
    assert!(
        matches!(
            again,
            OnboardError::Store(KeyStoreError::AlreadyBootstrapped { .. })
        ),
        "{again}"
    );
    assert_eq!(std::fs::read(source.store.path()).unwrap(), before);
    assert!(
        allowed
            .bootstrap(&BootstrapRequest {
                domain: "bad_domain".into()
            })
            .await
            .is_err()
    );
    allowed.finish().unwrap();

    // The source serves, its RPC certificate attested through its guest API.
    let (evidence, auth) = allowed.into_parts();
    let kms = Kms::with_checker(source.store.load().unwrap(), evidence, auth)
        .unwrap()
        .with_bootstrap_info(source.store.bootstrap_info().unwrap());
    let rpc_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let tee = Tee::Guest(GuestClient::new(&source.guest.dstack));
    let attestation = {
        use rcgen::PublicKeyData;
        tee.attest(&dstack_ra_tls::report_data_for_spki(
            &rpc_key.subject_public_key_info(),
        ))
        .await
        .unwrap()
    };
    let tls = Arc::new(
        kms.rpc_server_config(&rpc_key, "kms.test", attestation)
            .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let kms = Arc::new(kms);
    tokio::spawn(dstack_kms::server::serve(listener, kms.clone(), tls));
    assert_eq!(
        kms.get_meta().await.unwrap().bootstrap_info,
        Some(answer.clone())
    );

    // A replica of the same compose (same measurements) copies the keys.
    let replica = node(&authority, KMS_COMPOSE).await;
    let joining = onboarding(
        &authority,
        &replica,
        policy(std::slice::from_ref(&info.mr_aggregated)),
    );
    let onboard = OnboardRequest {
        source_url: url.clone(),
        domain: "kms-2.test".into(),
    };
    let joined = joining.onboard(&onboard).await.unwrap();
    assert_eq!(joined.k256_pubkey, answer.k256_pubkey);
    let copied = replica.store.load().unwrap();
    let app = ([0x11; 20], [0x22; 20]);
    assert_eq!(
        copied.root.app_keys(&app.0, &app.1).unwrap().disk_crypt_key,
        keys.root.app_keys(&app.0, &app.1).unwrap().disk_crypt_key
    );
    assert!(joining.onboard(&onboard).await.is_err(), "one time only");

    // A KMS of another compose is not in the policy: the source refuses it
    // and it stores nothing.
    let stranger = node(
        &authority,
        r#"{"name":"evil-kms","no_instance_id":true,"runner":"docker-compose"}"#,
    )
    .await;
    let refused = onboarding(&authority, &stranger, policy(&[info.mr_aggregated]))
        .onboard(&onboard)
        .await
        .unwrap_err();
    let text = dstack_proto::error_chain(&refused);
    assert!(text.contains("aggregated MR not allowed"), "{text}");
    assert!(!stranger.store.has_keys());
    let metrics = kms.metrics().render();
    assert!(
        metrics.contains(r#"method="GetKmsKey",outcome="denied""#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"method="GetKmsKey",outcome="ok""#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_replica_refuses_a_source_its_policy_does_not_allow() {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let source = node(&authority, KMS_COMPOSE).await;
    let info = onboarding(&authority, &source, policy(&[]))
        .attestation_info()
        .await
        .unwrap();
    let allowed = onboarding(
        &authority,
        &source,
        policy(std::slice::from_ref(&info.mr_aggregated)),
    );
    allowed
        .bootstrap(&BootstrapRequest {
            domain: "kms.test".into(),
        })
        .await
        .unwrap();
    let (evidence, auth) = allowed.into_parts();
    let kms = Kms::with_checker(source.store.load().unwrap(), evidence, auth).unwrap();
    let rpc_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    // No evidence in the RPC certificate: the replica cannot trust it.
    let tls = Arc::new(kms.rpc_server_config(&rpc_key, "kms.test", None).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(dstack_kms::server::serve(listener, Arc::new(kms), tls));

    let replica = node(&authority, KMS_COMPOSE).await;
    let err = onboarding(&authority, &replica, policy(&[info.mr_aggregated]))
        .onboard(&OnboardRequest {
            source_url: url,
            domain: "kms-2.test".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, OnboardError::Attestation(KmsError::Attestation(_))),
        "{err}"
    );
    assert!(!replica.store.has_keys());
}

#[tokio::test]
async fn on_a_host_bootstrap_works_unattested_and_onboarding_needs_a_tee() {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let guest = SimGuest::start(authority.clone(), kms_boot(KMS_COMPOSE)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::open(dir.path()).unwrap();
    let onboarding = Onboarding::new(
        store.clone(),
        Tee::Host,
        checker(&authority, &guest),
        policy(&[]),
        String::new(),
    );
    let answer = onboarding
        .bootstrap(&BootstrapRequest {
            domain: "localhost".into(),
        })
        .await
        .unwrap();
    assert!(answer.attestation.is_empty());
    assert!(store.has_keys() && !store.is_sealed());
    assert!(matches!(
        onboarding.attestation_info().await,
        Err(OnboardError::NoTee(_))
    ));
}

/// `dstack kms import`'s path: an upstream KMS's key files, sealed to the
/// attested import key, become this KMS's root keys (upstream's app keys
/// follow); only once, and only with the key the KMS attested.
#[tokio::test]
async fn upstream_keys_import_sealed_to_the_attested_import_key() {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let kms = node(&authority, KMS_COMPOSE).await;
    let mr = onboarding(&authority, &kms, policy(&[]))
        .attestation_info()
        .await
        .unwrap()
        .mr_aggregated;
    let service = onboarding(&authority, &kms, policy(&[mr]));
    let pem = |byte: u8| {
        p256::SecretKey::from_slice(&[byte; 32])
            .unwrap()
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap()
            .to_string()
    };
    let parts = dstack_proto::kms::ImportedKeys {
        root_ca_key: pem(0x5a),
        root_k256_key: vec![0x6b; 32],
        temp_ca_key: pem(0x3c),
    };
    let plain = serde_json::to_vec(&parts).unwrap();

    assert!(matches!(
        service
            .import(&dstack_proto::kms::ImportRequest {
                sealed_keys: vec![1, 2, 3]
            })
            .await,
        Err(OnboardError::NoImportKey)
    ));
    let offer = service.import_key().await.unwrap();
    let report_data = dstack_kms_client::import_key_report_data(&offer.public_key);
    checker(&authority, &kms.guest)
        .verify_attestation(&offer.attestation, &report_data, SystemTime::now())
        .await
        .unwrap();
    let recipient: [u8; 32] = offer.public_key.clone().try_into().unwrap();
    // A box sealed to another key does not open, and uses up the offer.
    let stranger = dstack_keys::sealing::RecipientKey::generate().public_key();
    let wrong = dstack_keys::sealing::seal(&stranger, &plain).unwrap();
    assert!(matches!(
        service
            .import(&dstack_proto::kms::ImportRequest { sealed_keys: wrong })
            .await,
        Err(OnboardError::BadImport(_))
    ));
    assert!(!kms.store.has_keys());
    let sealed = dstack_keys::sealing::seal(&recipient, &plain).unwrap();
    assert!(matches!(
        service
            .import(&dstack_proto::kms::ImportRequest {
                sealed_keys: sealed.clone()
            })
            .await,
        Err(OnboardError::NoImportKey)
    ));
    let offer = service.import_key().await.unwrap();
    let recipient: [u8; 32] = offer.public_key.try_into().unwrap();
    let sealed = dstack_keys::sealing::seal(&recipient, &plain).unwrap();
    service
        .import(&dstack_proto::kms::ImportRequest {
            sealed_keys: sealed,
        })
        .await
        .unwrap();
    let keys = kms.store.load().unwrap();
    let app = keys.root.app_keys(&[0x11; 20], &[0x22; 20]).unwrap();
    assert_eq!(
        hex::encode(&app.k256_key[..]),
        "3095e0d0135227822c9084c79751d9a196a77946d7d7e995f8f324917dbbb024"
    );
    service.import_key().await.unwrap();
    assert!(matches!(
        service
            .import(&dstack_proto::kms::ImportRequest {
                sealed_keys: vec![0; 64]
            })
            .await,
        Err(OnboardError::Store(
            KeyStoreError::AlreadyBootstrapped { .. }
        ))
    ));
}
