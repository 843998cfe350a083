//! Upstream's auth API client (UPSTREAM §7.2): the KMS POSTs the caller's
//! [`BootInfo`] to `<url>/bootAuth/app` or `<url>/bootAuth/kms` and obeys
//! the `{isAllowed, gatewayAppId, reason}` answer; `GET <url>/` describes
//! the backend. auth-eth, auth-simple and auth-mock all speak it.
//!
//! One HTTP/1.1 connection per call over plain TCP, as upstream opens a
//! fresh client per call: the webhook is asked once per key release, so a
//! pool would buy little and a stale pooled connection would cost a retry.

use std::sync::Arc;
use std::time::Duration;

use dstack_proto::kms::{AuthApiInfo, BootAuthResponse, BootInfo};
use hyper::body::Bytes;
use hyper::{Method, StatusCode, Uri};
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use super::{AuthError, AuthInfo};

/// How long one call may take, connect to last body byte. A key release
/// waits on it, so a hung backend must fail the request rather than the KMS.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest answer read: a verdict or info object is a few hundred bytes,
/// so anything much bigger is a misconfigured URL, not an answer.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How much of an unusable answer an error quotes (upstream quotes 512).
const BODY_EXCERPT: usize = 512;

/// Sent on every call, as upstream's KMS sends `dstack-kms/<version>`.
const AGENT: &str = concat!("dstack-kms/", env!("CARGO_PKG_VERSION"));

const BACKEND: &str = "webhook";

/// Why a webhook URL cannot be used (found when the backend is built, so a
/// KMS with a bad URL fails at start-up, not on its first key request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The URL does not parse or has a part the client cannot honour.
    #[error("webhook URL {url:?} is invalid: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// An https URL, but the system has no CA certificates to check it with.
    #[error("webhook URL {url:?}: no system CA certificates to verify https with ({reason})")]
    NoRoots {
        /// The URL as given.
        url: String,
        /// Why none were loaded.
        reason: String,
    },
}

/// One endpoint of the auth API, resolved once.
#[derive(Debug, Clone)]
struct Endpoint {
    /// The URL, for messages.
    url: String,
    /// Host to connect to (IPv6 without brackets).
    host: String,
    /// TCP port (80, or 443 for https, when the URL has none).
    port: u16,
    /// TLS (https), checked against the system's CA certificates.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The `Host` header: the URL's authority.
    authority: String,
    /// The request target (origin form).
    path: String,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Self, WebhookError> {
        let bad = |reason| WebhookError::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("http") => None,
            Some("https") => Some(system_tls().map_err(|reason| WebhookError::NoRoots {
                url: url.to_owned(),
                reason,
            })?),
            Some(_) => return Err(bad("the scheme must be http or https")),
            None => return Err(bad("missing http:// or https:// scheme")),
        };
        let authority = uri.authority().ok_or_else(|| bad("missing host"))?;
        // Credentials would end up in every error message and log line.
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        let host = authority.host();
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        // `Uri` drops a port it cannot read as u16 (`:99999`); falling back
        // to 80 then would ask some other service.
        let port = match authority.as_str().rsplit_once(':') {
            Some((_, text)) if !text.contains(']') => text
                .parse::<u16>()
                .map_err(|_| bad("the port is not a number up to 65535"))?,
            _ if tls.is_some() => 443,
            _ => 80,
        };
        Ok(Self {
            url: url.to_owned(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            tls,
            authority: authority.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

/// The auth API client: the `webhook` backend.
#[derive(Debug, Clone)]
pub struct WebhookBackend {
    info: Endpoint,
    app: Endpoint,
    kms: Endpoint,
    timeout: Duration,
}

impl WebhookBackend {
    /// A client of the auth API at `url` (`http://host[:port][/path]`).
    /// Nothing is sent until the first call.
    pub fn new(url: &str) -> Result<Self, WebhookError> {
        // The joined paths are plain string appends, as upstream's, so a
        // query or fragment would end up in the middle of them.
        if url.contains(['?', '#']) {
            return Err(WebhookError::BadUrl {
                url: url.to_owned(),
                reason: "a query or fragment is not supported (paths are appended to the URL)",
            });
        }
        Ok(Self {
            info: Endpoint::parse(url)?,
            app: Endpoint::parse(&url_join(url, "bootAuth/app"))?,
            kms: Endpoint::parse(&url_join(url, "bootAuth/kms"))?,
            timeout: WEBHOOK_TIMEOUT,
        })
    }

    /// Gives up on a call after `timeout` instead of [`WEBHOOK_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The URL as configured.
    pub fn url(&self) -> &str {
        &self.info.url
    }

    /// `POST <url>/bootAuth/app` (or `/bootAuth/kms` for a replica).
    pub async fn decide(
        &self,
        info: &BootInfo,
        is_kms: bool,
    ) -> Result<BootAuthResponse, AuthError> {
        let endpoint = if is_kms { &self.kms } else { &self.app };
        let body = serde_json::to_vec(info).map_err(|e| AuthError::Backend {
            backend: BACKEND,
            reason: format!("cannot encode the boot info: {e}"),
        })?;
        self.call(endpoint, Method::POST, body).await
    }

    /// `GET <url>/`, as [`AuthInfo`].
    pub async fn info(&self) -> Result<AuthInfo, AuthError> {
        let info: AuthApiInfo = self.call(&self.info, Method::GET, Vec::new()).await?;
        // auth-eth answers 500 when it cannot read the chain; a 200 that
        // still says so is not an answer to publish in GetMeta either.
        if info.status != "ok" {
            return Err(AuthError::Backend {
                backend: BACKEND,
                reason: format!("GET {} reports status {:?}", self.info.url, info.status),
            });
        }
        Ok(AuthInfo {
            is_dev: false,
            gateway_app_id: Some(info.gateway_app_id),
            kms_contract_address: Some(info.kms_contract_addr),
            chain_id: Some(info.chain_id),
            app_implementation: Some(info.app_implementation),
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        endpoint: &Endpoint,
        method: Method,
        body: Vec<u8>,
    ) -> Result<T, AuthError> {
        let what = format!("{method} {}", endpoint.url);
        let exchange = exchange(endpoint, method, body);
        let (status, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(reason)) => {
                return Err(AuthError::Backend {
                    backend: BACKEND,
                    reason: format!("{what}: {reason}"),
                });
            }
            Err(_) => {
                return Err(AuthError::Timeout {
                    backend: BACKEND,
                    target: endpoint.url.clone(),
                    after: self.timeout,
                });
            }
        };
        let unusable = |why: String| AuthError::Backend {
            backend: BACKEND,
            reason: format!("{what} answered {status}{why}: {}", excerpt(&body)),
        };
        if !status.is_success() {
            return Err(unusable(String::new()));
        }
        serde_json::from_slice(&body)
            .map_err(|e| unusable(format!(" with an undecodable body ({e})")))
    }
}

/// Upstream's `url_join`: one `/` between the URL and `path`.
fn url_join(url: &str, path: &str) -> String {
    let mut joined = url.to_owned();
    if !joined.ends_with('/') {
        joined.push('/');
    }
    joined.push_str(path);
    joined
}

/// At most [`BODY_EXCERPT`] bytes of `body`, as text.
fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(BODY_EXCERPT)]).into_owned()
}

/// One request on a fresh connection; the error is a sentence for the log.
async fn exchange(
    endpoint: &Endpoint,
    method: Method,
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), String> {
    let stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", endpoint.authority))?;
    match &endpoint.tls {
        None => send(stream, endpoint, method, body).await,
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(endpoint.host.clone())
                .map_err(|_| format!("{:?} is not a TLS server name", endpoint.host))?;
            let stream = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS with {} failed: {e}", endpoint.authority))?;
            send(stream, endpoint, method, body).await
        }
    }
}

/// The system's CA certificates as a TLS client configuration, loaded once.
fn system_tls() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                return Err(format!("none found; errors: {:?}", loaded.errors));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| e.to_string())
        })
        .clone()
}

/// One request over an established connection.
async fn send<S>(
    stream: S,
    endpoint: &Endpoint,
    method: Method,
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let body = (method == Method::POST).then_some(body);
    match dstack_http_json::request(
        stream,
        method,
        &endpoint.authority,
        &endpoint.path,
        body,
        MAX_RESPONSE_BYTES,
        AGENT,
    )
    .await
    {
        Ok(answer) => Ok((answer.status, answer.body)),
        Err(dstack_http_json::ExchangeError::TooLarge(limit)) => {
            Err(format!("answered with more than {limit} bytes"))
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use hyper::Response;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper::Request;
    use hyper::header::{CONTENT_TYPE, USER_AGENT};
    use hyper_util::rt::TokioIo;

    /// What the test server saw of one request.
    #[derive(Debug, Clone)]
    struct Seen {
        method: Method,
        path: String,
        user_agent: String,
        body: Vec<u8>,
    }

    /// The answer the test server gives: status, body, delay before it.
    type Reply = (u16, String, Duration);

    /// A real HTTP/1.1 server on 127.0.0.1 answering every request with
    /// `reply(path)`; returns its base URL and what it saw.
    async fn serve(reply: fn(&str) -> Reply) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let log = log.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.unwrap().to_bytes().to_vec();
                        let path = parts.uri.path().to_owned();
                        log.lock().unwrap().push(Seen {
                            method: parts.method,
                            path: path.clone(),
                            user_agent: parts.headers[USER_AGENT].to_str().unwrap().to_owned(),
                            body,
                        });
                        let (status, body, delay) = reply(&path);
                        tokio::time::sleep(delay).await;
                        let response = Response::builder()
                            .status(status)
                            .header(CONTENT_TYPE, "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (base, seen)
    }

    fn ok(body: &str) -> Reply {
        (200, body.to_owned(), Duration::ZERO)
    }

    fn boot() -> BootInfo {
        BootInfo {
            tee_variant: "dstack-tdx".into(),
            mr_aggregated: vec![9; 32],
            os_image_hash: vec![8; 32],
            mr_system: vec![7; 32],
            app_id: vec![1; 20],
            compose_hash: vec![2; 32],
            instance_id: vec![3; 20],
            device_id: vec![4; 32],
            key_provider_info: b"{}".to_vec(),
            tcb_status: "UpToDate".into(),
            advisory_ids: vec!["INTEL-SA-00615".into()],
        }
    }

    fn backend_reason(result: Result<impl std::fmt::Debug, AuthError>) -> String {
        match result {
            Err(AuthError::Backend {
                backend: "webhook",
                reason,
            }) => reason,
            other => panic!("expected a webhook Backend error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn allowed_app_posts_camel_case_boot_info_to_boot_auth_app() {
        let (base, seen) =
            serve(|_| ok(r#"{"isAllowed":true,"gatewayAppId":"gw-app","reason":""}"#)).await;
        // A base path with a trailing slash joins without doubling it.
        let webhook = WebhookBackend::new(&format!("{base}/auth/")).unwrap();
        let verdict = webhook.decide(&boot(), false).await.unwrap();
        assert_eq!(
            verdict,
            BootAuthResponse {
                is_allowed: true,
                gateway_app_id: "gw-app".into(),
                reason: String::new(),
            }
        );
        let seen = seen.lock().unwrap()[0].clone();
        assert_eq!(seen.method, Method::POST);
        assert_eq!(seen.path, "/auth/bootAuth/app");
        assert_eq!(
            seen.user_agent,
            format!("dstack-kms/{}", env!("CARGO_PKG_VERSION"))
        );
        // The body is upstream's camelCase, hex without 0x.
        let json: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
        assert_eq!(json["appId"], "01".repeat(20));
        assert_eq!(json["composeHash"], "02".repeat(32));
        assert_eq!(json["teeVariant"], "dstack-tdx");
        assert_eq!(json["advisoryIds"][0], "INTEL-SA-00615");
        let back: BootInfo = serde_json::from_value(json).unwrap();
        assert_eq!(back, boot());
    }

    #[tokio::test]
    async fn refusal_carries_the_reason_and_kms_goes_to_boot_auth_kms() {
        let (base, seen) = serve(|_| {
            ok(r#"{"isAllowed":false,"gatewayAppId":"","reason":"Aggregated MR not allowed"}"#)
        })
        .await;
        let webhook = WebhookBackend::new(&base).unwrap();
        let verdict = webhook.decide(&boot(), true).await.unwrap();
        assert!(!verdict.is_allowed);
        assert_eq!(verdict.reason, "Aggregated MR not allowed");
        assert_eq!(seen.lock().unwrap()[0].path, "/bootAuth/kms");
    }

    #[tokio::test]
    async fn server_error_names_url_status_and_a_bounded_body() {
        // auth-eth's error handler answer, padded far past the excerpt.
        let (base, _) = serve(|_| {
            let body = format!(
                r#"{{"status":"error","message":"authorization backend unavailable"}}{}"#,
                "x".repeat(4000)
            );
            (500, body, Duration::ZERO)
        })
        .await;
        let webhook = WebhookBackend::new(&base).unwrap();
        let reason = backend_reason(webhook.decide(&boot(), false).await);
        assert!(
            reason.contains(&format!("POST {base}/bootAuth/app")),
            "{reason}"
        );
        assert!(reason.contains("500 Internal Server Error"), "{reason}");
        assert!(
            reason.contains("authorization backend unavailable"),
            "{reason}"
        );
        assert!(
            reason.len() < 700,
            "body not cut to 512 bytes: {}",
            reason.len()
        );
    }

    #[tokio::test]
    async fn garbage_or_incomplete_json_is_a_backend_error_not_a_refusal() {
        let (base, _) = serve(|path| match path {
            "/bootAuth/app" => ok("<html>gateway timeout</html>"),
            // A verdict without isAllowed is broken, not a "no".
            _ => ok(r#"{"reason":"","gatewayAppId":""}"#),
        })
        .await;
        let webhook = WebhookBackend::new(&base).unwrap();
        let reason = backend_reason(webhook.decide(&boot(), false).await);
        assert!(reason.contains("undecodable body"), "{reason}");
        assert!(reason.contains("<html>gateway timeout</html>"), "{reason}");
        let reason = backend_reason(webhook.decide(&boot(), true).await);
        assert!(reason.contains("isAllowed"), "{reason}");
    }

    #[tokio::test]
    async fn oversized_answer_is_refused() {
        let (base, _) = serve(|_| ok(&"x".repeat(MAX_RESPONSE_BYTES + 1))).await;
        let webhook = WebhookBackend::new(&base).unwrap();
        let reason = backend_reason(webhook.decide(&boot(), false).await);
        assert!(reason.contains("more than 65536 bytes"), "{reason}");
    }

    #[tokio::test]
    async fn slow_server_times_out_with_a_named_error() {
        assert_eq!(WEBHOOK_TIMEOUT, Duration::from_secs(5));
        let (base, _) = serve(|_| (200, String::new(), Duration::from_secs(30))).await;
        let webhook = WebhookBackend::new(&base)
            .unwrap()
            .with_timeout(Duration::from_millis(200));
        let started = std::time::Instant::now();
        match webhook.decide(&boot(), false).await {
            Err(AuthError::Timeout {
                backend: "webhook",
                target,
                after,
            }) => {
                assert_eq!(target, format!("{base}/bootAuth/app"));
                assert_eq!(after, Duration::from_millis(200));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn unreachable_server_is_a_backend_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let webhook = WebhookBackend::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let reason = backend_reason(webhook.info().await);
        assert!(reason.contains("cannot connect to 127.0.0.1:"), "{reason}");
    }

    #[tokio::test]
    async fn info_maps_auth_eth_get_root() {
        let (base, seen) = serve(|path| match path {
            "/" => ok(
                r#"{"status":"ok","kmsContractAddr":"0x5FbDB2315678afecb367f032d93F642f64180aa3",
                         "ethRpcUrl":"http://127.0.0.1:8545","gatewayAppId":"aabb","chainId":31337,
                         "appAuthImplementation":"0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512",
                         "appImplementation":"0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"}"#,
            ),
            _ => (404, String::new(), Duration::ZERO),
        })
        .await;
        let webhook = WebhookBackend::new(&base).unwrap();
        let info = webhook.info().await.unwrap();
        assert_eq!(
            info,
            AuthInfo {
                is_dev: false,
                gateway_app_id: Some("aabb".into()),
                kms_contract_address: Some("0x5FbDB2315678afecb367f032d93F642f64180aa3".into()),
                chain_id: Some(31337),
                app_implementation: Some("0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512".into()),
            }
        );
        let seen = seen.lock().unwrap()[0].clone();
        assert_eq!((seen.method, seen.path.as_str()), (Method::GET, "/"));
    }

    #[tokio::test]
    async fn info_with_error_status_is_a_backend_error() {
        let (base, _) = serve(|_| {
            ok(r#"{"status":"error","kmsContractAddr":"","gatewayAppId":"","chainId":0,"appImplementation":""}"#)
        })
        .await;
        let webhook = WebhookBackend::new(&base).unwrap();
        let reason = backend_reason(webhook.info().await);
        assert!(reason.contains(r#"reports status "error""#), "{reason}");
    }

    /// An https endpoint is checked with TLS: a server that speaks plain
    /// HTTP there fails the call with a TLS error, it is never read.
    #[tokio::test]
    async fn https_endpoints_are_reached_over_tls() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                    .await;
            }
        });
        let webhook = WebhookBackend::new(&format!("https://localhost:{}", addr.port())).unwrap();
        let reason = backend_reason(webhook.decide(&boot(), false).await);
        assert!(reason.contains("TLS"), "{reason}");
    }

    #[test]
    fn urls_are_checked_when_built() {
        let bad = |url: &str| WebhookBackend::new(url).unwrap_err();
        let https = WebhookBackend::new("https://auth.example").unwrap();
        assert_eq!(https.app.port, 443);
        assert!(https.app.tls.is_some());
        for url in [
            "auth.example:8000",
            "ftp://auth.example",
            "http://user:pw@auth.example",
            "http://auth.example/?token=1",
            "http://auth.example:99999",
            "http://auth.example:",
            "not a url",
            "",
        ] {
            assert!(
                matches!(bad(url), WebhookError::BadUrl { .. }),
                "{url:?} accepted"
            );
        }
        let ok = WebhookBackend::new("http://[::1]:8000/auth").unwrap();
        assert_eq!((ok.app.host.as_str(), ok.app.port), ("::1", 8000));
        assert_eq!(ok.app.path, "/auth/bootAuth/app");
        assert_eq!(ok.info.path, "/auth");
        let ok = WebhookBackend::new("http://auth.example").unwrap();
        assert_eq!((ok.kms.port, ok.kms.path.as_str()), (80, "/bootAuth/kms"));
        assert_eq!(ok.kms.authority, "auth.example");
    }
}
