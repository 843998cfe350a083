//! The relay against a real `dstack-kms` served in-process over HTTPS on
//! this host's loopback, reached through the guests' host alias.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use dstack_attest::{QuoteVerifier, SimAuthority};
use dstack_keys::env_key::{DEFAULT_MAX_AGE_SECS, SignedEnvKey, Signer, verify_env_public_key};
use dstack_kms::Kms;
use dstack_kms::auth::{AuthBackend, PolicyFile};
use dstack_kms::keystore::RootKeys;
use dstack_ra_tls::RaTlsVerifier;
use tokio::net::TcpListener;

use super::*;

const APP_ID: [u8; 20] = [0xa1; 20];

/// A KMS on 127.0.0.1:PORT; returns PORT and its root k256 public key.
async fn start_kms() -> (u16, [u8; 33]) {
    let authority = SimAuthority::generate().unwrap();
    let keys = RootKeys::generate().unwrap();
    let k256 = keys.root.k256_public_key();
    let verifier = RaTlsVerifier::new(QuoteVerifier::new(authority.root_der().to_vec()));
    let policy = PolicyFile::parse(r#"{"apps":{}}"#).unwrap();
    let kms = Kms::new(keys, verifier, AuthBackend::Policy(policy)).unwrap();
    let tls = kms
        .rpc_server_config(
            &rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            "kms.test",
            None,
        )
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(dstack_kms::server::serve(
        listener,
        Arc::new(kms),
        Arc::new(tls),
    ));
    (port, k256)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn relays_the_kms_env_key_and_meta_through_the_guest_alias() {
    let (port, k256) = start_kms().await;
    // As guests write it: the supervisor dials 127.0.0.1 instead.
    let guest_url = format!("https://10.0.2.2:{port}");
    let request = EnvKeyRequest {
        app_id: format!("0x{}", hex::encode(APP_ID)),
        kms_url: String::new(),
    };
    let answer = env_key(&request, std::slice::from_ref(&guest_url))
        .await
        .unwrap();
    // Unchanged from the KMS: its signature verifies against its root k256 key.
    let signed = SignedEnvKey {
        public_key: &answer.public_key,
        signature: &answer.signature,
        timestamp: answer.timestamp,
        signature_v1: &answer.signature_v1,
    };
    let trusted = Signer::from_public_key(&k256).unwrap();
    verify_env_public_key(&signed, &APP_ID, &trusted, now(), DEFAULT_MAX_AGE_SECS).unwrap();

    let meta_answer = meta(
        &KmsMetaRequest {
            kms_url: guest_url.clone(),
        },
        &[],
    )
    .await
    .unwrap();
    assert_eq!(meta_answer.k256_pubkey, k256.to_vec());
    assert!(meta_answer.ca_cert.contains("BEGIN CERTIFICATE"));
}

#[tokio::test]
async fn an_unreachable_kms_is_named_with_the_url_dialled() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let request = EnvKeyRequest {
        app_id: hex::encode(APP_ID),
        kms_url: format!("https://10.0.2.2:{port}"),
    };
    let err = env_key(&request, &[]).await.unwrap_err();
    assert!(matches!(err, VmmError::KmsUnreachable { .. }), "{err:?}");
    assert_eq!(err.status_code(), StatusCode::BAD_GATEWAY);
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot reach the KMS at https://10.0.2.2:{port} (reached as https://127.0.0.1:{port}): "
        )),
        "{text}"
    );
}

#[tokio::test]
async fn requests_are_checked_before_any_kms_is_asked() {
    // No KMS anywhere.
    let request = EnvKeyRequest {
        app_id: hex::encode(APP_ID),
        kms_url: String::new(),
    };
    let err = env_key(&request, &[]).await.unwrap_err();
    assert!(matches!(err, VmmError::NoKms), "{err:?}");
    assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
    assert!(err.to_string().contains("--kms-url"), "{err}");
    let err = meta(&KmsMetaRequest::default(), &[]).await.unwrap_err();
    assert!(matches!(err, VmmError::NoKms), "{err:?}");

    // A bad app id, whatever the KMS.
    for bad in ["", "zz", &"11".repeat(19), &"11".repeat(21)] {
        let request = EnvKeyRequest {
            app_id: bad.to_owned(),
            kms_url: "https://10.0.2.2:1".into(),
        };
        let err = env_key(&request, &[]).await.unwrap_err();
        assert_eq!(err.status_code(), StatusCode::BAD_REQUEST, "{bad}");
        assert!(err.to_string().starts_with("app_id: "), "{err}");
    }

    // A KMS URL that is not https://HOST:PORT.
    let err = meta(
        &KmsMetaRequest {
            kms_url: "http://10.0.2.2:8000".into(),
        },
        &[],
    )
    .await
    .unwrap_err();
    assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
    assert!(err.to_string().starts_with("kms_url: "), "{err}");
}

#[test]
fn the_request_url_wins_over_the_default_and_both_are_mapped() {
    let defaults = ["https://10.0.2.2:8000".to_owned(), "https://b:1".to_owned()];
    assert_eq!(
        target("", &defaults).unwrap(),
        KmsTarget {
            url: "https://10.0.2.2:8000".into(),
            reached: "https://127.0.0.1:8000".into(),
        }
    );
    assert_eq!(
        target("https://kms.example:443", &defaults).unwrap(),
        KmsTarget {
            url: "https://kms.example:443".into(),
            reached: "https://kms.example:443".into(),
        }
    );
}

#[test]
fn kms_refusals_and_garbage_are_bad_gateway_with_the_kms_text() {
    let target = target("https://10.0.2.2:8000", &[]).unwrap();
    let err = kms_error(
        &target,
        ClientError::Refused {
            url: target.reached.clone(),
            message: "app_id must be 20 bytes, got 3".into(),
        },
    );
    assert_eq!(err.status_code(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        err.to_string(),
        "the KMS at https://10.0.2.2:8000 refused: app_id must be 20 bytes, got 3"
    );
    let err = kms_error(
        &target,
        ClientError::BadAnswer {
            url: target.reached.clone(),
            reason: "GetMeta: expected value".into(),
        },
    );
    assert_eq!(err.status_code(), StatusCode::BAD_GATEWAY);
    assert!(err.to_string().contains("answered garbage"), "{err}");
}
