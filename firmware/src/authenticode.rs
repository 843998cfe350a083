//! The Authenticode SHA-384 of a PE/COFF image, computed as EDK II's
//! measured-boot code does (`Tcg2MeasurePeImage`, following the Authenticode
//! spec) when OVMF loads the kernel as an EFI application.
//!
//! The digest covers: the headers up to `SizeOfHeaders` less the optional
//! header's `CheckSum` and the certificate-table data directory entry; each
//! section's raw data in file order; then whatever follows the sections,
//! less the certificate table's size. Unlike some signing tools, EDK II does
//! not pad the image to a multiple of 8 bytes.

use sha2::{Digest, Sha384};

use crate::FirmwareError;
use crate::bytes::{slice, to_usize, u16_at, u32_at, u64_at};
use crate::event::Digest384;

const DOS_MAGIC: u16 = 0x5A4D; // "MZ"
const PE_SIGNATURE: u32 = 0x0000_4550; // "PE\0\0"
const PE32_MAGIC: u16 = 0x010B;
const PE32_PLUS_MAGIC: u16 = 0x020B;
/// `EFI_IMAGE_DIRECTORY_ENTRY_SECURITY`: the certificate table.
const SECURITY_DIRECTORY: usize = 4;
const SECTION_HEADER_LEN: usize = 40;

/// What the measurement of a PE image needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeMeasurement {
    /// The Authenticode SHA-384.
    pub(crate) digest: Digest384,
    /// The optional header's `ImageBase` (the image's link-time address).
    pub(crate) image_base: u64,
}

/// Measures `image` as EDK II does before starting it.
pub(crate) fn measure(image: &[u8]) -> Result<PeMeasurement, FirmwareError> {
    let not_pe = |reason| FirmwareError::NotPeKernel { reason };
    let read16 =
        |offset| u16_at(image, offset, "PE header").map_err(|_| not_pe("headers are truncated"));
    let read32 =
        |offset| u32_at(image, offset, "PE header").map_err(|_| not_pe("headers are truncated"));

    if read16(0)? != DOS_MAGIC {
        return Err(not_pe("no MZ signature"));
    }
    let pe = to_usize(read32(0x3C)?.into(), "PE header")?;
    if read32(pe)? != PE_SIGNATURE {
        return Err(not_pe("no PE signature at e_lfanew"));
    }
    let coff = pe + 4;
    let sections = usize::from(read16(coff + 2)?);
    let optional_len = usize::from(read16(coff + 16)?);
    let optional = coff + 20;
    let (rva_count_at, directories_at, image_base) = match read16(optional)? {
        PE32_MAGIC => (
            optional + 92,
            optional + 96,
            u64::from(read32(optional + 28)?),
        ),
        PE32_PLUS_MAGIC => (
            optional + 108,
            optional + 112,
            u64_at(image, optional + 24, "PE header")
                .map_err(|_| not_pe("headers are truncated"))?,
        ),
        _ => return Err(not_pe("optional header magic is neither PE32 nor PE32+")),
    };
    let checksum_at = optional + 64;
    let headers_len = to_usize(read32(optional + 60)?.into(), "PE header")?;
    let rva_count = to_usize(read32(rva_count_at)?.into(), "PE header")?;
    let has_security = rva_count > SECURITY_DIRECTORY;
    let security_at = directories_at + 8 * SECURITY_DIRECTORY;
    let cert_size = if has_security {
        to_usize(read32(security_at + 4)?.into(), "PE header")?
    } else {
        0
    };

    let mut hasher = Sha384::new();
    let mut hash = |from: usize, to: usize| -> Result<(), FirmwareError> {
        let bytes = to
            .checked_sub(from)
            .and_then(|len| image.get(from..from + len))
            .ok_or(not_pe("a hashed range lies outside the image"))?;
        hasher.update(bytes);
        Ok(())
    };
    hash(0, checksum_at)?;
    if has_security {
        hash(checksum_at + 4, security_at)?;
        hash(security_at + 8, headers_len)?;
    } else {
        hash(checksum_at + 4, headers_len)?;
    }

    let table = slice(
        image,
        optional + optional_len,
        sections * SECTION_HEADER_LEN,
        "PE section table",
    )
    .map_err(|_| not_pe("section table is truncated"))?;
    let mut raw: Vec<(usize, usize)> = table
        .chunks_exact(SECTION_HEADER_LEN)
        .map(|s| {
            let size = u32_at(s, 16, "PE section header")?;
            let offset = u32_at(s, 20, "PE section header")?;
            Ok((to_usize(offset.into(), "PE")?, to_usize(size.into(), "PE")?))
        })
        .collect::<Result<_, FirmwareError>>()?;
    // Sorted by PointerToRawData; a stable sort keeps table order on ties.
    raw.sort_by_key(|&(offset, _)| offset);
    let mut hashed = headers_len;
    for (offset, size) in raw.into_iter().filter(|&(_, size)| size > 0) {
        let end = offset
            .checked_add(size)
            .ok_or(not_pe("a section's raw data lies outside the image"))?;
        hash(offset, end).map_err(|_| not_pe("a section's raw data lies outside the image"))?;
        hashed += size;
    }

    if image.len() > hashed {
        let trailing_end = image
            .len()
            .checked_sub(cert_size)
            .filter(|&end| end >= hashed)
            .ok_or(not_pe(
                "certificate table is larger than the image's trailing data",
            ))?;
        hash(hashed, trailing_end)?;
    }
    Ok(PeMeasurement {
        digest: hasher.finalize().into(),
        image_base,
    })
}

/// Test helpers that build minimal PE images.
#[cfg(test)]
// Fixture sizes are small constants: the narrowing casts cannot truncate.
#[allow(clippy::cast_possible_truncation)]
pub(crate) mod build {
    /// A PE32+ image of `len` bytes: DOS header, PE header at 0x40, six data
    /// directories (a certificate table of `cert` bytes if nonzero), headers
    /// up to 0x400, and sections `(file offset, raw size)` in table order.
    pub(crate) fn pe(len: usize, sections: &[(u32, u32)], cert: u32) -> Vec<u8> {
        let mut image: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        image[..0x400].fill(0);
        image[0..2].copy_from_slice(b"MZ");
        image[0x3C..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        image[0x40..0x44].copy_from_slice(b"PE\0\0");
        image[0x46..0x48].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        image[0x54..0x56].copy_from_slice(&(112u16 + 6 * 8).to_le_bytes());
        let opt = 0x58;
        image[opt..opt + 2].copy_from_slice(&0x20Bu16.to_le_bytes());
        image[opt + 24..opt + 32].copy_from_slice(&0x1234_0000u64.to_le_bytes());
        image[opt + 60..opt + 64].copy_from_slice(&0x400u32.to_le_bytes());
        image[opt + 64..opt + 68].copy_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
        image[opt + 108..opt + 112].copy_from_slice(&6u32.to_le_bytes());
        if cert != 0 {
            let at = opt + 112 + 32;
            image[at..at + 4].copy_from_slice(&((len as u32) - cert).to_le_bytes());
            image[at + 4..at + 8].copy_from_slice(&cert.to_le_bytes());
        }
        let table = opt + 112 + 48;
        for (i, &(offset, size)) in sections.iter().enumerate() {
            let s = table + 40 * i;
            image[s..s + 8].copy_from_slice(b".sect\0\0\0");
            image[s + 16..s + 20].copy_from_slice(&size.to_le_bytes());
            image[s + 20..s + 24].copy_from_slice(&offset.to_le_bytes());
        }
        image
    }
}

#[cfg(test)]
mod tests {
    use super::build::pe;
    use super::*;

    /// The Authenticode steps, restated directly for the `pe` layout.
    fn by_the_spec(
        image: &[u8],
        sections_in_file_order: &[(usize, usize)],
        cert: usize,
    ) -> Digest384 {
        let opt = 0x58;
        let checksum = opt + 64;
        let security = opt + 112 + 32;
        let mut h = Sha384::new();
        h.update(&image[..checksum]);
        h.update(&image[checksum + 4..security]);
        h.update(&image[security + 8..0x400]);
        let mut sum = 0x400;
        for &(offset, size) in sections_in_file_order {
            h.update(&image[offset..offset + size]);
            sum += size;
        }
        h.update(&image[sum..image.len() - cert]);
        h.finalize().into()
    }

    #[test]
    fn digest_follows_the_authenticode_steps() {
        // Sections listed out of file order; a zero-size one is skipped.
        let image = pe(0x1003, &[(0xC00, 0x300), (0x400, 0x800), (0, 0)], 0);
        let m = measure(&image).unwrap();
        assert_eq!(m.image_base, 0x1234_0000);
        // 3 trailing bytes are hashed, unpadded.
        assert_eq!(
            m.digest,
            by_the_spec(&image, &[(0x400, 0x800), (0xC00, 0x300)], 0)
        );

        // The checksum and certificate table are not covered...
        let mut changed = image.clone();
        changed[0x58 + 64] ^= 0xFF;
        assert_eq!(measure(&changed).unwrap().digest, m.digest);
        // ...but every other header byte is.
        let mut changed = image.clone();
        changed[0x3F0] ^= 1;
        assert_ne!(measure(&changed).unwrap().digest, m.digest);
    }

    #[test]
    fn certificate_table_is_left_out() {
        let image = pe(0x1400, &[(0x400, 0x800)], 0x100);
        let m = measure(&image).unwrap();
        assert_eq!(m.digest, by_the_spec(&image, &[(0x400, 0x800)], 0x100));
        let mut changed = image.clone();
        changed[0x13FF] ^= 1;
        assert_eq!(measure(&changed).unwrap().digest, m.digest);
    }

    #[test]
    fn non_pe_images_are_errors() {
        let good = pe(0x1000, &[(0x400, 0x800)], 0);
        let mut no_mz = good.clone();
        no_mz[0] = 0;
        let mut no_pe = good.clone();
        no_pe[0x40] = 0;
        let mut bad_magic = good.clone();
        bad_magic[0x58] = 0;
        let mut section_past_end = good.clone();
        section_past_end[0x58 + 160 + 16..0x58 + 160 + 20]
            .copy_from_slice(&0x1_0000u32.to_le_bytes());
        let mut huge_cert = pe(0x1400, &[(0x400, 0x800)], 0x100);
        huge_cert[0x58 + 112 + 36..0x58 + 112 + 40].copy_from_slice(&0x1000u32.to_le_bytes());
        for (image, name) in [
            (&good[..0x20], "short"),
            (&no_mz[..], "no MZ"),
            (&no_pe[..], "no PE"),
            (&bad_magic[..], "magic"),
            (&section_past_end[..], "section"),
            (&huge_cert[..], "cert"),
            (&b"\x7fELF"[..], "elf"),
        ] {
            assert!(
                matches!(measure(image), Err(FirmwareError::NotPeKernel { .. })),
                "{name}"
            );
        }
        for len in 0..good.len() {
            let _ = measure(&good[..len]);
        }
    }
}
