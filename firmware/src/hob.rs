//! The TD HOB list QEMU writes into the TD_HOB section, and the RTMR0 event
//! TDVF logs for it.
//!
//! QEMU (`hw/i386/tdvf-hob.c`, `tdx.c`) describes guest RAM as its e820 RAM
//! ranges, splits off the TD_HOB and TempMem sections as accepted memory,
//! sorts the ranges, and writes one PI resource descriptor HOB per range
//! after a PHIT HOB. TDVF measures the list up to, not including, the
//! end-of-list HOB (`EV_EFI_HANDOFF_TABLES2`, description "TdxTable").

use dstack_attest::eventlog::{EV_EFI_HANDOFF_TABLES2, Event};

use crate::FirmwareError;
use crate::bytes::Guid;
use crate::event::{event, sha384};
use crate::tdvf::{Metadata, SectionKind};

/// `EFI_HOB_TYPE_HANDOFF`.
const HOB_HANDOFF: u16 = 0x0001;
/// `EFI_HOB_TYPE_RESOURCE_DESCRIPTOR`.
const HOB_RESOURCE_DESCRIPTOR: u16 = 0x0003;
/// `EFI_HOB_HANDOFF_TABLE_VERSION`.
const HANDOFF_TABLE_VERSION: u32 = 9;
const PHIT_LEN: u16 = 56;
const RESOURCE_LEN: u16 = 48;
/// The end-of-list HOB: in the section, not in the measurement.
const END_HOB_LEN: u64 = 8;
/// `EFI_RESOURCE_SYSTEM_MEMORY`: memory QEMU already accepted.
const RESOURCE_SYSTEM_MEMORY: u32 = 0x0;
/// `EFI_RESOURCE_MEMORY_UNACCEPTED`.
const RESOURCE_MEMORY_UNACCEPTED: u32 = 0x7;
/// PRESENT | INITIALIZED | TESTED: what QEMU sets on both kinds.
const RESOURCE_ATTRIBUTES: u32 = 0x7;

/// Memory at and above this size makes QEMU's q35 keep only 2 GiB below
/// 4 GiB (`pc_q35_init`); smaller VMs keep up to this much below 4 GiB.
pub(crate) const Q35_LOWMEM_THRESHOLD: u64 = 0xB000_0000;
/// Low RAM of a VM at or above [`Q35_LOWMEM_THRESHOLD`].
const Q35_LOWMEM_SPLIT: u64 = 0x8000_0000;
const FOUR_GIB: u64 = 0x1_0000_0000;
/// x86-64's physical address space: 52 bits.
const MAX_MEMORY: u64 = 1 << 52;

/// The GUID TDVF gives the TD HOB's handoff table entry:
/// `gUefiOvmfPkgTokenSpaceGuid`.
const TD_HOB_TABLE_GUID: Guid = Guid::new(
    0x93bb_96af,
    0xb9f2,
    0x4eb8,
    [0x94, 0x62, 0xe0, 0xba, 0x74, 0x56, 0x42, 0x36],
);

/// The RAM below 4 GiB QEMU's q35 gives a VM of `memory` bytes.
pub(crate) fn below_4g(memory: u64) -> u64 {
    let lowmem = if memory >= Q35_LOWMEM_THRESHOLD {
        Q35_LOWMEM_SPLIT
    } else {
        Q35_LOWMEM_THRESHOLD
    };
    memory.min(lowmem)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RamRange {
    start: u64,
    len: u64,
    accepted: bool,
}

/// QEMU's RAM ranges for `memory` bytes, with `sections` accepted.
fn ram_ranges(memory: u64, metadata: &Metadata) -> Result<Vec<RamRange>, FirmwareError> {
    if memory > MAX_MEMORY - FOUR_GIB {
        return Err(FirmwareError::BadMemorySize {
            memory,
            reason: "RAM would end beyond the 52-bit physical address space",
        });
    }
    let low = below_4g(memory);
    let mut ranges = vec![RamRange {
        start: 0,
        len: low,
        accepted: false,
    }];
    if memory > low {
        ranges.push(RamRange {
            start: FOUR_GIB,
            len: memory - low,
            accepted: false,
        });
    }
    for section in &metadata.sections {
        if matches!(section.kind, SectionKind::TdHob | SectionKind::TempMem) {
            accept(&mut ranges, section.address, section.end())?;
        }
    }
    ranges.sort_by_key(|r| r.start);
    Ok(ranges)
}

/// Splits the range holding `start..end` into head, accepted part and tail,
/// as QEMU's `tdx_accept_ram_range` does: the first range that overlaps must
/// hold the whole span, and a span already accepted is left alone.
fn accept(ranges: &mut Vec<RamRange>, start: u64, end: u64) -> Result<(), FirmwareError> {
    if start == end {
        return Ok(());
    }
    let outside = FirmwareError::SectionOutsideRam { start, end };
    let index = ranges
        .iter()
        .position(|r| start < r.start + r.len && end > r.start)
        .ok_or(outside)?;
    let range = ranges[index];
    if range.start > start || range.start + range.len < end {
        return Err(FirmwareError::SectionOutsideRam { start, end });
    }
    if range.accepted {
        return Ok(());
    }
    ranges[index] = RamRange {
        start,
        len: end - start,
        accepted: true,
    };
    if range.start < start {
        ranges.push(RamRange {
            start: range.start,
            len: start - range.start,
            accepted: false,
        });
    }
    if end < range.start + range.len {
        ranges.push(RamRange {
            start: end,
            len: range.start + range.len - end,
            accepted: false,
        });
    }
    Ok(())
}

/// The TD HOB list bytes TDVF measures, for a VM of `memory` bytes.
pub(crate) fn td_hob(metadata: &Metadata, memory: u64) -> Result<Vec<u8>, FirmwareError> {
    let section = metadata.section(SectionKind::TdHob)?;
    let ranges = ram_ranges(memory, metadata)?;

    let mut hob = Vec::with_capacity(usize::from(PHIT_LEN) + ranges.len() * 48);
    hob.extend_from_slice(&HOB_HANDOFF.to_le_bytes());
    hob.extend_from_slice(&PHIT_LEN.to_le_bytes());
    hob.extend_from_slice(&[0; 4]); // Reserved
    hob.extend_from_slice(&HANDOFF_TABLE_VERSION.to_le_bytes());
    hob.extend_from_slice(&0u32.to_le_bytes()); // BootMode: full configuration
    // EfiMemoryTop/Bottom, EfiFreeMemoryTop/Bottom: QEMU leaves them zero.
    hob.extend_from_slice(&[0; 32]);
    let end_of_list_at = hob.len();
    hob.extend_from_slice(&[0; 8]); // EfiEndOfHobList, patched below

    for range in &ranges {
        hob.extend_from_slice(&HOB_RESOURCE_DESCRIPTOR.to_le_bytes());
        hob.extend_from_slice(&RESOURCE_LEN.to_le_bytes());
        hob.extend_from_slice(&[0; 4]); // Reserved
        hob.extend_from_slice(&[0; 16]); // Owner
        let kind = if range.accepted {
            RESOURCE_SYSTEM_MEMORY
        } else {
            RESOURCE_MEMORY_UNACCEPTED
        };
        hob.extend_from_slice(&kind.to_le_bytes());
        hob.extend_from_slice(&RESOURCE_ATTRIBUTES.to_le_bytes());
        hob.extend_from_slice(&range.start.to_le_bytes());
        hob.extend_from_slice(&range.len.to_le_bytes());
    }

    // QEMU points EfiEndOfHobList just past the end-of-list HOB.
    let needed = hob.len() as u64 + END_HOB_LEN;
    if needed > section.memory_size {
        return Err(FirmwareError::TdHobTooLarge {
            needed,
            available: section.memory_size,
        });
    }
    let end_of_list = section.address + needed;
    hob[end_of_list_at..end_of_list_at + 8].copy_from_slice(&end_of_list.to_le_bytes());
    Ok(hob)
}

/// The RTMR0 event for the TD HOB of a VM of `memory` bytes.
pub(crate) fn td_hob_event(metadata: &Metadata, memory: u64) -> Result<Event, FirmwareError> {
    let hob = td_hob(metadata, memory)?;
    let address = metadata.section(SectionKind::TdHob)?.address;
    // EFI_HANDOFF_TABLE_POINTERS2: description, one table, the HOB's address.
    let mut payload = Vec::with_capacity(42);
    payload.push(9);
    payload.extend_from_slice(b"TdxTable\0");
    payload.extend_from_slice(&1u64.to_le_bytes());
    payload.extend_from_slice(&TD_HOB_TABLE_GUID.0);
    payload.extend_from_slice(&address.to_le_bytes());
    Ok(event(0, EV_EFI_HANDOFF_TABLES2, sha384(&hob), payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tdvf::test_image::image;

    /// The TD_HOB/TempMem layout of OVMF's TDX builds (Debian 2022.11 and
    /// dstack's alike), in metadata order.
    fn ovmf_like() -> Metadata {
        let fw = image(
            0x4000,
            0,
            &[
                (0, 0, 0x81_0000, 0x1_0000, 3, 0),
                (0, 0, 0x80_B000, 0x2000, 3, 0),
                (0, 0, 0x80_9000, 0x2000, 2, 0),
                (0, 0, 0x80_0000, 0x6000, 3, 0),
            ],
        );
        Metadata::parse(&fw).unwrap()
    }

    fn resources(hob: &[u8]) -> Vec<(u32, u64, u64)> {
        hob[56..]
            .chunks_exact(48)
            .map(|r| {
                (
                    u32::from_le_bytes(r[24..28].try_into().unwrap()),
                    u64::from_le_bytes(r[32..40].try_into().unwrap()),
                    u64::from_le_bytes(r[40..48].try_into().unwrap()),
                )
            })
            .collect()
    }

    #[test]
    fn small_vm_has_one_low_range_split_by_the_sections() {
        let hob = td_hob(&ovmf_like(), 1 << 30).unwrap();
        assert_eq!(
            resources(&hob),
            [
                (7, 0, 0x80_0000),
                (0, 0x80_0000, 0x6000),
                (7, 0x80_6000, 0x3000),
                (0, 0x80_9000, 0x2000),
                (0, 0x80_B000, 0x2000),
                (7, 0x80_D000, 0x3000),
                (0, 0x81_0000, 0x1_0000),
                (7, 0x82_0000, (1 << 30) - 0x82_0000),
            ]
        );
        // PHIT: type, length, version, end of list just past the end HOB.
        assert_eq!(&hob[..4], &[1, 0, 56, 0]);
        assert_eq!(u32::from_le_bytes(hob[8..12].try_into().unwrap()), 9);
        let end = u64::from_le_bytes(hob[48..56].try_into().unwrap());
        assert_eq!(end, 0x80_9000 + hob.len() as u64 + 8);
    }

    #[test]
    fn large_vm_splits_ram_around_the_pci_hole() {
        let memory = 4u64 << 30;
        let hob = td_hob(&ovmf_like(), memory).unwrap();
        let r = resources(&hob);
        assert_eq!(r[r.len() - 2], (7, 0x82_0000, 0x8000_0000 - 0x82_0000));
        assert_eq!(r[r.len() - 1], (7, 0x1_0000_0000, memory - 0x8000_0000));
        // Between 2 GiB and the threshold, RAM stays in one low range.
        let memory = 0xA000_0000;
        let r = resources(&td_hob(&ovmf_like(), memory).unwrap());
        assert_eq!(r[r.len() - 1], (7, 0x82_0000, memory - 0x82_0000));
    }

    #[test]
    fn event_payload_is_the_handoff_table() {
        let e = td_hob_event(&ovmf_like(), 1 << 30).unwrap();
        assert_eq!(e.event_type, EV_EFI_HANDOFF_TABLES2);
        assert_eq!(e.imr, 0);
        // The payload of the real dstack VM's CCEL (testdata/ccel.bin).
        assert_eq!(
            e.event_payload,
            [
                &[9u8][..],
                b"TdxTable\0",
                &1u64.to_le_bytes(),
                &[
                    0xaf, 0x96, 0xbb, 0x93, 0xf2, 0xb9, 0xb8, 0x4e, 0x94, 0x62, 0xe0, 0xba, 0x74,
                    0x56, 0x42, 0x36
                ],
                &0x80_9000u64.to_le_bytes(),
            ]
            .concat()
        );
    }

    #[test]
    fn sections_outside_ram_or_overflowing_the_hob_are_errors() {
        assert!(matches!(
            td_hob(&ovmf_like(), u64::MAX - (1 << 20)),
            Err(FirmwareError::BadMemorySize { .. })
        ));
        // 8 MiB of RAM ends where the TempMem sections begin.
        assert!(matches!(
            td_hob(&ovmf_like(), 8 << 20),
            Err(FirmwareError::SectionOutsideRam { .. })
        ));
        // A one-page TD_HOB section cannot hold 200 resource HOBs.
        let entries: Vec<_> = (0..100u64)
            .map(|i| (0, 0, 0x100_0000 + i * 0x2000, 0x1000, 3, 0))
            .chain([(0, 0, 0x80_0000, 0x1000, 2, 0)])
            .collect();
        let fw = image(0x8000, 0, &entries);
        let meta = Metadata::parse(&fw).unwrap();
        assert!(matches!(
            td_hob(&meta, 1 << 30),
            Err(FirmwareError::TdHobTooLarge { .. })
        ));
    }
}
