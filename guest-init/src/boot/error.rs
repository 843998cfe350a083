//! Why a boot failed.

use dstack_compose::ComposeError;

use crate::containers::ContainerError;
use crate::disk::DiskError;
use crate::hostapi::HostApiError;
use crate::hostshared::WriteError;
use crate::modules::ModuleError;
use crate::mounts::MountError;
use crate::network::NetworkError;

/// A boot step failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Early mounts.
    #[error("mounting the early filesystems failed")]
    Mounts(#[from] MountError),
    /// Kernel modules.
    #[error("loading kernel modules failed")]
    Modules(#[from] ModuleError),
    /// The config bundle.
    #[error("fetching the config from the host failed")]
    Config(#[source] HostApiError),
    /// app-compose.json.
    #[error("app-compose.json is invalid")]
    Compose(#[source] ComposeError),
    /// The container engine a service asked for.
    #[error("the container engine cannot be provided")]
    Engine(#[from] crate::containers::EngineError),
    /// Identity derivation (no randomness).
    #[error("deriving the instance id failed")]
    Identity(#[source] std::io::Error),
    /// No TEE to measure into.
    #[error("the TEE is unavailable")]
    Tee(#[from] Box<crate::tee::TeeError>),
    /// Measuring the app.
    #[error("measuring the app failed")]
    Measure(#[from] Box<crate::measure::MeasureError>),
    /// The local key provider.
    #[error("getting the app keys from the local key provider failed")]
    LocalKey(#[source] Box<crate::local_key::LocalKeyError>),
    /// Every KMS refused or could not be reached; the last one's error.
    #[error("getting the app keys from the KMS failed (tried {tried} URL(s))")]
    Kms {
        /// How many KMS URLs were tried.
        tried: usize,
        /// The last failure.
        #[source]
        source: Box<dstack_kms_client::ClientError>,
    },
    /// The guest API (dstack.sock).
    #[error("starting the guest API failed")]
    GuestApi(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Host-shared files.
    #[error("writing the config files failed")]
    HostShared(#[from] WriteError),
    /// Network.
    #[error("configuring the network failed")]
    Network(#[from] NetworkError),
    /// The encrypted env (upstream's blob): refused, never partly applied.
    #[error("the app's encrypted env is refused")]
    Env(#[source] dstack_envcrypt::EnvError),
    /// Data disk.
    #[error("preparing the data disk failed")]
    Disk(#[from] DiskError),
    /// A shipped build context: not handed over, or not the measured one.
    #[error("providing the build contexts failed")]
    BuildContext(#[from] crate::build_context::ContextError),
    /// Image pulls.
    #[error("pulling images failed")]
    Pull(#[source] ContainerError),
    /// Container starts.
    #[error("starting containers failed")]
    Start(#[source] ContainerError),
    /// A blocking step's thread died.
    #[error("a boot step's thread failed")]
    Task(#[from] tokio::task::JoinError),
}

impl From<crate::tee::TeeError> for BootError {
    fn from(e: crate::tee::TeeError) -> Self {
        BootError::Tee(Box::new(e))
    }
}

impl From<crate::measure::MeasureError> for BootError {
    fn from(e: crate::measure::MeasureError) -> Self {
        BootError::Measure(Box::new(e))
    }
}

pub use dstack_proto::error_chain;
