//! Registration against an in-process gateway on the sim TEE: real TLS,
//! real quotes, both sides checking each other's evidence.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use dstack_attest::{Platform, RuntimeEvent, SimAuthority, SimPlatform, SimTdIdentity};
use dstack_proto::gateway::{PortAttrs, PortPolicy, RegisterCvmRequest, RegisterCvmResponse};
use dstack_ra_tls::app_info::CertAppInfo;
use dstack_ra_tls::{CertRequest, RaTlsCert, RaTlsVerifier};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use super::*;
use crate::gateway::{GatewayError, evidence_checker, register_first};

const GUEST_APP: [u8; 20] = [0x61; 20];
const GATEWAY_APP: [u8; 20] = [0x67; 20];

/// A TD that booted `app_id`, its identity measured as the guest does.
fn td(authority: &Arc<SimAuthority>, app_id: [u8; 20]) -> SimPlatform {
    let td = SimPlatform::new(authority.clone(), SimTdIdentity::default(), vec![]).unwrap();
    for (name, payload) in [
        ("app-id", app_id.to_vec()),
        ("compose-hash", [0x63; 32].to_vec()),
        ("instance-id", [0x69; 20].to_vec()),
        ("key-provider", b"{}".to_vec()),
        ("system-ready", Vec::new()),
    ] {
        td.emit_event(&RuntimeEvent {
            name: name.into(),
            payload,
        })
        .unwrap();
    }
    td
}

fn guest_app() -> ClientApp {
    ClientApp {
        app_id: GUEST_APP.to_vec(),
        instance_id: vec![0x69; 20],
        compose_hash: [0x63; 32],
        key_provider_info: "{}".into(),
        os_image_hash: vec![0x05; 32],
        vm_config: r#"{"os_image_hash":"0505050505050505050505050505050505050505050505050505050505050505"}"#.into(),
    }
}

/// What the fake gateway saw of one connection.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// The client's app id, as the gateway derives it from the quote.
    client_app_id: Option<Vec<u8>>,
    /// The `.9` claim in the client certificate.
    client_claim: Option<CertAppInfo>,
    requests: Vec<(String, String)>,
}

/// A gateway on 127.0.0.1 presenting `cert`, checking client certificates
/// as the gateway server should (quote under the sim root, identity from
/// the event log), answering every request with `status` and `body`.
async fn gateway(
    authority: Arc<SimAuthority>,
    cert: RaTlsCert,
    status: u16,
    body: &'static str,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let config = dstack_ra_tls::deferred_client_auth_server_config(
        vec![cert.cert_der.clone()],
        cert.key_der.clone(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut conn = Seen::default();
            if let Some(client) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                let verifier = RaTlsVerifier::new(dstack_attest::QuoteVerifier::new(
                    authority.root_der().to_vec(),
                ))
                .with_collateral(authority.collateral(Utc::now()).unwrap());
                let peer = verifier
                    .verify_cert(client.as_ref(), std::time::SystemTime::now())
                    .unwrap();
                let info = boot_info(&peer, "", MeasuredAt::Now).unwrap();
                conn.client_app_id = Some(info.app_id);
                conn.client_claim = peer.app_info;
            }
            let index = {
                let mut log = log.lock().unwrap();
                log.push(conn);
                log.len() - 1
            };
            let log = log.clone();
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let bytes = request.into_body().collect().await.unwrap().to_bytes();
                        log.lock().unwrap()[index]
                            .requests
                            .push((path, String::from_utf8_lossy(&bytes).into_owned()));
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(body.as_bytes())))
                                .unwrap(),
                        )
                    }
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service),
            );
        }
    });
    (url, seen)
}

const ANSWER: &str = r#"{"wg":{"client_ip":"10.8.0.2","servers":[{"pk":"ERERERERERERERERERERERERERERERERERERERERERE=","ip":"10.8.0.1/16","endpoint":"10.0.2.2:9013"}]},"agent":{"external_port":443,"internal_port":8090,"domain":"app.example","app_address_ns_prefix":"_dstack-app-address"},"gateways":[]}"#;

struct World {
    authority: Arc<SimAuthority>,
    guest: SimPlatform,
    client: RaTlsCert,
}

fn world() -> World {
    let authority = Arc::new(SimAuthority::generate().unwrap());
    let guest = td(&authority, GUEST_APP);
    let client = client_certificate(&guest, &guest_app()).unwrap();
    World {
        authority,
        guest,
        client,
    }
}

impl World {
    fn gateway_cert(&self, authority: &Arc<SimAuthority>, app: [u8; 20]) -> RaTlsCert {
        RaTlsCert::issue(&td(authority, app), &CertRequest::new("gateway"), None).unwrap()
    }

    fn check(&self, pin: GatewayAppPin) -> GatewayCheck {
        GatewayCheck {
            evidence: evidence_checker(
                self.guest.kind(),
                &self.client,
                self.guest.collateral().unwrap(),
                "",
            )
            .unwrap(),
            pin,
        }
    }
}

fn request() -> RegisterCvmRequest {
    RegisterCvmRequest {
        client_public_key: "cHVi".into(),
        port_policy: Some(PortPolicy {
            ports: vec![PortAttrs { port: 80, pp: true }],
            restrict_mode: true,
        }),
    }
}

#[tokio::test]
async fn registers_with_an_attested_gateway_of_the_pinned_app() {
    let w = world();
    let cert = w.gateway_cert(&w.authority, GATEWAY_APP);
    let (url, seen) = gateway(w.authority.clone(), cert, 200, ANSWER).await;
    let pin = GatewayAppPin::App(format!("0x{}", hex::encode_upper(GATEWAY_APP)));
    let response = register(&url, &w.client, &w.check(pin), &request())
        .await
        .unwrap();
    assert_eq!(
        response,
        serde_json::from_str::<RegisterCvmResponse>(ANSWER).unwrap()
    );

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    // The gateway read the guest's identity from its quote and event log,
    // and the certificate's claim agrees.
    assert_eq!(seen[0].client_app_id.as_deref(), Some(&GUEST_APP[..]));
    let claim = seen[0].client_claim.clone().unwrap();
    assert_eq!(claim.app_id, GUEST_APP);
    assert_eq!(claim.compose_hash, [0x63; 32]);
    assert_eq!(claim.key_provider_info, b"{}");
    let (path, body) = &seen[0].requests[0];
    assert_eq!(path, "/prpc/RegisterCvm");
    assert_eq!(
        body,
        r#"{"client_public_key":"cHVi","port_policy":{"ports":[{"port":80,"pp":true}],"restrict_mode":true}}"#
    );
}

#[test]
fn the_client_certificate_has_upstreams_shape() {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let w = world();
    let (_, cert) = X509Certificate::from_der(&w.client.cert_der).unwrap();
    let subject = cert.subject().to_string();
    assert_eq!(subject, "CN=dstack-guest-agent");
    assert_eq!(cert.issuer(), cert.subject(), "self-signed");
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    let validity = cert.validity();
    let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400;
    assert_eq!(days, 10);
    let evidence = dstack_ra_tls::decode_certificate(&w.client.cert_der).unwrap();
    assert!(evidence.stripped, "the .8 attestation");
    assert!(evidence.vm_config.contains("os_image_hash"));
    assert_eq!(evidence.app_info.unwrap().os_image_hash, vec![0x05; 32]);
}

#[tokio::test]
async fn refuses_a_gateway_of_another_app_before_sending_anything() {
    let w = world();
    let cert = w.gateway_cert(&w.authority, [0x99; 20]);
    let (url, seen) = gateway(w.authority.clone(), cert, 200, ANSWER).await;
    let pin = GatewayAppPin::App(hex::encode(GATEWAY_APP));
    let err = register(&url, &w.client, &w.check(pin), &request())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RegisterError::AppId { found, .. } if *found == hex::encode([0x99; 20])),
        "{err}"
    );
    // The handshake happened; the request never left.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().all(|c| c.requests.is_empty()), "{seen:?}");

    // `any`, and no KMS at all, accept it.
    for pin in [GatewayAppPin::Any, GatewayAppPin::Unpinned] {
        register(&url, &w.client, &w.check(pin), &request())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn refuses_a_gateway_quoted_under_another_root() {
    let w = world();
    let foreign = Arc::new(SimAuthority::generate().unwrap());
    let cert = w.gateway_cert(&foreign, GATEWAY_APP);
    let (url, seen) = gateway(foreign, cert, 200, ANSWER).await;
    let err = register(&url, &w.client, &w.check(GatewayAppPin::Any), &request())
        .await
        .unwrap_err();
    assert!(matches!(err, RegisterError::Evidence { .. }), "{err}");
    assert!(seen.lock().unwrap().iter().all(|c| c.requests.is_empty()));
}

#[tokio::test]
async fn names_a_refusal_and_tries_the_next_url() {
    let w = world();
    let cert = w.gateway_cert(&w.authority, GATEWAY_APP);
    let (refusing, _) = gateway(
        w.authority.clone(),
        cert.clone(),
        403,
        r#"{"error":"instance is registered to another app"}"#,
    )
    .await;
    let check = w.check(GatewayAppPin::Any);
    let err = register(&refusing, &w.client, &check, &request())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("the gateway at {refusing} refused: instance is registered to another app")
    );

    // A port nobody listens on, the refusing gateway, then a good one.
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("https://{}", listener.local_addr().unwrap())
    };
    let (good, _) = gateway(w.authority.clone(), cert, 200, ANSWER).await;
    let urls = vec![closed.clone(), refusing.clone(), format!("{good}/prpc/")];
    let (url, response) = register_first(&urls, &w.client, &check, &request())
        .await
        .unwrap();
    assert_eq!(url, urls[2]);
    assert_eq!(response.agent.domain, "app.example");

    let err = register_first(&urls[..2], &w.client, &check, &request())
        .await
        .unwrap_err();
    let GatewayError::Unregistered { tried: 2, first } = &err else {
        panic!("{err:?}");
    };
    assert!(matches!(**first, RegisterError::Connect { .. }), "{first}");
}

#[test]
fn urls_parse_as_upstreams_gateway_rpc_url() {
    assert_eq!(rpc_url("https://gateway.test"), "https://gateway.test/prpc");
    assert_eq!(
        rpc_url("https://gateway.test/"),
        "https://gateway.test/prpc"
    );
    assert_eq!(
        rpc_url("https://gateway.test/prpc"),
        "https://gateway.test/prpc"
    );
    assert_eq!(
        rpc_url("https://gateway.test/prpc/"),
        "https://gateway.test/prpc"
    );

    let e = Endpoint::parse("https://gw.example:9012").unwrap();
    assert_eq!(
        (e.host.as_str(), e.authority.as_str(), e.path.as_str()),
        ("gw.example", "gw.example:9012", "/prpc/RegisterCvm")
    );
    let e = Endpoint::parse("https://gw.example/base/prpc/").unwrap();
    assert_eq!(
        (e.authority.as_str(), e.path.as_str()),
        ("gw.example:443", "/base/prpc/RegisterCvm")
    );
    let e = Endpoint::parse("https://[fd00::1]:9012").unwrap();
    assert_eq!(
        (e.host.as_str(), e.authority.as_str()),
        ("fd00::1", "[fd00::1]:9012")
    );
    for bad in [
        "http://gw:9012",
        "https://",
        "https://gw:port",
        "https://user@gw:1",
        "https://[fd00::1",
        "gw:9012",
    ] {
        assert!(Endpoint::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_kms_pin_reads_as_upstream() {
    assert_eq!(GatewayAppPin::from_kms("", ""), None);
    assert_eq!(GatewayAppPin::from_kms("any", ""), Some(GatewayAppPin::Any));
    assert_eq!(
        GatewayAppPin::from_kms("", "abcd"),
        Some(GatewayAppPin::App("abcd".into()))
    );
    let pin = GatewayAppPin::App("0xAB01,cd02".into());
    assert!(pin.check("u", &[0xab, 0x01]).is_ok());
    assert!(pin.check("u", &[0xcd, 0x02]).is_ok());
    assert!(pin.check("u", &[0xef]).is_err());
}
