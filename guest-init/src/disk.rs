//! The data disk: the first virtio-blk disk, LUKS2-encrypted with the app's
//! disk key and mounted at `/data` (ext4 inside).
//!
//! What is on it decides what happens, and the rule is conservative:
//! - a LUKS header is opened with the key, never reformatted: a wrong key
//!   stops the boot and leaves every byte as it was (DESIGN §7);
//! - a disk whose first 128 KiB are zero (a fresh image) is formatted:
//!   LUKS2 header first, then ext4 inside;
//! - anything else (an old plain ext4 disk, another system's data) stops
//!   the boot, unless the operator opted in to formatting it.
//!
//! The header is written and read by `dstack-luks2` (pure Rust, tested both
//! ways against cryptsetup); the mapping is a dm-crypt table loaded through
//! `dstack-devmapper`. The passphrase is `hex(disk_crypt_key)`, upstream's.

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
    /// The LUKS header does not open with this app's disk key.
    #[error(
        "data disk {device} is encrypted with another key (another app's disk, or keys from another KMS): refusing to touch it; a LUKS disk is never reformatted"
    )]
    WrongKey {
        /// The device path.
        device: PathBuf,
    },
    /// The app's key provider is `none`: each boot has a new random disk
    /// key, so a disk written by an earlier boot cannot be opened.
    #[error(
        "data disk {device} was encrypted by an earlier boot, and this app's key provider is \"none\" (a new random disk key every boot): its data cannot be reopened, and the disk is left as it is; give the app a key provider that keeps its keys (a KMS, or the local key provider) to keep data across restarts, or deploy it again with a new disk"
    )]
    EphemeralKey {
        /// The device path.
        device: PathBuf,
    },
    /// The LUKS header is damaged or not the shape this guest accepts
    /// (the host may have altered it).
    #[error("data disk {device} has a LUKS header this guest refuses; the disk is left as it is")]
    BadHeader {
        /// The device path.
        device: PathBuf,
        /// What was wrong.
        #[source]
        source: dstack_luks2::Luks2Error,
    },
    /// Writing a new LUKS header failed.
    #[error("cannot write a LUKS2 header to {device}")]
    Encrypt {
        /// The device path.
        device: PathBuf,
        /// The cause.
        #[source]
        source: dstack_luks2::Luks2Error,
    },
    /// The device-mapper mapping failed.
    #[error("cannot map the encrypted disk {device}")]
    Map {
        /// The device path.
        device: PathBuf,
        /// The cause.
        #[source]
        source: dstack_devmapper::DmError,
    },
    /// The disk holds something other than a LUKS header or zeros.
    #[error(
        "data disk {device} holds {what}, not an encrypted dstack disk: refusing to format it (the operator may allow it with --format-nonempty-disk)"
    )]
    Unrecognised {
        /// The device path.
        device: PathBuf,
        /// What was found.
        what: &'static str,
    },
    /// The LUKS volume opened but holds no ext4 filesystem.
    #[error(
        "encrypted data disk {device} opened, but holds no ext4 filesystem (a first boot interrupted while formatting?): refusing to format it (the operator may allow it with --format-nonempty-disk)"
    )]
    NoFilesystem {
        /// The device path.
        device: PathBuf,
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
    /// An existing encrypted disk was opened and mounted.
    Opened,
    /// The disk was formatted (LUKS2, then ext4) and mounted.
    Formatted,
}

impl DiskOutcome {
    /// The `data-disk` event payload.
    pub fn state(&self) -> &'static str {
        match self {
            Self::Opened => "opened",
            Self::Formatted => "formatted",
        }
    }
}

/// The device-mapper name of the opened data disk (upstream's).
pub const MAPPED_NAME: &str = "dstack_data_disk";

/// Maps an opened LUKS volume to a plaintext block device and back.
pub trait Mapper: Send + Sync + std::fmt::Debug {
    /// Maps `volume`'s payload on `device` as [`MAPPED_NAME`]; returns the
    /// plaintext device's path.
    fn map(&self, device: &Path, volume: &dstack_luks2::Volume) -> Result<PathBuf, DiskError>;
    /// Removes the mapping (after the filesystem is unmounted).
    fn unmap(&self) -> Result<(), DiskError>;
}

/// The kernel's device-mapper.
#[derive(Debug, Default, Clone, Copy)]
pub struct DmMapper;

impl Mapper for DmMapper {
    fn map(&self, device: &Path, volume: &dstack_luks2::Volume) -> Result<PathBuf, DiskError> {
        let failed = |source| DiskError::Map {
            device: device.to_owned(),
            source,
        };
        let probe_failed = |source| DiskError::Probe {
            device: device.to_owned(),
            source,
        };
        let size = File::open(device)
            .and_then(|mut f| f.seek(SeekFrom::End(0)))
            .map_err(probe_failed)?;
        let segment = volume.segment();
        let payload = dstack_devmapper::LuksPayload {
            luks_uuid: volume.uuid(),
            cipher: segment.cipher,
            key: volume.key(),
            offset: segment.offset,
            sector_size: segment.sector_size,
        };
        let number =
            dstack_devmapper::map_luks(MAPPED_NAME, device, size, &payload).map_err(failed)?;
        let node = number.node();
        wait_for_device(&node, Duration::from_secs(5))?;
        Ok(node)
    }

    fn unmap(&self) -> Result<(), DiskError> {
        let failed = |source| DiskError::Map {
            device: PathBuf::from(MAPPED_NAME),
            source,
        };
        dstack_devmapper::Control::open()
            .and_then(|control| control.remove(MAPPED_NAME))
            .map_err(failed)
    }
}

/// What `prepare` needs besides the device.
#[derive(Debug)]
pub struct DiskParams<'a> {
    /// The LUKS passphrase: `hex(disk_crypt_key)`.
    pub passphrase: &'a [u8],
    /// The operator allowed formatting a disk with other content.
    pub format_nonempty: bool,
    /// The key is random for this boot only (the `none` key provider).
    pub ephemeral_key: bool,
}

/// Opens or formats the encrypted disk `device` (see the module doc),
/// mounts the plaintext ext4 at `target` and creates [`DATA_DIRS`].
/// Returns what was done and the plaintext device. Blocking: call from a
/// blocking thread.
pub fn prepare(
    sys: &dyn Syscall,
    mapper: &dyn Mapper,
    device: &Path,
    target: &Path,
    params: &DiskParams<'_>,
    format: &dyn Fn(&Path) -> Result<(), DiskError>,
) -> Result<(DiskOutcome, PathBuf), DiskError> {
    let probe_failed = |source| DiskError::Probe {
        device: device.to_owned(),
        source,
    };
    let content = probe(device).map_err(probe_failed)?;
    let (outcome, plain) = match content {
        DiskContent::Luks => {
            // Read-only: whatever fails below, the disk is left as it was.
            let mut file = File::open(device).map_err(probe_failed)?;
            let volume = dstack_luks2::open(&mut file, params.passphrase).map_err(|e| match e {
                dstack_luks2::Luks2Error::WrongPassphrase if params.ephemeral_key => {
                    DiskError::EphemeralKey {
                        device: device.to_owned(),
                    }
                }
                dstack_luks2::Luks2Error::WrongPassphrase => DiskError::WrongKey {
                    device: device.to_owned(),
                },
                source => DiskError::BadHeader {
                    device: device.to_owned(),
                    source,
                },
            })?;
            let plain = mapper.map(device, &volume)?;
            let inner = probe(&plain).map_err(probe_failed);
            match inner {
                Ok(DiskContent::Ext4) => (DiskOutcome::Opened, plain),
                // Nothing was ever written through the mapping (the first
                // boot stopped between the header and mkfs): safe to format.
                Ok(_) if params.format_nonempty || payload_untouched(device) => {
                    tracing::warn!(
                        "the encrypted disk holds no ext4 filesystem: formatting it, as the operator allowed"
                    );
                    format_inner(mapper, &plain, format)?;
                    (DiskOutcome::Formatted, plain)
                }
                other => {
                    let _ = mapper.unmap();
                    other?;
                    return Err(DiskError::NoFilesystem {
                        device: device.to_owned(),
                    });
                }
            }
        }
        DiskContent::Empty => (
            DiskOutcome::Formatted,
            format_new(mapper, device, params, format)?,
        ),
        DiskContent::Ext4 | DiskContent::Unrecognised(_) if params.format_nonempty => {
            tracing::warn!(
                "data disk {} is not an encrypted dstack disk: formatting it, as the operator allowed",
                device.display()
            );
            (
                DiskOutcome::Formatted,
                format_new(mapper, device, params, format)?,
            )
        }
        DiskContent::Ext4 => {
            return Err(DiskError::Unrecognised {
                device: device.to_owned(),
                what: "an unencrypted ext4 filesystem",
            });
        }
        DiskContent::Unrecognised(what) => {
            return Err(DiskError::Unrecognised {
                device: device.to_owned(),
                what,
            });
        }
    };
    let mounted = mount(sys, &plain, target);
    if mounted.is_err() {
        let _ = mapper.unmap();
    }
    mounted?;
    Ok((outcome, plain))
}

/// Whether the start of the LUKS payload is still all zeros on the raw
/// device: ciphertext is never all zeros, so nothing was written there.
fn payload_untouched(device: &Path) -> bool {
    let read = || -> io::Result<bool> {
        let mut file = File::open(device)?;
        file.seek(SeekFrom::Start(dstack_luks2::DATA_OFFSET))?;
        let mut head = Vec::with_capacity(PROBE_LEN);
        file.take(PROBE_LEN as u64).read_to_end(&mut head)?;
        Ok(head.len() == PROBE_LEN && head.iter().all(|&b| b == 0))
    };
    read().unwrap_or(false)
}

/// Writes a fresh LUKS2 header, maps it and makes ext4 inside.
fn format_new(
    mapper: &dyn Mapper,
    device: &Path,
    params: &DiskParams<'_>,
    format: &dyn Fn(&Path) -> Result<(), DiskError>,
) -> Result<PathBuf, DiskError> {
    let encrypt_failed = |source| DiskError::Encrypt {
        device: device.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map_err(|source| DiskError::Probe {
            device: device.to_owned(),
            source,
        })?;
    let volume = dstack_luks2::format(&mut file, params.passphrase, &mut rand_core::OsRng)
        .map_err(encrypt_failed)?;
    drop(file);
    tracing::info!(
        "wrote a LUKS2 header (aes-xts-plain64, 512-bit key) to {}",
        device.display()
    );
    let plain = mapper.map(device, &volume)?;
    format_inner(mapper, &plain, format)?;
    Ok(plain)
}

fn format_inner(
    mapper: &dyn Mapper,
    plain: &Path,
    format: &dyn Fn(&Path) -> Result<(), DiskError>,
) -> Result<(), DiskError> {
    let formatted = format(plain);
    if formatted.is_err() {
        let _ = mapper.unmap();
    }
    formatted
}

fn mount(sys: &dyn Syscall, device: &Path, target: &Path) -> Result<(), DiskError> {
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
    Ok(())
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

/// A mapper for tests: "maps" to a plain file and records what it was asked.
#[cfg(test)]
pub mod fake {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use super::{DiskError, Mapper};

    /// Maps every volume to `plain`.
    #[derive(Debug, Default)]
    pub struct FakeMapper {
        /// The plaintext stand-in.
        pub plain: PathBuf,
        /// The volume keys it was given, in order.
        pub keys: Mutex<Vec<Vec<u8>>>,
        /// How many times it was unmapped.
        pub unmaps: Mutex<usize>,
    }

    impl FakeMapper {
        /// A mapper onto `plain`.
        pub fn onto(plain: &Path) -> Self {
            Self {
                plain: plain.to_owned(),
                ..Self::default()
            }
        }
    }

    impl Mapper for FakeMapper {
        fn map(&self, _device: &Path, volume: &dstack_luks2::Volume) -> Result<PathBuf, DiskError> {
            self.keys.lock().unwrap().push(volume.key().to_vec());
            Ok(self.plain.clone())
        }

        fn unmap(&self) -> Result<(), DiskError> {
            *self.unmaps.lock().unwrap() += 1;
            Ok(())
        }
    }
}
