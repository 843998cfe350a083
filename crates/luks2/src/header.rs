//! The LUKS2 binary header: 4096 bytes, big-endian, at the start of each of
//! the two header copies, followed by the JSON area.
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 6 | magic: `LUKS\xba\xbe` (primary), `SKUL\xba\xbe` (secondary) |
//! | 6 | 2 | version: 2 |
//! | 8 | 8 | hdr_size: binary header + JSON area, in bytes |
//! | 16 | 8 | seqid: bumped on every metadata update |
//! | 24 | 48 | label |
//! | 72 | 32 | checksum_alg: `sha256` |
//! | 104 | 64 | salt: random, per copy |
//! | 168 | 40 | uuid: text, NUL-padded |
//! | 208 | 48 | subsystem |
//! | 256 | 8 | hdr_offset: where this copy starts |
//! | 264 | 184 | zero |
//! | 448 | 64 | csum: the checksum, zero-padded |
//! | 512 | 3584 | zero |
//!
//! The checksum is the hash of the whole copy (`hdr_size` bytes: binary
//! header and JSON area) with the csum field zeroed.

use sha2::{Digest, Sha256};

use crate::Luks2Error;

/// The binary header's length.
pub(crate) const BIN_LEN: usize = 4096;
/// The primary header's magic.
pub(crate) const MAGIC_PRIMARY: &[u8; 6] = b"LUKS\xba\xbe";
/// The secondary header's magic.
pub(crate) const MAGIC_SECONDARY: &[u8; 6] = b"SKUL\xba\xbe";
/// The header copy sizes LUKS2 allows (16 KiB to 4 MiB, powers of two): the
/// secondary copy starts at the primary's size, so these are also where it
/// may be.
pub(crate) const HEADER_SIZES: [u64; 9] = [
    0x4000, 0x8000, 0x1_0000, 0x2_0000, 0x4_0000, 0x8_0000, 0x10_0000, 0x20_0000, 0x40_0000,
];

const VERSION: std::ops::Range<usize> = 6..8;
const HDR_SIZE: std::ops::Range<usize> = 8..16;
const SEQID: std::ops::Range<usize> = 16..24;
const LABEL: std::ops::Range<usize> = 24..72;
const CSUM_ALG: std::ops::Range<usize> = 72..104;
const SALT: std::ops::Range<usize> = 104..168;
const UUID: std::ops::Range<usize> = 168..208;
const SUBSYSTEM: std::ops::Range<usize> = 208..256;
const HDR_OFFSET: std::ops::Range<usize> = 256..264;
const PADDING: std::ops::Range<usize> = 264..448;
const CSUM: std::ops::Range<usize> = 448..512;
const PADDING_4096: std::ops::Range<usize> = 512..BIN_LEN;

/// Which of the two header copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderCopy {
    Primary,
    Secondary,
}

impl HeaderCopy {
    fn name(self) -> &'static str {
        match self {
            HeaderCopy::Primary => "primary header",
            HeaderCopy::Secondary => "secondary header",
        }
    }

    fn magic(self) -> &'static [u8; 6] {
        match self {
            HeaderCopy::Primary => MAGIC_PRIMARY,
            HeaderCopy::Secondary => MAGIC_SECONDARY,
        }
    }

    fn index(self) -> u64 {
        match self {
            HeaderCopy::Primary => 0,
            HeaderCopy::Secondary => 1,
        }
    }

    fn field(self, field: &str) -> String {
        format!("{} {field}", self.name())
    }
}

/// What a validated binary header holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BinHeader {
    pub(crate) hdr_size: u64,
    pub(crate) seqid: u64,
    pub(crate) uuid: String,
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(bytes);
    u64::from_be_bytes(b)
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// A NUL-padded text field: the text and whether the padding is clean.
fn padded_text(bytes: &[u8]) -> (&[u8], bool) {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    (&bytes[..end], all_zero(&bytes[end..]))
}

/// The copy's checksum: sha256 over `area` (`hdr_size` bytes) with the csum
/// field taken as zero.
pub(crate) fn checksum(area: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(&area[..CSUM.start]);
    hash.update([0u8; CSUM.end - CSUM.start]);
    hash.update(&area[CSUM.end..]);
    hash.finalize().into()
}

/// Whether `text` is a UUID as libuuid's `uuid_unparse` writes it: 36
/// lowercase hex digits and hyphens, 8-4-4-4-12.
fn is_uuid(text: &[u8]) -> bool {
    text.len() == 36
        && text.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// Formats 16 random bytes as a version-4 UUID, lowercase, as cryptsetup
/// (libuuid's `uuid_generate` + `uuid_unparse`) writes it.
pub(crate) fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// One header copy of `hdr_size` bytes, checksummed: the binary header for
/// `copy` and `json` (NUL-padded) as the JSON area.
pub(crate) fn encode(
    copy: HeaderCopy,
    hdr_size: u64,
    seqid: u64,
    salt: &[u8; 64],
    uuid: &str,
    json: &[u8],
) -> Vec<u8> {
    let len = usize::try_from(hdr_size).expect("header size fits in memory");
    assert!(
        json.len() < len - BIN_LEN,
        "JSON must leave room for its NUL"
    );
    assert!(
        uuid.len() < UUID.len(),
        "UUID field is 40 bytes, NUL-padded"
    );
    let mut area = vec![0u8; len];
    area[..6].copy_from_slice(copy.magic());
    area[VERSION].copy_from_slice(&2u16.to_be_bytes());
    area[HDR_SIZE].copy_from_slice(&hdr_size.to_be_bytes());
    area[SEQID].copy_from_slice(&seqid.to_be_bytes());
    area[CSUM_ALG.start..CSUM_ALG.start + 6].copy_from_slice(b"sha256");
    area[SALT].copy_from_slice(salt);
    area[UUID.start..UUID.start + uuid.len()].copy_from_slice(uuid.as_bytes());
    area[HDR_OFFSET].copy_from_slice(&(copy.index() * hdr_size).to_be_bytes());
    area[BIN_LEN..BIN_LEN + json.len()].copy_from_slice(json);
    let sum = checksum(&area);
    area[CSUM.start..CSUM.start + 32].copy_from_slice(&sum);
    area
}

/// Validates a copy's binary header (its first [`BIN_LEN`] bytes).
///
/// `expected_size` is the primary's `hdr_size` when checking the secondary:
/// the secondary was found there, so it must have that size too.
pub(crate) fn parse(
    bin: &[u8],
    copy: HeaderCopy,
    expected_size: Option<u64>,
) -> Result<BinHeader, Luks2Error> {
    assert_eq!(bin.len(), BIN_LEN, "a binary header is 4096 bytes");
    if &bin[..6] != copy.magic() {
        return Err(Luks2Error::corrupt(
            copy.field("magic"),
            format!("{:02x?} is not LUKS magic", &bin[..6]),
        ));
    }
    let version = u16::from_be_bytes([bin[VERSION.start], bin[VERSION.start + 1]]);
    if version != 2 {
        return Err(Luks2Error::unsupported(
            copy.field("version"),
            version.to_string(),
            "2",
        ));
    }
    let hdr_size = be_u64(&bin[HDR_SIZE]);
    if !HEADER_SIZES.contains(&hdr_size) {
        return Err(Luks2Error::corrupt(
            copy.field("hdr_size"),
            format!("{hdr_size} is not a LUKS2 header size (16 KiB to 4 MiB, a power of two)"),
        ));
    }
    if let Some(expected) = expected_size
        && hdr_size != expected
    {
        return Err(Luks2Error::corrupt(
            copy.field("hdr_size"),
            format!("{hdr_size}, but the primary header's is {expected}"),
        ));
    }
    let hdr_offset = be_u64(&bin[HDR_OFFSET]);
    if hdr_offset != copy.index() * hdr_size {
        return Err(Luks2Error::corrupt(
            copy.field("hdr_offset"),
            format!(
                "{hdr_offset}, but this copy is at {}",
                copy.index() * hdr_size
            ),
        ));
    }
    let (alg, clean) = padded_text(&bin[CSUM_ALG]);
    if alg != b"sha256" || !clean {
        return Err(Luks2Error::unsupported(
            copy.field("checksum_alg"),
            format!("{:?}", String::from_utf8_lossy(alg)),
            "sha256",
        ));
    }
    if !all_zero(&bin[LABEL]) {
        return Err(Luks2Error::unsupported(
            copy.field("label"),
            format!("{:?}", String::from_utf8_lossy(padded_text(&bin[LABEL]).0)),
            "an empty label",
        ));
    }
    if !all_zero(&bin[SUBSYSTEM]) {
        return Err(Luks2Error::unsupported(
            copy.field("subsystem"),
            format!(
                "{:?}",
                String::from_utf8_lossy(padded_text(&bin[SUBSYSTEM]).0)
            ),
            "an empty subsystem",
        ));
    }
    let (uuid, clean) = padded_text(&bin[UUID]);
    if !is_uuid(uuid) || !clean {
        return Err(Luks2Error::corrupt(
            copy.field("uuid"),
            format!("{:?} is not a UUID", String::from_utf8_lossy(uuid)),
        ));
    }
    if !all_zero(&bin[PADDING]) || !all_zero(&bin[CSUM.start + 32..CSUM.end]) {
        return Err(Luks2Error::corrupt(
            copy.field("padding"),
            "reserved bytes are not zero",
        ));
    }
    if !all_zero(&bin[PADDING_4096]) {
        return Err(Luks2Error::corrupt(
            copy.field("padding"),
            "reserved bytes are not zero",
        ));
    }
    Ok(BinHeader {
        hdr_size,
        seqid: be_u64(&bin[SEQID]),
        uuid: String::from_utf8_lossy(uuid).into_owned(),
    })
}

/// Checks a whole copy's checksum and returns its JSON text (the JSON area
/// up to its NUL terminator).
pub(crate) fn verify(area: &[u8], copy: HeaderCopy) -> Result<&[u8], Luks2Error> {
    let sum = checksum(area);
    if sum[..] != area[CSUM.start..CSUM.start + 32] {
        return Err(Luks2Error::corrupt(
            copy.field("checksum"),
            "does not match the header's contents",
        ));
    }
    let json = &area[BIN_LEN..];
    match json.iter().position(|&b| b == 0) {
        Some(end) => Ok(&json[..end]),
        None => Err(Luks2Error::corrupt(
            copy.field("JSON area"),
            "the JSON is not NUL-terminated",
        )),
    }
}

/// Offsets inside the binary header, for tests that tamper with it.
#[cfg(test)]
pub(crate) mod layout {
    pub(crate) const VERSION: usize = super::VERSION.start;
    pub(crate) const HDR_SIZE: usize = super::HDR_SIZE.start;
    pub(crate) const SEQID: usize = super::SEQID.start;
    pub(crate) const LABEL: usize = super::LABEL.start;
    pub(crate) const CSUM_ALG: usize = super::CSUM_ALG.start;
    pub(crate) const UUID: usize = super::UUID.start;
    pub(crate) const SUBSYSTEM: usize = super::SUBSYSTEM.start;
    pub(crate) const HDR_OFFSET: usize = super::HDR_OFFSET.start;
    pub(crate) const PADDING: usize = super::PADDING.start;
    pub(crate) const CSUM: usize = super::CSUM.start;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_covers_everything_but_the_csum_field() {
        let area = encode(
            HeaderCopy::Primary,
            0x4000,
            1,
            &[9; 64],
            &uuid_v4([1; 16]),
            b"{}",
        );
        // Recompute by hand: sha256 of the area with bytes 448..512 zeroed.
        let mut zeroed = area.clone();
        zeroed[448..512].fill(0);
        let expected: [u8; 32] = Sha256::digest(&zeroed).into();
        assert_eq!(area[448..480], expected);
        assert!(area[480..512].iter().all(|&b| b == 0));
        assert_eq!(verify(&area, HeaderCopy::Primary).unwrap(), b"{}");
        // Any byte of the binary header or the JSON area is covered.
        for at in [0, 100, 447, 512, 4095, 4096, 0x3fff] {
            let mut bad = area.clone();
            bad[at] ^= 0x80;
            let err = verify(&bad, HeaderCopy::Primary).unwrap_err();
            assert!(
                matches!(&err, Luks2Error::Corrupt { what, .. } if what == "primary header checksum"),
                "byte {at}: {err}"
            );
        }
    }

    #[test]
    fn uuid_is_v4_and_lowercase() {
        let u = uuid_v4([0xff; 16]);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert!(is_uuid(u.as_bytes()));
        assert!(!is_uuid(b"FFFFFFFF-FFFF-4FFF-BFFF-FFFFFFFFFFFF"));
    }

    #[test]
    fn both_copies_parse() {
        for (copy, size) in [
            (HeaderCopy::Primary, 0x4000),
            (HeaderCopy::Secondary, 0x8000),
        ] {
            let area = encode(copy, size, 7, &[0; 64], &uuid_v4([3; 16]), b"{}");
            let hdr = parse(&area[..BIN_LEN], copy, None).unwrap();
            assert_eq!(hdr.hdr_size, size);
            assert_eq!(hdr.seqid, 7);
            assert_eq!(hdr.uuid, uuid_v4([3; 16]));
        }
    }
}
