//! QEMU's fw_cfg device as the firmware reads it on x86: a 16-bit selector
//! port and an 8-bit data port, and a directory of named files.
//!
//! Selecting an item resets its read offset; each data read returns the
//! next byte. Item [`FILE_DIR`] is the directory: a big-endian `u32` count,
//! then one 64-byte entry per file (`u32` size BE, `u16` select BE,
//! `u16` reserved, `char name[56]` NUL-terminated).

/// The selector port (written 16 bits wide).
pub(crate) const SELECTOR_PORT: u16 = 0x510;
/// The data port (read 8 bits wide).
pub(crate) const DATA_PORT: u16 = 0x511;
/// The selector of the file directory.
pub(crate) const FILE_DIR: u16 = 0x19;
/// Bytes of one directory entry.
pub(crate) const DIR_ENTRY_LEN: usize = 64;
/// Bytes of the name field of a directory entry.
const NAME_LEN: usize = 56;
/// More files than any QEMU has (its default is 32 slots, the most a
/// machine type asks for is 1024): a larger count is a misread.
const MAX_FILES: u32 = 4096;

/// The linker/loader script: how the firmware allocates, patches and
/// checksums the two blobs below.
pub(crate) const TABLE_LOADER: &str = "etc/table-loader";
/// The RSDP, before the loader patches in the RSDT's address.
pub(crate) const RSDP: &str = "etc/acpi/rsdp";
/// Every other ACPI table, back to back.
pub(crate) const TABLES: &str = "etc/acpi/tables";

/// One file of the fw_cfg directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FwCfgFile {
    /// Its name, e.g. `etc/acpi/tables`.
    pub(crate) name: String,
    /// Its size in bytes.
    pub(crate) size: u32,
    /// The selector that reads it.
    pub(crate) select: u16,
}

/// A file directory that cannot be what QEMU sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// The count is beyond any QEMU's.
    #[error("the directory claims {0} files")]
    TooManyFiles(u32),
    /// The entries' bytes do not match the count.
    #[error("the directory has {got} bytes of entries where its count needs {want}")]
    Length {
        /// Bytes given.
        got: usize,
        /// Bytes the count needs.
        want: usize,
    },
    /// An entry's name is not NUL-terminated UTF-8.
    #[error("entry {index} has no NUL-terminated UTF-8 name")]
    Name {
        /// The entry's position.
        index: usize,
    },
}

/// The number of files, from the directory's first four bytes.
pub(crate) fn file_count(head: [u8; 4]) -> Result<u32, DirectoryError> {
    let count = u32::from_be_bytes(head);
    if count > MAX_FILES {
        return Err(DirectoryError::TooManyFiles(count));
    }
    Ok(count)
}

/// Bytes of entries that `count` files take.
pub(crate) fn entries_len(count: u32) -> usize {
    usize::try_from(count).map_or(usize::MAX, |n| n.saturating_mul(DIR_ENTRY_LEN))
}

/// The directory's entries (the bytes after the count).
pub(crate) fn parse_entries(count: u32, bytes: &[u8]) -> Result<Vec<FwCfgFile>, DirectoryError> {
    let want = entries_len(count);
    if bytes.len() != want {
        return Err(DirectoryError::Length {
            got: bytes.len(),
            want,
        });
    }
    bytes
        .chunks_exact(DIR_ENTRY_LEN)
        .enumerate()
        .map(|(index, entry)| {
            let (head, name) = entry.split_at(DIR_ENTRY_LEN - NAME_LEN);
            let end = name
                .iter()
                .position(|&b| b == 0)
                .ok_or(DirectoryError::Name { index })?;
            let name =
                std::str::from_utf8(&name[..end]).map_err(|_| DirectoryError::Name { index })?;
            Ok(FwCfgFile {
                name: name.to_owned(),
                size: u32::from_be_bytes([head[0], head[1], head[2], head[3]]),
                select: u16::from_be_bytes([head[4], head[5]]),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(size: u32, select: u16, name: &str) -> Vec<u8> {
        let mut e = Vec::with_capacity(DIR_ENTRY_LEN);
        e.extend_from_slice(&size.to_be_bytes());
        e.extend_from_slice(&select.to_be_bytes());
        e.extend_from_slice(&[0, 0]);
        e.extend_from_slice(name.as_bytes());
        e.resize(DIR_ENTRY_LEN, 0);
        e
    }

    #[test]
    fn entries_are_big_endian_with_nul_terminated_names() {
        let mut bytes = entry(20, 0x22, RSDP);
        bytes.extend(entry(131_072, 0x23, TABLES));
        bytes.extend(entry(4096, 0x2c, TABLE_LOADER));
        let files = parse_entries(3, &bytes).unwrap();
        assert_eq!(
            files,
            [
                FwCfgFile {
                    name: RSDP.into(),
                    size: 20,
                    select: 0x22
                },
                FwCfgFile {
                    name: TABLES.into(),
                    size: 131_072,
                    select: 0x23
                },
                FwCfgFile {
                    name: TABLE_LOADER.into(),
                    size: 4096,
                    select: 0x2c
                },
            ]
        );
    }

    #[test]
    fn the_count_is_big_endian_and_bounded() {
        assert_eq!(file_count([0, 0, 0, 15]), Ok(15));
        assert_eq!(file_count([0, 0, 0x10, 0]), Ok(4096));
        assert_eq!(
            file_count([0x0f, 0, 0, 0]),
            Err(DirectoryError::TooManyFiles(0x0f00_0000))
        );
        assert_eq!(entries_len(2), 128);
    }

    #[test]
    fn entries_must_match_the_count() {
        let bytes = entry(1, 0x20, "bootorder");
        assert_eq!(
            parse_entries(2, &bytes),
            Err(DirectoryError::Length { got: 64, want: 128 })
        );
        assert_eq!(parse_entries(0, &[]), Ok(vec![]));
    }

    #[test]
    fn a_name_must_end_in_nul_and_be_utf8() {
        let mut full = entry(1, 0x20, "");
        full[8..].fill(b'a');
        assert_eq!(
            parse_entries(1, &full),
            Err(DirectoryError::Name { index: 0 })
        );
        let mut bytes = entry(1, 0x20, "ok");
        let mut bad = entry(1, 0x21, "");
        bad[8] = 0xff;
        bytes.extend(bad);
        assert_eq!(
            parse_entries(2, &bytes),
            Err(DirectoryError::Name { index: 1 })
        );
        // The longest name QEMU allows: 55 bytes and the NUL.
        let long = "x".repeat(NAME_LEN - 1);
        assert_eq!(
            parse_entries(1, &entry(1, 0x20, &long)).unwrap()[0].name,
            long
        );
    }
}
