//! The cluster's shared records (in etcd, sealed) and this node's view of
//! them. Every replica writes through etcd and applies what it watches, so
//! a registration or certificate written on one node is served by all, and
//! a node that restarts rebuilds its view from etcd.
//!
//! Keys (under the cluster's namespace; names are visible to etcd's host,
//! values are not):
//! - `inst/<instance-id>`: a registered CVM ([`Instance`]);
//! - `ip/<a.b.c.d>`: which instance holds a tunnel address (claimed with
//!   create-if-absent, so two nodes never hand out one address);
//! - `node/<id>`, `status/<id>`: gateway nodes and their up/down status;
//! - `cert/<domain>`: a certificate and its key; `certkey/<domain>/<t>`: its
//!   quoted public key; `acme/account`, `acme/attestation`;
//! - `policy/<instance-id>`: an admin's port-policy override;
//! - `conn/<node>`, `hs/<node>`: per-node connection counts and handshake
//!   times, leased (they vanish with their node);
//! - `ep/<node>`: where that node last heard each CVM's WireGuard from (not
//!   leased: a node restarting reads its own to reopen sessions).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use dstack_proto::gateway::{GatewayNodeInfo, PortPolicy};
use serde::{Deserialize, Serialize};

/// A registered CVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Instance id, hex (the app id for apps without instance ids).
    pub instance_id: String,
    /// App id, hex.
    pub app_id: String,
    /// Compose hash, hex, as of the last registration.
    pub compose_hash: String,
    /// Tunnel address.
    pub ip: Ipv4Addr,
    /// WireGuard public key, base64.
    pub public_key: String,
    /// The policy the CVM reported (None: unknown, connections refused).
    pub port_policy: Option<PortPolicy>,
    /// Unix seconds of the last registration.
    pub registered_at: u64,
    /// The node that took the last registration.
    pub registered_by: u32,
}

/// A gateway node as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id.
    pub id: u32,
    /// RPC URL.
    pub url: String,
    /// WireGuard public key, base64.
    pub wg_public_key: String,
    /// Tunnel address with prefix.
    pub wg_ip: String,
    /// WireGuard endpoint.
    pub wg_endpoint: String,
    /// Unix seconds it last announced itself.
    pub last_seen: u64,
}

impl NodeRecord {
    /// The RPC shape.
    pub fn info(&self) -> GatewayNodeInfo {
        GatewayNodeInfo {
            id: self.id,
            uuid: String::new(),
            url: self.url.clone(),
            last_seen: self.last_seen,
            wg_public_key: self.wg_public_key.clone(),
            wg_ip: self.wg_ip.clone(),
            wg_endpoint: self.wg_endpoint.clone(),
        }
    }
}

/// A certificate the cluster serves.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// The base domain (the certificate covers it and `*.` it).
    pub domain: String,
    /// Chain, PEM, leaf first.
    pub chain_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
    /// Unix seconds of expiry.
    pub not_after: u64,
    /// The node that issued it.
    pub issued_by: u32,
    /// Unix seconds of issuance.
    pub issued_at: u64,
}

impl std::fmt::Debug for CertRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertRecord")
            .field("domain", &self.domain)
            .field("not_after", &self.not_after)
            .field("issued_by", &self.issued_by)
            .finish_non_exhaustive()
    }
}

/// What a key of the namespace holds, by its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key<'a> {
    /// `inst/<id>`.
    Instance(&'a str),
    /// `node/<id>`.
    Node(u32),
    /// `status/<id>`.
    Status(u32),
    /// `cert/<domain>`.
    Cert(&'a str),
    /// `policy/<instance-id>`.
    Policy(&'a str),
    /// `conn/<node>`.
    Connections(u32),
    /// `hs/<node>`.
    Handshakes(u32),
    /// Anything else (ip claims, ACME records, locks).
    Other,
}

impl<'a> Key<'a> {
    /// Classifies a key.
    pub fn parse(key: &'a str) -> Self {
        let Some((kind, rest)) = key.split_once('/') else {
            return Self::Other;
        };
        let node = || rest.parse::<u32>().ok();
        match kind {
            "inst" => Self::Instance(rest),
            "node" => node().map_or(Self::Other, Self::Node),
            "status" => node().map_or(Self::Other, Self::Status),
            "cert" => Self::Cert(rest),
            "policy" => Self::Policy(rest),
            "conn" => node().map_or(Self::Other, Self::Connections),
            "hs" => node().map_or(Self::Other, Self::Handshakes),
            _ => Self::Other,
        }
    }
}

/// This node's copy of the cluster's records.
#[derive(Debug, Default)]
pub struct View {
    /// Instances by instance id.
    pub instances: HashMap<String, Instance>,
    /// Instance ids by app id.
    pub by_app: HashMap<String, Vec<String>>,
    /// Nodes by id.
    pub nodes: BTreeMap<u32, NodeRecord>,
    /// Node statuses (`up`/`down`) by id; absent means up.
    pub statuses: BTreeMap<u32, String>,
    /// Certificates by base domain.
    pub certs: HashMap<String, CertRecord>,
    /// Admin port-policy overrides by instance id.
    pub overrides: HashMap<String, PortPolicy>,
    /// Other nodes' open connections per app.
    pub remote_connections: HashMap<u32, HashMap<String, u64>>,
    /// Other nodes' latest handshakes per instance (Unix seconds).
    pub remote_handshakes: HashMap<u32, HashMap<String, u64>>,
}

impl View {
    /// Inserts or replaces an instance.
    pub fn put_instance(&mut self, instance: Instance) {
        self.remove_instance(&instance.instance_id.clone());
        self.by_app
            .entry(instance.app_id.clone())
            .or_default()
            .push(instance.instance_id.clone());
        self.instances
            .insert(instance.instance_id.clone(), instance);
    }

    /// Removes an instance; returns it.
    pub fn remove_instance(&mut self, id: &str) -> Option<Instance> {
        let old = self.instances.remove(id)?;
        if let Some(ids) = self.by_app.get_mut(&old.app_id) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.by_app.remove(&old.app_id);
            }
        }
        Some(old)
    }

    /// The instances an id names: that instance, or every instance of that app.
    pub fn resolve(&self, id: &str) -> Vec<&Instance> {
        if let Some(instance) = self.instances.get(id) {
            return vec![instance];
        }
        self.by_app
            .get(id)
            .map(|ids| ids.iter().filter_map(|i| self.instances.get(i)).collect())
            .unwrap_or_default()
    }

    /// The policy in force for an instance and where it comes from.
    pub fn policy(&self, instance: &Instance) -> (Option<PortPolicy>, &'static str) {
        if let Some(policy) = self.overrides.get(&instance.instance_id) {
            return (Some(policy.clone()), "admin");
        }
        match &instance.port_policy {
            Some(policy) => (Some(policy.clone()), "instance"),
            None => (None, "none"),
        }
    }

    /// Whether node `id` is down.
    pub fn is_down(&self, id: u32) -> bool {
        self.statuses.get(&id).is_some_and(|s| s == "down")
    }

    /// The latest handshake of `instance` seen by any other node.
    pub fn remote_handshake(&self, instance: &str) -> u64 {
        self.remote_handshakes
            .values()
            .filter_map(|m| m.get(instance).copied())
            .max()
            .unwrap_or(0)
    }

    /// Connections to `app` open on other nodes.
    pub fn remote_connections(&self, app: &str) -> u64 {
        self.remote_connections
            .values()
            .filter_map(|m| m.get(app).copied())
            .sum()
    }
}

/// The view, shared by the proxy, the RPC and the sync task.
#[derive(Debug, Default)]
pub struct SharedView(RwLock<View>);

impl SharedView {
    /// Reads the view.
    pub fn read(&self) -> RwLockReadGuard<'_, View> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the view.
    pub fn update<R>(&self, change: impl FnOnce(&mut View) -> R) -> R {
        let mut view = self.0.write().unwrap_or_else(PoisonError::into_inner);
        change(&mut view)
    }
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, app: &str, last: u8) -> Instance {
        Instance {
            instance_id: id.into(),
            app_id: app.into(),
            compose_hash: "00".into(),
            ip: Ipv4Addr::new(10, 8, 64, last),
            public_key: "k".into(),
            port_policy: None,
            registered_at: 0,
            registered_by: 1,
        }
    }

    #[test]
    fn ids_resolve_to_an_instance_or_an_apps_instances() {
        let mut view = View::default();
        view.put_instance(instance("i1", "app", 1));
        view.put_instance(instance("i2", "app", 2));
        view.put_instance(instance("i3", "other", 3));
        assert_eq!(view.resolve("i2").len(), 1);
        assert_eq!(view.resolve("app").len(), 2);
        assert!(view.resolve("nobody").is_empty());
        // Re-registering moves an instance, never duplicates it.
        view.put_instance(instance("i2", "app", 9));
        assert_eq!(view.resolve("app").len(), 2);
        view.remove_instance("i1");
        view.remove_instance("i2");
        assert!(view.resolve("app").is_empty());
        assert!(!view.by_app.contains_key("app"));
    }

    #[test]
    fn overrides_win_and_unknown_policies_say_none() {
        let mut view = View::default();
        let mut i = instance("i1", "app", 1);
        assert_eq!(view.policy(&i), (None, "none"));
        i.port_policy = Some(PortPolicy::default());
        assert_eq!(view.policy(&i).1, "instance");
        view.overrides.insert(
            "i1".into(),
            PortPolicy {
                ports: vec![],
                restrict_mode: true,
            },
        );
        assert_eq!(view.policy(&i).1, "admin");
    }

    #[test]
    fn keys_classify_by_prefix() {
        assert_eq!(Key::parse("inst/ab"), Key::Instance("ab"));
        assert_eq!(Key::parse("node/3"), Key::Node(3));
        assert_eq!(Key::parse("node/x"), Key::Other);
        assert_eq!(Key::parse("cert/apps.test"), Key::Cert("apps.test"));
        assert_eq!(Key::parse("ip/10.8.64.1"), Key::Other);
        assert_eq!(Key::parse("hs/2"), Key::Handshakes(2));
    }
}
