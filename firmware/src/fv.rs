//! Firmware volumes, FFS files and their sections (UEFI PI spec vol. 3),
//! read far enough to find which volume holds which file.
//!
//! OVMF's boot firmware volume holds `FVMAIN_COMPACT`, whose one file is an
//! LZMA-compressed GUIDed section wrapping the PEI and DXE volumes; this
//! module decompresses such sections and descends into nested volumes.

use lzma_rs::decompress::{Options, UnpackedSize};

use crate::FirmwareError;
use crate::bytes::{
    Guid, align_up, guid_at, slice, to_usize, u8_at, u16_at, u24_at, u32_at, u64_at,
};

/// `EFI_FIRMWARE_FILE_SYSTEM2_GUID`.
const FFS2: Guid = Guid::new(
    0x8c8c_e578,
    0x8a3d,
    0x4f1c,
    [0x99, 0x35, 0x89, 0x61, 0x85, 0xc3, 0x2d, 0xd3],
);
/// `EFI_FIRMWARE_FILE_SYSTEM3_GUID`.
const FFS3: Guid = Guid::new(
    0x5473_c07a,
    0x3dcb,
    0x4dca,
    [0xbd, 0x6f, 0x1e, 0x96, 0x89, 0xe7, 0x34, 0x9a],
);
/// `LZMA_CUSTOM_DECOMPRESS_GUID`: EDK II's LZMA GUIDed section.
const LZMA_SECTION: Guid = Guid::new(
    0xee4e_5898,
    0x3914,
    0x4259,
    [0x9d, 0x6e, 0xdc, 0x7b, 0xd7, 0x94, 0x03, 0xcf],
);

const FV_HEADER_MIN: usize = 0x38;
/// `EFI_FVB2_ERASE_POLARITY`: free space and unset state bits read as 1.
const ERASE_POLARITY: u32 = 0x800;
const FILE_HEADER: usize = 24;
const FILE_HEADER2: usize = 32;
/// `FFS_ATTRIB_LARGE_FILE`.
const FILE_LARGE: u8 = 0x01;
/// `EFI_FILE_DELETED`.
const FILE_DELETED: u8 = 0x20;
/// `EFI_FV_FILETYPE_RAW`: no sections.
const FILE_RAW: u8 = 0x01;
/// `EFI_FV_FILETYPE_FFS_PAD`.
const FILE_PAD: u8 = 0xF0;

const SECTION_COMPRESSION: u8 = 0x01;
const SECTION_GUID_DEFINED: u8 = 0x02;
const SECTION_PE32: u8 = 0x10;
const SECTION_USER_INTERFACE: u8 = 0x15;
const SECTION_FIRMWARE_VOLUME_IMAGE: u8 = 0x17;
/// `EFI_GUIDED_SECTION_PROCESSING_REQUIRED`.
const GUIDED_PROCESSING_REQUIRED: u16 = 0x01;

/// Nesting beyond which a volume is taken to be malicious rather than OVMF.
const MAX_DEPTH: usize = 8;
/// Largest decompressed section accepted (OVMF's DXE volume is 12 MiB).
const MAX_DECOMPRESSED: u64 = 64 << 20;
/// Most bytes decompressed for one image, so that an image of many small
/// compressed sections cannot make a measurement take minutes.
const MAX_DECOMPRESSED_TOTAL: u64 = 256 << 20;

/// What a walk over an image has found so far.
struct Walk {
    volumes: Vec<VolumeSummary>,
    decompressed: u64,
}

/// A firmware file, as far as the boot manager looks at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileSummary {
    /// The file's GUID.
    pub(crate) name: Guid,
    /// Its user-interface name in UTF-16 units, without the terminator.
    pub(crate) ui_name: Option<Vec<u16>>,
    /// Whether it holds a PE32 image section.
    pub(crate) has_pe32: bool,
}

/// A firmware volume and the files directly in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VolumeSummary {
    /// The volume's name from its extended header, if it has one.
    pub(crate) name: Option<Guid>,
    pub(crate) files: Vec<FileSummary>,
}

/// Every firmware volume in `region` (volumes laid end to end, as in a
/// flash image) and, recursively, in their files' sections.
pub(crate) fn volumes(region: &[u8]) -> Result<Vec<VolumeSummary>, FirmwareError> {
    let mut walk = Walk {
        volumes: Vec::new(),
        decompressed: 0,
    };
    let mut offset = 0;
    while let Some(rest) = region.get(offset..) {
        if rest.len() < FV_HEADER_MIN || &rest[40..44] != b"_FVH" {
            break;
        }
        let len = volume(rest, offset, 0, &mut walk)?;
        offset += len;
    }
    Ok(walk.volumes)
}

/// Reads the volume at the start of `bytes` into `walk`; returns its length.
fn volume(
    bytes: &[u8],
    offset: usize,
    depth: usize,
    walk: &mut Walk,
) -> Result<usize, FirmwareError> {
    let bad = |reason| FirmwareError::BadFirmwareVolume { offset, reason };
    if depth > MAX_DEPTH {
        return Err(bad("volumes are nested too deeply"));
    }
    let what = "firmware volume header";
    if slice(bytes, 40, 4, what)? != b"_FVH" {
        return Err(bad("no _FVH signature"));
    }
    let len = to_usize(u64_at(bytes, 32, what)?, what)?;
    let fv = bytes
        .get(..len)
        .filter(|_| len >= FV_HEADER_MIN)
        .ok_or(bad("length is out of range"))?;
    let file_system = guid_at(fv, 16, what)?;
    let attributes = u32_at(fv, 44, what)?;
    let header_len = usize::from(u16_at(fv, 48, what)?);
    let ext_offset = usize::from(u16_at(fv, 52, what)?);

    let (name, files_start) = if ext_offset == 0 {
        (None, header_len)
    } else {
        let name = guid_at(fv, ext_offset, "firmware volume extended header")?;
        let ext_len = to_usize(
            u32_at(fv, ext_offset + 16, "firmware volume extended header")?.into(),
            what,
        )?;
        (Some(name), ext_offset.saturating_add(ext_len))
    };
    let index = walk.volumes.len();
    walk.volumes.push(VolumeSummary {
        name,
        files: Vec::new(),
    });
    if file_system != FFS2 && file_system != FFS3 {
        // A volume of another format (the variable store): no files.
        return Ok(len);
    }

    let erased = if attributes & ERASE_POLARITY != 0 {
        0xFF
    } else {
        0
    };
    let mut files = Vec::new();
    let mut at = align_up(files_start, 8).ok_or(bad("header length overflows"))?;
    while at + FILE_HEADER <= fv.len() {
        let header = &fv[at..at + FILE_HEADER];
        if header.iter().all(|&b| b == erased) {
            break;
        }
        let name = guid_at(header, 0, "FFS file header")?;
        let kind = header[18];
        let file_attributes = header[19];
        let state = if erased == 0xFF {
            !header[23]
        } else {
            header[23]
        };
        let (size, data_start) = if file_attributes & FILE_LARGE != 0 && file_system == FFS3 {
            let size = to_usize(u64_at(fv, at + FILE_HEADER, "FFS file header")?, what)?;
            (size, FILE_HEADER2)
        } else {
            (
                to_usize(u24_at(header, 20, "FFS file header")?.into(), what)?,
                FILE_HEADER,
            )
        };
        let data = fv
            .get(at + data_start..at.saturating_add(size))
            .filter(|_| size >= data_start)
            .ok_or(bad("file size is out of range"))?;
        if kind != FILE_PAD && kind != FILE_RAW && state & FILE_DELETED == 0 {
            let mut summary = FileSummary {
                name,
                ui_name: None,
                has_pe32: false,
            };
            sections(data, offset, depth, &mut summary, walk)?;
            files.push(summary);
        }
        at = align_up(at + size, 8).ok_or(bad("file size overflows"))?;
    }
    walk.volumes[index].files = files;
    Ok(len)
}

/// Reads the sections in `data` into `file` (and any volumes into `walk`).
fn sections(
    data: &[u8],
    offset: usize,
    depth: usize,
    file: &mut FileSummary,
    walk: &mut Walk,
) -> Result<(), FirmwareError> {
    let bad = |reason| FirmwareError::BadFirmwareVolume { offset, reason };
    if depth > MAX_DEPTH {
        return Err(bad("sections are nested too deeply"));
    }
    let mut at = 0;
    while at + 4 <= data.len() {
        let what = "FFS section header";
        let size24 = u24_at(data, at, what)?;
        let kind = u8_at(data, at + 3, what)?;
        let (size, header) = if size24 == 0xFF_FFFF {
            (to_usize(u32_at(data, at + 4, what)?.into(), what)?, 8)
        } else {
            (to_usize(size24.into(), what)?, 4)
        };
        let section = data
            .get(at..at.saturating_add(size))
            .filter(|_| size >= header)
            .ok_or(bad("section size is out of range"))?;
        let body = &section[header..];
        match kind {
            SECTION_USER_INTERFACE => {
                let units = body
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .take_while(|&u| u != 0)
                    .collect();
                file.ui_name = Some(units);
            }
            SECTION_PE32 => file.has_pe32 = true,
            SECTION_FIRMWARE_VOLUME_IMAGE => {
                volume(body, offset, depth + 1, walk)?;
            }
            // EFI_COMPRESSION_SECTION: u32 length, u8 type. Only the
            // uncompressed form is read; OVMF compresses with LZMA.
            SECTION_COMPRESSION if u8_at(body, 4, "compression section")? == 0 => {
                sections(&body[5..], offset, depth + 1, file, walk)?;
            }
            SECTION_GUID_DEFINED => {
                let guid = guid_at(body, 0, "GUID-defined section")?;
                let data_offset = usize::from(u16_at(body, 16, "GUID-defined section")?);
                let attributes = u16_at(body, 18, "GUID-defined section")?;
                let inner = section
                    .get(data_offset..)
                    .ok_or(bad("GUID-defined section data offset is out of range"))?;
                if guid == LZMA_SECTION {
                    let plain = decompress(inner, &mut walk.decompressed)?;
                    sections(&plain, offset, depth + 1, file, walk)?;
                } else if attributes & GUIDED_PROCESSING_REQUIRED == 0 {
                    sections(inner, offset, depth + 1, file, walk)?;
                }
            }
            _ => {}
        }
        at = align_up(at + size, 4).ok_or(bad("section size overflows"))?;
    }
    Ok(())
}

/// Decompresses an EDK II LZMA section: a `.lzma` stream (5 property bytes,
/// the `u64` unpacked size, then the data). `total` counts the bytes
/// decompressed so far for the image.
fn decompress(data: &[u8], total: &mut u64) -> Result<Vec<u8>, FirmwareError> {
    let size = u64_at(data, 5, "LZMA header")?;
    if size > MAX_DECOMPRESSED {
        return Err(FirmwareError::BadFirmwareVolume {
            offset: 0,
            reason: "LZMA section unpacks to more than 64 MiB",
        });
    }
    *total += size;
    if *total > MAX_DECOMPRESSED_TOTAL {
        return Err(FirmwareError::BadFirmwareVolume {
            offset: 0,
            reason: "LZMA sections unpack to more than 256 MiB in all",
        });
    }
    let mut out = Vec::with_capacity(to_usize(size, "LZMA header")?);
    let options = Options {
        unpacked_size: UnpackedSize::ReadFromHeader,
        memlimit: usize::try_from(MAX_DECOMPRESSED).ok(),
        allow_incomplete: false,
    };
    lzma_rs::lzma_decompress_with_options(&mut &data[..], &mut out, &options)
        .map_err(FirmwareError::Decompress)?;
    Ok(out)
}

/// Test helpers that assemble volumes, files and sections.
#[cfg(test)]
// Fixture sizes are small constants: the narrowing casts cannot truncate.
#[allow(clippy::cast_possible_truncation)]
pub(crate) mod build {
    use super::*;

    /// A section of `kind` around `body`, padded to 4 bytes.
    pub(crate) fn section(kind: u8, body: &[u8]) -> Vec<u8> {
        let size = (4 + body.len()) as u32;
        let mut out = size.to_le_bytes()[..3].to_vec();
        out.push(kind);
        out.extend_from_slice(body);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out
    }

    /// A user-interface section naming `name`.
    pub(crate) fn ui(name: &str) -> Vec<u8> {
        let mut body: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
        body.extend_from_slice(&[0, 0]);
        section(SECTION_USER_INTERFACE, &body)
    }

    /// A PE32 section (its contents do not matter here).
    pub(crate) fn pe32() -> Vec<u8> {
        section(SECTION_PE32, b"MZ")
    }

    /// An LZMA GUIDed section holding `sections`.
    pub(crate) fn lzma(sections: &[u8]) -> Vec<u8> {
        // EDK II writes the unpacked size into the header.
        let options = lzma_rs::compress::Options {
            unpacked_size: lzma_rs::compress::UnpackedSize::WriteToHeader(Some(
                sections.len() as u64
            )),
        };
        let mut packed = Vec::new();
        lzma_rs::lzma_compress_with_options(&mut &sections[..], &mut packed, &options).unwrap();
        let mut body = LZMA_SECTION.0.to_vec();
        body.extend_from_slice(&24u16.to_le_bytes());
        body.extend_from_slice(&GUIDED_PROCESSING_REQUIRED.to_le_bytes());
        body.extend_from_slice(&packed);
        section(SECTION_GUID_DEFINED, &body)
    }

    /// A firmware-volume-image section holding `fv`.
    pub(crate) fn fv_image(fv: &[u8]) -> Vec<u8> {
        section(SECTION_FIRMWARE_VOLUME_IMAGE, fv)
    }

    /// An FFS file named `name` of `kind` holding `sections`.
    pub(crate) fn file(name: Guid, kind: u8, sections: &[u8]) -> Vec<u8> {
        let mut out = name.0.to_vec();
        out.extend_from_slice(&[0, 0, kind, 0]);
        out.extend_from_slice(&((24 + sections.len()) as u32).to_le_bytes()[..3]);
        out.push(!0x07); // header, header valid, data valid; erase polarity 1
        out.extend_from_slice(sections);
        out
    }

    /// An FFS2 volume (erase polarity 1) named `name` holding `files`.
    pub(crate) fn ffs_volume(name: Option<Guid>, files: &[Vec<u8>]) -> Vec<u8> {
        let mut fv = vec![0u8; 0x48];
        fv[16..32].copy_from_slice(&FFS2.0);
        fv[40..44].copy_from_slice(b"_FVH");
        fv[44..48].copy_from_slice(&(ERASE_POLARITY | 0xFF).to_le_bytes());
        fv[48..50].copy_from_slice(&0x48u16.to_le_bytes());
        fv[55] = 2;
        if let Some(name) = name {
            fv[52..54].copy_from_slice(&0x48u16.to_le_bytes());
            fv.extend_from_slice(&name.0);
            fv.extend_from_slice(&20u32.to_le_bytes());
        }
        for file in files {
            while !fv.len().is_multiple_of(8) {
                fv.push(0xFF);
            }
            fv.extend_from_slice(file);
        }
        while !fv.len().is_multiple_of(8) {
            fv.push(0xFF);
        }
        fv.extend_from_slice(&[0xFF; 64]);
        let len = fv.len() as u64;
        fv[32..40].copy_from_slice(&len.to_le_bytes());
        fv
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    const A: Guid = Guid([0xA; 16]);
    const B: Guid = Guid([0xB; 16]);
    const INNER: Guid = Guid([0xC; 16]);

    #[test]
    fn finds_files_in_nested_compressed_volumes() {
        let inner = ffs_volume(
            Some(INNER),
            &[file(B, 0x09, &[ui("UiApp"), pe32()].concat())],
        );
        let outer = ffs_volume(None, &[file(A, 0x0B, &lzma(&fv_image(&inner)))]);
        let found = volumes(&[outer.clone(), outer].concat()).unwrap();
        assert_eq!(found.len(), 4, "two outer volumes, each with one inner");
        assert_eq!(found[0].name, None);
        assert_eq!(found[0].files[0].name, A);
        assert_eq!(found[1].name, Some(INNER));
        assert_eq!(
            found[1].files,
            vec![FileSummary {
                name: B,
                ui_name: Some("UiApp".encode_utf16().collect()),
                has_pe32: true,
            }]
        );
    }

    #[test]
    fn malformed_volumes_are_errors_not_panics() {
        let good = ffs_volume(Some(INNER), &[file(B, 0x09, &ui("UiApp"))]);
        // Every truncation and every single-byte corruption either parses or
        // fails with an error.
        for len in 0..good.len() {
            let _ = volumes(&good[..len]);
        }
        for i in 0..good.len() {
            for flip in [0x01, 0x80, 0xFF] {
                let mut bad = good.clone();
                bad[i] ^= flip;
                let _ = volumes(&bad);
            }
        }
        let mut bad = good.clone();
        bad[0x48 + 20 + 4 + 20..0x48 + 20 + 4 + 23].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
        assert!(matches!(
            volumes(&bad),
            Err(FirmwareError::BadFirmwareVolume { .. })
        ));
    }

    #[test]
    fn corrupt_lzma_is_a_decompress_error() {
        let mut section = lzma(&ui("x"));
        let n = section.len();
        section[n - 8..].fill(0x55);
        section[24 + 5..24 + 13].copy_from_slice(&1000u64.to_le_bytes());
        let fv = ffs_volume(None, &[file(A, 0x0B, &section)]);
        assert!(matches!(volumes(&fv), Err(FirmwareError::Decompress(_))));
    }
}
