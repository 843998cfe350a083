//! One JSON request over HTTP/1.1 on a stream the caller connected (a unix
//! socket, TCP, or TLS over TCP): the exchange every pRPC-style client of
//! ours makes — the guest API client, the KMS client, the onboarding client.
//! The caller owns transport and trust; this owns the HTTP.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

/// Why the exchange failed below the application's answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExchangeError {
    /// The HTTP handshake, request or response broke off.
    #[error("HTTP exchange failed: {0}")]
    Http(String),
    /// The answer is larger than the caller accepts.
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

/// An answer: its status, headers and body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: hyper::StatusCode,
    /// The headers (e.g. a PCCS's issuer chains).
    pub headers: hyper::HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// The `{"error": ..}` text of a failed answer (upstream's error shape),
    /// or the status and the start of the body when it is not that shape.
    pub fn error_message(&self) -> String {
        match serde_json_error(&self.body) {
            Some(message) => message,
            None => format!(
                "HTTP {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(512)])
            ),
        }
    }
}

fn serde_json_error(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<dstack_proto::ApiError>(body)
        .ok()
        .map(|e| e.error)
}

/// POSTs `body` (JSON) to `path` with `Host: authority` over `stream`, and
/// reads at most `max_answer` bytes of the answer.
pub async fn post_json<S>(
    stream: S,
    authority: &str,
    path: &str,
    body: Vec<u8>,
    max_answer: usize,
) -> Result<Answer, ExchangeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    request(
        stream,
        hyper::Method::POST,
        authority,
        path,
        Some(body),
        max_answer,
        USER_AGENT,
    )
    .await
}

/// One `method` request for `path` with `Host: authority` over `stream`,
/// with a JSON body if given (`Accept: application/json` always), reading at
/// most `max_answer` bytes of the answer; `user_agent` names the caller
/// ([`USER_AGENT`] unless a peer expects another).
pub async fn request<S>(
    stream: S,
    method: hyper::Method,
    authority: &str,
    path: &str,
    json_body: Option<Vec<u8>>,
    max_answer: usize,
    user_agent: &str,
) -> Result<Answer, ExchangeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: &dyn std::fmt::Display| ExchangeError::Http(e.to_string());
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| http(&e))?;
    // Its errors also surface through `send_request`. Aborted when this call
    // ends or is dropped (a caller's timeout), so a peer that never answers
    // leaves nothing running.
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json")
        .header(hyper::header::USER_AGENT, user_agent);
    let body = match json_body {
        Some(body) => {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
            Bytes::from(body)
        }
        None => Bytes::new(),
    };
    let request = builder.body(Full::new(body)).map_err(|e| http(&e))?;
    let response = sender.send_request(request).await.map_err(|e| http(&e))?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = Limited::new(response.into_body(), max_answer)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ExchangeError::TooLarge(max_answer)
            } else {
                ExchangeError::Http(e.to_string())
            }
        })?
        .to_bytes();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What our clients call themselves.
pub const USER_AGENT: &str = concat!("dstack-rs/", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn serve_once(
        answer: &'static str,
    ) -> (tokio::net::TcpStream, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 4096];
            let n = conn.read(&mut request).await.unwrap();
            conn.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&request[..n]).into_owned()
        });
        (tokio::net::TcpStream::connect(addr).await.unwrap(), server)
    }

    #[tokio::test]
    async fn posts_json_and_reads_the_answer() {
        let (stream, server) =
            serve_once("HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n{\"a\":1}").await;
        let answer = post_json(stream, "kms:8000", "/prpc/X?json", b"{}".to_vec(), 1024)
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(&answer.body[..], b"{\"a\":1}");
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /prpc/X?json HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.to_ascii_lowercase().contains("host: kms:8000"),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("content-type: application/json")
        );
    }

    #[tokio::test]
    async fn errors_and_oversized_answers_are_named() {
        let (stream, _server) = serve_once(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 17\r\n\r\n{\"error\":\"nope\"}\n",
        )
        .await;
        let answer = post_json(stream, "h", "/", Vec::new(), 1024).await.unwrap();
        assert_eq!(answer.error_message(), "nope");
        let (stream, _server) =
            serve_once("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789").await;
        let err = post_json(stream, "h", "/", Vec::new(), 4)
            .await
            .unwrap_err();
        assert!(matches!(err, ExchangeError::TooLarge(4)), "{err}");
    }
}
