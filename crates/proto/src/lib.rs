//! Wire types of dstack-rs's own APIs. Every type that crosses a process
//! boundary lives here and nowhere else (DESIGN §3, §4). All APIs are
//! HTTP/1.1 + JSON.
//!
//! - [`host`]: guest → host, vsock CID 2 port [`host::HOST_API_PORT`].
//! - [`guest`]: host → guest control, vsock guest CID port [`guest::GUEST_CONTROL_PORT`].
//! - [`guest_api`]: app → guest, upstream dstack's `dstack.sock` / `tappd.sock` API.
//! - [`supervisor`]: operator (CLI, UI) → supervisor REST API.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod guest;
pub mod guest_api;
pub mod host;
pub mod supervisor;

/// The JSON body of every 4xx/5xx response: `{"error": "..."}` naming what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiError {
    /// A one-line, human-readable reason.
    pub error: String,
}

impl ApiError {
    /// An error with this message.
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
        }
    }
}
