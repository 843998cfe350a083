//! `SignCert` against simulated-TEE callers: an allowed app's signing
//! request becomes `[leaf, app CA, root]`, and every refusal is named and
//! counted.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::sync::Arc;
use std::time::SystemTime;

use dstack_attest::{
    AttestationV0, Platform, QuoteVerifier, RuntimeEvent, SimAuthority, SimPlatform, SimTdIdentity,
};
use dstack_kms::auth::{AuthBackend, PolicyFile};
use dstack_kms::keystore::RootKeys;
use dstack_kms::{Kms, KmsError};
use dstack_proto::kms::SignCertRequest;
use dstack_ra_tls::{
    CertAppInfo, CertConfigV2, CertSigningRequestV2, CsrError, RaTlsError, RaTlsVerifier,
    pem_certificate, report_data_for_spki,
};
use p256::pkcs8::EncodePublicKey;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData};
use rustls::client::danger::ServerCertVerifier;
use x509_parser::prelude::{FromDer, X509Certificate};

const APP_ID: [u8; 20] = [0xa1; 20];
const COMPOSE: [u8; 32] = [0xc0; 32];
const INSTANCE: [u8; 20] = [0x1d; 20];
const OID_APP_ID: &[u64] = &[1, 3, 6, 1, 4, 1, 62397, 1, 3];
const OID_USAGE: &[u64] = &[1, 3, 6, 1, 4, 1, 62397, 1, 4];
const OID_ATTESTATION: &[u64] = &[1, 3, 6, 1, 4, 1, 62397, 1, 8];
const OID_APP_INFO: &[u64] = &[1, 3, 6, 1, 4, 1, 62397, 1, 9];

/// A booted app, through `system-ready`, as dstack-init measures it.
fn app(authority: &Arc<SimAuthority>, compose_hash: &[u8]) -> SimPlatform {
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
        ("app-id", APP_ID.to_vec()),
        ("compose-hash", compose_hash.to_vec()),
        ("instance-id", INSTANCE.to_vec()),
        ("boot-mr-done", vec![]),
        ("key-provider", br#"{"name":"kms","id":""}"#.to_vec()),
        ("storage-fs", b"ext4".to_vec()),
        ("system-ready", vec![]),
    ] {
        td.emit_event(&RuntimeEvent {
            name: name.into(),
            payload,
        })
        .unwrap();
    }
    td
}

fn verifier(authority: &SimAuthority, td: &SimPlatform) -> RaTlsVerifier {
    RaTlsVerifier::new(QuoteVerifier::new(authority.root_der().to_vec()))
        .with_collateral(td.collateral().unwrap().unwrap())
}

fn kms(authority: &SimAuthority, td: &SimPlatform, keys: RootKeys) -> Kms {
    let policy = PolicyFile::parse(&format!(
        r#"{{"apps":{{"{}":{{"compose_hashes":["{}"]}}}}}}"#,
        hex::encode(APP_ID),
        hex::encode(COMPOSE)
    ))
    .unwrap();
    Kms::new(keys, verifier(authority, td), AuthBackend::Policy(policy)).unwrap()
}

fn config() -> CertConfigV2 {
    CertConfigV2 {
        subject: "app.example".into(),
        subject_alt_names: vec!["app.example".into(), "10.0.0.1".into()],
        usage_server_auth: true,
        usage_client_auth: true,
        ext_quote: true,
        ext_app_info: true,
        ..CertConfigV2::default()
    }
}

/// A signing request as the guest makes it: `td` quotes `bound_to`'s key
/// (normally the leaf's own), the request names the leaf key and is signed
/// with it.
fn request_for(td: &SimPlatform, leaf: &KeyPair, bound_to: &KeyPair) -> CertSigningRequestV2 {
    let report_data = report_data_for_spki(&bound_to.subject_public_key_info());
    let attestation = AttestationV0::new(
        td.quote(&report_data).unwrap(),
        td.event_log().unwrap(),
        report_data,
        format!(r#"{{"os_image_hash":"{}"}}"#, "ab".repeat(32)),
    )
    .stripped()
    .to_bytes();
    CertSigningRequestV2::new(leaf.subject_public_key_info(), config(), attestation)
}

fn wire(csr: &CertSigningRequestV2, signature: Vec<u8>) -> SignCertRequest {
    SignCertRequest {
        api_version: 2,
        csr: csr.to_bytes(),
        signature,
        vm_config: String::new(),
    }
}

fn signed(td: &SimPlatform, leaf: &KeyPair) -> SignCertRequest {
    let csr = request_for(td, leaf, leaf);
    let signature = csr.sign(leaf).unwrap();
    wire(&csr, signature)
}

fn extension(cert: &X509Certificate<'_>, oid: &[u64]) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find(|e| {
            e.oid
                .iter()
                .is_some_and(|arcs| arcs.eq(oid.iter().copied()))
        })
        .map(|e| yasna::parse_der(e.value, |r| r.read_bytes()).unwrap())
}

#[tokio::test]
async fn an_allowed_app_gets_a_chain_to_the_root_that_names_it() {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = app(&authority, &COMPOSE);
    let keys = RootKeys::generate().unwrap();
    let app_ca_spki = keys
        .root
        .app_ca_key(&APP_ID)
        .unwrap()
        .public_key()
        .to_public_key_der()
        .unwrap()
        .into_vec();
    let kms = kms(&authority, &td, keys);
    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();

    let now = SystemTime::now();
    let response = kms.sign_cert(&signed(&td, &leaf_key), now).await.unwrap();
    assert_eq!(kms.metrics().get("SignCert", "ok"), 1);
    let ders: Vec<Vec<u8>> = response
        .certificate_chain
        .iter()
        .map(|pem| pem_certificate(pem).unwrap())
        .collect();
    assert_eq!(ders.len(), 3);
    assert_eq!(ders[2], kms.ca_cert_der(), "the chain ends at the KMS root");
    let parse = |der| X509Certificate::from_der(der).unwrap().1;
    let (leaf, ca, root) = (parse(&ders[0]), parse(&ders[1]), parse(&ders[2]));

    // Each link verifies under the next, up to the self-signed root.
    leaf.verify_signature(Some(ca.public_key())).unwrap();
    ca.verify_signature(Some(root.public_key())).unwrap();
    root.verify_signature(None).unwrap();
    assert!(leaf.verify_signature(Some(root.public_key())).is_err());

    // The app CA: the app's derived key, O=Dstack, CN=Dstack App CA,
    // pathlen 0, the app id, usage app:ca.
    assert_eq!(ca.tbs_certificate.subject_pki.raw, app_ca_spki.as_slice());
    assert_eq!(
        ca.subject().to_string(),
        "O=Dstack, CN=Dstack App CA",
        "{}",
        ca.subject()
    );
    let constraints = ca.basic_constraints().unwrap().unwrap().value;
    assert!(constraints.ca);
    assert_eq!(constraints.path_len_constraint, Some(0));
    assert_eq!(extension(&ca, OID_APP_ID), Some(APP_ID.to_vec()));
    assert_eq!(extension(&ca, OID_USAGE), Some(b"app:ca".to_vec()));

    // The leaf: the requested key, names and usages, the measured app id,
    // usage app:custom, the attestation and the app info.
    assert_eq!(
        leaf.tbs_certificate.subject_pki.raw,
        leaf_key.subject_public_key_info().as_slice()
    );
    assert_eq!(leaf.subject().to_string(), "CN=app.example");
    assert!(!leaf.is_ca());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let sans = leaf.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(sans.general_names.len(), 2, "{sans:?}");
    assert_eq!(extension(&leaf, OID_APP_ID), Some(APP_ID.to_vec()));
    assert_eq!(extension(&leaf, OID_USAGE), Some(b"app:custom".to_vec()));
    assert!(extension(&leaf, OID_ATTESTATION).is_some());
    let info = CertAppInfo::decode(&extension(&leaf, OID_APP_INFO).unwrap()).unwrap();
    assert_eq!(info.app_id, APP_ID);
    assert_eq!(info.compose_hash, COMPOSE);
    assert_eq!(info.instance_id, INSTANCE);
    assert_eq!(info.os_image_hash, vec![0xab; 32]);
    assert_eq!(info.key_provider_info, br#"{"name":"kms","id":""}"#);

    // The leaf is itself an RA-TLS certificate: its `.8` binds its key.
    let peer = verifier(&authority, &td)
        .verify_cert(&ders[0], now)
        .unwrap();
    assert_eq!(peer.app_id.as_deref(), Some(&APP_ID[..]));

    // And a TLS client trusting only the KMS root accepts it for its name.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ders[2].clone().into()).unwrap();
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let name = rustls::pki_types::ServerName::try_from("app.example").unwrap();
    webpki
        .verify_server_cert(
            &ders[0].clone().into(),
            &[ders[1].clone().into()],
            &name,
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .unwrap();

    // Asked again, the same app CA key signs (a new leaf, same issuer key).
    let again = kms
        .sign_cert(
            &signed(
                &td,
                &KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
            ),
            now,
        )
        .await
        .unwrap();
    let ca_again = pem_certificate(&again.certificate_chain[1]).unwrap();
    assert_eq!(
        parse(&ca_again).tbs_certificate.subject_pki.raw,
        app_ca_spki.as_slice()
    );
}

#[tokio::test]
async fn forged_tampered_and_unauthorised_requests_are_named_and_counted() {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = app(&authority, &COMPOSE);
    let kms = kms(&authority, &td, RootKeys::generate().unwrap());
    let now = SystemTime::now();
    let leaf = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();

    // A signature that does not verify.
    let mut request = signed(&td, &leaf);
    let last = request.signature.len() - 1;
    request.signature[last] ^= 1;
    let err = kms.sign_cert(&request, now).await.unwrap_err();
    assert!(matches!(err, KmsError::Csr(CsrError::Signature)), "{err:?}");
    assert_eq!(kms.metrics().get("SignCert", "csr_bad_signature"), 1);

    // Signed by another key than the one it names.
    let stranger = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = request_for(&td, &leaf, &leaf);
    let err = kms
        .sign_cert(&wire(&csr, csr.sign(&stranger).unwrap()), now)
        .await
        .unwrap_err();
    assert!(matches!(err, KmsError::Csr(CsrError::Signature)), "{err:?}");
    assert_eq!(kms.metrics().get("SignCert", "csr_bad_signature"), 2);

    // Validly signed, but not a signing request.
    let mut csr = request_for(&td, &leaf, &leaf);
    csr.confirm = "please sign this:".into();
    let err = kms
        .sign_cert(&wire(&csr, csr.sign(&leaf).unwrap()), now)
        .await
        .unwrap_err();
    assert!(
        matches!(err, KmsError::Csr(CsrError::Confirm { .. })),
        "{err:?}"
    );
    assert_eq!(kms.metrics().get("SignCert", "csr_bad_confirm"), 1);

    // A genuine attestation of another key, wrapped around this one.
    let csr = request_for(&td, &leaf, &stranger);
    let err = kms
        .sign_cert(&wire(&csr, csr.sign(&leaf).unwrap()), now)
        .await
        .unwrap_err();
    assert!(
        matches!(err, KmsError::Attestation(RaTlsError::KeyBindingMismatch)),
        "{err:?}"
    );
    assert_eq!(kms.metrics().get("SignCert", "key_binding_mismatch"), 1);

    // An app the policy does not allow (another compose hash).
    let other = app(&authority, &[0xee; 32]);
    let err = kms
        .sign_cert(&signed(&other, &leaf), now)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, KmsError::Denied { reason } if reason == "compose hash not allowed"),
        "{err:?}"
    );
    assert_eq!(kms.metrics().get("SignCert", "denied"), 1);

    // A quote under a root the KMS does not trust.
    let foreign = app(&Arc::new(SimAuthority::generate().unwrap()), &COMPOSE);
    let err = kms
        .sign_cert(&signed(&foreign, &leaf), now)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "quote_rejected", "{err:?}");

    // Malformed: bytes that are no request, another version, a validity
    // window that ends before it starts.
    let mut garbage = signed(&td, &leaf);
    garbage.csr.truncate(10);
    let err = kms.sign_cert(&garbage, now).await.unwrap_err();
    assert_eq!(err.reason(), "csr_malformed", "{err:?}");
    let v1 = SignCertRequest {
        api_version: 1,
        ..signed(&td, &leaf)
    };
    let err = kms.sign_cert(&v1, now).await.unwrap_err();
    assert!(matches!(err, KmsError::BadRequest(_)), "{err:?}");
    let mut csr = request_for(&td, &leaf, &leaf);
    csr.config.not_before = Some(2_000_000_000);
    csr.config.not_after = Some(1_000_000_000);
    let err = kms
        .sign_cert(&wire(&csr, csr.sign(&leaf).unwrap()), now)
        .await
        .unwrap_err();
    assert!(matches!(err, KmsError::BadRequest(_)), "{err:?}");
    assert_eq!(kms.metrics().get("SignCert", "bad_request"), 2);

    // Nothing was issued, and the KMS keeps serving.
    assert_eq!(kms.metrics().get("SignCert", "ok"), 0);
    kms.sign_cert(&signed(&td, &leaf), now).await.unwrap();
    assert_eq!(kms.metrics().get("SignCert", "ok"), 1);
}

/// Over HTTPS with the guest's client: no client certificate, the root
/// pinned, the chain checked to end at it.
#[tokio::test]
async fn the_client_gets_a_chain_over_https() {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = app(&authority, &COMPOSE);
    let kms = kms(&authority, &td, RootKeys::generate().unwrap());
    let tls = Arc::new(
        kms.rpc_server_config(
            &rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            "kms.test",
            None,
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(dstack_kms::server::serve(listener, Arc::new(kms), tls));

    let client = dstack_kms_client::KmsClient::new(&url).unwrap();
    let (_, root) = client.temp_ca().await.unwrap();
    let leaf = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let answer = client.sign_cert(&root, &signed(&td, &leaf)).await.unwrap();
    assert_eq!(answer.certificate_chain.len(), 3);
    assert_eq!(
        pem_certificate(&answer.certificate_chain[2]),
        Some(root.cert_der.clone())
    );

    // A refusal comes back as the KMS's named reason.
    let mut request = signed(&td, &leaf);
    request.signature[4] ^= 1;
    let err = client.sign_cert(&root, &request).await.unwrap_err();
    assert!(
        matches!(&err, dstack_kms_client::ClientError::Refused { message, .. }
            if message.contains("signature")),
        "{err}"
    );
}

/// The KMS as the guest API's signer, in process: what signs for the
/// guest in KMS mode, without the network.
struct InProcessKms {
    kms: Arc<Kms>,
    runtime: tokio::runtime::Handle,
}

impl dstack_guest_api::CertSigner for InProcessKms {
    fn sign(
        &self,
        csr: &CertSigningRequestV2,
        signature: &[u8],
    ) -> Result<Vec<String>, dstack_guest_api::SignerError> {
        let request = wire(csr, signature.to_vec());
        let answer = self
            .runtime
            .block_on(self.kms.sign_cert(&request, SystemTime::now()))?;
        Ok(answer.certificate_chain)
    }
}

/// `/GetTlsKey` on the guest API in KMS mode: the guest's signing request
/// passes the KMS's checks, and the app gets `[leaf, app CA, KMS root]`
/// for the key it was handed.
#[tokio::test(flavor = "multi_thread")]
async fn get_tls_key_in_kms_mode_returns_the_kms_chain() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let authority = Arc::new(SimAuthority::generate().unwrap());
    let td = Arc::new(app(&authority, &COMPOSE));
    let kms = Arc::new(kms(&authority, &td, RootKeys::generate().unwrap()));
    let info = dstack_guest_api::AppInfo {
        app_id: APP_ID.to_vec(),
        instance_id: INSTANCE.to_vec(),
        compose_hash: COMPOSE,
        vm_config: format!(r#"{{"os_image_hash":"{}"}}"#, "ab".repeat(32)),
        key_provider_info: r#"{"name":"kms","id":""}"#.into(),
        ..Default::default()
    };
    let keys = dstack_keys::AppKeys::from_seed(&[7; 32]).unwrap();
    let platform: Arc<dyn Platform> = td.clone();
    let signer = InProcessKms {
        kms: kms.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    let api = tokio::task::spawn_blocking(move || {
        dstack_guest_api::GuestApi::new(platform, info, keys)
            .unwrap()
            .with_cert_signer(Arc::new(signer))
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("dstack.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(Arc::new(api).serve(listener, dstack_guest_api::Flavor::Dstack));

    let body = r#"{"subject":"app.example","alt_names":["app.example"],"usage_ra_tls":true,"usage_server_auth":true,"with_app_info":true}"#;
    let mut stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let head = format!(
        "POST /GetTlsKey HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    let (status, json) = response.split_once("\r\n\r\n").unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{response}");
    let answer: serde_json::Value = serde_json::from_str(json).unwrap();

    let chain: Vec<Vec<u8>> = answer["certificate_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pem| pem_certificate(pem.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(chain.len(), 3, "{answer}");
    assert_eq!(chain[2], kms.ca_cert_der());
    let leaf = X509Certificate::from_der(&chain[0]).unwrap().1;
    let ca = X509Certificate::from_der(&chain[1]).unwrap().1;
    leaf.verify_signature(Some(ca.public_key())).unwrap();
    assert_eq!(leaf.subject().to_string(), "CN=app.example");
    assert_eq!(extension(&leaf, OID_APP_ID), Some(APP_ID.to_vec()));
    assert!(extension(&leaf, OID_ATTESTATION).is_some());
    assert!(extension(&leaf, OID_APP_INFO).is_some());
    // The leaf certifies the key the app was given.
    let key = KeyPair::from_pem(answer["key"].as_str().unwrap()).unwrap();
    assert_eq!(
        leaf.tbs_certificate.subject_pki.raw,
        key.subject_public_key_info().as_slice()
    );
    assert_eq!(kms.metrics().get("SignCert", "ok"), 1);
}
