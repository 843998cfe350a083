//! Device-mapper control, the few ioctls PID1 needs to map an encrypted
//! disk: create a device, load its table, resume it, and remove it at
//! shutdown. There is no libdevmapper or `dmsetup` in the guest image.
//!
//! The wire format is the kernel's `struct dm_ioctl` (`linux/dm-ioctl.h`,
//! interface version 4) followed by `struct dm_target_spec` entries, each
//! with its NUL-terminated parameter string. [`encode`] and [`decode`] are
//! pure and unit-tested; [`Control`] is the only code that calls into the
//! kernel. Tables carrying a key are loaded with `DM_SECURE_DATA_FLAG`, so
//! the kernel wipes its copy of the ioctl buffer, and our buffer is
//! zeroised when dropped.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

mod wire;

pub use wire::{DM_IOCTL_SIZE, Header, decode, encode};

/// The control node devtmpfs creates when device-mapper is built in.
pub const CONTROL_PATH: &str = "/dev/mapper/control";

/// A device-mapper command failed.
#[derive(Debug, thiserror::Error)]
pub enum DmError {
    /// The control node could not be opened.
    #[error("cannot open {path} (is device-mapper built into the kernel?)")]
    Control {
        /// The node.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a command.
    #[error("device-mapper {command} on {name:?} failed")]
    Ioctl {
        /// The command, e.g. `DM_DEV_CREATE`.
        command: &'static str,
        /// The device name.
        name: String,
        /// The kernel's errno.
        #[source]
        source: nix::errno::Errno,
    },
    /// A request could not be encoded (a name too long, a NUL in a parameter).
    #[error("invalid device-mapper request: {0}")]
    Invalid(String),
    /// The kernel's answer was not the shape the interface promises.
    #[error("malformed device-mapper answer to {command}: {detail}")]
    Answer {
        /// The command.
        command: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// One line of a device-mapper table.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// First sector (512 bytes) of the mapped device this line covers.
    pub start: u64,
    /// Number of 512-byte sectors.
    pub length: u64,
    /// Target type, e.g. `crypt`.
    pub kind: String,
    /// Target parameters; for `crypt` they include the key.
    pub params: Zeroizing<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A crypt table holds the volume key: never print the parameters.
        f.debug_struct("Target")
            .field("start", &self.start)
            .field("length", &self.length)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// A `crypt` target over a whole LUKS payload: `length` sectors of
/// `device` from `offset` (both in 512-byte sectors), with `cipher` (e.g.
/// `aes-xts-plain64`) keyed by `key` and an encryption sector of
/// `sector_size` bytes.
pub fn crypt_target(
    cipher: &str,
    key: &[u8],
    device: &Path,
    offset: u64,
    length: u64,
    sector_size: u32,
) -> Target {
    let mut params = Zeroizing::new(String::with_capacity(key.len() * 2 + 96));
    params.push_str(cipher);
    params.push(' ');
    for byte in key {
        params.push(char::from(HEX[usize::from(byte >> 4)]));
        params.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    params.push_str(&format!(" 0 {} {offset}", device.display()));
    if sector_size != 512 {
        params.push_str(&format!(" 1 sector_size:{sector_size}"));
    }
    Target {
        start: 0,
        length,
        kind: "crypt".into(),
        params,
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A LUKS2 volume's payload as dm-crypt should map it.
#[derive(Debug, Clone, Copy)]
pub struct LuksPayload<'a> {
    /// The header's uuid (for the mapping's dm uuid).
    pub luks_uuid: &'a str,
    /// Cipher spec, e.g. `aes-xts-plain64`.
    pub cipher: &'a str,
    /// The volume key.
    pub key: &'a [u8],
    /// Byte offset of the payload on the device.
    pub offset: u64,
    /// Encryption sector size in bytes.
    pub sector_size: u32,
}

/// Maps `payload` on `device` (of `device_bytes`) as `name`, live, with the
/// key wiped from the kernel's copy of the request; the dm uuid follows
/// cryptsetup's convention (`CRYPT-LUKS2-<uuid without dashes>-<name>`), so
/// tools that read dm uuids see a LUKS2 mapping.
pub fn map_luks(
    name: &str,
    device: &Path,
    device_bytes: u64,
    payload: &LuksPayload<'_>,
) -> Result<DeviceNumber, DmError> {
    let target = crypt_target(
        payload.cipher,
        payload.key,
        device,
        payload.offset / 512,
        device_bytes.saturating_sub(payload.offset) / 512,
        payload.sector_size,
    );
    let uuid = format!("CRYPT-LUKS2-{}-{name}", payload.luks_uuid.replace('-', ""));
    Control::open()?.create_live(name, &uuid, &[target], true)
}

/// A mapped device's numbers, and the node devtmpfs gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceNumber {
    /// Block major.
    pub major: u32,
    /// Block minor.
    pub minor: u32,
}

impl DeviceNumber {
    /// `/dev/dm-<minor>`: the node devtmpfs creates (there is no udev to
    /// make `/dev/mapper/<name>`).
    pub fn node(&self) -> PathBuf {
        PathBuf::from(format!("/dev/dm-{}", self.minor))
    }
}

/// The open control node.
#[derive(Debug)]
pub struct Control {
    file: File,
}

impl Control {
    /// Opens [`CONTROL_PATH`].
    pub fn open() -> Result<Self, DmError> {
        Self::open_at(Path::new(CONTROL_PATH))
    }

    /// Opens a control node at `path`.
    pub fn open_at(path: &Path) -> Result<Self, DmError> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map(|file| Self { file })
            .map_err(|source| DmError::Control {
                path: path.to_owned(),
                source,
            })
    }

    /// Creates device `name` (no table yet) and returns its numbers.
    pub fn create(&self, name: &str, uuid: &str) -> Result<DeviceNumber, DmError> {
        let header = Header::named(name, uuid)?;
        let answer = self.call(wire::Command::DevCreate, name, &header, &[])?;
        Ok(answer.device())
    }

    /// Loads `targets` as the inactive table of `name`. `secure` asks the
    /// kernel to wipe its copy of the buffer (set it when a key is inside).
    pub fn load(
        &self,
        name: &str,
        targets: &[Target],
        read_only: bool,
        secure: bool,
    ) -> Result<(), DmError> {
        let mut header = Header::named(name, "")?;
        if read_only {
            header.flags |= wire::READONLY_FLAG;
        }
        if secure {
            header.flags |= wire::SECURE_DATA_FLAG;
        }
        self.call(wire::Command::TableLoad, name, &header, targets)?;
        Ok(())
    }

    /// Makes the loaded table live (`DM_DEV_SUSPEND` without the suspend flag).
    pub fn resume(&self, name: &str) -> Result<DeviceNumber, DmError> {
        let header = Header::named(name, "")?;
        let answer = self.call(wire::Command::DevSuspend, name, &header, &[])?;
        Ok(answer.device())
    }

    /// Removes device `name`; the kernel refuses while it is open or mounted.
    pub fn remove(&self, name: &str) -> Result<(), DmError> {
        let header = Header::named(name, "")?;
        self.call(wire::Command::DevRemove, name, &header, &[])?;
        Ok(())
    }

    /// Creates `name` with `targets` live: create, load, resume. A failure
    /// after the create removes the half-made device again.
    pub fn create_live(
        &self,
        name: &str,
        uuid: &str,
        targets: &[Target],
        secure: bool,
    ) -> Result<DeviceNumber, DmError> {
        self.create(name, uuid)?;
        let result = self
            .load(name, targets, false, secure)
            .and_then(|()| self.resume(name));
        if result.is_err() {
            let _ = self.remove(name);
        }
        result
    }

    fn call(
        &self,
        command: wire::Command,
        name: &str,
        header: &Header,
        targets: &[Target],
    ) -> Result<Header, DmError> {
        let mut buffer = encode(header, targets)?;
        let request = wire::request_code(command);
        let bytes = buffer.as_mut_slice();
        let fd = self.file.as_raw_fd();
        // SAFETY: `bytes` is a live, exclusively borrowed buffer of
        // `header.data_size` bytes (at least DM_IOCTL_SIZE, as `encode`
        // guarantees); the kernel copies in and out through copy_from_user /
        // copy_to_user and never touches memory beyond data_size.
        #[allow(unsafe_code)]
        let rc = unsafe { nix::libc::ioctl(fd, request, bytes.as_mut_ptr()) };
        nix::errno::Errno::result(rc).map_err(|source| DmError::Ioctl {
            command: command.name(),
            name: name.to_owned(),
            source,
        })?;
        decode(bytes).map_err(|detail| DmError::Answer {
            command: command.name(),
            detail,
        })
    }
}
