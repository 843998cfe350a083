//! The host side of a guest's vsock device.
//!
//! Where the host kernel has `/dev/vhost-vsock`, QEMU uses it directly.
//! Otherwise (this machine) each VM gets its own `vhost-device-vsock`, a
//! vhost-user backend that maps guest→host port P to the unix listener
//! `<vm>/vsock_P` and host→guest connections to `<vm>/vsock` (DESIGN §6).

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::qemu::argv::VsockKind;
use crate::qemu::process::{LaunchError, Proc, log_tail, write_pid};
use crate::state::VmDir;

/// The kernel's vhost-vsock device.
pub const VHOST_VSOCK_DEV: &str = "/dev/vhost-vsock";

/// How this host provides vsock to guests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VsockDevice {
    /// `/dev/vhost-vsock` (QEMU opens it itself).
    Kernel,
    /// A vhost-device-vsock process per VM.
    VhostUser {
        /// The vhost-device-vsock binary.
        binary: PathBuf,
    },
}

impl VsockDevice {
    /// The kernel device when we can open it, else the vhost-user `binary`.
    pub fn detect(binary: PathBuf) -> Self {
        let usable = OpenOptions::new()
            .read(true)
            .write(true)
            .open(VHOST_VSOCK_DEV)
            .is_ok();
        if usable {
            VsockDevice::Kernel
        } else {
            VsockDevice::VhostUser { binary }
        }
    }

    /// What QEMU's command line needs to know.
    pub fn kind(&self) -> VsockKind {
        match self {
            VsockDevice::Kernel => VsockKind::Kernel,
            VsockDevice::VhostUser { .. } => VsockKind::VhostUser,
        }
    }
}

/// vhost-device-vsock's arguments for VM `dir` with guest CID `cid`.
pub fn backend_args(cid: u32, dir: &VmDir) -> Vec<String> {
    vec![
        "--vm".into(),
        format!(
            "guest-cid={cid},socket={},uds-path={}",
            dir.vhost_sock().display(),
            dir.vsock().display()
        ),
    ]
}

/// What identifies a VM's backend in `/proc/<pid>/cmdline`: its socket path.
pub fn backend_marker(dir: &VmDir) -> String {
    format!("socket={},", dir.vhost_sock().display())
}

/// Starts the backend and waits until its vhost-user socket exists, so QEMU
/// can connect to it. Writes `vsock.pid`.
pub async fn start_backend(binary: &Path, cid: u32, dir: &VmDir) -> Result<Proc, LaunchError> {
    for stale in [dir.vhost_sock(), dir.vsock()] {
        remove_if_exists(&stale).map_err(|source| LaunchError::Io {
            path: stale.clone(),
            source,
        })?;
    }
    let proc = Proc::spawn(binary, &backend_args(cid, dir), &dir.vsock_log())?;
    let pid_file = dir.vsock_pid();
    if let Err(source) = write_pid(&pid_file, proc.pid()) {
        stop_backend(&proc).await;
        return Err(LaunchError::Io {
            path: pid_file,
            source,
        });
    }
    let timeout = Duration::from_secs(10);
    let started = Instant::now();
    while !dir.vhost_sock().exists() {
        if !proc.is_running() {
            let status = proc.wait().await;
            return Err(LaunchError::ExitedEarly {
                what: "vhost-device-vsock",
                status: status.map_or_else(|| "unknown status".into(), |s| s.to_string()),
                log_tail: log_tail(&dir.vsock_log(), 400),
            });
        }
        if started.elapsed() > timeout {
            stop_backend(&proc).await;
            return Err(LaunchError::NotReady {
                what: "vhost-device-vsock",
                path: dir.vhost_sock(),
                secs: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(proc)
}

/// Stops a backend: SIGTERM, then SIGKILL after 2 s.
pub async fn stop_backend(proc: &Proc) {
    let _ = proc.signal(Signal::TERM);
    if !proc.wait_timeout(Duration::from_secs(2)).await {
        let _ = proc.signal(Signal::KILL);
        proc.wait_timeout(Duration::from_secs(5)).await;
    }
}

/// Removes a file, treating "already gone" as success.
pub fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_command_line() {
        let dir = VmDir::new(Path::new("/s/vms"), "0a1b2c3d");
        assert_eq!(
            backend_args(5, &dir),
            [
                "--vm",
                "guest-cid=5,socket=/s/vms/0a1b2c3d/vhost.sock,uds-path=/s/vms/0a1b2c3d/vsock"
            ]
        );
        assert!(backend_args(5, &dir)[1].contains(&backend_marker(&dir)));
    }

    #[tokio::test]
    async fn a_backend_that_dies_is_reported_with_its_log() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = VmDir::at(tmp.path().to_owned());
        let fake = tmp.path().join("fake-backend");
        std::fs::write(&fake, "#!/bin/sh\necho 'bad option' >&2\nexit 3\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = start_backend(&fake, 3, &dir).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("exited during start-up"), "{text}");
        assert!(text.contains("bad option"), "{text}");
    }

    #[tokio::test]
    async fn a_backend_is_ready_when_its_socket_appears() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = VmDir::at(tmp.path().to_owned());
        let fake = tmp.path().join("fake-backend");
        // Parses --vm like the real one just enough to create the socket path.
        let script = "#!/bin/sh\nsock=$(echo \"$2\" | sed 's/.*socket=\\([^,]*\\),.*/\\1/')\nsleep 0.2; touch \"$sock\"; exec sleep 30\n";
        std::fs::write(&fake, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let proc = start_backend(&fake, 3, &dir).await.unwrap();
        assert!(dir.vhost_sock().exists());
        assert_eq!(
            crate::qemu::process::read_pid(&dir.vsock_pid()),
            Some(proc.pid())
        );
        stop_backend(&proc).await;
        assert!(!proc.is_running());
    }
}
