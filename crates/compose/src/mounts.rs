//! What a service mounts: `volumes` (named volumes, the guest API sockets,
//! paths of the CVM itself), `tmpfs`, `configs`/`secrets` files and
//! `devices`. Every source is inside the CVM: the guest has no mount of
//! the host's filesystem, so no mount here can reach the untrusted host.

use std::collections::BTreeSet;

use crate::yaml::{Value, boolean, bytes, file_mode, key_text, scalar, unsigned};
use crate::{ComposeError, Findings};

/// The guest API paths a service may bind-mount, as upstream dstack's OS
/// offers them. Each names `dstack.sock` or `tappd.sock`, or for the two
/// directories, the directory holding both.
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

/// The Docker Engine API socket path apps mount.
pub const DOCKER_SOCKETS: [&str; 2] = ["/var/run/docker.sock", "/run/docker.sock"];

/// The directory a compose file's relative paths are resolved against in
/// the CVM (upstream runs `docker compose` there; `/tapp` links to it).
pub const APP_DIR: &str = "/dstack";

/// Where a mount comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A named volume on the data disk.
    Named(String),
    /// One of [`DSTACK_SOCKETS`].
    DstackSocket(String),
    /// One of [`DOCKER_SOCKETS`]: the Docker Engine API of the CVM's
    /// container engine (started for the app when a service mounts it).
    DockerSocket(String),
    /// A path of the CVM's own filesystem (absolute, normalised; relative
    /// paths are resolved against [`APP_DIR`]). Created as a directory when
    /// missing, as docker does for a bind mount's host path.
    CvmPath(String),
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

/// A `tmpfs` mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsMount {
    /// Absolute path in the container.
    pub target: String,
    /// Size limit in bytes (None: the kernel's default, half of RAM).
    pub size: Option<u64>,
    /// Mode of its root directory (default 01777).
    pub mode: u32,
}

/// A `devices` entry: a device node of the CVM made in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMapping {
    /// Path in the CVM.
    pub source: String,
    /// Path in the container.
    pub target: String,
    /// cgroup permissions: some of `r`, `w`, `m`.
    pub permissions: String,
}

/// Whether a file mount comes from `configs` or `secrets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A top-level `configs` entry.
    Config,
    /// A top-level `secrets` entry.
    Secret,
}

/// A `configs:` or `secrets:` entry of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMount {
    /// Which section.
    pub kind: FileKind,
    /// Name of the top-level entry.
    pub source: String,
    /// Absolute path in the container.
    pub target: String,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Mode (default 0444).
    pub mode: u32,
}

/// Lexically normalises an absolute path (`.`, `..`, repeated `/`). `None`
/// when `..` would climb above `/`.
pub fn normalize_absolute(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

fn absolute_target(field: &str, target: &str) -> Result<String, ComposeError> {
    if !target.starts_with('/') {
        return Err(ComposeError::invalid(
            field,
            format!("target {target:?} must be an absolute path"),
        ));
    }
    normalize_absolute(target)
        .ok_or_else(|| ComposeError::invalid(field, format!("target {target:?} leaves /")))
}

/// The data-disk volume behind an anonymous volume (`- /var/lib/data`):
/// one per service and target, kept across reboots as docker keeps a
/// container's anonymous volumes across restarts.
pub fn anonymous_volume_name(service: &str, target: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(target.as_bytes());
    format!("anon-{service}-{}", hex::encode(&digest[..6]))
}

/// Reads one `volumes:` entry of a service.
pub(crate) fn parse_volume(
    service: &str,
    field: &str,
    item: &Value,
    declared: &BTreeSet<String>,
    findings: &mut Findings,
) -> Result<VolumeMount, ComposeError> {
    let (kind, source, target, read_only) = match item {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            let (source, target, mode) = match parts.as_slice() {
                [source, target] => (*source, *target, None),
                [source, target, mode] => (*source, *target, Some(*mode)),
                [target] => ("", *target, None),
                _ => {
                    return Err(ComposeError::invalid(
                        field,
                        "expected source:target[:ro|rw]",
                    ));
                }
            };
            let mut read_only = false;
            for option in mode.unwrap_or("").split(',').filter(|o| !o.is_empty()) {
                match option {
                    "ro" => read_only = true,
                    "rw" => read_only = false,
                    // SELinux relabelling and propagation have no meaning for
                    // the guest's mounts (no SELinux, every mount private).
                    "z" | "Z" | "rprivate" | "private" | "rslave" | "slave" | "rshared"
                    | "shared" | "cached" | "delegated" | "consistent" | "nocopy" => findings
                        .ignore(
                            field,
                            format!("mount option {option:?} has no effect in a CVM"),
                        ),
                    other => {
                        return Err(ComposeError::invalid(
                            field,
                            format!("mount option {other:?} is not ro, rw or a propagation mode"),
                        ));
                    }
                }
            }
            let kind =
                if source.starts_with('/') || source.starts_with('.') || source.starts_with('~') {
                    "bind"
                } else {
                    "volume"
                };
            (
                kind.to_string(),
                source.to_string(),
                target.to_string(),
                read_only,
            )
        }
        Value::Mapping(m) => {
            for key in m.keys() {
                let key = key_text(key);
                match key.as_str() {
                    "type" | "source" | "target" | "read_only" | "bind" | "volume" | "tmpfs" => {}
                    "consistency" => findings.ignore(
                        format!("{field}.consistency"),
                        "has no effect in a CVM".to_string(),
                    ),
                    other if other.starts_with("x-") => {}
                    other => {
                        return Err(ComposeError::invalid(
                            format!("{field}.{other}"),
                            "is not a mount key this platform knows",
                        ));
                    }
                }
            }
            let get = |k: &str| m.get(k).map(|v| scalar(field, v)).transpose();
            let kind = get("type")?.unwrap_or_else(|| "volume".into());
            let source = get("source")?.unwrap_or_default();
            let target =
                get("target")?.ok_or_else(|| ComposeError::invalid(field, "target is required"))?;
            let read_only = m
                .get("read_only")
                .map(|v| boolean(&format!("{field}.read_only"), v))
                .transpose()?
                .unwrap_or(false);
            if let Some(bind) = m.get("bind").and_then(Value::as_mapping) {
                for (k, _) in bind {
                    let k = key_text(k);
                    if !matches!(k.as_str(), "propagation" | "create_host_path" | "selinux") {
                        return Err(ComposeError::invalid(
                            format!("{field}.bind.{k}"),
                            "is not supported",
                        ));
                    }
                }
            }
            if let Some(volume) = m.get("volume").and_then(Value::as_mapping)
                && volume.get("subpath").is_some()
            {
                return Err(ComposeError::invalid(
                    format!("{field}.volume.subpath"),
                    "is not supported; mount the whole volume",
                ));
            }
            (kind, source, target, read_only)
        }
        _ => {
            return Err(ComposeError::invalid(
                field,
                "must be a string or a mapping",
            ));
        }
    };
    let target = absolute_target(field, &target)?;
    let source = match kind.as_str() {
        "volume" if source.is_empty() => {
            VolumeSource::Named(anonymous_volume_name(service, &target))
        }
        "volume" => {
            if !declared.contains(&source) {
                return Err(ComposeError::invalid(
                    field,
                    format!("named volume {source:?} is not declared under top-level volumes"),
                ));
            }
            VolumeSource::Named(source)
        }
        "bind" => bind_source(field, &source)?,
        "tmpfs" | "npipe" | "cluster" | "image" => {
            return Err(ComposeError::invalid(
                field,
                format!(
                    "mount type {kind:?} is not supported here (use the service's tmpfs key for a tmpfs)"
                ),
            ));
        }
        other => {
            return Err(ComposeError::invalid(
                field,
                format!("unknown mount type {other:?}"),
            ));
        }
    };
    Ok(VolumeMount {
        source,
        target,
        read_only,
    })
}

/// A bind mount's source: a guest API socket, or a path of the CVM.
fn bind_source(field: &str, source: &str) -> Result<VolumeSource, ComposeError> {
    if source.starts_with('~') {
        return Err(ComposeError::invalid(
            field,
            "a path under ~ names a directory on your machine, which the CVM does not have",
        ));
    }
    let absolute = if source.starts_with('/') {
        source.to_string()
    } else {
        format!("{APP_DIR}/{source}")
    };
    let path = normalize_absolute(&absolute)
        .ok_or_else(|| ComposeError::invalid(field, format!("{source:?} leaves /")))?;
    if DSTACK_SOCKETS.contains(&path.as_str()) {
        return Ok(VolumeSource::DstackSocket(path));
    }
    if DOCKER_SOCKETS.contains(&path.as_str()) {
        return Ok(VolumeSource::DockerSocket(path));
    }
    Ok(VolumeSource::CvmPath(path))
}

/// Reads a service's `tmpfs` key: a path or a list of paths, each
/// optionally followed by `:size=…,mode=…` options.
pub(crate) fn parse_tmpfs(field: &str, value: &Value) -> Result<Vec<TmpfsMount>, ComposeError> {
    crate::yaml::one_or_many(field, value)?
        .iter()
        .map(|entry| {
            let (target, options) = entry.split_once(':').unwrap_or((entry, ""));
            let mut mount = TmpfsMount {
                target: absolute_target(field, target)?,
                size: None,
                mode: 0o1777,
            };
            for option in options.split(',').filter(|o| !o.is_empty()) {
                match option.split_once('=') {
                    Some(("size", size)) => {
                        mount.size = Some(crate::yaml::parse_bytes(size).ok_or_else(|| {
                            ComposeError::invalid(field, format!("{size:?} is not a size"))
                        })?)
                    }
                    Some(("mode", mode)) => {
                        mount.mode = u32::from_str_radix(mode, 8).map_err(|_| {
                            ComposeError::invalid(field, format!("{mode:?} is not an octal mode"))
                        })?
                    }
                    None if matches!(
                        option,
                        "rw" | "noexec" | "nosuid" | "nodev" | "exec" | "suid" | "dev"
                    ) => {}
                    _ => {
                        return Err(ComposeError::invalid(
                            field,
                            format!("tmpfs option {option:?} is not size=, mode= or a mount flag"),
                        ));
                    }
                }
            }
            Ok(mount)
        })
        .collect()
}

/// Reads a service's `devices` entries (`/dev/x[:/dev/y[:rwm]]`).
pub(crate) fn parse_devices(
    field: &str,
    value: &Value,
) -> Result<Vec<DeviceMapping>, ComposeError> {
    let items = crate::yaml::list(field, value)?;
    items
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let field = format!("{field}[{i}]");
            if entry.contains("=") {
                return Err(ComposeError::Unsupported {
                    field,
                    reason: format!("CDI device {entry:?}: no device plugins in a CVM"),
                });
            }
            let parts: Vec<&str> = entry.split(':').collect();
            let (source, target, permissions) = match parts.as_slice() {
                [s] => (*s, *s, "rwm"),
                [s, t] if t.starts_with('/') => (*s, *t, "rwm"),
                [s, p] => (*s, *s, *p),
                [s, t, p] => (*s, *t, *p),
                _ => {
                    return Err(ComposeError::invalid(
                        field,
                        "expected /dev/x[:/dev/y[:rwm]]",
                    ));
                }
            };
            if !source.starts_with("/dev/") || !target.starts_with("/dev/") {
                return Err(ComposeError::invalid(
                    field,
                    format!("{entry:?}: a device path must be under /dev"),
                ));
            }
            if permissions.is_empty() || !permissions.chars().all(|c| "rwm".contains(c)) {
                return Err(ComposeError::invalid(
                    field,
                    format!("permissions {permissions:?} must be some of r, w and m"),
                ));
            }
            Ok(DeviceMapping {
                source: normalize_absolute(source).unwrap_or_default(),
                target: normalize_absolute(target).unwrap_or_default(),
                permissions: permissions.to_string(),
            })
        })
        .collect()
}

/// Reads a service's `configs` or `secrets` list. Short form: the name
/// (target `/<name>` for configs, `/run/secrets/<name>` for secrets).
pub(crate) fn parse_file_mounts(
    field: &str,
    value: &Value,
    kind: FileKind,
    declared: &BTreeSet<String>,
) -> Result<Vec<FileMount>, ComposeError> {
    let Value::Sequence(items) = value else {
        return Err(ComposeError::invalid(field, "must be a list"));
    };
    let section = match kind {
        FileKind::Config => "configs",
        FileKind::Secret => "secrets",
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = format!("{field}[{i}]");
            let (source, target, uid, gid, mode) = match item {
                Value::Mapping(m) => {
                    for key in m.keys() {
                        let key = key_text(key);
                        if !matches!(key.as_str(), "source" | "target" | "uid" | "gid" | "mode") {
                            return Err(ComposeError::invalid(
                                format!("{field}.{key}"),
                                "is not source, target, uid, gid or mode",
                            ));
                        }
                    }
                    let source = m
                        .get("source")
                        .map(|v| scalar(&field, v))
                        .transpose()?
                        .ok_or_else(|| ComposeError::invalid(&field, "source is required"))?;
                    let target = m.get("target").map(|v| scalar(&field, v)).transpose()?;
                    let id = |k: &str| -> Result<u32, ComposeError> {
                        m.get(k)
                            .map(|v| unsigned(&format!("{field}.{k}"), v))
                            .transpose()?
                            .map_or(Ok(0), |n| {
                                u32::try_from(n).map_err(|_| {
                                    ComposeError::invalid(format!("{field}.{k}"), "is too large")
                                })
                            })
                    };
                    let mode = m
                        .get("mode")
                        .map(|v| file_mode(&format!("{field}.mode"), v))
                        .transpose()?
                        .unwrap_or(0o444);
                    (source, target, id("uid")?, id("gid")?, mode)
                }
                other => (scalar(&field, other)?, None, 0, 0, 0o444),
            };
            if !declared.contains(&source) {
                return Err(ComposeError::invalid(
                    &field,
                    format!("{source:?} is not declared under top-level {section}"),
                ));
            }
            let target = match (kind, target) {
                (_, Some(t)) if t.starts_with('/') => t,
                (FileKind::Config, Some(t)) => format!("/{t}"),
                (FileKind::Secret, Some(t)) => format!("/run/secrets/{t}"),
                (FileKind::Config, None) => format!("/{source}"),
                (FileKind::Secret, None) => format!("/run/secrets/{source}"),
            };
            Ok(FileMount {
                kind,
                target: absolute_target(&field, &target)?,
                source,
                uid,
                gid,
                mode,
            })
        })
        .collect()
}

/// Reads `shm_size`.
pub(crate) fn parse_shm_size(field: &str, value: &Value) -> Result<u64, ComposeError> {
    bytes(field, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_paths_without_leaving_root() {
        assert_eq!(
            normalize_absolute("/a/./b//c/../d").as_deref(),
            Some("/a/b/d")
        );
        assert_eq!(normalize_absolute("/").as_deref(), Some("/"));
        assert_eq!(normalize_absolute("/.."), None);
    }

    #[test]
    fn tmpfs_options() {
        let v = crate::yaml::load("[\"/run\", \"/cache:size=64m,mode=0700\"]").unwrap();
        let t = parse_tmpfs("t", &v).unwrap();
        assert_eq!(t[0].target, "/run");
        assert_eq!(t[0].size, None);
        assert_eq!(t[1].size, Some(64 << 20));
        assert_eq!(t[1].mode, 0o700);
        assert!(parse_tmpfs("t", &Value::String("rel".into())).is_err());
        assert!(parse_tmpfs("t", &Value::String("/x:uid=3".into())).is_err());
    }

    #[test]
    fn device_forms() {
        let v = crate::yaml::load(
            "[\"/dev/fuse\", \"/dev/a:/dev/b\", \"/dev/c:r\", \"/dev/d:/dev/e:rw\"]",
        )
        .unwrap();
        let d = parse_devices("d", &v).unwrap();
        assert_eq!(
            (d[0].target.as_str(), d[0].permissions.as_str()),
            ("/dev/fuse", "rwm")
        );
        assert_eq!(d[1].target, "/dev/b");
        assert_eq!(
            (d[2].target.as_str(), d[2].permissions.as_str()),
            ("/dev/c", "r")
        );
        assert_eq!(
            (d[3].target.as_str(), d[3].permissions.as_str()),
            ("/dev/e", "rw")
        );
        let bad = crate::yaml::load("[\"/etc/passwd\"]").unwrap();
        assert!(parse_devices("d", &bad).is_err());
        let cdi = crate::yaml::load("[\"nvidia.com/gpu=all\"]").unwrap();
        assert!(matches!(
            parse_devices("d", &cdi),
            Err(ComposeError::Unsupported { .. })
        ));
    }
}
