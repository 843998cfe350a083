//! The guest's log: a `tracing` subscriber that writes every line to the
//! console (stderr, which PID1 points at `/dev/console` → ttyS0) stamped
//! with milliseconds since PID1 started, and forwards it to the host's log
//! shipper. libcontainer logs through `tracing` too, so its lines land here.
//!
//! The level defaults to INFO; `DSTACK_LOG=debug` on the kernel command line
//! (the kernel passes unknown `key=value` arguments to init as environment)
//! raises it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dstack_proto::host::{LogEntry, LogStream};
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Target whose lines stay on the console only: the shipper's own
/// complaints must not feed the shipper.
pub const CONSOLE_ONLY_TARGET: &str = "dstack_init::console_only";

/// The service name the guest's own lines carry at the host.
pub const SERVICE_NAME: &str = "dstack-init";

/// The console logger; one per process.
#[derive(Debug)]
pub struct ConsoleLog {
    start: Instant,
    max_level: Level,
    console_ready: AtomicBool,
    early: Mutex<Vec<String>>,
    shipper: Mutex<Option<mpsc::Sender<LogEntry>>>,
    unshipped: AtomicU64,
}

static LOG: OnceLock<ConsoleLog> = OnceLock::new();

impl ConsoleLog {
    fn new(start: Instant, max_level: Level) -> Self {
        Self {
            start,
            max_level,
            console_ready: AtomicBool::new(false),
            early: Mutex::new(Vec::new()),
            shipper: Mutex::new(None),
            unshipped: AtomicU64::new(0),
        }
    }

    /// Milliseconds since PID1 started.
    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Declares stderr to be the console: lines logged before are written now.
    pub fn console_ready(&self) {
        self.console_ready.store(true, Ordering::SeqCst);
        let early = std::mem::take(&mut *self.early.lock().unwrap_or_else(|e| e.into_inner()));
        for line in early {
            write_stderr(&line);
        }
    }

    /// From now on every line is also sent to `tx` (never blocking: a full
    /// channel drops the line and counts it).
    pub fn ship_to(&self, tx: mpsc::Sender<LogEntry>) {
        *self.shipper.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    }

    /// Lines that could not be handed to the shipper.
    pub fn unshipped(&self) -> u64 {
        self.unshipped.load(Ordering::Relaxed)
    }

    fn emit(&self, level: Level, target: &str, message: &str) {
        let line = format_line(self.elapsed_ms(), level, target, message);
        if self.console_ready.load(Ordering::SeqCst) {
            write_stderr(&line);
        } else {
            self.early
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line.clone());
        }
        if target == CONSOLE_ONLY_TARGET {
            return;
        }
        let guard = self.shipper.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = guard.as_ref() {
            let entry = LogEntry {
                ts_ms: unix_ms(),
                service: SERVICE_NAME.into(),
                stream: LogStream::System,
                line: strip_stamp(&line).to_owned(),
            };
            if tx.try_send(entry).is_err() {
                self.unshipped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn write_stderr(line: &str) {
    // A console write error has nowhere to be reported.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Milliseconds since the Unix epoch, by the guest clock.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One console line: `[   1234 ms] WARN libcontainer: message\n`. The
/// level is shown only for WARN and ERROR, the target only for other crates.
pub fn format_line(ms: u64, level: Level, target: &str, message: &str) -> String {
    let mut line = format!("[{ms:>7} ms] ");
    if level == Level::WARN || level == Level::ERROR {
        let _ = write!(line, "{level} ");
    }
    if !target.starts_with("dstack_init") {
        let krate = target.split("::").next().unwrap_or(target);
        let _ = write!(line, "{krate}: ");
    }
    line.push_str(message.trim_end());
    line.push('\n');
    line
}

fn strip_stamp(line: &str) -> &str {
    let rest = line.split_once("] ").map_or(line, |(_, rest)| rest);
    rest.trim_end()
}

/// The global logger, once [`init`] ran.
pub fn get() -> Option<&'static ConsoleLog> {
    LOG.get()
}

/// Milliseconds since PID1 started (0 before [`init`]).
pub fn elapsed_ms() -> u64 {
    LOG.get().map_or(0, ConsoleLog::elapsed_ms)
}

/// Installs the logger as the global `tracing` subscriber.
pub fn init(start: Instant) -> &'static ConsoleLog {
    let level = match std::env::var("DSTACK_LOG").as_deref() {
        Ok("debug") => Level::DEBUG,
        Ok("trace") => Level::TRACE,
        Ok("warn") => Level::WARN,
        _ => Level::INFO,
    };
    let log = LOG.get_or_init(|| ConsoleLog::new(start, level));
    // Fails only if a subscriber is already set (tests): keep that one.
    let _ = tracing::subscriber::set_global_default(ConsoleSubscriber);
    log
}

/// Collects an event's message and fields into one string.
struct MessageVisitor(String);

impl Visit for MessageVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

/// The subscriber: spans are accepted and ignored, events are printed.
struct ConsoleSubscriber;

impl Subscriber for ConsoleSubscriber {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        LOG.get()
            .is_some_and(|log| metadata.level() <= &log.max_level)
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let Some(log) = LOG.get() else { return };
        let mut visitor = MessageVisitor(String::new());
        event.record(&mut visitor);
        let meta = event.metadata();
        log.emit(*meta.level(), meta.target(), &visitor.0);
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_ms_and_show_level_and_crate_only_when_useful() {
        assert_eq!(
            format_line(42, Level::INFO, "dstack_init::boot", "mounted /data"),
            "[     42 ms] mounted /data\n"
        );
        assert_eq!(
            format_line(1234567, Level::WARN, "libcontainer::process", "slow\n"),
            "[1234567 ms] WARN libcontainer: slow\n"
        );
        assert_eq!(strip_stamp("[     42 ms] WARN x: y\n"), "WARN x: y");
    }

    #[test]
    fn shipping_never_blocks_and_counts_drops() {
        let log = ConsoleLog::new(Instant::now(), Level::INFO);
        log.console_ready.store(true, Ordering::SeqCst);
        let (tx, mut rx) = mpsc::channel(1);
        log.ship_to(tx);
        log.emit(Level::INFO, "dstack_init::boot", "one");
        log.emit(Level::INFO, "dstack_init::boot", "two");
        log.emit(Level::INFO, CONSOLE_ONLY_TARGET, "not shipped");
        assert_eq!(rx.try_recv().unwrap().line, "one");
        assert!(rx.try_recv().is_err());
        assert_eq!(log.unshipped(), 1);
    }

    #[test]
    fn fields_follow_the_message() {
        let mut v = MessageVisitor(String::new());
        v.0.push_str(" pid=3");
        v.0.insert_str(0, "reaped");
        assert_eq!(v.0, "reaped pid=3");
    }
}
