//! The boot option OVMF's boot manager creates on first boot, and the
//! `BootOrder`/`Boot0000` events TDVF measures into RTMR0 at ReadyToBoot.
//!
//! With an empty variable store, BDS registers its boot manager menu
//! application (OVMF's `PcdBootManagerMenuFile`: UiApp) as `Boot0000`
//! (MdeModulePkg `BmRegisterBootManagerMenu`): an `EFI_LOAD_OPTION` with
//! attributes ACTIVE | HIDDEN | CATEGORY_APP, the description from UiApp's
//! user-interface section, and a device path naming the firmware volume BDS
//! itself was loaded from, then UiApp's file. `BootOrder` is then `[0]`.
//! Both are measured as `EV_EFI_VARIABLE_BOOT` events whose digest covers
//! only the variable's data.
//!
//! Everything that varies between firmware builds (the volume's name, the
//! description) is read from the image; the file GUIDs and attributes are
//! EDK II constants.

use dstack_attest::eventlog::{EV_EFI_VARIABLE_BOOT, Event};

use crate::FirmwareError;
use crate::bytes::Guid;
use crate::event::{device_path, event, sha384, uefi_variable_data};
use crate::fv::VolumeSummary;
use crate::variables::{GLOBAL_VARIABLE, VariableStore};

/// BdsDxe's `FILE_GUID` (MdeModulePkg/Universal/BdsDxe/BdsDxe.inf).
const BDS_DXE: Guid = Guid::new(
    0x6d33_944a,
    0xec75,
    0x4855,
    [0xa5, 0x4d, 0x80, 0x9c, 0x75, 0x24, 0x1f, 0x6c],
);
/// UiApp's `FILE_GUID`, which OVMF sets as `PcdBootManagerMenuFile`.
const BOOT_MANAGER_MENU_FILE: Guid = Guid::new(
    0x462c_aa21,
    0x7614,
    0x4503,
    [0x83, 0x6e, 0x8a, 0xb6, 0xf4, 0x66, 0x23, 0x31],
);
/// `LOAD_OPTION_ACTIVE | LOAD_OPTION_HIDDEN | LOAD_OPTION_CATEGORY_APP`.
const MENU_ATTRIBUTES: u32 = 0x0000_0001 | 0x0000_0008 | 0x0000_0100;
/// BDS's fallback when the file has no user-interface section.
const DEFAULT_DESCRIPTION: &str = "Boot Manager Menu";

/// The boot manager menu option, as the firmware would create it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BootManagerMenu {
    /// Name of the volume holding BdsDxe (and UiApp).
    volume: Guid,
    /// The description, UTF-16 units without the terminator.
    description: Vec<u16>,
}

impl BootManagerMenu {
    /// Finds BdsDxe's volume and UiApp in it among `volumes`.
    pub(crate) fn find(volumes: &[VolumeSummary]) -> Result<Self, FirmwareError> {
        let missing = |reason| FirmwareError::NoBootManagerMenu { reason };
        let bds_volume = volumes
            .iter()
            .find(|v| v.files.iter().any(|f| f.name == BDS_DXE))
            .ok_or(missing("no firmware volume holds BdsDxe"))?;
        // BDS's device path names the volume by its FvName; without one
        // DXE would describe it by memory address, which is not modelled.
        let volume = bds_volume
            .name
            .ok_or(missing("BdsDxe's firmware volume has no name"))?;
        // BDS skips the registration when the file has no PE32 section.
        let menu = bds_volume
            .files
            .iter()
            .find(|f| f.name == BOOT_MANAGER_MENU_FILE && f.has_pe32)
            .ok_or(missing("UiApp is not in BdsDxe's firmware volume"))?;
        let description = menu
            .ui_name
            .clone()
            .unwrap_or_else(|| DEFAULT_DESCRIPTION.encode_utf16().collect());
        Ok(Self {
            volume,
            description,
        })
    }

    /// The `EFI_LOAD_OPTION` bytes of `Boot0000`.
    pub(crate) fn load_option(&self) -> Vec<u8> {
        let mut path = Vec::new();
        device_path::firmware_volume(&mut path, self.volume);
        device_path::firmware_file(&mut path, BOOT_MANAGER_MENU_FILE);
        device_path::end(&mut path);

        let mut option = Vec::new();
        option.extend_from_slice(&MENU_ATTRIBUTES.to_le_bytes());
        // Three fixed-size nodes: the length always fits.
        let path_len = u16::try_from(path.len()).unwrap_or(u16::MAX);
        option.extend_from_slice(&path_len.to_le_bytes());
        for unit in self.description.iter().chain([&0]) {
            option.extend_from_slice(&unit.to_le_bytes());
        }
        option.extend_from_slice(&path);
        option
    }

    /// The RTMR0 events for `BootOrder` and `Boot0000`.
    ///
    /// The model holds only for a store without boot options of its own
    /// (BDS would then reuse or renumber them), so such a store is refused.
    pub(crate) fn boot_events(&self, store: &VariableStore) -> Result<Vec<Event>, FirmwareError> {
        if store.has_prefixed(GLOBAL_VARIABLE, "Boot") {
            return Err(FirmwareError::UnsupportedFirmware {
                reason: "the variable store already holds boot variables",
            });
        }
        let boot_order = 0u16.to_le_bytes();
        let option = self.load_option();
        Ok(vec![
            event(
                0,
                EV_EFI_VARIABLE_BOOT,
                sha384(&boot_order),
                uefi_variable_data(GLOBAL_VARIABLE, "BootOrder", &boot_order),
            ),
            event(
                0,
                EV_EFI_VARIABLE_BOOT,
                sha384(&option),
                uefi_variable_data(GLOBAL_VARIABLE, "Boot0000", &option),
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fv::FileSummary;
    use crate::variables::build::cfv;

    /// The DXE volume name of OVMF's X64 builds (and of the real dstack
    /// VM's CCEL).
    const DXEFV: Guid = Guid::new(
        0x7cb8_bdc9,
        0xf8eb,
        0x4f34,
        [0xaa, 0xea, 0x3e, 0xe4, 0xaf, 0x65, 0x16, 0xa1],
    );

    fn file(name: Guid, ui: Option<&str>, has_pe32: bool) -> FileSummary {
        FileSummary {
            name,
            ui_name: ui.map(|s| s.encode_utf16().collect()),
            has_pe32,
        }
    }

    fn dxe_volume(menu: FileSummary) -> Vec<VolumeSummary> {
        vec![
            VolumeSummary {
                name: None,
                files: vec![file(Guid([1; 16]), None, false)],
            },
            VolumeSummary {
                name: Some(DXEFV),
                files: vec![file(BDS_DXE, Some("BdsDxe"), true), menu],
            },
        ]
    }

    #[test]
    fn load_option_matches_the_real_dstack_vm() {
        let menu = BootManagerMenu::find(&dxe_volume(file(
            BOOT_MANAGER_MENU_FILE,
            Some("UiApp"),
            true,
        )))
        .unwrap();
        // Event 13 of testdata/ccel.bin carries this load option.
        let real = hex::decode(
            "090100002c0055006900410070007000000004071400c9bdb87cebf8344faaea3ee4af6516a1\
             0406140021aa2c4614760345836e8ab6f46623317fff0400",
        )
        .unwrap();
        assert_eq!(menu.load_option(), real);

        let store = VariableStore::parse(&cfv(&[])).unwrap();
        let events = menu.boot_events(&store).unwrap();
        assert_eq!(events[0].digest, sha384(&[0, 0]));
        assert_eq!(events[1].digest, sha384(&real));
        assert_eq!(
            events[1].event_payload,
            uefi_variable_data(GLOBAL_VARIABLE, "Boot0000", &real)
        );
    }

    #[test]
    fn description_falls_back_and_missing_parts_are_errors() {
        let menu =
            BootManagerMenu::find(&dxe_volume(file(BOOT_MANAGER_MENU_FILE, None, true))).unwrap();
        assert_eq!(
            String::from_utf16(&menu.description).unwrap(),
            DEFAULT_DESCRIPTION
        );
        for volumes in [
            dxe_volume(file(BOOT_MANAGER_MENU_FILE, Some("UiApp"), false)),
            dxe_volume(file(Guid([9; 16]), Some("UiApp"), true)),
            vec![],
        ] {
            assert!(matches!(
                BootManagerMenu::find(&volumes),
                Err(FirmwareError::NoBootManagerMenu { .. })
            ));
        }
        let mut unnamed = dxe_volume(file(BOOT_MANAGER_MENU_FILE, Some("UiApp"), true));
        unnamed[1].name = None;
        assert!(BootManagerMenu::find(&unnamed).is_err());
    }

    #[test]
    fn stores_with_boot_options_are_refused() {
        let menu = BootManagerMenu::find(&dxe_volume(file(
            BOOT_MANAGER_MENU_FILE,
            Some("UiApp"),
            true,
        )))
        .unwrap();
        let store =
            VariableStore::parse(&cfv(&[(GLOBAL_VARIABLE, "BootOrder", 0x3F, &[1, 0])])).unwrap();
        assert!(matches!(
            menu.boot_events(&store),
            Err(FirmwareError::UnsupportedFirmware { .. })
        ));
    }
}
