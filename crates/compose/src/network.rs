//! A service's network keys: `network_mode`, `networks` (with `aliases`),
//! `hostname`, `domainname`, `container_name`, `extra_hosts`, `dns`,
//! `dns_search`, `dns_opt` and `links`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::yaml::{Mapping, Value, key_text, list_or_dict, one_or_many, scalar};
use crate::{ComposeError, Findings};

/// `network_mode`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// On the compose networks it names (the project's default network
    /// when it names none).
    #[default]
    Networks,
    /// The CVM's own network stack.
    Host,
    /// No network but loopback.
    None,
    /// The network stack of another service.
    Service(String),
}

/// How a service is reached and what it resolves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceNetwork {
    /// `network_mode`.
    pub mode: NetworkMode,
    /// Networks joined, each with the extra names (aliases) the service
    /// answers to there. Empty with [`NetworkMode::Networks`]: the default
    /// network only.
    pub networks: BTreeMap<String, Vec<String>>,
    /// `hostname` (default: the service name).
    pub hostname: Option<String>,
    /// `domainname`.
    pub domainname: Option<String>,
    /// `container_name`: another name the service answers to.
    pub container_name: Option<String>,
    /// `extra_hosts`: `(name, address)` lines for /etc/hosts.
    pub extra_hosts: Vec<(String, String)>,
    /// `dns`: name servers (default: the CVM's).
    pub dns: Vec<String>,
    /// `dns_search`.
    pub dns_search: Vec<String>,
    /// `dns_opt`.
    pub dns_options: Vec<String>,
}

fn hostname_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

impl ServiceNetwork {
    pub(crate) fn parse(
        service_field: &str,
        service: &Mapping,
        declared_networks: &BTreeSet<String>,
        findings: &mut Findings,
    ) -> Result<Self, ComposeError> {
        let field = |k: &str| format!("{service_field}.{k}");
        let get = |k: &str| service.get(k);
        let mut net = ServiceNetwork::default();
        if let Some(mode) = get("network_mode") {
            let text = scalar(&field("network_mode"), mode)?;
            net.mode = match text.as_str() {
                "host" => NetworkMode::Host,
                "none" => NetworkMode::None,
                "bridge" | "default" => NetworkMode::Networks,
                other => match other
                    .strip_prefix("service:")
                    .or_else(|| other.strip_prefix("container:"))
                {
                    Some(name) if !name.is_empty() => NetworkMode::Service(name.to_string()),
                    _ => {
                        return Err(ComposeError::invalid(
                            field("network_mode"),
                            format!("{other:?} is not host, none, bridge or service:<name>"),
                        ));
                    }
                },
            };
        }
        if let Some(networks) = get("networks") {
            if net.mode != NetworkMode::Networks {
                return Err(ComposeError::invalid(
                    field("networks"),
                    "cannot be set together with network_mode",
                ));
            }
            let entries: Vec<(String, Option<&Value>)> = match networks {
                Value::Sequence(items) => items
                    .iter()
                    .map(|v| Ok((scalar(&field("networks"), v)?, None)))
                    .collect::<Result<_, ComposeError>>()?,
                Value::Mapping(m) => m.iter().map(|(k, v)| (key_text(k), Some(v))).collect(),
                _ => {
                    return Err(ComposeError::invalid(
                        field("networks"),
                        "must be a list or a mapping",
                    ));
                }
            };
            for (name, settings) in entries {
                let f = format!("{}.{name}", field("networks"));
                if !declared_networks.contains(&name) && name != "default" {
                    return Err(ComposeError::invalid(
                        f,
                        format!("network {name:?} is not declared under top-level networks"),
                    ));
                }
                let mut aliases = Vec::new();
                if let Some(Value::Mapping(settings)) = settings {
                    for (key, value) in settings {
                        let key = key_text(key);
                        let kf = format!("{f}.{key}");
                        match key.as_str() {
                            "aliases" => {
                                for alias in one_or_many(&kf, value)? {
                                    if !hostname_ok(&alias) {
                                        return Err(ComposeError::invalid(
                                            kf,
                                            format!("{alias:?} is not a host name"),
                                        ));
                                    }
                                    aliases.push(alias);
                                }
                            }
                            "ipv4_address" | "ipv6_address" | "link_local_ips" | "mac_address"
                            | "priority" | "gw_priority" | "driver_opts" | "interface_name" => {
                                findings.ignore(
                                    kf,
                                    "addresses on a compose network are assigned by the CVM",
                                )
                            }
                            _ => {
                                return Err(ComposeError::invalid(
                                    kf,
                                    "is not a network attachment key this platform knows",
                                ));
                            }
                        }
                    }
                } else if let Some(v) = settings
                    && !v.is_null()
                {
                    return Err(ComposeError::invalid(f, "must be a mapping"));
                }
                net.networks.insert(name, aliases);
            }
        }
        let name = |k: &str| -> Result<Option<String>, ComposeError> {
            get(k)
                .map(|v| {
                    let text = scalar(&field(k), v)?;
                    if hostname_ok(&text) {
                        Ok(text)
                    } else {
                        Err(ComposeError::invalid(
                            field(k),
                            format!("{text:?} is not a host name"),
                        ))
                    }
                })
                .transpose()
        };
        net.hostname = name("hostname")?;
        net.domainname = name("domainname")?;
        net.container_name = name("container_name")?;
        if let Some(hosts) = get("extra_hosts") {
            // `name:ip` (an IPv6 address keeps its colons: split at the first).
            let sep = if matches!(hosts, Value::Sequence(items) if items.iter().any(|i| i.as_str().is_some_and(|s| s.contains('='))))
            {
                '='
            } else {
                ':'
            };
            for (host, address) in list_or_dict(&field("extra_hosts"), hosts, sep)? {
                let f = field("extra_hosts");
                let address = address.unwrap_or_default();
                let address = address
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                if address != "host-gateway" && address.parse::<IpAddr>().is_err() {
                    return Err(ComposeError::invalid(
                        f,
                        format!("{address:?} (for {host}) is not an IP address"),
                    ));
                }
                if address == "host-gateway" {
                    return Err(ComposeError::Unsupported {
                        field: f,
                        reason: format!(
                            "{host}: host-gateway would name the untrusted host; give an address"
                        ),
                    });
                }
                for h in host.split(',') {
                    if !hostname_ok(h) {
                        return Err(ComposeError::invalid(
                            f,
                            format!("{h:?} is not a host name"),
                        ));
                    }
                    net.extra_hosts.push((h.to_string(), address.clone()));
                }
            }
        }
        if let Some(dns) = get("dns") {
            for server in one_or_many(&field("dns"), dns)? {
                if server.parse::<IpAddr>().is_err() {
                    return Err(ComposeError::invalid(
                        field("dns"),
                        format!("{server:?} is not an IP address"),
                    ));
                }
                net.dns.push(server);
            }
        }
        if let Some(search) = get("dns_search") {
            net.dns_search = one_or_many(&field("dns_search"), search)?;
        }
        if let Some(options) = get("dns_opt") {
            net.dns_options = one_or_many(&field("dns_opt"), options)?;
        }
        Ok(net)
    }

    /// The names the service answers to on its networks: the service name,
    /// `container_name`, and every alias.
    pub fn names<'a>(&'a self, service: &'a str) -> Vec<&'a str> {
        let mut names = vec![service];
        names.extend(self.container_name.as_deref());
        for aliases in self.networks.values() {
            names.extend(aliases.iter().map(String::as_str));
        }
        names.sort_unstable();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(yaml: &str) -> Result<ServiceNetwork, ComposeError> {
        let doc = crate::yaml::load(yaml).unwrap();
        let declared = BTreeSet::from(["front".to_string(), "back".to_string()]);
        ServiceNetwork::parse(
            "services.s",
            doc.as_mapping().unwrap(),
            &declared,
            &mut Findings::default(),
        )
    }

    #[test]
    fn modes_networks_and_aliases() {
        assert_eq!(net("network_mode: host\n").unwrap().mode, NetworkMode::Host);
        assert_eq!(
            net("network_mode: service:db\n").unwrap().mode,
            NetworkMode::Service("db".into())
        );
        let n = net("networks:\n  front:\n    aliases: [www, web.local]\n  back:\n").unwrap();
        assert_eq!(n.networks["front"], ["www", "web.local"]);
        assert!(n.networks["back"].is_empty());
        assert_eq!(n.names("web"), ["web", "web.local", "www"]);
        assert!(
            net("networks: [other]\n")
                .unwrap_err()
                .to_string()
                .contains("not declared")
        );
        assert!(net("network_mode: host\nnetworks: [front]\n").is_err());
        assert!(net("network_mode: macvlan\n").is_err());
    }

    #[test]
    fn extra_hosts_forms() {
        let n = net("extra_hosts: [\"db:10.0.0.5\", \"v6=::1\"]\n").unwrap_err();
        // Mixed separators in one list are not a form docker reads either.
        assert!(n.to_string().contains("extra_hosts"));
        let n = net("extra_hosts: [\"db:10.0.0.5\", \"a,b:10.0.0.6\"]\n").unwrap();
        assert!(
            n.extra_hosts
                .contains(&("db".to_string(), "10.0.0.5".to_string()))
        );
        assert_eq!(n.extra_hosts.len(), 3);
        let n = net("extra_hosts: {db: \"::1\"}\n").unwrap();
        assert_eq!(n.extra_hosts[0].1, "::1");
        assert!(matches!(
            net("extra_hosts: [\"h:host-gateway\"]\n"),
            Err(ComposeError::Unsupported { .. })
        ));
        assert!(net("extra_hosts: [\"h:nowhere\"]\n").is_err());
    }
}
