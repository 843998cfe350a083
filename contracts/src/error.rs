//! One error type for the whole crate: every variant names what was being
//! done, so a KMS log line says which call failed and why.

use alloy::contract::Error as ContractError;
use alloy::sol_types::SolInterface;
use alloy::transports::{RpcError, TransportError};

use crate::bindings::{app::DstackApp, kms::DstackKms};

/// What can go wrong talking to the governance contracts.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The RPC URL does not parse.
    #[error("bad RPC URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// An address is not 20 bytes of hex.
    #[error("bad address {value:?}: expected 0x and 40 hex digits")]
    BadAddress {
        /// The value as given.
        value: String,
    },
    /// A private key is not 32 bytes of hex or not a valid secp256k1 scalar.
    #[error("bad private key: expected 32 bytes of hex (0x optional)")]
    BadKey,
    /// A fixed-size field has the wrong length (never padded or truncated).
    #[error("{field} must be {expected} bytes, got {got}")]
    BadLength {
        /// The field's name.
        field: &'static str,
        /// The length the contract ABI requires.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// The RPC endpoint could not be reached or answered garbage.
    #[error("{call}: RPC endpoint {url} unreachable")]
    Unreachable {
        /// The contract function or RPC method.
        call: &'static str,
        /// The endpoint.
        url: String,
        /// The transport's error.
        #[source]
        source: TransportError,
    },
    /// The contract reverted the call or transaction.
    #[error("{call} reverted: {reason}")]
    Reverted {
        /// The contract function.
        call: &'static str,
        /// The decoded revert reason (a `require` message or a custom error),
        /// or the raw revert data in hex.
        reason: String,
    },
    /// There is no contract code at the address called.
    #[error("{call}: no contract at {address}")]
    NoContract {
        /// The contract function.
        call: &'static str,
        /// The address called.
        address: String,
    },
    /// A transaction was mined but failed (status 0).
    #[error("{call}: transaction {tx_hash} failed on chain")]
    TxFailed {
        /// The contract function.
        call: &'static str,
        /// The transaction hash.
        tx_hash: String,
    },
    /// A successful transaction's receipt lacks what it must contain.
    #[error("{call}: {what} missing from the receipt of {tx_hash}")]
    BadReceipt {
        /// The contract function.
        call: &'static str,
        /// What is missing.
        what: &'static str,
        /// The transaction hash.
        tx_hash: String,
    },
    /// Any other RPC or ABI failure.
    #[error("{call} failed")]
    Rpc {
        /// The contract function or RPC method.
        call: &'static str,
        /// alloy's error.
        #[source]
        source: Box<ContractError>,
    },
}

impl ChainError {
    /// Sorts an alloy contract error into the variant that says what happened.
    pub(crate) fn from_contract(
        call: &'static str,
        url: &str,
        address: alloy::primitives::Address,
        err: ContractError,
    ) -> Self {
        if let Some(data) = err.as_revert_data() {
            return Self::Reverted {
                call,
                reason: describe_revert(&data),
            };
        }
        match err {
            ContractError::ZeroData(..) => Self::NoContract {
                call,
                address: address.to_string(),
            },
            ContractError::TransportError(e) => Self::from_transport(call, url, e),
            other => Self::Rpc {
                call,
                source: Box::new(other),
            },
        }
    }

    /// Sorts a provider (transport) error.
    pub(crate) fn from_transport(call: &'static str, url: &str, err: TransportError) -> Self {
        match err {
            RpcError::Transport(_) => Self::Unreachable {
                call,
                url: url.to_owned(),
                source: err,
            },
            // A node may report a revert without data (e.g. a bare `revert()`).
            RpcError::ErrorResp(ref payload) if payload.message.contains("revert") => {
                Self::Reverted {
                    call,
                    reason: payload.message.to_string(),
                }
            }
            other => Self::Rpc {
                call,
                source: Box::new(ContractError::TransportError(other)),
            },
        }
    }
}

/// Names a revert: our contracts' custom errors (OpenZeppelin's
/// `OwnableUnauthorizedAccount`, `InvalidInitialization`, …) first, then
/// `Error(string)` / `Panic(uint256)`, else the raw data.
fn describe_revert(data: &[u8]) -> String {
    if let Ok(e) = DstackKms::DstackKmsErrors::abi_decode(data) {
        return format!("{e:?}");
    }
    if let Ok(e) = DstackApp::DstackAppErrors::abi_decode(data) {
        return format!("{e:?}");
    }
    alloy::sol_types::decode_revert_reason(data)
        .unwrap_or_else(|| format!("0x{}", alloy::primitives::hex::encode(data)))
}
