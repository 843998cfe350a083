//! Bounds-checked little-endian reads and the EFI GUID byte layout.

use std::fmt;

use crate::FirmwareError;

/// Bytes `offset..offset + len` of `data`, or a [`FirmwareError::Truncated`]
/// naming `what`.
pub(crate) fn slice<'a>(
    data: &'a [u8],
    offset: usize,
    len: usize,
    what: &'static str,
) -> Result<&'a [u8], FirmwareError> {
    offset
        .checked_add(len)
        .and_then(|end| data.get(offset..end))
        .ok_or_else(|| FirmwareError::truncated(what, offset, len, data.len()))
}

/// `N` bytes at `offset`.
pub(crate) fn array<const N: usize>(
    data: &[u8],
    offset: usize,
    what: &'static str,
) -> Result<[u8; N], FirmwareError> {
    let bytes = slice(data, offset, N, what)?;
    let mut out = [0; N];
    out.copy_from_slice(bytes);
    Ok(out)
}

/// The byte at `offset`.
pub(crate) fn u8_at(data: &[u8], offset: usize, what: &'static str) -> Result<u8, FirmwareError> {
    Ok(array::<1>(data, offset, what)?[0])
}

/// The little-endian `u16` at `offset`.
pub(crate) fn u16_at(data: &[u8], offset: usize, what: &'static str) -> Result<u16, FirmwareError> {
    array(data, offset, what).map(u16::from_le_bytes)
}

/// The little-endian `u32` at `offset`.
pub(crate) fn u32_at(data: &[u8], offset: usize, what: &'static str) -> Result<u32, FirmwareError> {
    array(data, offset, what).map(u32::from_le_bytes)
}

/// The little-endian `u64` at `offset`.
pub(crate) fn u64_at(data: &[u8], offset: usize, what: &'static str) -> Result<u64, FirmwareError> {
    array(data, offset, what).map(u64::from_le_bytes)
}

/// The 24-bit little-endian size fields of FFS file and section headers.
pub(crate) fn u24_at(data: &[u8], offset: usize, what: &'static str) -> Result<u32, FirmwareError> {
    let [a, b, c] = array(data, offset, what)?;
    Ok(u32::from_le_bytes([a, b, c, 0]))
}

/// The GUID at `offset`.
pub(crate) fn guid_at(
    data: &[u8],
    offset: usize,
    what: &'static str,
) -> Result<Guid, FirmwareError> {
    array(data, offset, what).map(Guid)
}

/// `value` as a `usize`, or a [`FirmwareError::Truncated`]: on the 64-bit
/// hosts this crate runs on it always fits, and if it did not, nothing that
/// large could be in memory anyway.
pub(crate) fn to_usize(value: u64, what: &'static str) -> Result<usize, FirmwareError> {
    usize::try_from(value).map_err(|_| FirmwareError::truncated(what, 0, usize::MAX, 0))
}

/// `value` rounded up to a multiple of `align` (a power of two), or `None`
/// on overflow.
pub(crate) fn align_up(value: usize, align: usize) -> Option<usize> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

/// An EFI GUID in its on-disk byte order: the first three fields
/// little-endian, the last eight bytes as written.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Guid(pub(crate) [u8; 16]);

impl Guid {
    /// The GUID written `d1-d2-d3-d4[0..2]-d4[2..8]`.
    pub(crate) const fn new(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Self {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Self([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            b[8],
            b[9]
        )?;
        b[10..].iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `text` as UCS-2, one 16-bit unit per byte, the way EDK II widens an ASCII
/// string (`%a` into a `CHAR16` buffer). Used for names that are ASCII.
pub(crate) fn widen_ascii(text: &[u8]) -> Vec<u8> {
    text.iter().flat_map(|&b| [b, 0]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_layout_and_display_follow_the_efi_convention() {
        // The TDX metadata offset GUID as the TDVF spec writes it, and the
        // bytes OVMF stores for it.
        let guid = Guid::new(
            0xe47a_6535,
            0x984a,
            0x4798,
            [0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2],
        );
        assert_eq!(
            guid.0,
            [
                0x35, 0x65, 0x7a, 0xe4, 0x4a, 0x98, 0x98, 0x47, 0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf,
                0x8e, 0xc2
            ]
        );
        assert_eq!(guid.to_string(), "e47a6535-984a-4798-865e-4685a7bf8ec2");
    }

    #[test]
    fn reads_are_bounds_checked() {
        let data = [1, 2, 3];
        assert_eq!(u16_at(&data, 1, "x").unwrap(), 0x0302);
        assert!(matches!(
            u32_at(&data, 0, "x"),
            Err(FirmwareError::Truncated { needed: 4, .. })
        ));
        assert!(slice(&data, usize::MAX, 2, "x").is_err());
        assert_eq!(u24_at(&[1, 2, 3, 4], 0, "x").unwrap(), 0x030201);
        assert_eq!(align_up(9, 8), Some(16));
        assert_eq!(align_up(usize::MAX, 8), None);
    }
}
