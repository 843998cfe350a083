//! Wire types of dstack-rs's own APIs. Every type that crosses a process
//! boundary lives here and nowhere else (DESIGN §3, §4). All APIs are
//! HTTP/1.1 + JSON.
//!
//! - [`host`]: guest → host, vsock CID 2 port [`host::HOST_API_PORT`].
//! - [`guest`]: host → guest control, vsock guest CID port [`guest::GUEST_CONTROL_PORT`].
//! - [`guest_api`]: app → guest, upstream dstack's `dstack.sock` / `tappd.sock` API.
//! - [`gateway`]: CVM / anyone → gateway (RegisterCvm over RA-TLS, Info, AcmeInfo) and its admin API.
//! - [`kms`]: guest / CLI → KMS, upstream dstack's KMS pRPC API (over RA-TLS).
//! - [`supervisor`]: operator (CLI, UI) → supervisor REST API.
//! - [`blob`]: files a VM is deployed with (build contexts), on both the
//!   supervisor API and the host API.
//! - [`probe`]: the serial-console contract of probe boots (host ↔ PID1).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod blob;
pub mod gateway;
pub mod guest;
pub mod guest_api;
pub mod host;
pub mod kms;
pub mod probe;
pub mod prpc;
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

/// An error and its causes on one line, `outer: cause: root cause`: the
/// text of every `ApiError` and every log line about a failure. A cause
/// whose text is already there (a message that repeats its source) is not
/// printed twice.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Msg(&'static str, #[source] Option<Box<Msg>>);

    #[test]
    fn chains_causes_once_each() {
        let root = Msg("disk full", None);
        let mid = Msg("cannot write state", Some(Box::new(root)));
        assert_eq!(
            error_chain(&Msg("deploy failed", Some(Box::new(mid)))),
            "deploy failed: cannot write state: disk full"
        );
        // A message that already repeats its source does not print it twice.
        let repeated = Msg(
            "bad input: disk full",
            Some(Box::new(Msg("disk full", None))),
        );
        assert_eq!(error_chain(&repeated), "bad input: disk full");
    }
}
