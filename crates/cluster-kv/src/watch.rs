//! Watches that outlive the member they started on: each resumes from the
//! revision after the last one it delivered, on whichever member answers.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions, WatchResponse, WatchStream, Watcher};
use serde::de::DeserializeOwned;

use crate::client::{ClusterKv, Entry, Inner};
use crate::error::KvError;

/// Largest watch response decoded: a batch of events can carry many
/// sealed values.
const MAX_DECODE: usize = 128 << 20;
/// Pause between two failed attempts to reopen a watch.
const REOPEN_PAUSE: Duration = Duration::from_millis(200);

/// A change under a watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<T> {
    /// A value was written.
    Put(Entry<T>),
    /// The key (without the namespace) was deleted, or its lease ended.
    Delete(String),
    /// Changes were lost (compacted away while this watch was behind): this
    /// is the whole current content of the prefix. Replace, don't merge.
    Resync(Vec<Entry<T>>),
}

/// The changes under a prefix, in revision order, each exactly once.
///
/// When the member serving it fails, the watch reopens on another one from
/// the revision after the last delivered; if that revision was compacted it
/// delivers an [`Event::Resync`] instead. It never ends: [`next`](Self::next)
/// keeps retrying while the cluster is unreachable (wrap it in a timeout to
/// notice).
pub struct Watch<T> {
    inner: Arc<Inner>,
    prefix: String,
    etcd_prefix: Vec<u8>,
    /// The first revision not yet delivered (or queued).
    next_revision: i64,
    stream: Option<(Watcher, WatchStream)>,
    queue: VecDeque<etcd_client::Event>,
    resync: bool,
    _values: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Watch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("prefix", &self.prefix)
            .field("next_revision", &self.next_revision)
            .field("connected", &self.stream.is_some())
            .finish_non_exhaustive()
    }
}

impl ClusterKv {
    /// Watches the keys starting with `prefix` from now on.
    pub async fn watch<T: DeserializeOwned>(&self, prefix: &str) -> Result<Watch<T>, KvError> {
        let etcd_prefix = format!("{}{prefix}", self.inner.data_prefix).into_bytes();
        let probe = etcd_prefix.clone();
        let resp = self
            .inner
            .call("watch", prefix, |mut c| {
                let probe = probe.clone();
                let options = GetOptions::new().with_count_only().with_limit(1);
                async move { c.get(probe, Some(options)).await }
            })
            .await?;
        let now = resp.header().map_or(0, |h| h.revision());
        self.watch_from(prefix, now + 1).await
    }

    /// Watches the keys starting with `prefix` from `revision` on (e.g. a
    /// [`Snapshot::revision`](crate::Snapshot::revision) plus one), so that
    /// nothing after a snapshot is missed.
    pub async fn watch_from<T: DeserializeOwned>(
        &self,
        prefix: &str,
        revision: i64,
    ) -> Result<Watch<T>, KvError> {
        let mut watch = Watch {
            inner: self.inner.clone(),
            prefix: prefix.to_owned(),
            etcd_prefix: format!("{}{prefix}", self.inner.data_prefix).into_bytes(),
            next_revision: revision.max(1),
            stream: None,
            queue: VecDeque::new(),
            resync: false,
            _values: PhantomData,
        };
        watch.stream = Some(watch.open().await?);
        Ok(watch)
    }
}

impl<T: DeserializeOwned> Watch<T> {
    /// The next change. A value that fails to open is returned as an error
    /// naming its key ([`KvError::Tampered`]); the watch goes on after it.
    /// Cancel-safe: dropping the future loses no event.
    pub async fn next(&mut self) -> Result<Event<T>, KvError> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return self.decode(&event);
            }
            if self.resync {
                // On error the flag stays: the next call tries again.
                let snapshot = self.inner.snapshot::<T>(&self.prefix).await?;
                self.resync = false;
                self.next_revision = snapshot.revision + 1;
                self.stream = None;
                return Ok(Event::Resync(snapshot.entries));
            }
            let Some((_, stream)) = &mut self.stream else {
                match self.open().await {
                    Ok(stream) => self.stream = Some(stream),
                    Err(e) => {
                        tracing::warn!(prefix = self.prefix, error = %e, "cannot reopen watch");
                        tokio::time::sleep(REOPEN_PAUSE).await;
                    }
                }
                continue;
            };
            match stream.message().await {
                Ok(Some(resp)) => self.absorb(resp),
                Ok(None) => {
                    tracing::debug!(prefix = self.prefix, "watch stream ended, reopening");
                    self.stream = None;
                }
                Err(e) => {
                    tracing::debug!(prefix = self.prefix, error = %e, "watch stream failed, reopening");
                    self.stream = None;
                }
            }
        }
    }

    /// The first revision this watch has not delivered yet.
    pub fn next_revision(&self) -> i64 {
        self.next_revision
    }

    async fn open(&self) -> Result<(Watcher, WatchStream), KvError> {
        let (key, start) = (self.etcd_prefix.clone(), self.next_revision);
        self.inner
            .call("watch", &self.prefix, |c| {
                let key = key.clone();
                let options = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(start)
                    .with_progress_notify();
                let mut watch = c.watch_client().max_decoding_message_size(MAX_DECODE);
                async move { watch.watch(key, Some(options)).await }
            })
            .await
    }

    fn absorb(&mut self, resp: WatchResponse) {
        if resp.compact_revision() > 0 {
            tracing::warn!(
                prefix = self.prefix,
                from = self.next_revision,
                compacted = resp.compact_revision(),
                "watch fell behind a compaction, resyncing"
            );
            self.resync = true;
            self.stream = None;
            return;
        }
        if resp.canceled() {
            tracing::debug!(
                prefix = self.prefix,
                reason = resp.cancel_reason(),
                "watch canceled, reopening"
            );
            self.stream = None;
            return;
        }
        if resp.events().is_empty() {
            // A progress notification: every change up to its revision has
            // been delivered. (The creation answer carries the current
            // revision, not a promise about older ones.)
            if !resp.created() {
                let revision = resp.header().map_or(0, |h| h.revision());
                self.next_revision = self.next_revision.max(revision + 1);
            }
            return;
        }
        let mut batch_revision = self.next_revision;
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            // Never twice, even if a reopened watch repeats some.
            if kv.mod_revision() < self.next_revision {
                continue;
            }
            batch_revision = batch_revision.max(kv.mod_revision() + 1);
            self.queue.push_back(event.clone());
        }
        self.next_revision = batch_revision;
    }

    fn decode(&self, event: &etcd_client::Event) -> Result<Event<T>, KvError> {
        let kv = event.kv().expect("queued events have a key-value");
        match event.event_type() {
            EventType::Put => Ok(Event::Put(self.inner.open_entry(kv)?)),
            EventType::Delete => Ok(Event::Delete(self.inner.user_key(kv.key())?)),
        }
    }
}
