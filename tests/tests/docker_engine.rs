//! The container engine in a real CVM (QEMU TCG): Debian's podman, from the
//! pinned engine image, serves the Docker Engine API to a service that
//! drives it with the official docker CLI: it pulls from the local
//! registry and starts a second container, which answers on its port.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::time::{Duration, Instant};

use dstack_e2e::harness::{Supervisor, push_example, push_image, repo_root, tempfile_dir::TempDir};

const COMPOSE: &str = r#"
configs:
  local-registry:
    content: |
      [[registry]]
      location = "10.0.2.2:5000"
      insecure = true
services:
  engine:
    image: 127.0.0.1:5000/dstack/engine:latest
    privileged: true
    volumes:
      - engine-data:/var/lib/containers
      - /run/engine:/run/podman
    configs:
      - source: local-registry
        target: /etc/containers/registries.conf.d/local.conf
  client:
    image: 127.0.0.1:5000/dstack-tests/docker-client:latest
    volumes: ["/run/engine:/run/engine"]
    environment:
      DOCKER_HOST: unix:///run/engine/podman.sock
    command:
      - /bin/sh
      - -c
      - >-
        while [ ! -S /run/engine/podman.sock ]; do sleep 1; done;
        docker version --format 'server={{.Server.Version}}';
        docker pull 10.0.2.2:5000/dstack-examples/hello:latest;
        docker run -d --name second 10.0.2.2:5000/dstack-examples/hello:latest /bin/busybox httpd -f -p 8099 -h /www;
        sleep 2;
        docker ps --format 'ps={{.Names}}:{{.Status}}';
        echo "answer=$$(wget -qO- http://127.0.0.1:8099/ | head -c 40)";
        echo done;
        exec sleep 3600
volumes:
  engine-data: {}
"#;

#[test]
fn a_service_drives_the_engine_with_the_docker_cli() {
    let dir = TempDir::new("dstack-engine").unwrap();
    push_image(&repo_root().join("reproducible/engine")).unwrap();
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
