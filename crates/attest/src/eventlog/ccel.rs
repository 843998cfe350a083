//! Parser for the CCEL ACPI table: the firmware's TCG2 crypto-agile event log.
//!
//! Layout (TCG PC Client Platform Firmware Profile, little-endian):
//! a `TCG_PCClientPCREvent` header in SHA-1 format whose data is the
//! `TCG_EfiSpecIDEvent` ("Spec ID Event03"), listing every digest algorithm
//! and its size; then `TCG_PCR_EVENT2` records:
//! `mr_index u32, event_type u32, count u32, count × (alg u16, digest),
//! size u32, data[size]`. The table is usually a fixed-size buffer whose
//! unused tail is 0xFF (or 0x00) padding.
//!
//! The input is untrusted (it may come from a peer), so every read is bounds
//! checked and nothing is allocated beyond the size of the input.

use super::{Event, EventLogError};

/// Event type that is logged but never extended into a register.
pub const EV_NO_ACTION: u32 = 0x0000_0003;
/// Separator between pre-OS and OS-present measurements.
pub const EV_SEPARATOR: u32 = 0x0000_0004;
/// Platform configuration; TDX OVMF logs its ACPI data under this type.
pub const EV_PLATFORM_CONFIG_FLAGS: u32 = 0x0000_000a;
/// A UEFI configuration variable (e.g. SecureBoot, PK, KEK, db).
pub const EV_EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;
/// A UEFI boot variable (BootOrder, Boot####).
pub const EV_EFI_VARIABLE_BOOT: u32 = 0x8000_0002;
/// A UEFI application loaded from a boot device (bootloader, kernel).
pub const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
/// A UEFI action string, e.g. "Exit Boot Services Invocation".
pub const EV_EFI_ACTION: u32 = 0x8000_0007;
/// A firmware volume, described by name.
pub const EV_EFI_PLATFORM_FIRMWARE_BLOB2: u32 = 0x8000_000a;
/// Tables handed to the OS (TDX: the TD HOB), described by name.
pub const EV_EFI_HANDOFF_TABLES2: u32 = 0x8000_000b;
/// A certificate from a UEFI db used to authenticate an image.
pub const EV_EFI_VARIABLE_AUTHORITY: u32 = 0x8000_00e0;

/// TPM_ALG_ID of SHA-384, the only digest TDX RTMRs use.
pub const TPM_ALG_SHA384: u16 = 0x000c;

const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
const SHA1_DIGEST_LEN: usize = 20;
const SHA384_DIGEST_LEN: u16 = 48;
/// More algorithms than TCG has ever defined hash IDs for; the bound keeps
/// per-digest lookups cheap on hostile headers.
const MAX_ALGORITHMS: u32 = 32;

/// Parses CCEL table data into the events extended into RTMR0-3.
///
/// The Spec ID header and other `EV_NO_ACTION` records are left out: they are
/// never extended, so leaving them in would list events no replay covers.
/// Records for CC MR index 0 (MRTD; some clouds log there) are left out for the
/// same reason, as dstack does. Only the SHA-384 digest of each record is kept.
/// Parsing stops at the end of the data or at 0xFF / all-zero padding.
pub fn parse_ccel(bytes: &[u8]) -> Result<Vec<Event>, EventLogError> {
    let mut reader = Reader { bytes, pos: 0 };
    let algorithms = parse_header(&mut reader)?;
    let mut events = Vec::new();
    while !reader.at_padding() {
        if let Some(event) = parse_record(&mut reader, &algorithms)? {
            events.push(event);
        }
    }
    super::label_acpi_data_events(&mut events);
    Ok(events)
}

/// Digest sizes by algorithm, as the Spec ID header declares them.
struct Algorithms(Vec<(u16, u16)>);

impl Algorithms {
    fn digest_size(&self, algorithm: u16) -> Option<usize> {
        let (_, size) = self.0.iter().find(|(id, _)| *id == algorithm)?;
        Some(usize::from(*size))
    }
}

fn parse_header(reader: &mut Reader<'_>) -> Result<Algorithms, EventLogError> {
    let _mr_index = reader.u32()?;
    if reader.u32()? != EV_NO_ACTION {
        return Err(EventLogError::BadHeader {
            reason: "first record is not EV_NO_ACTION",
        });
    }
    reader.take(SHA1_DIGEST_LEN)?;
    let size = reader.len32()?;
    let data_offset = reader.pos;
    let data = reader.take(size)?;
    // Offsets inside the header stay absolute so errors point into the table.
    let mut spec = Reader {
        bytes: data,
        pos: 0,
    };
    let rebase = |e: EventLogError| match e {
        EventLogError::Truncated { offset, needed } => EventLogError::Truncated {
            offset: offset.saturating_add(data_offset),
            needed,
        },
        other => other,
    };
    if spec.take(SPEC_ID_SIGNATURE.len()).map_err(rebase)? != SPEC_ID_SIGNATURE {
        return Err(EventLogError::BadHeader {
            reason: "signature is not \"Spec ID Event03\"",
        });
    }
    // platformClass u32, specVersionMinor/Major, specErrata, uintnSize: unused.
    spec.take(8).map_err(rebase)?;
    let count = spec.u32().map_err(rebase)?;
    if count > MAX_ALGORITHMS {
        return Err(EventLogError::BadHeader {
            reason: "too many digest algorithms",
        });
    }
    let mut algorithms = Vec::new();
    for _ in 0..count {
        let id = spec.u16().map_err(rebase)?;
        let size = spec.u16().map_err(rebase)?;
        if algorithms.iter().any(|(known, _)| *known == id) {
            return Err(EventLogError::BadHeader {
                reason: "digest algorithm listed twice",
            });
        }
        if id == TPM_ALG_SHA384 && size != SHA384_DIGEST_LEN {
            return Err(EventLogError::BadHeader {
                reason: "SHA-384 digest size is not 48",
            });
        }
        algorithms.push((id, size));
    }
    if !algorithms.iter().any(|(id, _)| *id == TPM_ALG_SHA384) {
        return Err(EventLogError::NoSha384Bank);
    }
    Ok(Algorithms(algorithms))
}

/// Reads one `TCG_PCR_EVENT2`; `None` for records that are not extended.
fn parse_record(
    reader: &mut Reader<'_>,
    algorithms: &Algorithms,
) -> Result<Option<Event>, EventLogError> {
    let offset = reader.pos;
    let mr_index = reader.u32()?;
    let event_type = reader.u32()?;
    let count = reader.u32()?;
    let mut sha384 = None;
    // Each digest consumes at least its 2-byte algorithm ID, so a hostile
    // count runs out of input rather than looping on nothing.
    for _ in 0..count {
        let algorithm = reader.u16()?;
        let size = algorithms
            .digest_size(algorithm)
            .ok_or(EventLogError::UnknownAlgorithm { offset, algorithm })?;
        let digest = reader.take(size)?;
        if algorithm == TPM_ALG_SHA384 && sha384.replace(digest).is_some() {
            return Err(EventLogError::DuplicateDigest { offset });
        }
    }
    let size = reader.len32()?;
    let data = reader.take(size)?;

    if event_type == EV_NO_ACTION || mr_index == 0 {
        return Ok(None);
    }
    // CC MR index 1-4 are RTMR0-3 (index 0 is MRTD).
    let imr = mr_index - 1;
    if imr > 3 {
        return Err(EventLogError::UnsupportedRegister { offset, mr_index });
    }
    let digest = sha384.ok_or(EventLogError::MissingDigest { offset })?;
    Ok(Some(Event {
        imr,
        event_type,
        digest: digest.to_vec(),
        event: String::new(),
        event_payload: data.to_vec(),
    }))
}

/// A cursor over the table that never reads past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, needed: usize) -> Result<&'a [u8], EventLogError> {
        let slice = self
            .pos
            .checked_add(needed)
            .and_then(|end| self.bytes.get(self.pos..end))
            .ok_or(EventLogError::Truncated {
                offset: self.pos,
                needed,
            })?;
        self.pos += slice.len();
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EventLogError> {
        let mut out = [0; N];
        // `take` returned exactly N bytes, so the lengths match.
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, EventLogError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, EventLogError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A u32 length field; on targets where it does not fit in `usize` the
    /// data cannot be present either.
    fn len32(&mut self) -> Result<usize, EventLogError> {
        let offset = self.pos;
        let len = self.u32()?;
        usize::try_from(len).map_err(|_| EventLogError::Truncated {
            offset,
            needed: usize::MAX,
        })
    }

    /// Whether the rest is padding: nothing, an 0xFFFFFFFF MR index (dstack
    /// stops there too), or only zero bytes.
    fn at_padding(&self) -> bool {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        let head = rest.get(..4).unwrap_or(rest);
        head.iter().all(|&b| b == 0xff) || rest.iter().all(|&b| b == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::read_testdata;

    /// Where the events of the sample end and its 0xFF padding begins.
    const SAMPLE_EVENTS_END: usize = 0x78d;

    fn sample() -> Vec<u8> {
        read_testdata("ccel.bin")
    }

    #[test]
    fn sample_parses_into_the_events_dstack_reports() {
        let bytes = sample();
        assert_eq!(bytes.len(), 64 * 1024);
        let events = parse_ccel(&bytes).unwrap();
        assert_eq!(events.len(), 18);
        let per_imr = |imr| events.iter().filter(|e| e.imr == imr).count();
        assert_eq!(
            [per_imr(0), per_imr(1), per_imr(2), per_imr(3)],
            [13, 5, 0, 0]
        );
        assert!(events.iter().all(|e| e.imr <= 3 && e.digest.len() == 48));
        // Only TDVF's three ACPI DATA events get names, as dstack labels them.
        let named: Vec<(usize, &str)> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.event.is_empty())
            .map(|(i, e)| (i, e.event.as_str()))
            .collect();
        assert_eq!(
            named,
            [(8, "acpi-loader"), (9, "acpi-rsdp"), (10, "acpi-tables")]
        );
        assert!(
            events[8..11]
                .iter()
                .all(|e| e.event_payload == b"ACPI DATA")
        );

        let types: Vec<u32> = events.iter().map(|e| e.event_type).collect();
        assert_eq!(types[0], EV_EFI_HANDOFF_TABLES2);
        assert_eq!(types[1], EV_EFI_PLATFORM_FIRMWARE_BLOB2);
        assert_eq!(&types[2..7], &[EV_EFI_VARIABLE_DRIVER_CONFIG; 5]);
        assert_eq!(types[7], EV_SEPARATOR);
        assert_eq!(&types[8..11], &[EV_PLATFORM_CONFIG_FLAGS; 3]);
        assert_eq!(types[11], EV_EFI_BOOT_SERVICES_APPLICATION);
        assert_eq!(events[11].imr, 1);
        assert_eq!(
            types.iter().filter(|&&t| t == EV_EFI_VARIABLE_BOOT).count(),
            2
        );
        assert!(!types.contains(&EV_NO_ACTION));

        let first = &events[0];
        assert_eq!(
            hex::encode(&first.digest),
            "2b630fa1d8fa9b6e8c6507d2256803ed227888f7d1f62ca5cfbddfe495338b1c6a0fc339ea64700f0835c0897a662789"
        );
        assert_eq!(&first.event_payload[1..9], b"TdxTable");
        let last = events.last().unwrap();
        assert_eq!((last.imr, last.event_type), (1, EV_EFI_ACTION));
        assert_eq!(
            last.event_payload,
            b"Exit Boot Services Returned with Success"
        );
        assert_eq!(
            hex::encode(&last.digest),
            "0a2e01c85deae718a530ad8c6d20a84009babe6c8989269e950d8cf440c6e997695e64d455c4174a652cd080f6230b74"
        );
    }

    #[test]
    fn sample_padding_starts_right_after_the_last_event() {
        let bytes = sample();
        assert!(bytes[SAMPLE_EVENTS_END..].iter().all(|&b| b == 0xff));
        assert_ne!(bytes[SAMPLE_EVENTS_END - 1], 0xff);
        let full = parse_ccel(&bytes).unwrap();
        // The same events without padding, and with zero padding instead.
        assert_eq!(parse_ccel(&bytes[..SAMPLE_EVENTS_END]).unwrap(), full);
        let mut zero_padded = bytes[..SAMPLE_EVENTS_END].to_vec();
        zero_padded.resize(4096, 0);
        assert_eq!(parse_ccel(&zero_padded).unwrap(), full);
    }

    #[test]
    fn every_prefix_of_the_sample_fails_cleanly_or_ends_on_a_record() {
        let bytes = sample();
        let full = parse_ccel(&bytes).unwrap();
        let mut last_count = 0;
        let mut ok_prefixes = 0;
        for len in 0..=SAMPLE_EVENTS_END.min(2048) {
            match parse_ccel(&bytes[..len]) {
                Ok(events) => {
                    // A prefix that parses is a record boundary: its events are
                    // the leading events of the full log.
                    assert!(events.len() >= last_count, "prefix {len}");
                    assert_eq!(events[..], full[..events.len()], "prefix {len}");
                    last_count = events.len();
                    ok_prefixes += 1;
                }
                Err(EventLogError::Truncated { offset, needed }) => {
                    assert!(
                        offset <= len && offset + needed > len,
                        "prefix {len}: {offset}+{needed}"
                    );
                }
                Err(other) => panic!("prefix {len}: unexpected {other:?}"),
            }
        }
        // One parse per record boundary after the header: 18 events plus the
        // header-only prefix.
        assert_eq!(ok_prefixes, 19);
        assert_eq!(last_count, 18);
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        assert!(matches!(
            parse_ccel(&[]),
            Err(EventLogError::Truncated {
                offset: 0,
                needed: 4
            })
        ));
        assert!(matches!(
            parse_ccel(&[0xff; 64]),
            Err(EventLogError::BadHeader { .. })
        ));
        // A pseudo-random stream, and the sample with each early byte flipped.
        let mut state = 0x2545_f491_u32;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state.to_le_bytes()[0]
            })
            .collect();
        assert!(parse_ccel(&noise).is_err());
        let bytes = sample();
        for i in 0..0x200 {
            let mut mutated = bytes[..SAMPLE_EVENTS_END].to_vec();
            mutated[i] ^= 0xa5;
            let _ = parse_ccel(&mutated);
        }
    }

    /// A header declaring `algorithms`, followed by `records`.
    fn table(algorithms: &[(u16, u16)], records: &[u8]) -> Vec<u8> {
        let mut spec = SPEC_ID_SIGNATURE.to_vec();
        spec.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 2]);
        spec.extend_from_slice(&u32::try_from(algorithms.len()).unwrap().to_le_bytes());
        for (id, size) in algorithms {
            spec.extend_from_slice(&id.to_le_bytes());
            spec.extend_from_slice(&size.to_le_bytes());
        }
        spec.push(0);
        let mut out = Vec::new();
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&EV_NO_ACTION.to_le_bytes());
        out.extend_from_slice(&[0; SHA1_DIGEST_LEN]);
        out.extend_from_slice(&u32::try_from(spec.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&spec);
        out.extend_from_slice(records);
        out
    }

    fn record(mr_index: u32, event_type: u32, digests: &[(u16, &[u8])], data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&mr_index.to_le_bytes());
        out.extend_from_slice(&event_type.to_le_bytes());
        out.extend_from_slice(&u32::try_from(digests.len()).unwrap().to_le_bytes());
        for (id, digest) in digests {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(digest);
        }
        out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn multi_bank_records_keep_only_sha384_and_skip_unmeasured_ones() {
        const SHA256: u16 = 0x000b;
        let algs = [(SHA256, 32), (TPM_ALG_SHA384, 48)];
        let mut records = record(
            1,
            EV_EFI_ACTION,
            &[(SHA256, &[1; 32]), (TPM_ALG_SHA384, &[2; 48])],
            b"a",
        );
        records.extend(record(
            2,
            EV_NO_ACTION,
            &[(SHA256, &[0; 32])],
            b"not measured",
        ));
        records.extend(record(
            0,
            EV_SEPARATOR,
            &[(TPM_ALG_SHA384, &[3; 48])],
            b"mrtd",
        ));
        records.extend(record(4, EV_SEPARATOR, &[(TPM_ALG_SHA384, &[4; 48])], b""));
        let events = parse_ccel(&table(&algs, &records)).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!((events[0].imr, events[0].digest.clone()), (0, vec![2; 48]));
        assert_eq!(events[0].event_payload, b"a");
        assert_eq!((events[1].imr, events[1].event_type), (3, EV_SEPARATOR));
    }

    #[test]
    fn malformed_records_get_named_errors() {
        let sha384 = [(TPM_ALG_SHA384, 48)];
        let bad = |algs: &[(u16, u16)], rec: Vec<u8>| parse_ccel(&table(algs, &rec)).unwrap_err();
        let header_len = table(&sha384, &[]).len();

        let err = bad(&sha384, record(1, 1, &[(0x000b, &[0; 32])], b""));
        assert!(
            matches!(err, EventLogError::UnknownAlgorithm { offset, algorithm: 0x000b } if offset == header_len)
        );
        let err = bad(&sha384, record(1, 1, &[], b""));
        assert!(matches!(err, EventLogError::MissingDigest { .. }));
        let twice: &[(u16, &[u8])] = &[(TPM_ALG_SHA384, &[0; 48]), (TPM_ALG_SHA384, &[1; 48])];
        assert!(matches!(
            bad(&sha384, record(1, 1, twice, b"")),
            EventLogError::DuplicateDigest { .. }
        ));
        let err = bad(&sha384, record(5, 1, &[(TPM_ALG_SHA384, &[0; 48])], b""));
        assert!(matches!(
            err,
            EventLogError::UnsupportedRegister { mr_index: 5, .. }
        ));
        assert!(matches!(
            bad(&[(0x000b, 32)], vec![]),
            EventLogError::NoSha384Bank
        ));
        assert!(matches!(
            bad(&[(TPM_ALG_SHA384, 32)], vec![]),
            EventLogError::BadHeader { .. }
        ));
        let dup = [(TPM_ALG_SHA384, 48), (TPM_ALG_SHA384, 48)];
        assert!(matches!(bad(&dup, vec![]), EventLogError::BadHeader { .. }));

        // A data size far past the end is a truncation, not an allocation.
        let mut huge = record(1, 1, &[(TPM_ALG_SHA384, &[0; 48])], b"");
        let size_at = huge.len() - 4;
        huge[size_at..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            matches!(bad(&sha384, huge), EventLogError::Truncated { needed, .. } if needed == u32::MAX as usize)
        );
    }
}
