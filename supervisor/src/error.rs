//! The one error type the VMM layer returns to the API, and its HTTP status.

use std::io;
use std::path::PathBuf;

use axum::http::StatusCode;
use dstack_proto::ApiError;

use crate::qemu::process::LaunchError;

/// Why a request to the supervisor failed. [`VmmError::status_code`] is the
/// one place that picks the HTTP status (STYLE rule 10).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmmError {
    /// `{vm}` matches no VM id or name.
    #[error("no VM named or with id {0:?}")]
    NotFound(String),
    /// A request field has a bad value.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field at fault, e.g. `ports[0].host_port`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A request field conflicts with the state of the host (name taken, port in use).
    #[error("{field}: {reason}")]
    Conflict {
        /// The field at fault.
        field: String,
        /// What it conflicts with.
        reason: String,
    },
    /// The VM cannot do this in its current state.
    #[error("VM {vm} is {state}; {action} is not possible now")]
    WrongState {
        /// VM name.
        vm: String,
        /// Its state.
        state: String,
        /// What was asked.
        action: &'static str,
    },
    /// Every vsock CID is taken.
    #[error("no free vsock CID")]
    NoFreeCid,
    /// Reading or writing the state directory failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done (`write`, `read`, `create`...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A KMS request names no KMS and the supervisor has no `--kms-url`.
    #[error("no KMS configured: name one (kms_url) or start the supervisor with --kms-url")]
    NoKms,
    /// The KMS could not be reached (connect, TLS, HTTP or a timeout).
    #[error("cannot reach the KMS at {url}{}: {reason}", reached_as(.url, .reached))]
    KmsUnreachable {
        /// The KMS as guests reach it (as the request or --kms-url wrote it).
        url: String,
        /// The URL the supervisor used (the guests' host alias mapped to loopback).
        reached: String,
        /// Why.
        reason: String,
    },
    /// The KMS answered with an error, or with something that is not its API.
    #[error("the KMS at {url} {what}: {message}")]
    KmsFailed {
        /// The KMS as guests reach it.
        url: String,
        /// `refused` or `answered garbage`.
        what: &'static str,
        /// Its error text, or what is wrong with the answer.
        message: String,
    },
    /// QEMU or the vsock backend could not be started.
    #[error("cannot start VM {vm}")]
    Launch {
        /// VM name.
        vm: String,
        /// The cause.
        #[source]
        source: LaunchError,
    },
}

impl VmmError {
    /// A bad value in a request field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        VmmError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A request field that conflicts with the host's state.
    pub fn conflict(field: impl Into<String>, reason: impl Into<String>) -> Self {
        VmmError::Conflict {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// An I/O failure on a state file.
    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| VmmError::Io {
            action,
            path,
            source,
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status_code(&self) -> StatusCode {
        match self {
            VmmError::NotFound(_) => StatusCode::NOT_FOUND,
            VmmError::Invalid { .. } => StatusCode::BAD_REQUEST,
            VmmError::Conflict { .. } | VmmError::WrongState { .. } => StatusCode::CONFLICT,
            VmmError::NoFreeCid => StatusCode::SERVICE_UNAVAILABLE,
            VmmError::NoKms => StatusCode::BAD_REQUEST,
            VmmError::KmsUnreachable { .. } | VmmError::KmsFailed { .. } => StatusCode::BAD_GATEWAY,
            VmmError::Io { .. } | VmmError::Launch { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body: this error and its causes, joined with `: `.
    pub fn to_api_error(&self) -> ApiError {
        ApiError::new(error_chain(self))
    }
}

impl From<crate::state::blobs::BlobError> for VmmError {
    fn from(e: crate::state::blobs::BlobError) -> Self {
        use crate::state::blobs::BlobError;
        match e {
            BlobError::Io {
                action,
                path,
                source,
            } => VmmError::Io {
                action,
                path,
                source,
            },
            other => VmmError::invalid("blob", other.to_string()),
        }
    }
}

/// ` (reached as URL)` when the supervisor used another URL than the one given.
fn reached_as(url: &str, reached: &str) -> String {
    if url == reached {
        String::new()
    } else {
        format!(" (reached as {reached})")
    }
}

pub use dstack_proto::error_chain;

impl From<VmmError> for ApiError {
    fn from(err: VmmError) -> Self {
        err.to_api_error()
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn not_found_message_is_exact() {
        let err = VmmError::NotFound("x".into());
        assert_eq!(err.status_code(), StatusCode::NOT_FOUND);
        assert_eq!(err.to_api_error().error, r#"no VM named or with id "x""#);
    }

    #[test]
    fn chain_includes_causes_once() {
        let err = VmmError::io("write", "/s/m.json")(io::Error::other("disk full"));
        assert_eq!(
            err.to_api_error().error,
            "cannot write /s/m.json: disk full"
        );
        assert!(err.source().is_some());
        assert_eq!(err.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn field_errors_name_the_field() {
        let err = VmmError::invalid("vcpu", "must be between 1 and 64");
        assert_eq!(err.to_string(), "vcpu: must be between 1 and 64");
        assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
        let err = VmmError::conflict("name", "already used");
        assert_eq!(err.status_code(), StatusCode::CONFLICT);
    }
}
