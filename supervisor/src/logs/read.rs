//! Reading a rotated log back: the last N lines across the rotated files,
//! then (with follow) whatever is appended, across rotations.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use dstack_proto::supervisor::{LogChannel, LogLine};
use futures_util::Stream;
use tokio::sync::mpsc;

use super::rotated_paths;

/// Lines returned when a request does not say (upstream's default).
pub const DEFAULT_LINES: usize = 10_000;
/// How often a follower looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogQuery {
    /// Which log.
    pub channel: LogChannel,
    /// Only this compose service's lines (app channel only).
    pub service: Option<String>,
    /// How many lines of history.
    pub lines: usize,
    /// Keep streaming appended output until the client goes away or the VM is removed.
    pub follow: bool,
}

/// A response body: chunks of text.
pub type LogStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Streams the log at `path` (app: one [`LogLine`] JSON per line; serial: raw text).
pub fn open_stream(path: PathBuf, query: LogQuery) -> LogStream {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(16);
    tokio::spawn(async move {
        let tail_path = path.clone();
        let tail_query = query.clone();
        let tail = tokio::task::spawn_blocking(move || tail(&tail_path, &tail_query)).await;
        let (history, cursor) = match tail {
            Ok(Ok(tail)) => tail,
            Ok(Err(e)) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(io::Error::other(e))).await;
                return;
            }
        };
        if !history.is_empty() && tx.send(Ok(Bytes::from(history))).await.is_err() {
            return;
        }
        if query.follow {
            follow(&path, &query, cursor, &tx).await;
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// Where a follower is in the current log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    inode: u64,
    offset: u64,
}

/// Whether a stored line passes the query's filter.
fn keep(line: &[u8], query: &LogQuery) -> bool {
    match (&query.channel, &query.service) {
        (LogChannel::App, Some(service)) => {
            serde_json::from_slice::<LogLine>(line).is_ok_and(|entry| &entry.service == service)
        }
        _ => true,
    }
}

/// The last `query.lines` kept lines across the rotated files, and where
/// the current file ends. For the app channel a trailing partial line is
/// left for the follower; the serial channel returns everything.
fn tail(path: &Path, query: &LogQuery) -> io::Result<(Vec<u8>, Cursor)> {
    let mut lines: VecDeque<Vec<u8>> = VecDeque::new();
    let mut cursor = Cursor {
        inode: 0,
        offset: 0,
    };
    // Newest first, until enough lines are found.
    for (index, file) in rotated_paths(path).iter().rev().enumerate() {
        let bytes = match fs::read(file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut complete = bytes.as_slice();
        if index == 0 {
            let end = match query.channel {
                LogChannel::Serial => bytes.len(),
                LogChannel::App => bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1),
            };
            complete = &bytes[..end];
            cursor = Cursor {
                inode: fs::metadata(file)?.ino(),
                offset: end as u64,
            };
        }
        for line in complete
            .strip_suffix(b"\n")
            .unwrap_or(complete)
            .rsplit(|b| *b == b'\n')
        {
            if lines.len() >= query.lines {
                break;
            }
            if (!line.is_empty() || query.channel == LogChannel::Serial) && keep(line, query) {
                lines.push_front(line.to_vec());
            }
        }
        if lines.len() >= query.lines {
            break;
        }
    }
    let mut out = Vec::new();
    for line in lines {
        out.extend_from_slice(&line);
        out.push(b'\n');
    }
    if query.channel == LogChannel::Serial && !out.is_empty() {
        // The raw file may end mid-line; do not invent a newline.
        let ends_with_newline = fs::read(path).is_ok_and(|b| b.ends_with(b"\n"));
        if !ends_with_newline {
            out.pop();
        }
    }
    Ok((out, cursor))
}

/// Sends what is appended to the log until the receiver is dropped or the
/// VM directory disappears.
async fn follow(
    path: &Path,
    query: &LogQuery,
    mut cursor: Cursor,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) {
    let mut partial: Vec<u8> = Vec::new();
    loop {
        tokio::time::sleep(FOLLOW_POLL).await;
        if tx.is_closed() || !path.parent().is_some_and(Path::exists) {
            return;
        }
        let chunk = match read_new(path, &mut cursor) {
            Ok(chunk) => chunk,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        if chunk.is_empty() {
            continue;
        }
        let out = match query.channel {
            LogChannel::Serial => chunk,
            LogChannel::App => {
                partial.extend_from_slice(&chunk);
                let Some(end) = partial.iter().rposition(|b| *b == b'\n') else {
                    continue;
                };
                let complete: Vec<u8> = partial.drain(..=end).collect();
                let mut out = Vec::new();
                for line in complete.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    if keep(line, query) {
                        out.extend_from_slice(line);
                        out.push(b'\n');
                    }
                }
                out
            }
        };
        if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
            return;
        }
    }
}

/// Reads what was appended since `cursor`, following one rotation: the
/// rest of the old file (now `.1`) comes first, then the new file.
fn read_new(path: &Path, cursor: &mut Cursor) -> io::Result<Vec<u8>> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    if meta.ino() != cursor.inode {
        let previous = &rotated_paths(path)[super::KEEP_ROTATED - 1];
        if cursor.inode != 0 && fs::metadata(previous).is_ok_and(|m| m.ino() == cursor.inode) {
            out.extend(read_from(previous, cursor.offset)?);
        }
        *cursor = Cursor {
            inode: meta.ino(),
            offset: 0,
        };
    } else if meta.len() < cursor.offset {
        cursor.offset = 0;
    }
    let new = read_from(path, cursor.offset)?;
    cursor.offset += new.len() as u64;
    out.extend(new);
    Ok(out)
}

fn read_from(path: &Path, offset: u64) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut out = Vec::new();
    file.read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::logs::RotatingLog;

    fn line(service: &str, text: &str) -> String {
        let entry = LogLine {
            ts_ms: 1,
            service: service.into(),
            stream: "stdout".into(),
            line: text.into(),
        };
        format!("{}\n", serde_json::to_string(&entry).unwrap())
    }

    fn query(channel: LogChannel, lines: usize, follow: bool) -> LogQuery {
        LogQuery {
            channel,
            service: None,
            lines,
            follow,
        }
    }

    async fn next_text(stream: &mut LogStream) -> String {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("output in time")
            .expect("stream open")
            .unwrap();
        String::from_utf8(chunk.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn tails_across_rotated_files_with_a_service_filter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let mut log = RotatingLog::new(path.clone(), 200);
        for n in 0..10 {
            let service = if n % 2 == 0 { "web" } else { "db" };
            log.append(line(service, &format!("l{n}")).as_bytes())
                .unwrap();
        }
        assert!(
            rotated_paths(&path)[2].exists(),
            "the test spans a rotation"
        );
        let mut q = query(LogChannel::App, 3, false);
        q.service = Some("web".into());
        let text = next_text(&mut open_stream(path.clone(), q)).await;
        let got: Vec<LogLine> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let got: Vec<&str> = got.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(got, ["l4", "l6", "l8"]);
    }

    #[tokio::test]
    async fn serial_tail_is_raw() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        fs::write(&path, "one\ntwo\nthree\n~ # ").unwrap();
        let text = next_text(&mut open_stream(path, query(LogChannel::Serial, 2, false))).await;
        assert_eq!(text, "three\n~ # ");
    }

    #[tokio::test]
    async fn follow_sees_appends_and_rotation_then_ends_with_the_vm() {
        let dir = tempfile::tempdir().unwrap();
        let vm = dir.path().join("vm");
        fs::create_dir(&vm).unwrap();
        let path = vm.join("app.log");
        let mut log = RotatingLog::new(path.clone(), 120);
        log.append(line("web", "old").as_bytes()).unwrap();
        let mut stream = open_stream(path.clone(), query(LogChannel::App, 10, true));
        assert!(next_text(&mut stream).await.contains("\"old\""));

        // Half a line is held back until it is complete.
        let whole = line("web", "new");
        let (first, second) = whole.split_at(10);
        log.append(first.as_bytes()).unwrap();
        tokio::time::sleep(FOLLOW_POLL * 2).await;
        log.append(second.as_bytes()).unwrap();
        assert!(next_text(&mut stream).await.contains("\"new\""));

        // This append rotates: "new" moves to .1 and is not repeated.
        log.append(line("web", "after-rotation").as_bytes())
            .unwrap();
        let text = next_text(&mut stream).await;
        assert!(
            text.contains("after-rotation") && !text.contains("\"new\""),
            "{text}"
        );

        fs::remove_dir_all(&vm).unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap();
        assert!(end.is_none(), "the stream ends once the VM is gone");
    }
}
