#![allow(clippy::tests_outside_test_module)]
//! The guest API driven over real unix sockets, backed by the simulated TEE.

use std::path::Path;
use std::sync::Arc;

use dstack_attest::AttestationV0;
use dstack_attest::eventlog::{check_replay, parse_event_log_json};
use dstack_attest::{Platform, Quote, Rtmrs, SimAuthority};
use dstack_guest_api::testing::{SimBoot, SimGuest};
use dstack_guest_api::{CertSigner, SignerError};
use dstack_keys::AppKeys;
use dstack_ra_tls::CertSigningRequestV2;
use serde_json::{Value, json};
use sha2::{Digest, Sha256, Sha512};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use x509_parser::prelude::{FromDer, X509Certificate};

const SEED: [u8; 32] = [0x11; 32];

async fn start() -> SimGuest {
    start_with(None).await
}

/// The fixture, with `signer` (a stand-in KMS) certifying TLS keys.
async fn start_with(signer: Option<Arc<dyn CertSigner>>) -> SimGuest {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    SimGuest::start_with_signer(
        authority,
        SimBoot {
            seed: SEED,
            ..SimBoot::default()
        },
        signer,
    )
    .unwrap()
}

/// One HTTP/1.1 exchange; returns the status and the JSON body.
async fn raw(sock: &Path, request: Vec<u8>) -> (u16, Value) {
    let stream = tokio::net::UnixStream::connect(sock).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // The server may answer (413) and close before reading everything, so
    // read while writing and keep what arrived before a reset.
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        writer
    });
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) if !response.is_empty() => {
                let _ = e;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    writing.abort();
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, body)
}

async fn request(sock: &Path, method: &str, path: &str, body: &str) -> (u16, Value) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw(sock, request.into_bytes()).await
}

async fn post(sock: &Path, path: &str, body: Value) -> Value {
    let (status, value) = request(sock, "POST", path, &body.to_string()).await;
    assert_eq!(status, 200, "{path}: {value}");
    value
}

async fn post_err(sock: &Path, path: &str, body: Value) -> (u16, String) {
    let (status, value) = request(sock, "POST", path, &body.to_string()).await;
    (
        status,
        value["error"].as_str().unwrap_or_default().to_owned(),
    )
}

fn hex_field(value: &Value, field: &str) -> Vec<u8> {
    hex::decode(value[field].as_str().unwrap()).unwrap()
}

fn recover(message: &str, sig: &[u8]) -> Vec<u8> {
    use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
    let key = VerifyingKey::recover_from_digest(
        sha3::Keccak256::new_with_prefix(message.as_bytes()),
        &Signature::from_slice(&sig[..64]).unwrap(),
        RecoveryId::from_byte(sig[64]).unwrap(),
    )
    .unwrap();
    key.to_encoded_point(true).as_bytes().to_vec()
}

fn quote_report(quote: &[u8]) -> dstack_attest::TdReport {
    Quote::parse(quote).unwrap().td_report().unwrap().clone()
}

#[tokio::test]
async fn get_key_is_deterministic_and_signed_by_the_app_key() {
    let f = start().await;
    let keys = AppKeys::from_seed(&SEED).unwrap();
    let a = post(
        &f.dstack,
        "/GetKey",
        json!({"path": "/p", "purpose": "test"}),
    )
    .await;
    let b = post(
        &f.dstack,
        "/GetKey",
        json!({"path": "/p", "purpose": "test", "algorithm": "k256"}),
    )
    .await;
    let c = post(&f.dstack, "/GetKey", json!({"path": "/q"})).await;
    assert_eq!(a["key"], b["key"]);
    assert_ne!(a["key"], c["key"]);
    let key = hex_field(&a, "key");
    assert_eq!(key.len(), 32);
    let secret = k256::ecdsa::SigningKey::from_slice(&key).unwrap();
    let pubkey = hex::encode(secret.verifying_key().to_encoded_point(true).as_bytes());
    let chain = a["signature_chain"].as_array().unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], "", "no KMS signature without a KMS");
    let sig = hex::decode(chain[0].as_str().unwrap()).unwrap();
    assert_eq!(
        recover(&format!("test:{pubkey}"), &sig),
        keys.k256_public_key().to_vec()
    );
    // The same key through GET and a query string, and through tappd.
    let (status, got) = request(&f.dstack, "GET", "/GetKey?path=%2Fp&purpose=test", "").await;
    assert_eq!(status, 200);
    assert_eq!(got["key"], a["key"]);
    let tappd = post(
        &f.tappd,
        "/prpc/Tappd.DeriveK256Key",
        json!({"path": "/p", "purpose": "test"}),
    )
    .await;
    assert_eq!(tappd["k256_key"], a["key"]);

    let ed = post(
        &f.dstack,
        "/GetKey",
        json!({"path": "/p", "algorithm": "ed25519"}),
    )
    .await;
    assert_eq!(ed["key"], a["key"], "algorithms share the derived bytes");
    let (status, error) = post_err(&f.dstack, "/GetKey", json!({"algorithm": "rsa"})).await;
    assert_eq!(status, 400);
    assert!(error.contains("unsupported algorithm \"rsa\""), "{error}");
}

#[tokio::test]
async fn get_quote_binds_report_data_and_its_log_replays() {
    let f = start().await;
    let response = post(&f.dstack, "/GetQuote", json!({"report_data": "0x74657374"})).await;
    let mut expected = [0u8; 64];
    expected[..4].copy_from_slice(b"test");
    assert_eq!(hex_field(&response, "report_data"), expected);
    let report = quote_report(&hex_field(&response, "quote"));
    assert_eq!(report.report_data, expected);
    assert_eq!(response["vm_config"], f.app.vm_config);
    let events = parse_event_log_json(response["event_log"].as_str().unwrap()).unwrap();
    assert!(
        events.iter().all(|e| e.digest.len() == 48),
        "every event has a digest"
    );
    check_replay(&events, &Rtmrs(report.rtmr)).unwrap();
    let runtime: Vec<_> = events.iter().filter(|e| e.is_runtime()).collect();
    assert_eq!(runtime[1].event, "app-id");
    assert_eq!(runtime[1].event_payload, f.app.app_id);
    assert!(
        events
            .iter()
            .filter(|e| !e.is_runtime())
            .all(|e| e.event_payload.is_empty())
    );

    let (status, error) = post_err(
        &f.dstack,
        "/GetQuote",
        json!({"report_data": "00".repeat(65)}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        error.contains("report_data") && error.contains("64 bytes"),
        "{error}"
    );
    let (status, error) = post_err(&f.dstack, "/GetQuote", json!({"report_data": "xyz"})).await;
    assert_eq!(status, 400);
    assert!(error.contains("report_data"), "{error}");
    // Still serving.
    post(&f.dstack, "/GetQuote", json!({})).await;
}

#[tokio::test]
async fn attest_returns_a_v0_attestation_that_parses_back() {
    let f = start().await;
    let response = post(&f.dstack, "/Attest", json!({"report_data": "abcd"})).await;
    let bytes = hex_field(&response, "attestation");
    assert_eq!(bytes[0], 0, "legacy SCALE V0");
    let attestation = AttestationV0::from_bytes(&bytes).unwrap();
    let mut expected = [0u8; 64];
    expected[..2].copy_from_slice(&[0xab, 0xcd]);
    assert_eq!(attestation.report_data, expected);
    assert_eq!(quote_report(&attestation.quote).report_data, expected);
    assert_eq!(attestation.runtime_events.len(), 8);
    assert_eq!(attestation.config, f.app.vm_config);
    check_replay(
        &attestation.event_log,
        &Rtmrs(quote_report(&attestation.quote).rtmr),
    )
    .unwrap();
}

#[tokio::test]
async fn info_reports_measurements_and_app_identity() {
    let f = start().await;
    let info = post(&f.dstack, "/Info", json!({})).await;
    assert_eq!(hex_field(&info, "app_id"), f.app.app_id);
    assert_eq!(hex_field(&info, "compose_hash"), f.app.compose_hash);
    assert_eq!(info["app_name"], "test-app");
    assert_eq!(info["key_provider_info"], r#"{"name":"none","id":""}"#);
    assert_eq!(info["cloud_vendor"], "vendor");
    assert!(
        info["app_cert"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    let tcb: Value = serde_json::from_str(info["tcb_info"].as_str().unwrap()).unwrap();
    let identity = f.platform.identity();
    assert_eq!(tcb["mrtd"], hex::encode(identity.mr_td));
    for i in 0..4 {
        assert_eq!(tcb[format!("rtmr{i}")], hex::encode(identity.rtmr[i]));
    }
    let mut hasher = Sha256::new();
    hasher.update(identity.mr_td);
    for rtmr in identity.rtmr {
        hasher.update(rtmr);
    }
    let mr_aggregated = hex::encode(hasher.finalize());
    assert_eq!(tcb["mr_aggregated"], mr_aggregated);
    assert_eq!(info["mr_aggregated"], mr_aggregated);
    assert_eq!(tcb["device_id"], hex::encode(Sha256::digest(b"")));
    assert_eq!(tcb["app_compose"], f.app.app_compose);
    assert_eq!(tcb["event_log"].as_array().unwrap().len(), 3 + 8);
    // The tappd socket serves the same.
    let tappd = post(&f.tappd, "/prpc/Info", json!({})).await;
    assert_eq!(tappd["app_id"], info["app_id"]);
}

fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

#[tokio::test]
async fn get_tls_key_chains_to_the_app_root_and_binds_its_key() {
    let f = start().await;
    let response = post(
        &f.dstack,
        "/GetTlsKey",
        json!({"subject": "app.test", "alt_names": ["app.test", "127.0.0.1"],
               "usage_ra_tls": true, "usage_server_auth": true, "not_after": 4102444800u64}),
    )
    .await;
    assert!(
        response["key"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    let chain: Vec<Vec<u8>> = response["certificate_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| pem_der(p.as_str().unwrap()))
        .collect();
    assert_eq!(chain.len(), 2);
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    let (_, root) = X509Certificate::from_der(&chain[1]).unwrap();
    assert!(root.is_ca());
    root.verify_signature(None).unwrap();
    leaf.verify_signature(Some(root.public_key())).unwrap();
    assert_eq!(leaf.validity().not_after.timestamp(), 4102444800);
    // Upstream's leaf shape: the .8 attestation, no legacy .1/.2 quote and
    // event log, no collateral.
    let quote_oid = x509_parser::oid_registry::Oid::from(&[1, 3, 6, 1, 4, 1, 62397, 1, 1]).unwrap();
    assert!(leaf.get_extension_unique(&quote_oid).unwrap().is_none());
    let log_oid = x509_parser::oid_registry::Oid::from(&[1, 3, 6, 1, 4, 1, 62397, 1, 2]).unwrap();
    assert!(leaf.get_extension_unique(&log_oid).unwrap().is_none());
    // The .8 attestation's quote binds the leaf's public key.
    let att_oid = x509_parser::oid_registry::Oid::from(&[1, 3, 6, 1, 4, 1, 62397, 1, 8]).unwrap();
    let ext = leaf.get_extension_unique(&att_oid).unwrap().unwrap();
    let att = yasna::parse_der(ext.value, |r| r.read_bytes()).unwrap();
    let att = AttestationV0::from_bytes(&att).unwrap();
    let report = quote_report(&att.quote);
    let expected: [u8; 64] = Sha512::new()
        .chain_update(b"ratls-cert:")
        .chain_update(leaf.public_key().raw)
        .finalize()
        .into();
    assert_eq!(report.report_data, expected);
    assert_eq!(att.report_data, expected);
    // Stripped: RTMR3 events with blank digests (and RTMR0's ACPI DATA
    // events on TDX; the sim TEE's RTMR0 has none).
    assert!(!att.event_log.is_empty());
    assert!(
        att.event_log
            .iter()
            .all(|e| e.imr == 3 && e.digest.is_empty())
    );

    // A fresh key every call; no evidence unless asked.
    let plain = post(&f.dstack, "/GetTlsKey", json!({"subject": "x"})).await;
    assert_ne!(plain["key"], response["key"]);
    let leaf_der = pem_der(plain["certificate_chain"][0].as_str().unwrap());
    let (_, plain_leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    assert!(plain_leaf.get_extension_unique(&att_oid).unwrap().is_none());

    // with_app_info: the .9 extension, upstream's AppInfo as msgpack.
    let info_oid = x509_parser::oid_registry::Oid::from(&[1, 3, 6, 1, 4, 1, 62397, 1, 9]).unwrap();
    assert!(leaf.get_extension_unique(&info_oid).unwrap().is_none());
    let with_info = post(
        &f.dstack,
        "/GetTlsKey",
        json!({"subject": "x", "with_app_info": true}),
    )
    .await;
    let leaf_der = pem_der(with_info["certificate_chain"][0].as_str().unwrap());
    let (_, info_leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let ext = info_leaf.get_extension_unique(&info_oid).unwrap().unwrap();
    let msgpack = yasna::parse_der(ext.value, |r| r.read_bytes()).unwrap();
    assert_eq!(msgpack[0], 0x99, "an array of 9 fields, as upstream writes");
    assert_eq!(*msgpack.last().unwrap(), 0x90, "no init-script hashes");
    assert_eq!(&msgpack[1..3], &[0xc4, 20], "app_id is a 20-byte bin");
    let info = post(&f.dstack, "/Info", json!({})).await;
    assert_eq!(
        hex::encode(&msgpack[3..23]),
        info["app_id"].as_str().unwrap()
    );

    let (status, error) = post_err(
        &f.dstack,
        "/GetTlsKey",
        json!({"not_before": 10, "not_after": 5}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(error.contains("not_before"), "{error}");
}

/// A stand-in KMS: checks each request's signature, keeps it, and answers
/// a fixed chain (or refuses).
#[derive(Default)]
struct RecordingSigner {
    requests: std::sync::Mutex<Vec<CertSigningRequestV2>>,
    refuse: bool,
}

impl CertSigner for RecordingSigner {
    fn sign(
        &self,
        csr: &CertSigningRequestV2,
        signature: &[u8],
    ) -> Result<Vec<String>, SignerError> {
        csr.verify(signature)?;
        self.requests.lock().unwrap().push(csr.clone());
        if self.refuse {
            return Err("boot denied: compose hash not allowed".into());
        }
        Ok(vec!["leaf".into(), "app CA".into(), "KMS root".into()])
    }
}

#[tokio::test]
async fn with_a_signer_tls_keys_are_certified_through_signing_requests() {
    let signer = Arc::new(RecordingSigner::default());
    let f = start_with(Some(signer.clone())).await;
    let response = post(
        &f.dstack,
        "/GetTlsKey",
        json!({"subject": "app.test", "alt_names": ["app.test", "127.0.0.1"],
               "usage_ra_tls": true, "usage_server_auth": true, "usage_client_auth": true,
               "with_app_info": true, "not_before": 1700000000u64, "not_after": 4102444800u64}),
    )
    .await;
    assert_eq!(
        response["certificate_chain"],
        json!(["leaf", "app CA", "KMS root"]),
        "the signer's chain, as it answered"
    );
    let csr = signer.requests.lock().unwrap().pop().unwrap();
    assert_eq!(csr.confirm, "please sign cert:");
    let key = rcgen::KeyPair::from_pem(response["key"].as_str().unwrap()).unwrap();
    use rcgen::PublicKeyData;
    assert_eq!(
        csr.pubkey,
        key.subject_public_key_info(),
        "for the key handed out"
    );
    assert_eq!(
        csr.config,
        dstack_ra_tls::CertConfigV2 {
            org_name: None,
            subject: "app.test".into(),
            subject_alt_names: vec!["app.test".into(), "127.0.0.1".into()],
            usage_server_auth: true,
            usage_client_auth: true,
            ext_quote: true,
            ext_app_info: true,
            not_before: Some(1_700_000_000),
            not_after: Some(4_102_444_800),
        }
    );
    // The request's attestation: a fresh quote binding that key, with the
    // stripped RTMR3 log and the VM config.
    let att = AttestationV0::from_bytes(&csr.attestation).unwrap();
    let expected: [u8; 64] = Sha512::new()
        .chain_update(b"ratls-cert:")
        .chain_update(&csr.pubkey)
        .finalize()
        .into();
    assert_eq!(quote_report(&att.quote).report_data, expected);
    assert_eq!(att.report_data, expected);
    assert_eq!(att.config, f.app.vm_config);
    assert!(att.event_log.iter().any(|e| e.event == "app-id"));
    assert!(att.event_log.iter().all(|e| e.imr == 3));

    // tappd's DeriveKey asks the signer too, with upstream's defaults.
    let derived = post(
        &f.tappd,
        "/prpc/Tappd.DeriveKey",
        json!({"path": "p", "subject": "d"}),
    )
    .await;
    assert_eq!(derived["certificate_chain"].as_array().unwrap().len(), 3);
    let csr = signer.requests.lock().unwrap().pop().unwrap();
    assert_eq!(csr.config.subject, "d");
    assert!(!csr.config.ext_quote && !csr.config.ext_app_info);
    assert_eq!((csr.config.not_before, csr.config.not_after), (None, None));

    // A refusal reaches the app as an error naming it.
    let refusing = Arc::new(RecordingSigner {
        refuse: true,
        ..RecordingSigner::default()
    });
    let f = start_with(Some(refusing)).await;
    let (status, error) = post_err(&f.dstack, "/GetTlsKey", json!({"subject": "x"})).await;
    assert_eq!(status, 500);
    assert!(
        error.contains("the KMS did not sign the certificate")
            && error.contains("compose hash not allowed"),
        "{error}"
    );
}

#[tokio::test]
async fn sign_and_verify_round_trip() {
    let f = start().await;
    for (algorithm, data) in [
        ("ed25519", "68656c6c6f".to_owned()),
        ("secp256k1", "68656c6c6f".to_owned()),
        ("secp256k1_prehashed", hex::encode(Sha256::digest(b"hello"))),
    ] {
        let signed = post(
            &f.dstack,
            "/Sign",
            json!({"algorithm": algorithm, "data": data}),
        )
        .await;
        assert_eq!(signed["signature_chain"].as_array().unwrap().len(), 3);
        assert_eq!(signed["signature_chain"][0], signed["signature"]);
        let verify = |data: String| {
            json!({"algorithm": algorithm, "data": data,
                   "signature": signed["signature"], "public_key": signed["public_key"]})
        };
        let ok = post(&f.dstack, "/Verify", verify(data.clone())).await;
        assert_eq!(ok["valid"], true, "{algorithm}");
        let bad = post(&f.dstack, "/Verify", verify(hex::encode([0x55; 32]))).await;
        assert_eq!(bad["valid"], false, "{algorithm}");
    }
    let (status, error) = post_err(
        &f.dstack,
        "/Sign",
        json!({"algorithm": "secp256k1_prehashed", "data": "00"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(error.contains("32-byte digest"), "{error}");
}

#[tokio::test]
async fn emit_event_extends_rtmr3_and_refuses_boot_names() {
    let f = start().await;
    let empty = post(
        &f.dstack,
        "/EmitEvent",
        json!({"event": "my-event", "payload": "0102"}),
    )
    .await;
    assert_eq!(empty, json!({}));
    let response = post(&f.dstack, "/GetQuote", json!({})).await;
    let events = parse_event_log_json(response["event_log"].as_str().unwrap()).unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.event.as_str(), &last.event_payload[..]),
        ("my-event", &[1u8, 2][..])
    );
    check_replay(
        &events,
        &Rtmrs(quote_report(&hex_field(&response, "quote")).rtmr),
    )
    .unwrap();

    for name in ["", "app-id", "system-ready", "compose-hash", "a:b"] {
        let (status, error) = post_err(
            &f.dstack,
            "/EmitEvent",
            json!({"event": name, "payload": ""}),
        )
        .await;
        assert_eq!(status, 400, "{name}: {error}");
    }
    assert_eq!(f.platform.event_log().unwrap().len(), 3 + 8 + 1);
}

#[tokio::test]
async fn tappd_quotes_hash_report_data() {
    let f = start().await;
    let response = post(
        &f.tappd,
        "/prpc/Tappd.TdxQuote",
        json!({"report_data": "abcd", "hash_algorithm": "sha256", "prefix": "mytag"}),
    )
    .await;
    assert_eq!(response["hash_algorithm"], "sha256");
    assert_eq!(response["prefix"], "mytag");
    let mut expected = [0u8; 64];
    expected[..32].copy_from_slice(&Sha256::digest(b"mytag:\xab\xcd"));
    assert_eq!(
        quote_report(&hex_field(&response, "quote")).report_data,
        expected
    );

    let default = post(&f.tappd, "/prpc/TdxQuote", json!({"report_data": "abcd"})).await;
    assert_eq!(default["hash_algorithm"], "sha512");
    let expected: [u8; 64] = Sha512::digest(b"app-data:\xab\xcd").into();
    assert_eq!(
        quote_report(&hex_field(&default, "quote")).report_data,
        expected
    );

    let raw = post(
        &f.tappd,
        "/prpc/Tappd.RawQuote",
        json!({"report_data": "07".repeat(64)}),
    )
    .await;
    assert_eq!(raw["prefix"], "");
    assert_eq!(quote_report(&hex_field(&raw, "quote")).report_data, [7; 64]);
    let (status, error) = post_err(
        &f.tappd,
        "/prpc/Tappd.RawQuote",
        json!({"report_data": "07"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(error.contains("64 bytes"), "{error}");
    let (status, _) = post_err(
        &f.tappd,
        "/prpc/Tappd.TdxQuote",
        json!({"hash_algorithm": "md5"}),
    )
    .await;
    assert_eq!(status, 400);

    let a = post(
        &f.tappd,
        "/prpc/Tappd.DeriveKey",
        json!({"path": "/k", "subject": "s"}),
    )
    .await;
    let b = post(&f.tappd, "/prpc/Tappd.DeriveKey", json!({"path": "/k"})).await;
    let c = post(
        &f.tappd,
        "/prpc/Tappd.DeriveKey",
        json!({"path": "/k", "random_seed": true}),
    )
    .await;
    assert_eq!(a["key"], b["key"], "the same path gives the same key");
    assert_ne!(a["key"], c["key"]);
    assert_eq!(a["certificate_chain"].as_array().unwrap().len(), 2);
    // dstack methods are not on tappd.sock, nor tappd's on dstack.sock.
    assert_eq!(post_err(&f.tappd, "/prpc/GetKey", json!({})).await.0, 404);
    assert_eq!(post_err(&f.dstack, "/TdxQuote", json!({})).await.0, 404);
}

#[tokio::test]
async fn bad_requests_are_refused_and_the_server_keeps_serving() {
    let f = start().await;
    let (status, body) = request(&f.dstack, "POST", "/Nope", "{}").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("/Nope"));
    let (status, body) = request(&f.dstack, "POST", "/GetKey", "{not json").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("invalid JSON"));
    let (status, _) = request(&f.dstack, "PUT", "/GetKey", "{}").await;
    assert_eq!(status, 405);
    let big = format!(
        "{{\"path\":\"{}\"}}",
        "a".repeat(dstack_guest_api::MAX_BODY_BYTES)
    );
    let (status, _) = request(&f.dstack, "POST", "/GetKey", &big).await;
    assert_eq!(status, 413);
    // Chunked and over the limit: refused while reading.
    let mut chunked = b"POST /GetKey HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..17 {
        chunked.extend_from_slice(format!("{:x}\r\n", 65536).as_bytes());
        chunked.extend(std::iter::repeat_n(b' ', 65536));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw(&f.dstack, chunked).await.0, 413);
    let version = post(&f.dstack, "/Version", json!({})).await;
    assert_eq!(version["version"], dstack_guest_api::UPSTREAM_VERSION);
    assert_eq!(
        post(&f.dstack, "/GpuInfo", json!({})).await,
        json!({"attestation": ""})
    );
    // An empty body means no arguments.
    let (status, _) = request(&f.dstack, "POST", "/Info", "").await;
    assert_eq!(status, 200);
}
