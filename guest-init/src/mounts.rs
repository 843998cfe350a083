//! The pseudo-filesystems PID1 mounts before anything else, and cgroup v2
//! controller delegation.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;

use crate::sys::{MountSpec, Syscall};

/// A mount step failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// Creating a mount point failed.
    #[error("cannot create mount point {target}")]
    MountPoint {
        /// The mount point.
        target: String,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// `mount(2)` failed.
    #[error("cannot mount {fstype} at {target}")]
    Mount {
        /// Filesystem type.
        fstype: String,
        /// The mount point.
        target: String,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// Enabling cgroup controllers failed.
    #[error("cannot enable cgroup controllers in {path}")]
    Cgroup {
        /// The `cgroup.subtree_control` path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn spec(source: &str, target: &str, fstype: &str, flags: MsFlags, data: &str) -> MountSpec {
    MountSpec {
        source: source.into(),
        target: target.into(),
        fstype: fstype.into(),
        flags,
        data: (!data.is_empty()).then(|| data.into()),
    }
}

/// The mounts of a fresh guest, in order (parents before children).
///
/// `/dev` is devtmpfs because the kernel has `DEVTMPFS_MOUNT` off; the
/// initramfs root itself stays where it is (containers run without
/// pivot_root, DESIGN §6).
pub fn early_mounts() -> Vec<MountSpec> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    vec![
        spec("proc", "/proc", "proc", nosuid_nodev_noexec, ""),
        spec("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, ""),
        spec(
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            "mode=0755",
        ),
        spec(
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            "gid=5,mode=0620,ptmxmode=0666",
        ),
        spec(
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            "mode=1777",
        ),
        spec(
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            "mode=0755",
        ),
        spec(
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            "mode=1777",
        ),
        spec(
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid_nodev_noexec,
            "nsdelegate",
        ),
    ]
}

/// configfs: a module in the Debian cloud kernel (pulled in by `tsm`), so it
/// is mounted after the modules are loaded.
pub fn configfs_mount() -> MountSpec {
    spec(
        "configfs",
        "/sys/kernel/config",
        "configfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        "",
    )
}

/// Creates each mount point and mounts it; `EBUSY` (already mounted, e.g.
/// by a kernel that mounts devtmpfs itself) is not an error.
pub fn mount_all(sys: &dyn Syscall, mounts: &[MountSpec]) -> Result<(), MountError> {
    for m in mounts {
        sys.mkdir_all(Path::new(&m.target), 0o755)
            .map_err(|source| MountError::MountPoint {
                target: m.target.clone(),
                source,
            })?;
        match sys.mount(m) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(source) => {
                return Err(MountError::Mount {
                    fstype: m.fstype.clone(),
                    target: m.target.clone(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The controllers delegated to child cgroups (containers), where the
/// kernel has them.
pub const WANTED_CONTROLLERS: &[&str] = &["cpu", "memory", "pids", "io"];

/// Which of `wanted` the kernel offers, given `cgroup.controllers` text.
pub fn available_controllers<'a>(controllers: &str, wanted: &[&'a str]) -> Vec<&'a str> {
    let offered: Vec<&str> = controllers.split_whitespace().collect();
    wanted
        .iter()
        .copied()
        .filter(|c| offered.contains(c))
        .collect()
}

/// Enables [`WANTED_CONTROLLERS`] in `root`'s `cgroup.subtree_control`;
/// returns the ones enabled.
pub fn enable_controllers(root: &Path) -> Result<Vec<&'static str>, MountError> {
    let controllers = root.join("cgroup.controllers");
    let text = fs::read_to_string(&controllers).map_err(|source| MountError::Cgroup {
        path: controllers,
        source,
    })?;
    let enable = available_controllers(&text, WANTED_CONTROLLERS);
    if enable.is_empty() {
        return Ok(enable);
    }
    let line: Vec<String> = enable.iter().map(|c| format!("+{c}")).collect();
    let path = root.join("cgroup.subtree_control");
    fs::write(&path, line.join(" ")).map_err(|source| MountError::Cgroup { path, source })?;
    Ok(enable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, RecordingSyscall};

    #[test]
    fn mounts_parents_first_and_tolerates_ebusy() {
        let sys = RecordingSyscall::default();
        sys.fail("/dev", Errno::EBUSY);
        mount_all(&sys, &early_mounts()).unwrap();
        let targets: Vec<String> = sys
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Mount(m) => Some(m.target),
                _ => None,
            })
            .collect();
        let pos = |t: &str| targets.iter().position(|x| x == t).unwrap();
        assert!(pos("/dev") < pos("/dev/pts"));
        assert!(pos("/sys") < pos("/sys/fs/cgroup"));
        assert_eq!(targets.len(), 8);
    }

    #[test]
    fn a_failed_mount_names_its_target() {
        let sys = RecordingSyscall::default();
        sys.fail("/proc", Errno::EPERM);
        let err = mount_all(&sys, &early_mounts()).unwrap_err();
        assert_eq!(err.to_string(), "cannot mount proc at /proc");
    }

    #[test]
    fn enables_only_offered_controllers() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("cgroup.controllers"),
            "cpuset cpu io pids\n",
        )
        .unwrap();
        let enabled = enable_controllers(dir.path()).unwrap();
        assert_eq!(enabled, ["cpu", "pids", "io"]);
        let written = fs::read_to_string(dir.path().join("cgroup.subtree_control")).unwrap();
        assert_eq!(written, "+cpu +pids +io");
    }
}
