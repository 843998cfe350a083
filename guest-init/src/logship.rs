//! Ships log lines (container output and dstack-init's own) to the host in
//! batches: every [`BATCH_INTERVAL`] or [`BATCH_LINES`] lines, whichever
//! comes first.
//!
//! A slow or absent host must never hold up the guest: producers hand lines
//! to a bounded channel without waiting, a collector task drains it at once
//! into a bounded ring, and a separate sender task posts from the ring. When
//! the ring is full the oldest lines go, and the count of lost lines is
//! reported on the console.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dstack_proto::host::{LogBatch, LogEntry};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::console::CONSOLE_ONLY_TARGET;
use crate::hostapi::{HostApiError, HostClient};

/// Capacity of the producers' channel.
pub const CHANNEL_CAPACITY: usize = 1024;
/// Lines kept while the host is slow; older ones are dropped.
pub const RING_CAPACITY: usize = 8192;
/// A batch is sent once this many lines wait.
pub const BATCH_LINES: usize = 64;
/// ... or once the oldest waiting line is this old.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(200);
/// Pause after a failed post before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Where batches go.
pub trait LogSink: Send + Sync + 'static {
    /// Delivers one batch.
    fn ship(&self, batch: LogBatch) -> impl Future<Output = Result<(), HostApiError>> + Send;
}

impl LogSink for HostClient {
    async fn ship(&self, batch: LogBatch) -> Result<(), HostApiError> {
        self.post_logs(&batch).await
    }
}

/// Lines waiting to be shipped; drops the oldest when full.
#[derive(Debug)]
struct Ring {
    lines: VecDeque<LogEntry>,
    capacity: usize,
    dropped: u64,
    /// Lines taken for a post that has not finished yet.
    in_flight: usize,
}

impl Ring {
    fn new(capacity: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            capacity,
            dropped: 0,
            in_flight: 0,
        }
    }

    fn push(&mut self, entry: LogEntry) {
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
            self.dropped += 1;
        }
        self.lines.push_back(entry);
    }

    fn take(&mut self, max: usize) -> Vec<LogEntry> {
        let n = self.lines.len().min(max);
        self.in_flight = n;
        self.lines.drain(..n).collect()
    }

    /// Puts a batch that failed back in front, oldest first; lines beyond
    /// capacity are dropped from the old end.
    fn requeue(&mut self, batch: Vec<LogEntry>) {
        self.in_flight = 0;
        for entry in batch.into_iter().rev() {
            if self.lines.len() == self.capacity {
                self.dropped += 1;
            } else {
                self.lines.push_front(entry);
            }
        }
    }
}

#[derive(Debug)]
struct Shared {
    ring: Mutex<Ring>,
    wake: Notify,
}

impl Shared {
    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Handle on the running shipper.
#[derive(Debug, Clone)]
pub struct LogShipper {
    shared: Arc<Shared>,
    /// A producer handle, only to see whether the channel is drained.
    tx: mpsc::Sender<LogEntry>,
}

impl LogShipper {
    /// Starts the collector and sender tasks; returns the producers' sender.
    pub fn start<S: LogSink>(sink: S) -> (Self, mpsc::Sender<LogEntry>) {
        Self::start_with(sink, RING_CAPACITY)
    }

    fn start_with<S: LogSink>(sink: S, ring_capacity: usize) -> (Self, mpsc::Sender<LogEntry>) {
        let (tx, mut rx) = mpsc::channel::<LogEntry>(CHANNEL_CAPACITY);
        let shared = Arc::new(Shared {
            ring: Mutex::new(Ring::new(ring_capacity)),
            wake: Notify::new(),
        });
        let collector = shared.clone();
        tokio::spawn(async move {
            while let Some(entry) = rx.recv().await {
                let waiting = {
                    let mut ring = collector.ring();
                    ring.push(entry);
                    ring.lines.len()
                };
                // The sender waits for a first line or a full batch.
                if waiting == 1 || waiting >= BATCH_LINES {
                    collector.wake.notify_one();
                }
            }
        });
        let sender = shared.clone();
        tokio::spawn(send_loop(sender, sink));
        (
            Self {
                shared,
                tx: tx.clone(),
            },
            tx,
        )
    }

    /// Lines dropped so far because the host was too slow.
    pub fn dropped(&self) -> u64 {
        self.shared.ring().dropped
    }

    /// Lines not yet delivered (queued, in the ring, or being posted).
    pub fn pending(&self) -> usize {
        let queued = self.tx.max_capacity() - self.tx.capacity();
        let ring = self.shared.ring();
        queued + ring.lines.len() + ring.in_flight
    }

    /// Asks for everything waiting to go now and waits until it has, or
    /// until `budget` is spent (used just before power-off).
    pub async fn flush(&self, budget: Duration) {
        let deadline = Instant::now() + budget;
        while self.pending() > 0 && Instant::now() < deadline {
            self.shared.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn send_loop<S: LogSink>(shared: Arc<Shared>, sink: S) {
    let mut reported_dropped = 0;
    loop {
        if shared.ring().lines.is_empty() {
            shared.wake.notified().await;
        }
        // Give a batch time to fill, unless it already has (or a flush asks).
        let deadline = Instant::now() + BATCH_INTERVAL;
        while shared.ring().lines.len() < BATCH_LINES {
            if tokio::time::timeout_at(deadline, shared.wake.notified())
                .await
                .is_err()
            {
                break;
            }
        }
        let batch = shared.ring().take(BATCH_LINES);
        if batch.is_empty() {
            continue;
        }
        let retry = batch.clone();
        match sink.ship(LogBatch { entries: batch }).await {
            Ok(()) => shared.ring().in_flight = 0,
            Err(e) => {
                tracing::warn!(target: CONSOLE_ONLY_TARGET, "shipping logs to the host failed: {e}");
                shared.ring().requeue(retry);
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
        let dropped = shared.ring().dropped;
        if dropped > reported_dropped {
            tracing::warn!(
                target: CONSOLE_ONLY_TARGET,
                "log shipper dropped {} lines (host too slow), {dropped} in all",
                dropped - reported_dropped
            );
            reported_dropped = dropped;
        }
    }
}

#[cfg(test)]
mod tests {
    use dstack_proto::host::LogStream;

    use super::*;

    fn line(i: usize) -> LogEntry {
        LogEntry {
            ts_ms: i as u64,
            service: "web".into(),
            stream: LogStream::Stdout,
            line: format!("line {i}"),
        }
    }

    #[derive(Clone, Default)]
    struct Recorder {
        batches: Arc<Mutex<Vec<Vec<String>>>>,
        fail_first: Arc<Mutex<usize>>,
        delay: Duration,
    }

    impl LogSink for Recorder {
        async fn ship(&self, batch: LogBatch) -> Result<(), HostApiError> {
            tokio::time::sleep(self.delay).await;
            let mut fail = self.fail_first.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                return Err(HostApiError::Timeout {
                    path: "/v1/logs".into(),
                    secs: 0,
                });
            }
            let lines = batch.entries.into_iter().map(|e| e.line).collect();
            self.batches.lock().unwrap().push(lines);
            Ok(())
        }
    }

    #[test]
    fn the_ring_drops_oldest_and_requeues_in_order() {
        let mut ring = Ring::new(3);
        for i in 0..5 {
            ring.push(line(i));
        }
        assert_eq!(ring.dropped, 2);
        let batch = ring.take(2);
        assert_eq!(batch[0].line, "line 2");
        ring.push(line(5));
        ring.requeue(batch);
        let left: Vec<_> = ring.take(10).into_iter().map(|e| e.line).collect();
        // Full: the oldest of the failed batch are the ones that go.
        assert_eq!(left, ["line 3", "line 4", "line 5"]);
        assert_eq!(ring.dropped, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn batches_by_count_and_by_time() {
        let sink = Recorder::default();
        let (shipper, tx) = LogShipper::start(sink.clone());
        for i in 0..70 {
            tx.send(line(i)).await.unwrap();
        }
        shipper.flush(Duration::from_secs(5)).await;
        let batches = sink.batches.lock().unwrap().clone();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].len(), 64);
        assert_eq!(
            batches[1],
            [
                "line 64", "line 65", "line 66", "line 67", "line 68", "line 69"
            ]
        );

        tx.send(line(100)).await.unwrap();
        tokio::time::sleep(BATCH_INTERVAL * 2).await;
        assert_eq!(sink.batches.lock().unwrap().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_post_is_retried_in_order() {
        let sink = Recorder {
            fail_first: Arc::new(Mutex::new(1)),
            ..Default::default()
        };
        let (shipper, tx) = LogShipper::start(sink.clone());
        tx.send(line(1)).await.unwrap();
        tx.send(line(2)).await.unwrap();
        shipper.flush(Duration::from_secs(10)).await;
        let batches = sink.batches.lock().unwrap().clone();
        assert_eq!(batches, [vec!["line 1".to_owned(), "line 2".to_owned()]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_host_never_blocks_producers() {
        let sink = Recorder {
            delay: Duration::from_secs(60),
            ..Default::default()
        };
        let (shipper, tx) = LogShipper::start_with(sink, 100);
        let started = Instant::now();
        for i in 0..5000 {
            // try_send as the console logger does; the collector keeps the
            // channel drained, so yielding now and then is enough.
            if tx.try_send(line(i)).is_err() {
                tokio::task::yield_now().await;
                tx.send(line(i)).await.unwrap();
            }
        }
        tokio::task::yield_now().await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(shipper.dropped() > 4000, "{}", shipper.dropped());
        assert!(shipper.shared.ring().lines.len() <= 100);
    }
}
