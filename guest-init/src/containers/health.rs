//! Healthchecks: the test command runs inside the container (libcontainer's
//! tenant exec: same namespaces, cgroup, user) every interval; `retries`
//! consecutive failures after `start_period` make the service unhealthy, one
//! success makes it healthy again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dstack_compose::Healthcheck;
use dstack_proto::guest::ContainerState;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{Inner, runner};

/// Counts consecutive failures; pure so the rules are testable.
#[derive(Debug, Default)]
pub(crate) struct HealthTracker {
    failures: u32,
}

impl HealthTracker {
    /// Records one check; returns the new health state when it changes.
    pub(crate) fn record(
        &mut self,
        ok: bool,
        in_start_period: bool,
        retries: u32,
    ) -> Option<ContainerState> {
        if ok {
            self.failures = 0;
            return Some(ContainerState::Healthy);
        }
        if in_start_period {
            return None; // failures while starting up do not count
        }
        self.failures += 1;
        (self.failures >= retries.max(1)).then_some(ContainerState::Unhealthy)
    }
}

/// Runs one check; false on a non-zero exit, a timeout or a failed exec.
/// `timeout` covers the whole check: the helper that execs it included.
async fn check_once(inner: &Arc<Inner>, name: &str, test: &[String], timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let guard = inner.reaping.spawn_guard().await;
    let (helper, root, id, args) = (
        inner.helper.clone(),
        inner.state_root.clone(),
        name.to_string(),
        test.to_vec(),
    );
    let exec = move || runner::exec(&helper, &root, &id, &args, timeout);
    let pid = match tokio::task::spawn_blocking(exec).await {
        Ok(Ok(pid)) => pid,
        _ => return false,
    };
    let mut exit = inner.reaping.register(pid);
    drop(guard);
    match tokio::time::timeout_at(deadline, &mut exit).await {
        Ok(Ok(status)) => status.success(),
        Ok(Err(_)) => false,
        Err(_) => {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            // Its status still arrives through the reaper; don't leave it registered.
            let _ = tokio::time::timeout(Duration::from_secs(5), exit).await;
            false
        }
    }
}

/// Checks service `name` until aborted (when its container exits).
pub(crate) async fn run(inner: Arc<Inner>, name: String, check: Healthcheck) {
    let started = Instant::now();
    let mut tracker = HealthTracker::default();
    let interval = check.interval.max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(interval).await;
        let ok = check_once(&inner, &name, &check.test, check.timeout).await;
        let in_start_period = started.elapsed() < check.start_period;
        if let Some(state) = tracker.record(ok, in_start_period, check.retries) {
            inner.slots[&name].info.send_if_modified(|info| {
                let running = matches!(
                    info.state,
                    ContainerState::Running | ContainerState::Healthy | ContainerState::Unhealthy
                );
                let changed = running && info.state != state;
                if changed {
                    info.state = state;
                }
                changed
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_after_the_start_period_and_a_success_resets_them() {
        let mut t = HealthTracker::default();
        assert_eq!(t.record(false, true, 2), None);
        assert_eq!(t.record(false, true, 2), None);
        assert_eq!(t.record(true, true, 2), Some(ContainerState::Healthy));
        assert_eq!(t.record(false, false, 2), None);
        assert_eq!(t.record(false, false, 2), Some(ContainerState::Unhealthy));
        assert_eq!(t.record(false, false, 2), Some(ContainerState::Unhealthy));
        assert_eq!(t.record(true, false, 2), Some(ContainerState::Healthy));
        assert_eq!(t.record(false, false, 2), None);
    }
}
