//! `app-compose.json`: upstream's fields (UPSTREAM.md §3.1), the
//! compose-hash and app-id rules (§3.2), and a deterministic way to wrap a
//! docker-compose YAML into one.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Vars;
use crate::{Compose, ComposeError};

/// The key provider an app asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyProviderKind {
    /// No provider: random keys each boot, disk not reusable.
    None,
    /// A KMS.
    Kms,
    /// A local (SGX) key provider.
    Local,
    /// A TPM.
    Tpm,
}

/// What to write instead of a script run by a shell in the guest.
const INIT_SERVICE_HINT: &str = "run the script in an init service from an image that has a shell, and make the app wait for it with depends_on: {init: {condition: service_completed_successfully}}";

fn yes() -> bool {
    true
}

/// The fields of `app-compose.json` this platform reads. Unknown fields are
/// ignored (as upstream does), so files written for newer versions still load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppCompose {
    /// Manifest version, a string or number upstream.
    pub manifest_version: serde_json::Value,
    /// App name.
    pub name: String,
    /// `docker-compose` (the only runner supported here).
    pub runner: String,
    /// The docker-compose YAML.
    #[serde(default)]
    pub docker_compose_file: Option<String>,
    /// Deprecated feature list; `tproxy-net` means gateway enabled.
    #[serde(default)]
    pub features: Vec<String>,
    /// Serve container logs publicly.
    #[serde(default)]
    pub public_logs: bool,
    /// Serve system info publicly.
    #[serde(default)]
    pub public_sysinfo: bool,
    /// Serve tcb_info publicly (default true).
    #[serde(default = "yes")]
    pub public_tcbinfo: bool,
    /// Use a KMS.
    #[serde(default)]
    pub kms_enabled: bool,
    /// Register with a gateway.
    #[serde(default, alias = "tproxy_enabled")]
    pub gateway_enabled: bool,
    /// Use a local key provider.
    #[serde(default)]
    pub local_key_provider_enabled: bool,
    /// Explicit key provider.
    #[serde(default)]
    pub key_provider: Option<KeyProviderKind>,
    /// Expected key provider id, hex.
    #[serde(default)]
    pub key_provider_id: String,
    /// Environment variable names the encrypted env may set.
    #[serde(default)]
    pub allowed_envs: Vec<String>,
    /// Do not derive an instance id.
    #[serde(default)]
    pub no_instance_id: bool,
    /// Require secure time (default true).
    #[serde(default = "yes")]
    pub secure_time: bool,
    /// Data filesystem (`ext4`).
    #[serde(default)]
    pub storage_fs: Option<String>,
    /// A shell script upstream runs before the app starts (refused here:
    /// the guest has no shell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_launch_script: Option<String>,
    /// Scripts upstream's HEAD runs at boot (refused here for the same reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_script: Option<serde_json::Value>,
}

impl AppCompose {
    /// Parse and validate `app-compose.json` bytes, including the compose
    /// YAML in it, with no variables set.
    pub fn parse(text: &str) -> Result<(Self, Compose), ComposeError> {
        let (app, compose, _) = Self::parse_with_vars(text, &Vars::new())?;
        Ok((app, compose))
    }

    /// Parse only the app-compose JSON (not the compose YAML, which may
    /// need variables that are not known yet).
    pub fn parse_manifest(text: &str) -> Result<Self, ComposeError> {
        let app: AppCompose =
            serde_json::from_str(text).map_err(|e| ComposeError::AppComposeJson(e.to_string()))?;
        app.check()?;
        Ok(app)
    }

    /// Parse `app-compose.json` and interpolate its compose YAML with
    /// `vars` (the app's decrypted env); also returns the names of
    /// variables the YAML used but `vars` does not set.
    pub fn parse_with_vars(
        text: &str,
        vars: &Vars,
    ) -> Result<(Self, Compose, Vec<String>), ComposeError> {
        let app = Self::parse_manifest(text)?;
        let yaml = app.docker_compose_file.as_deref().unwrap_or_default();
        let (compose, unset) = Compose::parse_with_vars(yaml, vars)?;
        Ok((app, compose, unset))
    }

    /// What can be checked without the variables: the manifest's fields,
    /// and that the compose YAML is YAML.
    fn check(&self) -> Result<(), ComposeError> {
        if self.name.trim().is_empty() {
            return Err(ComposeError::invalid("name", "must not be empty"));
        }
        if self.runner == "bash" {
            return Err(ComposeError::NeedsShell {
                field: "runner".into(),
                what: "runner \"bash\"".into(),
                alternative: INIT_SERVICE_HINT.into(),
            });
        }
        if self
            .pre_launch_script
            .as_deref()
            .is_some_and(|s| !s.trim().is_empty())
        {
            return Err(ComposeError::NeedsShell {
                field: "pre_launch_script".into(),
                what: "a pre-launch script".into(),
                alternative: INIT_SERVICE_HINT.into(),
            });
        }
        let has_init_script = match &self.init_script {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::String(s)) => !s.trim().is_empty(),
            Some(serde_json::Value::Array(items)) => !items.is_empty(),
            Some(_) => true,
        };
        if has_init_script {
            return Err(ComposeError::NeedsShell {
                field: "init_script".into(),
                what: "an init script".into(),
                alternative: INIT_SERVICE_HINT.into(),
            });
        }
        if self.runner != "docker-compose" && self.runner != "nerdctl-compose" {
            return Err(ComposeError::UnsupportedRunner(self.runner.clone()));
        }
        let yaml = self.docker_compose_file.as_deref().ok_or_else(|| {
            ComposeError::invalid(
                "docker_compose_file",
                "is required for runner docker-compose",
            )
        })?;
        crate::yaml::load(yaml)?;
        if let Some(fs) = &self.storage_fs
            && fs != "ext4"
        {
            return Err(ComposeError::invalid(
                "storage_fs",
                format!("{fs:?} is not supported (only \"ext4\")"),
            ));
        }
        Ok(())
    }

    /// The effective key provider (upstream's precedence rule).
    pub fn key_provider(&self) -> KeyProviderKind {
        if let Some(kind) = self.key_provider {
            kind
        } else if self.kms_enabled {
            KeyProviderKind::Kms
        } else if self.local_key_provider_enabled {
            KeyProviderKind::Local
        } else {
            KeyProviderKind::None
        }
    }
}

/// compose-hash: SHA-256 of the exact file bytes.
pub fn compose_hash(app_compose: &[u8]) -> [u8; 32] {
    Sha256::digest(app_compose).into()
}

/// The default app-id: the first 20 bytes of the compose-hash.
pub fn app_id(compose_hash: &[u8; 32]) -> [u8; 20] {
    let mut id = [0u8; 20];
    id.copy_from_slice(&compose_hash[..20]);
    id
}

/// Wrap a docker-compose YAML into `app-compose.json` bytes, validating it.
///
/// The JSON is written the way dstack's SDKs write it (keys sorted, compact
/// separators, UTF-8), so the same inputs always give the same compose-hash.
pub fn app_compose_from_yaml(name: &str, yaml: &str) -> Result<String, ComposeError> {
    Compose::parse(yaml)?;
    // serde_json's Map is a BTreeMap here: keys come out sorted.
    let value = serde_json::json!({
        "docker_compose_file": yaml,
        "gateway_enabled": false,
        "kms_enabled": false,
        "manifest_version": 2,
        "name": name,
        "no_instance_id": false,
        "public_logs": true,
        "public_sysinfo": true,
        "public_tcbinfo": true,
        "runner": "docker-compose",
        "secure_time": false,
    });
    let text =
        serde_json::to_string(&value).map_err(|e| ComposeError::AppComposeJson(e.to_string()))?;
    AppCompose::parse(&text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "services:\n  web:\n    image: nginx\n";

    #[test]
    fn wrapping_is_deterministic_and_sorted() {
        let a = app_compose_from_yaml("hello", YAML).unwrap();
        let b = app_compose_from_yaml("hello", YAML).unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with("{\"docker_compose_file\":"), "{a}");
        assert!(
            a.contains("\"kms_enabled\":false,\"manifest_version\":2,\"name\":\"hello\""),
            "compact, sorted: {a}"
        );
        let (app, compose) = AppCompose::parse(&a).unwrap();
        assert_eq!(app.name, "hello");
        assert_eq!(compose.services["web"].image, "nginx");
        assert_eq!(app.key_provider(), KeyProviderKind::None);
    }

    #[test]
    fn hash_and_app_id_follow_upstream() {
        let bytes = br#"{"name":"x"}"#;
        let hash = compose_hash(bytes);
        assert_eq!(hex::encode(hash), hex::encode(Sha256::digest(bytes)));
        assert_eq!(app_id(&hash), hash[..20]);
    }

    #[test]
    fn refuses_bad_manifests_naming_the_field() {
        let err = AppCompose::parse("{").unwrap_err();
        assert!(matches!(err, ComposeError::AppComposeJson(_)));
        let err =
            AppCompose::parse(r#"{"manifest_version":2,"name":"a","runner":"bash"}"#).unwrap_err();
        assert!(
            matches!(err, ComposeError::NeedsShell { ref field, .. } if field == "runner"),
            "{err}"
        );
        assert!(
            err.to_string().contains("service_completed_successfully"),
            "{err}"
        );
        let err = AppCompose::parse(r#"{"manifest_version":2,"name":"a","runner":"podman"}"#)
            .unwrap_err();
        assert_eq!(err, ComposeError::UnsupportedRunner("podman".into()));
        let err = AppCompose::parse(
            r#"{"manifest_version":2,"name":"a","runner":"docker-compose","docker_compose_file":"services: {w: {image: x}}","pre_launch_script":"echo hi"}"#,
        )
        .unwrap_err();
        assert!(
            matches!(err, ComposeError::NeedsShell { ref field, .. } if field == "pre_launch_script"),
            "{err}"
        );
        let empty_script = r#"{"manifest_version":2,"name":"a","runner":"docker-compose","docker_compose_file":"services: {w: {image: x}}","pre_launch_script":""}"#;
        assert!(AppCompose::parse(empty_script).is_ok());
        let err =
            AppCompose::parse(r#"{"manifest_version":2,"name":"a","runner":"docker-compose"}"#)
                .unwrap_err();
        assert!(err.to_string().starts_with("docker_compose_file:"), "{err}");
    }

    #[test]
    fn key_provider_precedence() {
        let mut app: AppCompose = serde_json::from_str(
            r#"{"manifest_version":"2","name":"a","runner":"docker-compose","kms_enabled":true,"local_key_provider_enabled":true,"tproxy_enabled":true}"#,
        )
        .unwrap();
        assert!(app.gateway_enabled);
        assert_eq!(app.key_provider(), KeyProviderKind::Kms);
        app.key_provider = Some(KeyProviderKind::Local);
        assert_eq!(app.key_provider(), KeyProviderKind::Local);
    }
}
