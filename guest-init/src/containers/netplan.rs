//! Compose networks as the CVM lays them out, decided from the compose file
//! alone (so the same file gives the same addresses every boot):
//!
//! - every network some service joins is a bridge `dsn<N>` with the subnet
//!   `10.89.<N>.0/24` and the guest at `.1`, N counting networks by name;
//! - every service on networks (docker's default mode) has its own network
//!   namespace with one `eth<K>` per network (its networks in name order),
//!   addressed `.2`, `.3`... in service-name order, and a default route
//!   through its first network that is not `internal`;
//! - `network_mode: service:X` shares X's namespace, `host` the guest's,
//!   `none` gets a namespace with loopback only.
//!
//! Nothing is routed between two bridges, so services that share no
//! network cannot reach each other; traffic out of the CVM is masqueraded
//! behind the guest's address (the firewall in [`super::netns`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use dstack_compose::{Compose, NetworkMode};

/// The name of compose's implicit network.
pub(crate) const DEFAULT_NETWORK: &str = "default";

/// Every container network's address lies in this /16.
pub(crate) const POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 89, 0, 0), 16);

/// Prefix of the bridges' interface names (a firewall rule matches it).
pub(crate) const BRIDGE_PREFIX: &str = "dsn";

/// A compose network: one bridge in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bridge {
    /// The compose network's name.
    pub network: String,
    /// The bridge's interface name, `dsn<N>`.
    pub ifname: String,
    /// The guest's address on it (`.1`); the services' gateway.
    pub gateway: Ipv4Addr,
    /// `internal: true`: no way out of the CVM.
    pub internal: bool,
}

/// Prefix length of every bridge's subnet.
pub(crate) const SUBNET_PREFIX: u8 = 24;

/// One of a namespace's interfaces on a bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    /// Index into [`NetPlan::bridges`].
    pub bridge: usize,
    /// The guest end of the veth pair, enslaved to the bridge.
    pub host_ifname: String,
    /// The name inside the namespace, `eth<K>`.
    pub ifname: String,
    /// The service's address.
    pub address: Ipv4Addr,
}

/// A network namespace of the guest's making.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Namespace {
    /// The service it was made for (services sharing it name this one).
    pub owner: String,
    /// Its interfaces besides loopback.
    pub links: Vec<Link>,
    /// The default route's next hop, when some network leads out.
    pub default_gateway: Option<Ipv4Addr>,
}

/// Where one service's network stack is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Placement {
    /// The guest's own (`network_mode: host`).
    Guest,
    /// A namespace of its own, or the one of the service named (`service:`).
    Namespace(String),
}

/// The whole layout.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct NetPlan {
    pub bridges: Vec<Bridge>,
    /// Namespaces by owner service.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Every service's placement.
    pub placement: BTreeMap<String, Placement>,
}

/// Why a layout cannot be made.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NetPlanError {
    #[error("more than 254 compose networks are in use; the CVM numbers them in 10.89.0.0/16")]
    TooManyNetworks,
    #[error("network {network:?} has more than 253 services; each network is one /24")]
    TooManyServices { network: String },
    #[error("services.{service}.network_mode: service {target:?} is not in the file")]
    UnknownService { service: String, target: String },
    #[error("services.{service}.network_mode: the chain of service: references loops")]
    Loop { service: String },
}

/// The networks a service on networks joins: those it names, else compose's
/// default network.
fn networks_of(service: &dstack_compose::Service) -> Vec<&str> {
    if service.network.networks.is_empty() {
        vec![DEFAULT_NETWORK]
    } else {
        service
            .network
            .networks
            .keys()
            .map(String::as_str)
            .collect()
    }
}

impl NetPlan {
    /// Lays out `compose`'s networks.
    pub(crate) fn new(compose: &Compose) -> Result<Self, NetPlanError> {
        let mut plan = NetPlan::default();
        // Placement first: `service:` chains end in a service of their own.
        for name in compose.services.keys() {
            let mut current = name.as_str();
            let mut hops = 0;
            let placement = loop {
                match &compose.services[current].network.mode {
                    NetworkMode::Host => break Placement::Guest,
                    NetworkMode::Networks | NetworkMode::None => {
                        break Placement::Namespace(current.to_string());
                    }
                    NetworkMode::Service(target) => {
                        if !compose.services.contains_key(target) {
                            return Err(NetPlanError::UnknownService {
                                service: current.into(),
                                target: target.clone(),
                            });
                        }
                        hops += 1;
                        if hops > compose.services.len() {
                            return Err(NetPlanError::Loop {
                                service: name.clone(),
                            });
                        }
                        current = target;
                    }
                }
            };
            plan.placement.insert(name.clone(), placement);
        }
        // Bridges: the networks joined by some service with a namespace of
        // its own on networks, by name.
        let mut members: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, service) in &compose.services {
            if service.network.mode == NetworkMode::Networks {
                for network in networks_of(service) {
                    members.entry(network).or_default().push(name);
                }
            }
        }
        if members.len() > 254 {
            return Err(NetPlanError::TooManyNetworks);
        }
        let mut addresses: BTreeMap<(&str, &str), (usize, Ipv4Addr)> = BTreeMap::new();
        for (index, (network, services)) in members.iter().enumerate() {
            let n = u8::try_from(index + 1).map_err(|_| NetPlanError::TooManyNetworks)?;
            if services.len() > 253 {
                return Err(NetPlanError::TooManyServices {
                    network: network.to_string(),
                });
            }
            for (i, service) in services.iter().enumerate() {
                let host = u8::try_from(i + 2).map_err(|_| NetPlanError::TooManyServices {
                    network: network.to_string(),
                })?;
                addresses.insert((service, network), (index, Ipv4Addr::new(10, 89, n, host)));
            }
            plan.bridges.push(Bridge {
                network: network.to_string(),
                ifname: format!("{BRIDGE_PREFIX}{n}"),
                gateway: Ipv4Addr::new(10, 89, n, 1),
                internal: compose
                    .networks
                    .get(*network)
                    .is_some_and(|def| def.internal),
            });
        }
        for (name, service) in &compose.services {
            let links: Vec<Link> = match service.network.mode {
                NetworkMode::Networks => networks_of(service)
                    .into_iter()
                    .enumerate()
                    .map(|(k, network)| {
                        let (bridge, address) = addresses[&(name.as_str(), network)];
                        let octets = address.octets();
                        Link {
                            bridge,
                            host_ifname: format!("dsv{}-{}", octets[2], octets[3]),
                            ifname: format!("eth{k}"),
                            address,
                        }
                    })
                    .collect(),
                NetworkMode::None => Vec::new(),
                _ => continue,
            };
            let default_gateway = links
                .iter()
                .map(|link| &plan.bridges[link.bridge])
                .find(|bridge| !bridge.internal)
                .map(|bridge| bridge.gateway);
            plan.namespaces.insert(
                name.clone(),
                Namespace {
                    owner: name.clone(),
                    links,
                    default_gateway,
                },
            );
        }
        Ok(plan)
    }

    /// Whether some bridge leads out of the CVM (so the guest must forward).
    pub(crate) fn needs_forwarding(&self) -> bool {
        self.bridges.iter().any(|bridge| !bridge.internal)
    }

    /// The namespace `service` runs in, if not the guest's.
    pub(crate) fn namespace_of(&self, service: &str) -> Option<&Namespace> {
        match self.placement.get(service)? {
            Placement::Guest => None,
            Placement::Namespace(owner) => self.namespaces.get(owner),
        }
    }

    /// Where `service`'s published ports lead: its first address, or
    /// loopback for a service in the guest's stack. `None` for a service
    /// with loopback only (nothing can reach it).
    pub(crate) fn port_target(&self, service: &str) -> Option<Ipv4Addr> {
        match self.placement.get(service)? {
            Placement::Guest => Some(Ipv4Addr::LOCALHOST),
            Placement::Namespace(owner) => self
                .namespaces
                .get(owner)?
                .links
                .first()
                .map(|link| link.address),
        }
    }

    /// `/etc/hosts` lines for `service`: `(address, names)` for itself and
    /// every service it can reach by name. On a shared network a service's
    /// name, `container_name` and its aliases on that network resolve to its
    /// address there; services in the guest's stack resolve to the gateway
    /// of the asker's first network (or loopback from the guest's stack).
    pub(crate) fn hosts(&self, compose: &Compose, service: &str) -> Vec<(Ipv4Addr, Vec<String>)> {
        let mut lines: Vec<(Ipv4Addr, Vec<String>)> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut add = |address: Ipv4Addr, names: Vec<String>| {
            let fresh: Vec<String> = names
                .into_iter()
                .filter(|name| seen.insert(name.clone()))
                .collect();
            if !fresh.is_empty() {
                lines.push((address, fresh));
            }
        };
        // The names each service answers to on `network` (aliases are
        // per network), including those sharing its namespace.
        let names_on = |owner: &str, network: Option<&str>| -> Vec<String> {
            let mut names = Vec::new();
            for (name, placement) in &self.placement {
                if *placement != Placement::Namespace(owner.to_string()) {
                    continue;
                }
                let net = &compose.services[name].network;
                names.push(name.clone());
                names.extend(net.container_name.clone());
                if let Some(hostname) = &net.hostname {
                    names.push(hostname.clone());
                }
                if let Some(aliases) = network.and_then(|n| net.networks.get(n)) {
                    names.extend(aliases.iter().cloned());
                }
            }
            names
        };
        let guest_names = || -> Vec<String> {
            self.placement
                .iter()
                .filter(|(_, placement)| **placement == Placement::Guest)
                .flat_map(|(name, _)| {
                    let net = &compose.services[name].network;
                    std::iter::once(name.clone()).chain(net.container_name.clone())
                })
                .collect()
        };
        match self.placement.get(service) {
            None => {}
            Some(Placement::Guest) => {
                add(Ipv4Addr::LOCALHOST, guest_names());
                for (owner, ns) in &self.namespaces {
                    if let Some(link) = ns.links.first() {
                        let network = &self.bridges[link.bridge].network;
                        add(link.address, names_on(owner, Some(network)));
                    }
                }
            }
            Some(Placement::Namespace(own)) => {
                let Some(ns) = self.namespaces.get(own) else {
                    return lines;
                };
                match ns.links.first() {
                    Some(first) => add(first.address, names_on(own, None)),
                    None => add(Ipv4Addr::LOCALHOST, names_on(own, None)),
                }
                for link in &ns.links {
                    let network = self.bridges[link.bridge].network.as_str();
                    for (other, other_ns) in &self.namespaces {
                        if let Some(theirs) =
                            other_ns.links.iter().find(|l| l.bridge == link.bridge)
                        {
                            add(theirs.address, names_on(other, Some(network)));
                        }
                    }
                }
                if let Some(first) = ns.links.first() {
                    add(self.bridges[first.bridge].gateway, guest_names());
                }
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compose(yaml: &str) -> Compose {
        Compose::parse(yaml).unwrap()
    }

    const THREE: &str = "services:
  web:
    image: x
    networks:
      front: {aliases: [www]}
      back: {}
  api:
    image: x
    networks: [back]
  other:
    image: x
    networks: [side]
  sidecar:
    image: x
    network_mode: service:web
  tool:
    image: x
    network_mode: host
  lonely:
    image: x
    network_mode: none
networks:
  front: {}
  back: {internal: true}
  side: {}
";

    #[test]
    fn numbers_networks_and_services_by_name() {
        let plan = NetPlan::new(&compose(THREE)).unwrap();
        let names: Vec<_> = plan
            .bridges
            .iter()
            .map(|b| (b.network.as_str(), b.ifname.as_str()))
            .collect();
        assert_eq!(
            names,
            [("back", "dsn1"), ("front", "dsn2"), ("side", "dsn3")]
        );
        assert!(plan.bridges[0].internal && !plan.bridges[1].internal);
        let web = &plan.namespaces["web"];
        assert_eq!(web.links.len(), 2);
        // back: api .2, web .3; front: web .2.
        assert_eq!(web.links[0].address, Ipv4Addr::new(10, 89, 1, 3));
        assert_eq!(web.links[0].ifname, "eth0");
        assert_eq!(web.links[0].host_ifname, "dsv1-3");
        assert_eq!(web.links[1].address, Ipv4Addr::new(10, 89, 2, 2));
        // The first network (back) is internal: the route leads out by front.
        assert_eq!(web.default_gateway, Some(Ipv4Addr::new(10, 89, 2, 1)));
        assert_eq!(plan.namespaces["api"].default_gateway, None);
        assert_eq!(
            plan.placement["sidecar"],
            Placement::Namespace("web".into())
        );
        assert_eq!(plan.placement["tool"], Placement::Guest);
        assert!(plan.namespaces["lonely"].links.is_empty());
        assert_eq!(
            plan.port_target("sidecar"),
            Some(Ipv4Addr::new(10, 89, 1, 3))
        );
        assert_eq!(plan.port_target("tool"), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(plan.port_target("lonely"), None);
        assert!(plan.needs_forwarding());
    }

    #[test]
    fn hosts_name_only_reachable_services() {
        let c = compose(THREE);
        let plan = NetPlan::new(&c).unwrap();
        let hosts = |s: &str| -> BTreeMap<String, Ipv4Addr> {
            plan.hosts(&c, s)
                .into_iter()
                .flat_map(|(a, names)| names.into_iter().map(move |n| (n, a)))
                .collect()
        };
        let api = hosts("api");
        assert_eq!(api["api"], Ipv4Addr::new(10, 89, 1, 2));
        assert_eq!(api["web"], Ipv4Addr::new(10, 89, 1, 3));
        // web's alias is on front only; api is on back.
        assert!(!api.contains_key("www"));
        // Sharing web's namespace, sidecar answers at web's address.
        assert_eq!(api["sidecar"], Ipv4Addr::new(10, 89, 1, 3));
        assert!(!api.contains_key("other"), "{api:?}");
        let other = hosts("other");
        assert!(!other.contains_key("web") && !other.contains_key("api"));
        assert_eq!(other["tool"], Ipv4Addr::new(10, 89, 3, 1));
        let web = hosts("web");
        assert_eq!(web["www"], Ipv4Addr::new(10, 89, 2, 2));
        assert_eq!(hosts("sidecar"), web);
        let tool = hosts("tool");
        assert_eq!(tool["tool"], Ipv4Addr::LOCALHOST);
        assert_eq!(tool["other"], Ipv4Addr::new(10, 89, 3, 2));
        assert_eq!(hosts("lonely")["lonely"], Ipv4Addr::LOCALHOST);
        assert!(!hosts("lonely").contains_key("web"));
    }

    #[test]
    fn default_network_and_bad_references() {
        let plan = NetPlan::new(&compose("services:\n  a: {image: x}\n  b: {image: x}\n")).unwrap();
        assert_eq!(plan.bridges.len(), 1);
        assert_eq!(plan.bridges[0].network, DEFAULT_NETWORK);
        assert_eq!(
            plan.namespaces["b"].links[0].address,
            Ipv4Addr::new(10, 89, 1, 3)
        );
        assert_eq!(
            plan.namespaces["a"].default_gateway,
            Some(Ipv4Addr::new(10, 89, 1, 1))
        );
        let looped = Compose::parse(
            "services:\n  a: {image: x, network_mode: 'service:b'}\n  b: {image: x, network_mode: 'service:a'}\n",
        );
        if let Ok(c) = looped {
            assert!(matches!(NetPlan::new(&c), Err(NetPlanError::Loop { .. })));
        }
    }
}
