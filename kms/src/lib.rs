//! The dstack KMS: releases an app's keys only after verifying its quote and
//! event log and finding it authorised, and derives them exactly as
//! upstream's KMS does (UPSTREAM §4.3, §7).
//!
//! - [`keystore`]: the root keys on disk, written once, all or nothing
//!   (the `dstack-kms-keystore` crate, which the simulator shares).
//! - [`boot_info`]: a caller's boot info from its verified evidence.
//! - [`evidence`]: one check of quotes, event logs and key bindings.
//! - [`auth`]: authorisation backends (policy file, auth webhook, KmsAuth contract).
//! - [`service`]: the KMS methods, transport-free, with [`metrics`].
//! - [`onboard`]: bootstrap or onboard a KMS without keys.
//! - [`server`]: the methods over HTTPS at upstream's pRPC paths.
//! - [`tee`]: what the KMS asks of the CVM it runs in (sealing key, evidence).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub use dstack_ra_tls::boot_info;
pub use dstack_ra_tls::evidence;
pub mod metrics;
pub mod onboard;
pub mod server;
pub mod service;
pub mod tee;

pub use dstack_kms_keystore as keystore;

pub use service::{Kms, KmsError};
