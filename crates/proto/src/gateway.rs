//! The gateway's RPCs (UPSTREAM §10.4): a CVM registers over RA-TLS at
//! `/prpc/RegisterCvm` (also `/prpc/Gateway.RegisterCvm` and upstream's
//! legacy `Tproxy.` prefix), anyone reads `Info` and `AcmeInfo`; the admin
//! API (§10.8) is token-authenticated on its own listener. Field names are
//! upstream's proto fields; bytes travel hex-encoded as pRPC's JSON does.

use serde::{Deserialize, Serialize};

/// The port a guest's WireGuard listens on (upstream's guest `ListenPort`).
pub const GUEST_WG_PORT: u16 = 9182;

/// The guest's WireGuard interface name.
pub const GUEST_WG_INTERFACE: &str = "dstack-wg0";

/// One port's attributes in an app's port policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortAttrs {
    /// The app's port.
    pub port: u16,
    /// Send a PROXY protocol header on connections to this port.
    #[serde(default)]
    pub pp: bool,
}

/// An app's port policy (`port_policy` in app-compose.json).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortPolicy {
    /// Per-port attributes.
    #[serde(default)]
    pub ports: Vec<PortAttrs>,
    /// Only the listed ports may be reached.
    #[serde(default)]
    pub restrict_mode: bool,
}

impl PortPolicy {
    /// Whether `port` may be reached, and with a PROXY header: `None` when
    /// the policy refuses it.
    pub fn admit(&self, port: u16) -> Option<bool> {
        match self.ports.iter().find(|p| p.port == port) {
            Some(attrs) => Some(attrs.pp),
            None if self.restrict_mode => None,
            None => Some(false),
        }
    }
}

/// `RegisterCvm`'s request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterCvmRequest {
    /// The CVM's WireGuard public key, base64 (32 bytes).
    pub client_public_key: String,
    /// The app's port policy, from its app-compose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_policy: Option<PortPolicy>,
}

/// One gateway as a WireGuard peer of the CVM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireGuardPeer {
    /// Public key, base64.
    pub pk: String,
    /// The gateway's tunnel address with prefix, e.g. `10.8.0.1/16`.
    pub ip: String,
    /// `host:port` the CVM sends its encrypted UDP to.
    pub endpoint: String,
}

/// The CVM's side of the tunnel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireGuardConfig {
    /// The CVM's tunnel address, e.g. `10.8.0.2`.
    pub client_ip: String,
    /// Every gateway it peers with.
    #[serde(default)]
    pub servers: Vec<WireGuardPeer>,
}

/// What the guest agent needs to know about its public address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestAgentConfig {
    /// The public port clients use (443).
    pub external_port: u32,
    /// The gateway-side agent port.
    pub internal_port: u32,
    /// The base domain apps are reached under.
    pub domain: String,
    /// The TXT record prefix for custom domains.
    pub app_address_ns_prefix: String,
}

/// One gateway node of a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayNodeInfo {
    /// Node id (> 0).
    pub id: u32,
    /// Node UUID, hex.
    #[serde(default)]
    pub uuid: String,
    /// The node's RPC URL.
    pub url: String,
    /// Unix seconds the node was last seen alive.
    #[serde(default)]
    pub last_seen: u64,
    /// WireGuard public key, base64.
    pub wg_public_key: String,
    /// Tunnel address with prefix.
    pub wg_ip: String,
    /// WireGuard endpoint `host:port`.
    pub wg_endpoint: String,
}

/// `RegisterCvm`'s response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterCvmResponse {
    /// The tunnel configuration.
    pub wg: WireGuardConfig,
    /// The agent configuration.
    pub agent: GuestAgentConfig,
    /// Every gateway node.
    #[serde(default)]
    pub gateways: Vec<GatewayNodeInfo>,
}

/// `Info`'s response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoResponse {
    /// The base domain.
    pub base_domain: String,
    /// The public port.
    pub external_port: u32,
    /// The TXT record prefix for custom domains.
    pub app_address_ns_prefix: String,
    /// The gateway's version.
    pub version: String,
}

/// A certificate key (or the ACME account) with the quote that binds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotedPublicKey {
    /// The public key (DER SubjectPublicKeyInfo), hex.
    #[serde(with = "hex::serde")]
    pub public_key: Vec<u8>,
    /// The guest API's `GetQuote` answer as JSON, for report data tagged
    /// [`CERT_KEY_TAG`] over `public_key`.
    pub quote: String,
    /// The guest API's `Attest` answer as JSON (empty when not available).
    #[serde(default)]
    pub attestation: String,
}

/// `AcmeInfo`'s response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeInfoResponse {
    /// The ACME account URI.
    pub account_uri: String,
    /// Every certificate key the gateway has used, oldest first.
    #[serde(default)]
    pub quoted_hist_keys: Vec<QuotedPublicKey>,
    /// `GetQuote`'s answer as JSON for report data tagged [`ACME_ACCOUNT_TAG`].
    #[serde(default)]
    pub account_quote: String,
    /// `Attest`'s answer as JSON for the same report data.
    #[serde(default)]
    pub account_attestation: String,
}

/// The report-data tag (upstream's `QuoteContentType::Custom`) of the
/// quote over the ACME account URI: sha512(`"acme-account:" ‖ uri`).
pub const ACME_ACCOUNT_TAG: &str = "acme-account";

/// The report-data tag of the quote over a certificate's public key (DER
/// SubjectPublicKeyInfo): sha512(`"zt-cert:" ‖ spki`).
pub const CERT_KEY_TAG: &str = "zt-cert";

/// An instance as the admin API lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// Instance id, hex.
    pub instance_id: String,
    /// Tunnel address.
    pub ip: String,
    /// App id, hex.
    pub app_id: String,
    /// Base domain.
    pub base_domain: String,
    /// Unix seconds of the latest WireGuard handshake seen by this node (0: none).
    pub latest_handshake: u64,
    /// Open proxied connections to it on this node.
    pub num_connections: u64,
}

/// The admin API's `Status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// This node's id.
    pub id: u32,
    /// This node's RPC URL.
    pub url: String,
    /// Open proxied connections on this node.
    pub num_connections: u64,
    /// Registered instances.
    pub hosts: Vec<HostInfo>,
    /// Gateway nodes of the cluster.
    pub nodes: Vec<GatewayNodeInfo>,
    /// This node's status, `up` or `down`.
    #[serde(default)]
    pub status: String,
}

/// The admin API's `SetNodeStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetNodeStatusRequest {
    /// Node id (0: this node).
    #[serde(default)]
    pub id: u32,
    /// `up` or `down`.
    pub status: String,
}

/// The admin API's `Set/Clear/GetInstancePortPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstancePortPolicyRequest {
    /// Instance id, hex.
    pub instance_id: String,
    /// The override (for `Set`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PortPolicy>,
}

/// The admin API's `GetInstancePortPolicy` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstancePortPolicyResponse {
    /// The policy in force, if known.
    #[serde(default)]
    pub policy: Option<PortPolicy>,
    /// Where it comes from: `admin`, `instance` or `none`.
    pub source: String,
}

/// The admin API's `RenewCert` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewCertResponse {
    /// Whether a new certificate was issued.
    pub renewed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_policy_admits_as_upstream_documents() {
        let open = PortPolicy {
            ports: vec![PortAttrs { port: 80, pp: true }],
            restrict_mode: false,
        };
        assert_eq!(open.admit(80), Some(true));
        assert_eq!(open.admit(8080), Some(false));
        let closed = PortPolicy {
            restrict_mode: true,
            ..open
        };
        assert_eq!(closed.admit(80), Some(true));
        assert_eq!(closed.admit(8080), None);
        assert_eq!(PortPolicy::default().admit(1), Some(false));
    }

    #[test]
    fn register_request_reads_upstream_json() {
        let request: RegisterCvmRequest = serde_json::from_str(
            r#"{"client_public_key":"k","port_policy":{"ports":[{"port":443,"pp":true}],"restrict_mode":true}}"#,
        )
        .unwrap();
        assert_eq!(request.port_policy.unwrap().admit(443), Some(true));
        let bare: RegisterCvmRequest =
            serde_json::from_str(r#"{"client_public_key":"k"}"#).unwrap();
        assert!(bare.port_policy.is_none());
    }
}
