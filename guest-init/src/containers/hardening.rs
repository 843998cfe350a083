//! What confines a service, docker's defaults unless compose says otherwise:
//! its capability set, the /proc and /sys paths it cannot see or write, and
//! its seccomp filter ([`super::seccomp`]). `privileged: true` lifts all of it.

use dstack_compose::{CapabilityName, LINUX_CAPABILITIES, SeccompMode, Security};
use oci_spec::OciSpecError;
use oci_spec::runtime::LinuxSeccomp;

use super::seccomp;

/// Docker's default capability set (moby `oci/caps/defaults.go`): what a
/// compose user expects a container to be able to do.
pub(crate) const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths a service cannot see (moby `oci/defaults.go`): a bind of /dev/null
/// over files and an empty read-only tmpfs over directories. Kernel memory,
/// key names, timing side channels (interrupts, timer lists) and firmware.
/// Docker also masks each CPU's `thermal_throttle` directory when it exists;
/// a CVM's virtual CPUs have none, so the list is fixed.
pub(crate) const MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Paths a service can read but not write (moby `oci/defaults.go`): kernel
/// tunables and /proc/sysrq-trigger, which would let a service reboot or
/// crash the guest.
pub(crate) const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The capability set (bounding, effective and permitted) of a service, by
/// docker's rules (moby `TweakCapabilities`): privileged gets all; `cap_add:
/// [ALL]` gets all but `cap_drop`; `cap_drop: [ALL]` gets only `cap_add`;
/// otherwise the defaults less `cap_drop` plus `cap_add`.
pub(crate) fn capabilities(security: &Security) -> Vec<&'static str> {
    let named = |list: &[CapabilityName]| -> Vec<&'static str> {
        list.iter()
            .filter_map(|cap| match cap {
                CapabilityName::Cap(name) => Some(*name),
                CapabilityName::All => None,
            })
            .collect()
    };
    let (add, drop) = (named(&security.cap_add), named(&security.cap_drop));
    let mut caps: Vec<&'static str> = if security.privileged {
        return LINUX_CAPABILITIES.to_vec();
    } else if security.cap_add.contains(&CapabilityName::All) {
        LINUX_CAPABILITIES
            .into_iter()
            .filter(|cap| !drop.contains(cap))
            .collect()
    } else if security.cap_drop.contains(&CapabilityName::All) {
        add
    } else {
        DEFAULT_CAPABILITIES
            .into_iter()
            .filter(|cap| !drop.contains(cap))
            .chain(add)
            .collect()
    };
    // cap_add may repeat a default; the kernel's set has each once.
    let mut seen = Vec::with_capacity(caps.len());
    caps.retain(|cap| {
        let first = !seen.contains(cap);
        seen.push(*cap);
        first
    });
    caps
}

/// The seccomp filter of a service holding `caps`: none when privileged or
/// `seccomp=unconfined`, else docker's default profile for those capabilities.
pub(crate) fn seccomp_filter(
    security: &Security,
    caps: &[&str],
) -> Result<Option<LinuxSeccomp>, OciSpecError> {
    match (security.privileged, security.seccomp) {
        (true, _) | (_, SeccompMode::Unconfined) => Ok(None),
        (false, SeccompMode::Default) => seccomp::default_profile(caps.iter().copied()).map(Some),
    }
}

/// A device node of the guest, given to privileged services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GuestDevice {
    /// Absolute path (also the path in the container).
    pub(crate) path: String,
    /// `'c'` or `'b'`.
    pub(crate) kind: char,
    pub(crate) major: u64,
    pub(crate) minor: u64,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// Directories under /dev whose nodes are not devices to pass on: each
/// container mounts its own pts, shm and mqueue (as runc's HostDevices skips).
const SKIPPED_DEV_DIRS: [&str; 4] = ["pts", "shm", "mqueue", "fd"];

/// The node at `path` when it is a character or block device.
fn device_of(path: String, meta: &std::fs::Metadata) -> Option<GuestDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    let file_type = meta.file_type();
    let kind = if file_type.is_char_device() {
        'c'
    } else if file_type.is_block_device() {
        'b'
    } else {
        return None;
    };
    let rdev = meta.rdev();
    Some(GuestDevice {
        path,
        kind,
        major: nix::sys::stat::major(rdev),
        minor: nix::sys::stat::minor(rdev),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// The guest device node at `path` (a `devices:` entry's source), following
/// symlinks as docker does; an error names a path that is not a device.
pub(crate) fn guest_device(path: &std::path::Path) -> std::io::Result<GuestDevice> {
    let meta = std::fs::metadata(path)?;
    device_of(path.display().to_string(), &meta).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a character or block device",
        )
    })
}

/// The guest's character and block devices under `dev` (normally /dev), for
/// a privileged service: docker gives such a container every host device.
/// The console is left out: it is the guest's log, owned by PID1.
pub(crate) fn guest_devices(dev: &std::path::Path) -> std::io::Result<Vec<GuestDevice>> {
    let mut found = Vec::new();
    let mut dirs = vec![(dev.to_path_buf(), String::from("/dev"))];
    while let Some((dir, in_container)) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = format!("{in_container}/{name}");
            // symlink_metadata: symlinks (e.g. /dev/fd, /dev/stdin) are not devices.
            let meta = entry.path().symlink_metadata()?;
            let file_type = meta.file_type();
            if file_type.is_dir() {
                if !(in_container == "/dev" && SKIPPED_DEV_DIRS.contains(&name.as_str())) {
                    dirs.push((entry.path(), path));
                }
                continue;
            }
            if path == "/dev/console" {
                continue;
            }
            if let Some(device) = device_of(path, &meta) {
                found.push(device);
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_devices_lists_device_nodes_but_not_pts_or_the_console() {
        let devices = guest_devices(std::path::Path::new("/dev")).unwrap();
        let null = devices.iter().find(|d| d.path == "/dev/null").unwrap();
        assert_eq!((null.kind, null.major, null.minor), ('c', 1, 3));
        assert_eq!(null.mode, 0o666);
        assert!(
            devices
                .iter()
                .all(|d| !d.path.starts_with("/dev/pts/") && d.path != "/dev/console"),
            "{devices:?}"
        );
        assert!(guest_devices(std::path::Path::new("/nonexistent-dev")).is_err());
    }

    #[test]
    fn capabilities_follow_dockers_rules() {
        let security = |add: &[CapabilityName], drop: &[CapabilityName]| Security {
            cap_add: add.to_vec(),
            cap_drop: drop.to_vec(),
            ..Security::default()
        };
        assert_eq!(capabilities(&Security::default()), DEFAULT_CAPABILITIES);
        let privileged = Security {
            privileged: true,
            cap_drop: vec![CapabilityName::All],
            ..Security::default()
        };
        assert_eq!(capabilities(&privileged), LINUX_CAPABILITIES);
        // A default added again is listed once.
        let again = security(&[CapabilityName::Cap("CAP_KILL")], &[]);
        assert_eq!(capabilities(&again), DEFAULT_CAPABILITIES);
        let none = security(&[], &[CapabilityName::All]);
        assert!(capabilities(&none).is_empty());
        // cap_add: ALL wins over cap_drop: ALL, less the named drops.
        let all = security(
            &[CapabilityName::All],
            &[CapabilityName::All, CapabilityName::Cap("CAP_SYS_ADMIN")],
        );
        assert_eq!(capabilities(&all).len(), LINUX_CAPABILITIES.len() - 1);
    }
}
