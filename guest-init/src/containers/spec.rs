//! The OCI runtime spec (`config.json`) of one service: the image config
//! (Entrypoint, Cmd, Env, WorkingDir, User) overridden by the compose service,
//! plus the guest's fixed choices — no network namespace (every service
//! shares the guest's, so services reach each other on 127.0.0.1),
//! per-service /etc/hosts and /etc/resolv.conf — and the service's
//! confinement ([`super::hardening`]): docker's default capabilities, masked
//! paths and seccomp profile, plus no_new_privileges, unless compose changes
//! them. Pure: files are read by the caller.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dstack_compose::{Limits, Service};
use oci_spec::image::Config as ImageConfig;
use oci_spec::runtime::Spec;
use serde_json::json;

use super::hardening::{self, GuestDevice, MASKED_PATHS, READONLY_PATHS};
use crate::containers::ContainerError;

/// The cgroup (under the cgroup2 root) holding every service's cgroup.
pub(crate) const CGROUP_PARENT: &str = "dstack";

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BindMount {
    /// Path in the guest.
    pub(crate) source: PathBuf,
    /// Absolute path in the container.
    pub(crate) destination: String,
    /// Mounted read-only.
    pub(crate) read_only: bool,
}

/// Everything a service's spec is made of.
#[derive(Debug)]
pub(crate) struct SpecInput<'a> {
    /// Compose service name (also the hostname and cgroup name).
    pub(crate) name: &'a str,
    /// The compose service.
    pub(crate) service: &'a Service,
    /// The image's config (`None` when the image has none).
    pub(crate) image: Option<&'a ImageConfig>,
    /// The merged root filesystem.
    pub(crate) rootfs: &'a Path,
    /// The image's `/etc/passwd`, if it has one.
    pub(crate) passwd: Option<&'a str>,
    /// The image's `/etc/group`, if it has one.
    pub(crate) group: Option<&'a str>,
    /// Bind mounts: /etc/hosts, /etc/resolv.conf, volumes, sockets.
    pub(crate) binds: &'a [BindMount],
    /// The guest's devices, created in a privileged service's /dev (empty
    /// for the others).
    pub(crate) devices: &'a [GuestDevice],
    /// RLIMIT_NOFILE (soft and hard) for the process, unless the service
    /// sets its own `ulimits.nofile`.
    pub(crate) nofile: u64,
    /// Device nodes of the guest named by the service's `devices` key,
    /// each to be made at its `target` path.
    pub(crate) mapped_devices: &'a [MappedDevice],
    /// The network namespace to join (`None`: the guest's own).
    pub(crate) netns: Option<&'a Path>,
}

/// A guest device node a service's `devices` entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MappedDevice {
    /// The node as it is in the guest.
    pub(crate) node: GuestDevice,
    /// Path in the container.
    pub(crate) target: String,
    /// cgroup permissions (`rwm`).
    pub(crate) permissions: String,
}

/// A resolved `user:` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvedUser {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Groups from /etc/group that list the user by name.
    pub(crate) additional_gids: Vec<u32>,
    /// Home directory from /etc/passwd, for `HOME`.
    pub(crate) home: Option<String>,
}

/// `(name, uid, gid, home)` rows of an /etc/passwd.
fn passwd_rows(passwd: &str) -> impl Iterator<Item = (&str, u32, u32, &str)> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        Some((
            f.first()?.trim(),
            f.get(2)?.parse().ok()?,
            f.get(3)?.parse().ok()?,
            *f.get(5)?,
        ))
    })
}

/// `(name, gid, members)` rows of an /etc/group.
fn group_rows(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        let members = f
            .get(3)
            .map(|m| m.split(',').map(str::trim).collect())
            .unwrap_or_default();
        Some((f.first()?.trim(), f.get(2)?.parse().ok()?, members))
    })
}

/// Resolves `user[:group]` (names or numbers) the way docker does: a name
/// must exist in the image; a number need not, and then its group is 0.
pub(crate) fn resolve_user(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, String> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = passwd.unwrap_or("");
    let group = group.unwrap_or("");
    let (uid, entry) = match user_part.parse::<u32>() {
        Ok(uid) => (uid, passwd_rows(passwd).find(|row| row.1 == uid)),
        Err(_) => {
            let row = passwd_rows(passwd)
                .find(|row| row.0 == user_part)
                .ok_or_else(|| format!("user {user_part:?} is not in the image's /etc/passwd"))?;
            (row.1, Some(row))
        }
    };
    let gid = match group_part {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_rows(group)
                .find(|row| row.0 == g)
                .map(|row| row.1)
                .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?,
        },
        None => entry.map_or(0, |row| row.2),
    };
    let additional_gids = match (group_part, entry) {
        (None, Some((name, ..))) => group_rows(group)
            .filter(|row| row.1 != gid && row.2.contains(&name))
            .map(|row| row.1)
            .collect(),
        _ => Vec::new(),
    };
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home: entry.map(|row| row.3.to_string()),
    })
}

/// `/etc/hosts` of one container: loopback, then `lines` (the services it
/// reaches by name, from the network plan), then its `extra_hosts`.
pub(crate) fn hosts_file(lines: &[(std::net::Ipv4Addr, Vec<String>)], service: &Service) -> String {
    let mut text = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".to_string();
    for (address, names) in lines {
        text.push_str(&format!("{address}\t{}\n", names.join(" ")));
    }
    for (host, address) in &service.network.extra_hosts {
        text.push_str(&format!("{address}\t{host}\n"));
    }
    text
}

/// `/etc/resolv.conf` of one container: the service's `dns` servers (or
/// the guest's), `dns_search` and `dns_opt`.
pub(crate) fn resolv_conf(guest_dns: &[String], service: &Service) -> String {
    let network = &service.network;
    let servers = if network.dns.is_empty() {
        guest_dns
    } else {
        &network.dns
    };
    let mut text: String = servers
        .iter()
        .map(|server| format!("nameserver {server}\n"))
        .collect();
    if !network.dns_search.is_empty() {
        text.push_str(&format!("search {}\n", network.dns_search.join(" ")));
    }
    if !network.dns_options.is_empty() {
        text.push_str(&format!("options {}\n", network.dns_options.join(" ")));
    }
    text
}

/// Merges the image's `KEY=value` list with compose's map (compose wins) and
/// adds PATH, HOSTNAME and HOME when missing.
fn environment(
    image_env: &[String],
    compose_env: &BTreeMap<String, String>,
    hostname: &str,
    home: Option<&str>,
) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |key: &str, value: &str| match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value.to_string(),
        None => env.push((key.to_string(), value.to_string())),
    };
    for item in image_env {
        let (k, v) = item.split_once('=').unwrap_or((item, ""));
        set(k, v);
    }
    for (k, v) in compose_env {
        set(k, v);
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".into(), DEFAULT_PATH["PATH=".len()..].into()));
    }
    if !env.iter().any(|(k, _)| k == "HOSTNAME") {
        env.push(("HOSTNAME".into(), hostname.into()));
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push(("HOME".into(), home.unwrap_or("/root").into()));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The argv: compose's entrypoint replaces the image's and then (as in
/// docker) also drops the image's Cmd; compose's command replaces Cmd.
fn argv(service: &Service, image: Option<&ImageConfig>) -> Vec<String> {
    let image_entrypoint = image
        .and_then(|c| c.entrypoint().clone())
        .unwrap_or_default();
    let image_cmd = image.and_then(|c| c.cmd().clone()).unwrap_or_default();
    let (entrypoint, cmd) = match (&service.entrypoint, &service.command) {
        (Some(e), Some(c)) => (e.clone(), c.clone()),
        (Some(e), None) => (e.clone(), Vec::new()),
        (None, Some(c)) => (image_entrypoint, c.clone()),
        (None, None) => (image_entrypoint, image_cmd),
    };
    entrypoint.into_iter().chain(cmd).collect()
}

/// Builds the runtime spec of one service.
pub(crate) fn build_spec(input: &SpecInput<'_>) -> Result<Spec, ContainerError> {
    let service = input.service;
    let args = argv(service, input.image);
    if args.is_empty() {
        return Err(ContainerError::spec(
            input.name,
            "no command: the image has no Entrypoint or Cmd and compose sets neither",
        ));
    }
    let user_spec = service
        .user
        .clone()
        .or_else(|| input.image.and_then(|c| c.user().clone()))
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "0".into());
    let mut user = resolve_user(&user_spec, input.passwd, input.group)
        .map_err(|reason| ContainerError::spec(input.name, reason))?;
    for group in &service.group_add {
        let gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_rows(input.group.unwrap_or(""))
                .find(|row| row.0 == group)
                .map(|row| row.1)
                .ok_or_else(|| {
                    ContainerError::spec(
                        input.name,
                        format!("group_add: group {group:?} is not in the image's /etc/group"),
                    )
                })?,
        };
        if gid != user.gid && !user.additional_gids.contains(&gid) {
            user.additional_gids.push(gid);
        }
    }
    let hostname = service
        .network
        .hostname
        .clone()
        .unwrap_or_else(|| input.name.to_string());
    let image_env = input
        .image
        .and_then(|c| c.env().clone())
        .unwrap_or_default();
    let env = environment(
        &image_env,
        &service.environment,
        &hostname,
        user.home.as_deref(),
    );
    let cwd = service
        .working_dir
        .clone()
        .or_else(|| input.image.and_then(|c| c.working_dir().clone()))
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/".into());

    let security = &service.security;
    let privileged = security.privileged;
    let sys_mode = if privileged { "rw" } else { "ro" };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777",
                           format!("size={}", service.shm_size.unwrap_or(64 << 20))]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", sys_mode]}),
        // The service's own cgroup (its cgroup namespace's root), read-only
        // unless privileged, as docker mounts it.
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", sys_mode]}),
    ];
    for tmpfs in &service.tmpfs {
        let mut options = vec![
            "nosuid".to_string(),
            "nodev".to_string(),
            format!("mode={:o}", tmpfs.mode),
        ];
        if let Some(size) = tmpfs.size {
            options.push(format!("size={size}"));
        }
        mounts.push(
            json!({"destination": tmpfs.target, "type": "tmpfs", "source": "tmpfs",
                           "options": options}),
        );
    }
    for bind in input.binds {
        let mode = if bind.read_only { "ro" } else { "rw" };
        mounts.push(json!({"destination": bind.destination, "type": "bind",
                           "source": bind.source, "options": ["rbind", "rprivate", mode]}));
    }
    let caps = hardening::capabilities(security);
    let (masked, readonly): (&[&str], &[&str]) = if privileged {
        (&[], &[])
    } else {
        (&MASKED_PATHS, &READONLY_PATHS)
    };
    let mut process = json!({
        "terminal": false,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": user.additional_gids},
        "args": args,
        "env": env,
        "cwd": cwd,
        // No inheritable or ambient set, as docker: a non-root process keeps
        // no capabilities across execve (unless a file grants them).
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": rlimits(service, input.nofile)
    });
    if let Some(adj) = service.limits.oom_score_adj {
        process["oomScoreAdj"] = json!(adj);
    }
    // With no_new_privileges off the field is left out rather than set to
    // false: libcontainer installs the seccomp filter while it still holds
    // CAP_SYS_ADMIN only when the field is absent; with `false` it would load
    // the filter after dropping capabilities and the kernel would refuse it.
    if security.no_new_privileges {
        process["noNewPrivileges"] = json!(true);
    }
    let mut linux = json!({
        // Absolute, so libcontainer uses it as is (not `:youki:<id>`).
        "cgroupsPath": format!("/{CGROUP_PARENT}/{}", input.name),
        "namespaces": namespaces(service, input.netns),
        "maskedPaths": masked,
        "readonlyPaths": readonly,
        "resources": resources(&service.limits, input.mapped_devices)
    });
    if !service.sysctls.is_empty() {
        linux["sysctl"] = json!(service.sysctls);
    }
    // Besides the default nodes libcontainer always creates (null, zero,
    // full, random, urandom, tty, ptmx), a privileged service gets each of the
    // guest's devices, as docker gives it the host's. (Made as new nodes in
    // the service's own /dev, so nothing it does there touches the guest's.)
    let device_nodes: Vec<serde_json::Value> = input
        .devices
        .iter()
        .map(|d| (d, d.path.as_str()))
        .chain(
            input
                .mapped_devices
                .iter()
                .map(|m| (&m.node, m.target.as_str())),
        )
        .map(|(d, path)| {
            json!({"path": path, "type": d.kind.to_string(), "major": d.major,
                   "minor": d.minor, "fileMode": d.mode, "uid": d.uid, "gid": d.gid})
        })
        .collect();
    if !device_nodes.is_empty() {
        linux["devices"] = json!(device_nodes);
    }
    let filter = hardening::seccomp_filter(security, &caps)
        .map_err(|e| ContainerError::spec(input.name, format!("invalid seccomp filter: {e}")))?;
    if let Some(filter) = filter {
        linux["seccomp"] = serde_json::to_value(filter).map_err(|e| {
            ContainerError::spec(input.name, format!("invalid seccomp filter: {e}"))
        })?;
    }
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": input.rootfs, "readonly": service.read_only},
        "hostname": hostname,
        "mounts": mounts,
        "linux": linux
    });
    let mut spec = spec;
    if let Some(domain) = &service.network.domainname {
        spec["domainname"] = json!(domain);
    }
    serde_json::from_value(spec)
        .map_err(|e| ContainerError::spec(input.name, format!("invalid runtime spec: {e}")))
}

/// The namespaces a service gets: its own pid, ipc, uts, mount and cgroup
/// namespaces, minus those it shares with the guest (`pid: host`, ...), and
/// the network namespace laid out for it (none: the guest's stack).
fn namespaces(service: &Service, netns: Option<&Path>) -> Vec<serde_json::Value> {
    let host = service.host_namespaces;
    let network = netns.map(|path| json!({"type": "network", "path": path}));
    [
        ("pid", host.pid),
        ("ipc", host.ipc),
        ("uts", host.uts),
        ("mount", false),
        ("cgroup", false),
    ]
    .into_iter()
    .filter(|(_, shared)| !shared)
    .map(|(kind, _)| json!({"type": kind}))
    .chain(network)
    .collect()
}

/// `RLIMIT_NOFILE` (the guest's default unless the service sets it) and
/// every other `ulimits` entry.
fn rlimits(service: &Service, nofile: u64) -> Vec<serde_json::Value> {
    let mut limits = vec![];
    if !service.ulimits.contains_key("nofile") {
        limits.push(json!({"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}));
    }
    for (name, limit) in &service.ulimits {
        limits.push(
            json!({"type": format!("RLIMIT_{}", name.to_ascii_uppercase()),
                           "hard": limit.hard, "soft": limit.soft}),
        );
    }
    limits
}

/// The CFS period docker uses with `cpus`.
const CPU_PERIOD_US: u64 = 100_000;

/// cgroup v2 limits (libcontainer writes memory.max, memory.low, cpu.max,
/// cpu.weight, cpuset.cpus and pids.max from these) and the device rules:
/// deny all, then docker's default nodes, then the service's `devices`.
fn resources(limits: &Limits, mapped: &[MappedDevice]) -> serde_json::Value {
    let mut resources = json!({});
    let mut memory = serde_json::Map::new();
    if let Some(max) = limits.memory {
        memory.insert("limit".into(), json!(max));
        // Without swap in the guest, memory+swap equals memory unless set.
        let swap = limits
            .memory_swap
            .unwrap_or_else(|| i64::try_from(max).unwrap_or(i64::MAX));
        memory.insert("swap".into(), json!(swap));
    }
    if let Some(low) = limits.memory_reservation {
        memory.insert("reservation".into(), json!(low));
    }
    if !memory.is_empty() {
        resources["memory"] = json!(memory);
    }
    let mut cpu = serde_json::Map::new();
    if let Some(quota) = limits.cpu_quota_us(CPU_PERIOD_US) {
        cpu.insert("quota".into(), json!(quota));
        cpu.insert("period".into(), json!(CPU_PERIOD_US));
    }
    if let Some(shares) = limits.cpu_shares {
        cpu.insert("shares".into(), json!(shares.clamp(2, 262_144)));
    }
    if let Some(set) = &limits.cpuset {
        cpu.insert("cpus".into(), json!(set));
    }
    if !cpu.is_empty() {
        resources["cpu"] = json!(cpu);
    }
    if let Some(pids) = limits.pids {
        resources["pids"] = json!({"limit": pids});
    }
    if !mapped.is_empty() {
        resources["devices"] = json!(
            mapped
                .iter()
                .map(|m| json!({"allow": true, "type": m.node.kind.to_string(),
                                "major": m.node.major, "minor": m.node.minor,
                                "access": m.permissions}))
                .collect::<Vec<_>>()
        );
    }
    resources
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
