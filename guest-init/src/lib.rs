//! dstack-init: the guest's PID1.
//!
//! It runs as the only process the kernel starts (no shell, no systemd) and
//! does, in order: early mounts, kernel modules, the host API over vsock,
//! network, data disk, the app's compose services, and guest control; then
//! it reaps zombies and waits for a shutdown request (SIGTERM, ctrl-alt-del,
//! ACPI power button, or the host), and goes down cleanly.
//!
//! The system side is one concern per module; the compose services live in
//! [`containers`]. Every privileged call goes through [`sys::Syscall`].
#![warn(missing_docs)]

pub mod app;
pub mod boot;
pub mod build_context;
pub mod console;
pub mod containers;
pub mod control;
pub mod disk;
pub mod gateway;
pub mod hostapi;
pub mod hostshared;
pub mod identity;
pub mod local_key;
pub mod logship;
pub mod measure;
pub mod modules;
pub mod mounts;
pub mod netlink;
pub mod network;
pub mod notify;
pub mod pid1;
pub mod power;
pub mod probe;
pub mod reaper;
pub mod services;
pub mod shutdown;
pub mod state;
pub mod sys;
pub mod tee;
#[cfg(test)]
mod testutil;
