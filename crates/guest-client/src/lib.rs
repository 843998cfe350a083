//! A client of the guest API that a dstack CVM serves its apps on
//! `/var/run/dstack.sock` (UPSTREAM §1), for our own services that run as
//! dstack apps: the KMS seals its root keys with `GetKey` and attests its
//! certificates with `Attest`, as any app would.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use dstack_proto::guest_api::{
    AppInfo, AttestResponse, GetKeyArgs, GetKeyResponse, GetQuoteResponse, RawQuoteArgs,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where dstack CVMs serve the guest API to their apps.
pub const DEFAULT_SOCKET: &str = "/var/run/dstack.sock";
/// How long one call may take (a quote on real hardware takes a moment).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest answer accepted (an attestation with its event log).
const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// Why a guest API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuestApiError {
    /// The socket could not be reached or the exchange broke off.
    #[error("cannot reach the guest API at {}: {reason}", socket.display())]
    Transport {
        /// The socket.
        socket: PathBuf,
        /// Why.
        reason: String,
    },
    /// The guest API answered with an error.
    #[error("the guest API refused {method}: {message}")]
    Refused {
        /// The method called.
        method: &'static str,
        /// Its `{"error": ..}` text.
        message: String,
    },
    /// The answer is not what the API defines.
    #[error("the guest API answered {method} with garbage: {reason}")]
    BadAnswer {
        /// The method called.
        method: &'static str,
        /// Why.
        reason: String,
    },
}

/// The guest API at one socket; one connection per call.
#[derive(Debug, Clone)]
pub struct GuestClient {
    socket: PathBuf,
}

impl GuestClient {
    /// A client of the guest API at `socket`.
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self {
            socket: socket.as_ref().to_path_buf(),
        }
    }

    /// The socket this client calls.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GetKey`: the app key derived for `path` (secp256k1 bytes).
    pub async fn get_key(
        &self,
        path: &str,
        purpose: &str,
    ) -> Result<GetKeyResponse, GuestApiError> {
        let args = GetKeyArgs {
            path: path.to_owned(),
            purpose: purpose.to_owned(),
            algorithm: String::new(),
        };
        let answer: GetKeyResponse = self.call("GetKey", &args).await?;
        if answer.key.len() != 32 {
            return Err(GuestApiError::BadAnswer {
                method: "GetKey",
                reason: format!("a {}-byte key", answer.key.len()),
            });
        }
        Ok(answer)
    }

    /// `Attest`: this CVM's versioned attestation over `report_data`.
    pub async fn attest(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, GuestApiError> {
        let args = RawQuoteArgs {
            report_data: report_data.to_vec(),
        };
        let answer: AttestResponse = self.call("Attest", &args).await?;
        if answer.attestation.is_empty() {
            return Err(GuestApiError::BadAnswer {
                method: "Attest",
                reason: "an empty attestation".into(),
            });
        }
        Ok(answer.attestation)
    }

    /// `GetQuote`: the raw quote and event log over `report_data`.
    pub async fn get_quote(
        &self,
        report_data: &[u8; 64],
    ) -> Result<GetQuoteResponse, GuestApiError> {
        let args = RawQuoteArgs {
            report_data: report_data.to_vec(),
        };
        self.call("GetQuote", &args).await
    }

    /// `Info`: the app's identity and the VM config.
    pub async fn info(&self) -> Result<AppInfo, GuestApiError> {
        self.call("Info", &serde_json::json!({})).await
    }

    async fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        method: &'static str,
        request: &Q,
    ) -> Result<A, GuestApiError> {
        tokio::time::timeout(CALL_TIMEOUT, self.call_inner(method, request))
            .await
            .map_err(|_| self.transport(format!("{method} timed out after {CALL_TIMEOUT:?}")))?
    }

    async fn call_inner<Q: Serialize, A: DeserializeOwned>(
        &self,
        method: &'static str,
        request: &Q,
    ) -> Result<A, GuestApiError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.transport(e.to_string()))?;
        let body = serde_json::to_vec(request).map_err(|e| self.transport(e.to_string()))?;
        let answer = dstack_http_json::post_json(
            stream,
            "localhost",
            &format!("/{method}"),
            body,
            MAX_RESPONSE_BYTES,
        )
        .await
        .map_err(|e| self.transport(e.to_string()))?;
        if !answer.status.is_success() {
            return Err(GuestApiError::Refused {
                method,
                message: answer.error_message(),
            });
        }
        serde_json::from_slice(&answer.body).map_err(|e| GuestApiError::BadAnswer {
            method,
            reason: e.to_string(),
        })
    }

    fn transport(&self, reason: String) -> GuestApiError {
        GuestApiError::Transport {
            socket: self.socket.clone(),
            reason,
        }
    }
}
