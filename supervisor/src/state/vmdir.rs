//! The files of one VM, `<state>/vms/<id>/`.

use std::path::{Path, PathBuf};

use dstack_proto::host::HOST_API_PORT;

/// Paths inside one VM's directory. Names are fixed so that a restarted
/// supervisor (or an operator) finds everything without a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDir {
    root: PathBuf,
}

impl VmDir {
    /// The directory of VM `id` under `vms_dir`.
    pub fn new(vms_dir: &Path, id: &str) -> Self {
        Self {
            root: vms_dir.join(id),
        }
    }

    /// A VM directory at exactly this path (e.g. a staging directory).
    pub fn at(root: PathBuf) -> Self {
        Self { root }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// DeployRequest fields plus id, cid, creation time and desired state.
    pub fn manifest(&self) -> PathBuf {
        self.root.join("manifest.json")
    }

    /// The exact bytes of app-compose.json (compose-hash input).
    pub fn app_compose(&self) -> PathBuf {
        self.root.join("app-compose.json")
    }

    /// The blobs (packed build contexts) the VM was deployed with, each
    /// named by its SHA-256 hex; the guest fetches them over the host API.
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// The instance identity the guest asked us to keep.
    pub fn instance_info(&self) -> PathBuf {
        self.root.join("instance-info.json")
    }

    /// The simulated TD's measurements (sim TEE hosts only).
    pub fn sim_td(&self) -> PathBuf {
        self.root.join("sim-td.json")
    }

    /// The data disk (sparse raw).
    pub fn disk(&self) -> PathBuf {
        self.root.join("disk.img")
    }

    /// The serial console log (rotated).
    pub fn serial_log(&self) -> PathBuf {
        self.root.join("serial.log")
    }

    /// Guest log lines as JSON lines (rotated).
    pub fn app_log(&self) -> PathBuf {
        self.root.join("app.log")
    }

    /// The last guest notifications and the phase they imply.
    pub fn events(&self) -> PathBuf {
        self.root.join("events.json")
    }

    /// QEMU's pid.
    pub fn qemu_pid(&self) -> PathBuf {
        self.root.join("qemu.pid")
    }

    /// QEMU's stdout and stderr.
    pub fn qemu_log(&self) -> PathBuf {
        self.root.join("qemu.log")
    }

    /// vhost-device-vsock's pid.
    pub fn vsock_pid(&self) -> PathBuf {
        self.root.join("vsock.pid")
    }

    /// vhost-device-vsock's stdout and stderr.
    pub fn vsock_log(&self) -> PathBuf {
        self.root.join("vsock.log")
    }

    /// QEMU's QMP socket.
    pub fn qmp_sock(&self) -> PathBuf {
        self.root.join("qmp.sock")
    }

    /// QEMU's serial console socket (the supervisor reads it).
    pub fn serial_sock(&self) -> PathBuf {
        self.root.join("serial.sock")
    }

    /// The vhost-user socket between QEMU and vhost-device-vsock.
    pub fn vhost_sock(&self) -> PathBuf {
        self.root.join("vhost.sock")
    }

    /// Host → guest vsock: connect, write `CONNECT <port>\n`.
    pub fn vsock(&self) -> PathBuf {
        self.root.join("vsock")
    }

    /// Guest → host vsock port `port` lands on this listener.
    pub fn vsock_listener(&self, port: u32) -> PathBuf {
        self.root.join(format!("vsock_{port}"))
    }

    /// The host API listener (guest → host port 10000).
    pub fn host_api_sock(&self) -> PathBuf {
        self.vsock_listener(HOST_API_PORT)
    }

    /// Sockets and pid files of a run: stale once the processes are gone.
    pub fn run_files(&self) -> [PathBuf; 6] {
        [
            self.qemu_pid(),
            self.vsock_pid(),
            self.qmp_sock(),
            self.serial_sock(),
            self.vhost_sock(),
            self.vsock(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let dir = VmDir::new(Path::new("/s/vms"), "ab12cd34");
        assert_eq!(
            dir.host_api_sock(),
            Path::new("/s/vms/ab12cd34/vsock_10000")
        );
        assert_eq!(dir.vsock(), Path::new("/s/vms/ab12cd34/vsock"));
        assert_eq!(dir.manifest(), Path::new("/s/vms/ab12cd34/manifest.json"));
    }
}
