//! Glue between the boot sequence's [`AppRuntime`] and the container side's
//! [`ServiceManager`]: the one place the system side names container types.

use std::process::ExitStatus;
use std::sync::Arc;

use dstack_proto::guest::ContainerInfo;

use crate::app::{AppParams, AppRuntime, BoxFuture, RuntimeFactory};
use crate::containers::{ContainerEnv, ContainerError, ServiceManager};
use crate::reaper::{ChildOwner, ReapGuard};
use crate::state::Services;

impl Services for ServiceManager {
    fn list(&self) -> Vec<ContainerInfo> {
        ServiceManager::list(self)
    }

    fn stop_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(ServiceManager::stop_all(self))
    }
}

impl ChildOwner for ServiceManager {
    fn child_exited(&self, pid: i32, status: ExitStatus) -> bool {
        ServiceManager::child_exited(self, pid, status)
    }

    /// The container side's rule: reap only while holding its reaping lock,
    /// which excludes container creation (libcontainer waits for its
    /// intermediate process by pid inside that window).
    fn hold_reaping(&self) -> BoxFuture<'_, ReapGuard> {
        Box::pin(async { Box::new(self.lock_for_reaping().await) as ReapGuard })
    }
}

impl AppRuntime for ServiceManager {
    fn pull_all<'a>(
        &'a self,
        progress: &'a (dyn Fn(String) + Send + Sync),
    ) -> BoxFuture<'a, Result<(), ContainerError>> {
        Box::pin(ServiceManager::pull_all(self, progress))
    }

    fn start_all(&self) -> BoxFuture<'_, Result<(), ContainerError>> {
        Box::pin(ServiceManager::start_all(self))
    }
}

/// Builds a [`ServiceManager`] for the app.
pub fn container_runtime() -> RuntimeFactory {
    Box::new(|params: AppParams| {
        let env = ContainerEnv {
            data_dir: params.data_dir,
            run_dir: params.run_dir,
            registry_aliases: params.registry_aliases,
            insecure_registries: params.insecure_registries,
            dns: params.dns,
            guest_socket_dir: params.guest_socket_dir,
        };
        Arc::new(ServiceManager::new(env, params.compose, params.logs)) as Arc<dyn AppRuntime>
    })
}
