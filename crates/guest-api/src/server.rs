//! HTTP/1.1 over a unix socket: routing, argument decoding (JSON body or
//! query string) and JSON responses, pRPC-style (UPSTREAM §1.2).

use dstack_proto::error_chain;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Flavor, GuestApi};

/// The largest request body accepted (larger ones get 413).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// A failed call: its status and the message for `{"error": ..}`.
#[derive(Debug)]
pub(crate) struct ApiFailure {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl ApiFailure {
    /// The caller's input is wrong.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// The TEE or another internal part failed; the message names it.
    pub(crate) fn internal(err: &(dyn std::error::Error + 'static)) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: error_chain(err),
        }
    }
}

impl From<dstack_keys::KeyError> for ApiFailure {
    fn from(err: dstack_keys::KeyError) -> Self {
        Self::bad_request(err.to_string())
    }
}

impl From<dstack_attest::PlatformError> for ApiFailure {
    fn from(err: dstack_attest::PlatformError) -> Self {
        Self::internal(&err)
    }
}

impl From<crate::GuestApiError> for ApiFailure {
    fn from(err: crate::GuestApiError) -> Self {
        match &err {
            // Certificate generation fails on bad names or validity: input.
            crate::GuestApiError::RootCert(
                dstack_ra_tls::RaTlsError::Generate(_) | dstack_ra_tls::RaTlsError::InvalidValidity,
            ) => Self::bad_request(error_chain(&err)),
            _ => Self::internal(&err),
        }
    }
}

/// A call's arguments: the query string of a GET or the body of a POST.
pub(crate) struct Call {
    get: bool,
    query: String,
    body: Bytes,
}

impl Call {
    /// Decodes the arguments; missing fields take their defaults.
    pub(crate) fn args<T: DeserializeOwned>(&self) -> Result<T, ApiFailure> {
        dstack_proto::prpc::decode_args(self.get, &self.query, &self.body)
            .map_err(ApiFailure::bad_request)
    }
}

/// The JSON of a response.
pub(crate) fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, ApiFailure> {
    serde_json::to_vec(value).map_err(|e| ApiFailure::internal(&e))
}

pub(crate) async fn serve(api: Arc<GuestApi>, listener: tokio::net::UnixListener, flavor: Flavor) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let api = api.clone();
                tokio::spawn(async move { serve_connection(api, stream, flavor).await });
            }
            Err(e) if is_transient(&e) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => return,
        }
    }
}

/// Accept errors that pass: an aborted peer, or running out of descriptors
/// or memory for a moment.
fn is_transient(err: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        err.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::Interrupted | ErrorKind::WouldBlock
    ) || matches!(
        err.raw_os_error(),
        Some(code) if code == 24 /* EMFILE */ || code == 23 /* ENFILE */
            || code == 105 /* ENOBUFS */ || code == 12 /* ENOMEM */
    )
}

async fn serve_connection(api: Arc<GuestApi>, stream: tokio::net::UnixStream, flavor: Flavor) {
    let service = service_fn(move |req: Request<Incoming>| {
        let api = api.clone();
        async move { Ok::<_, Infallible>(handle(api, flavor, req).await) }
    });
    // A client that hangs up mid-request is its own business.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn handle(
    api: Arc<GuestApi>,
    flavor: Flavor,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match route(api, flavor, req).await {
        Ok(body) => response(StatusCode::OK, body),
        Err(failure) => {
            let body = serde_json::to_vec_pretty(&dstack_proto::ApiError::new(failure.message))
                .unwrap_or_else(|_| b"{\"error\":\"unprintable error\"}".to_vec());
            response(failure.status, body)
        }
    }
}

fn response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The method a path names, or `None` if the path is not this flavor's.
fn method_name(flavor: Flavor, path: &str) -> Option<&str> {
    let name = match flavor {
        Flavor::Dstack => path.strip_prefix('/')?,
        Flavor::Tappd => {
            let rest = path.strip_prefix("/prpc/")?;
            rest.strip_prefix("Tappd.").unwrap_or(rest)
        }
    };
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

async fn route(
    api: Arc<GuestApi>,
    flavor: Flavor,
    req: Request<Incoming>,
) -> Result<Vec<u8>, ApiFailure> {
    let path = req.uri().path().to_owned();
    let not_found = || ApiFailure {
        status: StatusCode::NOT_FOUND,
        message: format!("no method at {path}"),
    };
    let name = method_name(flavor, &path).ok_or_else(not_found)?.to_owned();
    let get = match *req.method() {
        Method::GET => true,
        Method::POST => false,
        ref other => {
            return Err(ApiFailure {
                status: StatusCode::METHOD_NOT_ALLOWED,
                message: format!("method {other} not allowed; use GET or POST"),
            });
        }
    };
    let too_large = || ApiFailure {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("request body exceeds {MAX_BODY_BYTES} bytes"),
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let query = req.uri().query().unwrap_or_default().to_owned();
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                ApiFailure::bad_request(format!("cannot read request body: {e}"))
            }
        })?
        .to_bytes();
    let call = Call { get, query, body };
    let handled = match flavor {
        Flavor::Dstack => crate::dstack::dispatch(&api, &name, &call).await,
        Flavor::Tappd => crate::tappd::dispatch(&api, &name, &call).await,
    };
    handled.unwrap_or_else(|| Err(not_found()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_methods_per_flavor() {
        assert_eq!(method_name(Flavor::Dstack, "/GetKey"), Some("GetKey"));
        assert_eq!(method_name(Flavor::Dstack, "/prpc/GetKey"), None);
        assert_eq!(method_name(Flavor::Dstack, "/"), None);
        assert_eq!(
            method_name(Flavor::Tappd, "/prpc/Tappd.TdxQuote"),
            Some("TdxQuote")
        );
        assert_eq!(
            method_name(Flavor::Tappd, "/prpc/TdxQuote"),
            Some("TdxQuote")
        );
        assert_eq!(method_name(Flavor::Tappd, "/TdxQuote"), None);
    }

    #[test]
    fn get_arguments_come_from_the_query_string() {
        let call = Call {
            get: true,
            query:
                "path=a%2Fb&purpose=x&alt_names[0]=n1&alt_names[1]=n2&usage_ra_tls=true&not_after=9"
                    .into(),
            body: Bytes::new(),
        };
        let key: dstack_proto::guest_api::GetKeyArgs = call.args().unwrap();
        assert_eq!(key.path, "a/b");
        let tls: dstack_proto::guest_api::GetTlsKeyArgs = call.args().unwrap();
        assert_eq!(tls.alt_names, vec!["n1", "n2"]);
        assert!(tls.usage_ra_tls);
        assert_eq!(tls.not_after, Some(9));
        let empty = Call {
            get: false,
            query: String::new(),
            body: Bytes::from_static(b" "),
        };
        let _: dstack_proto::guest_api::GetKeyArgs = empty.args().unwrap();
    }
}
