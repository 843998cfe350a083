//! Client of the host API (`dstack_proto::host`): HTTP/1.1 + JSON over
//! vsock to CID 2, one connection per request (`Connection: close`), so a
//! host restart between requests costs nothing.

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dstack_proto::host::{
    ConfigBundle, GetSealingKeyRequest, GetSealingKeyResponse, HOST_API_PORT, LogBatch,
    Notification, QuoteRequest, QuoteResponse, RtmrExtend, SEALING_KEY_PATH, TeeInfo,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// The largest response accepted: app-compose and user config may each be
/// up to 50 MiB upstream.
const MAX_RESPONSE: usize = 128 << 20;

/// A request to the host failed.
#[derive(Debug, thiserror::Error)]
pub enum HostApiError {
    /// No connection to the host.
    #[error("cannot connect to the host API at {endpoint}")]
    Connect {
        /// Where.
        endpoint: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP exchange with the host failed on {path}")]
    Http {
        /// Request path.
        path: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The host did not answer in time.
    #[error("the host did not answer {path} within {secs} s")]
    Timeout {
        /// Request path.
        path: String,
        /// The limit.
        secs: u64,
    },
    /// The host answered with an error status.
    #[error("the host answered {path} with HTTP {status}: {message}")]
    Status {
        /// Request path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The body (the `error` field when it is an `ApiError`).
        message: String,
    },
    /// The response is not the expected JSON.
    #[error("the host's answer to {path} is not valid JSON of the expected shape")]
    Decode {
        /// Request path.
        path: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Where the host API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEndpoint {
    /// vsock `cid:port` (the guest: CID 2, port 10000).
    Vsock {
        /// Context id.
        cid: u32,
        /// Port.
        port: u32,
    },
    /// A unix socket (tests and development).
    Unix(PathBuf),
}

impl Default for HostEndpoint {
    fn default() -> Self {
        HostEndpoint::Vsock {
            cid: tokio_vsock::VMADDR_CID_HOST,
            port: HOST_API_PORT,
        }
    }
}

impl std::fmt::Display for HostEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostEndpoint::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            HostEndpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A byte stream to the host.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl HostEndpoint {
    async fn connect(&self) -> io::Result<Box<dyn Io>> {
        Ok(match self {
            HostEndpoint::Vsock { cid, port } => Box::new(
                tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port)).await?,
            ),
            HostEndpoint::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        })
    }
}

/// The host API client.
#[derive(Debug, Clone)]
pub struct HostClient {
    endpoint: HostEndpoint,
    timeout: Duration,
}

impl HostClient {
    /// A client of `endpoint` whose requests time out after `timeout`.
    pub fn new(endpoint: HostEndpoint, timeout: Duration) -> Self {
        Self { endpoint, timeout }
    }

    /// Where it connects.
    pub fn endpoint(&self) -> &HostEndpoint {
        &self.endpoint
    }

    /// `GET /v1/config`, retrying while the connection is refused or the
    /// transport is not there yet (the vsock device appears when its module
    /// loads) for up to `patience`.
    pub async fn get_config(&self, patience: Duration) -> Result<ConfigBundle, HostApiError> {
        let deadline = Instant::now() + patience;
        let mut backoff = Duration::from_millis(20);
        loop {
            match self.request(Method::GET, "/v1/config", None).await {
                Err(HostApiError::Connect { .. }) if Instant::now() + backoff < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
                Ok(body) => {
                    return serde_json::from_slice(&body).map_err(|source| HostApiError::Decode {
                        path: "/v1/config".into(),
                        source,
                    });
                }
            }
        }
    }

    /// `POST /v1/notify`.
    pub async fn notify(&self, notification: &Notification) -> Result<(), HostApiError> {
        let body = serde_json::to_vec(notification).expect("a Notification always serialises");
        self.request(Method::POST, "/v1/notify", Some(body))
            .await
            .map(|_| ())
    }

    /// `POST /v1/logs`.
    pub async fn post_logs(&self, batch: &LogBatch) -> Result<(), HostApiError> {
        let body = serde_json::to_vec(batch).expect("a LogBatch always serialises");
        self.request(Method::POST, "/v1/logs", Some(body))
            .await
            .map(|_| ())
    }

    /// `GET /v1/tee`: the simulated TEE the host plays for this VM.
    pub async fn tee_info(&self) -> Result<TeeInfo, HostApiError> {
        let body = self.request(Method::GET, "/v1/tee", None).await?;
        decode("/v1/tee", &body)
    }

    /// `POST /v1/tee/extend`.
    pub async fn tee_extend(&self, request: &RtmrExtend) -> Result<(), HostApiError> {
        let body = serde_json::to_vec(request).expect("an RtmrExtend always serialises");
        self.request(Method::POST, "/v1/tee/extend", Some(body))
            .await
            .map(|_| ())
    }

    /// `POST /v1/tee/quote`.
    pub async fn tee_quote(&self, request: &QuoteRequest) -> Result<QuoteResponse, HostApiError> {
        let body = serde_json::to_vec(request).expect("a QuoteRequest always serialises");
        let body = self
            .request(Method::POST, "/v1/tee/quote", Some(body))
            .await?;
        decode("/v1/tee/quote", &body)
    }

    /// `GET /v1/tee/collateral`: collateral JSON.
    pub async fn tee_collateral(&self) -> Result<String, HostApiError> {
        let body = self
            .request(Method::GET, "/v1/tee/collateral", None)
            .await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// GetSealingKey: the local key provider's sealed key for `quote`.
    pub async fn get_sealing_key(
        &self,
        request: &GetSealingKeyRequest,
    ) -> Result<GetSealingKeyResponse, HostApiError> {
        let body = serde_json::to_vec(request).expect("a GetSealingKeyRequest always serialises");
        let body = self
            .request(Method::POST, SEALING_KEY_PATH, Some(body))
            .await?;
        decode(SEALING_KEY_PATH, &body)
    }

    /// One request on a fresh connection; the body of a 2xx answer.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, HostApiError> {
        let exchange = self.exchange(method, path, body);
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(HostApiError::Timeout {
                path: path.into(),
                secs: self.timeout.as_secs(),
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, HostApiError> {
        let http = |source: Box<dyn std::error::Error + Send + Sync>| HostApiError::Http {
            path: path.into(),
            source,
        };
        let stream = self
            .endpoint
            .connect()
            .await
            .map_err(|source| HostApiError::Connect {
                endpoint: self.endpoint.to_string(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(e.into()))?;
        // The connection task ends when the host closes (Connection: close).
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "host")
            .header(CONNECTION, "close");
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        // Full sets an exact size hint, so hyper writes Content-Length.
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| http(e.into()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http(e.into()))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(http)?
            .to_bytes();
        if !status.is_success() {
            return Err(HostApiError::Status {
                path: path.into(),
                status: status.as_u16(),
                message: error_message(&bytes),
            });
        }
        Ok(bytes)
    }
}

fn decode<T: serde::de::DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, HostApiError> {
    serde_json::from_slice(body).map_err(|source| HostApiError::Decode {
        path: path.into(),
        source,
    })
}

/// The `error` of an `ApiError` body, else the body as text (shortened).
fn error_message(body: &[u8]) -> String {
    if let Ok(api) = serde_json::from_slice::<dstack_proto::ApiError>(body) {
        return api.error;
    }
    let text = String::from_utf8_lossy(body);
    text.chars().take(200).collect()
}

#[cfg(test)]
#[path = "hostapi_tests.rs"]
mod tests;
