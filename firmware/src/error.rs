//! Why a measurement could not be computed.

/// Why the firmware, kernel, initrd, command line, VM shape or ACPI tables
/// cannot be measured.
///
/// Every input is untrusted: each read is bounds checked and a malformed
/// input gives one of these, never a panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FirmwareError {
    /// The firmware has no OVMF footer table, or the table has no TDX
    /// metadata entry: it is not a TDVF image.
    #[error("firmware has no TDVF metadata: {reason}")]
    NoTdvfMetadata {
        /// What is missing.
        reason: &'static str,
    },
    /// A structure runs past the end of the bytes that hold it.
    #[error("{what} is truncated: {needed} bytes needed at offset {offset:#x}, {len:#x} available")]
    Truncated {
        /// The structure being read.
        what: &'static str,
        /// Where the read started.
        offset: usize,
        /// How many bytes it needed.
        needed: usize,
        /// How many bytes there are.
        len: usize,
    },
    /// The TDVF descriptor the metadata entry points at is malformed.
    #[error("TDVF descriptor is malformed: {reason}")]
    BadTdvfDescriptor {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A TDVF metadata section is malformed or of a kind QEMU rejects.
    #[error("TDVF section {index} is malformed: {reason}")]
    BadSection {
        /// Position of the section in the metadata.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The TDVF metadata lacks a section the boot needs.
    #[error("TDVF metadata has no {kind} section")]
    MissingSection {
        /// The section type, as the TDVF spec names it.
        kind: &'static str,
    },
    /// The VM's memory size is out of range for this firmware or QEMU.
    #[error("memory size {memory:#x} bytes is not usable: {reason}")]
    BadMemorySize {
        /// The memory size in bytes (saturated if the MiB value overflowed).
        memory: u64,
        /// Why.
        reason: &'static str,
    },
    /// A TD_HOB or TempMem section does not lie inside one RAM range, so
    /// QEMU cannot accept it (it refuses to start the TD).
    #[error("TDVF section at {start:#x}..{end:#x} is not inside guest RAM")]
    SectionOutsideRam {
        /// First byte of the section.
        start: u64,
        /// One past its last byte.
        end: u64,
    },
    /// The TD HOB QEMU would build does not fit in the TD_HOB section.
    #[error("TD HOB of {needed} bytes does not fit the {available}-byte TD_HOB section")]
    TdHobTooLarge {
        /// Bytes the HOB list needs, end marker included.
        needed: u64,
        /// Bytes the section has.
        available: u64,
    },
    /// The configuration firmware volume (CFV) is not the UEFI variable store
    /// OVMF expects.
    #[error("firmware variable store is malformed: {reason}")]
    BadVariableStore {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A firmware volume or a file or section in it is malformed.
    #[error("firmware volume at offset {offset:#x} is malformed: {reason}")]
    BadFirmwareVolume {
        /// Offset of the volume in the bytes that hold it.
        offset: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An LZMA-compressed firmware section could not be decompressed.
    #[error("LZMA section in the firmware cannot be decompressed")]
    Decompress(#[source] lzma_rs::error::Error),
    /// The firmware lacks what its boot manager needs to create the boot
    /// option RTMR0 measures.
    #[error("firmware boot manager menu cannot be found: {reason}")]
    NoBootManagerMenu {
        /// What is missing.
        reason: &'static str,
    },
    /// The firmware is a TDVF image, but one whose boot this crate does not
    /// model, so it cannot say what the firmware would measure.
    #[error("firmware is not supported: {reason}")]
    UnsupportedFirmware {
        /// What is outside the model.
        reason: &'static str,
    },
    /// The kernel is not a Linux kernel image QEMU can boot directly.
    #[error("kernel is not a bootable Linux image: {reason}")]
    NotLinuxKernel {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The kernel is not a PE/COFF image, so OVMF cannot load it as an EFI
    /// application and there is no Authenticode digest to measure.
    #[error("kernel is not a PE image: {reason}")]
    NotPeKernel {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// QEMU refuses the initrd: it does not fit below the kernel's limit.
    #[error("initrd of {size} bytes does not fit below {max:#x}")]
    InitrdTooLarge {
        /// The initrd size in bytes.
        size: u64,
        /// The highest address QEMU would load it under.
        max: u32,
    },
    /// The command line holds a NUL byte, which QEMU's `-append` cannot carry.
    #[error("kernel command line contains a NUL byte")]
    CmdlineHasNul,
    /// QEMU's `etc/table-loader` script is malformed or allocates files
    /// other than the RSDP and the ACPI tables.
    #[error("ACPI table-loader script is malformed: {reason}")]
    BadAcpiLoader {
        /// What is wrong with it.
        reason: String,
    },
    /// The QEMU version is not one whose page-add order is known.
    #[error("QEMU version {version:?} is not supported (8.0 or later is)")]
    UnsupportedQemuVersion {
        /// The version as given.
        version: String,
    },
}

impl FirmwareError {
    /// A [`FirmwareError::Truncated`] for `what`.
    pub(crate) fn truncated(what: &'static str, offset: usize, needed: usize, len: usize) -> Self {
        Self::Truncated {
            what,
            offset,
            needed,
            len,
        }
    }
}
