//! Test helpers shared by several modules' tests.

use std::path::Path;

use dstack_proto::host::{ConfigBundle, SysConfig};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::mpsc;

/// A request as the server saw it.
#[derive(Debug)]
pub(crate) struct Seen {
    pub(crate) request_line: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Seen {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Serves each connection one canned response, then closes it.
pub(crate) fn serve(
    path: &Path,
    status: &'static str,
    body: String,
) -> mpsc::UnboundedReceiver<Seen> {
    let listener = UnixListener::bind(path).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            reader.read_line(&mut request_line).await.unwrap();
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).await.unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (n, v) = line.split_once(':').unwrap();
                headers.push((n.trim().to_owned(), v.trim().to_owned()));
            }
            let len = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
            let mut request_body = vec![0; len];
            reader.read_exact(&mut request_body).await.unwrap();
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let mut stream = reader.into_inner();
            stream.write_all(response.as_bytes()).await.unwrap();
            stream.shutdown().await.unwrap();
            let _ = tx.send(Seen {
                request_line: request_line.trim_end().to_owned(),
                headers,
                body: request_body,
            });
        }
    });
    rx
}

/// A valid config bundle for a one-service app.
pub(crate) fn bundle() -> ConfigBundle {
    ConfigBundle {
        app_compose: APP_COMPOSE.into(),
        encrypted_env: Vec::new(),
        user_config: String::new(),
        sys_config: SysConfig::new("vm1", "hello"),
        instance_info: Default::default(),
    }
}

/// A valid app-compose.json.
pub(crate) const APP_COMPOSE: &str = r#"{"docker_compose_file":"services:\n  web:\n    image: busybox\n","manifest_version":2,"name":"hello","runner":"docker-compose"}"#;
