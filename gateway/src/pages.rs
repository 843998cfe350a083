//! What `gateway.<base>` serves itself (UPSTREAM §10.1 reserved ids):
//! `/health`, `/index`, `/app-info` and `/acme-info`, each also under
//! `/.dstack`. `/acme-info` is how anyone checks that every certificate
//! key the gateway used, and its ACME account, came from attested code.

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::relay::Io;

/// The pages' current content, refreshed by the node as the cluster changes.
#[derive(Debug, Default)]
pub struct Pages {
    /// `AcmeInfo` as JSON.
    pub acme_info: ArcSwap<String>,
    /// This gateway's own app info (guest API `Info`) as JSON.
    pub app_info: ArcSwap<String>,
    /// A one-line summary for `/index`.
    pub index: ArcSwap<String>,
}

impl Pages {
    /// The answer to `path`.
    pub fn answer(&self, path: &str) -> (StatusCode, &'static str, String) {
        let path = path.strip_prefix("/.dstack").unwrap_or(path);
        let json = "application/json";
        match path {
            "/health" | "/" => (StatusCode::OK, "text/plain", "OK\n".into()),
            "/index" => (StatusCode::OK, "text/plain", self.index.load().to_string()),
            "/app-info" => (StatusCode::OK, json, self.app_info.load().to_string()),
            "/acme-info" => (StatusCode::OK, json, self.acme_info.load().to_string()),
            _ => (
                StatusCode::NOT_FOUND,
                json,
                serde_json::json!({ "error": format!("no page {path}") }).to_string(),
            ),
        }
    }

    /// Serves HTTP/1.1 on one (already decrypted) connection.
    pub async fn serve<S: Io + 'static>(self: &Arc<Self>, stream: S) {
        let pages = self.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (status, kind, body) = pages.answer(req.uri().path());
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
            async move { Ok::<_, Infallible>(response) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_answer_with_and_without_the_dstack_prefix() {
        let pages = Pages::default();
        pages
            .acme_info
            .store(Arc::new("{\"account_uri\":\"u\"}".into()));
        assert_eq!(pages.answer("/health").0, StatusCode::OK);
        assert_eq!(
            pages.answer("/.dstack/acme-info").2,
            "{\"account_uri\":\"u\"}"
        );
        assert_eq!(pages.answer("/acme-info").1, "application/json");
        assert_eq!(pages.answer("/nothing").0, StatusCode::NOT_FOUND);
    }
}
