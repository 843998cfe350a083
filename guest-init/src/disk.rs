//! The data disk: the first virtio-blk disk, mounted at `/data`.
//!
//! What is on it decides what happens, and the rule is conservative: only a
//! disk whose first 128 KiB are all zero (a fresh image) is ever formatted.
//! A LUKS header (primary or LUKS2 secondary) stops the boot: encryption
//! comes with the KMS, and a disk with a LUKS header is never reformatted
//! (DESIGN §7). ext4 is mounted. Anything else stops the boot too.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::MsFlags;

use crate::sys::{MountSpec, Syscall};

/// Bytes read from the start of the disk to decide what it holds.
pub const PROBE_LEN: usize = 128 * 1024;

/// Where LUKS2 may keep its secondary header (the primary's size, 16 KiB
/// to 4 MiB, in powers of two).
const LUKS2_SECONDARY_OFFSETS: &[u64] = &[
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x10_0000, 0x20_0000, 0x40_0000,
];

/// Subdirectories of `/data` that the containers side uses.
pub const DATA_DIRS: &[&str] = &["volumes", "images", "containers"];

/// What a disk holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskContent {
    /// A LUKS header.
    Luks,
    /// An ext2/3/4 filesystem.
    Ext4,
    /// Zeros only: a fresh disk.
    Empty,
    /// Something else, described.
    Unrecognised(&'static str),
}

/// Preparing the data disk failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The disk did not appear.
    #[error("data disk {device} did not appear within {secs} s (is a virtio disk attached?)")]
    NoDisk {
        /// The device path.
        device: PathBuf,
        /// How long we waited.
        secs: u64,
    },
    /// Reading the disk failed.
    #[error("cannot read {device}")]
    Probe {
        /// The device path.
        device: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The disk is LUKS-encrypted, which this build cannot open.
    #[error(
        "data disk {device} has a LUKS header: encrypted data disks are not supported yet, and a LUKS disk is never reformatted"
    )]
    Encrypted {
        /// The device path.
        device: PathBuf,
    },
    /// The disk holds something other than ext4 or zeros.
    #[error("data disk {device} holds {what}, not ext4: refusing to format it")]
    Unrecognised {
        /// The device path.
        device: PathBuf,
        /// What was found.
        what: &'static str,
    },
    /// mke2fs failed.
    #[error("formatting {device} failed: {detail}")]
    Format {
        /// The device path.
        device: PathBuf,
        /// mke2fs's exit status and output.
        detail: String,
    },
    /// Mounting failed.
    #[error("cannot mount {device} at {target}")]
    Mount {
        /// The device path.
        device: PathBuf,
        /// The mount point.
        target: PathBuf,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// Creating a directory on the disk failed.
    #[error("cannot create {path}")]
    Mkdir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Errno,
    },
}

fn at(head: &[u8], offset: usize, magic: &[u8]) -> bool {
    head.get(offset..offset + magic.len()) == Some(magic)
}

/// Classifies the first bytes of a disk (up to [`PROBE_LEN`]);
/// `luks2_secondary` says whether a LUKS2 secondary header was found.
pub fn classify(head: &[u8], luks2_secondary: bool) -> DiskContent {
    if at(head, 0, b"LUKS\xba\xbe") || luks2_secondary {
        DiskContent::Luks
    } else if at(head, 1080, &[0x53, 0xef]) {
        DiskContent::Ext4
    } else if head.iter().all(|&b| b == 0) {
        DiskContent::Empty
    } else if at(head, 0, b"XFSB") {
        DiskContent::Unrecognised("an XFS filesystem")
    } else if at(head, 0x10040, b"_BHRfS_M") {
        DiskContent::Unrecognised("a btrfs filesystem")
    } else if at(head, 4086, b"SWAPSPACE2") {
        DiskContent::Unrecognised("swap space")
    } else if at(head, 510, &[0x55, 0xaa]) {
        DiskContent::Unrecognised("a partition table")
    } else {
        DiskContent::Unrecognised("unrecognised data")
    }
}

/// Reads a disk's first [`PROBE_LEN`] bytes and its LUKS2 secondary header
/// slots, and classifies it.
pub fn probe(device: &Path) -> io::Result<DiskContent> {
    let mut file = File::open(device)?;
    let mut head = Vec::with_capacity(PROBE_LEN);
    (&mut file).take(PROBE_LEN as u64).read_to_end(&mut head)?;
    let mut secondary = false;
    for &offset in LUKS2_SECONDARY_OFFSETS {
        let mut magic = [0u8; 6];
        file.seek(SeekFrom::Start(offset))?;
        if file.read(&mut magic)? == magic.len() && &magic == b"SKUL\xba\xbe" {
            secondary = true;
            break;
        }
    }
    Ok(classify(&head, secondary))
}

/// Waits up to `patience` for `device` to appear (devtmpfs creates the node
/// when the driver has probed the disk).
pub fn wait_for_device(device: &Path, patience: Duration) -> Result<(), DiskError> {
    let deadline = Instant::now() + patience;
    while !device.exists() {
        if Instant::now() >= deadline {
            return Err(DiskError::NoDisk {
                device: device.to_owned(),
                secs: patience.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// How the data disk was prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskOutcome {
    /// An existing ext4 filesystem was mounted.
    Mounted,
    /// The disk was empty, formatted and mounted.
    Formatted,
}

/// Probes `device`, formats it with `format` only when empty, mounts it at
/// `target` and creates [`DATA_DIRS`]. Blocking: call from a blocking thread.
pub fn prepare(
    sys: &dyn Syscall,
    device: &Path,
    target: &Path,
    format: &dyn Fn(&Path) -> Result<(), DiskError>,
) -> Result<DiskOutcome, DiskError> {
    let content = probe(device).map_err(|source| DiskError::Probe {
        device: device.to_owned(),
        source,
    })?;
    let outcome = match content {
        DiskContent::Luks => {
            return Err(DiskError::Encrypted {
                device: device.to_owned(),
            });
        }
        DiskContent::Unrecognised(what) => {
            return Err(DiskError::Unrecognised {
                device: device.to_owned(),
                what,
            });
        }
        DiskContent::Ext4 => DiskOutcome::Mounted,
        DiskContent::Empty => {
            format(device)?;
            tracing::info!(
                "formatted {} (ext4): its first 128 KiB were zero, a fresh disk",
                device.display()
            );
            DiskOutcome::Formatted
        }
    };
    let mkdir = |path: PathBuf| {
        sys.mkdir_all(&path, 0o755)
            .map_err(|source| DiskError::Mkdir { path, source })
    };
    mkdir(target.to_owned())?;
    sys.mount(&MountSpec {
        source: device.display().to_string(),
        target: target.display().to_string(),
        fstype: "ext4".into(),
        flags: MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        data: None,
    })
    .map_err(|source| DiskError::Mount {
        device: device.to_owned(),
        target: target.to_owned(),
        source,
    })?;
    for dir in DATA_DIRS {
        mkdir(target.join(dir))?;
    }
    Ok(outcome)
}

/// The mke2fs the image ships.
pub const MKE2FS: &str = "/sbin/mke2fs";

/// Formats `device` as ext4 labelled `dstack-data`, waiting for mke2fs
/// while holding the reaper off (so PID1 does not reap it first).
pub fn mke2fs(device: &Path) -> Result<(), DiskError> {
    let failed = |detail: String| DiskError::Format {
        device: device.to_owned(),
        detail,
    };
    let _own_child = crate::reaper::hold_off_blocking();
    // Lazy init leaves inode tables and the journal for the kernel to zero
    // in the background: a fresh disk is ready in a fraction of the time.
    let output = std::process::Command::new(MKE2FS)
        .args(["-t", "ext4", "-q", "-L", "dstack-data"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(device)
        .output()
        .map_err(|e| failed(format!("cannot run {MKE2FS}: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(failed(format!("{} {}", output.status, stderr.trim())))
    }
}

#[cfg(test)]
#[path = "disk_tests.rs"]
mod tests;
