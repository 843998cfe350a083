//! The long-lived processes of a VM (QEMU and vhost-device-vsock): starting
//! them detached, recognising them again after a supervisor restart, waiting
//! for them to exit, and signalling them.
//!
//! They run in their own process group with output in files, so a
//! supervisor crash (or a Ctrl-C in its terminal) leaves them running.
//! Exit is observed through a pidfd, which also pins the process identity so
//! a signal can never hit a recycled pid.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use rustix::process::{Pid, PidfdFlags, Signal};
use tokio::io::unix::AsyncFd;

use crate::state::write_atomic;

/// Why QEMU or the vsock backend could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The binary could not be executed.
    #[error("cannot run {}", program.display())]
    Spawn {
        /// The binary.
        program: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// It exited before it was ready.
    #[error("{what} exited during start-up ({status}); its log ends: {log_tail}")]
    ExitedEarly {
        /// `qemu` or `vhost-device-vsock`.
        what: &'static str,
        /// How it exited.
        status: String,
        /// The end of its log file.
        log_tail: String,
    },
    /// It did not become ready in time.
    #[error("{what} did not create {} within {secs} s", path.display())]
    NotReady {
        /// `qemu` or `vhost-device-vsock`.
        what: &'static str,
        /// The socket we waited for.
        path: PathBuf,
        /// How long we waited.
        secs: u64,
    },
    /// The simulated TDX module could not be set up for the VM.
    #[error("cannot set up the VM's simulated TDX module")]
    SimTee(#[source] crate::sim_tee::SimTeeError),
    /// The boot could not be measured for the simulated TEE.
    #[error("cannot measure the boot for the simulated TEE")]
    Measure(#[source] dstack_machine::MeasureError),
    /// The VM's image is gone or broken.
    #[error("image {0:?} is not available")]
    Image(String),
    /// Preparing the VM directory failed.
    #[error("cannot prepare {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A running (or just exited) process we started or adopted.
#[derive(Debug)]
pub struct Proc {
    pid: u32,
    /// Present when pidfds work (Linux ≥ 5.3); otherwise we poll /proc.
    pidfd: Option<AsyncFd<OwnedFd>>,
    /// Present when it is our child, so its zombie can be reaped.
    child: Mutex<Option<Child>>,
}

impl Proc {
    /// Starts `program` detached: own process group, stdin from /dev/null,
    /// stdout and stderr appended to `log`. Must be called inside a tokio runtime.
    pub fn spawn(program: &Path, args: &[String], log: &Path) -> Result<Self, LaunchError> {
        let io_err = |source| LaunchError::Io {
            path: log.to_owned(),
            source,
        };
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_err)?;
        let err = out.try_clone().map_err(io_err)?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|source| LaunchError::Spawn {
                program: program.to_owned(),
                source,
            })?;
        let pid = child.id();
        Ok(Self {
            pid,
            pidfd: open_pidfd(pid),
            child: Mutex::new(Some(child)),
        })
    }

    /// Takes over a process that is not our child (started by a previous
    /// supervisor). `None` if it is no longer running.
    pub fn adopt(pid: u32) -> Option<Self> {
        let proc = Self {
            pid,
            pidfd: open_pidfd(pid),
            child: Mutex::new(None),
        };
        // Checked after opening the pidfd: if it was alive then, the pidfd
        // refers to this very process even if the pid is recycled later.
        proc.is_running().then_some(proc)
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it is still running (a zombie is not).
    pub fn is_running(&self) -> bool {
        is_running(self.pid)
    }

    /// Sends a signal. An already exited process is not an error.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        let result = match &self.pidfd {
            Some(fd) => rustix::process::pidfd_send_signal(fd.get_ref(), signal),
            None => {
                let pid = Pid::from_raw(self.pid as i32).ok_or(io::ErrorKind::InvalidInput)?;
                rustix::process::kill_process(pid, signal)
            }
        };
        match result {
            Err(rustix::io::Errno::SRCH) => Ok(()),
            other => other.map_err(io::Error::from),
        }
    }

    /// Waits until it exits. Returns its status when it was our child (a
    /// non-child is reaped by init, and its status is not ours to see).
    pub async fn wait(&self) -> Option<ExitStatus> {
        match &self.pidfd {
            // A pidfd polls readable once the process has exited.
            Some(fd) => match fd.readable().await {
                Ok(mut guard) => guard.retain_ready(),
                Err(_) => self.poll_until_exit().await,
            },
            None => self.poll_until_exit().await,
        }
        self.reap()
    }

    /// Waits at most `timeout` for it to exit; true if it did.
    pub async fn wait_timeout(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.wait()).await.is_ok()
    }

    /// Reaps our child's zombie, if it has exited.
    fn reap(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    async fn poll_until_exit(&self) {
        while self.is_running() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn open_pidfd(pid: u32) -> Option<AsyncFd<OwnedFd>> {
    let pid = Pid::from_raw(pid as i32)?;
    let fd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok()?;
    crate::sys::async_readable(fd).ok()
}

/// Whether `pid` exists and is not a zombie.
pub fn is_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised comm, which may itself contain
        // spaces and parentheses: take the text after the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The arguments of a running process, from `/proc/<pid>/cmdline`.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let bytes = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        bytes
            .split(|b| *b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect(),
    )
}

/// Whether `pid` runs and one of its arguments contains `needle`: how we tell
/// our QEMU (`dstack-<id>,process=...`) or vsock backend (its socket path)
/// from an unrelated process that got a recycled pid.
pub fn is_ours(pid: u32, needle: &str) -> bool {
    is_running(pid) && cmdline(pid).is_some_and(|args| args.iter().any(|arg| arg.contains(needle)))
}

/// Reads a pid file; `None` when missing or garbage.
pub fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 1)
}

/// Writes a pid file atomically.
pub fn write_pid(path: &Path, pid: u32) -> io::Result<()> {
    write_atomic(path, format!("{pid}\n").as_bytes())
}

/// The last `max` bytes of a log, for error messages.
pub fn log_tail(path: &Path, max: usize) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..])
        .trim()
        .replace('\n', " | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spawn_wait_and_recognise() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("out.log");
        let args = vec![
            "-c".into(),
            // Not ending in a simple command: dash would exec it and lose
            // the marker argument from its cmdline.
            "echo hello-$0; sleep 30; true".into(),
            "marker-xyz".into(),
        ];
        let proc = Proc::spawn(Path::new("/bin/sh"), &args, &log).unwrap();
        assert!(proc.is_running());
        // spawn returns once exec has begun, but the kernel sets the new
        // cmdline a moment later; a real pid file is read much later.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !is_ours(proc.pid(), "marker-xyz") {
            assert!(std::time::Instant::now() < deadline, "never saw the marker");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!is_ours(proc.pid(), "something-else"));
        // Its own process group: a signal to ours does not reach it.
        let pgid = rustix::process::getpgid(Pid::from_raw(proc.pid() as i32)).unwrap();
        assert_eq!(pgid.as_raw_nonzero().get() as u32, proc.pid());

        assert!(!proc.wait_timeout(Duration::from_millis(100)).await);
        proc.signal(Signal::KILL).unwrap();
        let status = proc.wait().await.expect("our child has a status");
        assert!(!status.success());
        assert!(!proc.is_running());
        assert!(!is_ours(proc.pid(), "marker-xyz"), "reaped");
        proc.signal(Signal::KILL).unwrap();
        assert!(log_tail(&log, 100).contains("hello-marker-xyz"));
    }

    #[tokio::test]
    async fn adopt_a_non_child() {
        // A grandchild whose parent exits becomes someone else's child, as a
        // QEMU does after the supervisor restarts.
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}", pid_file.display());
        let status = Command::new("/bin/sh")
            .args(["-c", &script])
            .status()
            .unwrap();
        assert!(status.success());
        let pid = read_pid(&pid_file).unwrap();
        let proc = Proc::adopt(pid).expect("running");
        // The shell's `$!` may be read before the child has exec'd sleep
        // (a window in which /proc/<pid>/cmdline can read empty); a real
        // pid file is written only after exec, when spawn returns.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !is_ours(pid, "sleep") {
            assert!(
                std::time::Instant::now() < deadline,
                "never saw sleep's cmdline"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        proc.signal(Signal::TERM).unwrap();
        assert!(proc.wait_timeout(Duration::from_secs(5)).await);
        assert!(Proc::adopt(pid).is_none());
    }

    #[test]
    fn pid_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qemu.pid");
        assert_eq!(read_pid(&path), None);
        write_pid(&path, 1234).unwrap();
        assert_eq!(read_pid(&path), Some(1234));
        fs::write(&path, "1").unwrap();
        assert_eq!(read_pid(&path), None, "never pid 1");
        fs::write(&path, "x").unwrap();
        assert_eq!(read_pid(&path), None);
    }

    #[test]
    fn running_check() {
        assert!(is_running(std::process::id()));
        assert!(!is_running(u32::MAX - 1));
    }
}
