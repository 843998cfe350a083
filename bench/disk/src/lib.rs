//! `disk-bench`: what the guest's data-disk encryption costs.
//!
//! Run as PID1 of a small VM (bench/disk/run) with two equal virtio disks,
//! it formats the first as the guest does (LUKS2 by `dstack-luks2`,
//! dm-crypt through `dstack-devmapper`), runs the same O_DIRECT workloads on
//! the mapping and on the plain second disk, and prints the figures on the
//! serial console ([`report`]); on the host, `disk-bench report` turns the
//! serial log into the table and the encrypted/plain ratios.

pub mod cli;
pub mod config;
pub mod guest;
pub mod report;
pub mod rng;
pub mod sysinfo;
