//! `app-compose.json`: upstream's fields (UPSTREAM.md §3.1), the
//! compose-hash and app-id rules (§3.2), and a deterministic way to wrap a
//! docker-compose YAML into one.

use std::collections::BTreeMap;

use dstack_proto::gateway::PortPolicy;
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
    /// The build context each service's image is built from, by service
    /// name: the SHA-256 (hex) of the deterministic tar `dstack vm deploy`
    /// packs from the developer's directory. Measured with the rest of the
    /// file, so the compose-hash covers the exact bytes built; the guest
    /// refuses a tar the host hands it with another hash. Absent when no
    /// build reads local files, so other apps' compose-hashes are unchanged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub build_contexts: BTreeMap<String, String>,
    /// Which ports the gateway may reach and which get a PROXY protocol
    /// header (UPSTREAM §10.2); the guest reports it when it registers.
    /// The gateway's own wire type, so the two never drift apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_policy: Option<PortPolicy>,
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
        let (mut compose, unset) = Compose::parse_with_vars(yaml, vars)?;
        attach_build_contexts(&mut compose, &app.build_contexts)?;
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
        for (service, hash) in &self.build_contexts {
            if !is_sha256_hex(hash) {
                return Err(ComposeError::invalid(
                    format!("build_contexts.{service}"),
                    "must be a SHA-256 in lowercase hex (64 digits)",
                ));
            }
        }
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

    /// Whether the app registers with a gateway: `gateway_enabled` (or its
    /// old name `tproxy_enabled`), or the deprecated feature `tproxy-net`,
    /// as upstream reads it.
    pub fn uses_gateway(&self) -> bool {
        self.gateway_enabled || self.features.iter().any(|f| f == "tproxy-net")
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

/// 64 lowercase hex digits.
fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Gives each building service its measured context and checks the two
/// agree: every `build_contexts` entry names a service that builds its
/// image, and every build that reads a Dockerfile file has a context.
fn attach_build_contexts(
    compose: &mut Compose,
    contexts: &BTreeMap<String, String>,
) -> Result<(), ComposeError> {
    for (service, hash) in contexts {
        let build = compose
            .services
            .get_mut(service)
            .and_then(|s| s.build.as_mut())
            .ok_or_else(|| {
                ComposeError::invalid(
                    format!("build_contexts.{service}"),
                    "names no service that builds its image",
                )
            })?;
        build.shipped_context = Some(hash.clone());
    }
    for (name, service) in &compose.services {
        if let Some(build) = &service.build
            && build.reads_local_files()
            && build.shipped_context.is_none()
        {
            return Err(ComposeError::BuildContextNotShipped {
                field: format!("services.{name}.build"),
                dockerfile: build.dockerfile_path().to_string(),
            });
        }
    }
    Ok(())
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
    app_compose_with_build_contexts(name, yaml, &BTreeMap::new())
}

/// [`app_compose_from_yaml`], measuring the build contexts shipped with it
/// (`build_contexts`: service name → SHA-256 hex of its context tar). With
/// none, the bytes are exactly [`app_compose_from_yaml`]'s.
pub fn app_compose_with_build_contexts(
    name: &str,
    yaml: &str,
    build_contexts: &BTreeMap<String, String>,
) -> Result<String, ComposeError> {
    Compose::parse(yaml)?;
    // Keys inserted in sorted order: serde_json's Map is a BTreeMap, or,
    // where a dependency turns on its `preserve_order`, keeps this order.
    let mut value = serde_json::Map::new();
    if !build_contexts.is_empty() {
        value.insert("build_contexts".into(), serde_json::json!(build_contexts));
    }
    let fields = [
        ("docker_compose_file", serde_json::json!(yaml)),
        ("gateway_enabled", false.into()),
        ("kms_enabled", false.into()),
        ("manifest_version", 2.into()),
        ("name", name.into()),
        ("no_instance_id", false.into()),
        ("public_logs", true.into()),
        ("public_sysinfo", true.into()),
        ("public_tcbinfo", true.into()),
        ("runner", "docker-compose".into()),
        ("secure_time", false.into()),
    ];
    for (key, field) in fields {
        value.insert(key.into(), field);
    }
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
    fn build_contexts_are_measured_only_when_there_are_some() {
        let plain = app_compose_from_yaml("hello", YAML).unwrap();
        assert_eq!(
            app_compose_with_build_contexts("hello", YAML, &BTreeMap::new()).unwrap(),
            plain,
            "no context: the bytes (and compose-hash) of before"
        );
        assert!(!plain.contains("build_contexts"));
        let yaml = "services:\n  web:\n    build: {context: ., dockerfile: Dockerfile}\n";
        let hash = "ab".repeat(32);
        let contexts = BTreeMap::from([("web".to_string(), hash.clone())]);
        let text = app_compose_with_build_contexts("hello", yaml, &contexts).unwrap();
        assert!(
            text.starts_with(&format!("{{\"build_contexts\":{{\"web\":\"{hash}\"}},")),
            "{text}"
        );
        let (app, compose) = AppCompose::parse(&text).unwrap();
        assert_eq!(app.build_contexts, contexts);
        let build = compose.services["web"].build.as_ref().unwrap();
        assert_eq!(build.shipped_context.as_deref(), Some(hash.as_str()));

        // A Dockerfile file with no shipped context, a context for no
        // build, a hash that is not one: named.
        let err = app_compose_from_yaml("hello", yaml).unwrap_err();
        assert_eq!(
            err,
            ComposeError::BuildContextNotShipped {
                field: "services.web.build".into(),
                dockerfile: "Dockerfile".into()
            }
        );
        assert!(err.to_string().contains("dstack vm deploy"), "{err}");
        let stray = BTreeMap::from([("db".to_string(), hash.clone())]);
        let err = app_compose_with_build_contexts("hello", yaml, &stray).unwrap_err();
        assert!(err.to_string().starts_with("build_contexts.db:"), "{err}");
        let short = BTreeMap::from([("web".to_string(), "AB".repeat(32))]);
        let err = app_compose_with_build_contexts("hello", yaml, &short).unwrap_err();
        assert!(err.to_string().starts_with("build_contexts.web:"), "{err}");
        // An inline Dockerfile may come with a shipped context, or without.
        let inline = "services:\n  web:\n    build: {dockerfile_inline: FROM x}\n";
        app_compose_from_yaml("hello", inline).unwrap();
        app_compose_with_build_contexts("hello", inline, &contexts).unwrap();
    }

    #[test]
    fn key_provider_precedence() {
        let mut app: AppCompose = serde_json::from_str(
            r#"{"manifest_version":"2","name":"a","runner":"docker-compose","kms_enabled":true,"local_key_provider_enabled":true,"tproxy_enabled":true}"#,
        )
        .unwrap();
        assert!(app.gateway_enabled && app.uses_gateway());
        assert_eq!(app.key_provider(), KeyProviderKind::Kms);
        app.key_provider = Some(KeyProviderKind::Local);
        assert_eq!(app.key_provider(), KeyProviderKind::Local);
    }

    #[test]
    fn reads_upstreams_port_policy_and_gateway_switches() {
        let base = r#""manifest_version":2,"name":"a","runner":"docker-compose","docker_compose_file":"services: {w: {image: x}}""#;
        let text = format!(
            r#"{{{base},"gateway_enabled":true,"port_policy":{{"ports":[{{"port":80,"pp":true}}],"restrict_mode":true}}}}"#
        );
        let app = AppCompose::parse_manifest(&text).unwrap();
        let policy = app.port_policy.clone().unwrap();
        assert!(policy.restrict_mode);
        assert_eq!(policy.admit(80), Some(true));
        assert_eq!(policy.admit(443), None);
        assert!(app.uses_gateway());
        // Written back only when present.
        assert!(
            serde_json::to_string(&app)
                .unwrap()
                .contains("\"port_policy\"")
        );

        let app = AppCompose::parse_manifest(&format!(r#"{{{base},"features":["tproxy-net"]}}"#))
            .unwrap();
        assert!(app.uses_gateway() && !app.gateway_enabled);
        assert_eq!(app.port_policy, None);
        assert!(!serde_json::to_string(&app).unwrap().contains("port_policy"));
        let app = AppCompose::parse_manifest(&format!("{{{base}}}")).unwrap();
        assert!(!app.uses_gateway());
    }

    #[test]
    fn the_compose_hash_of_a_file_without_a_port_policy_is_unchanged() {
        // The wrapper's bytes, and so their hash, as before port_policy
        // existed: the field is never written where it is absent.
        let text = app_compose_from_yaml("hello", YAML).unwrap();
        assert_eq!(
            hex::encode(compose_hash(text.as_bytes())),
            "409279c09e95503ac5a644dfa7607151f7b9175541260e5450116d80cec098fd"
        );
    }
}
