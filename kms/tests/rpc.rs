//! The KMS over real HTTPS: upstream's pRPC paths, RA-TLS client
//! certificates, the root CA pinned by the client.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::sync::Arc;
use std::time::SystemTime;

use dstack_attest::{
    Platform, QuoteVerifier, RuntimeEvent, SimAuthority, SimPlatform, SimTdIdentity,
};
use dstack_kms::Kms;
use dstack_kms::auth::{AuthBackend, PolicyFile};
use dstack_kms::keystore::RootKeys;
use dstack_ra_tls::{CertRequest, RaTlsCert, RaTlsVerifier, pinned_root_client_config};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio::net::{TcpListener, TcpStream};

const APP_ID: [u8; 20] = [0xa1; 20];
const COMPOSE: [u8; 32] = [0xc0; 32];

fn app(authority: &Arc<SimAuthority>) -> SimPlatform {
    let td = SimPlatform::new(authority.clone(), SimTdIdentity::default(), vec![]).unwrap();
    for (name, payload) in [
        ("app-id", APP_ID.to_vec()),
        ("compose-hash", COMPOSE.to_vec()),
        ("instance-id", vec![7; 20]),
        ("boot-mr-done", vec![]),
    ] {
        td.emit_event(&RuntimeEvent {
            name: name.into(),
            payload,
        })
        .unwrap();
    }
    td
}

struct Server {
    addr: std::net::SocketAddr,
    root_der: Vec<u8>,
    expected_k256: Vec<u8>,
}

async fn start(authority: &Arc<SimAuthority>, td: &SimPlatform) -> Server {
    let keys = RootKeys::generate().unwrap();
    let expected_k256 = keys
        .root
        .app_keys(&APP_ID, &[7; 20])
        .unwrap()
        .k256_key
        .to_vec();
    let verifier = RaTlsVerifier::new(QuoteVerifier::new(authority.root_der().to_vec()))
        .with_collateral(td.collateral().unwrap().unwrap());
    let policy = PolicyFile::parse(&format!(
        r#"{{"apps":{{"{}":{{"compose_hashes":["{}"]}}}}}}"#,
        hex::encode(APP_ID),
        hex::encode(COMPOSE)
    ))
    .unwrap();
    let kms = Kms::new(keys, verifier, AuthBackend::Policy(policy)).unwrap();
    let tls = Arc::new(
        kms.rpc_server_config(
            &rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            "kms.test",
            None,
        )
        .unwrap(),
    );
    let root_der = kms.ca_cert_der().to_vec();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(dstack_kms::server::serve(listener, Arc::new(kms), tls));
    Server {
        addr,
        root_der,
        expected_k256,
    }
}

/// One request over a fresh TLS connection; `(status, body)`.
async fn call(
    server: &Server,
    client: Option<&RaTlsCert>,
    method: hyper::Method,
    path: &str,
    body: &str,
) -> (u16, String) {
    let config = pinned_root_client_config(
        &server.root_der,
        "kms:rpc",
        client.map(|c| (vec![c.cert_der.clone()], c.key_der.clone())),
    )
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("kms.test").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "kms.test")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn client_cert(td: &SimPlatform) -> RaTlsCert {
    let mut request = CertRequest::new("dstack-guest-agent");
    request.server_auth = false;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // A minute back, as the guest's client does: a test may judge at a
    // `now` taken just before this second began.
    request.not_before = Some(i64::try_from(now).unwrap() - 60);
    RaTlsCert::issue(td, &request, None).unwrap()
}

#[tokio::test]
async fn keys_over_https_at_upstreams_paths() {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = app(&authority);
    let server = start(&authority, &td).await;
    let cert = client_cert(&td);

    // No certificate needed for GetMeta, at either path form, GET or POST.
    let (status, body) = call(&server, None, hyper::Method::GET, "/prpc/KMS.GetMeta", "").await;
    assert_eq!(status, 200, "{body}");
    let meta: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(meta["k256_pubkey"].as_str().unwrap().len(), 66);
    let (status, _) = call(&server, None, hyper::Method::POST, "/prpc/GetMeta?json", "").await;
    assert_eq!(status, 200);

    // GetAppKey with the RA-TLS client certificate.
    let (status, body) = call(
        &server,
        Some(&cert),
        hyper::Method::POST,
        "/prpc/KMS.GetAppKey?json",
        r#"{"api_version":1,"vm_config":""}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let keys: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        keys["k256_key"].as_str().unwrap(),
        hex::encode(&server.expected_k256)
    );

    // Without a certificate: refused with upstream's words.
    let (status, body) = call(
        &server,
        None,
        hyper::Method::POST,
        "/prpc/GetAppKey?json",
        "{}",
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("no attestation provided"), "{body}");

    // Bad arguments name the field; protobuf is refused by name; unknown methods 404.
    let (status, body) = call(
        &server,
        None,
        hyper::Method::POST,
        "/prpc/GetAppEnvEncryptPubKey?json",
        r#"{"app_id":"zz"}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("app_id"), "{body}");
    let (status, body) = call(
        &server,
        None,
        hyper::Method::POST,
        "/prpc/GetMeta",
        "\u{8}\u{1}",
    )
    .await;
    assert_eq!(status, 415, "{body}");
    let (status, _) = call(&server, None, hyper::Method::GET, "/prpc/KMS.Nope", "").await;
    assert_eq!(status, 404);

    // Metrics count each outcome.
    let (status, text) = call(&server, None, hyper::Method::GET, "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(
        text.contains(r#"dstack_kms_requests_total{method="GetAppKey",outcome="ok"} 1"#),
        "{text}"
    );
    assert!(text.contains(r#"outcome="no_attestation""#), "{text}");
}

#[tokio::test]
async fn a_client_pinning_another_root_refuses_the_kms() {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = app(&authority);
    let server = start(&authority, &td).await;
    let other = start(&authority, &td).await;
    let config = pinned_root_client_config(&other.root_der, "kms:rpc", None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("kms.test").unwrap();
    assert!(connector.connect(name, tcp).await.is_err());
}

#[tokio::test]
async fn the_guest_client_flow_gets_the_keys_and_checks_the_pin() {
    use dstack_kms_client::{ClientError, KmsClient};
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = app(&authority);
    let server = start(&authority, &td).await;
    let client = KmsClient::new(&format!("https://{}/prpc", server.addr)).unwrap();
    let (keys, root) = client.app_keys(&td, "", &[]).await.unwrap();
    assert_eq!(keys.k256_key, server.expected_k256);
    assert_eq!(root.cert_der, server.root_der);
    // Pinned to this KMS: fine; pinned to another: refused before any key request.
    assert!(client.app_keys(&td, "", &root.spki).await.is_ok());
    let err = client.app_keys(&td, "", &[1, 2, 3]).await.unwrap_err();
    assert!(matches!(err, ClientError::RootMismatch { .. }), "{err}");
    let meta = client.meta(&root).await.unwrap();
    assert_eq!(meta.k256_pubkey.len(), 33);
    // A refused app gets the KMS's reason.
    let other = SimPlatform::new(authority.clone(), SimTdIdentity::default(), vec![]).unwrap();
    for (name, payload) in [
        ("app-id", APP_ID.to_vec()),
        ("compose-hash", vec![0xee; 32]),
        ("instance-id", vec![7; 20]),
    ] {
        other
            .emit_event(&RuntimeEvent {
                name: name.into(),
                payload,
            })
            .unwrap();
    }
    let err = client.app_keys(&other, "", &[]).await.unwrap_err();
    assert!(
        err.to_string().contains("compose hash not allowed"),
        "{err}"
    );
    // Nothing listens: a named transport error.
    let dead = KmsClient::new("https://127.0.0.1:1").unwrap();
    assert!(matches!(
        dead.app_keys(&td, "", &[]).await,
        Err(ClientError::Transport { .. })
    ));
}
