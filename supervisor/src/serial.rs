//! Capturing a VM's serial console: the supervisor connects to QEMU's
//! serial socket and appends what it reads to the rotated `serial.log`.
//!
//! QEMU (`server=on,wait=off`) drops console output while no client is
//! connected, so the connection is made as soon as the socket appears, and
//! again after a supervisor restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

use crate::logs::RotatingLog;

/// How long to wait for QEMU to create the socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Copies the console at `sock` into `log` until QEMU closes it (exits).
pub async fn capture(sock: PathBuf, log: Arc<Mutex<RotatingLog>>) {
    let started = Instant::now();
    let mut stream = loop {
        match UnixStream::connect(&sock).await {
            Ok(stream) => break stream,
            Err(e) if started.elapsed() > CONNECT_TIMEOUT => {
                tracing::warn!(sock = %sock.display(), "serial console not captured: {e}");
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = log.append(&buf[..n]) {
                    tracing::warn!(sock = %sock.display(), "cannot write serial log: {e}");
                }
            }
            Err(e) => {
                tracing::warn!(sock = %sock.display(), "serial console read failed: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixListener;

    use super::*;

    #[tokio::test]
    async fn copies_until_eof() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("serial.sock");
        let path = dir.path().join("serial.log");
        let log = Arc::new(Mutex::new(RotatingLog::new(path.clone(), 1 << 20)));
        let task = tokio::spawn(capture(sock.clone(), log));
        // The socket appears a little after the capture starts, like QEMU's.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let listener = UnixListener::bind(&sock).unwrap();
        let (mut conn, _) = listener.accept().await.unwrap();
        conn.write_all(b"Linux version 6.12\r\n").await.unwrap();
        conn.write_all(b"login: ").await.unwrap();
        drop(conn);
        task.await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "Linux version 6.12\r\nlogin: "
        );
    }
}
