//! Container output: each stdout/stderr pipe is read line by line, every
//! line goes to the host-bound log channel and into a per-service ring of the
//! last [`RECENT_LINES`] lines.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use dstack_proto::host::{LogEntry, LogStream};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// Lines kept in memory per service.
pub(crate) const RECENT_LINES: usize = 200;
/// Longer lines are split, so one runaway line cannot exhaust memory.
const MAX_LINE: usize = 16 * 1024;

/// The last lines of one service.
pub(crate) type Recent = Arc<Mutex<VecDeque<LogEntry>>>;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// Records a line: into the ring and onto the channel. The channel send never
/// waits — a stalled host link must not stall the app writing its logs — so
/// when the channel is full the line is kept only in the ring.
pub(crate) fn record(recent: &Recent, logs: &mpsc::Sender<LogEntry>, entry: LogEntry) {
    if let Ok(mut ring) = recent.lock() {
        if ring.len() == RECENT_LINES {
            ring.pop_front();
        }
        ring.push_back(entry.clone());
    }
    let _ = logs.try_send(entry);
}

/// Reads up to a newline or [`MAX_LINE`] bytes; 0 at EOF.
async fn read_line_limited<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(buf.len());
        }
        let room = MAX_LINE - buf.len();
        if let Some(i) = available.iter().take(room).position(|b| *b == b'\n') {
            buf.extend_from_slice(&available[..=i]);
            reader.consume(i + 1);
            return Ok(buf.len());
        }
        let n = available.len().min(room);
        buf.extend_from_slice(&available[..n]);
        reader.consume(n);
        if buf.len() >= MAX_LINE {
            return Ok(buf.len());
        }
    }
}

/// Reads `pipe` until EOF (every writer closed), recording each line.
pub(crate) fn spawn_reader(
    service: String,
    stream: LogStream,
    pipe: OwnedFd,
    recent: Recent,
    logs: mpsc::Sender<LogEntry>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe)?;
    Ok(tokio::spawn(async move {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match read_line_limited(&mut reader, &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        buf.pop();
                    }
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    let entry = LogEntry {
                        ts_ms: now_ms(),
                        service: service.clone(),
                        stream,
                        line,
                    };
                    record(&recent, &logs, entry);
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_lines_and_keeps_the_last_ones() {
        let (read, write) = nix::unistd::pipe().unwrap();
        let recent: Recent = Arc::default();
        let (tx, mut rx) = mpsc::channel(1);
        let task = spawn_reader("web".into(), LogStream::Stderr, read, recent.clone(), tx).unwrap();
        let mut text = String::from("first\r\nsecond\n");
        for i in 0..RECENT_LINES {
            text.push_str(&format!("line {i}\n"));
        }
        text.push_str(&"x".repeat(MAX_LINE + 5));
        std::fs::File::from(write)
            .write_all(text.as_bytes())
            .unwrap();
        task.await.unwrap();
        // The channel held one line; the rest were dropped, not waited for.
        let first = rx.recv().await.unwrap();
        assert_eq!(
            (first.service.as_str(), first.stream, first.line.as_str()),
            ("web", LogStream::Stderr, "first")
        );
        let ring = recent.lock().unwrap();
        assert_eq!(ring.len(), RECENT_LINES);
        assert_eq!(ring[ring.len() - 2].line.len(), MAX_LINE);
        assert_eq!(ring.back().unwrap().line, "xxxxx");
    }

    use std::io::Write;
}
