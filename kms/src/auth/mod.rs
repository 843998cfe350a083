//! Who may get keys: the authorisation backends a KMS asks after the
//! caller's evidence checked out. Each answers the same question — may this
//! [`BootInfo`] get keys, as an app or as a KMS replica? — as upstream's
//! auth API does (UPSTREAM §7.2).

mod policy;

use dstack_proto::kms::{BootAuthResponse, BootInfo};

pub use policy::{AppPolicy, KmsPolicy, PolicyError, PolicyFile, hex_exact};

/// Why a backend could not answer (as opposed to answering "no").
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The backend could not be reached or answered garbage.
    #[error("auth backend {backend} failed: {reason}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// Why.
        reason: String,
    },
}

/// What a backend says about itself (for `GetMeta`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthInfo {
    /// A development backend that allows any upgrade.
    pub is_dev: bool,
    /// The gateway app id.
    pub gateway_app_id: Option<String>,
    /// The KmsAuth contract (on-chain backend).
    pub kms_contract_address: Option<String>,
    /// The chain id (on-chain backend).
    pub chain_id: Option<u64>,
    /// The AppAuth implementation (on-chain backend).
    pub app_implementation: Option<String>,
}

/// An authorisation backend.
#[derive(Debug)]
#[non_exhaustive]
pub enum AuthBackend {
    /// A static policy file, for a single operator.
    Policy(PolicyFile),
}

impl AuthBackend {
    /// The verdict for an app boot (`is_kms` false) or a KMS replica.
    pub async fn decide(
        &self,
        info: &BootInfo,
        is_kms: bool,
    ) -> Result<BootAuthResponse, AuthError> {
        match self {
            Self::Policy(policy) => Ok(policy.decide(info, is_kms)),
        }
    }

    /// What the backend says about itself.
    pub async fn info(&self) -> Result<AuthInfo, AuthError> {
        match self {
            Self::Policy(policy) => Ok(AuthInfo {
                is_dev: false,
                gateway_app_id: Some(policy.gateway_app_id.clone()),
                ..AuthInfo::default()
            }),
        }
    }
}
