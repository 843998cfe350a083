//! A whole compose file: its services and the top-level `volumes`,
//! `networks`, `configs` and `secrets` they refer to, read as docker
//! compose reads them, with every key either honoured, ignored with a
//! reason, or refused with a named error.

use std::collections::{BTreeMap, BTreeSet};

use crate::interpolate::{Vars, interpolate_document};
use crate::service::{Declared, profile_active, profiles};
use crate::yaml::{Mapping, Value, boolean, key_text, load, scalar};
use crate::{ComposeError, Findings, Ignored, Service};

/// The service name of the CVM's container engine, which the guest adds
/// when a service mounts the Docker Engine API socket (reserved).
pub const ENGINE_SERVICE: &str = "dstack-engine";

/// A parsed, validated compose file.
#[derive(Debug, Clone, PartialEq)]
pub struct Compose {
    /// The project name (`name:`), if the file sets one.
    pub name: Option<String>,
    /// Services by name (those whose profiles are not active are left out).
    pub services: BTreeMap<String, Service>,
    /// Declared named volumes.
    pub volumes: BTreeSet<String>,
    /// Declared networks.
    pub networks: BTreeMap<String, NetworkDef>,
    /// `configs` contents by name.
    pub configs: BTreeMap<String, String>,
    /// `secrets` contents by name.
    pub secrets: BTreeMap<String, String>,
}

/// A top-level `networks` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkDef {
    /// `internal: true`: no route out of the CVM.
    pub internal: bool,
}

/// What checking a compose file found: the file as it would run (when
/// nothing is refused), what is ignored and why, and every refusal.
#[derive(Debug, Clone)]
pub struct Check {
    /// The file as it would run; `None` when anything is refused.
    pub compose: Option<Compose>,
    /// Keys accepted without effect in a CVM.
    pub ignored: Vec<Ignored>,
    /// Everything refused, in file order.
    pub refused: Vec<ComposeError>,
    /// Variables the file uses that are not set (they read as empty).
    pub unset_vars: Vec<String>,
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
    /// names of variables used but unset. The first refusal is the error.
    pub fn parse_with_vars(yaml: &str, vars: &Vars) -> Result<(Self, Vec<String>), ComposeError> {
        let check = Self::check(yaml, vars);
        match (check.compose, check.refused.into_iter().next()) {
            (Some(compose), None) => Ok((compose, check.unset_vars)),
            (_, Some(refusal)) => Err(refusal),
            (None, None) => Err(ComposeError::invalid("services", "could not be read")),
        }
    }

    /// Reads the whole file and reports on every key: what runs, what is
    /// ignored, what is refused.
    pub fn check(yaml: &str, vars: &Vars) -> Check {
        let mut findings = Findings::default();
        let mut unset_vars = Vec::new();
        let compose = (|| {
            let mut doc = load(yaml)?;
            unset_vars = interpolate_document(&mut doc, vars)?;
            let Value::Mapping(top) = doc else {
                return Err(ComposeError::invalid("(top level)", "must be a mapping"));
            };
            Ok(read(&top, vars, &mut findings))
        })();
        let compose = match compose {
            Ok(compose) => compose,
            Err(e) => {
                findings.refuse(e);
                None
            }
        };
        Check {
            compose: compose.filter(|_| findings.refused.is_empty()),
            ignored: findings.ignored,
            refused: findings.refused,
            unset_vars,
        }
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

/// Reads the top level. `None` when something was refused (recorded).
fn read(top: &Mapping, vars: &Vars, findings: &mut Findings) -> Option<Compose> {
    let before = findings.refused.len();
    let mut name = None;
    for (key, value) in top {
        let key = key_text(key);
        match key.as_str() {
            "services" | "volumes" | "networks" | "configs" | "secrets" => {}
            "name" => match scalar("name", value) {
                Ok(n) => name = Some(n),
                Err(e) => findings.refuse(e),
            },
            "version" => findings.ignore("version", "obsolete; docker compose ignores it too"),
            "include" => findings.refuse(ComposeError::Unsupported {
                field: "include".into(),
                reason: "include reads other files, which the CVM does not have; merge them into this file".into(),
            }),
            k if k.starts_with("x-") => {}
            other => findings.refuse(ComposeError::invalid(
                other,
                "is not a top-level compose key this platform knows",
            )),
        }
    }
    let section = |key: &str| -> Result<Option<&Mapping>, ComposeError> {
        match top.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Mapping(m)) => Ok(Some(m)),
            Some(_) => Err(ComposeError::invalid(key, "must be a mapping")),
        }
    };
    let mut declared = Declared::default();
    let mut volumes = BTreeSet::new();
    let mut networks = BTreeMap::new();
    let mut configs = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    match section("volumes") {
        Ok(Some(m)) => {
            for (key, value) in m {
                let name = key_text(key);
                if let Err(e) = volume_def(&name, value, findings) {
                    findings.refuse(e);
                }
                volumes.insert(name);
            }
        }
        Ok(None) => {}
        Err(e) => findings.refuse(e),
    }
    declared.volumes = volumes.clone();
    match section("networks") {
        Ok(Some(m)) => {
            for (key, value) in m {
                let name = key_text(key);
                match network_def(&name, value, findings) {
                    Ok(def) => {
                        networks.insert(name, def);
                    }
                    Err(e) => findings.refuse(e),
                }
            }
        }
        Ok(None) => {}
        Err(e) => findings.refuse(e),
    }
    declared.networks = networks.keys().cloned().collect();
    for (section_name, out, names) in [
        ("configs", &mut configs, &mut declared.configs),
        ("secrets", &mut secrets, &mut declared.secrets),
    ] {
        match section(section_name) {
            Ok(Some(m)) => {
                for (key, value) in m {
                    let name = key_text(key);
                    // Declared even when refused, so the services that use
                    // it are not refused a second time for naming it.
                    names.insert(name.clone());
                    match file_def(section_name, &name, value, vars) {
                        Ok(content) => {
                            out.insert(name, content);
                        }
                        Err(e) => findings.refuse(e),
                    }
                }
            }
            Ok(None) => {}
            Err(e) => findings.refuse(e),
        }
    }

    let mut services = BTreeMap::new();
    match section("services") {
        Ok(Some(m)) if !m.is_empty() => {
            for (key, value) in m {
                let name = key_text(key);
                if !valid_name(&name) {
                    findings.refuse(ComposeError::invalid(
                        format!("services.{name}"),
                        "service names use letters, digits, '.', '_' and '-'",
                    ));
                    continue;
                }
                if name == ENGINE_SERVICE {
                    findings.refuse(ComposeError::invalid(
                        format!("services.{name}"),
                        "this name is the CVM's own container engine; choose another",
                    ));
                    continue;
                }
                match profiles(&name, value) {
                    Ok(p) if !profile_active(&p, vars) => {
                        findings.ignore(
                            format!("services.{name}"),
                            format!(
                                "not started: its profiles ({}) are not in COMPOSE_PROFILES",
                                p.join(", ")
                            ),
                        );
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        findings.refuse(e);
                        continue;
                    }
                }
                if let Some(service) = Service::parse(&name, value, &declared, findings) {
                    services.insert(name, service);
                }
            }
        }
        Ok(_) => findings.refuse(ComposeError::invalid(
            "services",
            "at least one service is required",
        )),
        Err(e) => findings.refuse(e),
    }
    let compose = Compose {
        name,
        services,
        volumes,
        networks,
        configs,
        secrets,
    };
    // Cross-references only mean something once every service was read
    // (a refused service would show up again as "unknown service").
    if findings.refused.len() == before
        && let Err(e) = cross_check(&compose)
    {
        findings.refuse(e);
    }
    (findings.refused.len() == before).then_some(compose)
}

/// What only the whole file can show: dependencies and `service:` network
/// modes name services that exist, without cycles; names are unique.
fn cross_check(compose: &Compose) -> Result<(), ComposeError> {
    compose.start_order()?;
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, service) in &compose.services {
        if let crate::NetworkMode::Service(other) = &service.network.mode
            && !compose.services.contains_key(other)
        {
            return Err(ComposeError::invalid(
                format!("services.{name}.network_mode"),
                format!("unknown service {other:?}"),
            ));
        }
        if let Some(container) = &service.network.container_name
            && let Some(first) = names.insert(container, name)
        {
            return Err(ComposeError::invalid(
                format!("services.{name}.container_name"),
                format!("{container:?} is also the container name of {first}"),
            ));
        }
    }
    Ok(())
}

/// A top-level `volumes`/`networks` entry: its dotted path, and its
/// settings (`None` when it is empty: `name:`).
fn top_level_entry<'a>(
    section: &str,
    name: &str,
    value: &'a Value,
) -> Result<(String, Option<&'a Mapping>), ComposeError> {
    let field = format!("{section}.{name}");
    if !valid_name(name) {
        let kind = section.trim_end_matches('s');
        return Err(ComposeError::invalid(field, format!("invalid {kind} name")));
    }
    match value {
        Value::Mapping(m) => Ok((field, Some(m))),
        Value::Null => Ok((field, None)),
        _ => Err(ComposeError::invalid(field, "must be a mapping")),
    }
}

fn volume_def(name: &str, value: &Value, findings: &mut Findings) -> Result<(), ComposeError> {
    let (field, Some(m)) = top_level_entry("volumes", name, value)? else {
        return Ok(());
    };
    for (key, v) in m {
        let key = key_text(key);
        let f = format!("{field}.{key}");
        match key.as_str() {
            "external" if boolean(&f, v).unwrap_or(true) => {
                return Err(ComposeError::Unsupported {
                    field: f,
                    reason: "an external volume must exist before the app starts; a CVM's data disk holds only the volumes its compose file declares".into(),
                });
            }
            "external" => {}
            "driver" => {
                let driver = scalar(&f, v)?;
                if driver != "local" {
                    return Err(ComposeError::Unsupported {
                        field: f,
                        reason: format!(
                            "volume driver {driver:?}: volumes live on the CVM's encrypted data disk (driver local)"
                        ),
                    });
                }
            }
            "driver_opts" => {
                return Err(ComposeError::Unsupported {
                    field: f,
                    reason: "volumes live on the CVM's encrypted data disk; driver options (such as an NFS or bind device) would bypass it".into(),
                });
            }
            "labels" | "name" => findings.ignore(f, "volume metadata; nothing in a CVM reads it"),
            k if k.starts_with("x-") => {}
            _ => {
                return Err(ComposeError::invalid(
                    f,
                    "is not a volume key this platform knows",
                ));
            }
        }
    }
    Ok(())
}

fn network_def(
    name: &str,
    value: &Value,
    findings: &mut Findings,
) -> Result<NetworkDef, ComposeError> {
    let mut def = NetworkDef::default();
    let (field, Some(m)) = top_level_entry("networks", name, value)? else {
        return Ok(def);
    };
    for (key, v) in m {
        let key = key_text(key);
        let f = format!("{field}.{key}");
        match key.as_str() {
            "external" if boolean(&f, v).unwrap_or(true) => {
                return Err(ComposeError::Unsupported {
                    field: f,
                    reason: "there are no networks in the CVM besides the app's own".into(),
                });
            }
            "external" => {}
            "driver" => {
                let driver = scalar(&f, v)?;
                if driver != "bridge" {
                    return Err(ComposeError::Unsupported {
                        field: f,
                        reason: format!(
                            "network driver {driver:?}: compose networks in a CVM are bridges"
                        ),
                    });
                }
            }
            "internal" => def.internal = boolean(&f, v)?,
            "attachable" | "enable_ipv6" | "enable_ipv4" | "ipam" | "driver_opts" | "labels"
            | "name" => {
                findings.ignore(f, "addresses on a compose network are assigned by the CVM")
            }
            k if k.starts_with("x-") => {}
            _ => {
                return Err(ComposeError::invalid(
                    f,
                    "is not a network key this platform knows",
                ));
            }
        }
    }
    Ok(def)
}

/// The content of a `configs` or `secrets` entry: inline `content`
/// (configs) or a variable of the app's env (`environment`).
fn file_def(section: &str, name: &str, value: &Value, vars: &Vars) -> Result<String, ComposeError> {
    let field = format!("{section}.{name}");
    if !valid_name(name) {
        return Err(ComposeError::invalid(field, "invalid name"));
    }
    let m = value
        .as_mapping()
        .ok_or_else(|| ComposeError::invalid(&field, "must be a mapping"))?;
    let mut content = None;
    for (key, v) in m {
        let key = key_text(key);
        let f = format!("{field}.{key}");
        match key.as_str() {
            "content" if section == "configs" => content = Some(scalar(&f, v)?),
            "environment" => {
                let var = scalar(&f, v)?;
                let value = vars.get(&var).ok_or_else(|| ComposeError::Unsupported {
                    field: f.clone(),
                    reason: format!(
                        "variable {var:?} is not set (set it in the app's encrypted env)"
                    ),
                })?;
                content = Some(value.clone());
            }
            "file" => {
                return Err(ComposeError::Unsupported {
                    field: f,
                    reason: if section == "configs" {
                        "the file is on your machine, which the CVM does not receive: put its text under content: instead".into()
                    } else {
                        "the file is on your machine, which the CVM does not receive: put the secret in the app's encrypted env and name it with environment:".into()
                    },
                });
            }
            "external" => {
                return Err(ComposeError::Unsupported {
                    field: f,
                    reason: "there is no store outside the app to take it from".into(),
                });
            }
            "name" | "labels" | "template_driver" | "driver" | "driver_opts" => {
                if key == "driver" || key == "driver_opts" || key == "template_driver" {
                    return Err(ComposeError::Unsupported {
                        field: f,
                        reason: "drivers are a swarm feature".into(),
                    });
                }
            }
            k if k.starts_with("x-") => {}
            _ => {
                return Err(ComposeError::invalid(
                    f,
                    if section == "configs" {
                        "is not content, environment or file"
                    } else {
                        "is not environment or file"
                    },
                ));
            }
        }
    }
    content.ok_or_else(|| {
        ComposeError::invalid(
            field,
            if section == "configs" {
                "needs content: or environment:"
            } else {
                "needs environment:"
            },
        )
    })
}
