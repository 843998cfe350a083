//! A minimal QMP client: just enough to ask a guest for an ACPI power-down
//! and to ask QEMU whether it runs.
//!
//! QMP is line-delimited JSON: a greeting, `qmp_capabilities` to leave
//! negotiation mode, then commands, each answered by `return` or `error`,
//! with asynchronous `event` lines interleaved (skipped here).

use std::io;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QmpError {
    /// Connecting, reading or writing failed.
    #[error("QMP I/O failed")]
    Io(#[from] io::Error),
    /// QEMU did not answer in time.
    #[error("QMP timed out")]
    Timeout,
    /// QEMU answered with an error.
    #[error("QMP command {command} failed: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's description.
        desc: String,
    },
    /// QEMU said something that is not QMP.
    #[error("unexpected QMP message: {0}")]
    Protocol(String),
}

/// A negotiated QMP connection.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
}

impl Qmp {
    /// Connects to QEMU's QMP socket and negotiates capabilities.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Timeout)??;
        let (read, writer) = stream.into_split();
        let mut qmp = Self {
            reader: BufReader::new(read),
            writer,
            timeout,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities").await?;
        Ok(qmp)
    }

    /// Runs a command without arguments and returns its `return` value.
    pub async fn execute(&mut self, command: &str) -> Result<Value, QmpError> {
        let mut line = json!({ "execute": command }).to_string();
        line.push('\n');
        tokio::time::timeout(self.timeout, self.writer.write_all(line.as_bytes()))
            .await
            .map_err(|_| QmpError::Timeout)??;
        loop {
            let message = self.read_message().await?;
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                return Err(QmpError::Command {
                    command: command.to_owned(),
                    desc: error
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                        .to_owned(),
                });
            }
            if message.get("event").is_none() {
                return Err(QmpError::Protocol(message.to_string()));
            }
        }
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let read = tokio::time::timeout(self.timeout, self.reader.read_line(&mut line))
            .await
            .map_err(|_| QmpError::Timeout)??;
        if read == 0 {
            return Err(QmpError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        serde_json::from_str(&line).map_err(|_| QmpError::Protocol(line.trim().to_owned()))
    }
}

/// Presses the virtual power button (ACPI power-down) of the VM at `qmp_sock`.
pub async fn system_powerdown(qmp_sock: &Path) -> Result<(), QmpError> {
    let mut qmp = Qmp::connect(qmp_sock, Duration::from_secs(3)).await?;
    qmp.execute("system_powerdown").await.map(drop)
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    use super::*;

    /// A fake QEMU: greets, answers commands from a script, records them.
    async fn fake_qemu(listener: UnixListener, replies: Vec<&'static str>) -> Vec<String> {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        write
            .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        for reply in replies {
            let Some(line) = lines.next_line().await.unwrap() else {
                break;
            };
            seen.push(line);
            write.write_all(reply.as_bytes()).await.unwrap();
        }
        let mut rest = String::new();
        let _ = lines.into_inner().read_to_string(&mut rest).await;
        seen
    }

    #[tokio::test]
    async fn powerdown_negotiates_then_skips_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(fake_qemu(
            listener,
            vec![
                "{\"return\": {}}\n",
                "{\"event\": \"POWERDOWN\", \"timestamp\": {}}\n{\"return\": {}}\n",
            ],
        ));
        system_powerdown(&path).await.unwrap();
        let seen = server.await.unwrap();
        assert_eq!(
            seen,
            [
                r#"{"execute":"qmp_capabilities"}"#,
                r#"{"execute":"system_powerdown"}"#
            ]
        );
    }

    #[tokio::test]
    async fn errors_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(fake_qemu(
            listener,
            vec![
                "{\"return\": {}}\n",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no ACPI\"}}\n",
            ],
        ));
        let err = system_powerdown(&path).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "QMP command system_powerdown failed: no ACPI"
        );
        let missing = dir.path().join("none.sock");
        assert!(matches!(
            system_powerdown(&missing).await,
            Err(QmpError::Io(_))
        ));
    }
}
