//! The app's services as the boot sequence drives them. The boot sequence
//! depends only on [`AppRuntime`], so it can run against a fake; the
//! glue in `services.rs` implements it over `containers::ServiceManager`.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use dstack_compose::Compose;
use dstack_proto::host::{LogEntry, RegistryAlias};
use tokio::sync::mpsc;

use crate::containers::ContainerError;
use crate::reaper::ChildOwner;
use crate::state::Services;

/// A boxed future borrowing `'a`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything the container side needs to run the app.
#[derive(Debug)]
pub struct AppParams {
    /// The mounted data disk (`/data`).
    pub data_dir: PathBuf,
    /// Runtime state (`/run/dstack`).
    pub run_dir: PathBuf,
    /// Where the guest API socket lives (`/var/run/dstack`).
    pub guest_socket_dir: PathBuf,
    /// Registry host rewrites.
    pub registry_aliases: Vec<RegistryAlias>,
    /// Registries reachable over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// DNS servers for the containers.
    pub dns: Vec<String>,
    /// The compose file.
    pub compose: Compose,
    /// Where container output goes.
    pub logs: mpsc::Sender<LogEntry>,
}

/// The app's services: pull, start, list, stop, and own their children.
pub trait AppRuntime: Services + ChildOwner {
    /// Pulls every image, reporting progress lines.
    fn pull_all<'a>(
        &'a self,
        progress: &'a (dyn Fn(String) + Send + Sync),
    ) -> BoxFuture<'a, Result<(), ContainerError>>;

    /// Starts every service in dependency order; returns once all started.
    fn start_all(&self) -> BoxFuture<'_, Result<(), ContainerError>>;
}

/// Builds the runtime for an app.
pub type RuntimeFactory = Box<dyn FnOnce(AppParams) -> Arc<dyn AppRuntime> + Send>;
