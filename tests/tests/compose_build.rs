//! `build:` in a real CVM (QEMU TCG): an app whose image is a
//! `dockerfile_inline` — a multi-stage build with `ARG`, a `RUN` heredoc, a
//! `COPY` heredoc, `COPY --from`, `ENV`, `WORKDIR`, `ENTRYPOINT`/`CMD` —
//! from a base image (busybox, a Debian package) on the local registry, is
//! built by the CVM's container engine and answers HTTP (`$${GREETING}`:
//! compose interpolates the Dockerfile text too, as docker compose does);
//! after a restart the engine's storage on the data disk is kept, and the
//! build takes every step from its layer cache.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::time::Duration;

use dstack_e2e::harness::{
    Supervisor, build_steps, free_port, http_get, push_image, repo_root, tempfile_dir::TempDir,
};

const COMPOSE: &str = r#"
services:
  web:
    build:
      context: .
      args:
        GREETING: hello-from-build
      dockerfile_inline: |
        FROM 127.0.0.1:5000/dstack-tests/base:latest AS build
        ARG GREETING=unset
        RUN <<EOF
        mkdir -p /out
        echo "built: $${GREETING}" > /out/index.html
        EOF
        COPY <<EOF /out/extra.txt
        from a heredoc
        EOF

        FROM 127.0.0.1:5000/dstack-tests/base:latest
        COPY --from=build /out /www
        ENV PORT=8080
        WORKDIR /www
        EXPOSE 8080
        ENTRYPOINT ["/bin/busybox"]
        CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]
    ports: ["8080:8080"]
"#;

#[test]
fn a_dockerfile_inline_app_is_built_in_the_cvm_and_answers() {
    let dir = TempDir::new("dstack-build").unwrap();
    push_image(&repo_root().join("reproducible/engine")).unwrap();
    push_image(&repo_root().join("tests/images/base")).unwrap();
    // The local key provider gives the same disk key every boot, so the
    // engine's layer cache on the data disk survives the restart.
    let compose = dir.path().join("app-compose.json");
    let manifest = serde_json::json!({
        "docker_compose_file": COMPOSE,
        "key_provider": "local",
        "manifest_version": 2,
        "name": "built",
        "runner": "docker-compose",
    });
    std::fs::write(&compose, manifest.to_string()).unwrap();

    let sup = Supervisor::start("build").unwrap();
    let port = free_port();
    sup.dstack_ok(&[
        "vm",
        "deploy",
        compose.to_str().unwrap(),
        "--name",
        "built",
        "--memory",
        "2G",
        "--disk",
        "8",
        "--port",
        &format!("{port}:8080"),
        "--timeout",
        "900",
    ]);
    let body = http_get(port, "/", Duration::from_secs(60)).unwrap();
    assert!(body.contains("built: hello-from-build"), "{body}");
    let extra = http_get(port, "/extra.txt", Duration::from_secs(10)).unwrap();
    assert!(extra.contains("from a heredoc"), "{extra}");
    let logs = sup.dstack_ok(&["vm", "logs", "built", "-n", "2000"]);
    assert!(
        logs.contains("web | [build] "),
        "build output is in the service's log:\n{logs}"
    );

    let first = build_steps(&logs, "web");
    assert_eq!(first.len(), 9, "{logs}");
    assert!(first.iter().all(|(_, cached)| !cached), "{logs}");

    // Restarted, the engine's storage on the data disk is still there: the
    // base image is not pulled again, and every step of the build comes
    // from the layer cache.
    sup.dstack_ok(&["vm", "stop", "built"]);
    sup.dstack_ok(&["vm", "start", "built"]);
    let body = http_get(port, "/", Duration::from_secs(600)).unwrap_or_else(|e| {
        let logs = sup.dstack_ok(&["vm", "logs", "built", "-n", "300"]);
        panic!("{e}\n{logs}")
    });
    assert!(body.contains("built: hello-from-build"), "{body}");
    let logs = sup.dstack_ok(&["vm", "logs", "built", "-n", "2000"]);
    assert_eq!(
        logs.matches("web | [build] building web").count(),
        2,
        "{logs}"
    );
    assert_eq!(
        logs.matches("[build] Trying to pull 127.0.0.1:5000/dstack-tests/base")
            .count(),
        1,
        "the base image is pulled once, then kept on the data disk:\n{logs}"
    );
    let second = logs
        .rsplit_once("web | [build] building web")
        .map(|(_, tail)| tail)
        .unwrap_or_default();
    let steps = build_steps(second, "web");
    assert_eq!(steps.len(), 9, "{second}");
    for (step, cached) in &steps {
        assert!(
            cached,
            "{step} was built again, not taken from the cache:\n{second}"
        );
    }
    sup.dstack_ok(&["vm", "stop", "built"]);
}
