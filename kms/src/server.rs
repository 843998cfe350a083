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

use crate::onboard::Onboarding;
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

/// Serves `onboarding` over plain HTTP on `listener` until `Finish`
/// succeeds; returns the listener for the KMS API. Connections still open
/// then are dropped.
pub async fn serve_onboarding(listener: TcpListener, onboarding: Arc<Onboarding>) -> TcpListener {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = onboarding.finished() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                eprintln!("dstack-kms: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let onboarding = onboarding.clone();
        connections.spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let onboarding = onboarding.clone();
                async move { Ok::<_, Infallible>(handle_onboarding(&onboarding, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
    // Let the `Finish` answer go out before the connections are dropped.
    tokio::time::sleep(Duration::from_millis(200)).await;
    connections.abort_all();
    listener
}

/// One onboarding request.
pub async fn handle_onboarding(
    onboarding: &Onboarding,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.uri().path() == "/" {
        let body = serde_json::json!({
            "status": "onboarding",
            "methods": ["Bootstrap", "Onboard", "GetAttestationInfo", "GetImportKey", "Import", "Finish"],
        });
        return response(
            StatusCode::OK,
            "application/json",
            body.to_string().into_bytes(),
        );
    }
    let call = match PrpcCall::read(req, "Onboard").await {
        Ok(call) => call,
        Err(response) => return response,
    };
    let result = match call.method.as_str() {
        "Bootstrap" => match call.args() {
            Ok(request) => onboarding.bootstrap(&request).await.map(|r| to_json(&r)),
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        },
        "Onboard" => match call.args() {
            Ok(request) => onboarding.onboard(&request).await.map(|r| to_json(&r)),
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        },
        "GetAttestationInfo" => onboarding.attestation_info().await.map(|r| to_json(&r)),
        "GetImportKey" => onboarding.import_key().await.map(|r| to_json(&r)),
        "Import" => match call.args() {
            Ok(request) => onboarding.import(&request).await.map(|r| to_json(&r)),
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        },
        "Finish" => onboarding.finish().map(|()| b"{}".to_vec()),
        _ => return call.not_found(),
    };
    match result {
        Ok(body) => response(StatusCode::OK, "application/json", body),
        Err(e) => {
            eprintln!(
                "dstack-kms: {} refused: {}",
                call.method,
                dstack_proto::error_chain(&e)
            );
            error(StatusCode::BAD_REQUEST, dstack_proto::error_chain(&e))
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

/// One request: the answer's status and JSON (or text) body.
pub async fn handle(
    kms: &Kms,
    client_cert: Option<&[u8]>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.uri().path() == "/metrics" {
        return response(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            kms.metrics().render().into_bytes(),
        );
    }
    let call = match PrpcCall::read(req, "KMS").await {
        Ok(call) => call,
        Err(response) => return response,
    };
    match dispatch(kms, client_cert, &call).await {
        Ok(body) => response(StatusCode::OK, "application/json", body),
        Err(Failure::NotFound) => call.not_found(),
        Err(Failure::BadArgs(message)) => {
            kms.metrics()
                .record(static_name(&call.method), "bad_request");
            error(StatusCode::BAD_REQUEST, message)
        }
        Err(Failure::Kms(e)) => error(StatusCode::BAD_REQUEST, dstack_proto::error_chain(&e)),
    }
}

/// A pRPC call as upstream's clients send it: `/prpc/<Service>.<Method>`
/// or `/prpc/<Method>`, a JSON body (`?json` or a JSON content type) or a
/// GET query string.
#[derive(Debug)]
pub(crate) struct PrpcCall {
    path: String,
    /// The method name.
    pub(crate) method: String,
    get: bool,
    query: String,
    body: Bytes,
}

impl PrpcCall {
    /// Reads `req` addressed to `service`; a refusal is the error answer.
    pub(crate) async fn read(
        req: Request<Incoming>,
        service: &str,
    ) -> Result<Self, Response<Full<Bytes>>> {
        let path = req.uri().path().to_owned();
        let get = match *req.method() {
            Method::GET => true,
            Method::POST => false,
            _ => {
                return Err(error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "use GET or POST".into(),
                ));
            }
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
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body is larger than {MAX_BODY_BYTES} bytes"),
                ));
            }
        };
        if !get && !json_query && !json_type && !body.iter().all(u8::is_ascii_whitespace) {
            return Err(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "protobuf bodies are not supported: send JSON (add ?json or Content-Type: application/json)"
                    .into(),
            ));
        }
        let query = query
            .split('&')
            .filter(|p| *p != "json")
            .collect::<Vec<_>>()
            .join("&");
        let Some(method) = dstack_proto::prpc::method_name(&path, service) else {
            return Err(error(StatusCode::NOT_FOUND, format!("no method at {path}")));
        };
        Ok(Self {
            method: method.to_owned(),
            path,
            get,
            query,
            body,
        })
    }

    /// The call's arguments.
    pub(crate) fn args<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        dstack_proto::prpc::decode_args(self.get, &self.query, &self.body)
    }

    /// The answer to a method this service does not have.
    pub(crate) fn not_found(&self) -> Response<Full<Bytes>> {
        error(StatusCode::NOT_FOUND, format!("no method at {}", self.path))
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

async fn dispatch(
    kms: &Kms,
    client_cert: Option<&[u8]>,
    call: &PrpcCall,
) -> Result<Vec<u8>, Failure> {
    match call.method.as_str() {
        "GetMeta" => json(&kms.get_meta().await?),
        "GetTempCaCert" => json(&kms.get_temp_ca_cert()?),
        "GetAppEnvEncryptPubKey" => {
            let request = call.args().map_err(Failure::BadArgs)?;
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            json(&kms.get_app_env_encrypt_pub_key(&request, now)?)
        }
        "GetAppKey" => {
            let request = call.args().map_err(Failure::BadArgs)?;
            json(
                &kms.get_app_key(client_cert, &request, SystemTime::now())
                    .await?,
            )
        }
        "GetKmsKey" => {
            let request = call.args().map_err(Failure::BadArgs)?;
            json(
                &kms.get_kms_key(client_cert, &request, SystemTime::now())
                    .await?,
            )
        }
        "SignCert" => {
            let request = call.args().map_err(Failure::BadArgs)?;
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
        "GetKmsKey" => "GetKmsKey",
        "SignCert" => "SignCert",
        _ => "other",
    }
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, Failure> {
    serde_json::to_vec(value).map_err(|e| Failure::Kms(KmsError::Internal(e.to_string())))
}

pub(crate) fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(&dstack_proto::ApiError::new(message))
        .unwrap_or_else(|_| b"{\"error\":\"unprintable error\"}".to_vec());
    response(status, "application/json", body)
}

pub(crate) fn response(
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
