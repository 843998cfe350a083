//! The measurements dstack derives from a TD report (UPSTREAM.md §2.2) and
//! the RA-TLS `.9` app-info extension that carries them with the app's
//! identity (§6).

use dstack_attest::TdReport;
use sha2::{Digest, Sha256};

use crate::AppInfo;

/// What a verifier derives from one quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Measures {
    /// SHA-256(MRTD ‖ RTMR0-3 [‖ mr_config_id ‖ mr_owner ‖ mr_owner_config]).
    pub(crate) mr_aggregated: [u8; 32],
    /// SHA-256(MRTD ‖ RTMR0-2 ‖ SHA-256(key-provider payload) or zeros).
    pub(crate) mr_system: [u8; 32],
    /// SHA-256 of the empty PPID dstack puts there on TDX.
    pub(crate) device_id: [u8; 32],
}

impl Measures {
    /// The measurements of `report` for an app whose `key-provider` event
    /// measured `key_provider_info`.
    pub(crate) fn of(report: &TdReport, key_provider_info: &[u8]) -> Self {
        let mut aggregated = Sha256::new();
        aggregated.update(report.mr_td);
        for rtmr in &report.rtmr {
            aggregated.update(rtmr);
        }
        if [report.mr_config_id, report.mr_owner, report.mr_owner_config] != [[0u8; 48]; 3] {
            aggregated.update(report.mr_config_id);
            aggregated.update(report.mr_owner);
            aggregated.update(report.mr_owner_config);
        }
        let mr_key_provider: [u8; 32] = if key_provider_info.is_empty() {
            [0; 32]
        } else {
            Sha256::digest(key_provider_info).into()
        };
        let mut system = Sha256::new();
        system.update(report.mr_td);
        for rtmr in &report.rtmr[..3] {
            system.update(rtmr);
        }
        system.update(mr_key_provider);
        Self {
            mr_aggregated: aggregated.finalize().into(),
            mr_system: system.finalize().into(),
            device_id: Sha256::digest(b"").into(),
        }
    }
}

/// msgpack `bin` of `bytes`.
fn bin(out: &mut Vec<u8>, bytes: &[u8]) {
    match u8::try_from(bytes.len()) {
        Ok(len) => out.extend_from_slice(&[0xc4, len]),
        Err(_) => match u16::try_from(bytes.len()) {
            Ok(len) => {
                out.push(0xc5);
                out.extend_from_slice(&len.to_be_bytes());
            }
            Err(_) => {
                out.push(0xc6);
                let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&len.to_be_bytes());
            }
        },
    }
    out.extend_from_slice(bytes);
}

/// The `.9` extension value: upstream's `AppInfo` as rmp-serde writes it
/// (a msgpack array of its fields in order, bytes as `bin`): app_id,
/// compose_hash, instance_id, device_id, mr_system, mr_aggregated,
/// os_image_hash, key_provider_info. HEAD's optional ninth field
/// (init_script_hashes) defaults when absent, so both versions read it.
pub(crate) fn encode(app: &AppInfo, measures: &Measures) -> Vec<u8> {
    let mut out = vec![0x98]; // fixarray of 8
    for field in [
        &app.app_id[..],
        &app.compose_hash[..],
        &app.instance_id[..],
        &measures.device_id[..],
        &measures.mr_system[..],
        &measures.mr_aggregated[..],
        &app.os_image_hash[..],
        app.key_provider_info.as_bytes(),
    ] {
        bin(&mut out, field);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_msgpack_array_of_eight_bins() {
        let app = AppInfo {
            app_id: vec![1; 20],
            compose_hash: [2; 32],
            key_provider_info: r#"{"name":"none","id":""}"#.into(),
            ..AppInfo::default()
        };
        let measures = Measures {
            mr_aggregated: [3; 32],
            mr_system: [4; 32],
            device_id: [5; 32],
        };
        let bytes = encode(&app, &measures);
        assert_eq!(bytes[0], 0x98);
        assert_eq!(&bytes[1..3], &[0xc4, 20]);
        assert_eq!(&bytes[3..23], &[1; 20]);
        assert_eq!(&bytes[23..25], &[0xc4, 32]);
        // instance_id is empty: a zero-length bin.
        assert_eq!(&bytes[57..59], &[0xc4, 0]);
        let mut long = Vec::new();
        bin(&mut long, &[0; 300]);
        assert_eq!(&long[..3], &[0xc5, 1, 44]);
    }
}
