//! A small HTTP/1.1 client for the supervisor API, over its unix socket (the
//! default) or TCP with a bearer token.

use std::path::PathBuf;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where the supervisor listens.
#[derive(Debug, Clone)]
pub(crate) enum Endpoint {
    /// A unix socket path.
    Unix(PathBuf),
    /// `host:port` with a bearer token.
    Tcp { addr: String, token: Option<String> },
}

/// The supervisor's state directory, by the same rules the daemon uses.
pub(crate) fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DSTACK_STATE_DIR") {
        return dir.into();
    }
    if nix_is_root() {
        return PathBuf::from("/var/lib/dstack");
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".local/share/dstack")
}

fn nix_is_root() -> bool {
    // /proc/self is owned by the effective uid; no libc call needed.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

impl Endpoint {
    /// Parse `unix:PATH`, a bare path, or `http://host:port`.
    pub(crate) fn parse(text: &str, token: Option<String>) -> anyhow::Result<Self> {
        if let Some(path) = text.strip_prefix("unix:") {
            return Ok(Endpoint::Unix(path.into()));
        }
        if let Some(addr) = text.strip_prefix("http://") {
            return Ok(Endpoint::Tcp {
                addr: addr.trim_end_matches('/').to_string(),
                token,
            });
        }
        if text.starts_with('/') || text.starts_with('.') {
            return Ok(Endpoint::Unix(text.into()));
        }
        bail!("supervisor address {text:?} is not unix:PATH or http://HOST:PORT")
    }

    /// The default: the supervisor socket in the default state directory.
    pub(crate) fn default_unix() -> Self {
        Endpoint::Unix(default_state_dir().join("supervisor.sock"))
    }

    fn describe(&self) -> String {
        match self {
            Endpoint::Unix(p) => p.display().to_string(),
            Endpoint::Tcp { addr, .. } => format!("http://{addr}"),
        }
    }
}

/// A connection-per-request client.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    endpoint: Endpoint,
}

/// The error body of a failed request, or a transport failure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiFailure {
    #[error("{message}")]
    Status { status: StatusCode, message: String },
}

/// One HTTP/1.1 exchange on a fresh connection.
async fn send_over<S>(
    stream: S,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<Response<Incoming>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender.send_request(request).await?)
}

impl Client {
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> anyhow::Result<Response<Incoming>> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "dstack-supervisor");
        if let Some((_, content_type)) = &body {
            builder = builder.header("content-type", *content_type);
        }
        if let Endpoint::Tcp {
            token: Some(token), ..
        } = &self.endpoint
        {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let body = body.map(|(bytes, _)| bytes).unwrap_or_default();
        let request = builder.body(Full::new(Bytes::from(body)))?;
        let not_running = || {
            format!(
                "cannot reach the supervisor at {} (is `dstack-supervisor run` running? set DSTACK_SUPERVISOR to its socket)",
                self.endpoint.describe()
            )
        };
        let response = match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .with_context(not_running)?;
                send_over(stream, request).await?
            }
            Endpoint::Tcp { addr, .. } => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .with_context(not_running)?;
                send_over(stream, request).await?
            }
        };
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let message = serde_json::from_slice::<dstack_proto::ApiError>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| {
                format!(
                    "supervisor answered {status}: {}",
                    String::from_utf8_lossy(&bytes)
                )
            });
        Err(ApiFailure::Status { status, message }.into())
    }

    /// A JSON request with a JSON answer.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let body = body.map(serde_json::to_vec).transpose()?;
        let body = body.map(|bytes| (bytes, "application/json"));
        let response = self.send(method, path, body).await?;
        let bytes = response.into_body().collect().await?.to_bytes();
        serde_json::from_slice(&bytes)
            .with_context(|| format!("unexpected answer from the supervisor to {path}"))
    }

    /// A request whose answer is ignored beyond its status.
    pub(crate) async fn call_empty(&self, method: Method, path: &str) -> anyhow::Result<()> {
        let response = self.send(method, path, None).await?;
        response.into_body().collect().await?;
        Ok(())
    }

    /// A PUT of raw bytes whose answer is ignored beyond its status.
    pub(crate) async fn put_bytes(&self, path: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        let body = Some((bytes, "application/octet-stream"));
        let response = self.send(Method::PUT, path, body).await?;
        response.into_body().collect().await?;
        Ok(())
    }

    /// A streaming GET: each chunk is handed to `sink` as it arrives.
    pub(crate) async fn stream(
        &self,
        path: &str,
        mut sink: impl FnMut(&[u8]),
    ) -> anyhow::Result<()> {
        let mut body = self.send(Method::GET, path, None).await?.into_body();
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                sink(data);
            }
        }
        Ok(())
    }
}
