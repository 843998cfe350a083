//! The two files an app developer hands over: `app-compose.json` (dstack's
//! app manifest, whose SHA-256 is the compose-hash measured into RTMR3) and
//! the docker-compose YAML inside it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod app_compose;
mod build;
mod duration;
pub mod interpolate;
mod limits;
mod mounts;
mod mr_config;
mod network;
mod project;
mod security;
mod service;
mod yaml;

pub use app_compose::{
    AppCompose, KeyProviderKind, app_compose_from_yaml, app_compose_with_build_contexts, app_id,
    compose_hash,
};
pub use build::context_link_stays_inside;
pub use duration::parse_duration;
pub use interpolate::Vars;
pub use limits::{Limits, ULIMIT_NAMES, Ulimit};
pub use mounts::{
    APP_DIR, DOCKER_SOCKETS, DSTACK_SOCKETS, DeviceMapping, FileKind, FileMount, TmpfsMount,
    VolumeMount, VolumeSource, anonymous_volume_name, normalize_absolute,
};
pub use mr_config::{MR_CONFIG_ID_LEN, mr_config_id_matches, mr_config_id_v1, mr_config_id_v2};
pub use network::{NetworkMode, ServiceNetwork};
pub use project::{Check, Compose, ENGINE_SERVICE, NetworkDef};
pub use security::{CapabilityName, LINUX_CAPABILITIES, SeccompMode, Security};
pub use service::{
    BuildSpec, Dependency, DependencyCondition, Healthcheck, HostNamespaces, PLATFORMS, PortSpec,
    Protocol, RestartPolicy, Service,
};
pub use yaml::parse_bytes;

/// A key accepted without effect in a CVM, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// Dotted path of the key, e.g. `services.web.logging`.
    pub field: String,
    /// Why it has no effect.
    pub reason: String,
}

/// What reading a file found so far: ignored keys and refusals.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    pub(crate) ignored: Vec<Ignored>,
    pub(crate) refused: Vec<ComposeError>,
}

impl Findings {
    pub(crate) fn ignore(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.ignored.push(Ignored {
            field: field.into(),
            reason: reason.into(),
        });
    }

    pub(crate) fn refuse(&mut self, error: ComposeError) {
        if !self.refused.contains(&error) {
            self.refused.push(error);
        }
    }
}

/// Why a compose file was refused. Every variant names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ComposeError {
    /// app-compose.json is not valid JSON of the expected shape.
    #[error("app-compose.json is invalid: {0}")]
    AppComposeJson(String),
    /// The compose YAML does not parse.
    #[error("compose file is not valid YAML: {0}")]
    Yaml(String),
    /// A field has a bad value.
    #[error("{field}: {reason}")]
    Invalid {
        /// Dotted path of the field, e.g. `services.web.ports[0]`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The runner is not one this platform runs.
    #[error("runner {0:?} is not supported (only \"docker-compose\" or \"nerdctl-compose\")")]
    UnsupportedRunner(String),
    /// A `cap_add` or `cap_drop` entry names no Linux capability.
    #[error("{field}: {name:?} is not a Linux capability (e.g. NET_ADMIN, CAP_SYS_TIME or ALL)")]
    UnknownCapability {
        /// Dotted path of the list, e.g. `services.web.cap_add`.
        field: String,
        /// The name as written.
        name: String,
    },
    /// A `security_opt` entry this platform does not honour: refused rather
    /// than ignored, since running with less confinement than asked is worse.
    #[error("{field}: security option {option:?} is not supported: {reason}")]
    UnsupportedSecurityOpt {
        /// Dotted path of the entry, e.g. `services.web.security_opt[0]`.
        field: String,
        /// The entry as written.
        option: String,
        /// Why, and what is supported.
        reason: String,
    },
    /// A key this platform understands but cannot honour in a CVM.
    #[error("{field}: not supported in a CVM: {reason}")]
    Unsupported {
        /// Dotted path of the key.
        field: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// The service asks for a GPU and the CVM has none.
    #[error(
        "{field}: this CVM has no GPU (GPU passthrough is not available on this platform); remove the GPU reservation or deploy it where GPUs are offered"
    )]
    GpuUnavailable {
        /// Dotted path of the key that asks for the GPU.
        field: String,
    },
    /// `platform:` names another platform than linux/amd64.
    #[error("{field}: platform {platform:?} is not supported: a CVM runs linux/amd64 images only")]
    UnsupportedPlatform {
        /// Dotted path of the key.
        field: String,
        /// The platform as written.
        platform: String,
    },
    /// Something needs a shell in the guest, which it does not have.
    #[error("{field}: {what} needs a shell, and the guest has none by design; {alternative}")]
    NeedsShell {
        /// Dotted path of the key.
        field: String,
        /// What asked for the shell.
        what: String,
        /// What to do instead.
        alternative: String,
    },
    /// `depends_on` forms a cycle.
    #[error("services depend on each other in a cycle: {0}")]
    DependencyCycle(String),
    /// A build reads a Dockerfile file, and the app-compose ships no
    /// context for it (`build_contexts`).
    #[error(
        "{field}: the Dockerfile ({dockerfile}) and its build context are files on the developer's machine, and this app-compose.json measures no context for the service (build_contexts): deploy with `dstack vm deploy`, which packs, measures and ships them, or use dockerfile_inline"
    )]
    BuildContextNotShipped {
        /// Dotted path of the service's `build`.
        field: String,
        /// The Dockerfile's path in the context.
        dockerfile: String,
    },
}

impl ComposeError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ComposeError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
