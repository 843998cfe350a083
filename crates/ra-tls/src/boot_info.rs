//! The boot info of a peer (UPSTREAM §7.2; the KMS's key release and the
//! gateway's registration both judge peers by it): built from its verified quote
//! and replayed event log, never from what the caller claims about itself
//! (its `.9` extension is ignored here).

use crate::VerifiedPeer;
use dstack_attest::eventlog::names;
use dstack_attest::{Event, Measures};
use dstack_proto::kms::BootInfo;

/// Why a caller's evidence does not make a valid boot info. Lengths are
/// checked exactly: a wrong length is refused, never padded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BootInfoError {
    /// The quote is not a TDX quote (no TD report).
    #[error("the caller's quote is not a TDX quote")]
    NotTdx,
    /// A required runtime event is missing before `system-ready`.
    #[error("the caller's event log has no {0:?} event")]
    MissingEvent(&'static str),
    /// A measured value has the wrong length.
    #[error("{field} is {got} bytes, expected {expected}")]
    Length {
        /// Which value.
        field: &'static str,
        /// Its length.
        got: usize,
        /// The required length.
        expected: usize,
    },
    /// The VM config is not JSON or its `os_image_hash` is not hex.
    #[error("vm_config is invalid: {0}")]
    VmConfig(String),
}

/// Which measurements the boot info carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasuredAt {
    /// The current registers (key release: GetAppKey, GetKmsKey).
    Now,
    /// RTMR3 as of `boot-mr-done`, no key provider (certificate signing).
    BootMrDone,
}

/// The boot info of `peer`, with `os_image_hash` from `vm_config` (the
/// caller's, or the one its attestation carried when that is empty).
pub fn boot_info(
    peer: &VerifiedPeer,
    vm_config: &str,
    at: MeasuredAt,
) -> Result<BootInfo, BootInfoError> {
    let report = peer.quote.quote.td_report().ok_or(BootInfoError::NotTdx)?;
    let events = &peer.event_log;
    let app_id = exact(find(events, names::APP_ID)?, "app_id", 20)?;
    let compose_hash = exact(find(events, names::COMPOSE_HASH)?, "compose_hash", 32)?;
    let instance_id = find(events, names::INSTANCE_ID)?;
    if !instance_id.is_empty() {
        exact(instance_id.clone(), "instance_id", 20)?;
    }
    let key_provider_info = match at {
        MeasuredAt::Now => find(events, names::KEY_PROVIDER).unwrap_or_default(),
        MeasuredAt::BootMrDone => Vec::new(),
    };
    let measures = match at {
        MeasuredAt::Now => Measures::of(report, &key_provider_info),
        MeasuredAt::BootMrDone => Measures::at_boot_mr_done(report, events),
    };
    let config = if vm_config.is_empty() {
        peer.vm_config.as_str()
    } else {
        vm_config
    };
    Ok(BootInfo {
        tee_variant: "dstack-tdx".into(),
        mr_aggregated: measures.mr_aggregated.to_vec(),
        os_image_hash: os_image_hash(config)?,
        mr_system: measures.mr_system.to_vec(),
        app_id,
        compose_hash,
        instance_id,
        device_id: measures.device_id.to_vec(),
        key_provider_info,
        tcb_status: peer.quote.status.as_str().to_owned(),
        advisory_ids: peer.quote.advisory_ids.clone(),
    })
}

/// The payload of the first `name` event before `system-ready`: events
/// after it are the app's own and prove nothing about its identity.
fn find(events: &[Event], name: &'static str) -> Result<Vec<u8>, BootInfoError> {
    for event in events.iter().filter(|e| e.is_runtime()) {
        if event.event == names::SYSTEM_READY {
            break;
        }
        if event.event == name {
            return Ok(event.event_payload.clone());
        }
    }
    Err(BootInfoError::MissingEvent(name))
}

fn exact(value: Vec<u8>, field: &'static str, expected: usize) -> Result<Vec<u8>, BootInfoError> {
    if value.len() == expected {
        Ok(value)
    } else {
        Err(BootInfoError::Length {
            field,
            got: value.len(),
            expected,
        })
    }
}

/// `os_image_hash` of a VM config JSON (empty when absent); 32 bytes if set.
pub fn os_image_hash(vm_config: &str) -> Result<Vec<u8>, BootInfoError> {
    if vm_config.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: serde_json::Value =
        serde_json::from_str(vm_config).map_err(|e| BootInfoError::VmConfig(e.to_string()))?;
    let Some(text) = value.get("os_image_hash").and_then(|v| v.as_str()) else {
        return Ok(Vec::new());
    };
    let text = text.strip_prefix("0x").unwrap_or(text);
    let bytes =
        hex::decode(text).map_err(|e| BootInfoError::VmConfig(format!("os_image_hash: {e}")))?;
    if bytes.is_empty() {
        return Ok(bytes);
    }
    exact(bytes, "os_image_hash", 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_image_hash_is_exact_or_refused() {
        assert_eq!(os_image_hash("").unwrap(), Vec::<u8>::new());
        assert_eq!(os_image_hash("{}").unwrap(), Vec::<u8>::new());
        let hash = "ab".repeat(32);
        assert_eq!(
            os_image_hash(&format!(r#"{{"os_image_hash":"0x{hash}"}}"#)).unwrap(),
            vec![0xab; 32]
        );
        let short = "ab".repeat(31);
        assert!(matches!(
            os_image_hash(&format!(r#"{{"os_image_hash":"{short}"}}"#)),
            Err(BootInfoError::Length { got: 31, .. })
        ));
        assert!(os_image_hash("not json").is_err());
    }

    #[test]
    fn events_after_system_ready_do_not_count() {
        let ev = |name: &str, payload: Vec<u8>| {
            dstack_attest::RuntimeEvent {
                name: name.into(),
                payload,
            }
            .to_event()
        };
        let events = vec![ev("system-ready", vec![]), ev("app-id", vec![1; 20])];
        assert_eq!(
            find(&events, names::APP_ID),
            Err(BootInfoError::MissingEvent("app-id"))
        );
        let events = vec![ev("app-id", vec![1; 19])];
        let value = find(&events, names::APP_ID).unwrap();
        assert!(matches!(
            exact(value, "app_id", 20),
            Err(BootInfoError::Length { got: 19, .. })
        ));
    }
}
