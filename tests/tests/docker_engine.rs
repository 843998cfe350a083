//! The container engine in a real CVM (QEMU TCG): a service that mounts
//! /var/run/docker.sock gets Debian's podman, from the engine image the OS
//! image pins by digest, serving the Docker Engine API. The service drives
//! it with the official docker CLI (Debian's docker-cli and compose
//! plugin): it pulls from the local registry, starts a second container
//! that answers on its port, reads its logs, stops and removes it, and
//! brings a second compose file up and down.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::time::{Duration, Instant};

use dstack_e2e::harness::{Supervisor, push_example, push_image, repo_root, tempfile_dir::TempDir};

const COMPOSE: &str = r#"
configs:
  second:
    content: |
      services:
        hello:
          image: 127.0.0.1:5000/dstack-examples/hello:latest
          command: ["/bin/busybox", "httpd", "-f", "-p", "8098", "-h", "/www"]
services:
  client:
    image: 127.0.0.1:5000/dstack-tests/docker-client:latest
    # The engine runs its containers in the CVM's network stack; the client
    # joins it to reach them on 127.0.0.1, as it would on a docker host.
    network_mode: host
    volumes: ["/var/run/docker.sock:/var/run/docker.sock"]
    configs:
      - source: second
        target: /second/compose.yml
    command:
      - /bin/sh
      - -c
      - >-
        docker version --format 'server={{.Server.Version}}';
        docker pull 127.0.0.1:5000/dstack-examples/hello:latest;
        docker run -d --name second 127.0.0.1:5000/dstack-examples/hello:latest /bin/busybox httpd -f -p 8099 -h /www;
        sleep 2;
        docker ps --format 'ps={{.Names}}:{{.Status}}';
        echo "answer=$$(wget -qO- http://127.0.0.1:8099/ | head -c 40)";
        docker logs second > /dev/null && echo logs=ok;
        docker stop -t 1 second > /dev/null && docker rm second > /dev/null && echo removed=ok;
        docker compose -p second -f /second/compose.yml up -d;
        sleep 2;
        echo "compose_answer=$$(wget -qO- http://127.0.0.1:8098/ | head -c 40)";
        docker compose -p second -f /second/compose.yml down && echo compose_down=ok;
        echo done;
        exec sleep 3600
"#;

/// The engine digest `inputs.lock` pins (what the OS image carries).
fn pinned_engine_digest() -> String {
    let lock = std::fs::read_to_string(repo_root().join("reproducible/inputs.lock")).unwrap();
    let line = lock
        .lines()
        .skip_while(|l| l.trim() != "[engine]")
        .find(|l| l.trim_start().starts_with("digest"))
        .expect("an [engine] digest in inputs.lock");
    line.split('"').nth(1).unwrap().to_string()
}

#[test]
fn a_service_drives_the_engine_with_the_docker_cli() {
    let dir = TempDir::new("dstack-engine").unwrap();
    // The engine image rebuilds to the digest the OS image pins: the pin
    // cannot drift from reproducible/engine.
    let engine = push_image(&repo_root().join("reproducible/engine")).unwrap();
    assert_eq!(
        engine,
        pinned_engine_digest(),
        "reproducible/engine no longer builds the pinned digest: update [engine] in reproducible/inputs.lock"
    );
    push_image(&repo_root().join("tests/images/docker-client")).unwrap();
    push_example("hello").unwrap();
    let compose = dir.path().join("compose.yml");
    std::fs::write(&compose, COMPOSE).unwrap();

    let sup = Supervisor::start("engine").unwrap();
    sup.dstack_ok(&[
        "vm",
        "deploy",
        compose.to_str().unwrap(),
        "--name",
        "eng",
        "--memory",
        "2G",
        "--disk",
        "8",
    ]);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut logs = String::new();
    while Instant::now() < deadline {
        logs = sup.dstack_ok(&["vm", "logs", "eng"]);
        if logs.contains("client | done") {
            break;
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    assert!(logs.contains("client | server=5."), "{logs}");
    assert!(logs.contains("client | ps=second:Up"), "{logs}");
    assert!(
        logs.contains("client | answer=Hello from a dstack-rs CVM!"),
        "{logs}"
    );
    sup.dstack_ok(&["vm", "stop", "eng"]);
}
