//! The gateway's pRPC endpoint (UPSTREAM §10.4) over RA-TLS: `RegisterCvm`
//! (the CVM's client certificate is its evidence), `Info` and `AcmeInfo`,
//! at `/prpc/<Method>`, `/prpc/Gateway.<Method>` and upstream's legacy
//! `/prpc/Tproxy.<Method>`; JSON bodies, errors as `{"error": ...}`. Also
//! upstream's Debug service (registration without attestation), on its
//! own listener and only when configured.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use dstack_proto::gateway::{InfoResponse, RegisterCvmRequest};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::http::{error, json};
use crate::pages::Pages;
use crate::registry::{Identity, Registrar};

/// The largest request body accepted.
const MAX_BODY: usize = 64 * 1024;
/// A TLS handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the RPC answers from.
#[derive(Debug)]
pub struct Rpc {
    /// Registrations.
    pub registrar: Arc<Registrar>,
    /// `Info`.
    pub info: InfoResponse,
    /// `AcmeInfo` comes from the pages' cache.
    pub pages: Arc<Pages>,
}

/// The method a path names, for any of the service prefixes upstream accepts.
fn method(path: &str, service: &str) -> Option<String> {
    let name = dstack_proto::prpc::method_name(path, service)?;
    Some(name.strip_prefix("Tproxy.").unwrap_or(name).to_owned())
}

/// An error answer, boxed: it is the cold path of every parse.
type Refused = Box<Response<Full<Bytes>>>;

async fn body(req: Request<Incoming>) -> Result<Bytes, Refused> {
    Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|_| {
            Box::new(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
            ))
        })
}

fn args<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Refused> {
    dstack_proto::prpc::decode_args(false, "", bytes)
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, e)))
}

impl Rpc {
    async fn handle(&self, cert: Option<&[u8]>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let method = method(&path, "Gateway").or_else(|| {
            // `/prpc/Tproxy.X` is not `Gateway.` prefixed: method_name keeps it whole.
            path.strip_prefix("/prpc/Tproxy.").map(str::to_owned)
        });
        let Some(method) = method else {
            return error(StatusCode::NOT_FOUND, format!("no such path {path}"));
        };
        match method.as_str() {
            "RegisterCvm" => {
                let bytes = match body(req).await {
                    Ok(b) => b,
                    Err(r) => return *r,
                };
                let request: RegisterCvmRequest = match args(&bytes) {
                    Ok(r) => r,
                    Err(r) => return *r,
                };
                match self.registrar.register(cert, request).await {
                    Ok(answer) => json(StatusCode::OK, &answer),
                    Err(e) => {
                        let status = StatusCode::from_u16(e.kind().1)
                            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                        error(status, e.to_string())
                    }
                }
            }
            "Info" => json(StatusCode::OK, &self.info),
            "AcmeInfo" => {
                let text = self.pages.acme_info.load();
                let mut response = Response::new(Full::new(Bytes::from(text.to_string())));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                response
            }
            other => error(StatusCode::NOT_FOUND, format!("no method {other}")),
        }
    }

    /// Serves RA-TLS connections from `listener` with `tls` (which asks for
    /// client certificates and lets the handler judge them).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
        let acceptor = TlsAcceptor::from(tls);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let acceptor = acceptor.clone();
            let rpc = self.clone();
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                else {
                    return;
                };
                let cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|c| c.as_ref().to_vec());
                let cert = Arc::new(cert);
                let service = hyper::service::service_fn(move |req| {
                    let rpc = rpc.clone();
                    let cert = cert.clone();
                    async move { Ok::<_, Infallible>(rpc.handle(cert.as_deref(), req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    }
}

/// Upstream's `DebugRegisterCvmRequest`.
#[derive(Debug, Deserialize)]
struct DebugRegister {
    client_public_key: String,
    app_id: String,
    #[serde(default)]
    instance_id: String,
    #[serde(default)]
    port_policy: Option<dstack_proto::gateway::PortPolicy>,
}

/// Serves upstream's Debug service over plain HTTP: registration without
/// attestation. Only when `[debug] insecure_debug_rpc` is set.
pub async fn serve_debug(listener: TcpListener, registrar: Arc<Registrar>) {
    crate::http::serve_plain(listener, move |req| {
        let registrar = registrar.clone();
        async move { debug_register(&registrar, req).await }
    })
    .await;
}

async fn debug_register(registrar: &Registrar, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if method(&path, "Debug").as_deref() != Some("RegisterCvm") {
        return error(StatusCode::NOT_FOUND, format!("no such path {path}"));
    }
    let request = match body(req).await.and_then(|b| args::<DebugRegister>(&b)) {
        Ok(request) => request,
        Err(refused) => return *refused,
    };
    let identity = Identity {
        instance_id: if request.instance_id.is_empty() {
            request.app_id.clone()
        } else {
            request.instance_id
        },
        app_id: request.app_id,
        compose_hash: String::new(),
    };
    let register = RegisterCvmRequest {
        client_public_key: request.client_public_key,
        port_policy: request.port_policy,
    };
    match registrar.register_unattested(identity, register).await {
        Ok(answer) => json(StatusCode::OK, &answer),
        Err(e) => error(
            StatusCode::from_u16(e.kind().1).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            e.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_methods_under_every_prefix() {
        assert_eq!(
            method("/prpc/RegisterCvm", "Gateway").as_deref(),
            Some("RegisterCvm")
        );
        assert_eq!(
            method("/prpc/Gateway.RegisterCvm", "Gateway").as_deref(),
            Some("RegisterCvm")
        );
        assert_eq!(
            method("/prpc/Debug.RegisterCvm", "Debug").as_deref(),
            Some("RegisterCvm")
        );
        assert_eq!(method("/other", "Gateway"), None);
    }
}
