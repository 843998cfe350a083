//! The backend: one tiny HTTP/1.1 response, keep-alive, the same on every
//! listener, so the proxies in front of it are all that differs.

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

/// The body every request gets.
const BODY: &[u8] = b"hello from the gateway bench backend\n";

async fn answer(_request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    Ok(response)
}

/// Serves HTTP/1.1 on one connection until the client closes it.
fn spawn_connection<S>(stream: S)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(answer);
        // Errors are clients hanging up mid-request (wrk stopping): not news.
        let _ = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
}

/// Serves `listener` (nginx's upstream) until accepting fails for good.
pub(crate) async fn serve_tcp(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                // Responses are one small write each: no Nagle delay.
                let _ = tcp.set_nodelay(true);
                spawn_connection(tcp);
            }
            Err(e) => {
                // Out of descriptors, say: let connections close, go on.
                eprintln!("gateway-bench-backend: accept (TCP): {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves the tunnel port (the gateway's upstream) until the network stops.
pub(crate) async fn serve_tunnel(listener: dstack_wgnet::WgListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => spawn_connection(stream),
            Err(e) => {
                eprintln!("gateway-bench-backend: accept (tunnel): {e}");
                return;
            }
        }
    }
}
