#![allow(clippy::tests_outside_test_module)]
//! The client against the real guest API server over a unix socket.

use std::sync::Arc;

use dstack_attest::{AttestationV0, SimAuthority};
use dstack_guest_api::testing::{SimBoot, SimGuest};
use dstack_guest_client::{GuestApiError, GuestClient};

#[tokio::test]
async fn keys_attestations_and_info_come_from_the_guest_api() {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let guest = SimGuest::start(authority, SimBoot::default()).unwrap();
    let client = GuestClient::new(&guest.dstack);

    let key = client.get_key("kms/seal", "").await.unwrap();
    assert_eq!(key.key.len(), 32);
    assert_eq!(client.get_key("kms/seal", "").await.unwrap().key, key.key);
    assert_ne!(client.get_key("other", "").await.unwrap().key, key.key);

    let report_data = [0x5a; 64];
    let bytes = client.attest(&report_data).await.unwrap();
    let attestation = AttestationV0::from_bytes(&bytes).unwrap();
    assert_eq!(attestation.report_data, report_data);
    let quote = dstack_attest::Quote::parse(&attestation.quote).unwrap();
    assert_eq!(quote.report_data(), &report_data);

    let info = client.info().await.unwrap();
    assert_eq!(info.app_id, guest.app.app_id);
    assert_eq!(info.instance_id, guest.app.instance_id);
}

#[tokio::test]
async fn a_missing_socket_is_a_named_transport_error() {
    let client = GuestClient::new("/nonexistent/dstack.sock");
    let err = client.info().await.unwrap_err();
    assert!(matches!(err, GuestApiError::Transport { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/dstack.sock"),
        "{err}"
    );
}
