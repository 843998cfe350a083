//! One compose service: what this platform reads of it, and how each key
//! is classified — honoured, ignored with a reason (it has no effect in a
//! CVM, as `labels` or `logging`), or refused with a named error (running
//! the service without it would not be what the file asks for).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::interpolate::Vars;
use crate::limits::{Limits, Ulimit, parse_ulimits};
use crate::mounts::{
    DeviceMapping, FileKind, FileMount, TmpfsMount, VolumeMount, parse_devices, parse_file_mounts,
    parse_shm_size, parse_tmpfs, parse_volume,
};
use crate::network::ServiceNetwork;
use crate::yaml::{
    Mapping, Value, boolean, duration, key_text, list, list_or_dict, one_or_many, scalar,
    string_list, unsigned,
};
use crate::{ComposeError, Findings, Security};

/// The names compose files give the one platform a CVM runs.
pub const PLATFORMS: [&str; 4] = ["linux/amd64", "linux/x86_64", "amd64", "x86_64"];

/// How a service's image is built in the CVM (`build:`), by its container
/// engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// Where an inline Dockerfile is built in the CVM: an absolute path (a
    /// relative `context` is resolved under `/dstack`, as upstream's guest
    /// runs docker compose there). A shipped context is used instead when
    /// there is one ([`BuildSpec::shipped_context`]).
    pub context: String,
    /// `context` as written (`.` when not given): on the developer's
    /// machine, a directory relative to the compose file's, which `dstack
    /// vm deploy` packs and ships when the build reads a Dockerfile file.
    pub source_context: String,
    /// The SHA-256 (hex) of the context tar the app-compose's
    /// `build_contexts` measures for this service; the guest builds from
    /// that tar, unpacked. Set by [`crate::AppCompose`]'s parse.
    pub shipped_context: Option<String>,
    /// The Dockerfile, relative to the context (`dockerfile`).
    pub dockerfile: Option<String>,
    /// The Dockerfile's text (`dockerfile_inline`).
    pub dockerfile_inline: Option<String>,
    /// `args` (a value-less arg takes the app's variable, or is left out).
    pub args: BTreeMap<String, String>,
    /// `target`: the stage to build.
    pub target: Option<String>,
    /// `no_cache`.
    pub no_cache: bool,
}

impl BuildSpec {
    /// The Dockerfile's path inside the context (`Dockerfile` by default).
    pub fn dockerfile_path(&self) -> &str {
        self.dockerfile.as_deref().unwrap_or("Dockerfile")
    }

    /// Whether the build reads files from the developer's machine (a
    /// Dockerfile file and its context), which must be shipped to the CVM.
    /// An inline Dockerfile is in the measured compose file itself.
    pub fn reads_local_files(&self) -> bool {
        self.dockerfile_inline.is_none()
    }
}

/// One service.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Image reference (for a built image: `image:` if set, else
    /// `dstack-build/<service>:latest`).
    pub image: String,
    /// `build:`.
    pub build: Option<BuildSpec>,
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
    /// `tmpfs` mounts.
    pub tmpfs: Vec<TmpfsMount>,
    /// `configs` and `secrets` files.
    pub files: Vec<FileMount>,
    /// `devices`.
    pub devices: Vec<DeviceMapping>,
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
    /// `group_add`: extra groups, by name (from the image) or number.
    pub group_add: Vec<String>,
    /// Time to wait after the stop signal before SIGKILL.
    pub stop_grace_period: Duration,
    /// The stop signal (default SIGTERM), as a number.
    pub stop_signal: Option<i32>,
    /// `privileged`, `cap_add`, `cap_drop`, `security_opt`.
    pub security: Security,
    /// `pid: host`, `ipc: host`, `uts: host`.
    pub host_namespaces: HostNamespaces,
    /// `read_only`: the root filesystem is mounted read-only.
    pub read_only: bool,
    /// `shm_size`, bytes (default 64 MiB).
    pub shm_size: Option<u64>,
    /// `sysctls`.
    pub sysctls: BTreeMap<String, String>,
    /// `ulimits`.
    pub ulimits: BTreeMap<String, Ulimit>,
    /// cgroup limits.
    pub limits: Limits,
    /// Network keys.
    pub network: ServiceNetwork,
}

/// Namespaces a service shares with the CVM instead of getting its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostNamespaces {
    /// `pid: host`: sees (and may signal) every process of the CVM.
    pub pid: bool,
    /// `ipc: host`.
    pub ipc: bool,
    /// `uts: host`: the CVM's hostname.
    pub uts: bool,
}

/// A published port: the guest listens on `published` and forwards to the
/// service's `target` port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    /// Guest port.
    pub published: u16,
    /// Port the service listens on.
    pub target: u16,
    /// The transport.
    pub protocol: Protocol,
}

/// A published port's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// TCP (proxied by the guest to the service's address).
    #[default]
    Tcp,
    /// UDP (relayed by the guest, one upstream socket per client).
    Udp,
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

/// What the top level declares, which a service's references must name.
#[derive(Debug, Default)]
pub(crate) struct Declared {
    pub(crate) volumes: BTreeSet<String>,
    pub(crate) networks: BTreeSet<String>,
    pub(crate) configs: BTreeSet<String>,
    pub(crate) secrets: BTreeSet<String>,
}

/// How this platform treats a service key.
enum Rule {
    /// Read below.
    Read,
    /// Accepted with no effect in a CVM; the reason says why.
    Ignore(&'static str),
    /// Refused; the reason says why and what to do instead.
    Refuse(&'static str),
}

const LOG_NOTE: &str = "output is collected by the CVM and read with `dstack vm logs`";

fn rule(key: &str) -> Option<Rule> {
    use Rule::*;
    Some(match key {
        "image" | "build" | "command" | "entrypoint" | "environment" | "env_file" | "ports"
        | "volumes" | "restart" | "depends_on" | "healthcheck" | "working_dir" | "user"
        | "group_add" | "stop_grace_period" | "stop_signal" | "privileged" | "cap_add"
        | "cap_drop" | "security_opt" | "pid" | "ipc" | "uts" | "read_only" | "tmpfs"
        | "devices" | "configs" | "secrets" | "shm_size" | "ulimits" | "sysctls" | "deploy"
        | "mem_limit" | "mem_reservation" | "memswap_limit" | "cpus" | "cpu_shares" | "cpuset"
        | "pids_limit" | "oom_score_adj" | "network_mode" | "networks" | "hostname"
        | "domainname" | "container_name" | "extra_hosts" | "dns" | "dns_search" | "dns_opt"
        | "links" | "profiles" | "platform" | "pull_policy" | "init" | "scale" | "gpus"
        | "runtime" | "cgroup" => Read,
        "labels" | "label_file" | "annotations" => {
            Ignore("labels are metadata; nothing in a CVM reads them")
        }
        "logging" => Ignore(LOG_NOTE),
        "expose" => {
            Ignore("informational: services reach each other's ports on their networks without it")
        }
        "stdin_open" | "tty" | "attach" => {
            Ignore("services run detached; there is no terminal to attach")
        }
        "mac_address" => Ignore("interfaces inside a CVM get their own addresses"),
        "mem_swappiness" => Ignore("the CVM has no swap"),
        "develop" => Ignore("compose watch is a development tool; a CVM runs what was measured"),
        "extends" => {
            Refuse("extends reads another file, which the CVM does not have; inline the service")
        }
        "external_links" => Refuse("there are no containers outside the app to link to"),
        "volumes_from" => Refuse("not supported; mount the same named volumes in both services"),
        "userns_mode" => Refuse("user namespace remapping is not supported"),
        "cgroup_parent" => Refuse("services' cgroups are placed by the CVM"),
        "credential_spec" | "isolation" => Refuse("a Windows container option"),
        "storage_opt" => Refuse(
            "per-container storage quotas are not supported; limit the data disk size instead",
        ),
        "blkio_config" => Refuse("block I/O limits are not enforced in a CVM"),
        "cpu_count" | "cpu_percent" => Refuse("a Windows container option; use cpus"),
        "cpu_period" | "cpu_quota" | "cpu_rt_period" | "cpu_rt_runtime" => {
            Refuse("not supported; use cpus")
        }
        "device_cgroup_rules" => Refuse("not supported; list the devices under devices"),
        "oom_kill_disable" => Refuse("cgroup v2 cannot disable the OOM killer"),
        "post_start" | "pre_stop" => {
            Refuse("lifecycle hooks are not supported; use an init service with depends_on")
        }
        "provider" | "models" | "use_api_socket" => Refuse("not supported in a CVM"),
        _ => return None,
    })
}

/// The signal names `stop_signal` may use, with their numbers on x86-64.
const SIGNALS: [(&str, i32); 14] = [
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGUSR2", 12),
    ("SIGTERM", 15),
    ("SIGCONT", 18),
    ("SIGSTOP", 19),
    ("SIGTSTP", 20),
    ("SIGWINCH", 28),
    ("SIGPWR", 30),
    ("SIGRTMIN+3", 37),
    ("SIGRTMIN", 34),
];

fn signal(field: &str, value: &Value) -> Result<i32, ComposeError> {
    let text = scalar(field, value)?;
    let upper = text.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper.clone()
    } else {
        format!("SIG{upper}")
    };
    if let Ok(n) = upper.parse::<i32>()
        && (1..=64).contains(&n)
    {
        return Ok(n);
    }
    SIGNALS
        .iter()
        .find(|(s, _)| *s == name)
        .map(|(_, n)| *n)
        .ok_or_else(|| ComposeError::invalid(field, format!("{text:?} is not a signal name")))
}

/// Whether a service with `profiles` is started: only when one of them is
/// in `COMPOSE_PROFILES` (comma-separated; `*` enables all), as `docker
/// compose up` decides.
pub(crate) fn profile_active(profiles: &[String], vars: &Vars) -> bool {
    if profiles.is_empty() {
        return true;
    }
    let enabled: Vec<&str> = vars
        .get("COMPOSE_PROFILES")
        .map(|p| p.split(',').map(str::trim).collect())
        .unwrap_or_default();
    enabled.contains(&"*") || profiles.iter().any(|p| enabled.contains(&p.as_str()))
}

/// Reads a service's `profiles` (empty when it has none).
pub(crate) fn profiles(name: &str, value: &Value) -> Result<Vec<String>, ComposeError> {
    match value.get("profiles") {
        None => Ok(Vec::new()),
        Some(v) => list(&format!("services.{name}.profiles"), v),
    }
}

impl Service {
    /// Whether the service needs the CVM's container engine: it builds its
    /// image or mounts the Docker Engine API socket.
    pub fn needs_engine(&self) -> bool {
        self.build.is_some() || self.uses_docker_socket()
    }

    /// Whether the service mounts the Docker Engine API socket.
    pub fn uses_docker_socket(&self) -> bool {
        self.volumes
            .iter()
            .any(|v| matches!(v.source, crate::VolumeSource::DockerSocket(_)))
    }

    /// Reads one service. Every key's problem is recorded in `findings`
    /// (so a check lists them all); `None` when any key was refused.
    pub(crate) fn parse(
        name: &str,
        value: &Value,
        declared: &Declared,
        findings: &mut Findings,
    ) -> Option<Self> {
        let base = format!("services.{name}");
        let Some(map) = value.as_mapping() else {
            findings.refuse(ComposeError::invalid(base, "must be a mapping"));
            return None;
        };
        let refused_before = findings.refused.len();
        for key in map.keys() {
            let key = key_text(key);
            let field = format!("{base}.{key}");
            match rule(&key) {
                Some(Rule::Read) => {}
                Some(Rule::Ignore(reason)) => findings.ignore(field, reason),
                Some(Rule::Refuse(reason)) => findings.refuse(ComposeError::Unsupported {
                    field,
                    reason: reason.into(),
                }),
                None if key.starts_with("x-") => {}
                None => findings.refuse(ComposeError::invalid(
                    field,
                    "is not a compose service key this platform knows",
                )),
            }
        }
        let service = ServiceReader {
            base: &base,
            map,
            declared,
        }
        .read(name, findings);
        match service {
            Ok(service) if findings.refused.len() == refused_before => Some(service),
            Ok(_) => None,
            Err(e) => {
                findings.refuse(e);
                None
            }
        }
    }
}

struct ServiceReader<'a> {
    base: &'a str,
    map: &'a Mapping,
    declared: &'a Declared,
}

impl ServiceReader<'_> {
    fn field(&self, key: &str) -> String {
        format!("{}.{key}", self.base)
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    /// Reads every key; the first refusal of a key is recorded and reading
    /// goes on, so one pass names every problem.
    fn read(&self, name: &str, findings: &mut Findings) -> Result<Service, ComposeError> {
        let f = |k: &str| self.field(k);
        let keep = |r: Result<(), ComposeError>, findings: &mut Findings| {
            if let Err(e) = r {
                findings.refuse(e);
            }
        };
        let mut service = Service {
            image: String::new(),
            build: None,
            command: None,
            entrypoint: None,
            environment: BTreeMap::new(),
            ports: Vec::new(),
            volumes: Vec::new(),
            tmpfs: Vec::new(),
            files: Vec::new(),
            devices: Vec::new(),
            restart: RestartPolicy::No,
            depends_on: Vec::new(),
            healthcheck: None,
            working_dir: None,
            user: None,
            group_add: Vec::new(),
            stop_grace_period: Duration::from_secs(10),
            stop_signal: None,
            security: Security::default(),
            host_namespaces: HostNamespaces::default(),
            read_only: false,
            shm_size: None,
            sysctls: BTreeMap::new(),
            ulimits: BTreeMap::new(),
            limits: Limits::default(),
            network: ServiceNetwork::default(),
        };
        let s = &mut service;
        keep(self.image(name, s, findings), findings);
        keep(self.platform(findings), findings);
        keep(self.process(s), findings);
        keep(self.environment(s, findings), findings);
        keep(self.ports(s), findings);
        let mounts = self.mounts(name, s, findings);
        keep(mounts, findings);
        keep(self.lifecycle(name, s), findings);
        keep(self.confinement(s), findings);
        match Limits::parse(self.base, self.map, findings) {
            Ok(limits) => s.limits = limits,
            Err(e) => keep(Err(e), findings),
        }
        match ServiceNetwork::parse(self.base, self.map, &self.declared.networks, findings) {
            Ok(network) => s.network = network,
            Err(e) => keep(Err(e), findings),
        }
        if let Some(links) = self.get("links") {
            // Services already reach each other by name; a link's alias
            // (`db:database`) is one more name for the same service.
            keep(one_or_many(&f("links"), links).map(|_| ()), findings);
        }
        Ok(service)
    }

    fn image(
        &self,
        name: &str,
        s: &mut Service,
        findings: &mut Findings,
    ) -> Result<(), ComposeError> {
        if let Some(build) = self.get("build") {
            s.build = Some(crate::build::parse_build(
                &self.field("build"),
                build,
                findings,
            )?);
            s.image = match self.get("image") {
                Some(Value::String(image)) if !image.trim().is_empty() => image.trim().to_string(),
                _ => format!("dstack-build/{}:latest", name.to_ascii_lowercase()),
            };
            return Ok(());
        }
        match self.get("image") {
            Some(Value::String(image)) if !image.trim().is_empty() => {
                s.image = image.trim().to_string();
                Ok(())
            }
            _ => Err(ComposeError::invalid(self.field("image"), "is required")),
        }
    }

    fn platform(&self, findings: &mut Findings) -> Result<(), ComposeError> {
        if let Some(platform) = self.get("platform") {
            let text = scalar(&self.field("platform"), platform)?;
            if !PLATFORMS.contains(&text.trim().to_ascii_lowercase().as_str()) {
                return Err(ComposeError::UnsupportedPlatform {
                    field: self.field("platform"),
                    platform: text,
                });
            }
            findings.ignore(
                self.field("platform"),
                "linux/amd64 is the platform every CVM runs",
            );
        }
        if let Some(policy) = self.get("pull_policy") {
            let text = scalar(&self.field("pull_policy"), policy)?;
            match text.as_str() {
                "always" | "missing" | "if_not_present" | "daily" | "weekly" => findings.ignore(
                    self.field("pull_policy"),
                    "a CVM pulls every image when it boots",
                ),
                t if t.starts_with("every_") => findings.ignore(
                    self.field("pull_policy"),
                    "a CVM pulls every image when it boots",
                ),
                other => {
                    return Err(ComposeError::Unsupported {
                        field: self.field("pull_policy"),
                        reason: format!(
                            "{other:?}: a CVM starts with no local images, so it must pull"
                        ),
                    });
                }
            }
        }
        if let Some(runtime) = self.get("runtime") {
            let text = scalar(&self.field("runtime"), runtime)?;
            if text != "runc" {
                return Err(if text.contains("nvidia") {
                    ComposeError::GpuUnavailable {
                        field: self.field("runtime"),
                    }
                } else {
                    ComposeError::Unsupported {
                        field: self.field("runtime"),
                        reason: format!(
                            "runtime {text:?}: services run under the CVM's own OCI runtime"
                        ),
                    }
                });
            }
        }
        if self.get("gpus").is_some() {
            return Err(ComposeError::GpuUnavailable {
                field: self.field("gpus"),
            });
        }
        if let Some(scale) = self.get("scale") {
            let n = unsigned(&self.field("scale"), scale)?;
            if n != 1 {
                return Err(ComposeError::Unsupported {
                    field: self.field("scale"),
                    reason: format!("{n} instances: a CVM runs one instance of each service"),
                });
            }
        }
        if let Some(init) = self.get("init")
            && boolean(&self.field("init"), init)?
        {
            findings.ignore(
                self.field("init"),
                "no init process is injected: the command runs as the container's PID 1",
            );
        }
        if let Some(cgroup) = self.get("cgroup") {
            let text = scalar(&self.field("cgroup"), cgroup)?;
            if text != "private" {
                return Err(ComposeError::Unsupported {
                    field: self.field("cgroup"),
                    reason: format!("cgroup {text:?}: each service has its own cgroup namespace"),
                });
            }
        }
        Ok(())
    }

    fn process(&self, s: &mut Service) -> Result<(), ComposeError> {
        s.command = self
            .get("command")
            .map(|v| string_list(&self.field("command"), v))
            .transpose()?;
        s.entrypoint = self
            .get("entrypoint")
            .map(|v| string_list(&self.field("entrypoint"), v))
            .transpose()?;
        s.working_dir = self
            .get("working_dir")
            .map(|v| scalar(&self.field("working_dir"), v))
            .transpose()?;
        if let Some(dir) = &s.working_dir
            && !dir.starts_with('/')
        {
            return Err(ComposeError::invalid(
                self.field("working_dir"),
                "must be an absolute path",
            ));
        }
        s.user = self
            .get("user")
            .map(|v| scalar(&self.field("user"), v))
            .transpose()?;
        if let Some(groups) = self.get("group_add") {
            s.group_add = list(&self.field("group_add"), groups)?;
        }
        Ok(())
    }

    fn environment(&self, s: &mut Service, findings: &mut Findings) -> Result<(), ComposeError> {
        if let Some(env_file) = self.get("env_file") {
            self.env_file(env_file, findings)?;
        }
        let field = self.field("environment");
        if let Some(env) = self.get("environment") {
            for (key, value) in list_or_dict(&field, env, '=')? {
                if key.is_empty() || key.contains('\0') || key.contains('=') {
                    return Err(ComposeError::invalid(
                        &field,
                        format!("bad variable name {key:?}"),
                    ));
                }
                s.environment.insert(key, value.unwrap_or_default());
            }
        }
        Ok(())
    }

    /// `env_file` names files beside the compose file on the developer's
    /// machine; the CVM receives only the compose file. A file marked
    /// `required: false` is skipped, as docker compose skips a missing one.
    fn env_file(&self, value: &Value, findings: &mut Findings) -> Result<(), ComposeError> {
        let field = self.field("env_file");
        let entries: Vec<(String, bool)> = match value {
            Value::Sequence(items) => items
                .iter()
                .map(|item| match item {
                    Value::Mapping(m) => Ok((
                        m.get("path")
                            .map(|p| scalar(&field, p))
                            .transpose()?
                            .unwrap_or_default(),
                        m.get("required")
                            .map(|r| boolean(&field, r))
                            .transpose()?
                            .unwrap_or(true),
                    )),
                    other => Ok((scalar(&field, other)?, true)),
                })
                .collect::<Result<_, ComposeError>>()?,
            other => vec![(scalar(&field, other)?, true)],
        };
        for (path, required) in entries {
            if required {
                return Err(ComposeError::Unsupported {
                    field,
                    reason: format!(
                        "{path:?} is a file on your machine, which the CVM does not receive: pass its values as encrypted env (dstack vm deploy --env-file {path}) and list them under environment:"
                    ),
                });
            }
            findings.ignore(
                field.clone(),
                format!("{path:?} (required: false) is not in the CVM, so it is skipped"),
            );
        }
        Ok(())
    }

    fn ports(&self, s: &mut Service) -> Result<(), ComposeError> {
        match self.get("ports") {
            None => {}
            Some(Value::Sequence(items)) => {
                for (i, item) in items.iter().enumerate() {
                    s.ports
                        .extend(parse_port(&format!("{}[{i}]", self.field("ports")), item)?);
                }
            }
            Some(_) => return Err(ComposeError::invalid(self.field("ports"), "must be a list")),
        }
        let mut seen = BTreeSet::new();
        for port in &s.ports {
            if !seen.insert((port.published, port.protocol == Protocol::Udp)) {
                return Err(ComposeError::invalid(
                    self.field("ports"),
                    format!("port {} is published twice", port.published),
                ));
            }
        }
        Ok(())
    }

    fn mounts(
        &self,
        name: &str,
        s: &mut Service,
        findings: &mut Findings,
    ) -> Result<(), ComposeError> {
        match self.get("volumes") {
            None => {}
            Some(Value::Sequence(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let field = format!("{}[{i}]", self.field("volumes"));
                    s.volumes.push(parse_volume(
                        name,
                        &field,
                        item,
                        &self.declared.volumes,
                        findings,
                    )?);
                }
            }
            Some(_) => {
                return Err(ComposeError::invalid(
                    self.field("volumes"),
                    "must be a list",
                ));
            }
        }
        if let Some(tmpfs) = self.get("tmpfs") {
            s.tmpfs = parse_tmpfs(&self.field("tmpfs"), tmpfs)?;
        }
        if let Some(devices) = self.get("devices") {
            s.devices = parse_devices(&self.field("devices"), devices)?;
        }
        if let Some(configs) = self.get("configs") {
            s.files.extend(parse_file_mounts(
                &self.field("configs"),
                configs,
                FileKind::Config,
                &self.declared.configs,
            )?);
        }
        if let Some(secrets) = self.get("secrets") {
            s.files.extend(parse_file_mounts(
                &self.field("secrets"),
                secrets,
                FileKind::Secret,
                &self.declared.secrets,
            )?);
        }
        if let Some(size) = self.get("shm_size") {
            s.shm_size = Some(parse_shm_size(&self.field("shm_size"), size)?);
        }
        let mut targets = BTreeSet::new();
        let all = s
            .volumes
            .iter()
            .map(|v| v.target.as_str())
            .chain(s.tmpfs.iter().map(|t| t.target.as_str()))
            .chain(s.files.iter().map(|f| f.target.as_str()));
        for target in all {
            if !targets.insert(target) {
                return Err(ComposeError::invalid(
                    self.base,
                    format!("two mounts share the target {target:?}"),
                ));
            }
        }
        Ok(())
    }

    fn lifecycle(&self, name: &str, s: &mut Service) -> Result<(), ComposeError> {
        let f = |k: &str| self.field(k);
        let deploy_policy = self.get("deploy").and_then(|d| d.get("restart_policy"));
        s.restart = match (self.get("restart"), deploy_policy) {
            (Some(v), _) => restart_policy(&f("restart"), &scalar(&f("restart"), v)?)?,
            (None, Some(policy)) => {
                let field = format!("{}.restart_policy", f("deploy"));
                let condition = policy
                    .get("condition")
                    .map(|c| scalar(&field, c))
                    .transpose()?
                    .unwrap_or_else(|| "any".into());
                let attempts = policy
                    .get("max_attempts")
                    .map(|a| unsigned(&field, a))
                    .transpose()?
                    .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
                match condition.as_str() {
                    "none" => RestartPolicy::No,
                    "any" if attempts.is_none() => RestartPolicy::Always,
                    "any" | "on-failure" => RestartPolicy::OnFailure(attempts),
                    other => {
                        return Err(ComposeError::invalid(
                            field,
                            format!("condition {other:?} is not none, on-failure or any"),
                        ));
                    }
                }
            }
            (None, None) => RestartPolicy::No,
        };
        s.depends_on = match self.get("depends_on") {
            None => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .map(|v| {
                    Ok(Dependency {
                        service: scalar(&f("depends_on"), v)?,
                        condition: DependencyCondition::Started,
                    })
                })
                .collect::<Result<_, ComposeError>>()?,
            Some(Value::Mapping(m)) => m
                .iter()
                .map(|(k, v)| {
                    let service = key_text(k);
                    let field = format!("{}.{service}", f("depends_on"));
                    if let Some(settings) = v.as_mapping() {
                        for key in settings.keys() {
                            let key = key_text(key);
                            if !matches!(key.as_str(), "condition" | "required" | "restart") {
                                return Err(ComposeError::invalid(
                                    format!("{field}.{key}"),
                                    "is not condition, required or restart",
                                ));
                            }
                        }
                    }
                    let condition = match v
                        .get("condition")
                        .map(|c| scalar(&field, c))
                        .transpose()?
                        .as_deref()
                    {
                        None | Some("service_started") => DependencyCondition::Started,
                        Some("service_healthy") => DependencyCondition::Healthy,
                        Some("service_completed_successfully") => {
                            DependencyCondition::CompletedSuccessfully
                        }
                        Some(other) => {
                            return Err(ComposeError::invalid(
                                field,
                                format!("unknown condition {other:?}"),
                            ));
                        }
                    };
                    Ok(Dependency { service, condition })
                })
                .collect::<Result<_, ComposeError>>()?,
            Some(_) => {
                return Err(ComposeError::invalid(
                    f("depends_on"),
                    "must be a list or a mapping",
                ));
            }
        };
        if s.depends_on.iter().any(|d| d.service == name) {
            return Err(ComposeError::invalid(
                f("depends_on"),
                "a service cannot depend on itself",
            ));
        }
        s.healthcheck = self
            .get("healthcheck")
            .map(|v| parse_healthcheck(&f("healthcheck"), v))
            .transpose()?
            .flatten();
        s.stop_grace_period = duration(
            &f("stop_grace_period"),
            self.get("stop_grace_period"),
            Duration::from_secs(10),
        )?;
        s.stop_signal = self
            .get("stop_signal")
            .map(|v| signal(&f("stop_signal"), v))
            .transpose()?;
        Ok(())
    }

    fn confinement(&self, s: &mut Service) -> Result<(), ComposeError> {
        let f = |k: &str| self.field(k);
        let privileged = self
            .get("privileged")
            .map(|v| boolean(&f("privileged"), v))
            .transpose()?
            .unwrap_or(false);
        let list_of = |key: &str| -> Result<Vec<String>, ComposeError> {
            self.get(key).map_or(Ok(Vec::new()), |v| list(&f(key), v))
        };
        s.security = Security::new(
            f,
            privileged,
            &list_of("cap_add")?,
            &list_of("cap_drop")?,
            &list_of("security_opt")?,
        )?;
        for (key, slot) in [
            ("pid", &mut s.host_namespaces.pid),
            ("ipc", &mut s.host_namespaces.ipc),
            ("uts", &mut s.host_namespaces.uts),
        ] {
            if let Some(value) = self.get(key) {
                match scalar(&f(key), value)?.as_str() {
                    "host" => *slot = true,
                    "" | "private" | "shareable" if key == "ipc" => {}
                    "" | "private" => {}
                    other => {
                        return Err(ComposeError::Unsupported {
                            field: f(key),
                            reason: format!("{key} {other:?}: only host or private"),
                        });
                    }
                }
            }
        }
        if let Some(read_only) = self.get("read_only") {
            s.read_only = boolean(&f("read_only"), read_only)?;
        }
        if let Some(sysctls) = self.get("sysctls") {
            for (key, value) in list_or_dict(&f("sysctls"), sysctls, '=')? {
                let allowed = key.starts_with("net.")
                    || key.starts_with("fs.mqueue.")
                    || key.starts_with("kernel.msg")
                    || key.starts_with("kernel.sem")
                    || key.starts_with("kernel.shm");
                if !allowed {
                    return Err(ComposeError::Unsupported {
                        field: format!("{}.{key}", f("sysctls")),
                        reason: "only namespaced sysctls (net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*) can be set per service, as in docker".into(),
                    });
                }
                let shared_stack = self
                    .get("network_mode")
                    .and_then(Value::as_str)
                    .is_some_and(|mode| {
                        mode == "host"
                            || mode.starts_with("service:")
                            || mode.starts_with("container:")
                    });
                if key.starts_with("net.") && shared_stack {
                    return Err(ComposeError::Unsupported {
                        field: format!("{}.{key}", f("sysctls")),
                        reason: "the service shares another's network stack (network_mode), so a net.* sysctl would change that one's, as docker refuses too".into(),
                    });
                }
                s.sysctls.insert(key, value.unwrap_or_default());
            }
        }
        if let Some(ulimits) = self.get("ulimits") {
            s.ulimits = parse_ulimits(&f("ulimits"), ulimits)?;
        }
        Ok(())
    }
}

fn restart_policy(field: &str, text: &str) -> Result<RestartPolicy, ComposeError> {
    Ok(match text {
        "no" | "" | "false" => RestartPolicy::No,
        "always" => RestartPolicy::Always,
        "unless-stopped" => RestartPolicy::UnlessStopped,
        "on-failure" => RestartPolicy::OnFailure(None),
        other => match other.strip_prefix("on-failure:").map(str::parse::<u32>) {
            Some(Ok(n)) => RestartPolicy::OnFailure(Some(n)),
            _ => {
                return Err(ComposeError::invalid(
                    field,
                    format!("{other:?} is not no, always, unless-stopped or on-failure[:N]"),
                ));
            }
        },
    })
}

/// Reads one `ports` entry: `target`, `published:target`,
/// `ip:published:target`, ranges (`8000-8002:9000-9002`), `/tcp`, or the
/// long form. The host IP part has no meaning in a CVM.
fn parse_port(field: &str, item: &Value) -> Result<Vec<PortSpec>, ComposeError> {
    let port = |text: &str| -> Result<u16, ComposeError> {
        match text.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(ComposeError::invalid(
                field,
                format!("{text:?} is not a port number"),
            )),
        }
    };
    let range = |text: &str| -> Result<(u16, u16), ComposeError> {
        match text.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (port(a)?, port(b)?);
                if a > b {
                    return Err(ComposeError::invalid(
                        field,
                        format!("{text:?} is an empty range"),
                    ));
                }
                Ok((a, b))
            }
            None => port(text).map(|p| (p, p)),
        }
    };
    let protocol_of = |protocol: &str| -> Result<Protocol, ComposeError> {
        match protocol {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(ComposeError::Unsupported {
                field: field.to_string(),
                reason: format!("{other} ports are not published (only tcp and udp)"),
            }),
        }
    };
    let expand = |published: (u16, u16),
                  target: (u16, u16),
                  protocol: Protocol|
     -> Result<Vec<PortSpec>, ComposeError> {
        if published.1 - published.0 != target.1 - target.0 {
            return Err(ComposeError::invalid(
                field,
                "the published and target ranges differ in length",
            ));
        }
        Ok((0..=target.1 - target.0)
            .map(|i| PortSpec {
                published: published.0 + i,
                target: target.0 + i,
                protocol,
            })
            .collect())
    };
    match item {
        Value::Number(n) => {
            let p = port(&n.to_string())?;
            expand((p, p), (p, p), Protocol::Tcp)
        }
        Value::String(s) => {
            let (spec, protocol) = s.rsplit_once('/').unwrap_or((s, "tcp"));
            let protocol = protocol_of(protocol)?;
            // An IPv6 host address is written in brackets: drop it first.
            let spec = match spec.strip_prefix('[') {
                Some(rest) => rest.split_once("]:").map_or(spec, |(_, tail)| tail),
                None => spec,
            };
            let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
            match parts.as_slice() {
                [target] => {
                    let t = range(target)?;
                    expand(t, t, protocol)
                }
                [target, published] | [target, published, _] => {
                    let target = range(target)?;
                    if published.is_empty() {
                        return expand(target, target, protocol);
                    }
                    expand(range(published)?, target, protocol)
                }
                _ => Err(ComposeError::invalid(field, "expected [published:]target")),
            }
        }
        Value::Mapping(m) => {
            let get = |k: &str| m.get(k).map(|v| scalar(field, v)).transpose();
            let protocol = protocol_of(get("protocol")?.as_deref().unwrap_or("tcp"))?;
            let target =
                get("target")?.ok_or_else(|| ComposeError::invalid(field, "target is required"))?;
            let target = range(&target)?;
            match get("published")? {
                Some(p) if !p.is_empty() => expand(range(&p)?, target, protocol),
                _ => expand(target, target, protocol),
            }
        }
        _ => Err(ComposeError::invalid(
            field,
            "must be a string, number or mapping",
        )),
    }
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
    use crate::{CapabilityName, Compose, DSTACK_SOCKETS, SeccompMode, VolumeSource};

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
                    target: 8080,
                    protocol: Protocol::Tcp
                },
                PortSpec {
                    published: 9000,
                    target: 9000,
                    protocol: Protocol::Tcp
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
    fn net_sysctls_need_a_network_stack_of_its_own() {
        let parse = |extra: &str| {
            Compose::parse(&format!(
                "services:\n  s:\n    image: x\n    sysctls: {{net.core.somaxconn: 1024}}\n{extra}"
            ))
        };
        assert_eq!(
            parse("").unwrap().services["s"].sysctls["net.core.somaxconn"],
            "1024"
        );
        for mode in ["host", "service:t"] {
            let err = parse(&format!(
                "    network_mode: \"{mode}\"\n  t:\n    image: x\n"
            ))
            .unwrap_err();
            assert!(err.to_string().contains("net.core.somaxconn"), "{err}");
        }
    }

    #[test]
    fn port_forms() {
        let ports = |yaml: &str| {
            Compose::parse(&format!(
                "services:\n  web:\n    image: x\n    ports: {yaml}\n"
            ))
            .map(|c| c.services["web"].ports.clone())
        };
        let p = ports("[\"8000-8002:9000-9002\", \"127.0.0.1:81:80\", \"[::1]:82:80\", \"53:53/udp\", {target: 443, published: 8443}]").unwrap();
        let pairs: Vec<(u16, u16, Protocol)> = p
            .iter()
            .map(|p| (p.published, p.target, p.protocol))
            .collect();
        assert_eq!(
            pairs,
            [
                (8000, 9000, Protocol::Tcp),
                (8001, 9001, Protocol::Tcp),
                (8002, 9002, Protocol::Tcp),
                (81, 80, Protocol::Tcp),
                (82, 80, Protocol::Tcp),
                (53, 53, Protocol::Udp),
                (8443, 443, Protocol::Tcp),
            ]
        );
        assert_eq!(
            ports("[\"5353:53/udp\"]").unwrap()[0],
            PortSpec {
                published: 5353,
                target: 53,
                protocol: Protocol::Udp
            }
        );
        assert!(matches!(
            ports("[\"80/sctp\"]"),
            Err(ComposeError::Unsupported { .. })
        ));
        assert!(ports("[\"8000-8001:9000\"]").is_err());
        assert!(
            ports("[\"80\", \"80:80\"]")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        // The same number over tcp and udp is two ports.
        assert_eq!(ports("[\"53:53\", \"53:53/udp\"]").unwrap().len(), 2);
    }

    #[test]
    fn anonymous_volumes_live_on_the_data_disk_per_service_and_target() {
        let c = Compose::parse(
            "services:\n  web:\n    image: x\n    volumes: [/var/lib/data, {type: volume, target: /cache}]\n  db:\n    image: x\n    volumes: [/var/lib/data]\n",
        )
        .unwrap();
        let web = &c.services["web"].volumes;
        let db = &c.services["db"].volumes;
        assert_eq!(
            web[0].source,
            VolumeSource::Named(crate::anonymous_volume_name("web", "/var/lib/data"))
        );
        assert_ne!(web[0].source, db[0].source);
        assert_ne!(web[0].source, web[1].source);
    }

    #[test]
    fn a_check_names_every_problem_once() {
        let check = Compose::check(
            "services:\n  web:\n    image: x\n    build: https://example.com/x.git\n    secrets: [pw]\n    logging: {driver: none}\n    frobnicate: 1\n  api:\n    image: x\n    depends_on: [web]\nsecrets:\n  pw:\n    file: ./pw.txt\n",
            &Vars::new(),
        );
        assert!(check.compose.is_none());
        let refused: Vec<String> = check.refused.iter().map(ToString::to_string).collect();
        assert_eq!(refused.len(), 3, "{refused:#?}");
        assert!(
            refused.iter().any(|r| r.starts_with("secrets.pw.file")),
            "{refused:#?}"
        );
        assert!(
            refused.iter().any(|r| r.starts_with("services.web.build")),
            "{refused:#?}"
        );
        assert!(
            refused
                .iter()
                .any(|r| r.starts_with("services.web.frobnicate")),
            "{refused:#?}"
        );
        assert_eq!(check.ignored.len(), 1);
        assert_eq!(check.ignored[0].field, "services.web.logging");
    }

    #[test]
    fn profiles_follow_compose_profiles() {
        let yaml =
            "services:\n  web:\n    image: x\n  debug:\n    image: x\n    profiles: [debug]\n";
        let off = Compose::check(yaml, &Vars::new());
        assert_eq!(
            off.compose.unwrap().services.keys().collect::<Vec<_>>(),
            ["web"]
        );
        assert!(off.ignored[0].reason.contains("COMPOSE_PROFILES"));
        let vars = Vars::from([("COMPOSE_PROFILES".to_string(), "debug".to_string())]);
        assert_eq!(
            Compose::check(yaml, &vars).compose.unwrap().services.len(),
            2
        );
    }

    #[test]
    fn configs_and_secrets_take_content_or_env() {
        let vars = Vars::from([("API_KEY".to_string(), "s3cret".to_string())]);
        let (c, _) = Compose::parse_with_vars(
            "services:\n  web:\n    image: x\n    configs: [{source: conf, target: /etc/app.conf, mode: 0400, uid: '33'}]\n    secrets: [key]\nconfigs:\n  conf:\n    content: \"port=${PORT:-80}\"\nsecrets:\n  key:\n    environment: API_KEY\n",
            &vars,
        )
        .unwrap();
        assert_eq!(c.configs["conf"], "port=80");
        assert_eq!(c.secrets["key"], "s3cret");
        let files = &c.services["web"].files;
        assert_eq!(
            (files[0].target.as_str(), files[0].mode, files[0].uid),
            ("/etc/app.conf", 0o400, 33)
        );
        assert_eq!(
            (files[1].target.as_str(), files[1].mode),
            ("/run/secrets/key", 0o444)
        );
        let unset = Compose::parse(
            "services:\n  web:\n    image: x\nsecrets:\n  key:\n    environment: NOPE\n",
        )
        .unwrap_err();
        assert!(unset.to_string().contains("NOPE"), "{unset}");
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
        let other = Compose::parse("services:\n  web:\n    image: x\n    volumes: [\"/run/other.sock:/s\", \"./data:/d\"]\n").unwrap();
        assert_eq!(
            other.services["web"].volumes[0].source,
            VolumeSource::CvmPath("/run/other.sock".into())
        );
        assert_eq!(
            other.services["web"].volumes[1].source,
            VolumeSource::CvmPath("/dstack/data".into())
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
            err("services:\n  web:\n    image: x\n    build: git@example.com:x.git\n")
                .starts_with("services.web.build")
        );
        assert!(
            err("services:\n  web:\n    image: x\n    ports: [\"a:b\"]\n")
                .starts_with("services.web.ports[0]")
        );
        assert!(
            err("services:\n  web:\n    image: x\n    volumes: [\"~/etc:/etc\"]\n")
                .contains("your machine")
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
