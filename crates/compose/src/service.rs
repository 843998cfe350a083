//! The docker-compose subset a CVM runs: services with image, command,
//! entrypoint, environment, ports, volumes, restart, depends_on, healthcheck,
//! working_dir, user, and the security keys (privileged, cap_add, cap_drop,
//! security_opt).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

use crate::interpolate::{Vars, interpolate_document};
use crate::{ComposeError, Security, parse_duration};

/// The guest API paths a service may bind-mount from the guest, as upstream
/// dstack's OS offers them (any other host path is refused: a compose file
/// must not reach into the guest's own filesystem). Each names `dstack.sock`
/// or `tappd.sock`, or for the two directories, the directory holding both.
pub const DSTACK_SOCKETS: [&str; 10] = [
    "/var/run/dstack.sock",
    "/var/run/tappd.sock",
    "/run/dstack.sock",
    "/run/tappd.sock",
    "/var/run/dstack/dstack.sock",
    "/var/run/dstack/tappd.sock",
    "/run/dstack/dstack.sock",
    "/run/dstack/tappd.sock",
    "/var/run/dstack",
    "/run/dstack",
];

/// A parsed, validated compose file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compose {
    /// Services by name.
    pub services: BTreeMap<String, Service>,
    /// Declared named volumes.
    pub volumes: BTreeSet<String>,
}

/// One service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Image reference.
    pub image: String,
    /// Overrides the image's CMD.
    pub command: Option<Vec<String>>,
    /// Overrides the image's ENTRYPOINT.
    pub entrypoint: Option<Vec<String>>,
    /// Environment (added to the image's).
    pub environment: BTreeMap<String, String>,
    /// Ports published from the guest.
    pub ports: Vec<PortSpec>,
    /// Mounts.
    pub volumes: Vec<VolumeMount>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Services to start first.
    pub depends_on: Vec<Dependency>,
    /// Health check.
    pub healthcheck: Option<Healthcheck>,
    /// Working directory.
    pub working_dir: Option<String>,
    /// `uid[:gid]` or a user name from the image.
    pub user: Option<String>,
    /// Time to wait after SIGTERM before SIGKILL.
    pub stop_grace_period: Duration,
    /// `privileged`, `cap_add`, `cap_drop`, `security_opt`.
    pub security: Security,
}

/// A published port: the guest listens on `published` and forwards to the
/// service's `target` port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    /// Guest port.
    pub published: u16,
    /// Port the service listens on.
    pub target: u16,
}

/// Where a mount comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A named volume on the data disk.
    Named(String),
    /// One of [`DSTACK_SOCKETS`].
    DstackSocket(String),
}

/// A mount in a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// Source.
    pub source: VolumeSource,
    /// Absolute path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// When a service is restarted after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never.
    No,
    /// Always.
    Always,
    /// Unless stopped by the operator (same as always inside a CVM).
    UnlessStopped,
    /// On a non-zero exit, at most this many times (None: unlimited).
    OnFailure(Option<u32>),
}

/// What a dependency must reach before the dependent starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DependencyCondition {
    /// Started.
    Started,
    /// Healthy (its healthcheck passed).
    Healthy,
    /// Exited with status 0.
    CompletedSuccessfully,
}

/// A `depends_on` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// The service depended on.
    pub service: String,
    /// The condition.
    pub condition: DependencyCondition,
}

/// A health check run inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    /// Command (argv). `CMD-SHELL` forms become `["/bin/sh", "-c", ...]`.
    pub test: Vec<String>,
    /// Interval between checks.
    pub interval: Duration,
    /// Timeout of one check.
    pub timeout: Duration,
    /// Failures before unhealthy.
    pub retries: u32,
    /// Grace period after start.
    pub start_period: Duration,
}

#[derive(Deserialize)]
struct RawCompose {
    #[serde(default)]
    services: BTreeMap<String, Value>,
    #[serde(default)]
    volumes: BTreeMap<String, Value>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
}

impl Compose {
    /// Parse and validate a compose YAML with no variables set (every
    /// `${VAR}` without a default becomes empty, as in docker compose).
    pub fn parse(yaml: &str) -> Result<Self, ComposeError> {
        Self::parse_with_vars(yaml, &Vars::new()).map(|(compose, _)| compose)
    }

    /// Parse a compose YAML, interpolating `vars` first; also returns the
    /// names of variables used but unset.
    pub fn parse_with_vars(yaml: &str, vars: &Vars) -> Result<(Self, Vec<String>), ComposeError> {
        let mut doc: Value =
            serde_yaml::from_str(yaml).map_err(|e| ComposeError::Yaml(e.to_string()))?;
        let unset = interpolate_document(&mut doc, vars)?;
        let raw: RawCompose =
            serde_yaml::from_value(doc).map_err(|e| ComposeError::Yaml(e.to_string()))?;
        Self::from_raw(raw).map(|compose| (compose, unset))
    }

    fn from_raw(raw: RawCompose) -> Result<Self, ComposeError> {
        if raw.services.is_empty() {
            return Err(ComposeError::invalid(
                "services",
                "at least one service is required",
            ));
        }
        let volumes: BTreeSet<String> = raw.volumes.keys().cloned().collect();
        for name in &volumes {
            if !valid_name(name) {
                return Err(ComposeError::invalid(
                    format!("volumes.{name}"),
                    "invalid volume name",
                ));
            }
        }
        let mut services = BTreeMap::new();
        for (name, value) in &raw.services {
            if !valid_name(name) {
                return Err(ComposeError::invalid(
                    format!("services.{name}"),
                    "service names use letters, digits, '.', '_' and '-'",
                ));
            }
            services.insert(name.clone(), Service::parse(name, value, &volumes)?);
        }
        let compose = Compose { services, volumes };
        compose.start_order()?;
        Ok(compose)
    }

    /// Service names in an order where every service comes after what it depends on.
    pub fn start_order(&self) -> Result<Vec<String>, ComposeError> {
        for (name, service) in &self.services {
            for dep in &service.depends_on {
                if !self.services.contains_key(&dep.service) {
                    return Err(ComposeError::invalid(
                        format!("services.{name}.depends_on"),
                        format!("unknown service {:?}", dep.service),
                    ));
                }
            }
        }
        let mut order = Vec::new();
        let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 visiting, 2 done
        fn visit<'a>(
            name: &'a str,
            compose: &'a Compose,
            state: &mut BTreeMap<&'a str, u8>,
            order: &mut Vec<String>,
            path: &mut Vec<&'a str>,
        ) -> Result<(), ComposeError> {
            match state.get(name) {
                Some(2) => return Ok(()),
                Some(_) => {
                    path.push(name);
                    return Err(ComposeError::DependencyCycle(path.join(" -> ")));
                }
                None => {}
            }
            state.insert(name, 1);
            path.push(name);
            for dep in &compose.services[name].depends_on {
                visit(&dep.service, compose, state, order, path)?;
            }
            path.pop();
            state.insert(name, 2);
            order.push(name.to_string());
            Ok(())
        }
        for name in self.services.keys() {
            visit(name, self, &mut state, &mut order, &mut Vec::new())?;
        }
        Ok(order)
    }
}

fn string_list(field: &str, value: &Value) -> Result<Vec<String>, ComposeError> {
    match value {
        Value::String(s) => {
            shell_words::split(s).map_err(|e| ComposeError::invalid(field, e.to_string()))
        }
        Value::Sequence(items) => items.iter().map(|v| scalar(field, v)).collect(),
        _ => Err(ComposeError::invalid(
            field,
            "must be a string or a list of strings",
        )),
    }
}

fn scalar(field: &str, value: &Value) -> Result<String, ComposeError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok(String::new()),
        _ => Err(ComposeError::invalid(field, "must be a scalar")),
    }
}

fn duration(
    field: &str,
    value: Option<&Value>,
    default: Duration,
) -> Result<Duration, ComposeError> {
    match value {
        None => Ok(default),
        Some(v) => {
            let text = scalar(field, v)?;
            parse_duration(&text).ok_or_else(|| {
                ComposeError::invalid(
                    field,
                    format!("{text:?} is not a duration like 30s or 1m30s"),
                )
            })
        }
    }
}

impl Service {
    fn parse(name: &str, value: &Value, volumes: &BTreeSet<String>) -> Result<Self, ComposeError> {
        let field = |f: &str| format!("services.{name}.{f}");
        let map = value.as_mapping().ok_or_else(|| {
            ComposeError::invalid(format!("services.{name}"), "must be a mapping")
        })?;
        const KNOWN: [&str; 22] = [
            "image",
            "command",
            "entrypoint",
            "environment",
            "ports",
            "volumes",
            "restart",
            "depends_on",
            "healthcheck",
            "working_dir",
            "user",
            "stop_grace_period",
            "container_name",
            "hostname",
            "expose",
            "labels",
            "logging",
            "stop_signal",
            "privileged",
            "cap_add",
            "cap_drop",
            "security_opt",
        ];
        for key in map.keys() {
            let key = key.as_str().unwrap_or_default();
            if !KNOWN.contains(&key) {
                return Err(ComposeError::invalid(
                    field(key),
                    "is not supported in a CVM",
                ));
            }
        }
        let get = |k: &str| map.get(k);
        let image = match get("image") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            _ => {
                return Err(ComposeError::invalid(
                    field("image"),
                    "is required (services are pulled from a registry; build: is not supported)",
                ));
            }
        };
        let command = get("command")
            .map(|v| string_list(&field("command"), v))
            .transpose()?;
        let entrypoint = get("entrypoint")
            .map(|v| string_list(&field("entrypoint"), v))
            .transpose()?;
        let environment = match get("environment") {
            None => BTreeMap::new(),
            Some(Value::Mapping(m)) => m
                .iter()
                .map(|(k, v)| {
                    Ok((
                        scalar(&field("environment"), k)?,
                        scalar(&field("environment"), v)?,
                    ))
                })
                .collect::<Result<_, ComposeError>>()?,
            Some(Value::Sequence(items)) => items
                .iter()
                .map(|item| {
                    let s = scalar(&field("environment"), item)?;
                    Ok(match s.split_once('=') {
                        Some((k, v)) => (k.to_string(), v.to_string()),
                        None => (s, String::new()),
                    })
                })
                .collect::<Result<_, ComposeError>>()?,
            Some(_) => {
                return Err(ComposeError::invalid(
                    field("environment"),
                    "must be a mapping or a list",
                ));
            }
        };
        for key in environment.keys() {
            if key.is_empty() || key.contains('\0') {
                return Err(ComposeError::invalid(
                    field("environment"),
                    format!("bad variable name {key:?}"),
                ));
            }
        }
        let ports = match get("ports") {
            None => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| parse_port(&format!("services.{name}.ports[{i}]"), item))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(ComposeError::invalid(field("ports"), "must be a list")),
        };
        let mounts = match get("volumes") {
            None => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    parse_volume(&format!("services.{name}.volumes[{i}]"), item, volumes)
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(ComposeError::invalid(field("volumes"), "must be a list")),
        };
        let restart = match get("restart")
            .map(|v| scalar(&field("restart"), v))
            .transpose()?
            .as_deref()
        {
            None | Some("no") | Some("") => RestartPolicy::No,
            Some("always") => RestartPolicy::Always,
            Some("unless-stopped") => RestartPolicy::UnlessStopped,
            Some("on-failure") => RestartPolicy::OnFailure(None),
            Some(other) => match other.strip_prefix("on-failure:").map(str::parse::<u32>) {
                Some(Ok(n)) => RestartPolicy::OnFailure(Some(n)),
                _ => {
                    return Err(ComposeError::invalid(
                        field("restart"),
                        format!("{other:?} is not no, always, unless-stopped or on-failure[:N]"),
                    ));
                }
            },
        };
        let depends_on = match get("depends_on") {
            None => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .map(|v| {
                    Ok(Dependency {
                        service: scalar(&field("depends_on"), v)?,
                        condition: DependencyCondition::Started,
                    })
                })
                .collect::<Result<_, ComposeError>>()?,
            Some(Value::Mapping(m)) => m
                .iter()
                .map(|(k, v)| {
                    let service = scalar(&field("depends_on"), k)?;
                    let condition = match v.get("condition").and_then(Value::as_str) {
                        None | Some("service_started") => DependencyCondition::Started,
                        Some("service_healthy") => DependencyCondition::Healthy,
                        Some("service_completed_successfully") => {
                            DependencyCondition::CompletedSuccessfully
                        }
                        Some(other) => {
                            return Err(ComposeError::invalid(
                                field("depends_on"),
                                format!("unknown condition {other:?}"),
                            ));
                        }
                    };
                    Ok(Dependency { service, condition })
                })
                .collect::<Result<_, ComposeError>>()?,
            Some(_) => {
                return Err(ComposeError::invalid(
                    field("depends_on"),
                    "must be a list or a mapping",
                ));
            }
        };
        let healthcheck = get("healthcheck")
            .map(|v| parse_healthcheck(&field("healthcheck"), v))
            .transpose()?
            .flatten();
        for dep in &depends_on {
            if dep.service == name {
                return Err(ComposeError::invalid(
                    field("depends_on"),
                    "a service cannot depend on itself",
                ));
            }
        }
        let working_dir = get("working_dir")
            .map(|v| scalar(&field("working_dir"), v))
            .transpose()?;
        if let Some(dir) = &working_dir
            && !dir.starts_with('/')
        {
            return Err(ComposeError::invalid(
                field("working_dir"),
                "must be an absolute path",
            ));
        }
        let privileged = match get("privileged") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ComposeError::invalid(
                    field("privileged"),
                    "must be true or false",
                ));
            }
        };
        let list = |key: &str| -> Result<Vec<String>, ComposeError> {
            match get(key) {
                None => Ok(Vec::new()),
                Some(Value::Sequence(items)) => {
                    items.iter().map(|v| scalar(&field(key), v)).collect()
                }
                Some(_) => Err(ComposeError::invalid(field(key), "must be a list")),
            }
        };
        let security = Security::new(
            field,
            privileged,
            &list("cap_add")?,
            &list("cap_drop")?,
            &list("security_opt")?,
        )?;
        Ok(Service {
            image,
            command,
            entrypoint,
            environment,
            ports,
            volumes: mounts,
            restart,
            depends_on,
            healthcheck,
            working_dir,
            user: get("user").map(|v| scalar(&field("user"), v)).transpose()?,
            stop_grace_period: duration(
                &field("stop_grace_period"),
                get("stop_grace_period"),
                Duration::from_secs(10),
            )?,
            security,
        })
    }
}

fn parse_port(field: &str, item: &Value) -> Result<PortSpec, ComposeError> {
    let port = |text: &str| -> Result<u16, ComposeError> {
        match text.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(ComposeError::invalid(
                field,
                format!("{text:?} is not a port number"),
            )),
        }
    };
    match item {
        Value::Number(n) => {
            let p = port(&n.to_string())?;
            Ok(PortSpec {
                published: p,
                target: p,
            })
        }
        Value::String(s) => {
            let spec = s.strip_suffix("/tcp").unwrap_or(s);
            if spec.ends_with("/udp") {
                return Err(ComposeError::invalid(field, "udp ports are not supported"));
            }
            // [ip:]published:target, or target alone; the host IP part is meaningless in a guest.
            let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
            match parts.as_slice() {
                [target] => {
                    let p = port(target)?;
                    Ok(PortSpec {
                        published: p,
                        target: p,
                    })
                }
                [target, published] | [target, published, _] => Ok(PortSpec {
                    published: port(published)?,
                    target: port(target)?,
                }),
                _ => Err(ComposeError::invalid(field, "expected [published:]target")),
            }
        }
        Value::Mapping(m) => {
            let get = |k: &str| m.get(k).map(|v| scalar(field, v)).transpose();
            let target =
                get("target")?.ok_or_else(|| ComposeError::invalid(field, "target is required"))?;
            let target = port(&target)?;
            let published = match get("published")? {
                Some(p) => port(&p)?,
                None => target,
            };
            Ok(PortSpec { published, target })
        }
        _ => Err(ComposeError::invalid(
            field,
            "must be a string, number or mapping",
        )),
    }
}

fn parse_volume(
    field: &str,
    item: &Value,
    declared: &BTreeSet<String>,
) -> Result<VolumeMount, ComposeError> {
    let (source, target, read_only) = match item {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            match parts.as_slice() {
                [source, target] => (source.to_string(), target.to_string(), false),
                [source, target, mode] => match *mode {
                    "ro" => (source.to_string(), target.to_string(), true),
                    "rw" => (source.to_string(), target.to_string(), false),
                    other => {
                        return Err(ComposeError::invalid(
                            field,
                            format!("mode {other:?} is not ro or rw"),
                        ));
                    }
                },
                [_] => {
                    return Err(ComposeError::invalid(
                        field,
                        "anonymous volumes are not supported; name the volume",
                    ));
                }
                _ => {
                    return Err(ComposeError::invalid(
                        field,
                        "expected source:target[:ro|rw]",
                    ));
                }
            }
        }
        Value::Mapping(m) => {
            let get = |k: &str| m.get(k).map(|v| scalar(field, v)).transpose();
            let source =
                get("source")?.ok_or_else(|| ComposeError::invalid(field, "source is required"))?;
            let target =
                get("target")?.ok_or_else(|| ComposeError::invalid(field, "target is required"))?;
            let read_only = m.get("read_only").and_then(Value::as_bool).unwrap_or(false);
            (source, target, read_only)
        }
        _ => {
            return Err(ComposeError::invalid(
                field,
                "must be a string or a mapping",
            ));
        }
    };
    if !target.starts_with('/') {
        return Err(ComposeError::invalid(
            field,
            format!("target {target:?} must be an absolute path"),
        ));
    }
    let source = if source.starts_with('/') || source.starts_with('.') {
        if !DSTACK_SOCKETS.contains(&source.as_str()) {
            return Err(ComposeError::invalid(
                field,
                format!(
                    "bind mount of {source:?} is not allowed; only named volumes and {} can be mounted",
                    DSTACK_SOCKETS.join(", ")
                ),
            ));
        }
        VolumeSource::DstackSocket(source)
    } else {
        if !declared.contains(&source) {
            return Err(ComposeError::invalid(
                field,
                format!("named volume {source:?} is not declared under top-level volumes"),
            ));
        }
        VolumeSource::Named(source)
    };
    Ok(VolumeMount {
        source,
        target,
        read_only,
    })
}

fn parse_healthcheck(field: &str, value: &Value) -> Result<Option<Healthcheck>, ComposeError> {
    let m = value
        .as_mapping()
        .ok_or_else(|| ComposeError::invalid(field, "must be a mapping"))?;
    if m.get("disable").and_then(Value::as_bool) == Some(true) {
        return Ok(None);
    }
    let test_field = format!("{field}.test");
    let test = match m.get("test") {
        None => return Err(ComposeError::invalid(test_field, "is required")),
        Some(Value::String(s)) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
        Some(v) => {
            let list = string_list(&test_field, v)?;
            match list.first().map(String::as_str) {
                Some("NONE") => return Ok(None),
                Some("CMD") if list.len() > 1 => list[1..].to_vec(),
                Some("CMD-SHELL") if list.len() == 2 => {
                    vec!["/bin/sh".into(), "-c".into(), list[1].clone()]
                }
                _ => {
                    return Err(ComposeError::invalid(
                        test_field,
                        "must be [\"CMD\", args...], [\"CMD-SHELL\", command] or a string",
                    ));
                }
            }
        }
    };
    let retries = match m.get("retries") {
        None => 3,
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| ComposeError::invalid(format!("{field}.retries"), "must be a number"))?,
    };
    Ok(Some(Healthcheck {
        test,
        interval: duration(
            &format!("{field}.interval"),
            m.get("interval"),
            Duration::from_secs(30),
        )?,
        timeout: duration(
            &format!("{field}.timeout"),
            m.get("timeout"),
            Duration::from_secs(30),
        )?,
        retries,
        start_period: duration(
            &format!("{field}.start_period"),
            m.get("start_period"),
            Duration::ZERO,
        )?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CapabilityName, SeccompMode};

    const TWO_SERVICES: &str = r#"
services:
  web:
    image: 127.0.0.1:5000/hello:latest
    command: ["httpd", "-f", "-p", "8080"]
    environment:
      GREETING: hi
      NUM: 3
    ports:
      - "80:8080"
      - 9000
    volumes:
      - data:/data
      - /var/run/dstack.sock:/var/run/dstack.sock:ro
    restart: on-failure:3
    depends_on:
      backend:
        condition: service_healthy
  backend:
    image: 127.0.0.1:5000/backend@sha256:0123
    entrypoint: /bin/backend --port 9090
    environment: ["A=1", "B"]
    healthcheck:
      test: ["CMD", "wget", "-q", "http://127.0.0.1:9090/"]
      interval: 2s
      retries: 5
volumes:
  data: {}
"#;

    #[test]
    fn parses_the_supported_subset() {
        let c = Compose::parse(TWO_SERVICES).unwrap();
        let web = &c.services["web"];
        assert_eq!(
            web.command.as_deref().unwrap(),
            ["httpd", "-f", "-p", "8080"]
        );
        assert_eq!(web.environment["NUM"], "3");
        assert_eq!(
            web.ports,
            [
                PortSpec {
                    published: 80,
                    target: 8080
                },
                PortSpec {
                    published: 9000,
                    target: 9000
                }
            ]
        );
        assert_eq!(web.volumes[0].source, VolumeSource::Named("data".into()));
        assert!(web.volumes[1].read_only);
        assert_eq!(web.restart, RestartPolicy::OnFailure(Some(3)));
        assert_eq!(web.depends_on[0].condition, DependencyCondition::Healthy);
        let backend = &c.services["backend"];
        assert_eq!(
            backend.entrypoint.as_deref().unwrap(),
            ["/bin/backend", "--port", "9090"]
        );
        // `- B` with B unset: left out, as docker compose does.
        assert!(!backend.environment.contains_key("B"));
        let hc = backend.healthcheck.as_ref().unwrap();
        assert_eq!(hc.test[0], "wget");
        assert_eq!(hc.interval, Duration::from_secs(2));
        assert_eq!(hc.retries, 5);
        assert_eq!(c.start_order().unwrap(), ["backend", "web"]);
    }

    fn err(yaml: &str) -> String {
        Compose::parse(yaml).unwrap_err().to_string()
    }

    #[test]
    fn every_upstream_guest_api_path_may_be_mounted() {
        for path in DSTACK_SOCKETS {
            let yaml = format!(
                "services:\n  web:\n    image: x\n    volumes:\n      - type: bind\n        source: {path}\n        target: {path}\n"
            );
            let compose = Compose::parse(&yaml).unwrap();
            assert_eq!(
                compose.services["web"].volumes[0].source,
                VolumeSource::DstackSocket(path.to_string())
            );
        }
        assert!(
            err("services:\n  web:\n    image: x\n    volumes: [\"/run/other.sock:/s\"]\n")
                .contains("not allowed")
        );
    }

    #[test]
    fn security_keys_are_carried_to_the_service() {
        let c = Compose::parse(
            "services:\n  web:\n    image: x\n    privileged: true\n    cap_add: [NET_ADMIN]\n    cap_drop: [cap_net_raw]\n    security_opt: [\"seccomp=unconfined\", \"no-new-privileges:false\"]\n  plain:\n    image: x\n",
        )
        .unwrap();
        let web = &c.services["web"].security;
        assert!(web.privileged);
        assert_eq!(web.cap_add, [CapabilityName::Cap("CAP_NET_ADMIN")]);
        assert_eq!(web.cap_drop, [CapabilityName::Cap("CAP_NET_RAW")]);
        assert_eq!(web.seccomp, SeccompMode::Unconfined);
        assert!(!web.no_new_privileges);
        assert_eq!(c.services["plain"].security, Security::default());
    }

    #[test]
    fn bad_security_keys_are_refused_naming_the_field() {
        assert!(
            err("services:\n  web:\n    image: x\n    privileged: yes please\n")
                .starts_with("services.web.privileged")
        );
        assert!(
            err("services:\n  web:\n    image: x\n    cap_add: NET_ADMIN\n")
                .starts_with("services.web.cap_add: must be a list")
        );
        assert_eq!(
            Compose::parse("services:\n  web:\n    image: x\n    cap_add: [SYS_MAGIC]\n")
                .unwrap_err(),
            ComposeError::UnknownCapability {
                field: "services.web.cap_add".into(),
                name: "SYS_MAGIC".into()
            }
        );
        let e = err("services:\n  web:\n    image: x\n    security_opt: [\"seccomp=/p.json\"]\n");
        assert!(
            e.starts_with(
                "services.web.security_opt[0]: security option \"seccomp=/p.json\" is not supported"
            ),
            "{e}"
        );
        assert!(matches!(
            Compose::parse(
                "services:\n  web:\n    image: x\n    security_opt: [\"apparmor=docker-default\"]\n"
            ),
            Err(ComposeError::UnsupportedSecurityOpt { .. })
        ));
    }

    #[test]
    fn refuses_bad_files_naming_the_field() {
        assert!(err("services: [").starts_with("compose file is not valid YAML"));
        assert!(err("services: {}").starts_with("services:"));
        assert!(err("services:\n  web: {}\n").starts_with("services.web.image"));
        assert!(
            err("services:\n  web:\n    image: x\n    build: .\n")
                .starts_with("services.web.build")
        );
        assert!(
            err("services:\n  web:\n    image: x\n    ports: [\"a:b\"]\n")
                .starts_with("services.web.ports[0]")
        );
        assert!(
            err("services:\n  web:\n    image: x\n    volumes: [\"/etc:/etc\"]\n")
                .contains("not allowed")
        );
        assert!(
            err("services:\n  web:\n    image: x\n    volumes: [\"v:/v\"]\n")
                .contains("not declared")
        );
        assert!(
            err("services:\n  web:\n    image: x\n    restart: sometimes\n")
                .starts_with("services.web.restart")
        );
        assert!(
            err("services:\n  web:\n    image: x\n    depends_on: [db]\n")
                .contains("unknown service")
        );
        let cycle = err(
            "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [a]\n",
        );
        assert!(cycle.contains("cycle"), "{cycle}");
    }
}
