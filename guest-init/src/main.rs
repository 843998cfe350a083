//! `dstack-init`: PID1 of the CVM. All logic lives in the library; this
//! only refuses to run anywhere but as PID1 — except as the container
//! helper PID1 re-executes (`dstack-init __container <op>`), which must be
//! dispatched before any thread or runtime exists.

use std::process::ExitCode;

use dstack_init::containers::{HELPER_COMMAND, helper_main};

/// Exit codes of PID1 refusing to run (the container helper has its own).
#[repr(u8)]
enum Exit {
    /// Started as an ordinary process, not as the guest's init.
    NotPid1 = 2,
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|arg| arg == HELPER_COMMAND) {
        return helper_main(args);
    }
    let pid = std::process::id();
    if pid != 1 {
        eprintln!(
            "dstack-init: must run as PID 1, the init of a dstack guest (it mounts \
             filesystems, loads modules and powers the machine off); refusing to run as pid {pid}"
        );
        return ExitCode::from(Exit::NotPid1 as u8);
    }
    dstack_init::pid1::main_as_pid1(dstack_init::services::container_runtime())
}
