//! The RTMR0 events for QEMU's ACPI tables.
//!
//! OVMF (`OvmfPkg/AcpiPlatformDxe/QemuFwCfgAcpi.c`) downloads fw_cfg's
//! `etc/table-loader` script and measures it, then runs it: each ALLOCATE
//! command downloads the named file and measures it before any later
//! command patches pointers or checksums into it. Each measurement is an
//! `EV_PLATFORM_CONFIG_FLAGS` event with data `"ACPI DATA"`. The script is a
//! sequence of 128-byte commands; ALLOCATE is `u32 1`, a NUL-padded 56-byte
//! file name, `u32` alignment, `u8` zone. Other commands are not measured.

use dstack_attest::eventlog::{
    ACPI_DATA_PAYLOAD, EV_PLATFORM_CONFIG_FLAGS, Event, label_acpi_data_events,
};

use crate::event::{event, sha384};
use crate::{AcpiTables, FirmwareError};

const COMMAND_LEN: usize = 128;
const COMMAND_ALLOCATE: u32 = 1;
const FILE_NAME_LEN: usize = 56;
const RSDP_FILE: &[u8] = b"etc/acpi/rsdp";
const TABLES_FILE: &[u8] = b"etc/acpi/tables";

/// The files the loader script allocates, in its order.
fn allocations(loader: &[u8]) -> Result<Vec<&[u8]>, FirmwareError> {
    let bad = |reason: String| FirmwareError::BadAcpiLoader { reason };
    // OVMF refuses a script that is not a whole number of commands.
    if loader.is_empty() || !loader.len().is_multiple_of(COMMAND_LEN) {
        return Err(bad(format!(
            "{} bytes is not a whole number of 128-byte commands",
            loader.len()
        )));
    }
    let mut files = Vec::new();
    for (index, command) in loader.chunks_exact(COMMAND_LEN).enumerate() {
        let kind = u32::from_le_bytes([command[0], command[1], command[2], command[3]]);
        if kind != COMMAND_ALLOCATE {
            continue;
        }
        let name = &command[4..4 + FILE_NAME_LEN];
        let len = name
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| bad(format!("command {index} names a file without a terminator")))?;
        let name = &name[..len];
        if files.contains(&name) {
            return Err(bad(format!(
                "command {index} allocates {:?} twice",
                String::from_utf8_lossy(name)
            )));
        }
        files.push(name);
    }
    Ok(files)
}

/// The three `ACPI DATA` events, in the order OVMF measures the blobs.
pub(crate) fn acpi_events(tables: &AcpiTables) -> Result<Vec<Event>, FirmwareError> {
    let files = allocations(&tables.loader)?;
    let mut events = vec![blob_event(&tables.loader)];
    for name in &files {
        let blob = match *name {
            RSDP_FILE => &tables.rsdp,
            TABLES_FILE => &tables.tables,
            other => {
                return Err(FirmwareError::BadAcpiLoader {
                    reason: format!(
                        "allocates {:?}, which is not an ACPI file this model has",
                        String::from_utf8_lossy(other)
                    ),
                });
            }
        };
        events.push(blob_event(blob));
    }
    if files.len() != 2 {
        return Err(FirmwareError::BadAcpiLoader {
            reason: "does not allocate both etc/acpi/rsdp and etc/acpi/tables".to_owned(),
        });
    }
    label_acpi_data_events(&mut events);
    Ok(events)
}

fn blob_event(blob: &[u8]) -> Event {
    event(
        0,
        EV_PLATFORM_CONFIG_FLAGS,
        sha384(blob),
        ACPI_DATA_PAYLOAD.to_vec(),
    )
}

/// Test helpers that write table-loader scripts.
#[cfg(test)]
pub(crate) mod build {
    /// An ALLOCATE command for `file`.
    pub(crate) fn allocate(file: &str, alignment: u32, zone: u8) -> Vec<u8> {
        let mut command = vec![0u8; 128];
        command[..4].copy_from_slice(&1u32.to_le_bytes());
        command[4..4 + file.len()].copy_from_slice(file.as_bytes());
        command[60..64].copy_from_slice(&alignment.to_le_bytes());
        command[64] = zone;
        command
    }
}

#[cfg(test)]
mod tests {
    use super::build::allocate;
    use super::*;

    fn tables(loader: Vec<u8>) -> AcpiTables {
        AcpiTables {
            loader,
            rsdp: b"RSD PTR rsdp".to_vec(),
            tables: b"DSDT tables".to_vec(),
        }
    }

    #[test]
    fn measures_loader_then_files_in_allocation_order() {
        let mut loader = allocate("etc/acpi/rsdp", 16, 2);
        loader.extend(allocate("etc/acpi/tables", 64, 1));
        let mut checksum = vec![0u8; 128];
        checksum[0] = 3;
        loader.extend(checksum);
        loader.resize(4096, 0);
        let t = tables(loader);
        let events = acpi_events(&t).unwrap();
        let digests: Vec<_> = events.iter().map(|e| e.digest.clone()).collect();
        assert_eq!(
            digests,
            [sha384(&t.loader), sha384(&t.rsdp), sha384(&t.tables)].map(|d| d.to_vec())
        );
        assert!(
            events
                .iter()
                .all(|e| e.event_payload == b"ACPI DATA" && e.event_type == 0xA && e.imr == 0)
        );
        assert_eq!(events[0].event, "acpi-loader");

        // The other order measures the blobs in the other order.
        let mut loader = allocate("etc/acpi/tables", 64, 1);
        loader.extend(allocate("etc/acpi/rsdp", 16, 2));
        let t = tables(loader);
        let events = acpi_events(&t).unwrap();
        assert_eq!(events[1].digest, sha384(&t.tables));
    }

    #[test]
    fn malformed_scripts_are_errors() {
        let rsdp = allocate("etc/acpi/rsdp", 16, 2);
        let tables_cmd = allocate("etc/acpi/tables", 64, 1);
        let cases = [
            Vec::new(),
            rsdp[..100].to_vec(),
            rsdp.clone(),
            [rsdp.clone(), rsdp.clone()].concat(),
            [
                rsdp.clone(),
                tables_cmd.clone(),
                allocate("etc/tpm/log", 4096, 1),
            ]
            .concat(),
            {
                let mut unterminated = [rsdp.clone(), tables_cmd.clone()].concat();
                unterminated[4..60].fill(b'a');
                unterminated
            },
        ];
        for loader in cases {
            assert!(
                matches!(
                    acpi_events(&tables(loader.clone())),
                    Err(FirmwareError::BadAcpiLoader { .. })
                ),
                "{} bytes",
                loader.len()
            );
        }
    }
}
