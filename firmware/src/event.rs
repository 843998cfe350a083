//! Building the TCG events TDVF and the Linux EFI stub log, and folding them
//! into RTMRs.

use dstack_attest::eventlog::Event;
use sha2::{Digest, Sha384};

use crate::bytes::{Guid, widen_ascii};

/// TCG `EV_EVENT_TAG`: the Linux EFI stub logs the command line and initrd
/// under it (TCG PC Client spec; `dstack_attest` does not name it).
pub(crate) const EV_EVENT_TAG: u32 = 0x0000_0006;

/// A SHA-384 digest, the size of an RTMR.
pub(crate) type Digest384 = [u8; 48];

/// SHA-384 of `data`.
pub(crate) fn sha384(data: &[u8]) -> Digest384 {
    Sha384::digest(data).into()
}

/// An event extended into RTMR `imr` (0-2) with `digest`, carrying `payload`
/// as its event data.
pub(crate) fn event(imr: u32, event_type: u32, digest: Digest384, payload: Vec<u8>) -> Event {
    Event {
        imr,
        event_type,
        digest: digest.to_vec(),
        event: String::new(),
        event_payload: payload,
    }
}

/// An event whose digest is the SHA-384 of its own payload, as TDVF logs
/// separators and `EV_EFI_ACTION` strings.
pub(crate) fn self_describing(imr: u32, event_type: u32, payload: &[u8]) -> Event {
    event(imr, event_type, sha384(payload), payload.to_vec())
}

/// RTMR0-2 after extending each event's digest into its register, starting
/// from zero: `rtmr = SHA384(rtmr || digest)`.
///
/// Events for other registers are ignored; the crate only builds 0-2.
pub(crate) fn fold(events: &[Event]) -> [Digest384; 3] {
    let mut rtmrs = [[0u8; 48]; 3];
    for event in events {
        let Some(rtmr) = usize::try_from(event.imr)
            .ok()
            .and_then(|i| rtmrs.get_mut(i))
        else {
            continue;
        };
        let mut hasher = Sha384::new();
        hasher.update(*rtmr);
        hasher.update(&event.digest);
        *rtmr = hasher.finalize().into();
    }
    rtmrs
}

/// `UEFI_VARIABLE_DATA` (TCG PC Client spec): the variable's vendor GUID,
/// its name length in UTF-16 units and data length, the name without a
/// terminator, then the data. `name` is ASCII, as every variable TDVF
/// measures is.
pub(crate) fn uefi_variable_data(vendor: Guid, name: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + 2 * name.len() + data.len());
    out.extend_from_slice(&vendor.0);
    out.extend_from_slice(&(name.len() as u64).to_le_bytes());
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&widen_ascii(name.as_bytes()));
    out.extend_from_slice(data);
    out
}

/// UEFI device path nodes, as the events' payloads carry them.
pub(crate) mod device_path {
    use crate::bytes::Guid;

    /// `MEDIA_DEVICE_PATH`.
    const MEDIA: u8 = 0x04;
    /// `MEDIA_VENDOR_DP`.
    const MEDIA_VENDOR: u8 = 0x03;
    /// `MEDIA_FILEPATH_DP`.
    const MEDIA_FILE_PATH: u8 = 0x04;
    /// `MEDIA_PIWG_FW_FILE_DP`.
    const MEDIA_FW_FILE: u8 = 0x06;
    /// `MEDIA_PIWG_FW_VOL_DP`.
    const MEDIA_FW_VOL: u8 = 0x07;

    fn node(out: &mut Vec<u8>, kind: u8, sub_kind: u8, body: &[u8]) {
        let len = u16::try_from(4 + body.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&[kind, sub_kind]);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(body);
    }

    /// A vendor-defined media node.
    pub(crate) fn vendor_media(out: &mut Vec<u8>, vendor: super::Guid) {
        node(out, MEDIA, MEDIA_VENDOR, &vendor.0);
    }

    /// A file path node; `name` is ASCII and gets a UTF-16 NUL terminator.
    pub(crate) fn file_path(out: &mut Vec<u8>, name: &str) {
        let mut body = crate::bytes::widen_ascii(name.as_bytes());
        body.extend_from_slice(&[0, 0]);
        node(out, MEDIA, MEDIA_FILE_PATH, &body);
    }

    /// A firmware volume node naming the volume by its FvName GUID.
    pub(crate) fn firmware_volume(out: &mut Vec<u8>, name: Guid) {
        node(out, MEDIA, MEDIA_FW_VOL, &name.0);
    }

    /// A firmware file node naming the FFS file by its GUID.
    pub(crate) fn firmware_file(out: &mut Vec<u8>, name: Guid) {
        node(out, MEDIA, MEDIA_FW_FILE, &name.0);
    }

    /// The end-of-entire-path node.
    pub(crate) fn end(out: &mut Vec<u8>) {
        out.extend_from_slice(&[0x7f, 0xff, 0x04, 0x00]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_extends_from_zero() {
        let e = self_describing(1, 4, &[0; 4]);
        let rtmrs = fold(std::slice::from_ref(&e));
        let mut expected = Sha384::new();
        expected.update([0u8; 48]);
        expected.update(sha384(&[0; 4]));
        assert_eq!(rtmrs[1], <Digest384>::from(expected.finalize()));
        assert_eq!(rtmrs[0], [0; 48]);
        assert_eq!(rtmrs[2], [0; 48]);
    }

    #[test]
    fn uefi_variable_data_layout() {
        let guid = Guid([0xAA; 16]);
        let data = uefi_variable_data(guid, "PK", &[7]);
        let mut expected = vec![0xAA; 16];
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(&[b'P', 0, b'K', 0, 7]);
        assert_eq!(data, expected);
    }
}
