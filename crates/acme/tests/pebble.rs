#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests
//! Issuance against real processes: Debian's `pebble` (the CA) validating
//! through Debian's `named` (bind9), which takes TSIG-signed RFC 2136 updates.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dstack_acme::testing::{Bind9, Pebble};
use dstack_acme::{
    AcmeClient, AcmeError, CaaRecord, Dns01, DnsError, IssuedCert, Rfc2136, Solver,
    TlsAlpnResponder, TsigAlgorithm, TsigKey, not_after_from_pem, parse_pem_certs,
};
use rcgen::{KeyPair, PublicKeyData};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const ZONE: &str = "apps.test";

fn key(secret: &[u8]) -> TsigKey {
    TsigKey::new("acme-update", TsigAlgorithm::HmacSha256, secret.to_vec())
}

async fn setup() -> (Bind9, Pebble, AcmeClient) {
    let bind = Bind9::start(ZONE, key(b"0123456789abcdef0123456789abcdef")).await;
    let pebble = Pebble::start(bind.addr()).await;
    let (client, _) = AcmeClient::create(&pebble.directory_url(), &[], &pebble.server_roots())
        .await
        .unwrap();
    (bind, pebble, client.with_timeout(Duration::from_secs(60)))
}

/// Checks the chain against pebble's issuing CA for each name, and the key.
async fn verify(pebble: &Pebble, cert: &IssuedCert, names: &[&str]) {
    let mut roots = RootCertStore::empty();
    for root in parse_pem_certs(&pebble.issuer_roots_pem().await).unwrap() {
        roots.add(root).unwrap();
    }
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(default_provider()))
            .build()
            .unwrap();
    let chain: Vec<CertificateDer<'static>> = parse_pem_certs(&cert.chain_pem).unwrap();
    assert!(chain.len() >= 2, "leaf and intermediate");
    for name in names {
        let server_name = ServerName::try_from(name.to_string()).unwrap();
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &server_name, &[], UnixTime::now())
            .unwrap_or_else(|err| panic!("{name}: {err}"));
    }
    let outside = ServerName::try_from("other.test").unwrap();
    assert!(
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &outside, &[], UnixTime::now())
            .is_err()
    );

    let key = KeyPair::from_pem(&cert.key_pem).unwrap();
    assert_eq!(key.subject_public_key_info(), cert.public_key_der);
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    assert_eq!(not_after_from_pem(&cert.chain_pem).unwrap(), cert.not_after);
    assert!(cert.not_after > SystemTime::now() + Duration::from_secs(86_400));
    assert!(!format!("{cert:?}").contains("PRIVATE KEY"));
}

#[tokio::test]
async fn wildcard_and_base_name_through_dns01_on_bind9() {
    let (bind, pebble, client) = setup().await;
    let dns = bind.rfc2136();
    let names = vec![format!("*.{ZONE}"), ZONE.to_string()];

    let start = Instant::now();
    let cert = client.issue(&names, Solver::Dns01(&dns)).await.unwrap();
    eprintln!("DNS-01 issuance for {names:?} took {:?}", start.elapsed());

    verify(&pebble, &cert, &["x.apps.test", "apps.test"]).await;
    assert!(
        dns.query_txt("_acme-challenge.apps.test")
            .await
            .unwrap()
            .is_empty(),
        "challenge records are removed"
    );
}

#[tokio::test]
async fn tls_alpn01_through_the_responder() {
    let (bind, pebble, client) = setup().await;
    bind.add_a("x.apps.test", Ipv4Addr::LOCALHOST).await;
    let responder = TlsAlpnResponder::new();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, pebble.tls_port()))
        .await
        .unwrap();
    let acceptor = TlsAcceptor::from(responder.server_config());
    let server = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            // The validator hangs up after the handshake; its outcome is the CA's to judge.
            tokio::spawn(async move { acceptor.accept(stream).await.map(drop) });
        }
    });

    let start = Instant::now();
    let names = vec!["x.apps.test".to_string()];
    let cert = client
        .issue(&names, Solver::TlsAlpn01(&responder))
        .await
        .unwrap_or_else(|err| panic!("{err:?}; pebble log:\n{}", pebble.log()));
    eprintln!(
        "TLS-ALPN-01 issuance for {names:?} took {:?}",
        start.elapsed()
    );
    verify(&pebble, &cert, &["x.apps.test"]).await;
    assert!(responder.is_empty(), "challenge certificates are removed");

    // A failed validation names the authorization and cleans up all the same.
    let err = client
        .issue(&["nx.apps.test".to_string()], Solver::TlsAlpn01(&responder))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AcmeError::AuthorizationFailed { name, .. } if name == "nx.apps.test"),
        "{err:?}"
    );
    eprintln!("failed validation: {err}");
    assert!(responder.is_empty());

    // RFC 8737 cannot validate wildcards: refused before any order is placed.
    let err = client
        .issue(&[format!("*.{ZONE}")], Solver::TlsAlpn01(&responder))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AcmeError::WildcardNeedsDns01 { name } if name == "*.apps.test"),
        "{err:?}"
    );
    server.abort();
}

#[tokio::test]
async fn restored_credentials_are_the_same_account_and_pin_caa() {
    let bind = Bind9::start(ZONE, key(b"another secret, 32 bytes long!!!")).await;
    let pebble = Pebble::start(bind.addr()).await;
    let (client, credentials) =
        AcmeClient::create(&pebble.directory_url(), &[], &pebble.server_roots())
            .await
            .unwrap();
    let stored = serde_json::to_string(&credentials).unwrap();
    assert_eq!(format!("{credentials:?}"), "AccountCredentials(<redacted>)");

    let restored = AcmeClient::restore(
        serde_json::from_str(&stored).unwrap(),
        &pebble.server_roots(),
    )
    .await
    .unwrap();
    assert_eq!(restored.account_uri(), client.account_uri());
    assert!(restored.account_uri().starts_with("https://127.0.0.1:"));

    // The restored account orders (pebble rejects requests signed by an unknown account).
    let dns = bind.rfc2136();
    let cert = restored
        .issue(&[format!("y.{ZONE}")], Solver::Dns01(&dns))
        .await
        .unwrap();
    verify(&pebble, &cert, &["y.apps.test"]).await;

    // CAA as upstream pins it, on the base name of the wildcard.
    let pin = |uri: &str| {
        let value = format!("pebble;validationmethods=dns-01;accounturi={uri}");
        ["issue", "issuewild"].map(|tag| CaaRecord {
            flags: 0,
            tag: tag.to_string(),
            value: value.clone(),
        })
    };
    let sorted = |mut records: Vec<CaaRecord>| {
        records.sort_by(|a, b| a.tag.cmp(&b.tag));
        records
    };
    dns.set_caa("*.apps.test", "https://old/acct/1", "pebble")
        .await
        .unwrap();
    assert_eq!(
        sorted(dns.query_caa(ZONE).await.unwrap()),
        pin("https://old/acct/1")
    );
    // Re-pinning (e.g. after account rotation) replaces, never accumulates.
    dns.set_caa("*.apps.test", restored.account_uri(), "pebble")
        .await
        .unwrap();
    assert_eq!(
        sorted(dns.query_caa("*.apps.test").await.unwrap()),
        pin(restored.account_uri())
    );
    dns.clear_caa(ZONE).await.unwrap();
    assert!(dns.query_caa(ZONE).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_wrong_tsig_key_is_a_named_error_and_changes_nothing() {
    let (bind, _pebble, client) = setup().await;
    let good = bind.rfc2136();
    let wrong_secret = Rfc2136::new(bind.addr(), ZONE, Some(key(b"not the secret"))).unwrap();
    let unknown_key = Rfc2136::new(
        bind.addr(),
        ZONE,
        Some(TsigKey::new(
            "nobody",
            TsigAlgorithm::HmacSha256,
            b"x".to_vec(),
        )),
    )
    .unwrap();
    let unsigned = Rfc2136::new(bind.addr(), ZONE, None).unwrap();

    let err = wrong_secret
        .set_txt("_acme-challenge.apps.test", "v")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::BadSig { .. }), "{err:?}");
    let err = unknown_key
        .add_txt("_acme-challenge.apps.test", "v")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::BadKey { .. }), "{err:?}");
    let err = unsigned
        .add_txt("_acme-challenge.apps.test", "v")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Refused { .. }), "{err:?}");
    let err = wrong_secret
        .set_caa(ZONE, "https://x/acct/1", "pebble")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::BadSig { .. }), "{err:?}");

    let err = client
        .issue(&[ZONE.to_string()], Solver::Dns01(&wrong_secret))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            AcmeError::Dns { record, source: DnsError::BadSig { .. } }
                if record == "_acme-challenge.apps.test"
        ),
        "{err:?}"
    );

    assert!(
        good.query_txt("_acme-challenge.apps.test")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(good.query_caa(ZONE).await.unwrap().is_empty());
}

#[test]
fn pem_bundles_parse_and_junk_is_an_error() {
    let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
    let b = rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap();
    let bundle = format!("{}{}", a.cert.pem(), b.cert.pem());
    let certs = parse_pem_certs(&bundle).unwrap();
    assert_eq!(certs, vec![a.cert.der().clone(), b.cert.der().clone()]);
    assert_eq!(
        CertificateDer::from_pem_slice(bundle.as_bytes()).unwrap(),
        certs[0]
    );
    assert!(
        parse_pem_certs("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n").is_err()
    );
}
