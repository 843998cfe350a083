//! What the gateway's own HTTP endpoints share: JSON answers, `{"error": ..}`
//! refusals, and the accept loop of a plain-HTTP listener (the admin API,
//! the Debug RPC).

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use dstack_proto::ApiError;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;

/// An answer of these endpoints.
pub type Answer = Response<Full<Bytes>>;

/// `value` as JSON with `status`.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(value).unwrap_or_default(),
    )));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A refusal: `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Answer {
    json(status, &ApiError::new(message))
}

/// Serves HTTP/1.1 on `listener`, each request answered by `handle`.
pub async fn serve_plain<H, F>(listener: TcpListener, handle: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            // Out of descriptors: let others close, then go on.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = handle(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}
