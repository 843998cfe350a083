//! Leases that keep themselves alive: what ties ephemeral values and locks
//! to the life of the replica holding them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::Inner;
use crate::error::KvError;

/// Shortest refresh period, so a 1-second lease is not refreshed in a
/// busy loop.
const MIN_REFRESH: Duration = Duration::from_millis(100);
/// Pause before reopening a broken keep-alive stream.
const REOPEN_PAUSE: Duration = Duration::from_millis(100);

/// An etcd lease, refreshed by a background task (every third of its TTL)
/// until it is dropped or revoked. Values attached to it are deleted when
/// it ends: on [`revoke`](Self::revoke), on drop, or one TTL after its
/// holder stops refreshing it (a crashed replica).
///
/// When etcd cannot be reached for a whole TTL the lease is taken as lost
/// ([`is_alive`](Self::is_alive) turns false and [`lost`](Self::lost)
/// resolves): the cluster may have expired it, and the task stops.
pub struct Lease {
    id: i64,
    ttl: Duration,
    inner: Arc<Inner>,
    alive: watch::Receiver<bool>,
    keeper: JoinHandle<()>,
    revoke_on_drop: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("id", &format_args!("{:x}", self.id))
            .field("ttl", &self.ttl)
            .field("alive", &self.is_alive())
            .finish()
    }
}

impl Lease {
    pub(crate) async fn grant(inner: Arc<Inner>, ttl: Duration) -> Result<Self, KvError> {
        let requested = ttl_secs(ttl);
        let started = Instant::now();
        // A repeated grant after a lost answer leaves an orphan lease that
        // expires on its own after one TTL, holding nothing.
        let resp = inner
            .call("lease-grant", "", |mut c| async move {
                c.lease_grant(requested, None).await
            })
            .await?;
        let id = resp.id();
        let ttl = Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(1).max(1));
        let (tx, alive) = watch::channel(true);
        let keeper = tokio::spawn(keep_alive(inner.clone(), id, ttl, started + ttl, tx));
        Ok(Self {
            id,
            ttl,
            inner,
            alive,
            keeper,
            revoke_on_drop: true,
        })
    }

    /// etcd's id of the lease.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL etcd granted (at least the one asked for).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether the lease is still believed alive: false once refreshing
    /// failed for a whole TTL or etcd said it is gone.
    pub fn is_alive(&self) -> bool {
        *self.alive.borrow()
    }

    /// Resolves when the lease is lost (never while it is kept alive).
    pub async fn lost(&self) {
        let mut alive = self.alive.clone();
        // An error means the keep-alive task is gone: lost as well.
        let _ = alive.wait_for(|alive| !*alive).await;
    }

    /// Ends the lease now, deleting the values attached to it.
    pub async fn revoke(mut self) -> Result<(), KvError> {
        self.keeper.abort();
        self.revoke_on_drop = false;
        let id = self.id;
        let result = self
            .inner
            .call("lease-revoke", "", |mut c| async move {
                c.lease_revoke(id).await
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            // Already expired (or revoked by an earlier attempt): same end.
            Err(KvError::Etcd {
                source: etcd_client::Error::GRpcStatus(status),
                ..
            }) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Stops refreshing without revoking: the lease and what is attached to
    /// it end one TTL later, exactly as if this process had died.
    pub fn abandon(mut self) {
        self.keeper.abort();
        self.revoke_on_drop = false;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keeper.abort();
        if !self.revoke_on_drop {
            return;
        }
        // Revoking needs the runtime; without one the lease simply expires.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (mut client, id) = (self.inner.client.clone(), self.id);
            let limit = self.inner.attempt_timeout;
            runtime.spawn(async move {
                if let Err(e) = tokio::time::timeout(limit, client.lease_revoke(id)).await {
                    tracing::debug!(lease = id, error = %e, "revoking a dropped lease timed out");
                }
            });
        }
    }
}

/// Refreshes the lease until etcd says it is gone or it could not be
/// refreshed before `deadline` (the latest time it is known to live to).
async fn keep_alive(
    inner: Arc<Inner>,
    id: i64,
    ttl: Duration,
    mut deadline: Instant,
    alive: watch::Sender<bool>,
) {
    let period = (ttl / 3).max(MIN_REFRESH);
    // No single step may wait longer than a refresh period: a member that
    // hangs (e.g. forwarding to a leader that just died) is left for
    // another while the lease still has time.
    let step = |deadline: Instant| {
        deadline
            .saturating_duration_since(Instant::now())
            .min(period)
            .min(inner.attempt_timeout)
    };
    let mut expired = false;
    'reopen: while Instant::now() < deadline {
        let mut client = inner.client.lease_client();
        // The deadline counts from when a refresh was sent: etcd restarts
        // the TTL no earlier, so the local view never outlives etcd's.
        let sent = Instant::now();
        let (mut keeper, mut responses) =
            match tokio::time::timeout(step(deadline), client.keep_alive(id)).await {
                // keep_alive() sent one refresh and saw a positive TTL.
                Ok(Ok(pair)) => {
                    deadline = sent + ttl;
                    pair
                }
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => {
                    expired = true;
                    break;
                }
                Ok(Err(e)) => {
                    tracing::debug!(lease = id, error = %e, "cannot open lease keep-alive");
                    tokio::time::sleep(REOPEN_PAUSE.min(step(deadline))).await;
                    continue;
                }
                Err(_elapsed) => continue,
            };
        loop {
            tokio::time::sleep(period).await;
            let sent = Instant::now();
            if keeper.keep_alive().await.is_err() {
                continue 'reopen;
            }
            match tokio::time::timeout(step(deadline), responses.message()).await {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => deadline = sent + ttl,
                Ok(Ok(Some(_))) => {
                    expired = true;
                    break 'reopen;
                }
                // The member died or hangs: another one, via the balancer.
                _ => continue 'reopen,
            }
        }
    }
    tracing::warn!(
        lease = id,
        "lease lost: values and locks attached to it are gone"
    );
    alive.send_replace(false);
    if !expired {
        // Unconfirmed for a whole TTL: the holder was told the lease is
        // gone, so make it so (if etcd still has it) rather than leave a
        // lock held by no one who knows it.
        let mut client = inner.client.clone();
        let _ = tokio::time::timeout(inner.attempt_timeout, client.lease_revoke(id)).await;
    }
}

/// A TTL in etcd's whole seconds, rounded up, at least 1.
pub(crate) fn ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::ZERO), 1);
        assert_eq!(ttl_secs(Duration::from_millis(1)), 1);
        assert_eq!(ttl_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_secs(Duration::from_secs(10)), 10);
    }
}
