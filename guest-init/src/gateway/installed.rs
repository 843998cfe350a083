//! What the kernel holds of the tunnel, and what a gateway's answer changes
//! in it: a re-registration may add gateway replicas, drop others, move an
//! endpoint, or (it should not) hand the CVM another address. Pure, so the
//! decisions are tested without a kernel.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::wireguard::Peer;

/// The tunnel as this guest last configured it. A field the kernel may or
/// may not hold (a configuration failed half-way) is recorded pessimistically:
/// unknown (`None`) for what is replaced whole, the union of both states for
/// what is added and removed one by one, so the next change undoes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Installed {
    /// The device exists, keyed and up: later changes leave the key out.
    pub(crate) keyed: bool,
    /// Its peers, sorted by key, when known to be the kernel's.
    pub(crate) peers: Option<Vec<Peer>>,
    /// The endpoint addresses the firewall accepts, when known.
    pub(crate) endpoints: Option<Vec<Ipv4Addr>>,
    /// Addresses the device may carry.
    pub(crate) addresses: BTreeSet<Ipv4Addr>,
    /// Gateway tunnel addresses that may be routed into the device.
    pub(crate) routes: BTreeSet<Ipv4Addr>,
}

/// What to do to go from an [`Installed`] state to the one an answer names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    /// No keyed device yet: create it, key it, set it up.
    pub(crate) create: bool,
    /// Replace the firewall table (the gateway endpoints changed).
    pub(crate) firewall: bool,
    /// Replace the device's peers.
    pub(crate) peers: bool,
    /// Add this address.
    pub(crate) add_address: Option<Ipv4Addr>,
    /// Remove these addresses.
    pub(crate) remove_addresses: Vec<Ipv4Addr>,
    /// Route these gateway tunnel addresses into the device.
    pub(crate) add_routes: Vec<Ipv4Addr>,
    /// Remove the routes to these.
    pub(crate) remove_routes: Vec<Ipv4Addr>,
}

/// The endpoint addresses of `peers`, sorted and without repeats: what the
/// firewall accepts.
pub(crate) fn endpoint_ips(peers: &[Peer]) -> Vec<Ipv4Addr> {
    let ips: BTreeSet<Ipv4Addr> = peers.iter().map(|p| *p.endpoint.ip()).collect();
    ips.into_iter().collect()
}

impl Installed {
    /// The state once `client_ip` and `peers` (sorted by key) are in place.
    pub(crate) fn of(client_ip: Ipv4Addr, peers: &[Peer]) -> Self {
        Self {
            keyed: true,
            peers: Some(peers.to_vec()),
            endpoints: Some(endpoint_ips(peers)),
            addresses: BTreeSet::from([client_ip]),
            routes: peers.iter().map(|p| p.tunnel_ip).collect(),
        }
    }

    /// What the kernel may hold while a change towards `target` is under
    /// way (and after it failed): see [`Installed`].
    pub(crate) fn during_change_to(&self, target: &Self) -> Self {
        Self {
            keyed: self.keyed,
            peers: self
                .peers
                .clone()
                .filter(|p| target.peers.as_ref() == Some(p)),
            endpoints: self
                .endpoints
                .clone()
                .filter(|e| target.endpoints.as_ref() == Some(e)),
            addresses: self.addresses.union(&target.addresses).copied().collect(),
            routes: self.routes.union(&target.routes).copied().collect(),
        }
    }
}

impl Changes {
    /// From `installed` to `target` (an [`Installed::of`]).
    pub(crate) fn between(installed: &Installed, target: &Installed) -> Self {
        let create = !installed.keyed;
        // A first configuration sends everything: the device may be half
        // made by an attempt that failed, and adding is idempotent.
        let missing = |have: &BTreeSet<Ipv4Addr>, want: &BTreeSet<Ipv4Addr>| -> Vec<Ipv4Addr> {
            want.iter()
                .filter(|ip| create || !have.contains(ip))
                .copied()
                .collect()
        };
        let stale = |have: &BTreeSet<Ipv4Addr>, want: &BTreeSet<Ipv4Addr>| -> Vec<Ipv4Addr> {
            have.difference(want).copied().collect()
        };
        Self {
            create,
            firewall: create || installed.endpoints != target.endpoints,
            peers: create || installed.peers != target.peers,
            add_address: missing(&installed.addresses, &target.addresses)
                .first()
                .copied(),
            remove_addresses: stale(&installed.addresses, &target.addresses),
            add_routes: missing(&installed.routes, &target.routes),
            remove_routes: stale(&installed.routes, &target.routes),
        }
    }

    /// Nothing to do: the answer is what the kernel has.
    pub(crate) fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl std::fmt::Display for Changes {
    /// A short account for the log, e.g. `peers replaced, +route 10.8.64.1`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.create {
            parts.push("tunnel created".to_owned());
        }
        if self.firewall {
            parts.push("firewall endpoints replaced".to_owned());
        }
        if self.peers && !self.create {
            parts.push("peers replaced".to_owned());
        }
        if !self.create {
            parts.extend(self.add_address.map(|ip| format!("+address {ip}")));
            parts.extend(self.add_routes.iter().map(|ip| format!("+route {ip}")));
        }
        parts.extend(
            self.remove_addresses
                .iter()
                .map(|ip| format!("-address {ip}")),
        );
        parts.extend(self.remove_routes.iter().map(|ip| format!("-route {ip}")));
        if parts.is_empty() {
            f.write_str("unchanged")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(key: u8, endpoint: &str, tunnel: [u8; 4]) -> Peer {
        Peer {
            public_key: [key; 32],
            endpoint: endpoint.parse().unwrap(),
            tunnel_ip: tunnel.into(),
        }
    }

    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 8, 0, 2);

    fn two_gateways() -> Vec<Peer> {
        vec![
            peer(1, "10.0.2.2:9013", [10, 8, 0, 1]),
            peer(2, "192.0.2.7:9013", [10, 8, 64, 1]),
        ]
    }

    #[test]
    fn the_first_configuration_sends_everything() {
        let target = Installed::of(CLIENT, &two_gateways());
        let changes = Changes::between(&Installed::default(), &target);
        assert_eq!(
            changes,
            Changes {
                create: true,
                firewall: true,
                peers: true,
                add_address: Some(CLIENT),
                remove_addresses: vec![],
                add_routes: vec![[10, 8, 0, 1].into(), [10, 8, 64, 1].into()],
                remove_routes: vec![],
            }
        );
        assert_eq!(
            changes.to_string(),
            "tunnel created, firewall endpoints replaced"
        );
    }

    #[test]
    fn the_same_answer_changes_nothing() {
        let installed = Installed::of(CLIENT, &two_gateways());
        let changes = Changes::between(&installed, &installed.clone());
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(changes.to_string(), "unchanged");
    }

    #[test]
    fn a_replica_added_and_one_removed_replaces_peers_and_diffs_routes() {
        let installed = Installed::of(CLIENT, &two_gateways());
        let next = vec![
            peer(1, "10.0.2.2:9013", [10, 8, 0, 1]),
            peer(3, "198.51.100.9:9013", [10, 8, 128, 1]),
        ];
        let changes = Changes::between(&installed, &Installed::of(CLIENT, &next));
        assert_eq!(
            changes,
            Changes {
                create: false,
                firewall: true,
                peers: true,
                add_address: None,
                remove_addresses: vec![],
                add_routes: vec![[10, 8, 128, 1].into()],
                remove_routes: vec![[10, 8, 64, 1].into()],
            }
        );
        assert_eq!(
            changes.to_string(),
            "firewall endpoints replaced, peers replaced, +route 10.8.128.1, -route 10.8.64.1"
        );
    }

    #[test]
    fn a_moved_endpoint_replaces_peers_and_firewall_but_no_route() {
        let installed = Installed::of(CLIENT, &two_gateways());
        let mut next = two_gateways();
        next[1].endpoint = "192.0.2.8:9013".parse().unwrap();
        let changes = Changes::between(&installed, &Installed::of(CLIENT, &next));
        assert!(changes.firewall && changes.peers && !changes.create);
        assert!(changes.add_routes.is_empty() && changes.remove_routes.is_empty());
        // A new port on the same address: the peers change, the firewall
        // (addresses only) does not.
        let mut next = two_gateways();
        next[0].endpoint = "10.0.2.2:9014".parse().unwrap();
        let changes = Changes::between(&installed, &Installed::of(CLIENT, &next));
        assert!(changes.peers && !changes.firewall, "{changes:?}");
    }

    #[test]
    fn another_client_ip_is_added_then_the_old_one_removed() {
        let installed = Installed::of(CLIENT, &two_gateways());
        let moved = Ipv4Addr::new(10, 8, 0, 3);
        let changes = Changes::between(&installed, &Installed::of(moved, &two_gateways()));
        assert_eq!(changes.add_address, Some(moved));
        assert_eq!(changes.remove_addresses, vec![CLIENT]);
        assert!(!changes.peers && !changes.firewall && changes.add_routes.is_empty());
        assert_eq!(changes.to_string(), "+address 10.8.0.3, -address 10.8.0.2");
    }

    /// A change that failed half-way leaves routes of both states possibly
    /// in place and the peers unknown: the next answer removes whatever of
    /// either it does not name, and sends the peers again.
    #[test]
    fn after_a_failed_change_both_states_are_cleaned_up() {
        let installed = Installed::of(CLIENT, &two_gateways());
        let attempted = Installed::of(CLIENT, &[peer(3, "198.51.100.9:9013", [10, 8, 128, 1])]);
        let uncertain = installed.during_change_to(&attempted);
        assert!(uncertain.keyed);
        assert_eq!((&uncertain.peers, &uncertain.endpoints), (&None, &None));
        assert_eq!(uncertain.routes.len(), 3);

        let last = Installed::of(CLIENT, &[peer(1, "10.0.2.2:9013", [10, 8, 0, 1])]);
        let changes = Changes::between(&uncertain, &last);
        assert!(changes.peers && changes.firewall && !changes.create);
        assert!(changes.add_routes.is_empty());
        assert_eq!(
            changes.remove_routes,
            [Ipv4Addr::new(10, 8, 64, 1), Ipv4Addr::new(10, 8, 128, 1)]
        );
        // What is already right stays known through a change.
        let same = installed.during_change_to(&installed);
        assert_eq!(same, installed);
    }

    #[test]
    fn a_tunnel_never_keyed_is_created_again_whole() {
        // Boot failed after the firewall: only what is added is repeated.
        let target = Installed::of(CLIENT, &two_gateways());
        let half = Installed::default().during_change_to(&target);
        let changes = Changes::between(&half, &target);
        assert!(changes.create && changes.peers && changes.firewall);
        assert_eq!(changes.add_address, Some(CLIENT));
        assert_eq!(changes.add_routes.len(), 2);
        assert!(changes.remove_routes.is_empty());
    }

    #[test]
    fn endpoints_are_sorted_and_unique() {
        let mut peers = two_gateways();
        peers.push(peer(4, "10.0.2.2:9020", [10, 8, 192, 1]));
        assert_eq!(
            endpoint_ips(&peers),
            vec![Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 7)]
        );
    }
}
