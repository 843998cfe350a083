//! Key release against simulated-TEE callers: the same verification code
//! as on TDX, with the sim root as the trust anchor.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dstack_attest::{
    Platform, QuoteVerifier, RuntimeEvent, SimAuthority, SimPlatform, SimTdIdentity,
};
use dstack_kms::auth::{AuthBackend, PolicyFile};
use dstack_kms::keystore::RootKeys;
use dstack_kms::{Kms, KmsError};
use dstack_proto::kms::{AppId, GetAppKeyRequest};
use dstack_ra_tls::{CertRequest, RaTlsCert, RaTlsVerifier};

const APP_ID: [u8; 20] = [0xa1; 20];
const COMPOSE: [u8; 32] = [0xc0; 32];
const INSTANCE: [u8; 20] = [0x1d; 20];

/// A booted app: the runtime events dstack-init measures, in its order.
fn app(authority: &Arc<SimAuthority>, compose_hash: &[u8], app_id: &[u8]) -> SimPlatform {
    app_instance(authority, compose_hash, app_id, &INSTANCE)
}

fn app_instance(
    authority: &Arc<SimAuthority>,
    compose_hash: &[u8],
    app_id: &[u8],
    instance: &[u8],
) -> SimPlatform {
    let td = SimPlatform::new(
        authority.clone(),
        SimTdIdentity {
            mr_td: [0x42; 48],
            ..SimTdIdentity::default()
        },
        vec![],
    )
    .unwrap();
    for (name, payload) in [
        ("system-preparing", vec![]),
        ("app-id", app_id.to_vec()),
        ("compose-hash", compose_hash.to_vec()),
        ("instance-id", instance.to_vec()),
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
    // Issued now: the KMS refuses certificates (and so quotes) older than
    // its freshness window.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // A minute back, as the guest's client does: a test may judge at a
    // `now` taken just before this second began.
    request.not_before = Some(i64::try_from(now).unwrap() - 60);
    RaTlsCert::issue(td, &request, None).unwrap().cert_der
}

fn kms(authority: &SimAuthority, collateral_from: &SimPlatform, keys: RootKeys) -> Kms {
    let verifier = RaTlsVerifier::new(QuoteVerifier::new(authority.root_der().to_vec()))
        .with_collateral(collateral_from.collateral().unwrap().unwrap());
    let policy = PolicyFile::parse(&format!(
        r#"{{"gateway_app_id":"gw","apps":{{"{}":{{"compose_hashes":["{}"]}}}}}}"#,
        hex::encode(APP_ID),
        hex::encode(COMPOSE)
    ))
    .unwrap();
    Kms::new(keys, verifier, AuthBackend::Policy(policy)).unwrap()
}

fn request() -> GetAppKeyRequest {
    GetAppKeyRequest {
        api_version: 1,
        vm_config: format!(r#"{{"os_image_hash":"{}"}}"#, "ab".repeat(32)),
    }
}

#[tokio::test]
async fn an_authorised_app_gets_upstreams_keys_and_others_are_refused() {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = app(&authority, &COMPOSE, &APP_ID);
    let keys = RootKeys::generate().unwrap();
    let expected = keys.root.app_keys(&APP_ID, &INSTANCE).unwrap();
    let spki = keys.root.ca_spki().unwrap();
    let kms = kms(&authority, &td, keys);
    // The id guests measure (from the root CA certificate) is the one
    // `dstack simulator` measures from the root key alone.
    assert_eq!(kms.ca_spki(), spki);

    let now = SystemTime::now();
    let response = kms
        .get_app_key(Some(&client_cert(&td)), &request(), now)
        .await
        .unwrap();
    assert_eq!(response.k256_key, expected.k256_key.to_vec());
    assert_eq!(response.disk_crypt_key, expected.disk_crypt_key.to_vec());
    assert_eq!(response.env_crypt_key, expected.env_crypt_key.to_vec());
    assert_eq!(response.k256_signature, expected.k256_signature);
    assert_eq!(response.gateway_app_id, "gw");
    assert_eq!(response.os_image_hash, vec![0xab; 32]);
    assert!(response.ca_cert.starts_with("-----BEGIN CERTIFICATE-----"));
    // The same app gets the same keys on the next boot (a new cert, new quote).
    let again = kms
        .get_app_key(Some(&client_cert(&td)), &request(), now)
        .await
        .unwrap();
    assert_eq!(again.k256_key, response.k256_key);
    assert_eq!(kms.metrics().get("GetAppKey", "ok"), 2);

    // An unregistered compose hash is refused, naming the reason.
    let other = app(&authority, &[0xee; 32], &APP_ID);
    let err = kms
        .get_app_key(Some(&client_cert(&other)), &request(), now)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, KmsError::Denied { reason } if reason == "compose hash not allowed"),
        "{err}"
    );
    assert_eq!(kms.metrics().get("GetAppKey", "denied"), 1);

    // No client certificate: no keys.
    let err = kms.get_app_key(None, &request(), now).await.unwrap_err();
    assert!(matches!(err, KmsError::NoClientCertificate), "{err}");
    assert_eq!(kms.metrics().get("GetAppKey", "no_attestation"), 1);
}

#[tokio::test]
async fn untrusted_roots_tampering_staleness_and_bad_input_are_named_and_counted() {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = app(&authority, &COMPOSE, &APP_ID);
    let kms = kms(&authority, &td, RootKeys::generate().unwrap());
    let now = SystemTime::now();

    // A quote under a root the KMS does not trust.
    let stranger = Arc::new(SimAuthority::generate().unwrap());
    let foreign = app(&stranger, &COMPOSE, &APP_ID);
    let err = kms
        .get_app_key(Some(&client_cert(&foreign)), &request(), now)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "quote_rejected", "{err}");

    // A tampered certificate (one quote byte flipped).
    let mut cert = client_cert(&td);
    let at = cert.len() / 2;
    cert[at] ^= 1;
    let err = kms
        .get_app_key(Some(&cert), &request(), now)
        .await
        .unwrap_err();
    assert!(
        [
            "quote_rejected",
            "attestation_malformed",
            "key_binding_mismatch"
        ]
        .contains(&err.reason()),
        "{err}"
    );

    // A certificate (and so a quote) from long ago: a replayed request.
    let cert = client_cert(&td);
    let later = now + Duration::from_secs(3600);
    let err = kms
        .get_app_key(Some(&cert), &request(), later)
        .await
        .unwrap_err();
    assert!(matches!(err, KmsError::Stale { .. }), "{err}");
    assert_eq!(kms.metrics().get("GetAppKey", "stale_request"), 1);

    // A wrong-length app id in the measured log is refused, not padded.
    let short = app(&authority, &COMPOSE, &APP_ID[..19]);
    let err = kms
        .get_app_key(Some(&client_cert(&short)), &request(), now)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "boot_info_invalid", "{err}");
    assert!(format!("{:?}", err).contains("app_id"), "{err:?}");

    // Malformed arguments.
    let err = kms
        .get_app_env_encrypt_pub_key(
            &AppId {
                app_id: vec![1; 19],
            },
            0,
        )
        .unwrap_err();
    assert!(matches!(err, KmsError::BadRequest(_)), "{err}");
    let bad_version = GetAppKeyRequest {
        api_version: 2,
        ..request()
    };
    assert!(
        kms.get_app_key(Some(&client_cert(&td)), &bad_version, now)
            .await
            .is_err()
    );

    // The KMS keeps serving after all of that.
    assert!(
        kms.get_app_key(Some(&client_cert(&td)), &request(), now)
            .await
            .is_ok()
    );
    let text = kms.metrics().render();
    for reason in [
        "quote_rejected",
        "stale_request",
        "boot_info_invalid",
        "bad_request",
        "ok",
    ] {
        assert!(
            text.contains(&format!("outcome=\"{reason}\"")),
            "{reason}: {text}"
        );
    }
}

#[tokio::test]
async fn env_public_key_is_signed_by_the_root_k256_key() {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = app(&authority, &COMPOSE, &APP_ID);
    let kms = kms(&authority, &td, RootKeys::generate().unwrap());
    let meta = kms.get_meta().await.unwrap();
    let env = kms
        .get_app_env_encrypt_pub_key(
            &AppId {
                app_id: APP_ID.to_vec(),
            },
            1_800_000_000,
        )
        .unwrap();
    let signer = dstack_keys::kms::recover_signer(
        &env.signature_v1,
        dstack_keys::kms::ENV_PUBKEY_PREFIX,
        &APP_ID,
        &[&1_800_000_000u64.to_be_bytes(), &env.public_key],
    )
    .unwrap();
    assert_eq!(signer.to_vec(), meta.k256_pubkey);
    let temp = kms.get_temp_ca_cert().unwrap();
    assert!(temp.temp_ca_key.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(temp.ca_cert, meta.ca_cert);
}

/// Collateral fetched from a PCCS (the sim TEE's), not configured: the
/// same key release, and a PCCS that is gone is a named, counted refusal.
#[tokio::test]
async fn collateral_comes_from_a_pccs() {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = app(&authority, &COMPOSE, &APP_ID);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let pccs = tokio::spawn(dstack_supervisor::sim_pccs::serve(
        listener,
        authority.clone(),
    ));

    let verifier = RaTlsVerifier::new(QuoteVerifier::new(authority.root_der().to_vec()));
    let policy = PolicyFile::parse(&format!(
        r#"{{"apps":{{"{}":{{"compose_hashes":["{}"]}}}}}}"#,
        hex::encode(APP_ID),
        hex::encode(COMPOSE)
    ))
    .unwrap();
    let kms = Kms::new(
        RootKeys::generate().unwrap(),
        verifier,
        AuthBackend::Policy(policy),
    )
    .unwrap()
    .with_pccs(dstack_attest::pccs::CollateralCache::new(url).unwrap());
    let now = SystemTime::now();
    kms.get_app_key(Some(&client_cert(&td)), &request(), now)
        .await
        .unwrap();
    // Cached: a second caller needs no fetch, and works with the PCCS gone.
    pccs.abort();
    let _ = pccs.await;
    kms.get_app_key(Some(&client_cert(&td)), &request(), now)
        .await
        .unwrap();

    let gone = Kms::new(
        RootKeys::generate().unwrap(),
        RaTlsVerifier::new(QuoteVerifier::new(authority.root_der().to_vec())),
        AuthBackend::Policy(PolicyFile::default()),
    )
    .unwrap()
    .with_pccs(dstack_attest::pccs::CollateralCache::new("http://127.0.0.1:1").unwrap());
    let err = gone
        .get_app_key(Some(&client_cert(&td)), &request(), now)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "collateral_unavailable", "{err}");
}

/// An upstream KMS's key files, imported (`dstack-kms import`), give an app
/// the keys upstream's derivation gives: vectors computed outside Rust
/// (Python's `cryptography`) from UPSTREAM §4.3 for root CA key 0x5a..,
/// root k256 key 0x6b.., app 0x11.., instance 0x22...
#[tokio::test]
async fn imported_upstream_keys_release_upstreams_app_keys() {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let upstream = tempfile::tempdir().unwrap();
    for (name, byte) in [("root-ca.key", 0x5a), ("tmp-ca.key", 0x3c)] {
        let key = p256::SecretKey::from_slice(&[byte; 32]).unwrap();
        std::fs::write(
            upstream.path().join(name),
            key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap();
    }
    std::fs::write(upstream.path().join("root-k256.key"), [0x6b; 32]).unwrap();
    let state = tempfile::tempdir().unwrap();
    let store = dstack_kms::keystore::KeyStore::open(state.path()).unwrap();
    store
        .store_new(&RootKeys::from_upstream_dir(upstream.path()).unwrap())
        .unwrap();

    let authority = Arc::new(SimAuthority::generate().unwrap());
    let app_id = [0x11; 20];
    let td = app_instance(&authority, &COMPOSE, &app_id, &[0x22; 20]);
    let verifier = RaTlsVerifier::new(QuoteVerifier::new(authority.root_der().to_vec()))
        .with_collateral(td.collateral().unwrap().unwrap());
    let policy = PolicyFile::parse(&format!(
        r#"{{"apps":{{"{}":{{"compose_hashes":["{}"]}}}}}}"#,
        hex::encode(app_id),
        hex::encode(COMPOSE)
    ))
    .unwrap();
    let kms = Kms::new(store.load().unwrap(), verifier, AuthBackend::Policy(policy)).unwrap();
    let keys = kms
        .get_app_key(Some(&client_cert(&td)), &request(), SystemTime::now())
        .await
        .unwrap();
    assert_eq!(
        hex::encode(&keys.disk_crypt_key),
        "2ad173f091832eaf624dc9ba033c81d98e9e5b96921a132c950d13c317b2a900"
    );
    assert_eq!(
        hex::encode(&keys.env_crypt_key),
        "c14a1dd200b1c86ba9b3f288f1c1e7fa40e24c3670c0b5766bf628dcf8373590"
    );
    assert_eq!(
        hex::encode(&keys.k256_key),
        "3095e0d0135227822c9084c79751d9a196a77946d7d7e995f8f324917dbbb024"
    );
}
