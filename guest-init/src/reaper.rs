//! PID1's zombie reaper.
//!
//! Every orphan in the guest becomes PID1's child, and only PID1 can reap
//! it. The reaper waits for SIGCHLD (and sweeps once a second in case a
//! signal was coalesced), then reaps with `waitpid(-1, WNOHANG)` until
//! nothing is left, handing each exit to the container side first.
//!
//! `waitpid(-1)` would steal the exit of a child that other code is waiting
//! for by pid (mke2fs, or a process libcontainer forks). Such code holds
//! [`hold_off`] / [`hold_off_blocking`] from before it spawns until after it
//! has waited; the reaper takes the same lock exclusively, so it never runs
//! in between. The container side may add its own rule through
//! [`ChildOwner::hold_reaping`].

use std::future::Future;
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{RwLock, RwLockReadGuard};

use crate::sys::Syscall;

/// The lock that keeps the reaper off while someone waits for their own child.
static HOLD_OFF: RwLock<()> = RwLock::const_new(());

/// Keeps the reaper from reaping until the guard is dropped (async side).
pub async fn hold_off() -> RwLockReadGuard<'static, ()> {
    HOLD_OFF.read().await
}

/// Keeps the reaper from reaping until the guard is dropped (from a
/// blocking thread; never call it on a runtime worker).
pub fn hold_off_blocking() -> RwLockReadGuard<'static, ()> {
    HOLD_OFF.blocking_read()
}

/// A guard the owner holds while the reaper reaps.
pub type ReapGuard = Box<dyn Send + 'static>;

/// Something that owns some of PID1's children (the container side).
pub trait ChildOwner: Send + Sync {
    /// A reaped child; `true` if it was one of the owner's.
    fn child_exited(&self, pid: i32, status: ExitStatus) -> bool;

    /// Waits until reaping any child is safe for the owner; the returned
    /// guard is held for the whole reaping pass.
    fn hold_reaping(&self) -> Pin<Box<dyn Future<Output = ReapGuard> + Send + '_>> {
        Box::pin(async { Box::new(()) as ReapGuard })
    }
}

/// The reaper; its owner is registered once the container side exists.
#[derive(Default)]
pub struct Reaper {
    owner: OnceLock<Arc<dyn ChildOwner>>,
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper")
            .field("owner", &self.owner.get().is_some())
            .finish()
    }
}

impl Reaper {
    /// Hands every later exit to `owner` first.
    pub fn set_owner(&self, owner: Arc<dyn ChildOwner>) {
        let _ = self.owner.set(owner);
    }

    /// Reaps every exited child now; returns how many.
    pub async fn reap_pass(&self, sys: &dyn Syscall) -> usize {
        let owner = self.owner.get().cloned();
        let _owner_guard = match &owner {
            Some(o) => Some(o.hold_reaping().await),
            None => None,
        };
        let _exclusive = HOLD_OFF.write().await;
        let mut reaped = 0;
        while let Some((pid, status)) = sys.reap_any() {
            reaped += 1;
            let claimed = owner.as_ref().is_some_and(|o| o.child_exited(pid, status));
            if !claimed {
                tracing::debug!("reaped orphan pid {pid} ({status})");
            }
        }
        reaped
    }

    /// Reaps on every SIGCHLD and once a second, forever.
    pub async fn run(self: Arc<Self>, sys: Arc<dyn Syscall>) {
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot watch SIGCHLD ({e}): reaping once a second");
                None
            }
        };
        loop {
            match sigchld.as_mut() {
                Some(s) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), s.recv()).await;
                }
                None => tokio::time::sleep(Duration::from_secs(1)).await,
            }
            self.reap_pass(&*sys).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::sys::fake::RecordingSyscall;

    #[derive(Default)]
    struct Owner(Mutex<Vec<i32>>);

    impl ChildOwner for Owner {
        fn child_exited(&self, pid: i32, _status: ExitStatus) -> bool {
            self.0.lock().unwrap().push(pid);
            pid == 10
        }
    }

    #[tokio::test]
    async fn hands_every_exit_to_the_owner() {
        let sys = RecordingSyscall::default();
        let reaper = Reaper::default();
        sys.push_exit(5, 0);
        assert_eq!(
            reaper.reap_pass(&sys).await,
            1,
            "no owner yet: still reaped"
        );
        let owner = Arc::new(Owner::default());
        reaper.set_owner(owner.clone());
        sys.push_exit(10, 1);
        sys.push_exit(11, 0);
        assert_eq!(reaper.reap_pass(&sys).await, 2);
        assert_eq!(*owner.0.lock().unwrap(), [10, 11]);
    }

    #[tokio::test]
    async fn waits_while_someone_holds_it_off() {
        let sys = Arc::new(RecordingSyscall::default());
        sys.push_exit(7, 0);
        let reaper = Arc::new(Reaper::default());
        let guard = hold_off().await;
        let (r, s) = (reaper.clone(), sys.clone());
        let pass = tokio::spawn(async move { r.reap_pass(&*s).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!pass.is_finished(), "must wait for the hold-off guard");
        drop(guard);
        assert_eq!(pass.await.unwrap(), 1);
    }
}
