//! Why pulling, unpacking or running a compose service failed. Every variant
//! names the service or image (and layer) at fault; the cause is in `source()`.

use std::path::PathBuf;

use crate::containers::unpack::UnpackError;

/// A failure of the container subsystem, with enough context to tell the
/// operator which service, image or layer to look at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContainerError {
    /// The image reference in the compose file does not parse.
    #[error("image reference {image:?} is invalid")]
    InvalidReference {
        /// The reference as written.
        image: String,
        /// Why it does not parse.
        #[source]
        source: oci_spec::distribution::ParseError,
    },
    /// The registry refused a request or could not be reached.
    #[error("registry request for {image} ({what}) failed")]
    Registry {
        /// The image as written in the compose file.
        image: String,
        /// What was being fetched: `manifest`, `config`, `layer 2/3`.
        what: String,
        /// The registry client's error.
        #[source]
        source: crate::containers::registry::RegistryError,
    },
    /// Content from the registry does not hash to the digest that names it.
    #[error("{image}: {what} has digest {actual}, expected {expected}")]
    DigestMismatch {
        /// The image as written in the compose file.
        image: String,
        /// `manifest`, `config` or `layer 2/3`.
        what: String,
        /// The digest that names the content.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// A manifest, index or config is not what an image should contain.
    #[error("{image}: {reason}")]
    BadImage {
        /// The image as written in the compose file.
        image: String,
        /// What is wrong, e.g. "no linux/amd64 manifest in the index".
        reason: String,
    },
    /// A layer could not be unpacked.
    #[error("{image}: unpacking layer {layer} failed")]
    Unpack {
        /// The image as written in the compose file.
        image: String,
        /// The layer digest.
        layer: String,
        /// Why.
        #[source]
        source: UnpackError,
    },
    /// A file or directory the runtime needs could not be read or written.
    #[error("{what} {path}")]
    Io {
        /// What was being done, e.g. "writing blob".
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A mount for a service's root filesystem failed.
    #[error("service {service}: mounting {target}")]
    Mount {
        /// The service.
        service: String,
        /// The mount point.
        target: PathBuf,
        /// The OS error.
        #[source]
        source: nix::Error,
    },
    /// The service's runtime spec cannot be built (no command, unknown user...).
    #[error("service {service}: {reason}")]
    Spec {
        /// The service.
        service: String,
        /// What is wrong.
        reason: String,
    },
    /// libcontainer could not create, start or exec in the container.
    #[error("service {service}: {action} failed")]
    Runtime {
        /// The service.
        service: String,
        /// `create`, `start`, `exec`, `kill` or `delete`.
        action: &'static str,
        /// libcontainer's error, or the container helper's.
        #[source]
        source: Box<RuntimeError>,
    },
    /// A published port could not be listened on.
    #[error("service {service}: cannot listen on published port {port}")]
    Publish {
        /// The service.
        service: String,
        /// The guest port.
        port: u16,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A `depends_on` condition can no longer be met.
    #[error("service {service}: dependency {dependency} {reason}")]
    Dependency {
        /// The dependent service.
        service: String,
        /// The service depended on.
        dependency: String,
        /// What happened to it, e.g. "exited with code 1".
        reason: String,
    },
    /// Building the service's image failed.
    #[error("service {service}: building its image failed: {reason}")]
    Build {
        /// The service.
        service: String,
        /// What failed (the build's last output lines).
        reason: String,
    },
    /// The service was not pulled before it was started.
    #[error("service {service}: image {image} was not pulled")]
    NotPulled {
        /// The service.
        service: String,
        /// Its image.
        image: String,
    },
    /// The compose file is inconsistent (a dependency cycle or unknown service).
    #[error("compose file")]
    Compose(#[from] dstack_compose::ComposeError),
    /// The compose networks cannot be laid out as the file asks.
    #[error("compose networks")]
    NetPlan(#[from] crate::containers::netplan::NetPlanError),
    /// The compose networks could not be set up in the guest.
    #[error(transparent)]
    Network(#[from] crate::containers::netns::NetnsError),
}

impl ContainerError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ContainerError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn spec(service: &str, reason: impl Into<String>) -> Self {
        ContainerError::Spec {
            service: service.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn runtime(
        service: &str,
        action: &'static str,
        source: impl Into<RuntimeError>,
    ) -> Self {
        ContainerError::Runtime {
            service: service.to_string(),
            action,
            source: Box::new(source.into()),
        }
    }
}

/// Why a libcontainer operation failed: in PID1 (kill), or in the
/// container helper process that creates and execs (see `helper.rs`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// libcontainer's error, in PID1.
    #[error(transparent)]
    Libcontainer(#[from] libcontainer::error::LibcontainerError),
    /// libcontainer failed in the helper: the helper's error chain.
    #[error("{0}")]
    Helper(String),
    /// The helper could not be started.
    #[error("cannot run the container helper {}", helper.display())]
    Spawn {
        /// The helper executable.
        helper: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The request or reply could not be passed.
    #[error("container helper channel")]
    Channel(#[source] std::io::Error),
    /// The helper exited without answering.
    #[error("the container helper exited ({status}) without a reply")]
    NoReply {
        /// How it exited.
        status: std::process::ExitStatus,
    },
    /// The helper did not answer in time and was killed.
    #[error("the container helper did not answer within {after:?}")]
    TimedOut {
        /// The time limit.
        after: std::time::Duration,
    },
}
