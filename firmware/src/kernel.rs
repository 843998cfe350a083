//! The kernel as OVMF loads it, and the RTMR1 events of the boot.
//!
//! QEMU's direct Linux boot (`x86_load_linux`) patches the kernel's setup
//! header before serving it to the firmware over fw_cfg: loader type, heap
//! end, command line address, video mode for `vga=`, and the initrd's
//! address and size. The initrd address depends on the guest's RAM below
//! 4 GiB and QEMU's ACPI data size, so the kernel's digest depends on the
//! VM's memory and initrd size. OVMF then loads the patched image through
//! its `QemuKernelLoaderFs` file `kernel` and measures it (Authenticode) as
//! an EFI application into RTMR1, followed by the fixed actions of the
//! ReadyToBoot and ExitBootServices handlers.

use dstack_attest::eventlog::{
    EV_EFI_ACTION, EV_EFI_BOOT_SERVICES_APPLICATION, EV_SEPARATOR, Event,
};

use crate::FirmwareError;
use crate::authenticode;
use crate::bytes::{Guid, u8_at, u16_at, u32_at};
use crate::event::{device_path, event, self_describing};
use crate::hob::below_4g;

/// `pcmc->acpi_data_size` of QEMU's current q35 machine types: RAM QEMU
/// keeps for ACPI at the top of low memory, below the initrd.
pub(crate) const QEMU_ACPI_DATA_SIZE: u64 = 0x28000;
/// `QEMU_KERNEL_LOADER_FS_MEDIA_GUID`: the vendor media node of the file
/// system OVMF serves the kernel from.
const KERNEL_LOADER_FS: Guid = Guid::new(
    0x1428_f772,
    0xb64a,
    0x441e,
    [0xb8, 0xc3, 0x9e, 0xbd, 0xd7, 0xf8, 0x93, 0xc7],
);

/// "HdrS": the setup header's magic at 0x202.
const HEADER_MAGIC: u32 = 0x5372_6448;
/// `loadflags` bit: the kernel runs at 0x100000.
const LOADED_HIGH: u8 = 0x01;
/// `loadflags` bit QEMU sets: the heap end field is valid.
const CAN_USE_HEAP: u8 = 0x80;
/// `xloadflags` bit: the initrd may live anywhere below 4 GiB.
const XLF_CAN_BE_LOADED_ABOVE_4G: u16 = 1 << 1;
/// `type_of_loader` QEMU writes: 0xB_ is reserved for it.
const QEMU_LOADER_TYPE: u8 = 0xB0;
/// The setup header ends with `setup_data` (0x250..0x258) and later fields;
/// QEMU reads this much before deciding anything.
const MIN_KERNEL_LEN: usize = 0x258;

/// The kernel image as the firmware receives it from QEMU.
pub(crate) fn patch(
    kernel: &[u8],
    initrd_len: usize,
    memory: u64,
    cmdline: &str,
) -> Result<Vec<u8>, FirmwareError> {
    let not_linux = |reason| FirmwareError::NotLinuxKernel { reason };
    if kernel.len() < MIN_KERNEL_LEN {
        return Err(not_linux("image is shorter than a setup header"));
    }
    // Multiboot and ELF kernels take other QEMU paths that OVMF does not
    // boot as EFI applications.
    if u32_at(kernel, 0x202, "setup header")? != HEADER_MAGIC {
        return Err(not_linux("no \"HdrS\" setup header"));
    }
    let protocol = u16_at(kernel, 0x206, "setup header")?;
    let loadflags = u8_at(kernel, 0x211, "setup header")?;

    // QEMU: "(strlen(kernel_cmdline) + 16) & ~15".
    let cmdline_size = u32::try_from((cmdline.len() + 16) & !15).unwrap_or(u32::MAX);
    let (real_addr, cmdline_addr) = if protocol < 0x202 || loadflags & LOADED_HIGH == 0 {
        (0x9_0000u32, 0x9_A000u32.wrapping_sub(cmdline_size))
    } else {
        (0x1_0000, 0x2_0000)
    };

    let mut initrd_max: u32 = if protocol >= 0x20C
        && u16_at(kernel, 0x236, "setup header")? & XLF_CAN_BE_LOADED_ABOVE_4G != 0
    {
        u32::MAX
    } else if protocol >= 0x203 {
        u32_at(kernel, 0x22C, "setup header")?
    } else {
        0x37FF_FFFF
    };
    let low_ram = below_4g(memory);
    let usable = low_ram
        .checked_sub(QEMU_ACPI_DATA_SIZE)
        .filter(|&usable| usable > 0)
        .ok_or(FirmwareError::BadMemorySize {
            memory,
            reason: "less RAM below 4 GiB than QEMU's ACPI data",
        })?;
    if u64::from(initrd_max) >= usable {
        // `usable` < 4 GiB here, so it fits.
        initrd_max = u32::try_from(usable - 1).unwrap_or(u32::MAX);
    }

    let mut image = kernel.to_vec();
    if protocol >= 0x202 {
        image[0x228..0x22C].copy_from_slice(&cmdline_addr.to_le_bytes());
    } else {
        put16(&mut image, 0x20, 0xA33F);
        put16(
            &mut image,
            0x22,
            truncate16(cmdline_addr.wrapping_sub(real_addr)),
        );
    }
    if let Some(mode) = video_mode(cmdline) {
        put16(&mut image, 0x1FA, mode);
    }
    if protocol >= 0x200 {
        image[0x210] = QEMU_LOADER_TYPE;
    }
    if protocol >= 0x201 {
        image[0x211] |= CAN_USE_HEAP;
        // A 16-bit field: QEMU writes it with `stw_p`.
        put16(
            &mut image,
            0x224,
            truncate16(cmdline_addr.wrapping_sub(real_addr).wrapping_sub(0x200)),
        );
    }
    if initrd_len > 0 {
        if protocol < 0x200 {
            return Err(not_linux("boot protocol before 2.00 cannot take an initrd"));
        }
        let size = u32::try_from(initrd_len)
            .ok()
            .filter(|&size| size < initrd_max)
            .ok_or(FirmwareError::InitrdTooLarge {
                size: initrd_len as u64,
                max: initrd_max,
            })?;
        let initrd_addr = (initrd_max - size) & !4095;
        image[0x218..0x21C].copy_from_slice(&initrd_addr.to_le_bytes());
        image[0x21C..0x220].copy_from_slice(&size.to_le_bytes());
    }

    // QEMU splits the image into setup and kernel, refusing a header whose
    // setup does not fit; the two parts reach OVMF concatenated.
    let setup_sects = match image[0x1F1] {
        0 => 4,
        n => usize::from(n),
    };
    if (setup_sects + 1) * 512 > image.len() {
        return Err(not_linux("setup sectors run past the end of the image"));
    }
    Ok(image)
}

/// Writes a 16-bit field, as QEMU's `stw_p`.
fn put16(image: &mut [u8], at: usize, value: u16) {
    image[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

/// The low 16 bits of `value`, as a 16-bit store of a wider value keeps.
fn truncate16(value: u32) -> u16 {
    let [lo, hi, ..] = value.to_le_bytes();
    u16::from_le_bytes([lo, hi])
}

/// The video mode QEMU writes for a `vga=` option: `normal`, `ext`, `ask`,
/// or a number parsed like C's `strtol(.., 0)`, truncated to 16 bits.
fn video_mode(cmdline: &str) -> Option<u16> {
    let at = cmdline.find("vga=")?;
    let value = &cmdline[at + 4..];
    Some(if value.starts_with("normal") {
        0xFFFF
    } else if value.starts_with("ext") {
        0xFFFE
    } else if value.starts_with("ask") {
        0xFFFD
    } else {
        // strtol: optional whitespace and sign, then 0x-hex, 0-octal or
        // decimal digits up to the first that does not fit; out of range
        // saturates. QEMU stores the low 16 bits of the result.
        let trimmed = value.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
        let (negative, digits) = match trimmed.as_bytes().first() {
            Some(b'-') => (true, &trimmed[1..]),
            Some(b'+') => (false, &trimmed[1..]),
            _ => (false, trimmed),
        };
        let lower = digits.to_ascii_lowercase();
        let (radix, digits) =
            if lower.starts_with("0x") && lower[2..].starts_with(|c: char| c.is_ascii_hexdigit()) {
                (16, &digits[2..])
            } else if lower.starts_with('0') {
                (8, digits)
            } else {
                (10, digits)
            };
        let mut magnitude: i128 = 0;
        for c in digits.chars() {
            let Some(d) = c.to_digit(radix) else { break };
            magnitude = (magnitude * i128::from(radix) + i128::from(d)).min(1 << 64);
        }
        let signed = if negative { -magnitude } else { magnitude };
        let long = signed.clamp(i128::from(i64::MIN), i128::from(i64::MAX));
        let [lo, hi, ..] = long.to_le_bytes();
        u16::from_le_bytes([lo, hi])
    })
}

/// The RTMR1 events: the kernel as an EFI application, then ReadyToBoot's
/// action and separator, then ExitBootServices' two actions.
///
/// The kernel event's payload is the `UEFI_IMAGE_LOAD_EVENT` OVMF logs, but
/// its `ImageLocationInMemory` is where OVMF happened to allocate the file
/// buffer, which nothing outside the TD can know: it is left zero. The
/// payload is not measured.
pub(crate) fn rtmr1_events(patched_kernel: &[u8]) -> Result<[Event; 5], FirmwareError> {
    let pe = authenticode::measure(patched_kernel)?;
    let mut path = Vec::new();
    device_path::vendor_media(&mut path, KERNEL_LOADER_FS);
    device_path::file_path(&mut path, "kernel");
    device_path::end(&mut path);
    let mut payload = Vec::with_capacity(32 + path.len());
    payload.extend_from_slice(&0u64.to_le_bytes()); // ImageLocationInMemory
    payload.extend_from_slice(&(patched_kernel.len() as u64).to_le_bytes());
    payload.extend_from_slice(&pe.image_base.to_le_bytes());
    payload.extend_from_slice(&(path.len() as u64).to_le_bytes());
    payload.extend_from_slice(&path);
    let [calling, separator, exit, exited] = fixed_rtmr1_events();
    Ok([
        event(1, EV_EFI_BOOT_SERVICES_APPLICATION, pe.digest, payload),
        calling,
        separator,
        exit,
        exited,
    ])
}

/// The four RTMR1 events that follow the kernel's, the same on every boot.
pub(crate) fn fixed_rtmr1_events() -> [Event; 4] {
    [
        self_describing(
            1,
            EV_EFI_ACTION,
            b"Calling EFI Application from Boot Option",
        ),
        self_describing(1, EV_SEPARATOR, &[0; 4]),
        self_describing(1, EV_EFI_ACTION, b"Exit Boot Services Invocation"),
        self_describing(
            1,
            EV_EFI_ACTION,
            b"Exit Boot Services Returned with Success",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A boot-protocol-2.15 header (LOADED_HIGH) over `len` bytes.
    fn kernel(len: usize, xloadflags: u16) -> Vec<u8> {
        let mut k = vec![0u8; len];
        k[0x1F1] = 3;
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes());
        k[0x211] = LOADED_HIGH;
        k[0x22C..0x230].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
        k[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        k
    }

    fn u32_field(k: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(k[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn patches_the_fields_qemu_writes() {
        let k = kernel(0x1000, XLF_CAN_BE_LOADED_ABOVE_4G);
        let p = patch(&k, 0x10_0000, 1 << 30, "console=ttyS0").unwrap();
        assert_eq!(p[0x210], 0xB0);
        assert_eq!(p[0x211], LOADED_HIGH | CAN_USE_HEAP);
        assert_eq!(&p[0x224..0x228], &[0x00, 0xFE, 0, 0]);
        assert_eq!(u32_field(&p, 0x228), 0x2_0000);
        // Initrd at the top of RAM below the ACPI data, page aligned.
        let max = (1u32 << 30) - 0x28000 - 1;
        assert_eq!(u32_field(&p, 0x218), (max - 0x10_0000) & !4095);
        assert_eq!(u32_field(&p, 0x21C), 0x10_0000);
        // Nothing else changes.
        let changed: Vec<usize> = (0..k.len()).filter(|&i| k[i] != p[i]).collect();
        assert!(
            changed.iter().all(|&i| (0x210..0x230).contains(&i)),
            "{changed:x?}"
        );
    }

    #[test]
    fn initrd_limit_follows_xloadflags_and_memory() {
        // 2.5 GiB of RAM, all below 4 GiB.
        let memory = 0xA000_0000;
        // Without XLF_CAN_BE_LOADED_ABOVE_4G the header's initrd_addr_max
        // (2 GiB - 1 here) is the limit.
        let p = patch(&kernel(0x1000, 0), 0x1000, memory, "").unwrap();
        assert_eq!(u32_field(&p, 0x218), 0x7FFF_E000);
        // With it, the limit is the low RAM less QEMU's ACPI data.
        let p = patch(
            &kernel(0x1000, XLF_CAN_BE_LOADED_ABOVE_4G),
            0x1000,
            memory,
            "",
        )
        .unwrap();
        assert_eq!(u32_field(&p, 0x218), 0x9FFD_6000);
        // 5-level paging alone (0x40) does not lift the header's limit.
        let p = patch(&kernel(0x1000, 0x40), 0x1000, memory, "").unwrap();
        assert_eq!(u32_field(&p, 0x218), 0x7FFF_E000);
        // A 4 GiB VM keeps only 2 GiB below 4 GiB.
        let p = patch(
            &kernel(0x1000, XLF_CAN_BE_LOADED_ABOVE_4G),
            0x1000,
            4 << 30,
            "",
        )
        .unwrap();
        assert_eq!(u32_field(&p, 0x218), 0x7FFD_6000);
    }

    #[test]
    fn old_protocols_and_vga_are_patched_like_qemu() {
        let mut k = kernel(0x1000, 0);
        k[0x206..0x208].copy_from_slice(&0x0201u16.to_le_bytes());
        let p = patch(&k, 0, 1 << 30, "vga=0x317 x").unwrap();
        // Command line below 0x9A000, its offset from real mode code at 0x22.
        // (0x9A000 - 16), 0x9FF0 past the real-mode code at 0x90000.
        assert_eq!(&p[0x20..0x22], &0xA33Fu16.to_le_bytes());
        assert_eq!(&p[0x22..0x24], &0x9FF0u16.to_le_bytes());
        assert_eq!(&p[0x224..0x226], &0x9DF0u16.to_le_bytes());
        assert_eq!(&p[0x1FA..0x1FC], &0x317u16.to_le_bytes());

        assert_eq!(video_mode("vga=normal"), Some(0xFFFF));
        assert_eq!(video_mode("a vga=ask"), Some(0xFFFD));
        assert_eq!(video_mode("vga=791"), Some(791));
        assert_eq!(video_mode("vga=017"), Some(0o17));
        assert_eq!(video_mode("vga=-1"), Some(0xFFFF));
        assert_eq!(video_mode("vga=99999999999999999999999"), Some(0xFFFF));
        assert_eq!(video_mode("vga=-99999999999999999999999"), Some(0));
        assert_eq!(video_mode("vga=x"), Some(0));
        assert_eq!(video_mode("quiet"), None);
    }

    #[test]
    fn bad_kernels_and_initrds_are_errors() {
        assert!(matches!(
            patch(&[0; 0x100], 0, 1 << 30, ""),
            Err(FirmwareError::NotLinuxKernel { .. })
        ));
        assert!(matches!(
            patch(&vec![0; 0x1000], 0, 1 << 30, ""),
            Err(FirmwareError::NotLinuxKernel { .. })
        ));
        let mut old = kernel(0x1000, 0);
        old[0x206..0x208].copy_from_slice(&0x0100u16.to_le_bytes());
        assert!(matches!(
            patch(&old, 1, 1 << 30, ""),
            Err(FirmwareError::NotLinuxKernel { .. })
        ));
        let mut long_setup = kernel(0x1000, 0);
        long_setup[0x1F1] = 200;
        assert!(patch(&long_setup, 0, 1 << 30, "").is_err());
        assert!(matches!(
            patch(&kernel(0x1000, 0), 0x7000_0000, 1 << 30, ""),
            Err(FirmwareError::InitrdTooLarge { .. })
        ));
        assert!(matches!(
            patch(&kernel(0x1000, 0), 1, 0x1000, ""),
            Err(FirmwareError::BadMemorySize { .. })
        ));
    }

    #[test]
    fn fixed_events_match_the_real_dstack_vm() {
        // Digests of events 14-17 of testdata/ccel.bin.
        let expected = [
            "77a0dab2312b4e1e57a84d865a21e5b2ee8d677a21012ada819d0a98988078d3d740f6346bfe0abaa938ca20439a8d71",
            "394341b7182cd227c5c6b07ef8000cdfd86136c4292b8e576573ad7ed9ae41019f5818b4b971c9effc60e1ad9f1289f0",
            "214b0bef1379756011344877743fdc2a5382bac6e70362d624ccf3f654407c1b4badf7d8f9295dd3dabdef65b27677e0",
            "0a2e01c85deae718a530ad8c6d20a84009babe6c8989269e950d8cf440c6e997695e64d455c4174a652cd080f6230b74",
        ];
        for (event, digest) in fixed_rtmr1_events().iter().zip(expected) {
            assert_eq!(hex::encode(&event.digest), digest);
        }
    }
}
