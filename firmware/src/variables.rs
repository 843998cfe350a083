//! The UEFI variables TDVF measures into RTMR0, read from the variable store
//! in the firmware's configuration volume (CFV).
//!
//! The CFV is a firmware volume (`_FVH` header) whose body starts with a
//! `VARIABLE_STORE_HEADER` (MdeModulePkg `VariableFormat.h`): the store's
//! format GUID (authenticated or plain), `u32` size (header included),
//! `u8` format (`0x5A`: formatted), `u8` state (`0xFE`: healthy), 6 reserved
//! bytes. Variables follow, each 4-byte aligned, while their header starts
//! with `0x55AA`: a header, the UTF-16 name (NUL included), then the data.
//!
//! At boot, TDVF measures SecureBoot, PK, KEK, db and dbx in that order as
//! `EV_EFI_VARIABLE_DRIVER_CONFIG` events whose digest covers the whole
//! `UEFI_VARIABLE_DATA`; a variable that does not exist is measured with
//! empty data.

use dstack_attest::eventlog::{
    EV_EFI_PLATFORM_FIRMWARE_BLOB2, EV_EFI_VARIABLE_DRIVER_CONFIG, Event,
};

use crate::FirmwareError;
use crate::bytes::{Guid, guid_at, slice, to_usize, u8_at, u16_at, u32_at};
use crate::event::{event, sha384, uefi_variable_data};
use crate::tdvf::{Metadata, SectionKind};

/// The description TDVF gives the CFV blob (`FV_HANDOFF_TABLE_DESC`).
const CFV_DESCRIPTION: &[u8] = b"Fv(XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX)\0";

/// The RTMR0 event for the CFV: TDVF's SEC phase measures the section's
/// image bytes as an `EV_EFI_PLATFORM_FIRMWARE_BLOB2` (description, base
/// address, length).
pub(crate) fn cfv_event(metadata: &Metadata, fw: &[u8]) -> Result<Event, FirmwareError> {
    let section = metadata.section(SectionKind::Cfv)?;
    let bytes = metadata.raw_data(fw, section);
    let mut payload = Vec::with_capacity(1 + CFV_DESCRIPTION.len() + 16);
    // A 41-byte constant.
    payload.push(u8::try_from(CFV_DESCRIPTION.len()).unwrap_or(u8::MAX));
    payload.extend_from_slice(CFV_DESCRIPTION);
    payload.extend_from_slice(&section.address.to_le_bytes());
    payload.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    Ok(event(
        0,
        EV_EFI_PLATFORM_FIRMWARE_BLOB2,
        sha384(bytes),
        payload,
    ))
}

/// `EFI_GLOBAL_VARIABLE`: SecureBoot, PK, KEK, BootOrder, Boot####.
pub(crate) const GLOBAL_VARIABLE: Guid = Guid::new(
    0x8be4_df61,
    0x93ca,
    0x11d2,
    [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c],
);
/// `EFI_IMAGE_SECURITY_DATABASE_GUID`: db and dbx.
const IMAGE_SECURITY_DATABASE: Guid = Guid::new(
    0xd719_b2cb,
    0x3d3a,
    0x4596,
    [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f],
);
/// `gEfiAuthenticatedVariableGuid`: store of authenticated variable headers.
const AUTHENTICATED_STORE: Guid = Guid::new(
    0xaaf3_2c78,
    0x947b,
    0x439a,
    [0xa1, 0x80, 0x2e, 0x14, 0x4e, 0xc3, 0x77, 0x92],
);
/// `gEfiVariableGuid`: store of plain variable headers.
const PLAIN_STORE: Guid = Guid::new(
    0xddcf_3616,
    0x3275,
    0x4164,
    [0x98, 0xb6, 0xfe, 0x85, 0x70, 0x7f, 0xfe, 0x7d],
);

/// The secure-boot variables TDVF measures, in its order.
const SECURE_BOOT_VARIABLES: [(Guid, &str); 5] = [
    (GLOBAL_VARIABLE, "SecureBoot"),
    (GLOBAL_VARIABLE, "PK"),
    (GLOBAL_VARIABLE, "KEK"),
    (IMAGE_SECURITY_DATABASE, "db"),
    (IMAGE_SECURITY_DATABASE, "dbx"),
];

const STORE_HEADER_LEN: usize = 28;
const STORE_FORMATTED: u8 = 0x5A;
const STORE_HEALTHY: u8 = 0xFE;
const VARIABLE_START_ID: u16 = 0x55AA;
/// `VAR_ADDED`: the live copy of a variable.
const VAR_ADDED: u8 = 0x3F;
/// `VAR_ADDED & VAR_IN_DELETED_TRANSITION`: live only if no added copy
/// exists (a write was interrupted).
const VAR_ADDED_IN_TRANSITION: u8 = 0x3E;

/// One variable found in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Variable {
    pub(crate) vendor: Guid,
    /// The name in UTF-16 units, without the terminator.
    pub(crate) name: Vec<u16>,
    pub(crate) data: Vec<u8>,
    in_transition: bool,
}

/// The live variables of the CFV's variable store.
#[derive(Debug, Clone, Default)]
pub(crate) struct VariableStore {
    variables: Vec<Variable>,
}

impl VariableStore {
    /// Reads the variable store at the start of the CFV's body.
    pub(crate) fn parse(cfv: &[u8]) -> Result<Self, FirmwareError> {
        let bad = |reason| FirmwareError::BadVariableStore { reason };
        if slice(cfv, 40, 4, "CFV volume header")? != b"_FVH" {
            return Err(bad("CFV is not a firmware volume"));
        }
        let store_at = usize::from(u16_at(cfv, 48, "CFV volume header")?);
        let header = slice(cfv, store_at, STORE_HEADER_LEN, "variable store header")?;
        let authenticated = match guid_at(header, 0, "variable store header")? {
            AUTHENTICATED_STORE => true,
            PLAIN_STORE => false,
            _ => return Err(bad("unknown variable store format GUID")),
        };
        let size = to_usize(u32_at(header, 16, "variable store header")?.into(), "store")?;
        if header[20] != STORE_FORMATTED || header[21] != STORE_HEALTHY {
            return Err(bad("variable store is not formatted and healthy"));
        }
        let store = slice(cfv, store_at, size, "variable store")?;
        if size < STORE_HEADER_LEN {
            return Err(bad("variable store is smaller than its header"));
        }

        let mut variables = Vec::new();
        let mut at = STORE_HEADER_LEN;
        let header_len = if authenticated { 60 } else { 32 };
        while at + header_len <= store.len() && u16_at(store, at, "variable")? == VARIABLE_START_ID
        {
            let (state, name_size, data_size, vendor) = if authenticated {
                (
                    u8_at(store, at + 2, "variable")?,
                    u32_at(store, at + 36, "variable")?,
                    u32_at(store, at + 40, "variable")?,
                    guid_at(store, at + 44, "variable")?,
                )
            } else {
                (
                    u8_at(store, at + 2, "variable")?,
                    u32_at(store, at + 8, "variable")?,
                    u32_at(store, at + 12, "variable")?,
                    guid_at(store, at + 16, "variable")?,
                )
            };
            let name_size = to_usize(name_size.into(), "variable")?;
            let data_size = to_usize(data_size.into(), "variable")?;
            let name_at = at + header_len;
            let name = slice(store, name_at, name_size, "variable name")?;
            let data_at = name_at + name_size;
            let data = slice(store, data_at, data_size, "variable data")?;
            if state == VAR_ADDED || state == VAR_ADDED_IN_TRANSITION {
                variables.push(Variable {
                    vendor,
                    name: name
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .take_while(|&u| u != 0)
                        .collect(),
                    data: data.to_vec(),
                    in_transition: state == VAR_ADDED_IN_TRANSITION,
                });
            }
            // Variables are 4-byte aligned relative to the store, which is
            // itself 4-byte aligned (HEADER_ALIGN in VariableFormat.h).
            at = (data_at + data_size)
                .checked_add(3)
                .map(|n| n & !3)
                .ok_or(bad("variable size overflows"))?;
        }
        Ok(Self { variables })
    }

    /// The data of the live variable `vendor:name`, as `GetVariable` finds
    /// it: the added copy, else one caught in deletion; `None` if absent.
    pub(crate) fn get(&self, vendor: Guid, name: &str) -> Option<&[u8]> {
        let units: Vec<u16> = name.encode_utf16().collect();
        let copies: Vec<&Variable> = self
            .variables
            .iter()
            .filter(|v| v.vendor == vendor && v.name == units)
            .collect();
        copies
            .iter()
            .find(|v| !v.in_transition)
            .or(copies.first())
            .map(|v| v.data.as_slice())
    }

    /// Whether the store holds any variable of `vendor` whose name starts
    /// with `prefix`.
    pub(crate) fn has_prefixed(&self, vendor: Guid, prefix: &str) -> bool {
        let units: Vec<u16> = prefix.encode_utf16().collect();
        self.variables
            .iter()
            .any(|v| v.vendor == vendor && v.name.starts_with(&units))
    }

    /// The RTMR0 events for SecureBoot, PK, KEK, db and dbx.
    pub(crate) fn secure_boot_events(&self) -> Vec<Event> {
        SECURE_BOOT_VARIABLES
            .iter()
            .map(|&(vendor, name)| {
                let data = self.get(vendor, name).unwrap_or_default();
                let payload = uefi_variable_data(vendor, name, data);
                event(0, EV_EFI_VARIABLE_DRIVER_CONFIG, sha384(&payload), payload)
            })
            .collect()
    }
}

/// Test helpers that build a CFV holding chosen variables.
#[cfg(test)]
// Fixture sizes are small constants: the narrowing casts cannot truncate.
#[allow(clippy::cast_possible_truncation)]
pub(crate) mod build {
    use super::*;

    /// A CFV (authenticated store) holding `(vendor, name, state, data)`.
    pub(crate) fn cfv(variables: &[(Guid, &str, u8, &[u8])]) -> Vec<u8> {
        let mut cfv = vec![0u8; 0x48];
        cfv[40..44].copy_from_slice(b"_FVH");
        cfv[48..50].copy_from_slice(&0x48u16.to_le_bytes());
        let mut store = AUTHENTICATED_STORE.0.to_vec();
        store.extend_from_slice(&0x1000u32.to_le_bytes());
        store.extend_from_slice(&[STORE_FORMATTED, STORE_HEALTHY, 0, 0, 0, 0, 0, 0]);
        for &(vendor, name, state, data) in variables {
            let mut name16: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
            name16.extend_from_slice(&[0, 0]);
            store.extend_from_slice(&VARIABLE_START_ID.to_le_bytes());
            store.extend_from_slice(&[state, 0]);
            store.extend_from_slice(&7u32.to_le_bytes()); // attributes
            store.extend_from_slice(&[0; 8 + 16 + 4]); // count, time, key index
            store.extend_from_slice(&(name16.len() as u32).to_le_bytes());
            store.extend_from_slice(&(data.len() as u32).to_le_bytes());
            store.extend_from_slice(&vendor.0);
            store.extend_from_slice(&name16);
            store.extend_from_slice(data);
            while !store.len().is_multiple_of(4) {
                store.push(0xFF);
            }
        }
        store.resize(0x1000, 0xFF);
        cfv.extend_from_slice(&store);
        cfv
    }
}

#[cfg(test)]
mod tests {
    use super::build::cfv;
    use super::*;

    #[test]
    fn empty_store_measures_empty_variables() {
        let store = VariableStore::parse(&cfv(&[])).unwrap();
        let events = store.secure_boot_events();
        assert_eq!(events.len(), 5);
        // SecureBoot with no data, exactly as testdata/ccel.bin's event 2.
        let mut expected = GLOBAL_VARIABLE.0.to_vec();
        expected.extend_from_slice(&10u64.to_le_bytes());
        expected.extend_from_slice(&0u64.to_le_bytes());
        expected.extend(b"SecureBoot".iter().flat_map(|&b| [b, 0]));
        assert_eq!(events[0].event_payload, expected);
        assert_eq!(events[0].digest, sha384(&expected));
        assert_eq!(events[0].event_type, EV_EFI_VARIABLE_DRIVER_CONFIG);
    }

    #[test]
    fn finds_live_variables_and_skips_deleted_ones() {
        let store = VariableStore::parse(&cfv(&[
            (GLOBAL_VARIABLE, "PK", 0x3C, b"old"),              // deleted
            (GLOBAL_VARIABLE, "PK", VAR_ADDED, b"pk"),          // live
            (IMAGE_SECURITY_DATABASE, "db", 0x3E, b"db1"),      // interrupted write
            (IMAGE_SECURITY_DATABASE, "dbx", 0x3E, b"x1"),      // in transition...
            (IMAGE_SECURITY_DATABASE, "dbx", VAR_ADDED, b"x2"), // ...and added
            (GLOBAL_VARIABLE, "Boot0001", VAR_ADDED, b"b"),
        ]))
        .unwrap();
        assert_eq!(store.get(GLOBAL_VARIABLE, "PK"), Some(&b"pk"[..]));
        assert_eq!(store.get(IMAGE_SECURITY_DATABASE, "db"), Some(&b"db1"[..]));
        assert_eq!(store.get(IMAGE_SECURITY_DATABASE, "dbx"), Some(&b"x2"[..]));
        assert_eq!(store.get(GLOBAL_VARIABLE, "KEK"), None);
        assert_eq!(store.get(IMAGE_SECURITY_DATABASE, "PK"), None);
        assert!(store.has_prefixed(GLOBAL_VARIABLE, "Boot"));
        assert!(!store.has_prefixed(IMAGE_SECURITY_DATABASE, "Boot"));

        let events = store.secure_boot_events();
        let pk = uefi_variable_data(GLOBAL_VARIABLE, "PK", b"pk");
        assert_eq!(events[1].event_payload, pk);
        assert_eq!(events[1].digest, sha384(&pk));
    }

    #[test]
    fn malformed_stores_are_errors() {
        let good = cfv(&[(GLOBAL_VARIABLE, "PK", VAR_ADDED, b"pk")]);
        let mut unformatted = good.clone();
        unformatted[0x48 + 20] = 0xFF;
        let mut unknown = good.clone();
        unknown[0x48] ^= 1;
        let mut long_name = good.clone();
        // The PK variable's NameSize.
        long_name[0x48 + 28 + 36..0x48 + 28 + 40].copy_from_slice(&0x10_0000u32.to_le_bytes());
        for (bytes, name) in [
            (&good[..40], "short"),
            (&unformatted[..], "unformatted"),
            (&unknown[..], "unknown"),
            (&long_name[..], "long name"),
        ] {
            assert!(
                matches!(
                    VariableStore::parse(bytes),
                    Err(FirmwareError::BadVariableStore { .. } | FirmwareError::Truncated { .. })
                ),
                "{name}"
            );
        }
        for len in 0..good.len() {
            let _ = VariableStore::parse(&good[..len]);
        }
    }
}
