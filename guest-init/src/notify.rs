//! Boot and shutdown events for the host (`POST /v1/notify`), delivered in
//! order by one task so the boot never waits on the host: callers queue an
//! event and go on; only power-off waits, briefly, for the queue to drain.

use std::future::Future;
use std::time::Duration;

use dstack_proto::host::Notification;
use tokio::sync::{mpsc, oneshot};

use crate::console::CONSOLE_ONLY_TARGET;
use crate::hostapi::{HostApiError, HostClient};

/// Events queued beyond this are dropped (progress strings are lossy by
/// nature; phase changes are far fewer).
const QUEUE: usize = 512;

/// Where notifications go.
pub trait NotifySink: Send + Sync + 'static {
    /// Delivers one notification.
    fn notify(&self, n: Notification) -> impl Future<Output = Result<(), HostApiError>> + Send;
}

impl NotifySink for HostClient {
    async fn notify(&self, n: Notification) -> Result<(), HostApiError> {
        HostClient::notify(self, &n).await
    }
}

/// Attempts per notification: a host restarting or busy for a moment
/// should not lose a phase change.
const ATTEMPTS: u32 = 3;
const RETRY_AFTER: Duration = Duration::from_millis(200);

async fn deliver<S: NotifySink>(sink: &S, n: Notification) {
    for attempt in 1..=ATTEMPTS {
        match sink.notify(n.clone()).await {
            Ok(()) => return,
            // The host answered: trying again would get the same answer.
            Err(e @ HostApiError::Status { .. }) => {
                tracing::warn!(target: CONSOLE_ONLY_TARGET, "the host refused {}: {e}", n.event);
                return;
            }
            Err(e) if attempt == ATTEMPTS => {
                tracing::warn!(
                    target: CONSOLE_ONLY_TARGET,
                    "notifying the host of {} failed: {e}",
                    n.event
                );
            }
            Err(_) => tokio::time::sleep(RETRY_AFTER).await,
        }
    }
}

#[derive(Debug)]
enum Cmd {
    Send(Notification),
    Flush(oneshot::Sender<()>),
}

/// Queues notifications for the host.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: Option<mpsc::Sender<Cmd>>,
}

impl Notifier {
    /// A notifier with no host yet: events are only logged.
    pub fn detached() -> Self {
        Self { tx: None }
    }

    /// Starts the delivery task.
    pub fn start<S: NotifySink>(sink: S) -> Self {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    Cmd::Send(n) => deliver(&sink, n).await,
                    Cmd::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Self { tx: Some(tx) }
    }

    /// Queues `event` with `payload`.
    pub fn send(&self, event: &str, payload: impl Into<String>) {
        let n = Notification {
            event: event.into(),
            payload: payload.into(),
        };
        if let Some(tx) = &self.tx
            && tx.try_send(Cmd::Send(n)).is_err()
        {
            tracing::warn!(target: CONSOLE_ONLY_TARGET, "notification queue full: {event} dropped");
        }
    }

    /// Waits until everything queued so far was delivered (or failed), at
    /// most `budget`.
    pub async fn flush(&self, budget: Duration) {
        let Some(tx) = &self.tx else { return };
        let (done, wait) = oneshot::channel();
        let queued = async {
            if tx.send(Cmd::Flush(done)).await.is_ok() {
                let _ = wait.await;
            }
        };
        let _ = tokio::time::timeout(budget, queued).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl NotifySink for Recorder {
        async fn notify(&self, n: Notification) -> Result<(), HostApiError> {
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.0
                .lock()
                .unwrap()
                .push(format!("{}={}", n.event, n.payload));
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn delivers_in_order_and_flush_waits_for_delivery() {
        let sink = Recorder::default();
        let notifier = Notifier::start(sink.clone());
        notifier.send("boot.progress", "pulling images");
        notifier.send("boot.progress", "running");
        assert!(sink.0.lock().unwrap().is_empty(), "send must not wait");
        notifier.flush(Duration::from_secs(1)).await;
        assert_eq!(
            *sink.0.lock().unwrap(),
            ["boot.progress=pulling images", "boot.progress=running"]
        );
    }

    #[derive(Clone, Default)]
    struct Flaky(Arc<Mutex<u32>>);

    impl NotifySink for Flaky {
        async fn notify(&self, _n: Notification) -> Result<(), HostApiError> {
            let mut calls = self.0.lock().unwrap();
            *calls += 1;
            if *calls < ATTEMPTS {
                Err(HostApiError::Timeout {
                    path: "/v1/notify".into(),
                    secs: 1,
                })
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_notification_is_retried() {
        let sink = Flaky::default();
        let notifier = Notifier::start(sink.clone());
        notifier.send("boot.progress", "running");
        notifier.flush(Duration::from_secs(5)).await;
        assert_eq!(*sink.0.lock().unwrap(), ATTEMPTS);
    }

    #[tokio::test]
    async fn a_detached_notifier_does_nothing() {
        let notifier = Notifier::detached();
        notifier.send("boot.progress", "x");
        notifier.flush(Duration::from_millis(1)).await;
    }
}
