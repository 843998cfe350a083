//! Locks exclusive across replicas: a lock record created only if absent,
//! attached to its holder's lease, so it is released on unlock, on drop, or
//! one TTL after its holder dies.

use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use serde::Serialize;
use tokio::time::Instant;

use crate::client::{ClusterKv, Inner};
use crate::error::KvError;
use crate::lease::Lease;

/// Longest single wait for a holder's release before checking again, in
/// case a watch on a member that died silently never reports it.
const RECHECK: Duration = Duration::from_secs(2);
/// Pause after a watch could not even be opened.
const WATCH_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What a lock record holds (sealed like any value): the holder's lease,
/// for an operator reading etcd with the seal key.
#[derive(Serialize)]
struct LockRecord {
    lease: i64,
}

/// A held lock; released when dropped (or with [`unlock`](Self::unlock)),
/// and by etcd one TTL after the holder stops refreshing its lease.
#[derive(Debug)]
pub struct LockGuard {
    name: String,
    revision: i64,
    lease: Lease,
}

impl LockGuard {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The revision that created the lock record: it grows with every new
    /// holder, so it can serve as a fencing token.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Whether the lock is still believed held: false once its lease is
    /// lost (etcd unreachable for a TTL), after which another replica may
    /// hold it.
    pub fn is_held(&self) -> bool {
        self.lease.is_alive()
    }

    /// Resolves when the lock is lost; stop the guarded work then.
    pub async fn lost(&self) {
        self.lease.lost().await;
    }

    /// Releases the lock now.
    pub async fn unlock(self) -> Result<(), KvError> {
        self.lease.revoke().await
    }

    /// Stops refreshing without releasing: the lock frees itself one TTL
    /// later, exactly as when its holder dies.
    pub fn abandon(self) {
        self.lease.abandon();
    }
}

/// How long to wait for a held lock.
#[derive(Clone, Copy)]
enum Wait {
    Forever,
    Until(Instant),
}

impl ClusterKv {
    /// Takes the lock `name`, exclusive across every client of this
    /// namespace, waiting for its holder to release it for at most `wait`
    /// (`None`: as long as it takes). The lock lives on a lease of `ttl`:
    /// if this process dies, another replica can take it one TTL later.
    pub async fn lock(
        &self,
        name: &str,
        ttl: Duration,
        wait: Option<Duration>,
    ) -> Result<LockGuard, KvError> {
        let started = Instant::now();
        let until = wait.map_or(Wait::Forever, |wait| Wait::Until(started + wait));
        self.acquire(name, ttl, until)
            .await?
            .ok_or_else(|| KvError::LockTimeout {
                name: name.to_owned(),
                waited: started.elapsed(),
            })
    }

    /// Takes the lock `name` if no one holds it; `None` if someone does.
    pub async fn try_lock(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>, KvError> {
        self.acquire(name, ttl, Wait::Until(Instant::now())).await
    }

    async fn acquire(
        &self,
        name: &str,
        ttl: Duration,
        wait: Wait,
    ) -> Result<Option<LockGuard>, KvError> {
        if name.is_empty() {
            return Err(KvError::Config {
                reason: "empty lock name".into(),
            });
        }
        let lease = self.grant_lease(ttl).await?;
        let etcd_key = self.lock_key(name);
        let sealed =
            self.inner
                .seal(name, etcd_key.as_bytes(), &LockRecord { lease: lease.id() })?;
        loop {
            let outcome = self
                .inner
                .create_raw(
                    name,
                    etcd_key.clone().into_bytes(),
                    sealed.clone(),
                    Some(lease.id()),
                )
                .await?;
            if outcome.created {
                return Ok(Some(LockGuard {
                    name: name.to_owned(),
                    revision: outcome.revision,
                    lease,
                }));
            }
            let limit = match wait {
                Wait::Forever => RECHECK,
                Wait::Until(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        // Dropping the lease revokes it.
                        return Ok(None);
                    }
                    left.min(RECHECK)
                }
            };
            wait_released(
                &self.inner,
                etcd_key.as_bytes(),
                outcome.header_revision + 1,
                limit,
            )
            .await;
        }
    }
}

/// Waits (at most `limit`) until the lock record at `key` is deleted at or
/// after `from_revision`; returns early on any doubt, to check again.
async fn wait_released(inner: &Inner, key: &[u8], from_revision: i64, limit: Duration) {
    let wait = async {
        let mut client = inner.client.watch_client();
        let options = WatchOptions::new().with_start_revision(from_revision);
        // `_watcher` keeps the watch open: dropping it ends the stream.
        let Ok((_watcher, mut stream)) = client.watch(key.to_vec(), Some(options)).await else {
            tokio::time::sleep(WATCH_RETRY_PAUSE).await;
            return;
        };
        while let Ok(Some(resp)) = stream.message().await {
            let released = resp
                .events()
                .iter()
                .any(|event| event.event_type() == EventType::Delete);
            if released || resp.canceled() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(limit, wait).await;
}
