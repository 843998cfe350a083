//! `struct dm_ioctl` and `struct dm_target_spec` as bytes (native endian,
//! `linux/dm-ioctl.h`, interface 4.x).

use zeroize::Zeroizing;

use crate::{DeviceNumber, DmError, Target};

/// `sizeof(struct dm_ioctl)`.
pub const DM_IOCTL_SIZE: usize = DM_IOCTL_SIZE_U32 as usize;
const DM_IOCTL_SIZE_U32: u32 = 312;
const TARGET_SPEC_SIZE: usize = 40;
const NAME_LEN: usize = 128;
const UUID_LEN: usize = 129;
const TARGET_TYPE_LEN: usize = 16;
const DM_IOCTL_TYPE: u32 = 0xfd;
/// The interface version we speak; the kernel accepts any 4.x minor.
const VERSION: [u32; 3] = [4, 0, 0];

pub(crate) const READONLY_FLAG: u32 = 1 << 0;
pub(crate) const SECURE_DATA_FLAG: u32 = 1 << 15;

// Offsets of the fields in struct dm_ioctl.
const OFF_DATA_SIZE: usize = 12;
const OFF_DATA_START: usize = 16;
const OFF_TARGET_COUNT: usize = 20;
const OFF_OPEN_COUNT: usize = 24;
const OFF_FLAGS: usize = 28;
const OFF_EVENT_NR: usize = 32;
const OFF_DEV: usize = 40;
const OFF_NAME: usize = 48;
const OFF_UUID: usize = OFF_NAME + NAME_LEN;

/// The dm ioctl commands we use (`DM_*_CMD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    DevCreate = 3,
    DevRemove = 4,
    DevSuspend = 6,
    TableLoad = 9,
}

impl Command {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::DevCreate => "DM_DEV_CREATE",
            Self::DevRemove => "DM_DEV_REMOVE",
            Self::DevSuspend => "DM_DEV_SUSPEND",
            Self::TableLoad => "DM_TABLE_LOAD",
        }
    }
}

/// `_IOWR(DM_IOCTL, command, struct dm_ioctl)`.
pub(crate) fn request_code(command: Command) -> nix::sys::ioctl::ioctl_num_type {
    const READ_WRITE: u32 = 3;
    let code =
        (READ_WRITE << 30) | (DM_IOCTL_SIZE_U32 << 16) | (DM_IOCTL_TYPE << 8) | command as u32;
    // The code fits 32 bits; musl types the request as int, glibc as unsigned long.
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    let code = code as nix::sys::ioctl::ioctl_num_type;
    code
}

/// The fixed part of a request or answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// Interface version (in: ours; out: the kernel's).
    pub version: [u32; 3],
    /// Number of targets that follow (out: of the table).
    pub target_count: u32,
    /// Open references (out).
    pub open_count: i32,
    /// `DM_*_FLAG` bits.
    pub flags: u32,
    /// Event counter.
    pub event_nr: u32,
    /// The device number, huge-encoded as the kernel does.
    pub dev: u64,
    /// Device name.
    pub name: String,
    /// Device uuid.
    pub uuid: String,
}

impl Header {
    /// A request for device `name`.
    pub(crate) fn named(name: &str, uuid: &str) -> Result<Self, DmError> {
        if name.is_empty() || name.len() >= NAME_LEN || name.contains(['/', '\0']) {
            return Err(DmError::Invalid(format!(
                "device name {name:?} must be 1 to {} bytes without '/' or NUL",
                NAME_LEN - 1
            )));
        }
        if uuid.len() >= UUID_LEN || uuid.contains('\0') {
            return Err(DmError::Invalid(format!(
                "uuid {uuid:?} must be under {UUID_LEN} bytes without NUL"
            )));
        }
        Ok(Self {
            version: VERSION,
            name: name.to_owned(),
            uuid: uuid.to_owned(),
            ..Self::default()
        })
    }

    /// The device numbers in `dev`.
    pub fn device(&self) -> DeviceNumber {
        let dev = self.dev;
        // new_encode_dev: minor low byte, 12 bits of major, then the rest of the minor.
        #[allow(clippy::cast_possible_truncation)]
        DeviceNumber {
            major: ((dev >> 8) & 0xfff) as u32,
            minor: ((dev & 0xff) | ((dev >> 12) & 0xfff_ff00)) as u32,
        }
    }
}

fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_ne_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, value: u64) {
    buf[at..at + 8].copy_from_slice(&value.to_ne_bytes());
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[at..at + 4]);
    u32::from_ne_bytes(bytes)
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    u64::from_ne_bytes(bytes)
}

fn c_string(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn to_u32(value: usize, what: &str) -> Result<u32, DmError> {
    u32::try_from(value).map_err(|_| DmError::Invalid(format!("{what} is too large")))
}

/// Encodes a request: the header, then each target spec with its
/// parameters (NUL-terminated, padded to 8 bytes, `next` pointing from one
/// spec to the following one). The buffer is wiped when dropped.
pub fn encode(header: &Header, targets: &[Target]) -> Result<Zeroizing<Vec<u8>>, DmError> {
    let mut buf = Zeroizing::new(vec![0u8; DM_IOCTL_SIZE]);
    for target in targets {
        if target.kind.is_empty() || target.kind.len() >= TARGET_TYPE_LEN {
            return Err(DmError::Invalid(format!(
                "target type {:?} must be 1 to {} bytes",
                target.kind,
                TARGET_TYPE_LEN - 1
            )));
        }
        if target.params.contains('\0') {
            return Err(DmError::Invalid("target parameters contain NUL".into()));
        }
        let start = buf.len();
        let params_len = target.params.len() + 1;
        let spec_len = (TARGET_SPEC_SIZE + params_len).next_multiple_of(8);
        buf.resize(start + spec_len, 0);
        let spec = &mut buf[start..];
        put_u64(spec, 0, target.start);
        put_u64(spec, 8, target.length);
        put_u32(spec, 20, to_u32(spec_len, "a target spec")?);
        spec[24..24 + target.kind.len()].copy_from_slice(target.kind.as_bytes());
        spec[TARGET_SPEC_SIZE..TARGET_SPEC_SIZE + target.params.len()]
            .copy_from_slice(target.params.as_bytes());
    }
    let total = buf.len();
    for (i, word) in header.version.iter().enumerate() {
        put_u32(&mut buf, i * 4, *word);
    }
    put_u32(&mut buf, OFF_DATA_SIZE, to_u32(total, "the request")?);
    put_u32(&mut buf, OFF_DATA_START, DM_IOCTL_SIZE_U32);
    put_u32(
        &mut buf,
        OFF_TARGET_COUNT,
        to_u32(targets.len(), "the target count")?,
    );
    put_u32(&mut buf, OFF_FLAGS, header.flags);
    put_u32(&mut buf, OFF_EVENT_NR, header.event_nr);
    put_u64(&mut buf, OFF_DEV, header.dev);
    buf[OFF_NAME..OFF_NAME + header.name.len()].copy_from_slice(header.name.as_bytes());
    buf[OFF_UUID..OFF_UUID + header.uuid.len()].copy_from_slice(header.uuid.as_bytes());
    Ok(buf)
}

/// Decodes the header of an answer.
pub fn decode(buf: &[u8]) -> Result<Header, String> {
    if buf.len() < DM_IOCTL_SIZE {
        return Err(format!("{} bytes, shorter than struct dm_ioctl", buf.len()));
    }
    let version = [get_u32(buf, 0), get_u32(buf, 4), get_u32(buf, 8)];
    if version[0] != VERSION[0] {
        return Err(format!(
            "interface version {}.{}.{}, not 4.x",
            version[0], version[1], version[2]
        ));
    }
    Ok(Header {
        version,
        target_count: get_u32(buf, OFF_TARGET_COUNT),
        open_count: i32::from_ne_bytes(get_u32(buf, OFF_OPEN_COUNT).to_ne_bytes()),
        flags: get_u32(buf, OFF_FLAGS),
        event_nr: get_u32(buf, OFF_EVENT_NR),
        dev: get_u64(buf, OFF_DEV),
        name: c_string(&buf[OFF_NAME..OFF_NAME + NAME_LEN]),
        uuid: c_string(&buf[OFF_UUID..OFF_UUID + UUID_LEN]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn request_codes_match_the_kernel_header() {
        // _IOWR(0xfd, 3, struct dm_ioctl) with sizeof = 312, as the C header computes.
        let code = |command| i128::from(request_code(command)) & 0xffff_ffff;
        assert_eq!(code(Command::DevCreate), 0xc138_fd03_i128);
        assert_eq!(code(Command::TableLoad), 0xc138_fd09_i128);
        assert_eq!(code(Command::DevSuspend), 0xc138_fd06_i128);
        assert_eq!(code(Command::DevRemove), 0xc138_fd04_i128);
    }

    #[test]
    fn header_fields_sit_where_the_kernel_reads_them() {
        let mut header = Header::named("dstack_data_disk", "DSTACK-data").unwrap();
        header.flags = SECURE_DATA_FLAG;
        let buf = encode(&header, &[]).unwrap();
        assert_eq!(buf.len(), DM_IOCTL_SIZE);
        assert_eq!(get_u32(&buf, 0), 4);
        assert_eq!(get_u32(&buf, OFF_DATA_SIZE), 312);
        assert_eq!(get_u32(&buf, OFF_DATA_START), 312);
        assert_eq!(get_u32(&buf, OFF_FLAGS), 1 << 15);
        assert_eq!(&buf[48..64], b"dstack_data_disk");
        assert_eq!(buf[64], 0);
        assert_eq!(&buf[176..187], b"DSTACK-data");
        assert_eq!(decode(&buf).unwrap(), header);
    }

    #[test]
    fn targets_follow_the_header_chained_by_next() {
        let key = [0x11u8; 64];
        let crypt = crate::crypt_target(
            "aes-xts-plain64",
            &key,
            Path::new("/dev/vda"),
            32768,
            1000,
            512,
        );
        let linear = Target {
            start: 1000,
            length: 8,
            kind: "zero".into(),
            params: Zeroizing::new(String::new()),
        };
        let header = Header::named("d", "").unwrap();
        let buf = encode(&header, &[crypt.clone(), linear]).unwrap();
        assert_eq!(get_u32(&buf, OFF_TARGET_COUNT), 2);
        assert_eq!(get_u32(&buf, OFF_DATA_SIZE) as usize, buf.len());
        assert_eq!(buf.len() % 8, 0);
        let first = &buf[DM_IOCTL_SIZE..];
        assert_eq!(get_u64(first, 0), 0);
        assert_eq!(get_u64(first, 8), 1000);
        assert_eq!(c_string(&first[24..40]), "crypt");
        let params = c_string(&first[40..]);
        assert_eq!(
            params,
            format!("aes-xts-plain64 {} 0 /dev/vda 32768", "11".repeat(64))
        );
        let next = get_u32(first, 20) as usize;
        assert_eq!(next, (40 + params.len() + 1).next_multiple_of(8));
        let second = &first[next..];
        assert_eq!(get_u64(second, 0), 1000);
        assert_eq!(c_string(&second[24..40]), "zero");
    }

    #[test]
    fn a_4k_sector_size_is_passed_as_an_optional_parameter() {
        let target = crate::crypt_target("aes-xts-plain64", &[0; 64], Path::new("/x"), 8, 8, 4096);
        assert!(target.params.ends_with(" 0 /x 8 1 sector_size:4096"));
        assert!(!format!("{target:?}").contains("0000"), "{target:?}");
    }

    #[test]
    fn device_numbers_decode_the_huge_encoding() {
        let header = Header {
            dev: (254 << 8) | 3,
            ..Header::default()
        };
        assert_eq!(
            header.device(),
            DeviceNumber {
                major: 254,
                minor: 3
            }
        );
        assert_eq!(header.device().node(), Path::new("/dev/dm-3"));
        let wide = Header {
            dev: (253 << 8) | 0x34 | (0x12 << 20),
            ..Header::default()
        };
        assert_eq!(
            wide.device(),
            DeviceNumber {
                major: 253,
                minor: 0x1234
            }
        );
    }

    #[test]
    fn bad_names_and_parameters_are_refused() {
        assert!(Header::named("", "").is_err());
        assert!(Header::named("a/b", "").is_err());
        assert!(Header::named(&"x".repeat(128), "").is_err());
        let bad = Target {
            start: 0,
            length: 1,
            kind: "crypt".into(),
            params: Zeroizing::new("a\0b".into()),
        };
        assert!(encode(&Header::named("d", "").unwrap(), &[bad]).is_err());
    }

    #[test]
    fn short_or_foreign_answers_are_refused() {
        assert!(decode(&[0; 100]).is_err());
        let mut buf = vec![0u8; DM_IOCTL_SIZE];
        put_u32(&mut buf, 0, 5);
        assert!(decode(&buf).is_err());
    }
}
