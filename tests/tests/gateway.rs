//! The gateway as a CVM, end to end: the `dstack/gateway` image
//! (gateway/image.json) booted by the supervisor with its keys from a real
//! KMS, its state in a real etcd, its wildcard certificate from a real
//! ACME CA (pebble) through DNS-01 on a real bind9; two apps in CVMs
//! register from their PID1 over RA-TLS and peer with it over the guest
//! kernel's WireGuard (the host relays only the encrypted UDP); a client
//! on the host reaches them by name: terminated (`<app-id>.apps.test`), a
//! named port (`<app-id>-8080.apps.test`), passthrough
//! (`<app-id>-443s.apps.test`, the app's own RA-TLS certificate), a
//! custom domain by its TXT record (passthrough); a port outside the
//! app's policy and a CVM that never registered get no route. (A CVM whose
//! quote does not verify is refused at registration:
//! gateway/tests/attestation.rs; several replicas: gateway/tests/cluster.rs.)
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use dstack_e2e::gateway::{App, GatewayWorld, admin, app_compose, https_get, metric};
use dstack_e2e::harness::{Supervisor, push_example, repo_root};

#[test]
fn apps_are_reached_by_name_through_the_gateway_cvm() {
    let sup = Supervisor::start("gateway").unwrap();
    push_example("hello").unwrap();
    push_example("python-sdk").unwrap();
    let dir = sup.state.path().to_owned();
    let web = App::write(
        &dir,
        "web",
        &app_compose(
            "web",
            "services:\n  web:\n    image: 127.0.0.1:5000/dstack-examples/hello:latest\n    command: [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n    ports:\n      - \"80:8080\"\n      - \"8080:8080\"\n      - \"9000:8080\"\n    restart: always\n",
            true,
            Some(serde_json::json!({
                "ports": [{"port": 80, "pp": false}, {"port": 8080, "pp": false}],
                "restrict_mode": true
            })),
        ),
    )
    .unwrap();
    let attested: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("examples/attested-web/app-compose.json"))
            .unwrap(),
    )
    .unwrap();
    let tls_compose = attested["docker_compose_file"]
        .as_str()
        .unwrap()
        .replace("\"8443:8443\"", "\"443:8443\"");
    let tls = App::write(&dir, "tls", &app_compose("tls", &tls_compose, true, None)).unwrap();

    let world = GatewayWorld::start(&sup, &[web.clone(), tls.clone()], |_| {}).unwrap();
    let metrics = admin(world.ports.admin, "/metrics", None).unwrap();
    assert_eq!(
        metric(
            &metrics,
            "dstack_gateway_certificates_total{outcome=\"issued\"} "
        ),
        1,
        "{metrics}"
    );

    // Two apps register from their PID1 and peer over the kernel's WireGuard.
    world.deploy(&sup, &web);
    world.deploy(&sup, &tls);
    let status = world.wait_registered(&sup, &[&web, &tls]);
    assert!(
        !status.contains(&world.gateway_id),
        "the gateway did not register itself: {status}"
    );

    // Terminated at the gateway with the wildcard, to port 80 and to a named port.
    let (leaf, page) = world.get(&format!("{}.apps.test", web.id), true).unwrap();
    assert!(page.contains(" 200 "), "{page}");
    assert!(page.contains("dstack-rs"), "{page}");
    assert!(!leaf.is_empty());
    let (_, page) = world
        .get(&format!("{}-8080.apps.test", web.id), true)
        .unwrap();
    assert!(page.contains(" 200 "), "{page}");

    // Passthrough: the client speaks TLS with the app itself (its RA-TLS certificate).
    let (leaf, page) = world
        .get(&format!("{}-443s.apps.test", tls.id), false)
        .unwrap();
    assert!(
        page.contains("Hello from an attested dstack-rs CVM"),
        "{page}"
    );
    let evidence =
        dstack_ra_tls::decode_certificate(&leaf).expect("the app's own RA-TLS certificate");
    assert!(!evidence.quote.is_empty());

    // A custom domain whose TXT record names the app: passthrough too.
    world
        .runtime
        .block_on(
            world
                .bind
                .rfc2136()
                .add_txt("_dstack-app-address.shop.test", &format!("{}:443", tls.id)),
        )
        .unwrap();
    let (leaf2, page) = world.get("shop.test", false).unwrap();
    assert!(
        page.contains("Hello from an attested dstack-rs CVM"),
        "{page}"
    );
    assert_eq!(
        dstack_ra_tls::decode_certificate(&leaf2).unwrap().quote,
        evidence.quote
    );

    // Refused: a port outside the app's restrict_mode policy, and a CVM
    // that never registered (the gateway itself).
    let roots = Some(&world.roots);
    let port = world.ports.proxy;
    assert!(https_get(port, &format!("{}-9000.apps.test", web.id), roots).is_err());
    assert!(https_get(port, &format!("{}.apps.test", world.gateway_id), roots).is_err());
    let metrics = admin(world.ports.admin, "/metrics", None).unwrap();
    assert!(
        metric(
            &metrics,
            "dstack_gateway_connections_total{outcome=\"port_policy\"} "
        ) >= 1,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "dstack_gateway_connections_total{outcome=\"unknown_app\"} "
        ) >= 1,
        "{metrics}"
    );

    for name in ["web", "tls", "gateway"] {
        let _ = sup.dstack(&["vm", "rm", "--force", name]);
    }
}
