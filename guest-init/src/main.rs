//! `dstack-init`: PID1 of the CVM. All logic lives in the library; this
//! only refuses to run anywhere but as PID1.

use std::process::ExitCode;

/// Exit codes, for the one case where this binary exits at all.
#[repr(u8)]
enum Exit {
    /// Started as an ordinary process, not as the guest's init.
    NotPid1 = 2,
}

fn main() -> ExitCode {
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
