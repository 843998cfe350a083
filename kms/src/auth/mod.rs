//! Who may get keys: the authorisation backends a KMS asks after the
//! caller's evidence checked out. Each answers the same question — may this
//! [`BootInfo`] get keys, as an app or as a KMS replica? — as upstream's
//! auth API does (UPSTREAM §7.2).
//!
//! - [`PolicyFile`]: a static JSON policy, for a single operator.
//! - [`WebhookBackend`]: upstream's auth API over HTTP (auth-eth, auth-simple).
//! - [`ChainBackend`]: the KmsAuth contract, read directly over JSON-RPC.

mod chain;
mod policy;
mod webhook;

use std::path::Path;
use std::time::Duration;

use dstack_contracts::{ChainError, parse_address};
use dstack_proto::kms::{BootAuthResponse, BootInfo};

pub use chain::{CHAIN_TIMEOUT, ChainBackend, app_boot_info};
pub use policy::{AppPolicy, KmsPolicy, PolicyError, PolicyFile, hex_exact};
pub use webhook::{MAX_RESPONSE_BYTES, WEBHOOK_TIMEOUT, WebhookBackend, WebhookError};

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
    /// The backend did not answer in time.
    #[error("auth backend {backend} did not answer {target} within {after:?}")]
    Timeout {
        /// Which backend.
        backend: &'static str,
        /// What was asked (URL or RPC endpoint).
        target: String,
        /// The time limit.
        after: Duration,
    },
}

/// Why an [`AuthBackend::from_spec`] spec cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The spec has no `kind:` prefix or an unknown one.
    #[error(
        "auth backend spec {spec:?} is not policy:<file>, webhook:<url> or chain:<rpc-url>#<kms-contract>"
    )]
    UnknownKind {
        /// The spec as given.
        spec: String,
    },
    /// The part after `kind:` is empty.
    #[error("auth backend spec {spec:?} has nothing after the kind")]
    Empty {
        /// The spec as given.
        spec: String,
    },
    /// The policy file cannot be loaded.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The webhook URL cannot be used.
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    /// A `chain:` spec without `#<kms-contract-address>`.
    #[error("chain spec {spec:?} has no contract: expected chain:<rpc-url>#<kms-contract-address>")]
    MissingContract {
        /// The spec as given.
        spec: String,
    },
    /// The chain spec's RPC URL or contract address is invalid.
    #[error("chain spec {spec:?} is invalid")]
    Chain {
        /// The spec as given.
        spec: String,
        /// What is wrong.
        #[source]
        source: ChainError,
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
    /// Upstream's auth API over HTTP.
    Webhook(Box<WebhookBackend>),
    /// The KmsAuth contract, read over JSON-RPC.
    Chain(ChainBackend),
}

impl AuthBackend {
    /// A backend from a one-line spec (the KMS's `--auth` argument):
    ///
    /// - `policy:<path>`: a policy file ([`PolicyFile`]), read now.
    /// - `webhook:<url>`: upstream's auth API at `http://host[:port][/path]`;
    ///   `/bootAuth/app` and `/bootAuth/kms` are appended to the path.
    /// - `chain:<rpc-url>#<kms-contract-address>`: the KmsAuth contract at
    ///   the address (`0x` and 40 hex digits) over the JSON-RPC URL. `#` is
    ///   unambiguous because a URL fragment is never sent to the node.
    ///
    /// Only the policy file is read here; nothing is sent to a webhook or
    /// node until the first call.
    pub fn from_spec(spec: &str) -> Result<Self, SpecError> {
        let unknown = || SpecError::UnknownKind {
            spec: spec.to_owned(),
        };
        let (kind, value) = spec.split_once(':').ok_or_else(unknown)?;
        if value.is_empty() {
            return Err(SpecError::Empty {
                spec: spec.to_owned(),
            });
        }
        match kind {
            "policy" => Ok(Self::Policy(PolicyFile::load(Path::new(value))?)),
            "webhook" => Ok(Self::Webhook(Box::new(WebhookBackend::new(value)?))),
            "chain" => {
                let (url, contract) =
                    value
                        .rsplit_once('#')
                        .ok_or_else(|| SpecError::MissingContract {
                            spec: spec.to_owned(),
                        })?;
                let chain = |source| SpecError::Chain {
                    spec: spec.to_owned(),
                    source,
                };
                let contract = parse_address(contract).map_err(chain)?;
                Ok(Self::Chain(
                    ChainBackend::new(url, contract).map_err(chain)?,
                ))
            }
            _ => Err(unknown()),
        }
    }

    /// The verdict for an app boot (`is_kms` false) or a KMS replica.
    pub async fn decide(
        &self,
        info: &BootInfo,
        is_kms: bool,
    ) -> Result<BootAuthResponse, AuthError> {
        match self {
            Self::Policy(policy) => Ok(policy.decide(info, is_kms)),
            Self::Webhook(webhook) => webhook.decide(info, is_kms).await,
            Self::Chain(chain) => chain.decide(info, is_kms).await,
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
            Self::Webhook(webhook) => webhook.info().await,
            Self::Chain(chain) => chain.info().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_pick_the_backend() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.json");
        std::fs::write(&file, r#"{"gateway_app_id":"gw"}"#).unwrap();
        let policy = AuthBackend::from_spec(&format!("policy:{}", file.display())).unwrap();
        assert!(matches!(policy, AuthBackend::Policy(p) if p.gateway_app_id == "gw"));

        match AuthBackend::from_spec("webhook:http://127.0.0.1:8000/auth").unwrap() {
            AuthBackend::Webhook(w) => assert_eq!(w.url(), "http://127.0.0.1:8000/auth"),
            other => panic!("{other:?}"),
        }

        let contract = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
        match AuthBackend::from_spec(&format!("chain:http://127.0.0.1:8545#{contract}")).unwrap() {
            AuthBackend::Chain(c) => assert_eq!(c.kms_contract(), parse_address(contract).unwrap()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_specs_are_named() {
        let err = |spec: &str| AuthBackend::from_spec(spec).unwrap_err();
        assert!(matches!(err(""), SpecError::UnknownKind { .. }));
        assert!(matches!(
            err("/etc/policy.json"),
            SpecError::UnknownKind { .. }
        ));
        assert!(matches!(err("ldap:foo"), SpecError::UnknownKind { .. }));
        assert!(matches!(err("webhook:"), SpecError::Empty { .. }));
        assert!(matches!(
            err("policy:/nonexistent/policy.json"),
            SpecError::Policy(PolicyError::Read { .. })
        ));
        assert!(matches!(
            AuthBackend::from_spec("webhook:https://auth.example"),
            Ok(AuthBackend::Webhook(_))
        ));
        assert!(matches!(
            err("webhook:auth.example:8000"),
            SpecError::Webhook(WebhookError::BadUrl { .. })
        ));
        assert!(matches!(
            err("chain:http://127.0.0.1:8545"),
            SpecError::MissingContract { .. }
        ));
        assert!(matches!(
            err("chain:http://127.0.0.1:8545#0x1234"),
            SpecError::Chain {
                source: ChainError::BadAddress { .. },
                ..
            }
        ));
        assert!(matches!(
            err(&format!("chain:ws://127.0.0.1:8545#0x{}", "00".repeat(20))),
            SpecError::Chain {
                source: ChainError::BadUrl { .. },
                ..
            }
        ));
        // The message says what a spec looks like.
        assert!(
            err("ldap:foo")
                .to_string()
                .contains("chain:<rpc-url>#<kms-contract>")
        );
    }
}
