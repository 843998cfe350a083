//! The three fw_cfg files through which QEMU hands a guest its ACPI tables.

use dstack_firmware::AcpiTables;

/// Bytes of one linker/loader command (QEMU's `BiosLinkerLoaderEntry`).
const LOADER_COMMAND_LEN: usize = 128;
/// The loader command that allocates a blob (`BIOS_LINKER_LOADER_COMMAND_ALLOCATE`).
const LOADER_ALLOCATE: u32 = 1;
/// What an RSDP starts with.
const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";
/// The size of an ACPI 1.0 RSDP, the smallest there is.
const RSDP_V1_LEN: usize = 20;

/// A blob that cannot be what QEMU builds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("QEMU's {file} {problem}")]
pub struct BlobError {
    /// The fw_cfg file.
    pub file: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

/// Reading QEMU's ACPI blobs ([`AcpiTables`], what TDVF measures into
/// RTMR0): their shape, and the tables in them.
pub trait AcpiBlobs {
    /// Checks that each blob has the shape QEMU gives it: the loader whole
    /// commands starting with an allocation, the RSDP its signature, the
    /// tables a table signature first.
    fn check(&self) -> Result<(), BlobError>;
    /// The 4-byte signatures of the tables in `tables`, in order, up to the
    /// zero padding.
    fn table_signatures(&self) -> Vec<String>;
    /// The table with signature `signature` (header included), if any.
    fn table(&self, signature: &str) -> Option<&[u8]>;
}

impl AcpiBlobs for AcpiTables {
    fn check(&self) -> Result<(), BlobError> {
        let fail = |file, problem| Err(BlobError { file, problem });
        let loader = "etc/table-loader";
        if self.loader.is_empty() || !self.loader.len().is_multiple_of(LOADER_COMMAND_LEN) {
            return fail(loader, "is not a whole number of 128-byte commands");
        }
        let first = u32::from_le_bytes([
            self.loader[0],
            self.loader[1],
            self.loader[2],
            self.loader[3],
        ]);
        if first != LOADER_ALLOCATE {
            return fail(loader, "does not start by allocating a blob");
        }
        if self.rsdp.len() < RSDP_V1_LEN || !self.rsdp.starts_with(RSDP_SIGNATURE) {
            return fail("etc/acpi/rsdp", "does not start with \"RSD PTR \"");
        }
        let signature = self.tables.get(..4).unwrap_or_default();
        if signature.len() < 4
            || !signature
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            return fail("etc/acpi/tables", "does not start with a table signature");
        }
        Ok(())
    }

    fn table_signatures(&self) -> Vec<String> {
        let mut signatures = Vec::new();
        let mut at = 0usize;
        while let Some(header) = self.tables.get(at..at + 8) {
            if header[..4] == [0; 4] {
                break;
            }
            let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            signatures.push(String::from_utf8_lossy(&header[..4]).into_owned());
            match usize::try_from(len) {
                Ok(len) if len >= 8 => at += len,
                _ => break,
            }
        }
        signatures
    }

    fn table(&self, signature: &str) -> Option<&[u8]> {
        let mut at = 0usize;
        while let Some(header) = self.tables.get(at..at + 8) {
            let len = usize::try_from(u32::from_le_bytes([
                header[4], header[5], header[6], header[7],
            ]))
            .ok()?;
            if header[..4] == [0; 4] || len < 8 {
                return None;
            }
            if &header[..4] == signature.as_bytes() {
                return self.tables.get(at..at + len);
            }
            at += len;
        }
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Blobs of QEMU's shapes (not QEMU's bytes).
    pub(crate) fn sample() -> AcpiTables {
        let mut loader = vec![0u8; 4096];
        loader[0] = 1;
        loader[4..17].copy_from_slice(b"etc/acpi/rsdp");
        let mut rsdp = b"RSD PTR ".to_vec();
        rsdp.extend_from_slice(&[0, b'B', b'O', b'C', b'H', b'S', b' ', 0]);
        rsdp.resize(20, 0);
        let mut tables = b"FACS".to_vec();
        tables.extend_from_slice(&64u32.to_le_bytes());
        tables.resize(64, 0);
        tables.extend_from_slice(b"APIC");
        tables.extend_from_slice(&44u32.to_le_bytes());
        tables.resize(64 + 44, 7);
        tables.resize(0x20000, 0);
        AcpiTables {
            loader,
            rsdp,
            tables,
        }
    }

    #[test]
    fn qemu_shaped_blobs_pass() {
        let blobs = sample();
        assert_eq!(blobs.check(), Ok(()));
        assert_eq!(blobs.table_signatures(), ["FACS", "APIC"]);
        assert_eq!(blobs.table("APIC").map(<[u8]>::len), Some(44));
        assert_eq!(blobs.table("HPET"), None);
    }

    #[test]
    fn each_blob_is_checked() {
        let mut b = sample();
        b.loader.truncate(100);
        assert_eq!(b.check().unwrap_err().file, "etc/table-loader");
        let mut b = sample();
        b.loader[0] = 2;
        assert_eq!(
            b.check().unwrap_err().problem,
            "does not start by allocating a blob"
        );
        let mut b = sample();
        b.rsdp[0] = b'X';
        assert_eq!(b.check().unwrap_err().file, "etc/acpi/rsdp");
        let mut b = sample();
        b.tables.fill(0);
        assert_eq!(b.check().unwrap_err().file, "etc/acpi/tables");
        let mut b = sample();
        b.tables.clear();
        assert_eq!(b.check().unwrap_err().file, "etc/acpi/tables");
    }

    #[test]
    fn debug_shows_sizes_not_bytes() {
        let text = format!("{:?}", sample());
        assert!(text.contains("131072"), "{text}");
        assert!(text.len() < 200, "{text}");
    }
}
