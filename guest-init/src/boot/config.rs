//! Where a boot finds things, and the names of its phases.

use std::path::PathBuf;
use std::time::Duration;

use dstack_proto::guest::GUEST_CONTROL_PORT;

use crate::hostapi::HostEndpoint;
use crate::hostshared;

/// Phase names, in boot order.
pub mod phase {
    /// Early pseudo-filesystems.
    pub const MOUNTS: &str = "mounting filesystems";
    /// Kernel modules.
    pub const MODULES: &str = "loading modules";
    /// Fetching the config bundle.
    pub const HOST: &str = "connecting to host";
    /// Hostname and compose.
    pub const CONFIG: &str = "applying config";
    /// Network (identity and keys in the background).
    pub const NETWORK_AND_DISK: &str = "configuring network and keys";
    /// The app's env decrypted, the compose read, the encrypted data disk opened.
    pub const UNLOCK: &str = "unlocking env and data disk";
    /// Registering with dstack-gateway and bringing up the tunnel
    /// (upstream's progress message).
    pub const GATEWAY: &str = "setting up dstack-gateway";
    /// Build contexts shipped with the app, fetched and checked.
    pub const BUILD_CONTEXTS: &str = "fetching build contexts";
    /// Image pulls.
    pub const PULL: &str = "pulling images";
    /// Container starts.
    pub const START: &str = "starting containers";
    /// Everything runs.
    pub const RUNNING: &str = dstack_proto::host::events::PHASE_RUNNING;
    /// The boot failed.
    pub const FAILED: &str = "failed";
}

/// Paths and endpoints of a boot; [`Default`] is the guest's.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// The console stdout/stderr go to.
    pub console: PathBuf,
    /// cgroup v2 root.
    pub cgroup_root: PathBuf,
    /// `/lib/modules`.
    pub modules_root: PathBuf,
    /// The host API.
    pub host: HostEndpoint,
    /// How long to keep trying to reach the host at boot.
    pub host_patience: Duration,
    /// The data disk device.
    pub data_device: PathBuf,
    /// Its mount point.
    pub data_dir: PathBuf,
    /// Runtime state directory.
    pub run_dir: PathBuf,
    /// The guest API socket directory (`/var/run` links to `/run`).
    pub guest_socket_dir: PathBuf,
    /// Upstream's host-shared file directory.
    pub host_shared_dir: PathBuf,
    /// The guest's `/etc`.
    pub etc_dir: PathBuf,
    /// `/var/run`, made a link to `/run`.
    pub var_run: PathBuf,
    /// `/sys/class/input`, searched for the ACPI power button.
    pub input_class: PathBuf,
    /// The guest control vsock port (`None`: no guest control, for tests).
    pub control_port: Option<u32>,
    /// Configure the network (`false` leaves the machine's as it is: tests).
    pub configure_network: bool,
}

impl Default for BootConfig {
    fn default() -> Self {
        Self {
            console: "/dev/console".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
            modules_root: "/lib/modules".into(),
            host: HostEndpoint::default(),
            host_patience: Duration::from_secs(15),
            data_device: "/dev/vda".into(),
            data_dir: "/data".into(),
            run_dir: "/run/dstack".into(),
            guest_socket_dir: "/var/run/dstack".into(),
            host_shared_dir: hostshared::HOST_SHARED_DIR.into(),
            etc_dir: "/etc".into(),
            var_run: "/var/run".into(),
            input_class: "/sys/class/input".into(),
            control_port: Some(GUEST_CONTROL_PORT),
            configure_network: true,
        }
    }
}
