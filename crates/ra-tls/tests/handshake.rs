//! RA-TLS handshakes over loopback between simulated-TEE peers.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::sync::Arc;
use std::time::SystemTime;

use dstack_attest::{
    Platform, QuoteVerifier, RuntimeEvent, SimAuthority, SimPlatform, SimTdIdentity,
};
use dstack_ra_tls::{
    CertRequest, Evidence, RaTlsCert, RaTlsCertVerifier, RaTlsError, RaTlsVerifier, client_config,
    report_data_for_spki, server_config,
};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn platform(authority: &Arc<SimAuthority>, mr_td: u8) -> SimPlatform {
    let identity = SimTdIdentity {
        mr_td: [mr_td; 48],
        ..SimTdIdentity::default()
    };
    let p = SimPlatform::new(authority.clone(), identity, vec![]).unwrap();
    p.emit_event(&RuntimeEvent {
        name: "system-ready".into(),
        payload: vec![],
    })
    .unwrap();
    p
}

fn issue(p: &SimPlatform, subject: &str) -> RaTlsCert {
    RaTlsCert::issue(p, &CertRequest::new(subject), p.collateral().unwrap()).unwrap()
}

fn verifier(root: &[u8]) -> Arc<RaTlsCertVerifier> {
    Arc::new(RaTlsCertVerifier::new(Arc::new(RaTlsVerifier::new(
        QuoteVerifier::new(root.to_vec()),
    ))))
}

/// Runs one echo exchange; returns the client's and server's results.
async fn exchange(
    server_cert: RaTlsCert,
    client_cert: Option<RaTlsCert>,
    client_verifier: Arc<RaTlsCertVerifier>,
    server_verifier: Option<Arc<RaTlsCertVerifier>>,
) -> (std::io::Result<Vec<u8>>, std::io::Result<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(
        server_config(&server_cert, server_verifier).unwrap(),
    ));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await?;
        tls.write_all(&buf).await?;
        tls.shutdown().await?;
        Ok(())
    });
    let connector = TlsConnector::from(Arc::new(
        client_config(client_verifier, client_cert.as_ref()).unwrap(),
    ));
    let client = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("app.dstack.internal").unwrap();
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(b"hello").await?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await?;
        Ok(out)
    }
    .await;
    let server = server.await.unwrap();
    (client, server)
}

#[tokio::test]
async fn mutual_ra_tls_handshake_succeeds_and_exposes_the_report() {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let server_td = platform(&authority, 0x11);
    let client_td = platform(&authority, 0x22);
    let server_cert = issue(&server_td, "server");
    let client_cert = issue(&client_td, "client");
    let client_side = verifier(authority.root_der());
    let server_side = verifier(authority.root_der());
    let (client, server) = exchange(
        server_cert.clone(),
        Some(client_cert.clone()),
        client_side.clone(),
        Some(server_side.clone()),
    )
    .await;
    assert_eq!(client.unwrap(), b"hello");
    server.unwrap();
    // Each side can read the peer's verified report after the handshake.
    let seen_by_client = client_side
        .verifier()
        .verified_peer(&server_cert.cert_der)
        .unwrap();
    let td = seen_by_client.quote.quote.td_report().unwrap();
    assert_eq!(td.mr_td, [0x11; 48]);
    assert_eq!(seen_by_client.event_log.len(), 1);
    assert_eq!(seen_by_client.event_log[0].event, "system-ready");
    let seen_by_server = server_side
        .verifier()
        .verified_peer(&client_cert.cert_der)
        .unwrap();
    assert_eq!(
        seen_by_server.quote.quote.td_report().unwrap().mr_td,
        [0x22; 48]
    );
}

#[tokio::test]
async fn handshake_fails_when_the_quote_binds_another_key() {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = platform(&authority, 0x33);
    // Quote a different key than the one the certificate carries.
    let other_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let quote = td
        .quote(&report_data_for_spki(&other_key.subject_public_key_info()))
        .unwrap();
    let cert_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let evidence = Evidence {
        quote,
        event_log: td.event_log().unwrap(),
        vm_config: String::new(),
        collateral: td.collateral().unwrap(),
    };
    let forged =
        RaTlsCert::with_evidence(cert_key, &CertRequest::new("forged"), &evidence).unwrap();

    let check = RaTlsVerifier::new(QuoteVerifier::new(authority.root_der().to_vec()));
    let err = check
        .verify_cert(&forged.cert_der, SystemTime::now())
        .unwrap_err();
    assert!(matches!(err, RaTlsError::KeyBindingMismatch), "{err:?}");

    let (client, _server) = exchange(forged, None, verifier(authority.root_der()), None).await;
    let err = client.unwrap_err();
    assert!(err.to_string().contains("KeyBindingMismatch"), "{err}");
}

#[tokio::test]
async fn handshake_fails_without_trusting_the_sim_root() {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = platform(&authority, 0x44);
    let cert = issue(&td, "server");
    let stranger = SimAuthority::generate().unwrap();
    let (client, _server) = exchange(cert.clone(), None, verifier(stranger.root_der()), None).await;
    assert!(client.is_err());
    let intel = RaTlsVerifier::new(QuoteVerifier::intel());
    let err = intel
        .verify_cert(&cert.cert_der, SystemTime::now())
        .unwrap_err();
    assert!(matches!(err, RaTlsError::Quote(_)), "{err:?}");
}

#[test]
fn policy_sees_the_report_and_can_refuse() {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = platform(&authority, 0x55);
    let cert = issue(&td, "server");
    let only_66 = RaTlsVerifier::new(QuoteVerifier::new(authority.root_der().to_vec()))
        .with_policy(|peer| match peer.quote.quote.td_report() {
            Some(td) if td.mr_td == [0x66; 48] => Ok(()),
            _ => Err("unexpected MRTD".into()),
        });
    let err = only_66
        .verify_cert(&cert.cert_der, SystemTime::now())
        .unwrap_err();
    assert!(matches!(err, RaTlsError::PolicyRejected(ref m) if m == "unexpected MRTD"));
}

#[test]
fn tampered_event_log_in_certificate_is_rejected() {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = platform(&authority, 0x77);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let quote = td
        .quote(&report_data_for_spki(&key.subject_public_key_info()))
        .unwrap();
    let mut event_log = td.event_log().unwrap();
    event_log[0].event = "system-readx".into();
    let evidence = Evidence {
        quote,
        event_log,
        vm_config: String::new(),
        collateral: td.collateral().unwrap(),
    };
    let cert = RaTlsCert::with_evidence(key, &CertRequest::new("server"), &evidence).unwrap();
    let check = RaTlsVerifier::new(QuoteVerifier::new(authority.root_der().to_vec()));
    let err = check
        .verify_cert(&cert.cert_der, SystemTime::now())
        .unwrap_err();
    assert!(
        matches!(err, RaTlsError::EventLog(_) | RaTlsError::Replay(_)),
        "{err:?}"
    );
}

/// Upstream's leaf shape: `.8` (and `.4`), no legacy `.1`/`.2` and no
/// collateral; the verifier brings the collateral.
#[test]
fn leaf_without_collateral_verifies_with_the_verifiers_collateral() {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = platform(&authority, 0x88);
    let mut request = CertRequest::new("leaf");
    request.usage = Some("app:custom".into());
    let cert = RaTlsCert::issue(&td, &request, None).unwrap();
    let (_, parsed) = X509Certificate::from_der(&cert.cert_der).unwrap();
    let mut oids: Vec<String> = parsed
        .extensions()
        .iter()
        .map(|e| e.oid.to_id_string())
        .filter(|o| o.starts_with("1.3.6.1.4.1.62397") || o.starts_with("2.25"))
        .collect();
    oids.sort();
    assert_eq!(oids, ["1.3.6.1.4.1.62397.1.4", "1.3.6.1.4.1.62397.1.8"]);
    assert!(cert.cert_der.len() < 8 * 1024, "{}", cert.cert_der.len());

    let bare = RaTlsVerifier::new(QuoteVerifier::new(authority.root_der().to_vec()));
    assert!(matches!(
        bare.verify_cert(&cert.cert_der, SystemTime::now()),
        Err(RaTlsError::MissingCollateral)
    ));
    let with_collateral = RaTlsVerifier::new(QuoteVerifier::new(authority.root_der().to_vec()))
        .with_collateral(td.collateral().unwrap().unwrap());
    let peer = with_collateral
        .verify_cert(&cert.cert_der, SystemTime::now())
        .unwrap();
    assert_eq!(peer.usage.as_deref(), Some("app:custom"));
    // The stripped log keeps the runtime events, with digests recomputed.
    assert_eq!(peer.event_log.len(), 1);
    assert_eq!(peer.event_log[0].event, "system-ready");
    assert_eq!(peer.event_log[0].digest.len(), 48);
}

/// A bare attestation (what `Attest` returns) verifies against the
/// report_data it must bind, and nothing else.
#[test]
fn bare_attestation_verifies_only_for_its_report_data() {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = platform(&authority, 0x77);
    let report_data = [0x42; 64];
    let attestation = dstack_attest::AttestationV0::new(
        td.quote(&report_data).unwrap(),
        td.event_log().unwrap(),
        report_data,
        "{}".into(),
    )
    .to_bytes();
    let verifier = RaTlsVerifier::new(QuoteVerifier::new(authority.root_der().to_vec()))
        .with_collateral(td.collateral().unwrap().unwrap());
    let peer = verifier
        .verify_attestation_with(&attestation, &report_data, SystemTime::now(), None)
        .unwrap();
    assert_eq!(peer.quote.quote.report_data(), &report_data);
    assert_eq!(peer.vm_config, "{}");
    assert!(peer.event_log.iter().any(|e| e.event == "system-ready"));
    assert!(matches!(
        verifier.verify_attestation_with(&attestation, &[0x43; 64], SystemTime::now(), None),
        Err(RaTlsError::KeyBindingMismatch)
    ));
    let other_root = SimAuthority::generate().unwrap();
    let untrusted = RaTlsVerifier::new(QuoteVerifier::new(other_root.root_der().to_vec()))
        .with_collateral(td.collateral().unwrap().unwrap());
    assert!(matches!(
        untrusted.verify_attestation_with(&attestation, &report_data, SystemTime::now(), None),
        Err(RaTlsError::Quote(_))
    ));
}

/// The decoder hands over what a certificate carries, unchecked: the quote
/// binding its key, the stripped log, the in-band collateral.
#[test]
fn decode_certificate_exposes_the_evidence_unchecked() {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = platform(&authority, 0x99);
    let mut request = CertRequest::new("leaf");
    request.usage = Some("app:custom".into());
    let cert = issue(&td, "leaf");
    let decoded = dstack_ra_tls::decode_certificate(&cert.cert_der).unwrap();
    let quote = dstack_attest::Quote::parse(&decoded.quote).unwrap();
    assert_eq!(
        quote.report_data(),
        &report_data_for_spki(&decoded.spki),
        "the quote binds the certificate's key"
    );
    assert!(decoded.stripped);
    assert_eq!(decoded.event_log.len(), 1);
    assert_eq!(decoded.event_log[0].event, "system-ready");
    assert!(decoded.collateral().unwrap().is_some());

    let bare = RaTlsCert::issue(&td, &request, None).unwrap();
    let decoded = dstack_ra_tls::decode_certificate(&bare.cert_der).unwrap();
    assert!(decoded.collateral().unwrap().is_none());
    assert_eq!(decoded.usage.as_deref(), Some("app:custom"));

    // A certificate without evidence is named as such.
    let plain = RaTlsCert::build(
        &KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
        &CertRequest::new("plain"),
        None,
        None,
    )
    .unwrap();
    assert!(matches!(
        dstack_ra_tls::decode_certificate(&plain.cert_der),
        Err(RaTlsError::MissingQuote)
    ));
}
