//! Guest control (host → guest, [`dstack_proto::guest`]): connect to the
//! VM's vsock socket, ask for guest port 8000 with `CONNECT 8000\n`, read
//! `OK <port>\n`, then speak HTTP/1.1 over that stream.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use dstack_proto::guest::{GUEST_CONTROL_PORT, GuestInfo};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Why a guest control request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuestError {
    /// The vsock connection could not be made (guest down or not listening).
    #[error("cannot reach the guest over vsock")]
    Connect(#[source] io::Error),
    /// The vsock backend refused the CONNECT.
    #[error("vsock CONNECT refused: {0:?}")]
    Refused(String),
    /// HTTP failed.
    #[error("guest HTTP request failed")]
    Http(#[from] hyper::Error),
    /// The guest answered with an error status.
    #[error("guest answered {status}: {body}")]
    Status {
        /// The status.
        status: StatusCode,
        /// Its body.
        body: String,
    },
    /// The guest's answer is not the expected JSON.
    #[error("guest answer is invalid")]
    Json(#[from] serde_json::Error),
    /// The guest took too long.
    #[error("guest did not answer within {0:?}")]
    Timeout(Duration),
}

/// A client for one VM's guest control API.
#[derive(Debug, Clone)]
pub struct GuestClient {
    vsock: PathBuf,
    timeout: Duration,
}

impl GuestClient {
    /// A client for the VM whose host→guest vsock socket is `vsock`; every
    /// request (connect included) must finish within `timeout`.
    pub fn new(vsock: PathBuf, timeout: Duration) -> Self {
        Self { vsock, timeout }
    }

    /// `GET /v1/info`.
    pub async fn info(&self) -> Result<GuestInfo, GuestError> {
        let body = self.request(Method::GET, "/v1/info").await?;
        Ok(serde_json::from_slice(&body)?)
    }

    /// `POST /v1/shutdown`: the guest stops its services, unmounts and powers off.
    pub async fn shutdown(&self) -> Result<(), GuestError> {
        self.request(Method::POST, "/v1/shutdown").await.map(drop)
    }

    async fn request(&self, method: Method, path: &str) -> Result<Bytes, GuestError> {
        tokio::time::timeout(self.timeout, self.request_inner(method, path))
            .await
            .map_err(|_| GuestError::Timeout(self.timeout))?
    }

    async fn request_inner(&self, method: Method, path: &str) -> Result<Bytes, GuestError> {
        let stream = connect(&self.vsock, GUEST_CONTROL_PORT).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "guest")
            .body(Full::new(Bytes::new()))
            .map_err(|e| GuestError::Refused(e.to_string()))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        conn.abort();
        if !status.is_success() {
            return Err(GuestError::Status {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(body)
    }
}

/// Opens a stream to guest `port` through the vsock backend's socket.
async fn connect(vsock: &std::path::Path, port: u32) -> Result<UnixStream, GuestError> {
    let mut stream = UnixStream::connect(vsock)
        .await
        .map_err(GuestError::Connect)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(GuestError::Connect)?;
    // Byte by byte: the reply is one short line, and anything read past it
    // would belong to the HTTP exchange.
    let mut line = Vec::new();
    loop {
        let byte = stream.read_u8().await.map_err(GuestError::Connect)?;
        if byte == b'\n' {
            break;
        }
        line.push(byte);
        if line.len() > 64 {
            break;
        }
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    if !line.starts_with("OK ") {
        return Err(GuestError::Refused(line));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::routing::{get, post};
    use dstack_proto::guest::BootPhase;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::UnixListener;

    use super::*;

    /// A fake vsock backend + guest: answers CONNECT, then serves `app`.
    fn fake_guest(listener: UnixListener, app: Router, refuse: bool) {
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let app = app.clone();
                tokio::spawn(async move {
                    let mut reader = BufReader::new(stream);
                    let mut line = String::new();
                    reader.read_line(&mut line).await.unwrap();
                    assert_eq!(line, "CONNECT 8000\n");
                    let mut stream = reader.into_inner();
                    if refuse {
                        return;
                    }
                    stream.write_all(b"OK 1073741824\n").await.unwrap();
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }

    #[tokio::test]
    async fn info_and_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vsock");
        let shutdowns = Arc::new(Mutex::new(0));
        let counter = shutdowns.clone();
        let app = Router::new()
            .route(
                "/v1/info",
                get(|| async {
                    axum::Json(GuestInfo {
                        version: "0.1.0".into(),
                        phase: "running".into(),
                        boot_phases: vec![BootPhase {
                            name: "running".into(),
                            at_ms: 900,
                        }],
                        compose_hash: String::new(),
                        app_id: String::new(),
                        instance_id: String::new(),
                        tee: "sim".into(),
                        key_provider: String::new(),
                        rtmr3_events: vec![],
                        containers: vec![],
                    })
                }),
            )
            .route(
                "/v1/shutdown",
                post(move || async move {
                    *counter.lock().unwrap() += 1;
                    StatusCode::ACCEPTED
                }),
            );
        fake_guest(UnixListener::bind(&sock).unwrap(), app, false);
        let client = GuestClient::new(sock, Duration::from_secs(5));
        let info = client.info().await.unwrap();
        assert_eq!(info.phase, "running");
        assert_eq!(info.boot_phases[0].at_ms, 900);
        client.shutdown().await.unwrap();
        assert_eq!(*shutdowns.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn failures_are_quick_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let client = GuestClient::new(dir.path().join("none"), Duration::from_secs(1));
        assert!(matches!(client.info().await, Err(GuestError::Connect(_))));

        let sock = dir.path().join("vsock");
        fake_guest(UnixListener::bind(&sock).unwrap(), Router::new(), true);
        let client = GuestClient::new(sock, Duration::from_secs(1));
        assert!(matches!(
            client.shutdown().await,
            Err(GuestError::Connect(_))
        ));
    }
}
