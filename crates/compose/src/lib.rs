//! The two files an app developer hands over: `app-compose.json` (dstack's
//! app manifest, whose SHA-256 is the compose-hash measured into RTMR3) and
//! the docker-compose YAML inside it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod app_compose;
mod duration;
pub mod interpolate;
mod mr_config;
mod security;
mod service;

pub use app_compose::{AppCompose, KeyProviderKind, app_compose_from_yaml, app_id, compose_hash};
pub use duration::parse_duration;
pub use interpolate::Vars;
pub use mr_config::{MR_CONFIG_ID_LEN, mr_config_id_matches, mr_config_id_v1, mr_config_id_v2};
pub use security::{CapabilityName, LINUX_CAPABILITIES, SeccompMode, Security};
pub use service::{
    Compose, DSTACK_SOCKETS, Dependency, DependencyCondition, Healthcheck, PortSpec, RestartPolicy,
    Service, VolumeMount, VolumeSource,
};

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
    #[error("runner {0:?} is not supported (only \"docker-compose\")")]
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
    /// `depends_on` forms a cycle.
    #[error("services depend on each other in a cycle: {0}")]
    DependencyCycle(String),
}

impl ComposeError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ComposeError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
