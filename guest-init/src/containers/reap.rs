//! Who waits for which process. PID1's reaper reaps every child; container
//! inits and exec'd health checks are children of PID1 (the container
//! helper runs libcontainer as a sibling: CLONE_PARENT), so their exit
//! statuses reach us only through [`Reaping::exited`]. A pid is registered
//! while the spawn still holds the read side of the reap lock, and the
//! reaper calls `waitpid(-1)` only while holding the write side, so no exit
//! can be reaped before its waiter exists (and PID1's own `waitpid` on the
//! helper, which runs inside the same window, never finds it already reaped).

use std::collections::HashMap;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock, oneshot};

/// Held by PID1's reaper around `waitpid(-1, WNOHANG)` calls; see
/// [`crate::containers::ServiceManager::lock_for_reaping`].
#[derive(Debug)]
pub struct ReapGuard(#[allow(dead_code)] OwnedRwLockWriteGuard<()>);

/// Held while a container or exec process is being created and registered.
pub(crate) type SpawnGuard = OwnedRwLockReadGuard<()>;

/// Pids we wait for, and the lock that orders spawning against reaping.
#[derive(Debug, Default)]
pub(crate) struct Reaping {
    lock: Arc<RwLock<()>>,
    waiters: Mutex<HashMap<i32, oneshot::Sender<ExitStatus>>>,
}

impl Reaping {
    /// Waits until no reaper is running and blocks it until the guard drops.
    pub(crate) async fn spawn_guard(&self) -> SpawnGuard {
        self.lock.clone().read_owned().await
    }

    /// Waits until no spawn is in flight and blocks new ones until the guard drops.
    pub(crate) async fn reap_guard(&self) -> ReapGuard {
        ReapGuard(self.lock.clone().write_owned().await)
    }

    /// Registers `pid`; call while holding a [`SpawnGuard`].
    pub(crate) fn register(&self, pid: i32) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.insert(pid, tx);
        }
        rx
    }

    /// Delivers a reaped pid's status; false when it is not ours.
    pub(crate) fn exited(&self, pid: i32, status: ExitStatus) -> bool {
        let waiter = self.waiters.lock().ok().and_then(|mut w| w.remove(&pid));
        match waiter {
            Some(tx) => {
                let _ = tx.send(status); // the waiter may have given up (stop_all)
                true
            }
            None => false,
        }
    }
}

/// The exit code docker reports: the code, or 128 + the signal number.
pub(crate) fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[tokio::test]
    async fn delivers_only_registered_pids_and_orders_spawn_before_reap() {
        let reaping = Arc::new(Reaping::default());
        let spawn = reaping.spawn_guard().await;
        let reaper = {
            let reaping = reaping.clone();
            tokio::spawn(async move {
                let _guard = reaping.reap_guard().await;
                reaping.exited(42, ExitStatus::from_raw(3 << 8))
            })
        };
        tokio::task::yield_now().await;
        assert!(
            !reaper.is_finished(),
            "reaper ran while a spawn was in flight"
        );
        let rx = reaping.register(42);
        drop(spawn);
        assert!(reaper.await.unwrap());
        assert_eq!(exit_code(rx.await.unwrap()), 3);
        assert!(!reaping.exited(42, ExitStatus::from_raw(0)));
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }
}
