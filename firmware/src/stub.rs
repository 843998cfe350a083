//! The RTMR2 events the Linux EFI stub logs through the firmware's CC
//! measurement protocol (Linux 6.9+; PCR 9 maps to RTMR2).
//!
//! OVMF hands the kernel its command line as the loaded image's
//! `LoadOptions`: QEMU's `-append` string widened to UTF-16, with
//! `" initrd=initrd"` appended when there is an initrd, NUL-terminated
//! (`X86QemuLoadImageLib`). The stub measures those bytes, then the initrd
//! it loads through `LoadFile2`, each as an `EV_EVENT_TAG` event whose data
//! is a `TCG_PCClientTaggedEvent` (id, size, NUL-terminated text).

use dstack_attest::eventlog::Event;

use crate::FirmwareError;
use crate::bytes::widen_ascii;
use crate::event::{EV_EVENT_TAG, event, sha384};

/// `LOAD_OPTIONS_EVENT_TAG_ID` of the Linux EFI stub.
const LOAD_OPTIONS_TAG: u32 = 0x8F3B_22ED;
/// `INITRD_EVENT_TAG_ID` of the Linux EFI stub.
const INITRD_TAG: u32 = 0x8F3B_22EC;

/// The `LoadOptions` OVMF gives the kernel: empty when there is neither a
/// command line nor an initrd.
pub(crate) fn load_options(cmdline: &str, has_initrd: bool) -> Result<Vec<u8>, FirmwareError> {
    if cmdline.contains('\0') {
        return Err(FirmwareError::CmdlineHasNul);
    }
    let mut text = cmdline.as_bytes().to_vec();
    if has_initrd {
        text.extend_from_slice(b" initrd=initrd");
    }
    if text.is_empty() {
        return Ok(Vec::new());
    }
    // OVMF widens each byte (`%a` into CHAR16), so a non-ASCII command line
    // becomes one unit per UTF-8 byte, not UTF-16.
    let mut options = widen_ascii(&text);
    options.extend_from_slice(&[0, 0]);
    Ok(options)
}

fn tagged(id: u32, text: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(8 + text.len());
    payload.extend_from_slice(&id.to_le_bytes());
    // The texts are short constants.
    let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
    payload.extend_from_slice(&len.to_le_bytes());
    payload.extend_from_slice(text);
    payload
}

/// The RTMR2 events for `cmdline` and `initrd`; the stub measures neither
/// when it is empty.
pub(crate) fn rtmr2_events(cmdline: &str, initrd: &[u8]) -> Result<Vec<Event>, FirmwareError> {
    let options = load_options(cmdline, !initrd.is_empty())?;
    let mut events = Vec::with_capacity(2);
    if !options.is_empty() {
        events.push(event(
            2,
            EV_EVENT_TAG,
            sha384(&options),
            tagged(LOAD_OPTIONS_TAG, b"LOADED_IMAGE::LoadOptions\0"),
        ));
    }
    if !initrd.is_empty() {
        events.push(event(
            2,
            EV_EVENT_TAG,
            sha384(initrd),
            tagged(INITRD_TAG, b"Linux initrd\0"),
        ));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_options_are_the_widened_command_line() {
        let options = load_options("ro", true).unwrap();
        let expected: Vec<u8> = "ro initrd=initrd\0"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(options, expected);
        assert_eq!(load_options("", false).unwrap(), Vec::<u8>::new());
        assert_eq!(load_options("", true).unwrap().len(), 2 * 15);
        // "é" is two UTF-8 bytes, so two units.
        assert_eq!(load_options("é", false).unwrap(), [0xC3, 0, 0xA9, 0, 0, 0]);
        assert!(matches!(
            load_options("a\0b", false),
            Err(FirmwareError::CmdlineHasNul)
        ));
    }

    #[test]
    fn events_are_tagged_like_the_linux_stub() {
        let events = rtmr2_events("quiet", b"initrd").unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event_type, 6);
        assert_eq!(
            events[0].event_payload,
            [
                &0x8F3B_22EDu32.to_le_bytes()[..],
                &26u32.to_le_bytes(),
                b"LOADED_IMAGE::LoadOptions\0"
            ]
            .concat()
        );
        assert_eq!(
            events[1].event_payload,
            [
                &0x8F3B_22ECu32.to_le_bytes()[..],
                &13u32.to_le_bytes(),
                b"Linux initrd\0"
            ]
            .concat()
        );
        assert_eq!(events[1].digest, sha384(b"initrd"));
        assert!(rtmr2_events("", b"").unwrap().is_empty());
    }
}
