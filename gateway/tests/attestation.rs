//! Who may register is decided by the quote: a CVM's RA-TLS client
//! certificate from a TD under the trusted root proves its app id,
//! instance id and compose hash (read from its measured events); the same
//! certificate from a TD under another root, or no certificate, proves
//! nothing. The TDs are simulated TDX modules with real quote signing
//! (dcap-qvl verifies them), serving the guest API a CVM's apps call.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::sync::Arc;

use dstack_attest::{QuoteVerifier, SimAuthority};
use dstack_gateway::registry::{RegisterError, identify};
use dstack_gateway::tee::Tee;
use dstack_guest_api::testing::{SimBoot, SimGuest};
use dstack_guest_client::GuestClient;
use dstack_ra_tls::RaTlsVerifier;
use dstack_ra_tls::evidence::EvidenceChecker;

async fn client_certificate(guest: &SimGuest) -> Vec<u8> {
    Tee::Guest(GuestClient::new(&guest.dstack))
        .rpc_certificate(&[])
        .await
        .expect("an RA-TLS certificate from the simulated CVM")
        .0
}

#[tokio::test]
async fn registrations_are_judged_by_the_quote_not_the_claim() {
    let trusted = Arc::new(SimAuthority::generate().unwrap());
    let foreign = Arc::new(SimAuthority::generate().unwrap());
    let checker = EvidenceChecker::new(
        RaTlsVerifier::new(QuoteVerifier::new(trusted.root_der().to_vec()))
            .with_collateral(trusted.collateral(chrono::Utc::now()).unwrap()),
    );
    let boot = SimBoot {
        app_compose: r#"{"name":"web","runner":"docker-compose"}"#.into(),
        instance_id: vec![0x17; 20],
        ..SimBoot::default()
    };
    let good = SimGuest::start(trusted.clone(), boot.clone()).unwrap();
    let identity = identify(&checker, Some(&client_certificate(&good).await))
        .await
        .unwrap();
    assert_eq!(identity.app_id, hex::encode(&good.app.app_id));
    assert_eq!(identity.instance_id, hex::encode([0x17; 20]));
    assert_eq!(identity.compose_hash, hex::encode(good.app.compose_hash));

    // The same app, booted under a root the gateway does not trust.
    let impostor = SimGuest::start(foreign, boot).unwrap();
    let err = identify(&checker, Some(&client_certificate(&impostor).await))
        .await
        .unwrap_err();
    assert!(matches!(err, RegisterError::Attestation(_)), "{err}");
    assert_eq!(err.kind(), ("attestation_refused", 403));

    let err = identify(&checker, None).await.unwrap_err();
    assert!(matches!(err, RegisterError::NoClientCertificate), "{err}");

    // A certificate without evidence (a plain self-signed one) proves nothing either.
    let key = rcgen::KeyPair::generate().unwrap();
    let plain = rcgen::CertificateParams::new(vec!["cvm".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let err = identify(&checker, Some(plain.der())).await.unwrap_err();
    assert!(matches!(err, RegisterError::Attestation(_)), "{err}");
}
