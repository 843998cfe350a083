//! QEMU's human monitor (HMP) on a unix socket, for the probe's port I/O.
//!
//! HMP's `o /h PORT VALUE` and `i /b PORT` perform a 16-bit write and an
//! 8-bit read on the guest's I/O address space, through the same device
//! code as a guest's `outw`/`inb`. The monitor echoes what it is sent
//! (with terminal escapes) and answers each read with one line,
//! `portb[0x0511] = 0x41`, then a `(qemu) ` prompt. Commands are sent in
//! batches and the answers counted: no reply depends on the echo.
//! QMP's `human-monitor-command` runs the same commands, about four times
//! slower per byte (measured with QEMU 10.0.2), and the tables are 128 KiB.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;

use crate::fw_cfg::{DATA_PORT, SELECTOR_PORT};

/// What ends every answer.
const PROMPT: &[u8] = b"(qemu) ";
/// Reads sent at once: small enough that the batch fits the socket's send
/// buffer while the monitor's echo waits to be read.
const READ_BATCH: usize = 1024;

/// A monitor conversation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// The socket could not be reached.
    #[error("cannot connect to the monitor socket")]
    Connect(#[source] io::Error),
    /// Reading or writing the socket failed.
    #[error("the monitor connection failed")]
    Io(#[source] io::Error),
    /// The deadline passed before QEMU answered.
    #[error("the monitor did not answer in time")]
    TimedOut,
    /// QEMU closed the connection (it exited).
    #[error("the monitor closed the connection")]
    Closed,
    /// An answer that is not a port read.
    #[error("unexpected monitor answer {0:?}")]
    Unexpected(String),
}

/// A connection to QEMU's human monitor.
#[derive(Debug)]
pub(crate) struct Hmp {
    stream: UnixStream,
}

impl Hmp {
    /// Connects to `socket` and waits for the first prompt.
    pub(crate) fn connect(socket: &Path, deadline: Instant) -> Result<Self, MonitorError> {
        let stream = UnixStream::connect(socket).map_err(MonitorError::Connect)?;
        let mut hmp = Self { stream };
        hmp.read_until(deadline, |buf| buf.ends_with(PROMPT))?;
        Ok(hmp)
    }

    /// Runs one command that prints nothing useful (`stop`) and waits for
    /// the prompt after it.
    pub(crate) fn command(&mut self, command: &str, deadline: Instant) -> Result<(), MonitorError> {
        self.send(format!("{command}\n").as_bytes(), deadline)?;
        // The echo redraws the line without the prompt; the prompt comes
        // once the command ran.
        self.read_until(deadline, |buf| buf.ends_with(PROMPT))?;
        Ok(())
    }

    /// Selects fw_cfg item `key` (a 16-bit write to the selector port).
    pub(crate) fn fw_cfg_select(
        &mut self,
        key: u16,
        deadline: Instant,
    ) -> Result<(), MonitorError> {
        self.command(&format!("o /h {SELECTOR_PORT:#x} {key:#x}"), deadline)
    }

    /// Reads `len` bytes of the selected fw_cfg item, one data-port read each.
    pub(crate) fn fw_cfg_read(
        &mut self,
        len: usize,
        deadline: Instant,
    ) -> Result<Vec<u8>, MonitorError> {
        let line = format!("i /b {DATA_PORT:#x}\n");
        let mut data = Vec::with_capacity(len);
        while data.len() < len {
            let batch = READ_BATCH.min(len - data.len());
            self.send(line.repeat(batch).as_bytes(), deadline)?;
            let mut counted = PortReads::default();
            let answers = self.read_until(deadline, |buf| {
                counted.scan(buf);
                counted.count >= batch && buf.ends_with(PROMPT)
            })?;
            let values = port_reads(&answers)?;
            if values.len() != batch {
                return Err(MonitorError::Unexpected(format!(
                    "{} port reads answered for {batch} sent",
                    values.len()
                )));
            }
            data.extend(values);
        }
        Ok(data)
    }

    /// Tells QEMU to exit now; does not wait for it.
    pub(crate) fn quit(&mut self, deadline: Instant) -> Result<(), MonitorError> {
        self.send(b"quit\n", deadline)
    }

    fn send(&mut self, bytes: &[u8], deadline: Instant) -> Result<(), MonitorError> {
        let left = remaining(deadline)?;
        self.stream
            .set_write_timeout(Some(left))
            .map_err(MonitorError::Io)?;
        self.stream.write_all(bytes).map_err(io_error)
    }

    /// Reads until `done` holds for everything read so far, which it returns.
    fn read_until(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&[u8]) -> bool,
    ) -> Result<Vec<u8>, MonitorError> {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let left = remaining(deadline)?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(MonitorError::Io)?;
            let n = self.stream.read(&mut chunk).map_err(io_error)?;
            if n == 0 {
                return Err(MonitorError::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
            if done(&buf) {
                return Ok(buf);
            }
        }
    }
}

fn remaining(deadline: Instant) -> Result<std::time::Duration, MonitorError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(MonitorError::TimedOut);
    }
    Ok(left)
}

fn io_error(e: io::Error) -> MonitorError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => MonitorError::TimedOut,
        _ => MonitorError::Io(e),
    }
}

/// What starts the answer to a data-port read.
fn answer_prefix() -> String {
    format!("portb[{DATA_PORT:#06x}] = ")
}

/// Counts complete answers to port reads in a growing buffer, resuming
/// where the last scan stopped.
#[derive(Debug, Default)]
struct PortReads {
    count: usize,
    scanned: usize,
}

impl PortReads {
    fn scan(&mut self, buf: &[u8]) {
        let prefix = answer_prefix();
        let prefix = prefix.as_bytes();
        while let Some(at) = find(&buf[self.scanned..], prefix) {
            let value = self.scanned + at + prefix.len();
            // Complete once the line ends.
            let Some(end) = buf[value..].iter().position(|&b| b == b'\n') else {
                return;
            };
            self.count += 1;
            self.scanned = value + end;
        }
    }
}

/// The bytes that answers to data-port reads in `text` carry, in order.
fn port_reads(text: &[u8]) -> Result<Vec<u8>, MonitorError> {
    let prefix = answer_prefix();
    let prefix = prefix.as_bytes();
    let mut values = Vec::new();
    let mut rest = text;
    while let Some(at) = find(rest, prefix) {
        rest = &rest[at + prefix.len()..];
        let end = rest
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(rest.len());
        let token = String::from_utf8_lossy(&rest[..end]);
        let digits = token.strip_prefix("0x").unwrap_or(&token);
        let value = u8::from_str_radix(digits, 16)
            .map_err(|_| MonitorError::Unexpected(token.clone().into_owned()))?;
        values.push(value);
        rest = &rest[end..];
    }
    Ok(values)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What QEMU 10.0.2 sent for two reads: the echo, each answer, prompts.
    const TWO_READS: &[u8] = b"i\x1b[K\x1b[Di \x1b[K\x1b[D\x1b[Di /b 0x511\x1b[K\r\n\
        portb[0x0511] = 0x51\r\n(qemu) i /b 0x511\x1b[K\r\nportb[0x0511] = 0x00\r\n(qemu) ";

    #[test]
    fn answers_are_read_in_order_past_the_echo() {
        assert_eq!(port_reads(TWO_READS).unwrap(), [0x51, 0x00]);
        // Some QEMU versions print a zero as "00", without 0x.
        assert_eq!(port_reads(b"portb[0x0511] = 00\r\n").unwrap(), [0]);
    }

    #[test]
    fn a_garbled_answer_is_an_error() {
        assert!(matches!(
            port_reads(b"portb[0x0511] = 0xzz\r\n"),
            Err(MonitorError::Unexpected(v)) if v == "0xzz"
        ));
    }

    #[test]
    fn answers_are_counted_only_once_complete() {
        let mut counted = PortReads::default();
        let cut = TWO_READS.len() - 20;
        counted.scan(&TWO_READS[..cut]);
        assert_eq!(counted.count, 1, "the second line has not ended");
        counted.scan(TWO_READS);
        assert_eq!(counted.count, 2);
        counted.scan(TWO_READS);
        assert_eq!(counted.count, 2, "rescanning counts nothing twice");
    }

    #[test]
    fn commands_name_the_fw_cfg_ports() {
        assert_eq!(answer_prefix(), "portb[0x0511] = ");
        assert_eq!(
            format!("o /h {SELECTOR_PORT:#x} {:#x}", 0x19),
            "o /h 0x510 0x19"
        );
    }

    #[test]
    fn a_fake_monitor_is_read_in_batches() {
        // A thread plays QEMU: a prompt, then one answer per read line.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mon.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(b"QEMU monitor\r\n(qemu) ").unwrap();
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut next = 0u8;
            let mut line = String::new();
            while std::io::BufRead::read_line(&mut reader, &mut line).unwrap() > 0 {
                let answer = if line.starts_with("i /b 0x511") {
                    next = next.wrapping_add(1);
                    format!("{}portb[0x0511] = {next:#04x}\r\n(qemu) ", line.trim_end())
                } else {
                    format!("{}\r\n(qemu) ", line.trim_end())
                };
                conn.write_all(answer.as_bytes()).unwrap();
                line.clear();
            }
        });
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        let mut hmp = Hmp::connect(&path, deadline).unwrap();
        hmp.fw_cfg_select(0x19, deadline).unwrap();
        let data = hmp.fw_cfg_read(READ_BATCH + 3, deadline).unwrap();
        assert_eq!(data.len(), READ_BATCH + 3);
        assert_eq!(data[..3], [1, 2, 3]);
        assert_eq!(
            data[READ_BATCH + 2],
            u8::try_from((READ_BATCH + 3) % 256).unwrap()
        );
        drop(hmp);
        server.join().unwrap();
    }
}
