//! `gateway.toml`: what one gateway node is told at start. Keys, names and
//! defaults follow upstream's `[core.*]` sections (UPSTREAM §10) where they
//! mean the same thing; unknown keys are refused so a typo is not silently
//! ignored.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (names the key).
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The key, e.g. `wg.client_ip_range`.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// A duration written as upstream writes them: `250ms`, `5s`, `10m`, `5h`, `30d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl Span {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("{text:?} has no unit (ms, s, m, h, d)"))?;
        let (number, unit) = text.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} does not start with a number"))?;
        let seconds = |k: u64| Duration::from_secs(n.saturating_mul(k));
        let duration = match unit {
            "ms" => Duration::from_millis(n),
            "s" => seconds(1),
            "m" => seconds(60),
            "h" => seconds(3600),
            "d" => seconds(86400),
            _ => return Err(format!("{text:?} has an unknown unit (ms, s, m, h, d)")),
        };
        Ok(Self(duration))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Span::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An IPv4 network `a.b.c.d/n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    /// The address as written (for a gateway's own address, the host part matters).
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl Ipv4Net {
    /// Parses `a.b.c.d/n` (a bare address is `/32`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (
                a,
                p.parse::<u8>()
                    .map_err(|_| format!("bad prefix in {text:?}"))?,
            ),
            None => (text, 32),
        };
        if prefix > 32 {
            return Err(format!("prefix of {text:?} is over 32"));
        }
        let addr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IPv4 address"))?;
        Ok(Self { addr, prefix })
    }

    fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// The network's first address.
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// The network's last (broadcast) address.
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Whether `ip` is in this network.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    /// The usable host addresses, in order (no network or broadcast address
    /// for prefixes under 31).
    pub fn hosts(self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.network());
        let last = u32::from(self.broadcast());
        let (first, last) = if self.prefix >= 31 {
            (first, last)
        } else {
            (first + 1, last - 1)
        };
        (first..=last).map(Ipv4Addr::from)
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ipv4Net::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node in the cluster.
    pub node: NodeConfig,
    /// The public proxy.
    pub proxy: ProxyConfig,
    /// The registration RPC.
    pub rpc: RpcConfig,
    /// The WireGuard side.
    pub wg: WgConfig,
    /// The admin API.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Cluster state.
    pub etcd: EtcdConfig,
    /// Certificates.
    #[serde(default)]
    pub acme: Option<AcmeConfig>,
    /// How CVMs' quotes are checked.
    #[serde(default)]
    pub attestation: AttestationConfig,
    /// Where this node's keys and quotes come from.
    #[serde(default)]
    pub tee: TeeConfig,
    /// An optional webhook asked before a CVM may register (upstream's `[core.auth]`).
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Instance recycling.
    #[serde(default)]
    pub recycle: RecycleConfig,
    /// Development switches, all off by default.
    #[serde(default)]
    pub debug: DebugConfig,
}

/// `[node]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node id, unique in the cluster and above 0.
    pub id: u32,
    /// This node's RPC URL as CVMs reach it (handed to every CVM).
    pub url: String,
}

/// `[proxy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Listen addresses of the public proxy.
    pub listen: Vec<SocketAddr>,
    /// The public port clients use (handed to CVMs).
    #[serde(default = "default_external_port")]
    pub external_port: u16,
    /// Base domains; each gets a wildcard certificate `*.<domain>`. The
    /// first is the one handed to CVMs.
    pub base_domains: Vec<String>,
    /// Open connections per app on this node (0: no cap).
    #[serde(default = "default_max_per_app")]
    pub max_connections_per_app: u64,
    /// Read a PROXY header from each client first (behind a load balancer).
    #[serde(default)]
    pub inbound_pp: bool,
    /// The TXT record prefix of custom domains.
    #[serde(default = "default_ns_prefix")]
    pub app_address_ns_prefix: String,
    /// Also look up the legacy `_tapp-address` record.
    #[serde(default)]
    pub app_address_ns_compat: bool,
    /// DNS servers for custom-domain lookups (empty: the system's).
    #[serde(default)]
    pub app_address_dns_servers: Vec<SocketAddr>,
    /// How many of an app's freshest instances are dialled at once (0: one at random).
    #[serde(default = "default_top_n")]
    pub connect_top_n: usize,
    /// TLS versions offered on the terminate path (`1.2`, `1.3`).
    #[serde(default = "default_tls_versions")]
    pub tls_versions: Vec<String>,
    /// Per-socket buffer of the WireGuard TCP stack, bytes per direction.
    #[serde(default = "default_buffer")]
    pub tunnel_socket_buffer: usize,
    /// PEM file of a certificate chain served for every base domain from
    /// start, until ACME issues one (upstream's legacy `cert_chain`): a
    /// deployment with its own certificate, or none from a CA (benchmarks).
    #[serde(default)]
    pub cert_chain: Option<PathBuf>,
    /// PEM file of that certificate's private key (upstream's `cert_key`).
    #[serde(default)]
    pub cert_key: Option<PathBuf>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
}

/// `[proxy.timeouts]`, upstream's names and defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Dialling a CVM.
    pub connect: Span,
    /// Reading the ClientHello and finishing the TLS handshake.
    pub handshake: Span,
    /// A custom domain's TXT lookup.
    pub dns_resolve: Span,
    /// No bytes either way for this long closes a connection.
    pub idle: Span,
    /// A write that makes no progress for this long closes a connection.
    pub write: Span,
    /// Waiting for the other side to close after one side did.
    pub shutdown: Span,
    /// A connection's whole life.
    pub total: Span,
    /// Reading an inbound PROXY header.
    pub pp_header: Span,
    /// A handshake older than this makes an instance stale for load balancing.
    pub handshake_stale: Span,
}

impl Default for Timeouts {
    fn default() -> Self {
        let s = |n| Span(Duration::from_secs(n));
        Self {
            connect: s(5),
            handshake: s(5),
            dns_resolve: s(5),
            idle: s(600),
            write: s(5),
            shutdown: s(5),
            total: s(5 * 3600),
            pp_header: s(5),
            handshake_stale: s(1800),
        }
    }
}

/// `[rpc]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcConfig {
    /// Listen address of the RA-TLS registration RPC.
    pub listen: SocketAddr,
}

/// `[wg]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WgConfig {
    /// UDP listen address.
    pub listen: SocketAddr,
    /// This node's tunnel address with the tunnel network's prefix, e.g. `10.8.0.1/16`.
    pub ip: Ipv4Net,
    /// Where CVMs' tunnel addresses are allocated from (shared by the cluster).
    pub client_ip_range: Ipv4Net,
    /// Addresses never handed to CVMs (the gateways' own).
    #[serde(default)]
    pub reserved_net: Vec<Ipv4Net>,
    /// The endpoint CVMs send their encrypted UDP to, `host:port`.
    pub endpoint: String,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address (keep it on loopback or a private network).
    pub listen: SocketAddr,
    /// Turns authentication off. Never in production.
    #[serde(default)]
    pub insecure_no_auth: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9016)),
            insecure_no_auth: false,
        }
    }
}

/// `[etcd]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members.
    pub endpoints: Vec<String>,
    /// The key namespace (default: per app id).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `[acme]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL.
    pub directory: String,
    /// PEM file of an extra root the CA's HTTPS is trusted by (a private CA).
    #[serde(default)]
    pub ca_root: Option<PathBuf>,
    /// Account contact, e.g. `mailto:ops@example.com`.
    #[serde(default)]
    pub contact: Vec<String>,
    /// The CA's CAA identity, e.g. `letsencrypt.org` (empty: no CAA records).
    #[serde(default)]
    pub caa_identity: String,
    /// Renew this long before expiry.
    #[serde(default = "default_renew_before")]
    pub renew_before: Span,
    /// How often certificates are checked.
    #[serde(default = "default_renew_interval")]
    pub renew_interval: Span,
    /// The longest one issuance may take.
    #[serde(default = "default_renew_timeout")]
    pub renew_timeout: Span,
    /// DNS-01 through RFC 2136.
    pub rfc2136: Rfc2136Config,
}

/// `[acme.rfc2136]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rfc2136Config {
    /// The primary server accepting updates.
    pub server: SocketAddr,
    /// The zone updated.
    pub zone: String,
    /// TSIG key name.
    pub tsig_name: String,
    /// Environment variable holding the TSIG secret, base64 (default
    /// `DSTACK_GATEWAY_TSIG_SECRET`): secrets stay out of the measured file.
    #[serde(default = "default_tsig_env")]
    pub tsig_secret_env: String,
}

/// `[attestation]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationConfig {
    /// PEM of the quote root to trust instead of Intel's (a sim TEE's root).
    #[serde(default)]
    pub quote_root_pem: Option<String>,
    /// PCCS base URL quote collateral is fetched from.
    #[serde(default)]
    pub pccs_url: Option<String>,
}

/// `[tee]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeeConfig {
    /// The guest API socket keys and quotes come from.
    #[serde(default = "default_guest_api")]
    pub guest_api: PathBuf,
    /// Keys from this file instead of the guest API, and no quotes:
    /// development and benchmarks only.
    #[serde(default)]
    pub insecure_key_file: Option<PathBuf>,
}

impl Default for TeeConfig {
    fn default() -> Self {
        Self {
            guest_api: default_guest_api(),
            insecure_key_file: None,
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// URL the app info is POSTed to; a 2xx admits the CVM.
    pub url: String,
    /// Request timeout.
    #[serde(default = "default_auth_timeout")]
    pub timeout: Span,
}

/// `[recycle]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecycleConfig {
    /// How often stale instances are looked for.
    pub interval: Span,
    /// An instance with no handshake on any node for this long is removed.
    pub timeout: Span,
}

impl Default for RecycleConfig {
    fn default() -> Self {
        Self {
            interval: Span(Duration::from_secs(300)),
            timeout: Span(Duration::from_secs(10 * 3600)),
        }
    }
}

/// `[debug]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    /// Serve upstream's Debug RPC (registration without attestation) on this address.
    pub insecure_debug_rpc: Option<SocketAddr>,
    /// Let `localhost` SNI reach 127.0.0.1.
    pub insecure_localhost_backend: bool,
}

fn default_external_port() -> u16 {
    443
}
fn default_max_per_app() -> u64 {
    2000
}
fn default_ns_prefix() -> String {
    "_dstack-app-address".into()
}
fn default_top_n() -> usize {
    3
}
fn default_tls_versions() -> Vec<String> {
    vec!["1.2".into(), "1.3".into()]
}
fn default_buffer() -> usize {
    16 * 1024
}
fn default_renew_before() -> Span {
    Span(Duration::from_secs(30 * 86400))
}
fn default_renew_interval() -> Span {
    Span(Duration::from_secs(12 * 3600))
}
fn default_renew_timeout() -> Span {
    Span(Duration::from_secs(300))
}
fn default_tsig_env() -> String {
    "DSTACK_GATEWAY_TSIG_SECRET".into()
}
fn default_guest_api() -> PathBuf {
    PathBuf::from("/var/run/dstack.sock")
}
fn default_auth_timeout() -> Span {
    Span(Duration::from_secs(5))
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("gateway.toml"),
            message: e.to_string(),
        })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.node.id == 0 {
            return Err(invalid("node.id", "must be above 0"));
        }
        if self.proxy.listen.is_empty() {
            return Err(invalid("proxy.listen", "needs at least one address"));
        }
        if self.proxy.base_domains.is_empty() {
            return Err(invalid("proxy.base_domains", "needs at least one domain"));
        }
        for domain in &self.proxy.base_domains {
            if domain.is_empty() || domain.starts_with('.') || domain.starts_with("*.") {
                return Err(invalid(
                    "proxy.base_domains",
                    format!("{domain:?}: write the bare domain, e.g. apps.example.com"),
                ));
            }
        }
        for version in &self.proxy.tls_versions {
            if version != "1.2" && version != "1.3" {
                return Err(invalid(
                    "proxy.tls_versions",
                    format!("{version:?} (1.2 or 1.3)"),
                ));
            }
        }
        if self.proxy.cert_chain.is_some() != self.proxy.cert_key.is_some() {
            return Err(invalid(
                "proxy.cert_chain",
                "cert_chain and cert_key are set together or not at all",
            ));
        }
        if self.proxy.tunnel_socket_buffer < 4096 {
            return Err(invalid("proxy.tunnel_socket_buffer", "at least 4096 bytes"));
        }
        let wg = &self.wg;
        if !wg.ip.contains(wg.client_ip_range.network()) {
            return Err(invalid(
                "wg.client_ip_range",
                format!(
                    "{} is outside the tunnel network {}",
                    wg.client_ip_range, wg.ip
                ),
            ));
        }
        if self.etcd.endpoints.is_empty() {
            return Err(invalid("etcd.endpoints", "needs at least one etcd member"));
        }
        Ok(())
    }

    /// Whether `ip` may be handed to a CVM.
    pub fn allocatable(&self, ip: Ipv4Addr) -> bool {
        let wg = &self.wg;
        ip != wg.ip.addr
            && ip != wg.ip.broadcast()
            && ip != wg.ip.network()
            && !wg.reserved_net.iter().any(|net| net.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = r#"
[node]
id = 1
url = "https://10.0.2.2:9012"

[proxy]
listen = ["0.0.0.0:8443"]
base_domains = ["apps.test"]

[rpc]
listen = "0.0.0.0:9012"

[wg]
listen = "0.0.0.0:9013"
ip = "10.8.0.1/16"
client_ip_range = "10.8.64.0/18"
reserved_net = ["10.8.0.0/24"]
endpoint = "10.0.2.2:9013"

[etcd]
endpoints = ["http://10.0.2.2:2379"]
"#;

    #[test]
    fn example_parses_with_upstream_defaults() {
        let config = Config::parse(EXAMPLE).unwrap();
        assert_eq!(config.proxy.external_port, 443);
        assert_eq!(config.proxy.max_connections_per_app, 2000);
        assert_eq!(config.proxy.app_address_ns_prefix, "_dstack-app-address");
        assert_eq!(config.proxy.timeouts.connect.0, Duration::from_secs(5));
        assert_eq!(config.proxy.timeouts.total.0, Duration::from_secs(5 * 3600));
        assert_eq!(config.recycle.timeout.0, Duration::from_secs(36000));
        assert!(!config.admin.insecure_no_auth);
        assert!(config.debug.insecure_debug_rpc.is_none());
        assert!(config.proxy.cert_chain.is_none());
    }

    #[test]
    fn a_static_certificate_needs_both_files() {
        let both = EXAMPLE.replace(
            "base_domains = [\"apps.test\"]",
            "base_domains = [\"apps.test\"]\ncert_chain = \"/etc/gw/chain.pem\"\ncert_key = \"/etc/gw/key.pem\"",
        );
        let config = Config::parse(&both).unwrap();
        assert_eq!(
            config.proxy.cert_chain.as_deref(),
            Some(Path::new("/etc/gw/chain.pem"))
        );
        assert_eq!(
            config.proxy.cert_key.as_deref(),
            Some(Path::new("/etc/gw/key.pem"))
        );
        let chain_only = EXAMPLE.replace(
            "base_domains = [\"apps.test\"]",
            "base_domains = [\"apps.test\"]\ncert_chain = \"/etc/gw/chain.pem\"",
        );
        let err = Config::parse(&chain_only).unwrap_err().to_string();
        assert!(err.contains("proxy.cert_chain"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let typo = EXAMPLE.replace("base_domains", "base_domain");
        assert!(
            Config::parse(&typo)
                .unwrap_err()
                .to_string()
                .contains("base_domain")
        );
        let zero = EXAMPLE.replace("id = 1", "id = 0");
        assert!(
            Config::parse(&zero)
                .unwrap_err()
                .to_string()
                .contains("node.id")
        );
        let outside = EXAMPLE.replace("10.8.64.0/18", "10.9.0.0/18");
        assert!(
            Config::parse(&outside)
                .unwrap_err()
                .to_string()
                .contains("wg.client_ip_range")
        );
        let wild = EXAMPLE.replace("\"apps.test\"", "\"*.apps.test\"");
        assert!(
            Config::parse(&wild)
                .unwrap_err()
                .to_string()
                .contains("bare domain")
        );
    }

    #[test]
    fn spans_parse_upstream_units() {
        assert_eq!(Span::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(Span::parse("10m").unwrap().0, Duration::from_secs(600));
        assert_eq!(
            Span::parse("30d").unwrap().0,
            Duration::from_secs(2_592_000)
        );
        assert!(Span::parse("5").is_err());
        assert!(Span::parse("5y").is_err());
        assert!(Span::parse("s").is_err());
    }

    #[test]
    fn networks_allocate_hosts_outside_reserved() {
        let config = Config::parse(EXAMPLE).unwrap();
        let range = config.wg.client_ip_range;
        let first = range.hosts().next().unwrap();
        assert_eq!(first, Ipv4Addr::new(10, 8, 64, 1));
        assert!(config.allocatable(first));
        assert!(!config.allocatable(Ipv4Addr::new(10, 8, 0, 1)));
        assert!(!config.allocatable(Ipv4Addr::new(10, 8, 0, 9)));
        assert_eq!(range.hosts().count(), 16382);
        let net = Ipv4Net::parse("10.0.0.1/32").unwrap();
        assert_eq!(
            net.hosts().collect::<Vec<_>>(),
            vec![Ipv4Addr::new(10, 0, 0, 1)]
        );
    }
}
