//! Compose networks in a real CVM (QEMU TCG): services on one network reach
//! each other by name and alias, a service on another network cannot be
//! reached by name or by address, a network leads out of the CVM unless it
//! is `internal`, a published port reaches a service on its network, and
//! `cap_add: [NET_ADMIN]` gives a service exactly the power to change its
//! own network stack (not to mount, and not to anyone else).
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::time::{Duration, Instant};

use dstack_e2e::harness::{
    Supervisor, free_port, http_get, push_image, repo_root, tempfile_dir::TempDir,
};

/// busybox on Debian's glibc (`tests/images/net-probe`), so name lookups
/// have glibc's NSS. (bookworm's busybox 1.35 wget crashes on `-T`: the
/// probes bound their waits with `timeout` instead.)
const IMAGE: &str = "127.0.0.1:5000/dstack-tests/net-probe:latest";

fn compose() -> String {
    format!(
        r#"
name: nets
networks:
  front: {{}}
  back: {{}}
  sealed: {{internal: true}}
x-serve: &serve
  image: {IMAGE}
services:
  web:
    <<: *serve
    networks:
      front: {{aliases: [www]}}
    ports: ["8080:80"]
    command: ["/bin/sh", "-c", "mkdir -p /www && echo web-page > /www/index.html && exec httpd -f -p 80 -h /www"]
  api:
    <<: *serve
    networks: [front, back]
    command: ["/bin/sh", "-c", "mkdir -p /www && echo api-page > /www/index.html && exec httpd -f -p 81 -h /www"]
  db:
    <<: *serve
    networks: [back]
    volumes: ["/run/nets:/shared"]
    command:
      - /bin/sh
      - -c
      - >-
        mkdir -p /www && echo db-page > /www/index.html;
        /bin/busybox ip -4 -o addr show eth0 | tr -s ' ' | cut -d' ' -f4 | cut -d/ -f1 > /shared/db-ip;
        exec httpd -f -p 80 -h /www
  probe:
    <<: *serve
    networks: [front]
    volumes: ["/run/nets:/shared:ro"]
    depends_on: [web, api, db]
    command:
      - /bin/sh
      - -c
      - >-
        while [ ! -s /shared/db-ip ]; do sleep 1; done; sleep 2;
        echo "web=$$(timeout 5 wget -qO- http://web/)";
        echo "alias=$$(timeout 5 wget -qO- http://www/)";
        echo "api=$$(timeout 5 wget -qO- http://api:81/)";
        timeout 3 wget -qO- http://db/ > /dev/null 2>&1; echo "db_by_name=$$?";
        echo "db_ip=$$(cat /shared/db-ip)";
        timeout 3 wget -qO- http://$$(cat /shared/db-ip)/ > /dev/null 2>&1; echo "db_by_ip=$$?";
        timeout 5 wget -qO /dev/null http://10.0.2.2:5000/v2/; echo "outbound=$$?";
        /bin/busybox ip addr add 10.99.0.1/32 dev lo 2>/dev/null; echo "probe_addr=$$?";
        echo done;
        exec sleep 3600
  bridge:
    <<: *serve
    networks: [back]
    depends_on: [db]
    volumes: ["/run/nets:/shared:ro"]
    command:
      - /bin/sh
      - -c
      - >-
        while [ ! -s /shared/db-ip ]; do sleep 1; done; sleep 2;
        echo "db=$$(timeout 5 wget -qO- http://db/)";
        echo done;
        exec sleep 3600
  sealed:
    <<: *serve
    networks: [sealed]
    command:
      - /bin/sh
      - -c
      - >-
        timeout 5 wget -qO /dev/null http://10.0.2.2:5000/v2/ 2>/dev/null; echo "outbound=$$?";
        echo done;
        exec sleep 3600
  admin:
    <<: *serve
    cap_add: [NET_ADMIN]
    command:
      - /bin/sh
      - -c
      - >-
        /bin/busybox ip addr add 10.99.0.1/32 dev lo; echo "addr=$$?";
        /bin/busybox ip -4 -o addr show lo | grep -c 10.99.0.1 | sed 's/^/seen=/';
        /bin/busybox mount -t tmpfs none /mnt 2>/dev/null; echo "mount=$$?";
        echo done;
        exec sleep 3600
"#
    )
}

fn value<'a>(logs: &'a str, service: &str, key: &str) -> &'a str {
    let (tag, prefix) = (format!("{service} | "), format!("{key}="));
    logs.lines()
        .filter_map(|l| l.split_once(&tag).map(|(_, rest)| rest))
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {service} {key}= line in the logs:\n{logs}"))
        .trim()
}

#[test]
fn networks_connect_and_separate_services() {
    let dir = TempDir::new("dstack-networks").unwrap();
    push_image(&repo_root().join("tests/images/net-probe")).unwrap();
    let compose_path = dir.path().join("compose.yml");
    std::fs::write(&compose_path, compose()).unwrap();

    let sup = Supervisor::start("networks").unwrap();
    let port = free_port();
    let port_arg = format!("{port}:8080");
    sup.dstack_ok(&[
        "vm",
        "deploy",
        compose_path.to_str().unwrap(),
        "--name",
        "nets",
        "--port",
        &port_arg,
    ]);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut logs = String::new();
    while Instant::now() < deadline {
        logs = sup.dstack_ok(&["vm", "logs", "nets"]);
        if ["probe", "bridge", "sealed", "admin"]
            .iter()
            .all(|s| logs.contains(&format!("{s} | done")))
        {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    // One network: by name, by alias, and a service on two networks.
    assert_eq!(value(&logs, "probe", "web"), "web-page", "{logs}");
    assert_eq!(value(&logs, "probe", "alias"), "web-page");
    assert_eq!(value(&logs, "probe", "api"), "api-page");
    assert_eq!(value(&logs, "bridge", "db"), "db-page");
    // Another network: no name, and its address is not routed.
    assert_ne!(value(&logs, "probe", "db_by_name"), "0", "{logs}");
    let db_ip = value(&logs, "probe", "db_ip");
    assert!(db_ip.starts_with("10.89."), "{logs}");
    assert_ne!(value(&logs, "probe", "db_by_ip"), "0", "{logs}");
    // Out of the CVM (masqueraded): yes, except from an internal network.
    assert_eq!(value(&logs, "probe", "outbound"), "0", "{logs}");
    assert_ne!(value(&logs, "sealed", "outbound"), "0", "{logs}");
    // NET_ADMIN: its own stack only; a default service has no such power.
    assert_eq!(value(&logs, "admin", "addr"), "0", "{logs}");
    assert_eq!(value(&logs, "admin", "seen"), "1", "{logs}");
    assert_ne!(value(&logs, "admin", "mount"), "0", "{logs}");
    assert_ne!(value(&logs, "probe", "probe_addr"), "0", "{logs}");
    // The published port reaches web on its network.
    let body = http_get(port, "/", Duration::from_secs(30)).unwrap();
    assert!(body.contains("web-page"), "{body}");

    sup.dstack_ok(&["vm", "stop", "nets"]);
}
