//! A `build:` whose Dockerfile and files are on the developer's machine,
//! in a real CVM (QEMU TCG): `dstack vm deploy --check` packs the context
//! beside the compose file and reports its hash; the app-compose.json that
//! measures it (`build_contexts`) is deployed; the CLI ships the tar
//! through the supervisor; the guest checks it against the measured hash,
//! unpacks it and the engine builds the Dockerfile, whose `COPY . /www/`
//! brings a page the app then serves (and not what `.dockerignore` leaves
//! out). After a restart the build comes from the engine's layer cache.
//! A context the host swaps stops the boot with a named error.
#![allow(clippy::tests_outside_test_module)] // an integration test crate is all tests

use std::path::Path;
use std::time::{Duration, Instant};

use dstack_e2e::harness::{
    Supervisor, bin_dir, build_steps, free_port, http_get, push_image, repo_root,
    tempfile_dir::TempDir,
};

const COMPOSE: &str = r#"
services:
  web:
    build:
      context: ./site
      dockerfile: Dockerfile
      args:
        SOURCE_DATE_EPOCH: "0"
    ports: ["8080:8080"]
"#;

const DOCKERFILE: &str = r#"FROM 127.0.0.1:5000/dstack-tests/base:latest
ARG SOURCE_DATE_EPOCH
COPY . /www/
RUN ["/bin/busybox", "sh", "-c", "echo built at $SOURCE_DATE_EPOCH > /www/stamp.txt"]
WORKDIR /www
ENTRYPOINT ["/bin/busybox"]
CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]
"#;

/// The developer's directory: the compose file and the context beside it.
fn write_app(dir: &Path, page: &str) {
    let site = dir.join("site");
    std::fs::create_dir_all(site.join("assets")).unwrap();
    std::fs::write(dir.join("compose.yml"), COMPOSE).unwrap();
    std::fs::write(site.join("Dockerfile"), DOCKERFILE).unwrap();
    std::fs::write(site.join("index.html"), page).unwrap();
    std::fs::write(site.join("assets/app.txt"), "an asset\n").unwrap();
    std::fs::write(site.join("secret.env"), "TOKEN=never-shipped\n").unwrap();
    std::fs::write(site.join(".dockerignore"), "*.env\n").unwrap();
}

/// `dstack vm deploy --check` with no supervisor.
fn check(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(bin_dir().join("dstack"))
        .args([
            "--supervisor",
            "unix:/nonexistent.sock",
            "vm",
            "deploy",
            "--check",
        ])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The HTTP status of a path (404 is an answer, not an error).
fn status_of(port: u16, path: &str) -> u16 {
    match ureq::get(&format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(5))
        .call()
    {
        Ok(resp) => resp.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{path}: {e}"),
    }
}

#[test]
fn a_local_build_context_is_shipped_measured_built_and_cached() {
    let dir = TempDir::new("dstack-build-context").unwrap();
    let nonce = format!("shipped-page-{}", std::process::id());
    write_app(dir.path(), &format!("<h1>{nonce}</h1>\n"));
    let compose = dir.path().join("compose.yml");

    // --check packs the context as a deploy would and names what it ships.
    let (ok, out) = check(&[compose.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("ships    services.web.build: the context"),
        "{out}"
    );
    let (ok, json) = check(&["--json", compose.to_str().unwrap()]);
    assert!(ok, "{json}");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let shipped = &report["build_contexts"][0];
    assert_eq!(shipped["service"], "web");
    // Dockerfile, .dockerignore, index.html, assets/app.txt: not secret.env.
    assert_eq!(shipped["files"], 4, "{shipped}");
    let sha256 = shipped["sha256"].as_str().unwrap().to_owned();
    // The same bytes every time.
    let (_, again) = check(&["--json", compose.to_str().unwrap()]);
    assert!(again.contains(&sha256), "{again}");
    // Read from a pipe, the compose file has no directory to find it in.
    let piped = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} --supervisor unix:/nonexistent.sock vm deploy --check /dev/stdin < {}",
            bin_dir().join("dstack").display(),
            compose.display()
        ))
        .output()
        .unwrap();
    let piped_out = String::from_utf8_lossy(&piped.stdout);
    assert!(!piped.status.success(), "{piped_out}");
    assert!(
        piped_out.contains("pass the compose file by its path"),
        "{piped_out}"
    );
    // A missing Dockerfile is refused, naming it.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(broken.join("site")).unwrap();
    std::fs::write(broken.join("compose.yml"), COMPOSE).unwrap();
    let (ok, out) = check(&[broken.join("compose.yml").to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("refused  services.web.build.dockerfile: the Dockerfile")
            && out.contains("/broken/site/Dockerfile does not exist"),
        "{out}"
    );

    // The app-compose.json that measures the context; the local key
    // provider keeps the data disk (and the engine's cache) across restarts.
    let app_compose = serde_json::json!({
        "build_contexts": {"web": sha256},
        "docker_compose_file": COMPOSE,
        "key_provider": "local",
        "manifest_version": 2,
        "name": "shipped",
        "runner": "docker-compose",
    })
    .to_string();
    let app_compose_path = dir.path().join("app-compose.json");
    std::fs::write(&app_compose_path, &app_compose).unwrap();

    push_image(&repo_root().join("reproducible/engine")).unwrap();
    push_image(&repo_root().join("tests/images/base")).unwrap();
    let sup = Supervisor::start("build-context").unwrap();
    let port = free_port();
    let deployed = sup.dstack(&[
        "vm",
        "deploy",
        app_compose_path.to_str().unwrap(),
        "--name",
        "shipped",
        "--memory",
        "2G",
        "--disk",
        "8",
        "--port",
        &format!("{port}:8080"),
        "--timeout",
        "900",
    ]);
    let stderr = String::from_utf8_lossy(&deployed.stderr);
    assert!(deployed.status.success(), "{stderr}\n{}", sup.log());
    assert!(
        stderr.contains("shipping the build context of web") && stderr.contains(&sha256),
        "{stderr}"
    );
    let body = http_get(port, "/index.html", Duration::from_secs(60)).unwrap();
    assert!(body.contains(&nonce), "{body}");
    let asset = http_get(port, "/assets/app.txt", Duration::from_secs(10)).unwrap();
    assert_eq!(asset, "an asset\n");
    let stamp = http_get(port, "/stamp.txt", Duration::from_secs(10)).unwrap();
    assert_eq!(stamp, "built at 0\n");
    assert_eq!(status_of(port, "/secret.env"), 404, ".dockerignore holds");

    // What is measured is the app-compose naming the context's hash.
    let info: serde_json::Value =
        serde_json::from_str(&sup.dstack_ok(&["vm", "info", "shipped", "--json"])).unwrap();
    let compose_hash = dstack_e2e_sha256(app_compose.as_bytes());
    assert_eq!(info["compose_hash"], compose_hash.as_str());
    let logs = sup.dstack_ok(&["vm", "logs", "shipped", "-n", "2000"]);
    assert!(
        logs.contains(&format!("sha256 {sha256} checked")),
        "the guest checked the context:\n{logs}"
    );
    assert!(logs.contains("web | [build] "), "{logs}");

    // Restarted: the context comes again, is checked again, and every
    // step of the build comes from the engine's cache on the data disk.
    sup.dstack_ok(&["vm", "stop", "shipped"]);
    sup.dstack_ok(&["vm", "start", "shipped"]);
    let body = http_get(port, "/index.html", Duration::from_secs(600)).unwrap_or_else(|e| {
        let logs = sup.dstack_ok(&["vm", "logs", "shipped", "-n", "300"]);
        panic!("{e}\n{logs}")
    });
    assert!(body.contains(&nonce), "{body}");
    let logs = sup.dstack_ok(&["vm", "logs", "shipped", "-n", "4000"]);
    assert_eq!(
        logs.matches("web | [build] building web").count(),
        2,
        "{logs}"
    );
    let second = logs
        .rsplit_once("web | [build] building web")
        .map(|(_, tail)| tail)
        .unwrap_or_default();
    let steps = build_steps(second, "web");
    assert_eq!(
        steps.len(),
        6,
        "ARG, COPY, RUN, WORKDIR, ENTRYPOINT, CMD:\n{second}"
    );
    for (step, cached) in &steps {
        assert!(
            cached,
            "{step} was built again, not taken from the cache:\n{second}"
        );
    }

    // A context the host swaps is refused: the boot stops, naming it.
    sup.dstack_ok(&["vm", "stop", "shipped"]);
    let id = info["id"].as_str().unwrap();
    let blob = sup
        .state
        .path()
        .join("vms")
        .join(id)
        .join("blobs")
        .join(&sha256);
    assert!(blob.is_file(), "{}", blob.display());
    // A fresh inode: the upload that was linked in is not touched.
    std::fs::remove_file(&blob).unwrap();
    std::fs::write(&blob, b"FROM evil\n").unwrap();
    sup.dstack_ok(&["vm", "start", "shipped"]);
    let deadline = Instant::now() + Duration::from_secs(600);
    let failed = loop {
        let info: serde_json::Value =
            serde_json::from_str(&sup.dstack_ok(&["vm", "info", "shipped", "--json"])).unwrap();
        if info["state"] == "failed" {
            break info;
        }
        assert!(Instant::now() < deadline, "the boot did not fail: {info}");
        std::thread::sleep(Duration::from_secs(2));
    };
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the app-compose measures") && error.contains(&sha256),
        "{failed}"
    );
}

/// SHA-256 hex, as `vm info` shows the compose-hash.
fn dstack_e2e_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
