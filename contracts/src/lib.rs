//! dstack's on-chain governance: the KmsAuth (`DstackKms`) and AppAuth
//! (`DstackApp`) contracts, compiled into `out/` by `contracts/build`, and the
//! Rust side of them.
//!
//! - [`ChainAuth`]: the read-only client the KMS asks before releasing keys
//!   (`isAppAllowed`, `isKmsAllowed`, the gateway app id).
//! - [`admin`]: owner actions over a local signer (deploy, allow-lists).
//! - [`inspect`]: what a contract allows now, for operators.
//! - [`anvil`]: a throwaway local chain from the pinned anvil, for tests.
//! - [`bindings`]: the `sol!` bindings generated from the committed artifacts.
#![warn(missing_docs)]

pub mod admin;
pub mod anvil;
pub mod bindings;
mod boot_info;
mod client;
mod error;
pub mod inspect;

pub use boot_info::{AppBootInfo, Verdict, fixed, parse_address};
pub use client::{ChainAuth, public_endpoint};
pub use error::ChainError;

/// The alloy version these bindings are built with, for callers that decode
/// logs or build their own calls.
pub use alloy;
