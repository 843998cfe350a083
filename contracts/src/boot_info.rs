//! The boot facts the KMS hands to the contracts, in Rust types whose sizes
//! are the ABI's: a 19-byte app id cannot be built, so it cannot be padded.

use alloy::primitives::{Address, B256};

use crate::ChainError;
use crate::bindings::{app, kms};

/// What the KMS learnt from a verified quote and event log; the contracts'
/// `IAppAuth.AppBootInfo`, field for field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppBootInfo {
    /// The app's contract address (dstack's app id).
    pub app_id: [u8; 20],
    /// sha256 of the app-compose.json bytes.
    pub compose_hash: [u8; 32],
    /// The CVM instance id; all zero when the app has none.
    pub instance_id: [u8; 20],
    /// The platform's device id.
    pub device_id: [u8; 32],
    /// The aggregated measurement (MRTD, RTMR0-3 and the VM config).
    pub mr_aggregated: [u8; 32],
    /// The boot-chain-only measurement.
    pub mr_system: [u8; 32],
    /// The OS image digest.
    pub os_image_hash: [u8; 32],
    /// The quote's TCB status as the verifier reported it (e.g. `UpToDate`).
    pub tcb_status: String,
    /// Intel security advisories that apply to the platform.
    pub advisory_ids: Vec<String>,
}

// Each binding module has its own copy of the Solidity struct.
macro_rules! into_sol_boot_info {
    ($($target:ty),*) => {$(
        impl From<&AppBootInfo> for $target {
            fn from(b: &AppBootInfo) -> Self {
                Self {
                    appId: Address::from(b.app_id),
                    composeHash: B256::from(b.compose_hash),
                    instanceId: Address::from(b.instance_id),
                    deviceId: B256::from(b.device_id),
                    mrAggregated: B256::from(b.mr_aggregated),
                    mrSystem: B256::from(b.mr_system),
                    osImageHash: B256::from(b.os_image_hash),
                    tcbStatus: b.tcb_status.clone(),
                    advisoryIds: b.advisory_ids.clone(),
                }
            }
        }
    )*};
}
into_sol_boot_info!(kms::IAppAuth::AppBootInfo, app::IAppAuth::AppBootInfo);

/// A contract's answer to "may this boot?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether keys may be released.
    pub allowed: bool,
    /// The contract's reason for a refusal (empty when allowed).
    pub reason: String,
}

/// Takes exactly `N` bytes for `field`, or names the field and both lengths.
///
/// The contracts compare these values bit for bit, so a short value is a
/// caller's bug to report, never something to pad.
pub fn fixed<const N: usize>(field: &'static str, bytes: &[u8]) -> Result<[u8; N], ChainError> {
    bytes.try_into().map_err(|_| ChainError::BadLength {
        field,
        expected: N,
        got: bytes.len(),
    })
}

/// Parses a `0x`-prefixed (or bare) 40-hex-digit address.
pub fn parse_address(value: &str) -> Result<[u8; 20], ChainError> {
    let digits = value.strip_prefix("0x").unwrap_or(value);
    let mut out = [0u8; 20];
    alloy::primitives::hex::decode_to_slice(digits, &mut out).map_err(|_| {
        ChainError::BadAddress {
            value: value.to_owned(),
        }
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_rejects_wrong_lengths_by_name() {
        let err = fixed::<32>("device_id", &[0u8; 31]).unwrap_err();
        assert_eq!(err.to_string(), "device_id must be 32 bytes, got 31");
        assert_eq!(fixed::<20>("app_id", &[7u8; 20]).unwrap(), [7u8; 20]);
        assert!(fixed::<20>("app_id", &[7u8; 21]).is_err());
    }

    #[test]
    fn addresses_need_all_forty_digits() {
        let a = parse_address("0x00000000000000000000000000000000000000aB").unwrap();
        assert_eq!(a[19], 0xab);
        assert_eq!(
            parse_address("00000000000000000000000000000000000000ab").unwrap(),
            a
        );
        assert!(parse_address("0xab").is_err());
        assert!(parse_address("0xzz000000000000000000000000000000000000ab").is_err());
    }

    #[test]
    fn clients_cross_tasks() {
        // The KMS shares one client between request handlers.
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<crate::ChainAuth>();
        send_sync::<crate::admin::Admin>();
        send_sync::<ChainError>();
    }

    #[test]
    fn converts_field_for_field() {
        let b = AppBootInfo {
            app_id: [1; 20],
            compose_hash: [2; 32],
            instance_id: [3; 20],
            device_id: [4; 32],
            mr_aggregated: [5; 32],
            mr_system: [6; 32],
            os_image_hash: [7; 32],
            tcb_status: "UpToDate".into(),
            advisory_ids: vec!["INTEL-SA-00615".into()],
        };
        let s = kms::IAppAuth::AppBootInfo::from(&b);
        assert_eq!(s.appId, Address::from([1; 20]));
        assert_eq!(s.instanceId, Address::from([3; 20]));
        assert_eq!(s.osImageHash, B256::from([7; 32]));
        assert_eq!(s.advisoryIds, vec!["INTEL-SA-00615".to_string()]);
    }
}
