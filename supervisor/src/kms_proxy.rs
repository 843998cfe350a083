//! The KMS calls the operator API relays: `POST /v1/env-key` (upstream
//! VMM's `GetAppEnvEncryptPubKey`) and `POST /v1/kms-meta` (`GetMeta`).
//!
//! KMS URLs are written as guests reach them (`https://10.0.2.2:PORT` for a
//! KMS on this host); the supervisor dials the same service from the host
//! ([`crate::config::host_side_url`]). It checks nothing in the answers and
//! passes them on unchanged: the supervisor is untrusted by design, and
//! the CLI verifies the KMS's signature over the env key itself.

use dstack_kms_client::{ClientError, KmsClient};
use dstack_proto::kms::{GetMetaResponse, PublicKeyResponse};
use dstack_proto::supervisor::{EnvKeyRequest, KmsMetaRequest};

use crate::config::{host_side_url, parse_kms_url};
use crate::error::VmmError;

/// The KMS a request means, as written and as the supervisor dials it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KmsTarget {
    /// As guests reach it: the request's `kms_url`, else the first `--kms-url`.
    pub(crate) url: String,
    /// What the supervisor connects to.
    pub(crate) reached: String,
}

/// The KMS named by `requested`, else the supervisor's first default.
pub(crate) fn target(requested: &str, defaults: &[String]) -> Result<KmsTarget, VmmError> {
    let url = if requested.is_empty() {
        defaults.first().cloned().ok_or(VmmError::NoKms)?
    } else {
        parse_kms_url(requested).map_err(|e| VmmError::invalid("kms_url", e))?
    };
    Ok(KmsTarget {
        reached: host_side_url(&url),
        url,
    })
}

/// A 20-byte app id from hex (`0x` allowed, as on-chain app ids are written).
pub(crate) fn parse_app_id(text: &str) -> Result<[u8; 20], VmmError> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    hex::decode(digits)
        .ok()
        .and_then(|bytes| <[u8; 20]>::try_from(bytes).ok())
        .ok_or_else(|| VmmError::invalid("app_id", format!("{text:?} is not 20 bytes of hex")))
}

/// `POST /v1/env-key`: the KMS's `GetAppEnvEncryptPubKey` answer for the app.
pub(crate) async fn env_key(
    request: &EnvKeyRequest,
    defaults: &[String],
) -> Result<PublicKeyResponse, VmmError> {
    let app_id = parse_app_id(&request.app_id)?;
    let target = target(&request.kms_url, defaults)?;
    let client = client(&target)?;
    client
        .app_env_encrypt_pub_key(&app_id)
        .await
        .map_err(|e| kms_error(&target, e))
}

/// `POST /v1/kms-meta`: the KMS's `GetMeta` answer.
pub(crate) async fn meta(
    request: &KmsMetaRequest,
    defaults: &[String],
) -> Result<GetMetaResponse, VmmError> {
    let target = target(&request.kms_url, defaults)?;
    let client = client(&target)?;
    client
        .meta_unverified()
        .await
        .map_err(|e| kms_error(&target, e))
}

fn client(target: &KmsTarget) -> Result<KmsClient, VmmError> {
    KmsClient::new(&target.reached).map_err(|e| VmmError::invalid("kms_url", e.to_string()))
}

/// A KMS client error as the API names it: unreachable (502), refused or
/// garbage (502), or a URL the client cannot use (400).
pub(crate) fn kms_error(target: &KmsTarget, err: ClientError) -> VmmError {
    let failed = |what, message| VmmError::KmsFailed {
        url: target.url.clone(),
        what,
        message,
    };
    match err {
        ClientError::Transport { reason, .. } => VmmError::KmsUnreachable {
            url: target.url.clone(),
            reached: target.reached.clone(),
            reason,
        },
        ClientError::Refused { message, .. } => failed("refused", message),
        ClientError::BadAnswer { reason, .. } => failed("answered garbage", reason),
        ClientError::Url(url) => {
            VmmError::invalid("kms_url", format!("{url:?} is not https://HOST:PORT"))
        }
        other => failed("could not be asked", crate::error::error_chain(&other)),
    }
}

#[cfg(test)]
mod tests;
