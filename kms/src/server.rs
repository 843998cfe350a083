//! The KMS over HTTPS: upstream's pRPC paths (`/prpc/KMS.<Method>` and
//! `/prpc/<Method>`, JSON with `?json` or a GET query string) and
//! `/metrics`. The TLS layer asks for a client certificate but lets callers
//! in without one; the key-releasing methods check the certificate's
//! evidence per call, so a refused caller gets a named error.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{Kms, KmsError};

/// The largest request body accepted.
const MAX_BODY_BYTES: usize = 256 * 1024;
/// A TLS handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `kms` on `listener` with `tls` until accepting fails for good.
pub async fn serve(listener: TcpListener, kms: Arc<Kms>, tls: Arc<rustls::ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of descriptors or an aborted peer: wait, then go on.
                eprintln!("dstack-kms: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let kms = kms.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            else {
                kms.metrics().record("tls", "handshake_failed");
                return;
            };
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| cert.as_ref().to_vec());
            let client_cert = Arc::new(client_cert);
            let service = service_fn(move |req: Request<Incoming>| {
                let kms = kms.clone();
                let client_cert = client_cert.clone();
                async move { Ok::<_, Infallible>(handle(&kms, client_cert.as_deref(), req).await) }
            });
            // A client that hangs up mid-request is its own business.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// One request: the answer's status and JSON (or text) body.
pub async fn handle(
    kms: &Kms,
    client_cert: Option<&[u8]>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if path == "/metrics" {
        return response(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            kms.metrics().render().into_bytes(),
        );
    }
    let get = match *req.method() {
        Method::GET => true,
        Method::POST => false,
        _ => return error(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST".into()),
    };
    let query = req.uri().query().unwrap_or("").to_owned();
    let json_query = query.split('&').any(|p| p == "json");
    let json_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {MAX_BODY_BYTES} bytes"),
            );
        }
    };
    if !get && !json_query && !json_type && !body.iter().all(u8::is_ascii_whitespace) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "protobuf bodies are not supported: send JSON (add ?json or Content-Type: application/json)"
                .into(),
        );
    }
    let query = query
        .split('&')
        .filter(|p| *p != "json")
        .collect::<Vec<_>>()
        .join("&");
    let Some(method) = dstack_proto::prpc::method_name(&path, "KMS") else {
        return error(StatusCode::NOT_FOUND, format!("no method at {path}"));
    };
    match call(kms, client_cert, method, get, &query, &body).await {
        Ok(body) => response(StatusCode::OK, "application/json", body),
        Err(Failure::NotFound) => error(StatusCode::NOT_FOUND, format!("no method at {path}")),
        Err(Failure::BadArgs(message)) => {
            kms.metrics().record(static_name(method), "bad_request");
            error(StatusCode::BAD_REQUEST, message)
        }
        Err(Failure::Kms(e)) => error(StatusCode::BAD_REQUEST, dstack_proto::error_chain(&e)),
    }
}

enum Failure {
    NotFound,
    BadArgs(String),
    Kms(KmsError),
}

impl From<KmsError> for Failure {
    fn from(e: KmsError) -> Self {
        Self::Kms(e)
    }
}

async fn call(
    kms: &Kms,
    client_cert: Option<&[u8]>,
    method: &str,
    get: bool,
    query: &str,
    body: &[u8],
) -> Result<Vec<u8>, Failure> {
    match method {
        "GetMeta" => json(&kms.get_meta().await?),
        "GetTempCaCert" => json(&kms.get_temp_ca_cert()?),
        "GetAppEnvEncryptPubKey" => {
            let request =
                dstack_proto::prpc::decode_args(get, query, body).map_err(Failure::BadArgs)?;
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            json(&kms.get_app_env_encrypt_pub_key(&request, now)?)
        }
        "GetAppKey" => {
            let request =
                dstack_proto::prpc::decode_args(get, query, body).map_err(Failure::BadArgs)?;
            json(
                &kms.get_app_key(client_cert, &request, SystemTime::now())
                    .await?,
            )
        }
        "SignCert" => {
            let request =
                dstack_proto::prpc::decode_args(get, query, body).map_err(Failure::BadArgs)?;
            json(&kms.sign_cert(&request, SystemTime::now()).await?)
        }
        _ => Err(Failure::NotFound),
    }
}

/// Metrics labels are static; unknown names never reach here.
fn static_name(method: &str) -> &'static str {
    match method {
        "GetAppEnvEncryptPubKey" => "GetAppEnvEncryptPubKey",
        "GetAppKey" => "GetAppKey",
        "SignCert" => "SignCert",
        _ => "other",
    }
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, Failure> {
    serde_json::to_vec(value).map_err(|e| Failure::Kms(KmsError::Internal(e.to_string())))
}

fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(&dstack_proto::ApiError::new(message))
        .unwrap_or_else(|_| b"{\"error\":\"unprintable error\"}".to_vec());
    response(status, "application/json", body)
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
