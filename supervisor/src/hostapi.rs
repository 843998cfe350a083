//! The host API a guest calls ([`dstack_proto::host`]): config bundle,
//! notifications, logs, the blobs the VM was deployed with (its build
//! contexts, [`dstack_proto::blob`]), and on sim TEE hosts the VM's simulated TDX module
//! (`/v1/tee/*`), and GetSealingKey from the local key provider
//! ([`SEALING_KEY_PATH`]). One listener per VM at `<vm>/vsock_10000`, where the
//! vsock backend delivers the guest's connections to host port 10000.
//!
//! The VM is known by the listener a request arrives on — each listener
//! serves one [`GuestSink`] — and never by anything in the request, so one
//! guest cannot speak for another.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dstack_proto::ApiError;
use dstack_proto::blob::{BLOBS_PATH, is_sha256_hex};
use dstack_proto::host::{
    ConfigBundle, GetSealingKeyRequest, LogBatch, Notification, QuoteRequest, QuoteResponse,
    RtmrExtend, SEALING_KEY_PATH,
};
use serde::de::DeserializeOwned;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use crate::key_provider::{KeyProvider, KeyProviderError};
use crate::sim_tee::{SimTd, SimTeeError};
use crate::vsock::remove_if_exists;

/// What the host API does for one VM; implemented by the VMM's per-VM
/// state, and by a recording fake in tests.
pub trait GuestSink: Send + Sync + 'static {
    /// The config bundle for this VM.
    fn config(&self) -> Result<ConfigBundle, String>;
    /// Records a notification. `Err` for a payload that cannot be accepted.
    fn notify(&self, notification: Notification) -> Result<(), String>;
    /// Appends log lines to the VM's app log.
    fn append_logs(&self, batch: LogBatch) -> io::Result<()>;
    /// The VM's simulated TDX module, if the host plays one for it.
    fn sim_td(&self) -> Option<Arc<SimTd>> {
        None
    }
    /// The local key provider this host offers its guests, if any.
    fn key_provider(&self) -> Option<Arc<KeyProvider>> {
        None
    }
    /// The file of blob `sha256`, if this VM was deployed with it.
    fn blob(&self, _sha256: &str) -> Option<PathBuf> {
        None
    }
}

/// The host API routes for one VM.
pub fn router<S: GuestSink>(sink: Arc<S>) -> Router {
    Router::new()
        .route("/v1/config", get(config::<S>))
        .route("/v1/notify", post(notify::<S>))
        .route("/v1/logs", post(logs::<S>))
        .route(&format!("{BLOBS_PATH}{{sha256}}"), get(blob::<S>))
        .route("/v1/tee", get(tee_info::<S>))
        .route("/v1/tee/extend", post(tee_extend::<S>))
        .route("/v1/tee/quote", post(tee_quote::<S>))
        .route("/v1/tee/collateral", get(tee_collateral::<S>))
        .route(SEALING_KEY_PATH, post(sealing_key::<S>))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such host API path".into()) })
        .with_state(sink)
}

/// Binds the VM's host API listener, replacing a stale socket file left by
/// a previous supervisor (nobody can be accepting on it: we own the VM).
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    remove_if_exists(path)?;
    UnixListener::bind(path)
}

/// Serves the host API for `sink` on `listener` until the task is aborted.
pub fn serve<S: GuestSink>(listener: UnixListener, sink: Arc<S>) -> JoinHandle<()> {
    let app = router(sink);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("host API server stopped: {e}");
        }
    })
}

async fn config<S: GuestSink>(State(sink): State<Arc<S>>) -> Response {
    match sink.config() {
        Ok(bundle) => axum::Json(bundle).into_response(),
        Err(reason) => error(StatusCode::INTERNAL_SERVER_ERROR, reason),
    }
}

async fn notify<S: GuestSink>(State(sink): State<Arc<S>>, body: Bytes) -> Response {
    let notification: Notification = match parse(&body) {
        Ok(n) => n,
        Err(text) => return error(StatusCode::BAD_REQUEST, text),
    };
    match sink.notify(notification) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(reason) => error(StatusCode::BAD_REQUEST, reason),
    }
}

async fn logs<S: GuestSink>(State(sink): State<Arc<S>>, body: Bytes) -> Response {
    let batch: LogBatch = match parse(&body) {
        Ok(batch) => batch,
        Err(text) => return error(StatusCode::BAD_REQUEST, text),
    };
    match sink.append_logs(batch) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store logs: {e}"),
        ),
    }
}

/// Streams a blob of the VM: up to 64 MiB, which is not held in memory.
async fn blob<S: GuestSink>(
    State(sink): State<Arc<S>>,
    UrlPath(sha256): UrlPath<String>,
) -> Response {
    use tokio::io::AsyncReadExt;
    if !is_sha256_hex(&sha256) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{sha256:?} is not a SHA-256 in lowercase hex"),
        );
    }
    let Some(path) = sink.blob(&sha256) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("this VM was deployed with no blob {sha256}"),
        );
    };
    let opened = match tokio::fs::File::open(&path).await {
        Ok(file) => file.metadata().await.map(|m| (file, m.len())),
        Err(e) => Err(e),
    };
    let (file, len) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read {}: {e}", path.display()),
            );
        }
    };
    let chunks = futures_util::stream::try_unfold(file, |mut file| async move {
        let mut chunk = vec![0u8; 1 << 20];
        let n = file.read(&mut chunk).await?;
        if n == 0 {
            return Ok::<_, io::Error>(None);
        }
        chunk.truncate(n);
        Ok(Some((Bytes::from(chunk), file)))
    });
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_string(),
            ),
            (axum::http::header::CONTENT_LENGTH, len.to_string()),
        ],
        axum::body::Body::from_stream(chunks),
    )
        .into_response()
}

fn tee_error(e: &SimTeeError) -> Response {
    let status = match e {
        SimTeeError::Absent => StatusCode::NOT_FOUND,
        SimTeeError::Register(_) | SimTeeError::Length { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, crate::error::error_chain(e))
}

async fn tee_info<S: GuestSink>(State(sink): State<Arc<S>>) -> Response {
    match sink.sim_td() {
        Some(td) => axum::Json(td.info()).into_response(),
        None => tee_error(&SimTeeError::Absent),
    }
}

async fn tee_extend<S: GuestSink>(State(sink): State<Arc<S>>, body: Bytes) -> Response {
    let request: RtmrExtend = match parse(&body) {
        Ok(request) => request,
        Err(text) => return error(StatusCode::BAD_REQUEST, text),
    };
    let Some(td) = sink.sim_td() else {
        return tee_error(&SimTeeError::Absent);
    };
    // Persisted before it is acknowledged: a file write.
    match tokio::task::spawn_blocking(move || td.extend(request.index, &request.digest)).await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => tee_error(&e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn tee_quote<S: GuestSink>(State(sink): State<Arc<S>>, body: Bytes) -> Response {
    let request: QuoteRequest = match parse(&body) {
        Ok(request) => request,
        Err(text) => return error(StatusCode::BAD_REQUEST, text),
    };
    let Some(td) = sink.sim_td() else {
        return tee_error(&SimTeeError::Absent);
    };
    match tokio::task::spawn_blocking(move || td.quote(&request.report_data)).await {
        Ok(Ok(quote)) => axum::Json(QuoteResponse { quote }).into_response(),
        Ok(Err(e)) => tee_error(&e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn tee_collateral<S: GuestSink>(State(sink): State<Arc<S>>) -> Response {
    let Some(td) = sink.sim_td() else {
        return tee_error(&SimTeeError::Absent);
    };
    match tokio::task::spawn_blocking(move || td.collateral_json()).await {
        Ok(Ok(json)) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response(),
        Ok(Err(e)) => tee_error(&e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn sealing_key<S: GuestSink>(State(sink): State<Arc<S>>, body: Bytes) -> Response {
    let request: GetSealingKeyRequest = match parse(&body) {
        Ok(request) => request,
        Err(text) => return error(StatusCode::BAD_REQUEST, text),
    };
    let Some(provider) = sink.key_provider() else {
        return error(StatusCode::NOT_FOUND, KeyProviderError::Absent.to_string());
    };
    // Quote verification and the upstream round trip block.
    match tokio::task::spawn_blocking(move || provider.provide(&request.quote)).await {
        Ok(Ok(response)) => axum::Json(response).into_response(),
        Ok(Err(e)) => {
            let status = if e.is_bad_request() {
                StatusCode::BAD_REQUEST
            } else if matches!(e, KeyProviderError::Upstream { .. }) {
                StatusCode::BAD_GATEWAY
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            tracing::warn!("GetSealingKey refused: {}", crate::error::error_chain(&e));
            error(status, crate::error::error_chain(&e))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Parses a JSON body; the error text names the bad field (answered with 400).
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let reason = e.into_inner();
        // "." is the whole body, "?" a place serde could not name (e.g. at EOF).
        if path == "." || path == "?" {
            format!("invalid body: {reason}")
        } else {
            format!("{path}: {reason}")
        }
    })
}

fn error(status: StatusCode, text: String) -> Response {
    (status, axum::Json(ApiError::new(text))).into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::body::Body;
    use axum::http::Request;
    use dstack_proto::host::{LogEntry, LogStream, SysConfig};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    #[derive(Default)]
    struct Recorder {
        notes: Mutex<Vec<Notification>>,
        lines: Mutex<Vec<LogEntry>>,
        td: Option<Arc<SimTd>>,
        provider: Option<Arc<KeyProvider>>,
        blobs: Option<PathBuf>,
    }

    impl GuestSink for Recorder {
        fn config(&self) -> Result<ConfigBundle, String> {
            Ok(ConfigBundle {
                app_compose: "{\"name\":\"x\"}".into(),
                encrypted_env: vec![1, 2],
                user_config: String::new(),
                sys_config: SysConfig::new("0a1b2c3d", "web"),
                instance_info: Default::default(),
            })
        }

        fn notify(&self, notification: Notification) -> Result<(), String> {
            if notification.event == "bad" {
                return Err("bad payload".into());
            }
            self.notes.lock().unwrap().push(notification);
            Ok(())
        }

        fn append_logs(&self, batch: LogBatch) -> io::Result<()> {
            self.lines.lock().unwrap().extend(batch.entries);
            Ok(())
        }

        fn sim_td(&self) -> Option<Arc<SimTd>> {
            self.td.clone()
        }

        fn key_provider(&self) -> Option<Arc<KeyProvider>> {
            self.provider.clone()
        }

        fn blob(&self, sha256: &str) -> Option<PathBuf> {
            crate::state::blobs::find(self.blobs.as_ref()?, sha256)
        }
    }

    async fn call(app: &Router, method: &str, path: &str, body: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn serves_config_notify_and_logs() {
        let sink = Arc::new(Recorder::default());
        let app = router(sink.clone());
        let (status, body) = call(&app, "GET", "/v1/config", "").await;
        assert_eq!(status, StatusCode::OK);
        let bundle: ConfigBundle = serde_json::from_str(&body).unwrap();
        assert_eq!(bundle.app_compose, "{\"name\":\"x\"}");
        assert!(body.contains("\"encrypted_env\":\"0102\""), "{body}");

        let (status, _) = call(
            &app,
            "POST",
            "/v1/notify",
            r#"{"event":"boot.progress","payload":"running"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(sink.notes.lock().unwrap()[0].payload, "running");

        let (status, _) = call(
            &app,
            "POST",
            "/v1/logs",
            r#"{"entries":[{"ts_ms":1,"service":"web","stream":"stderr","line":"hi"}]}"#,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(sink.lines.lock().unwrap()[0].stream, LogStream::Stderr);
    }

    #[tokio::test]
    async fn serves_the_vms_own_blobs_whole_and_no_other() {
        use sha2::{Digest, Sha256};
        let dir = tempfile::tempdir().unwrap();
        // Over one read chunk, so the stream has several.
        let bytes: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i % 251) as u8).collect();
        let sha256 = hex::encode(Sha256::digest(&bytes));
        crate::state::blobs::put(dir.path(), &sha256, &bytes).unwrap();
        let app = router(Arc::new(Recorder {
            blobs: Some(dir.path().to_owned()),
            ..Recorder::default()
        }));
        let request = Request::get(format!("/v1/blobs/sha256/{sha256}"))
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-length"],
            bytes.len().to_string().as_str()
        );
        let got = response.into_body().collect().await.unwrap().to_bytes();
        assert!(got == bytes, "the blob comes back byte for byte");

        let other = hex::encode(Sha256::digest(b"another app's context"));
        let (status, body) = call(&app, "GET", &format!("/v1/blobs/sha256/{other}"), "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("deployed with no blob"), "{body}");
        let (status, _) = call(&app, "GET", "/v1/blobs/sha256/..%2F..%2Fmanifest.json", "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        // A VM deployed without blobs has none.
        let app = router(Arc::new(Recorder::default()));
        let (status, _) = call(&app, "GET", &format!("/v1/blobs/sha256/{sha256}"), "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn bad_requests_get_json_errors() {
        let app = router(Arc::new(Recorder::default()));
        let (status, body) = call(&app, "POST", "/v1/notify", r#"{"event":"x","extra":1}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let err: ApiError = serde_json::from_str(&body).unwrap();
        assert!(err.error.contains("extra"), "{}", err.error);

        let (status, body) = call(
            &app,
            "POST",
            "/v1/logs",
            r#"{"entries":[{"ts_ms":1,"service":"web","stream":"tty","line":"hi"}]}"#,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("entries[0].stream"), "{body}");

        let (status, _) = call(&app, "POST", "/v1/notify", r#"{"event":"bad"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = call(&app, "GET", "/v1/other", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn serves_the_simulated_tdx_module() {
        // No simulated TEE (a TDX host): 404.
        let app = router(Arc::new(Recorder::default()));
        let (status, body) = call(&app, "GET", "/v1/tee", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

        let dir = tempfile::tempdir().unwrap();
        let measured = crate::sim_tee::tests::measured();
        let launch = crate::sim_tee::TdLaunch {
            measured: &measured,
            mr_config_id: [0; 48],
        };
        let authority = Arc::new(dstack_attest::SimAuthority::generate().unwrap());
        let td = SimTd::boot(authority, &launch, dir.path().join("sim-td.json")).unwrap();
        let app = router(Arc::new(Recorder {
            td: Some(Arc::new(td)),
            ..Recorder::default()
        }));
        let (status, body) = call(&app, "GET", "/v1/tee", "").await;
        assert_eq!(status, StatusCode::OK);
        let info: dstack_proto::host::TeeInfo = serde_json::from_str(&body).unwrap();
        assert_eq!(info.kind, "sim");
        assert!(info.boot_event_log.starts_with('['));

        let digest = hex::encode([7u8; 48]);
        let (status, _) = call(
            &app,
            "POST",
            "/v1/tee/extend",
            &format!(r#"{{"index":3,"digest":"{digest}"}}"#),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, body) = call(
            &app,
            "POST",
            "/v1/tee/extend",
            &format!(r#"{{"index":0,"digest":"{digest}"}}"#),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("only RTMR3"), "{body}");

        let (status, body) = call(
            &app,
            "POST",
            "/v1/tee/quote",
            &format!(r#"{{"report_data":"{}"}}"#, hex::encode([1u8; 64])),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let quote: QuoteResponse = serde_json::from_str(&body).unwrap();
        let parsed = dstack_attest::Quote::parse(&quote.quote).unwrap();
        assert_eq!(parsed.report_data(), &[1u8; 64]);
        let (status, body) = call(&app, "POST", "/v1/tee/quote", r#"{"report_data":"00"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("report_data"), "{body}");
        let (status, body) = call(&app, "GET", "/v1/tee/collateral", "").await;
        assert_eq!(status, StatusCode::OK);
        dstack_attest::Collateral::from_json(&body).unwrap();
    }

    #[tokio::test]
    async fn serves_sealing_keys_and_names_bad_quotes() {
        use dstack_keys::sealing::{RecipientKey, check_evidence};
        use dstack_proto::host::GetSealingKeyResponse;

        let body = |quote: &[u8]| format!(r#"{{"quote":"{}"}}"#, hex::encode(quote));
        // No provider (a TDX host without --local-key-provider): a named 404.
        let app = router(Arc::new(Recorder::default()));
        let (status, text) = call(&app, "POST", SEALING_KEY_PATH, &body(&[1])).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(text.contains("--local-key-provider"), "{text}");

        let authority = Arc::new(dstack_attest::SimAuthority::generate().unwrap());
        let provider = crate::key_provider::SimKeyProvider::new(
            authority.clone(),
            zeroize::Zeroizing::new(vec![7; 32]),
        );
        let app = router(Arc::new(Recorder {
            provider: Some(Arc::new(KeyProvider::Sim(provider))),
            ..Recorder::default()
        }));
        let guest = RecipientKey::generate();
        let td = dstack_attest::SimTdIdentity::default();
        let quote = authority.quote(&td, &guest.report_data()).unwrap();
        let (status, text) = call(&app, "POST", SEALING_KEY_PATH, &body(&quote)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let response: GetSealingKeyResponse = serde_json::from_str(&text).unwrap();
        let key = guest.open_sealing_key(&response.encrypted_key).unwrap();
        assert_eq!(key.len(), 32);
        let provider_quote = dstack_attest::Quote::parse(&response.provider_quote).unwrap();
        check_evidence(&response.encrypted_key, provider_quote.report_data()).unwrap();

        // Not hex, cut short, tampered, under another root: 400, named.
        let (status, text) = call(&app, "POST", SEALING_KEY_PATH, r#"{"quote":"zz"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("quote"), "{text}");
        let (status, text) = call(&app, "POST", SEALING_KEY_PATH, &body(&quote[..300])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("does not verify"), "{text}");
        let mut tampered = quote.clone();
        tampered[300] ^= 1;
        let (status, text) = call(&app, "POST", SEALING_KEY_PATH, &body(&tampered)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("signature"), "{text}");
        let foreign = dstack_attest::SimAuthority::generate().unwrap();
        let other = foreign.quote(&td, &guest.report_data()).unwrap();
        let (status, text) = call(&app, "POST", SEALING_KEY_PATH, &body(&other)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("not trusted"), "{text}");
    }

    #[tokio::test]
    async fn rebinds_over_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock_10000");
        drop(bind(&path).unwrap());
        assert!(path.exists(), "a dropped listener leaves its file");
        let listener = bind(&path).unwrap();
        let task = serve(listener, Arc::new(Recorder::default()));
        let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = Request::get("/v1/config")
            .header("host", "host")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(
            sender.send_request(request).await.unwrap().status(),
            StatusCode::OK
        );
        task.abort();
    }
}
