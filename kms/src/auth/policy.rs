//! A static policy file for a single operator: the same rules KmsAuth and
//! AppAuth hold on chain, in one JSON file.

use std::collections::BTreeMap;
use std::path::Path;

use dstack_proto::kms::{BootAuthResponse, BootInfo};
use serde::Deserialize;

/// Why the policy could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file cannot be read.
    #[error("cannot read policy {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid policy.
    #[error("policy {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// A static policy (JSON): which apps, compose hashes, OS images and KMS
/// replicas may get keys. Hashes are hex (`0x` optional) of exact length.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Handed to apps as their gateway app id.
    #[serde(default)]
    pub gateway_app_id: String,
    /// Allowed OS image hashes; absent: any image.
    #[serde(default)]
    pub os_images: Option<Vec<String>>,
    /// Apps by app id (hex, 20 bytes).
    #[serde(default)]
    pub apps: BTreeMap<String, AppPolicy>,
    /// Which KMS replicas may onboard.
    #[serde(default)]
    pub kms: KmsPolicy,
}

/// One app's rules (as DstackApp holds them on chain).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppPolicy {
    /// Allowed compose hashes (hex, 32 bytes): each is an authorised version.
    pub compose_hashes: Vec<String>,
    /// Allowed device ids; ignored with `allow_any_device`.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Any device may run the app.
    #[serde(default = "yes")]
    pub allow_any_device: bool,
    /// Refuse a TCB status other than `UpToDate`.
    #[serde(default)]
    pub require_tcb_up_to_date: bool,
}

/// KMS replica rules (as DstackKms holds them on chain).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsPolicy {
    /// Allowed `mr_aggregated` values of KMS CVMs.
    #[serde(default)]
    pub mr_aggregated: Vec<String>,
    /// Allowed device ids; empty with `allow_any_device`.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Any device may run a replica.
    #[serde(default)]
    pub allow_any_device: bool,
}

fn yes() -> bool {
    true
}

impl PolicyFile {
    /// Loads and checks a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: name.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| PolicyError::Invalid { path: name, reason })
    }

    /// Parses a policy and checks every hash's length.
    pub fn parse(text: &str) -> Result<Self, String> {
        let policy: Self = serde_json::from_str(text).map_err(|e| e.to_string())?;
        for image in policy.os_images.iter().flatten() {
            hex_exact(image, 32).map_err(|e| format!("os_images: {e}"))?;
        }
        for (app_id, app) in &policy.apps {
            hex_exact(app_id, 20).map_err(|e| format!("apps: app id {app_id:?}: {e}"))?;
            for hash in &app.compose_hashes {
                hex_exact(hash, 32).map_err(|e| format!("apps.{app_id}.compose_hashes: {e}"))?;
            }
            for device in &app.devices {
                hex_exact(device, 32).map_err(|e| format!("apps.{app_id}.devices: {e}"))?;
            }
        }
        for mr in &policy.kms.mr_aggregated {
            hex_exact(mr, 32).map_err(|e| format!("kms.mr_aggregated: {e}"))?;
        }
        Ok(policy)
    }

    /// The verdict for an app boot (`is_kms` false) or a KMS replica.
    pub fn decide(&self, info: &BootInfo, is_kms: bool) -> BootAuthResponse {
        let reason = if is_kms {
            self.refuse_kms(info)
        } else {
            self.refuse_app(info)
        };
        BootAuthResponse {
            is_allowed: reason.is_none(),
            gateway_app_id: self.gateway_app_id.clone(),
            reason: reason.unwrap_or_default(),
        }
    }

    fn os_image_allowed(&self, info: &BootInfo) -> bool {
        match &self.os_images {
            None => true,
            Some(images) => contains(images, &info.os_image_hash),
        }
    }

    fn refuse_app(&self, info: &BootInfo) -> Option<String> {
        let Some(app) = self
            .apps
            .iter()
            .find(|(id, _)| hex_exact(id, 20).ok().as_deref() == Some(&info.app_id[..]))
            .map(|(_, app)| app)
        else {
            return Some("app not registered".into());
        };
        if !self.os_image_allowed(info) {
            return Some("OS image is not allowed".into());
        }
        if app.require_tcb_up_to_date && info.tcb_status != "UpToDate" {
            return Some("TCB status is not up to date".into());
        }
        if !contains(&app.compose_hashes, &info.compose_hash) {
            return Some("compose hash not allowed".into());
        }
        if !app.allow_any_device && !contains(&app.devices, &info.device_id) {
            return Some("device not allowed".into());
        }
        None
    }

    fn refuse_kms(&self, info: &BootInfo) -> Option<String> {
        if info.tcb_status != "UpToDate" {
            return Some("TCB status is not up to date".into());
        }
        if !self.os_image_allowed(info) {
            return Some("OS image is not allowed".into());
        }
        if !contains(&self.kms.mr_aggregated, &info.mr_aggregated) {
            return Some("aggregated MR not allowed".into());
        }
        if !self.kms.allow_any_device && !contains(&self.kms.devices, &info.device_id) {
            return Some("device not allowed".into());
        }
        None
    }
}

fn contains(list: &[String], value: &[u8]) -> bool {
    list.iter()
        .any(|item| hex_exact(item, value.len()).ok().as_deref() == Some(value))
}

/// Hex (`0x` optional) of exactly `len` bytes; never padded.
pub fn hex_exact(text: &str, len: usize) -> Result<Vec<u8>, String> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    let bytes = hex::decode(digits).map_err(|e| format!("{text:?} is not hex ({e})"))?;
    if bytes.len() != len {
        return Err(format!("{text:?} is {} bytes, expected {len}", bytes.len()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> BootInfo {
        BootInfo {
            tee_variant: "dstack-tdx".into(),
            mr_aggregated: vec![9; 32],
            os_image_hash: vec![8; 32],
            app_id: vec![1; 20],
            compose_hash: vec![2; 32],
            device_id: vec![3; 32],
            tcb_status: "UpToDate".into(),
            ..BootInfo::default()
        }
    }

    fn policy() -> PolicyFile {
        PolicyFile::parse(&format!(
            r#"{{"gateway_app_id":"gw","os_images":["{}"],
                "apps":{{"{}":{{"compose_hashes":["0x{}"]}}}},
                "kms":{{"mr_aggregated":["{}"],"allow_any_device":true}}}}"#,
            "08".repeat(32),
            "01".repeat(20),
            "02".repeat(32),
            "09".repeat(32)
        ))
        .unwrap()
    }

    #[test]
    fn apps_are_allowed_only_as_listed() {
        let policy = policy();
        let verdict = policy.decide(&info(), false);
        assert!(verdict.is_allowed, "{verdict:?}");
        assert_eq!(verdict.gateway_app_id, "gw");
        let refuse = |change: fn(&mut BootInfo), reason: &str| {
            let mut i = info();
            change(&mut i);
            let verdict = policy.decide(&i, false);
            assert!(!verdict.is_allowed);
            assert_eq!(verdict.reason, reason);
        };
        refuse(|i| i.app_id = vec![7; 20], "app not registered");
        refuse(|i| i.compose_hash = vec![7; 32], "compose hash not allowed");
        refuse(|i| i.os_image_hash = vec![7; 32], "OS image is not allowed");
        // A prefix of an allowed hash is not the allowed hash.
        refuse(|i| i.compose_hash.truncate(31), "compose hash not allowed");
    }

    #[test]
    fn kms_replicas_need_an_allowed_mr_and_up_to_date_tcb() {
        let policy = policy();
        assert!(policy.decide(&info(), true).is_allowed);
        let mut stale = info();
        stale.tcb_status = "OutOfDate".into();
        assert_eq!(
            policy.decide(&stale, true).reason,
            "TCB status is not up to date"
        );
        let mut other = info();
        other.mr_aggregated = vec![1; 32];
        assert_eq!(
            policy.decide(&other, true).reason,
            "aggregated MR not allowed"
        );
    }

    #[test]
    fn wrong_lengths_in_the_policy_are_refused_not_padded() {
        let err = PolicyFile::parse(r#"{"apps":{"0101":{"compose_hashes":[]}}}"#).unwrap_err();
        assert!(err.contains("expected 20"), "{err}");
        let err = PolicyFile::parse(&format!(
            r#"{{"apps":{{"{}":{{"compose_hashes":["abcd"]}}}}}}"#,
            "01".repeat(20)
        ))
        .unwrap_err();
        assert!(err.contains("expected 32"), "{err}");
        assert!(PolicyFile::parse(r#"{"unknown":1}"#).is_err());
    }
}
