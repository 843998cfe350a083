//! dstack-supervisor: the host daemon that boots and manages dstack CVMs.
//!
//! Layers, outermost first (STYLE rule 10):
//! - [`api`]: the operator REST API (HTTP only). It parses each request into
//!   an [`api::Command`] and hands it to an [`api::RequestHandler`], so it can
//!   be tested against a fake.
//! - [`vmm`]: the [`vmm::Supervisor`], the one `RequestHandler` that really
//!   runs VMs: deploy, start, stop, remove, auto-restart, re-adoption.
//! - The OS edges it drives: [`qemu`] (command line, processes, QMP),
//!   [`vsock`] (the vhost-user backend), [`hostapi`] (what guests ask of the
//!   host), [`sim_tee`] (the TDX module it plays on hosts without TDX),
//!   [`sim_pccs`] (the PCCS serving that module's collateral),
//!   [`key_provider`] (the local key provider behind GetSealingKey),
//!   `kms_proxy` (the operator API's relay to a KMS, for env keys),
//!   [`guest_client`] (what the host asks of guests), [`serial`] and
//!   [`logs`] (rotated logs), [`state`] (files on disk).
#![warn(missing_docs)]

pub mod accel;
pub mod api;
pub mod config;
mod error;
pub mod guest_client;
pub mod hostapi;
pub mod images;
pub mod key_provider;
mod kms_proxy;
pub mod logs;
pub mod qemu;
pub mod serial;
pub mod sim_pccs;
pub mod sim_tee;
pub mod state;
mod sys;
pub mod validate;
pub mod vmm;
pub mod vsock;

pub use error::{VmmError, error_chain};

#[cfg(test)]
mod test_util;
