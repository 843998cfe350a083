//! The TDVF metadata of a firmware image, and the MRTD the TDX module
//! computes while QEMU adds the image's pages to the TD.
//!
//! Layout (OVMF `ResetVector`, Intel TDVF design guide): the image ends with a
//! reset vector (32 bytes) preceded by the OVMF GUIDed footer table. The
//! footer is `u16 table_len, GUID 96b582de-…` and `table_len` counts the
//! whole table, footer included. Walking backwards from the footer, every
//! entry is `data, u16 entry_len, GUID`, `entry_len` counting all three.
//! The entry with GUID `e47a6535-…` holds a `u32`: the distance from the end
//! of the image to the TDVF descriptor (`"TDVF", u32 length, u32 version = 1,
//! u32 section count`), which 32-byte section entries follow.

use sha2::{Digest, Sha384};

use crate::bytes::{Guid, guid_at, slice, to_usize, u16_at, u32_at, u64_at};
use crate::event::Digest384;
use crate::{FirmwareError, PageAddOrder};

/// The GUID that closes OVMF's footer table.
const TABLE_FOOTER_GUID: Guid = Guid::new(
    0x96b5_82de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);
/// The footer-table entry that locates the TDVF descriptor.
const TDX_METADATA_OFFSET_GUID: Guid = Guid::new(
    0xe47a_6535,
    0x984a,
    0x4798,
    [0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2],
);
/// The reset vector that follows the footer table.
const RESET_VECTOR_LEN: usize = 32;
/// `u16` length plus GUID that end every footer-table entry.
const ENTRY_TAIL_LEN: usize = 18;
const DESCRIPTOR_LEN: usize = 16;
const SECTION_ENTRY_LEN: usize = 32;

/// Pages the TDX module adds and extends.
pub(crate) const PAGE_SIZE: u64 = 0x1000;
const PAGE_BYTES: usize = 0x1000;
/// `TDH.MR.EXTEND` measures 256-byte chunks.
const EXTEND_CHUNK: usize = 0x100;
/// Section attribute: extend the section's contents into MRTD.
const ATTR_MR_EXTEND: u32 = 1 << 0;
/// Section attribute: the pages are accepted later (`TDH.MEM.PAGE.AUG`),
/// not added at build time, so MRTD does not see them.
const ATTR_PAGE_AUG: u32 = 1 << 1;
/// Pages across all sections beyond which the metadata is taken to be
/// hostile: a TDVF's sections span a few MiB, and measuring 64 MiB of pages
/// already means hashing about 100 MB.
const MAX_TOTAL_PAGES: u64 = (64 << 20) / PAGE_SIZE;

/// What a TDVF section holds (TDVF design guide). OVMF uses only these four;
/// metadata with other types is refused rather than guessed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SectionKind {
    /// Boot firmware volume: the code, measured into MRTD.
    Bfv,
    /// Configuration firmware volume: the UEFI variable store.
    Cfv,
    /// Where QEMU writes the TD HOB list.
    TdHob,
    /// Memory TDVF uses before it accepts RAM itself.
    TempMem,
}

impl SectionKind {
    fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::Bfv),
            1 => Some(Self::Cfv),
            2 => Some(Self::TdHob),
            3 => Some(Self::TempMem),
            _ => None,
        }
    }

    /// The name the TDVF spec gives the type.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Bfv => "BFV",
            Self::Cfv => "CFV",
            Self::TdHob => "TD_HOB",
            Self::TempMem => "TempMem",
        }
    }
}

/// One TDVF section: where its bytes are in the image and where QEMU puts
/// them in the TD.
#[derive(Debug, Clone)]
pub(crate) struct Section {
    /// Offset of the section's bytes in the image.
    pub(crate) data_offset: usize,
    /// Bytes taken from the image (the rest of the memory is zero).
    pub(crate) raw_size: usize,
    /// Guest-physical address of the section.
    pub(crate) address: u64,
    /// Bytes of guest memory the section occupies.
    pub(crate) memory_size: u64,
    pub(crate) kind: SectionKind,
    attributes: u32,
}

impl Section {
    /// One past the section's last guest-physical byte.
    pub(crate) fn end(&self) -> u64 {
        // Checked in `parse_section`.
        self.address + self.memory_size
    }
}

/// The parsed TDVF metadata of a firmware image.
#[derive(Debug, Clone)]
pub(crate) struct Metadata {
    pub(crate) sections: Vec<Section>,
}

impl Metadata {
    /// Finds and checks the TDVF metadata in `fw`.
    pub(crate) fn parse(fw: &[u8]) -> Result<Self, FirmwareError> {
        let descriptor = descriptor_offset(fw)?;
        let header = slice(fw, descriptor, DESCRIPTOR_LEN, "TDVF descriptor")?;
        if &header[..4] != b"TDVF" {
            return Err(FirmwareError::BadTdvfDescriptor {
                reason: "signature is not \"TDVF\"",
            });
        }
        let length = u32_at(header, 4, "TDVF descriptor")?;
        if u32_at(header, 8, "TDVF descriptor")? != 1 {
            return Err(FirmwareError::BadTdvfDescriptor {
                reason: "version is not 1",
            });
        }
        let count = to_usize(
            u32_at(header, 12, "TDVF descriptor")?.into(),
            "TDVF descriptor",
        )?;
        let needed = count
            .checked_mul(SECTION_ENTRY_LEN)
            .and_then(|n| n.checked_add(DESCRIPTOR_LEN))
            .ok_or(FirmwareError::BadTdvfDescriptor {
                reason: "section count overflows",
            })?;
        if to_usize(length.into(), "TDVF descriptor")? < needed {
            return Err(FirmwareError::BadTdvfDescriptor {
                reason: "length is shorter than its sections",
            });
        }
        let entries = slice(fw, descriptor, needed, "TDVF section table")?;
        let sections = entries[DESCRIPTOR_LEN..]
            .chunks_exact(SECTION_ENTRY_LEN)
            .enumerate()
            .map(|(index, entry)| parse_section(fw, index, entry))
            .collect::<Result<Vec<_>, _>>()?;

        if sections
            .iter()
            .filter(|s| s.kind == SectionKind::TdHob)
            .count()
            > 1
        {
            return Err(FirmwareError::BadTdvfDescriptor {
                reason: "more than one TD_HOB section",
            });
        }
        let pages = sections
            .iter()
            .fold(0u64, |n, s| n.saturating_add(s.memory_size / PAGE_SIZE));
        if pages > MAX_TOTAL_PAGES {
            return Err(FirmwareError::BadTdvfDescriptor {
                reason: "sections span more than 64 MiB",
            });
        }
        Ok(Self { sections })
    }

    /// The first section of `kind`, or [`FirmwareError::MissingSection`].
    pub(crate) fn section(&self, kind: SectionKind) -> Result<&Section, FirmwareError> {
        self.sections
            .iter()
            .find(|s| s.kind == kind)
            .ok_or(FirmwareError::MissingSection { kind: kind.name() })
    }

    /// The image bytes of `section` (its raw data, without the zero fill).
    pub(crate) fn raw_data<'a>(&self, fw: &'a [u8], section: &Section) -> &'a [u8] {
        // Bounds checked in `parse_section`.
        &fw[section.data_offset..section.data_offset + section.raw_size]
    }

    /// MRTD: SHA-384 over the `TDH.MEM.PAGE.ADD` and `TDH.MR.EXTEND` records
    /// of every section's pages, in metadata order (TDX module ABI spec:
    /// each record is a 128-byte block, the operation's ASCII name then the
    /// GPA at byte 16; an extend is followed by the 256 bytes it measures).
    pub(crate) fn mr_td(&self, fw: &[u8], order: PageAddOrder) -> Digest384 {
        let mut mrtd = Sha384::new();
        for section in &self.sections {
            let pages = section.memory_size / PAGE_SIZE;
            let raw = self.raw_data(fw, section);
            match order {
                PageAddOrder::SinglePass => {
                    for page in 0..pages {
                        page_add(&mut mrtd, section, page);
                        mr_extend(&mut mrtd, section, raw, page);
                    }
                }
                PageAddOrder::TwoPass => {
                    for page in 0..pages {
                        page_add(&mut mrtd, section, page);
                    }
                    for page in 0..pages {
                        mr_extend(&mut mrtd, section, raw, page);
                    }
                }
            }
        }
        mrtd.finalize().into()
    }
}

/// The offset of the TDVF descriptor in `fw`, through the footer table.
fn descriptor_offset(fw: &[u8]) -> Result<usize, FirmwareError> {
    let no_metadata = |reason| FirmwareError::NoTdvfMetadata { reason };
    let footer_end = fw
        .len()
        .checked_sub(RESET_VECTOR_LEN)
        .filter(|&end| end >= ENTRY_TAIL_LEN)
        .ok_or(no_metadata("image is too small for an OVMF footer table"))?;
    if guid_at(fw, footer_end - 16, "OVMF footer")? != TABLE_FOOTER_GUID {
        return Err(no_metadata(
            "no OVMF footer table GUID before the reset vector",
        ));
    }
    let table_len = usize::from(u16_at(fw, footer_end - ENTRY_TAIL_LEN, "OVMF footer")?);
    let table_start = footer_end
        .checked_sub(table_len)
        .filter(|_| table_len >= ENTRY_TAIL_LEN)
        .ok_or(no_metadata("OVMF footer table length is out of range"))?;

    let mut end = footer_end - ENTRY_TAIL_LEN;
    while end - table_start >= ENTRY_TAIL_LEN {
        let guid = guid_at(fw, end - 16, "OVMF footer table entry")?;
        let entry_len = usize::from(u16_at(fw, end - ENTRY_TAIL_LEN, "OVMF footer table entry")?);
        if entry_len < ENTRY_TAIL_LEN || entry_len > end - table_start {
            return Err(no_metadata(
                "OVMF footer table entry length is out of range",
            ));
        }
        if guid == TDX_METADATA_OFFSET_GUID {
            let data = &fw[end - entry_len..end - ENTRY_TAIL_LEN];
            let offset = u32_at(data, 0, "TDX metadata offset entry")?;
            return fw
                .len()
                .checked_sub(to_usize(offset.into(), "TDX metadata offset")?)
                .ok_or(FirmwareError::BadTdvfDescriptor {
                    reason: "offset points before the start of the image",
                });
        }
        end -= entry_len;
    }
    Err(no_metadata(
        "OVMF footer table has no TDX metadata offset entry",
    ))
}

fn parse_section(fw: &[u8], index: usize, entry: &[u8]) -> Result<Section, FirmwareError> {
    let bad = |reason| FirmwareError::BadSection { index, reason };
    let what = "TDVF section";
    let data_offset = to_usize(u32_at(entry, 0, what)?.into(), what)?;
    let raw_size = to_usize(u32_at(entry, 4, what)?.into(), what)?;
    let address = u64_at(entry, 8, what)?;
    let memory_size = u64_at(entry, 16, what)?;
    let raw_kind = u32_at(entry, 24, what)?;
    let attributes = u32_at(entry, 28, what)?;

    let kind = SectionKind::from_raw(raw_kind).ok_or(bad("unsupported section type"))?;
    if attributes & !(ATTR_MR_EXTEND | ATTR_PAGE_AUG) != 0 {
        return Err(bad("unknown attribute bits"));
    }
    if address % PAGE_SIZE != 0 || memory_size % PAGE_SIZE != 0 {
        return Err(bad("address or size is not 4 KiB aligned"));
    }
    if address.checked_add(memory_size).is_none() {
        return Err(bad("section wraps the address space"));
    }
    if raw_size as u64 > memory_size {
        return Err(bad("raw data is larger than the section's memory"));
    }
    if data_offset
        .checked_add(raw_size)
        .is_none_or(|end| end > fw.len())
    {
        return Err(bad("raw data lies outside the image"));
    }
    if matches!(kind, SectionKind::TdHob | SectionKind::TempMem) {
        // QEMU fills these with zeros (and the HOB), never from the image.
        if raw_size != 0 {
            return Err(bad("TD_HOB and TempMem sections carry no data"));
        }
        if attributes & ATTR_MR_EXTEND != 0 {
            return Err(bad("TD_HOB and TempMem sections are not extended"));
        }
    }
    Ok(Section {
        data_offset,
        raw_size,
        address,
        memory_size,
        kind,
        attributes,
    })
}

/// A 128-byte `TDH.MEM.PAGE.ADD` / `TDH.MR.EXTEND` record.
fn record(operation: &[u8], gpa: u64) -> [u8; 128] {
    let mut block = [0u8; 128];
    block[..operation.len()].copy_from_slice(operation);
    block[16..24].copy_from_slice(&gpa.to_le_bytes());
    block
}

fn page_add(mrtd: &mut Sha384, section: &Section, page: u64) {
    if section.attributes & ATTR_PAGE_AUG == 0 {
        mrtd.update(record(b"MEM.PAGE.ADD", section.address + page * PAGE_SIZE));
    }
}

fn mr_extend(mrtd: &mut Sha384, section: &Section, raw: &[u8], page: u64) {
    if section.attributes & ATTR_MR_EXTEND == 0 {
        return;
    }
    let gpa = section.address + page * PAGE_SIZE;
    // The page as QEMU copies it into the TD: image bytes, then zeros.
    let mut contents = [0u8; PAGE_BYTES];
    let start = usize::try_from(page * PAGE_SIZE).unwrap_or(usize::MAX);
    if let Some(bytes) = raw.get(start..) {
        let n = bytes.len().min(contents.len());
        contents[..n].copy_from_slice(&bytes[..n]);
    }
    for (i, chunk) in contents.chunks_exact(EXTEND_CHUNK).enumerate() {
        mrtd.update(record(b"MR.EXTEND", gpa + (i * EXTEND_CHUNK) as u64));
        mrtd.update(chunk);
    }
}

/// Test helpers that build TDVF images with a chosen metadata layout.
#[cfg(test)]
// Fixture sizes are small constants: the narrowing casts cannot truncate.
#[allow(clippy::cast_possible_truncation)]
pub(crate) mod test_image {
    use super::*;

    /// A section entry: (data offset, raw size, address, memory size, type,
    /// attributes).
    pub(crate) type Entry = (u32, u32, u64, u64, u32, u32);

    /// Where `image` puts the descriptor.
    pub(crate) fn descriptor_at(fw: &[u8]) -> usize {
        fw.windows(4).rposition(|w| w == b"TDVF").unwrap()
    }

    /// An image of `len` bytes (filled with `fill`) whose footer table points
    /// at a descriptor listing `entries`, placed just before the table.
    pub(crate) fn image(len: usize, fill: u8, entries: &[Entry]) -> Vec<u8> {
        let mut fw = vec![fill; len];
        let descriptor = (len - 0x100 - 32 * entries.len()) & !15;
        let mut meta = Vec::new();
        meta.extend_from_slice(b"TDVF");
        meta.extend_from_slice(&((16 + 32 * entries.len()) as u32).to_le_bytes());
        meta.extend_from_slice(&1u32.to_le_bytes());
        meta.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for &(off, raw, addr, size, kind, attrs) in entries {
            meta.extend_from_slice(&off.to_le_bytes());
            meta.extend_from_slice(&raw.to_le_bytes());
            meta.extend_from_slice(&addr.to_le_bytes());
            meta.extend_from_slice(&size.to_le_bytes());
            meta.extend_from_slice(&kind.to_le_bytes());
            meta.extend_from_slice(&attrs.to_le_bytes());
        }
        fw[descriptor..descriptor + meta.len()].copy_from_slice(&meta);

        // Footer table: an unrelated entry, the TDX metadata entry, footer.
        let mut table = Vec::new();
        table.extend_from_slice(&[0xEE; 4]);
        table.extend_from_slice(&22u16.to_le_bytes());
        table.extend_from_slice(&[0x11; 16]);
        table.extend_from_slice(&((len - descriptor) as u32).to_le_bytes());
        table.extend_from_slice(&22u16.to_le_bytes());
        table.extend_from_slice(&TDX_METADATA_OFFSET_GUID.0);
        let total = (table.len() + ENTRY_TAIL_LEN) as u16;
        table.extend_from_slice(&total.to_le_bytes());
        table.extend_from_slice(&TABLE_FOOTER_GUID.0);
        let footer_end = len - RESET_VECTOR_LEN;
        fw[footer_end - table.len()..footer_end].copy_from_slice(&table);
        fw
    }
}

#[cfg(test)]
mod tests {
    use super::test_image::{descriptor_at, image};
    use super::*;

    #[test]
    fn parses_sections_and_computes_both_orders_by_the_spec() {
        // One extended 2-page section and one added-only page.
        let fw = image(
            0x10000,
            0x5A,
            &[
                (0x1000, 0x1800, 0xFFFF_0000, 0x2000, 0, ATTR_MR_EXTEND),
                (0, 0, 0x80_0000, 0x1000, 3, 0),
            ],
        );
        let meta = Metadata::parse(&fw).unwrap();
        assert_eq!(meta.sections.len(), 2);
        assert_eq!(meta.section(SectionKind::Bfv).unwrap().raw_size, 0x1800);
        assert!(matches!(
            meta.section(SectionKind::Cfv),
            Err(FirmwareError::MissingSection { kind: "CFV" })
        ));

        // Independent restatement of the TDX module's records.
        let add = |gpa: u64| {
            let mut b = vec![0u8; 128];
            b[..12].copy_from_slice(b"MEM.PAGE.ADD");
            b[16..24].copy_from_slice(&gpa.to_le_bytes());
            b
        };
        let mut page1 = fw[0x2000..0x2800].to_vec();
        page1.resize(0x1000, 0); // raw data ends mid-page: zero fill
        let pages = [fw[0x1000..0x2000].to_vec(), page1];
        let extend = |gpa: u64, page: &[u8]| {
            let mut out = Vec::new();
            for i in 0..16 {
                let mut b = vec![0u8; 128];
                b[..9].copy_from_slice(b"MR.EXTEND");
                b[16..24].copy_from_slice(&(gpa + i * 256).to_le_bytes());
                out.extend_from_slice(&b);
                let at = usize::try_from(i).unwrap() * 256;
                out.extend_from_slice(&page[at..at + 256]);
            }
            out
        };
        let mut single = Vec::new();
        single.extend(add(0xFFFF_0000));
        single.extend(extend(0xFFFF_0000, &pages[0]));
        single.extend(add(0xFFFF_1000));
        single.extend(extend(0xFFFF_1000, &pages[1]));
        single.extend(add(0x80_0000));
        let mut two = Vec::new();
        two.extend(add(0xFFFF_0000));
        two.extend(add(0xFFFF_1000));
        two.extend(extend(0xFFFF_0000, &pages[0]));
        two.extend(extend(0xFFFF_1000, &pages[1]));
        two.extend(add(0x80_0000));
        assert_eq!(
            meta.mr_td(&fw, PageAddOrder::SinglePass),
            <Digest384>::from(Sha384::digest(&single))
        );
        assert_eq!(
            meta.mr_td(&fw, PageAddOrder::TwoPass),
            <Digest384>::from(Sha384::digest(&two))
        );
    }

    #[test]
    fn page_aug_sections_are_not_added() {
        let with = image(0x4000, 0, &[(0, 0, 0x80_0000, 0x1000, 3, ATTR_PAGE_AUG)]);
        let meta = Metadata::parse(&with).unwrap();
        assert_eq!(
            meta.mr_td(&with, PageAddOrder::SinglePass),
            <Digest384>::from(Sha384::digest([]))
        );
    }

    #[test]
    fn rejects_images_without_metadata() {
        for fw in [vec![], vec![0u8; 40], vec![0xFF; 0x10000]] {
            assert!(
                matches!(
                    Metadata::parse(&fw),
                    Err(FirmwareError::NoTdvfMetadata { .. })
                ),
                "{} bytes",
                fw.len()
            );
        }
        // A footer table whose only entry is not the TDX one.
        let mut fw = image(0x4000, 0, &[]);
        let tdx = fw
            .windows(16)
            .position(|w| w == TDX_METADATA_OFFSET_GUID.0)
            .unwrap();
        fw[tdx] ^= 1;
        assert!(matches!(
            Metadata::parse(&fw),
            Err(FirmwareError::NoTdvfMetadata { .. })
        ));
    }

    #[test]
    fn rejects_bad_descriptors_and_sections() {
        let mut fw = image(0x4000, 0, &[(0, 0x1000, 0x1000, 0x1000, 0, 1)]);
        let d = descriptor_at(&fw);
        fw[d] = b'X';
        assert!(matches!(
            Metadata::parse(&fw),
            Err(FirmwareError::BadTdvfDescriptor { .. })
        ));

        let cases: [(test_image::Entry, &str); 7] = [
            ((0, 0x1000, 0x1001, 0x1000, 0, 1), "aligned"),
            ((0, 0x2000, 0x1000, 0x1000, 0, 1), "larger"),
            ((0x3800, 0x1000, 0x1000, 0x1000, 0, 1), "outside"),
            ((0, 0, 0x1000, 0x1000, 9, 0), "type"),
            ((0, 0, 0x1000, 0x1000, 3, 4), "attribute"),
            ((0, 0x10, 0x1000, 0x1000, 2, 0), "no data"),
            ((0, 0, u64::MAX - 0xFFF, 0x2000, 0, 0), "wraps"),
        ];
        for (entry, reason) in cases {
            let fw = image(0x4000, 0, &[entry]);
            match Metadata::parse(&fw) {
                Err(FirmwareError::BadSection {
                    index: 0,
                    reason: r,
                }) => {
                    assert!(r.contains(reason), "{r} vs {reason}")
                }
                other => panic!("{entry:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn truncated_descriptor_is_an_error() {
        // The descriptor claims more sections than the image holds.
        let mut fw = image(0x4000, 0, &[]);
        let d = descriptor_at(&fw);
        fw[d + 4..d + 8].copy_from_slice(&0xFFFF_0000u32.to_le_bytes());
        fw[d + 12..d + 16].copy_from_slice(&0x0100_0000u32.to_le_bytes());
        assert!(matches!(
            Metadata::parse(&fw),
            Err(FirmwareError::Truncated { .. })
        ));
    }
}
