//! Client of the host API (`dstack_proto::host`): HTTP/1.1 + JSON over
//! vsock to CID 2, one connection per request (`Connection: close`), so a
//! host restart between requests costs nothing.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dstack_proto::blob::{MAX_BLOB_BYTES, blob_path};
use dstack_proto::host::{
    ConfigBundle, GetSealingKeyRequest, GetSealingKeyResponse, HOST_API_PORT, LogBatch,
    Notification, QuoteRequest, QuoteResponse, RtmrExtend, SEALING_KEY_PATH, TeeInfo,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

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
    /// A blob the host sends is larger than any blob may be.
    #[error("the host's answer to {path} is over the {limit}-byte limit of a blob")]
    TooLarge {
        /// Request path.
        path: String,
        /// [`MAX_BLOB_BYTES`].
        limit: u64,
    },
    /// A blob could not be written where it was to go.
    #[error("cannot write the host's answer to {path} into {}", file.display())]
    Write {
        /// Request path.
        path: String,
        /// The file.
        file: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
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

    /// `GET /v1/blobs/sha256/<hex>`: writes the blob into `dest` (a new
    /// file), streaming, and returns the SHA-256 hex of the bytes written.
    /// The host is not trusted: the caller compares that hash with the
    /// measured one before using the file.
    pub async fn get_blob(&self, sha256: &str, dest: &Path) -> Result<String, HostApiError> {
        let path = blob_path(sha256);
        let fetch = async {
            let response = self.send(Method::GET, &path, None).await?;
            let response = check_status(&path, response).await?;
            let write = |source| HostApiError::Write {
                path: path.clone(),
                file: dest.to_owned(),
                source,
            };
            let mut file = tokio::fs::File::create(dest).await.map_err(write)?;
            let mut body = response.into_body();
            let (mut hasher, mut size) = (Sha256::new(), 0u64);
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| HostApiError::Http {
                    path: path.clone(),
                    source: e.into(),
                })?;
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                size += data.len() as u64;
                if size > MAX_BLOB_BYTES {
                    return Err(HostApiError::TooLarge {
                        path: path.clone(),
                        limit: MAX_BLOB_BYTES,
                    });
                }
                hasher.update(data);
                file.write_all(data).await.map_err(write)?;
            }
            file.sync_all().await.map_err(write)?;
            Ok(hex::encode(hasher.finalize()))
        };
        match tokio::time::timeout(self.timeout, fetch).await {
            Ok(result) => result,
            Err(_) => Err(HostApiError::Timeout {
                path,
                secs: self.timeout.as_secs(),
            }),
        }
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
        let response = self.send(method, path, body).await?;
        let response = check_status(path, response).await?;
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|source| HostApiError::Http {
                path: path.into(),
                source,
            })?
            .to_bytes();
        Ok(bytes)
    }

    /// Sends one request on a fresh connection; the response as it starts.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, HostApiError> {
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
        sender
            .send_request(request)
            .await
            .map_err(|e| http(e.into()))
    }
}

/// The response if its status is a success, else the host's message.
async fn check_status(
    path: &str,
    response: Response<Incoming>,
) -> Result<Response<Incoming>, HostApiError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    // An error body is short; a longer one is cut, not waited for.
    let bytes = Limited::new(response.into_body(), 64 << 10)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Err(HostApiError::Status {
        path: path.into(),
        status: status.as_u16(),
        message: error_message(&bytes),
    })
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
