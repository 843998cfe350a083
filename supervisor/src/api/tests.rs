//! The HTTP layer against a recording fake handler: routes, status codes,
//! JSON errors, streaming, auth. No VM is involved (STYLE rule 10).

use std::sync::Mutex;

use axum::body::Body;
use axum::http::Request;
use dstack_proto::supervisor::{VmInfo, VmState, VmSummary};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::api::auth::Token;

/// Records every command and answers from a small script.
#[derive(Default)]
struct Fake {
    seen: Mutex<Vec<String>>,
}

fn vm_info(name: &str) -> VmInfo {
    VmInfo {
        summary: VmSummary {
            id: "0a1b2c3d".into(),
            name: name.into(),
            state: VmState::Running,
            phase: "running".into(),
            image: "img".into(),
            ports: vec![],
            created_at_ms: 1,
        },
        vcpu: 1,
        memory_mb: 256,
        disk_gb: 1,
        cid: 3,
        compose_hash: String::new(),
        app_id: String::new(),
        instance_id: String::new(),
        kms_urls: vec![],
        gateway_urls: vec![],
        pid: Some(42),
        events: vec![],
        boot_phases: vec![],
        containers: vec![],
        tee: String::new(),
        key_provider: String::new(),
        rtmr3_events: vec![],
        data_disk: String::new(),
        error: None,
    }
}

impl RequestHandler for Fake {
    async fn handle(&self, command: Command) -> Result<Reply, VmmError> {
        self.seen.lock().unwrap().push(format!("{command:?}"));
        let known = |vm: &str| {
            if vm == "web" || vm == "0a1b2c3d" {
                Ok(())
            } else {
                Err(VmmError::NotFound(vm.to_owned()))
            }
        };
        match command {
            Command::Version => Ok(Reply::Version(dstack_proto::supervisor::Version {
                version: "0.1.0".into(),
                accel: "tcg".into(),
            })),
            Command::Deploy(req) if req.name == "taken" => {
                Err(VmmError::conflict("name", "already used"))
            }
            Command::Deploy(req) if req.name == "broken" => {
                Err(VmmError::io("write", "/s/vms/x/manifest.json")(
                    std::io::Error::other("disk full"),
                ))
            }
            Command::Deploy(req) => Ok(Reply::Created(vm_info(&req.name))),
            Command::PutBlob { sha256, .. } if sha256 == "bad" => {
                Err(VmmError::invalid("blob", "bad name"))
            }
            Command::PutBlob { .. } => Ok(Reply::BlobStored),
            Command::List => Ok(Reply::Vms(vec![vm_info("web").summary])),
            Command::Get(vm) | Command::Start { vm, .. } | Command::Stop { vm, .. } => {
                known(&vm).map(|()| Reply::Vm(vm_info(&vm)))
            }
            Command::Remove { vm, .. } => known(&vm).map(|()| Reply::Removed),
            Command::Logs { vm, query } => {
                known(&vm)?;
                let text = format!("{}\n", query.lines);
                let body: crate::logs::LogStream =
                    Box::pin(futures_util::stream::iter([Ok(bytes::Bytes::from(text))]));
                Ok(Reply::Logs {
                    channel: query.channel,
                    body,
                })
            }
            Command::Images => Ok(Reply::Images(vec![])),
            Command::EnvKey(req) if req.kms_url.is_empty() => Err(VmmError::NoKms),
            Command::EnvKey(req) if req.kms_url == "https://10.0.2.2:1" => {
                Err(VmmError::KmsUnreachable {
                    url: req.kms_url,
                    reached: "https://127.0.0.1:1".into(),
                    reason: "Connection refused".into(),
                })
            }
            Command::EnvKey(_) => Ok(Reply::EnvKey(dstack_proto::kms::PublicKeyResponse {
                public_key: vec![1; 32],
                signature: vec![],
                timestamp: 7,
                signature_v1: vec![2; 65],
            })),
            Command::KmsMeta(_) => Ok(Reply::KmsMeta(Box::new(
                dstack_proto::kms::GetMetaResponse {
                    k256_pubkey: vec![3; 33],
                    ..Default::default()
                },
            ))),
        }
    }
}

struct Answer {
    status: StatusCode,
    content_type: String,
    body: String,
}

async fn call(app: &Router, method: &str, path: &str, body: &str) -> Answer {
    call_with(app, Request::builder().method(method).uri(path), body).await
}

async fn call_with(app: &Router, builder: axum::http::request::Builder, body: &str) -> Answer {
    let request = builder.body(Body::from(body.to_owned())).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

fn error_text(answer: &Answer) -> String {
    assert!(
        answer.content_type.starts_with("application/json"),
        "{}",
        answer.content_type
    );
    serde_json::from_str::<ApiError>(&answer.body)
        .unwrap_or_else(|e| panic!("not an ApiError ({e}): {}", answer.body))
        .error
}

#[tokio::test]
async fn every_route_maps_to_its_command_and_status() {
    let fake = Arc::new(Fake::default());
    let app = router(fake.clone());
    let deploy = r#"{"name":"web","app_compose":"{}"}"#;
    let cases = [
        ("GET", "/v1/version", "", StatusCode::OK),
        ("POST", "/v1/vms", deploy, StatusCode::CREATED),
        ("GET", "/v1/vms", "", StatusCode::OK),
        ("GET", "/v1/vms/web", "", StatusCode::OK),
        ("POST", "/v1/vms/web/start", "", StatusCode::OK),
        ("POST", "/v1/vms/0a1b2c3d/stop", "", StatusCode::OK),
        (
            "DELETE",
            "/v1/vms/web?force=true",
            "",
            StatusCode::NO_CONTENT,
        ),
        ("GET", "/v1/images", "", StatusCode::OK),
        (
            "POST",
            "/v1/vms/web/start?format_nonempty_disk=true",
            "",
            StatusCode::OK,
        ),
        (
            "POST",
            "/v1/env-key",
            r#"{"app_id":"11","kms_url":"https://k:1"}"#,
            StatusCode::OK,
        ),
        ("POST", "/v1/kms-meta", "", StatusCode::OK),
    ];
    for (method, path, body, status) in cases {
        let answer = call(&app, method, path, body).await;
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.body);
    }
    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), cases.len());
    assert!(
        seen[1].starts_with("Deploy(DeployRequest { name: \"web\""),
        "{}",
        seen[1]
    );
    assert_eq!(seen[3], "Get(\"web\")");
    assert_eq!(seen[5], "Stop { vm: \"0a1b2c3d\", force: false }");
    assert_eq!(seen[6], "Remove { vm: \"web\", force: true }");
    assert_eq!(
        seen[4],
        "Start { vm: \"web\", format_nonempty_disk: false }"
    );
    assert_eq!(seen[8], "Start { vm: \"web\", format_nonempty_disk: true }");
    assert!(seen[9].starts_with("EnvKey(EnvKeyRequest"), "{}", seen[9]);
    assert_eq!(seen[10], "KmsMeta(KmsMetaRequest { kms_url: \"\" })");
}

#[tokio::test]
async fn blobs_are_put_raw_up_to_their_own_limit() {
    let fake = Arc::new(Fake::default());
    let app = router(fake.clone());
    let hex = "ab".repeat(32);
    // Larger than any JSON body, within a build context's limit.
    let big = "x".repeat(MAX_BODY + 1);
    let answer = call(&app, "PUT", &format!("/v1/blobs/sha256/{hex}"), &big).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.body);
    assert_eq!(
        fake.seen.lock().unwrap().last().unwrap(),
        &format!(
            "PutBlob {{ sha256: \"{hex}\", bytes: {} bytes }}",
            big.len()
        )
    );
    let answer = call(&app, "PUT", "/v1/blobs/sha256/bad", "x").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_text(&answer), "blob: bad name");
    let over = "x".repeat(usize::try_from(MAX_BLOB_BYTES).unwrap() + 1);
    let answer = call(&app, "PUT", &format!("/v1/blobs/sha256/{hex}"), &over).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_text(&answer).contains("64 MiB"), "{}", answer.body);
    let answer = call(&app, "GET", &format!("/v1/blobs/sha256/{hex}"), "").await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    // A JSON body is still held to MAX_BODY.
    let answer = call(&app, "POST", "/v1/vms", &big).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn the_kms_relays_answer_the_kms_shapes_and_name_their_errors() {
    let app = router(Arc::new(Fake::default()));
    let answer = call(
        &app,
        "POST",
        "/v1/env-key",
        r#"{"app_id":"11","kms_url":"https://k:1"}"#,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let key: dstack_proto::kms::PublicKeyResponse = serde_json::from_str(&answer.body).unwrap();
    assert_eq!((key.public_key, key.timestamp), (vec![1; 32], 7));
    // Upstream's field names and hex bytes.
    assert!(
        answer
            .body
            .contains(&format!("\"signature_v1\":\"{}\"", "02".repeat(65)))
    );
    let answer = call(&app, "POST", "/v1/kms-meta", r#"{"kms_url":""}"#).await;
    let meta: dstack_proto::kms::GetMetaResponse = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(meta.k256_pubkey, vec![3; 33]);

    let answer = call(&app, "POST", "/v1/env-key", r#"{"app_id":"11"}"#).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(error_text(&answer).starts_with("no KMS configured"));
    let answer = call(
        &app,
        "POST",
        "/v1/env-key",
        r#"{"app_id":"11","kms_url":"https://10.0.2.2:1"}"#,
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        error_text(&answer),
        "cannot reach the KMS at https://10.0.2.2:1 (reached as https://127.0.0.1:1): \
         Connection refused"
    );
    let answer = call(&app, "POST", "/v1/env-key", r#"{"appid":"11"}"#).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let answer = call(&app, "GET", "/v1/env-key", "").await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    let answer = call(
        &app,
        "POST",
        "/v1/vms/web/start?format_nonempty_disk=maybe",
        "",
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        error_text(&answer),
        "format_nonempty_disk: \"maybe\" is not a boolean"
    );
}

#[tokio::test]
async fn errors_are_json_with_the_right_status() {
    let fake = Arc::new(Fake::default());
    let app = router(fake.clone());

    let answer = call(&app, "GET", "/v1/vms/x", "").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(error_text(&answer), r#"no VM named or with id "x""#);
    for (method, path) in [
        ("POST", "/v1/vms/x/start"),
        ("POST", "/v1/vms/x/stop"),
        ("DELETE", "/v1/vms/x"),
    ] {
        assert_eq!(
            call(&app, method, path, "").await.status,
            StatusCode::NOT_FOUND
        );
    }

    let answer = call(
        &app,
        "POST",
        "/v1/vms",
        r#"{"name":"taken","app_compose":"{}"}"#,
    )
    .await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(error_text(&answer), "name: already used");

    let answer = call(
        &app,
        "POST",
        "/v1/vms",
        r#"{"name":"broken","app_compose":"{}"}"#,
    )
    .await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        error_text(&answer),
        "cannot write /s/vms/x/manifest.json: disk full"
    );

    // Refused before reaching the handler.
    let before = fake.seen.lock().unwrap().len();
    let answer = call(
        &app,
        "POST",
        "/v1/vms",
        r#"{"name":"a","app_compose":"{}","x":1}"#,
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(error_text(&answer).contains("unknown field `x`"));
    let answer = call(&app, "POST", "/v1/vms", "{").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let text = error_text(&answer);
    assert!(text.starts_with("body: "), "{text}");
    let answer = call(&app, "GET", "/v1/vms/web/logs?lines=many", "").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_text(&answer), "lines: \"many\" is not a number");
    let big = format!(
        r#"{{"name":"a","app_compose":"{}"}}"#,
        "x".repeat(MAX_BODY + 1)
    );
    let answer = call(&app, "POST", "/v1/vms", &big).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    error_text(&answer);
    assert_eq!(fake.seen.lock().unwrap().len(), before);

    let answer = call(&app, "GET", "/v2/vms", "").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    error_text(&answer);
    let answer = call(&app, "PUT", "/v1/vms", "").await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    error_text(&answer);
}

#[tokio::test]
async fn logs_stream_with_a_content_type_per_channel() {
    let app = router(Arc::new(Fake::default()));
    let answer = call(&app, "GET", "/v1/vms/web/logs?lines=7&follow=false", "").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type, "application/x-ndjson");
    assert_eq!(answer.body, "7\n");
    let answer = call(&app, "GET", "/v1/vms/web/logs?channel=serial", "").await;
    assert_eq!(answer.content_type, "text/plain; charset=utf-8");
    assert_eq!(answer.body, format!("{}\n", crate::logs::DEFAULT_LINES));
}

#[tokio::test]
async fn tcp_requires_the_bearer_token() {
    let token = Token::from_file_content("s3cret").unwrap();
    let app = router(Arc::new(Fake::default())).layer(axum::middleware::from_fn_with_state(
        token,
        auth::require_token,
    ));
    let answer = call(&app, "GET", "/v1/version", "").await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    error_text(&answer);
    let answer = call(&app, "POST", "/v1/env-key", r#"{"app_id":"11"}"#).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let wrong = Request::builder()
        .uri("/v1/version")
        .header("authorization", "Bearer nope");
    assert_eq!(
        call_with(&app, wrong, "").await.status,
        StatusCode::UNAUTHORIZED
    );
    let right = Request::builder()
        .uri("/v1/version")
        .header("authorization", "Bearer s3cret");
    let answer = call_with(&app, right, "").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.contains("\"accel\":\"tcg\""));
}

#[tokio::test]
async fn the_checked_in_openapi_matches_the_routes() {
    let spec: yaml_serde::Value =
        yaml_serde::from_str(include_str!("../../openapi.yaml")).expect("openapi.yaml parses");
    let paths = spec["paths"].as_mapping().expect("paths");
    let app = router(Arc::new(Fake::default()));
    let mut documented = 0;
    for (path, item) in paths {
        let path = path
            .as_str()
            .unwrap()
            .replace("{vm}", "web")
            .replace("{sha256}", &"ab".repeat(32));
        for method in ["get", "post", "delete", "put", "patch"] {
            if item.get(method).is_none() {
                continue;
            }
            documented += 1;
            let body = match (path.as_str(), method) {
                ("/v1/vms", "post") => r#"{"name":"web","app_compose":"{}"}"#,
                ("/v1/env-key", "post") => r#"{"app_id":"11","kms_url":"https://k:1"}"#,
                _ => "",
            };
            let answer = call(&app, &method.to_uppercase(), &path, body).await;
            assert!(
                answer.status.is_success(),
                "{method} {path} is documented but answers {}: {}",
                answer.status,
                answer.body
            );
        }
    }
    // Every route of `router` (and no other) is documented.
    assert_eq!(documented, 12);
}
