//! A service's resource limits: `deploy.resources` (limits and
//! reservations), the older `mem_limit`, `memswap_limit`, `mem_reservation`,
//! `cpus`, `cpu_shares`, `cpuset`, `pids_limit`, plus `ulimits` and
//! `oom_score_adj`. Enforced as cgroup v2 limits and rlimits by the runner.

use std::collections::BTreeMap;

use crate::yaml::{Mapping, Value, bytes, key_text, scalar, unsigned};
use crate::{ComposeError, Findings};

/// cgroup v2 limits of one service. `None`: not limited.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// `memory.max`, bytes.
    pub memory: Option<u64>,
    /// `memory.low`, bytes (a reservation).
    pub memory_reservation: Option<u64>,
    /// Memory plus swap, bytes (`memswap_limit`; -1 unlimited). The guest
    /// has no swap, so this only matters if it ever gets some.
    pub memory_swap: Option<i64>,
    /// CPU time as a number of CPUs (`cpu.max` quota over a 100 ms period).
    pub cpus: Option<f64>,
    /// Relative CPU weight in docker's units (1024 = default).
    pub cpu_shares: Option<u64>,
    /// CPUs the service may run on (`0-3`, `0,2`).
    pub cpuset: Option<String>,
    /// `pids.max`.
    pub pids: Option<i64>,
    /// The OOM killer's bias for the service's processes (-1000..1000).
    pub oom_score_adj: Option<i32>,
}

/// One `ulimits` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ulimit {
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// The rlimits `ulimits` may name, as docker knows them.
pub const ULIMIT_NAMES: [&str; 16] = [
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

fn cpus(field: &str, value: &Value) -> Result<f64, ComposeError> {
    let text = scalar(field, value)?;
    match text.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n),
        _ => Err(ComposeError::invalid(
            field,
            format!("{text:?} is not a number of CPUs like 0.5 or 2"),
        )),
    }
}

fn pids(field: &str, value: &Value) -> Result<i64, ComposeError> {
    let text = scalar(field, value)?;
    match text.trim().parse::<i64>() {
        Ok(n) if n >= -1 && n != 0 => Ok(n),
        // 0 means "unset" in docker.
        Ok(0) => Ok(-1),
        _ => Err(ComposeError::invalid(
            field,
            format!("{text:?} is not a process count (or -1 for no limit)"),
        )),
    }
}

impl Limits {
    /// The CFS quota for `cpus` over a period of `period_us` microseconds
    /// (`None` when the service sets no CPU limit).
    pub fn cpu_quota_us(&self, period_us: u64) -> Option<u64> {
        self.cpus
            .filter(|c| *c > 0.0)
            .map(|c| crate::yaml::whole(c * period_us as f64).max(1000))
    }

    /// Reads the service-level keys and `deploy.resources`; `deploy` wins
    /// where both set a value (as docker compose does).
    pub(crate) fn parse(
        service_field: &str,
        service: &Mapping,
        findings: &mut Findings,
    ) -> Result<Self, ComposeError> {
        let field = |k: &str| format!("{service_field}.{k}");
        let get = |k: &str| service.get(k);
        let mut limits = Limits {
            memory: get("mem_limit")
                .map(|v| bytes(&field("mem_limit"), v))
                .transpose()?,
            memory_reservation: get("mem_reservation")
                .map(|v| bytes(&field("mem_reservation"), v))
                .transpose()?,
            memory_swap: get("memswap_limit")
                .map(|v| match scalar(&field("memswap_limit"), v)?.trim() {
                    "-1" => Ok(-1),
                    _ => bytes(&field("memswap_limit"), v).map(|b| b as i64),
                })
                .transpose()?,
            cpus: get("cpus").map(|v| cpus(&field("cpus"), v)).transpose()?,
            cpu_shares: get("cpu_shares")
                .map(|v| unsigned(&field("cpu_shares"), v))
                .transpose()?,
            cpuset: get("cpuset")
                .map(|v| scalar(&field("cpuset"), v))
                .transpose()?,
            pids: get("pids_limit")
                .map(|v| pids(&field("pids_limit"), v))
                .transpose()?,
            oom_score_adj: get("oom_score_adj")
                .map(|v| {
                    let text = scalar(&field("oom_score_adj"), v)?;
                    match text.trim().parse::<i32>() {
                        Ok(n) if (-1000..=1000).contains(&n) => Ok(n),
                        _ => Err(ComposeError::invalid(
                            field("oom_score_adj"),
                            "must be between -1000 and 1000",
                        )),
                    }
                })
                .transpose()?,
        };
        if let Some(cpuset) = &limits.cpuset
            && !cpuset
                .split(',')
                .all(|r| !r.is_empty() && r.split('-').all(|n| n.parse::<u32>().is_ok()))
        {
            return Err(ComposeError::invalid(
                field("cpuset"),
                format!("{cpuset:?} is not a CPU list like 0-3 or 0,2"),
            ));
        }
        if let Some(Value::Mapping(deploy)) = get("deploy") {
            limits.read_deploy(&field("deploy"), deploy, findings)?;
        } else if let Some(deploy) = get("deploy")
            && !deploy.is_null()
        {
            return Err(ComposeError::invalid(field("deploy"), "must be a mapping"));
        }
        if let (Some(max), Some(low)) = (limits.memory, limits.memory_reservation)
            && low > max
        {
            return Err(ComposeError::invalid(
                service_field,
                "the memory reservation is larger than the memory limit",
            ));
        }
        Ok(limits)
    }

    fn read_deploy(
        &mut self,
        field: &str,
        deploy: &Mapping,
        findings: &mut Findings,
    ) -> Result<(), ComposeError> {
        for (key, value) in deploy {
            let key = key_text(key);
            let sub = format!("{field}.{key}");
            match key.as_str() {
                "resources" => {
                    let Value::Mapping(resources) = value else {
                        return Err(ComposeError::invalid(sub, "must be a mapping"));
                    };
                    self.read_resources(&sub, resources)?;
                }
                "replicas" => {
                    let n = unsigned(&sub, value)?;
                    if n != 1 {
                        return Err(ComposeError::Unsupported {
                            field: sub,
                            reason: format!(
                                "{n} replicas: a CVM runs one instance of each service (deploy more CVMs to scale)"
                            ),
                        });
                    }
                }
                // Read by the service's restart policy.
                "restart_policy" => {}
                "mode" => {
                    let mode = scalar(&sub, value)?;
                    if mode != "replicated" {
                        return Err(ComposeError::Unsupported {
                            field: sub,
                            reason: format!(
                                "mode {mode:?}: only replicated (one instance) runs in a CVM"
                            ),
                        });
                    }
                }
                "labels" | "endpoint_mode" | "placement" | "update_config" | "rollback_config" => {
                    findings.ignore(
                        sub,
                        "is for swarm clusters; a CVM ignores it, as docker compose does",
                    )
                }
                other if other.starts_with("x-") => {}
                _ => {
                    return Err(ComposeError::invalid(
                        sub,
                        "is not a deploy key this platform knows",
                    ));
                }
            }
        }
        Ok(())
    }

    fn read_resources(&mut self, field: &str, resources: &Mapping) -> Result<(), ComposeError> {
        for (key, value) in resources {
            let key = key_text(key);
            let sub = format!("{field}.{key}");
            let reservation = match key.as_str() {
                "limits" => false,
                "reservations" => true,
                _ => return Err(ComposeError::invalid(sub, "is not limits or reservations")),
            };
            let Value::Mapping(entries) = value else {
                return Err(ComposeError::invalid(sub, "must be a mapping"));
            };
            for (name, v) in entries {
                let name = key_text(name);
                let f = format!("{sub}.{name}");
                match (name.as_str(), reservation) {
                    ("memory", false) => self.memory = Some(bytes(&f, v)?),
                    ("memory", true) => self.memory_reservation = Some(bytes(&f, v)?),
                    ("cpus", false) => self.cpus = Some(cpus(&f, v)?),
                    // A CPU reservation is a scheduling hint for swarm; the
                    // nearest cgroup notion is weight: 1 CPU = docker's 1024.
                    ("cpus", true) => {
                        self.cpu_shares
                            .get_or_insert(crate::yaml::whole(cpus(&f, v)? * 1024.0).max(2));
                    }
                    ("pids", _) => self.pids = Some(pids(&f, v)?),
                    ("devices", true) | ("generic_resources", true) => {
                        return Err(ComposeError::GpuUnavailable { field: f });
                    }
                    _ => {
                        return Err(ComposeError::invalid(
                            f,
                            "is not cpus, memory or pids (or, for reservations, devices)",
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads `ulimits`: `{nofile: 1024}` or `{nofile: {soft: 1024, hard: 4096}}`.
pub(crate) fn parse_ulimits(
    field: &str,
    value: &Value,
) -> Result<BTreeMap<String, Ulimit>, ComposeError> {
    let Value::Mapping(map) = value else {
        return Err(ComposeError::invalid(field, "must be a mapping"));
    };
    let mut out = BTreeMap::new();
    for (name, limit) in map {
        let name = key_text(name);
        let f = format!("{field}.{name}");
        if !ULIMIT_NAMES.contains(&name.as_str()) {
            return Err(ComposeError::invalid(
                f,
                format!("is not a resource limit ({})", ULIMIT_NAMES.join(", ")),
            ));
        }
        let limit = match limit {
            Value::Mapping(m) => {
                let part = |k: &str| {
                    m.get(k)
                        .map(|v| unsigned(&format!("{f}.{k}"), v))
                        .transpose()?
                        .ok_or_else(|| ComposeError::invalid(&f, "needs soft and hard"))
                };
                Ulimit {
                    soft: part("soft")?,
                    hard: part("hard")?,
                }
            }
            v => {
                let n = unsigned(&f, v)?;
                Ulimit { soft: n, hard: n }
            }
        };
        if limit.soft > limit.hard {
            return Err(ComposeError::invalid(f, "soft is above hard"));
        }
        out.insert(name, limit);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(yaml: &str) -> Result<Limits, ComposeError> {
        let doc = crate::yaml::load(yaml).unwrap();
        Limits::parse(
            "services.s",
            doc.as_mapping().unwrap(),
            &mut Findings::default(),
        )
    }

    #[test]
    fn deploy_resources_and_service_keys() {
        let l = limits(
            "mem_limit: 1g\ncpus: 0.5\npids_limit: 100\ndeploy:\n  resources:\n    limits: {memory: 64m, cpus: '1.5', pids: 50}\n    reservations: {memory: 32m, cpus: '0.25'}\n",
        )
        .unwrap();
        assert_eq!(l.memory, Some(64 << 20));
        assert_eq!(l.memory_reservation, Some(32 << 20));
        assert_eq!(l.cpus, Some(1.5));
        assert_eq!(l.pids, Some(50));
        assert_eq!(l.cpu_shares, Some(256));
        assert_eq!(limits("mem_limit: 128m\n").unwrap().memory, Some(128 << 20));
    }

    #[test]
    fn a_gpu_reservation_is_refused_by_name() {
        let e = limits(
            "deploy:\n  resources:\n    reservations:\n      devices:\n        - driver: nvidia\n          count: all\n          capabilities: [gpu]\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            ComposeError::GpuUnavailable {
                field: "services.s.deploy.resources.reservations.devices".into()
            }
        );
    }

    #[test]
    fn bad_values_are_named() {
        assert!(
            limits("mem_limit: lots\n")
                .unwrap_err()
                .to_string()
                .starts_with("services.s.mem_limit")
        );
        assert!(limits("cpus: -1\n").is_err());
        assert!(limits("cpuset: 0-a\n").is_err());
        assert!(limits("deploy: {replicas: 3}\n").is_err());
        assert!(limits("mem_limit: 1m\nmem_reservation: 2m\n").is_err());
    }

    #[test]
    fn ulimits_forms() {
        let doc = crate::yaml::load("nofile: {soft: 1024, hard: 4096}\nnproc: 65535\n").unwrap();
        let u = parse_ulimits("u", &doc).unwrap();
        assert_eq!(
            u["nofile"],
            Ulimit {
                soft: 1024,
                hard: 4096
            }
        );
        assert_eq!(
            u["nproc"],
            Ulimit {
                soft: 65535,
                hard: 65535
            }
        );
        let bad = crate::yaml::load("files: 3\n").unwrap();
        assert!(parse_ulimits("u", &bad).is_err());
    }
}
