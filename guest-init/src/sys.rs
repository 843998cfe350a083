//! Every privileged kernel call PID1 makes, behind one trait.
//!
//! The boot and shutdown sequences talk only to [`Syscall`], so tests run
//! them against [`fake::RecordingSyscall`], which records each call instead
//! of touching the machine (youki's `Syscall` / `TestHelperSyscall` split).
//! The real implementation uses `nix`'s safe wrappers: this module needs no
//! `unsafe` at all.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::reboot::{RebootMode, reboot, set_cad_enabled};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, dup2, sethostname};

/// A mount request: what `mount(2)` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Source device or pseudo-filesystem name.
    pub source: String,
    /// Mount point.
    pub target: String,
    /// Filesystem type.
    pub fstype: String,
    /// `MS_*` flags.
    pub flags: MsFlags,
    /// Filesystem-specific options, e.g. `mode=0755`.
    pub data: Option<String>,
}

/// How PID1 ends the machine or changes what ctrl-alt-del does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootCmd {
    /// Power off (`RB_POWER_OFF`).
    PowerOff,
    /// Make ctrl-alt-del send SIGINT to PID1 instead of rebooting at once
    /// (`LINUX_REBOOT_CMD_CAD_OFF`).
    CadOff,
}

/// The privileged operations PID1 performs.
pub trait Syscall: Send + Sync + std::fmt::Debug {
    /// Creates a directory and its parents with `mode` (existing ones are fine).
    fn mkdir_all(&self, path: &Path, mode: u32) -> Result<(), Errno>;
    /// `mount(2)`.
    fn mount(&self, spec: &MountSpec) -> Result<(), Errno>;
    /// `umount2(2)` without flags.
    fn umount(&self, target: &Path) -> Result<(), Errno>;
    /// Opens a kernel module file and loads it with `finit_module(2)`.
    fn load_module(&self, path: &Path) -> Result<(), Errno>;
    /// `reboot(2)`; returns only on failure (or in the fake).
    fn reboot(&self, cmd: RebootCmd) -> Result<(), Errno>;
    /// `sethostname(2)`.
    fn set_hostname(&self, name: &str) -> Result<(), Errno>;
    /// `sync(2)`.
    fn sync(&self);
    /// Points stdin at `/dev/null` and stdout and stderr at `console`.
    fn attach_console(&self, console: &Path) -> Result<(), Errno>;
    /// Reaps one exited child without blocking (`waitpid(-1, WNOHANG)`);
    /// `None` when no child has exited.
    fn reap_any(&self) -> Option<(i32, ExitStatus)>;
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

fn errno_of(e: &std::io::Error) -> Errno {
    e.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

/// Re-encodes a decoded wait status as the raw `wstatus` word std expects.
fn exit_status_of(status: WaitStatus) -> Option<(i32, ExitStatus)> {
    match status {
        WaitStatus::Exited(pid, code) => {
            Some((pid.as_raw(), ExitStatus::from_raw((code & 0xff) << 8)))
        }
        WaitStatus::Signaled(pid, signal, core) => {
            let raw = (signal as i32) | if core { 0x80 } else { 0 };
            Some((pid.as_raw(), ExitStatus::from_raw(raw)))
        }
        _ => None,
    }
}

impl Syscall for LinuxSyscall {
    fn mkdir_all(&self, path: &Path, mode: u32) -> Result<(), Errno> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(|e| errno_of(&e))
    }

    fn mount(&self, spec: &MountSpec) -> Result<(), Errno> {
        nix::mount::mount(
            Some(spec.source.as_str()),
            spec.target.as_str(),
            Some(spec.fstype.as_str()),
            spec.flags,
            spec.data.as_deref(),
        )
    }

    fn umount(&self, target: &Path) -> Result<(), Errno> {
        nix::mount::umount2(target, MntFlags::empty())
    }

    fn load_module(&self, path: &Path) -> Result<(), Errno> {
        let file = File::open(path).map_err(|e| errno_of(&e))?;
        // The image stores modules decompressed, so no flags are needed.
        finit_module(&file, &CString::default(), ModuleInitFlags::empty())
    }

    fn reboot(&self, cmd: RebootCmd) -> Result<(), Errno> {
        match cmd {
            RebootCmd::PowerOff => reboot(RebootMode::RB_POWER_OFF).map(|_| ()),
            RebootCmd::CadOff => set_cad_enabled(false),
        }
    }

    fn set_hostname(&self, name: &str) -> Result<(), Errno> {
        sethostname(name)
    }

    fn sync(&self) {
        nix::unistd::sync();
    }

    fn attach_console(&self, console: &Path) -> Result<(), Errno> {
        let out = File::options()
            .write(true)
            .open(console)
            .map_err(|e| errno_of(&e))?;
        let null = File::open("/dev/null").map_err(|e| errno_of(&e))?;
        dup2(null.as_raw_fd(), 0)?;
        dup2(out.as_raw_fd(), 1)?;
        dup2(out.as_raw_fd(), 2)?;
        Ok(())
    }

    fn reap_any(&self) -> Option<(i32, ExitStatus)> {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return None,
                Ok(status) => {
                    if let Some(reaped) = exit_status_of(status) {
                        return Some(reaped);
                    }
                    // Stopped/continued children are not exits: look again.
                }
            }
        }
    }
}

/// A [`Syscall`] that records calls instead of making them.
#[cfg(test)]
pub(crate) mod fake {
    use std::collections::{HashMap, VecDeque};
    use std::sync::Mutex;

    use super::*;

    /// One recorded call.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Call {
        Mkdir(String),
        Mount(MountSpec),
        Umount(String),
        LoadModule(String),
        Reboot(RebootCmd),
        SetHostname(String),
        Sync,
        AttachConsole(String),
    }

    /// Records every call; answers with scripted errors and exits.
    #[derive(Debug, Default)]
    pub(crate) struct RecordingSyscall {
        calls: Mutex<Vec<Call>>,
        /// Errors to return, keyed by the path or target the call names.
        failures: Mutex<HashMap<String, Errno>>,
        /// Children to report from `reap_any`, in order.
        exits: Mutex<VecDeque<(i32, ExitStatus)>>,
    }

    impl RecordingSyscall {
        /// Makes every later call naming `key` fail with `errno`.
        pub(crate) fn fail(&self, key: &str, errno: Errno) {
            self.failures.lock().unwrap().insert(key.to_owned(), errno);
        }

        /// Queues a child exit for `reap_any`.
        pub(crate) fn push_exit(&self, pid: i32, code: i32) {
            let status = ExitStatus::from_raw(code << 8);
            self.exits.lock().unwrap().push_back((pid, status));
        }

        /// The calls so far.
        pub(crate) fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }

        fn record(&self, call: Call, key: &str) -> Result<(), Errno> {
            self.calls.lock().unwrap().push(call);
            match self.failures.lock().unwrap().get(key) {
                Some(errno) => Err(*errno),
                None => Ok(()),
            }
        }
    }

    fn s(path: &Path) -> String {
        path.display().to_string()
    }

    impl Syscall for RecordingSyscall {
        fn mkdir_all(&self, path: &Path, _mode: u32) -> Result<(), Errno> {
            self.record(Call::Mkdir(s(path)), &format!("mkdir {}", s(path)))
        }
        fn mount(&self, spec: &MountSpec) -> Result<(), Errno> {
            self.record(Call::Mount(spec.clone()), &spec.target)
        }
        fn umount(&self, target: &Path) -> Result<(), Errno> {
            self.record(Call::Umount(s(target)), &format!("umount {}", s(target)))
        }
        fn load_module(&self, path: &Path) -> Result<(), Errno> {
            self.record(Call::LoadModule(s(path)), &s(path))
        }
        fn reboot(&self, cmd: RebootCmd) -> Result<(), Errno> {
            self.record(Call::Reboot(cmd), &format!("{cmd:?}"))
        }
        fn set_hostname(&self, name: &str) -> Result<(), Errno> {
            self.record(Call::SetHostname(name.to_owned()), "hostname")
        }
        fn sync(&self) {
            self.calls.lock().unwrap().push(Call::Sync);
        }
        fn attach_console(&self, console: &Path) -> Result<(), Errno> {
            self.record(Call::AttachConsole(s(console)), &s(console))
        }
        fn reap_any(&self) -> Option<(i32, ExitStatus)> {
            self.exits.lock().unwrap().pop_front()
        }
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::signal::Signal;

    use super::*;

    #[test]
    fn wait_statuses_round_trip_to_std() {
        let (pid, st) = exit_status_of(WaitStatus::Exited(Pid::from_raw(7), 3)).unwrap();
        assert_eq!((pid, st.code()), (7, Some(3)));
        let (_, st) = exit_status_of(WaitStatus::Signaled(
            Pid::from_raw(8),
            Signal::SIGKILL,
            false,
        ))
        .unwrap();
        assert_eq!((st.code(), st.signal()), (None, Some(9)));
        assert!(exit_status_of(WaitStatus::StillAlive).is_none());
    }
}
