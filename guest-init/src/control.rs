//! Guest control (`dstack_proto::guest`): the host's view into the guest,
//! HTTP/1.1 + JSON on vsock port 8000. Up from the moment vsock exists until
//! power-off, so the host can read a failed boot's error.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use dstack_proto::ApiError;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_vsock::{VMADDR_CID_ANY, VsockAddr, VsockListener};

use crate::state::{GuestState, ShutdownReason, ShutdownSignal};

/// What the handlers need.
#[derive(Debug, Clone)]
pub struct Control {
    /// Guest state.
    pub state: Arc<GuestState>,
    /// Where `POST /v1/shutdown` goes.
    pub shutdown: ShutdownSignal,
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#).into_bytes())
}

fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    json(status, to_json(&ApiError::new(message)))
}

impl Control {
    /// Answers one request (no I/O: the transport is the caller's).
    pub fn route(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        match (method, path) {
            (&Method::GET, "/v1/info") => json(StatusCode::OK, to_json(&self.state.info())),
            (&Method::GET, "/v1/containers") => {
                json(StatusCode::OK, to_json(&self.state.containers()))
            }
            (&Method::POST, "/v1/shutdown") => {
                tracing::info!("shutdown requested by the host");
                self.shutdown.request(ShutdownReason::HostRequest);
                json(StatusCode::ACCEPTED, b"{}".to_vec())
            }
            (_, "/v1/info" | "/v1/containers" | "/v1/shutdown") => error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {path}"),
            ),
            _ => error(StatusCode::NOT_FOUND, format!("no such path: {path}")),
        }
    }

    /// Serves HTTP/1.1 on one connection until the peer closes it.
    pub async fn serve_connection<IO>(&self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let this = self.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let response = this.route(req.method(), req.uri().path());
            async move { Ok::<_, Infallible>(response) }
        });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), service)
            .await
        {
            tracing::debug!("guest control connection ended: {e}");
        }
    }

    /// Binds vsock `port` (the guest's: [`dstack_proto::guest::GUEST_CONTROL_PORT`]) and serves
    /// it forever in a task.
    pub fn spawn_vsock(self, port: u32) -> io::Result<tokio::task::JoinHandle<()>> {
        let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port))?;
        Ok(tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _peer)) => {
                        let this = self.clone();
                        tokio::spawn(async move { this.serve_connection(stream).await });
                    }
                    Err(e) => {
                        tracing::warn!("guest control accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use dstack_proto::guest::GuestInfo;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn control() -> Control {
        let state = Arc::new(GuestState::default());
        state.enter_phase_at("running", 1234);
        Control {
            state,
            shutdown: ShutdownSignal::default(),
        }
    }

    async fn body(response: Response<Full<Bytes>>) -> Vec<u8> {
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    #[tokio::test]
    async fn routes_info_containers_and_errors() {
        let c = control();
        let r = c.route(&Method::GET, "/v1/info");
        assert_eq!(r.status(), StatusCode::OK);
        let info: GuestInfo = serde_json::from_slice(&body(r).await).unwrap();
        assert_eq!(info.phase, "running");
        assert_eq!(info.boot_phases[0].at_ms, 1234);

        let r = c.route(&Method::GET, "/v1/containers");
        assert_eq!(body(r).await, b"[]");

        let r = c.route(&Method::GET, "/v1/nope");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let e: ApiError = serde_json::from_slice(&body(r).await).unwrap();
        assert!(e.error.contains("/v1/nope"));

        let r = c.route(&Method::GET, "/v1/shutdown");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(c.shutdown.requested(), None, "a GET must not shut down");
    }

    #[tokio::test]
    async fn shutdown_answers_202_then_signals() {
        let c = control();
        let (client, server) = tokio::io::duplex(4096);
        let serving = {
            let c = c.clone();
            tokio::spawn(async move { c.serve_connection(server).await })
        };
        let (mut rd, mut wr) = tokio::io::split(client);
        wr.write_all(b"POST /v1/shutdown HTTP/1.1\r\nHost: g\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        rd.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
        assert_eq!(c.shutdown.requested(), Some(ShutdownReason::HostRequest));
        serving.await.unwrap();
    }
}
