//! Linking the CVM to dstack-gateway, as upstream's `dstack-util setup`
//! and `gateway-checker` do (UPSTREAM §10.4, §10.5), without `wg`,
//! `wg-quick` or `iptables`:
//!
//! 1. a WireGuard key for the CVM's life and an RA-TLS client certificate
//!    (`keeper.rs`, `register.rs`);
//! 2. `RegisterCvm` at each gateway URL in turn until one answers, after
//!    checking the gateway's own RA-TLS evidence (`register.rs`);
//! 3. the firewall: UDP to the WireGuard port from the gateways only
//!    (`firewall.rs`);
//! 4. the kernel's WireGuard device `dstack-wg0` with one peer per
//!    gateway, its address, and routes (`wireguard.rs`), changed later only
//!    as far as a new answer differs (`installed.rs`);
//! 5. the answer cached at `/run/dstack/gateway-cache.json`
//!    ([`GatewayCache`]).
//!
//! The boot registers through [`GatewayKeeper::register`] once the app's
//! identity is measured and its keys are in, before any service starts; a
//! failure leaves the app without ingress but running, as upstream's does.
//! Then [`GatewayKeeper::keep_alive`] registers again periodically for the
//! CVM's life.

mod cache;
mod firewall;
mod installed;
mod keeper;
mod register;
mod wireguard;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use dstack_attest::{CollateralCache, PccsError, PlatformKind, Quote, QuoteVerifier};
use dstack_proto::gateway::{
    GuestAgentConfig, PortPolicy, RegisterCvmRequest, RegisterCvmResponse,
};
use dstack_ra_tls::evidence::EvidenceChecker;
use dstack_ra_tls::{RaTlsCert, RaTlsError, RaTlsVerifier};

pub use cache::GatewayCache;
pub use keeper::GatewayKeeper;
pub use register::{ClientApp, GatewayAppPin, RegisterError};
pub use wireguard::WgError;

use register::GatewayCheck;
use wireguard::Peer;

/// Why the CVM is not linked to a gateway.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The app asks for a gateway, the host names none.
    #[error("gateway_enabled is set but the host configured no gateway URLs")]
    NoUrls,
    /// The KMS released the keys but names no gateway app to trust.
    #[error("the KMS names no gateway app (gateway_app_id is empty)")]
    NoGatewayApp,
    /// The client certificate could not be made (quote, event log).
    #[error("cannot make the client certificate")]
    ClientCert(#[source] RaTlsError),
    /// The PCCS URL is unusable.
    #[error("cannot use the PCCS {url} for the gateway's collateral")]
    Pccs {
        /// `SysConfig.pccs_url`.
        url: String,
        /// Why.
        #[source]
        source: PccsError,
    },
    /// No gateway registered this CVM; the first URL's error (each one's
    /// is logged).
    #[error("registration failed at every gateway URL ({tried})")]
    Unregistered {
        /// How many URLs were tried.
        tried: usize,
        /// The first one's failure.
        #[source]
        first: Box<RegisterError>,
    },
    /// A field of the answer is unusable.
    #[error("the gateway's answer has an invalid {field}: {value:?}")]
    BadAnswer {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
    },
    /// The answer names no WireGuard peer.
    #[error("the gateway named no WireGuard peer")]
    NoPeers,
    /// A peer's endpoint has no IPv4 address.
    #[error("cannot resolve the gateway endpoint {endpoint:?} to an IPv4 address")]
    Resolve {
        /// `host:port`.
        endpoint: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The WireGuard port's firewall was refused.
    #[error("applying the WireGuard firewall failed")]
    Firewall(#[source] dstack_nftables::NftError),
    /// The WireGuard device could not be set up.
    #[error("setting up the WireGuard tunnel failed")]
    WireGuard(#[from] WgError),
    /// A blocking step's thread died.
    #[error("a gateway setup thread failed")]
    Task(#[from] tokio::task::JoinError),
}

impl GatewayError {
    /// A misconfiguration fixed for the CVM's life (the measured compose,
    /// the host's config, the KMS's answer): retrying cannot help, as
    /// upstream's checker gives up on it (`EXIT_MISCONFIGURED`).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::NoUrls | Self::NoGatewayApp | Self::Pccs { .. })
    }
}

/// What linking to the gateway needs from the boot.
#[derive(Debug, Clone)]
pub struct GatewaySetup {
    /// `SysConfig.gateway_urls`, tried in order.
    pub urls: Vec<String>,
    /// `SysConfig.pccs_url` (empty: none).
    pub pccs_url: String,
    /// The app's port policy, sent with the registration.
    pub port_policy: PortPolicy,
    /// Who this guest is (for the client certificate).
    pub app: ClientApp,
    /// Which gateway app to accept.
    pub pin: GatewayAppPin,
    /// The guest's network interface, the only one gateways are accepted on.
    pub uplink: Option<String>,
    /// Where the cache goes (`/run/dstack/gateway-cache.json`).
    pub cache_path: PathBuf,
}

/// The CVM's link to the gateway: what the guest's `Info` and a later
/// re-registration need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayLink {
    /// The CVM's address in the tunnel.
    pub client_ip: Ipv4Addr,
    /// The tunnel's WireGuard public key, base64.
    pub wg_public_key: String,
    /// The gateway URL that registered it.
    pub gateway_url: String,
    /// The base domain, public port and custom-domain prefix.
    pub agent: GuestAgentConfig,
}

/// The guest's judge of gateway evidence: this guest's trust anchor (on
/// TDX Intel's root; on the sim TEE the root its own quotes chain to, the
/// only authority a sim guest has), collateral from the PCCS when one is
/// configured, else `own_collateral`.
fn evidence_checker(
    kind: PlatformKind,
    client: &RaTlsCert,
    own_collateral: Option<dstack_attest::Collateral>,
    pccs_url: &str,
) -> Result<EvidenceChecker, GatewayError> {
    let quotes = match kind {
        PlatformKind::Tdx => QuoteVerifier::intel(),
        PlatformKind::Sim => {
            let no_root = || {
                GatewayError::ClientCert(RaTlsError::Certificate(
                    "the TEE's own quote names no root certificate".into(),
                ))
            };
            let quote = dstack_ra_tls::certificate_quote(&client.cert_der)
                .map_err(GatewayError::ClientCert)?;
            let root = Quote::parse(&quote)
                .ok()
                .and_then(|q| q.signature.chain_root_der())
                .ok_or_else(no_root)?;
            QuoteVerifier::new(root)
        }
    };
    let mut verifier = RaTlsVerifier::new(quotes);
    if let Some(collateral) = own_collateral {
        verifier = verifier.with_collateral(collateral);
    }
    let checker = EvidenceChecker::new(verifier);
    if pccs_url.is_empty() {
        return Ok(checker);
    }
    let cache = CollateralCache::new(pccs_url).map_err(|source| GatewayError::Pccs {
        url: pccs_url.to_owned(),
        source,
    })?;
    Ok(checker.with_pccs(cache))
}

/// Tries each URL in turn; the first registration wins.
async fn register_first(
    urls: &[String],
    client: &RaTlsCert,
    check: &GatewayCheck,
    request: &RegisterCvmRequest,
) -> Result<(String, RegisterCvmResponse), GatewayError> {
    let mut first = None;
    for url in urls {
        match register::register(url, client, check, request).await {
            Ok(response) => return Ok((url.clone(), response)),
            Err(e) => {
                tracing::warn!(
                    "dstack-gateway {url}: {}; trying the next one",
                    dstack_proto::error_chain(&e)
                );
                first.get_or_insert(e);
            }
        }
    }
    Err(GatewayError::Unregistered {
        tried: urls.len(),
        first: Box::new(first.unwrap_or_else(|| RegisterError::Url(String::new()))),
    })
}

/// A gateway peer as the answer names it, its endpoint not yet resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PlannedPeer {
    public_key: [u8; 32],
    tunnel_ip: Ipv4Addr,
    endpoint: String,
}

/// The tunnel the answer describes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TunnelPlan {
    client_ip: Ipv4Addr,
    /// Sorted by public key (base64), as upstream writes its config.
    peers: Vec<PlannedPeer>,
}

/// An address, with or without a `/prefix` (the gateway's `ip` has one).
fn ipv4_of(field: &'static str, text: &str) -> Result<Ipv4Addr, GatewayError> {
    let address = text.split_once('/').map_or(text, |(ip, _)| ip);
    address.parse().map_err(|_| GatewayError::BadAnswer {
        field,
        value: text.to_owned(),
    })
}

impl TunnelPlan {
    fn of(response: &RegisterCvmResponse) -> Result<Self, GatewayError> {
        let client_ip = ipv4_of("wg.client_ip", &response.wg.client_ip)?;
        let mut servers = response.wg.servers.clone();
        servers.sort_by(|a, b| a.pk.cmp(&b.pk));
        let peers = servers
            .iter()
            .map(|server| {
                let public_key = BASE64
                    .decode(&server.pk)
                    .ok()
                    .and_then(|key| <[u8; 32]>::try_from(key).ok())
                    .ok_or_else(|| GatewayError::BadAnswer {
                        field: "wg.servers.pk",
                        value: server.pk.clone(),
                    })?;
                Ok(PlannedPeer {
                    public_key,
                    tunnel_ip: ipv4_of("wg.servers.ip", &server.ip)?,
                    endpoint: server.endpoint.clone(),
                })
            })
            .collect::<Result<Vec<_>, GatewayError>>()?;
        if peers.is_empty() {
            return Err(GatewayError::NoPeers);
        }
        Ok(Self { client_ip, peers })
    }

    /// The peers with their endpoints resolved (names through the guest's
    /// resolver; the kernel and the firewall take addresses).
    async fn resolve(&self) -> Result<Vec<Peer>, GatewayError> {
        let mut peers = Vec::with_capacity(self.peers.len());
        for planned in &self.peers {
            peers.push(Peer {
                public_key: planned.public_key,
                endpoint: resolve_v4(&planned.endpoint).await?,
                tunnel_ip: planned.tunnel_ip,
            });
        }
        Ok(peers)
    }
}

async fn resolve_v4(endpoint: &str) -> Result<SocketAddrV4, GatewayError> {
    if let Ok(addr) = endpoint.parse::<SocketAddrV4>() {
        return Ok(addr);
    }
    let fail = |source| GatewayError::Resolve {
        endpoint: endpoint.to_owned(),
        source,
    };
    let found = tokio::net::lookup_host(endpoint).await.map_err(fail)?;
    found
        .filter_map(|addr| match addr {
            std::net::SocketAddr::V4(v4) => Some(v4),
            std::net::SocketAddr::V6(_) => None,
        })
        .next()
        .ok_or_else(|| fail(std::io::Error::from(std::io::ErrorKind::NotFound)))
}

#[cfg(test)]
mod tests {
    use dstack_proto::gateway::{WireGuardConfig, WireGuardPeer};

    use super::*;

    fn peer(pk_byte: u8, ip: &str, endpoint: &str) -> WireGuardPeer {
        WireGuardPeer {
            pk: BASE64.encode([pk_byte; 32]),
            ip: ip.into(),
            endpoint: endpoint.into(),
        }
    }

    #[test]
    fn plans_the_tunnel_with_peers_sorted_by_key() {
        let response = RegisterCvmResponse {
            wg: WireGuardConfig {
                client_ip: "10.8.0.2".into(),
                servers: vec![
                    peer(0xbb, "10.8.64.1/16", "gw2.example:9013"),
                    peer(0x11, "10.8.0.1/16", "10.0.2.2:9013"),
                ],
            },
            ..RegisterCvmResponse::default()
        };
        let plan = TunnelPlan::of(&response).unwrap();
        assert_eq!(plan.client_ip, Ipv4Addr::new(10, 8, 0, 2));
        // "ERER..." sorts before "u7u7...".
        assert_eq!(plan.peers[0].public_key, [0x11; 32]);
        assert_eq!(plan.peers[0].tunnel_ip, Ipv4Addr::new(10, 8, 0, 1));
        assert_eq!(plan.peers[1].endpoint, "gw2.example:9013");
    }

    #[test]
    fn refuses_unusable_answers_by_field() {
        let mut response = RegisterCvmResponse::default();
        response.wg.client_ip = "10.8.0.2".into();
        assert!(matches!(
            TunnelPlan::of(&response),
            Err(GatewayError::NoPeers)
        ));
        response.wg.servers = vec![WireGuardPeer {
            pk: BASE64.encode([1; 31]),
            ip: "10.8.0.1".into(),
            endpoint: "10.0.2.2:9013".into(),
        }];
        let err = TunnelPlan::of(&response).unwrap_err();
        assert!(
            matches!(
                err,
                GatewayError::BadAnswer {
                    field: "wg.servers.pk",
                    ..
                }
            ),
            "{err}"
        );
        response.wg.client_ip = "fd00::2".into();
        let err = TunnelPlan::of(&response).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the gateway's answer has an invalid wg.client_ip: \"fd00::2\""
        );
    }

    #[tokio::test]
    async fn endpoints_resolve_to_ipv4() {
        assert_eq!(
            resolve_v4("10.0.2.2:9013").await.unwrap(),
            "10.0.2.2:9013".parse().unwrap()
        );
        assert_eq!(resolve_v4("localhost:9013").await.unwrap().port(), 9013);
        let err = resolve_v4("[::1]:9013").await.unwrap_err();
        assert!(matches!(err, GatewayError::Resolve { .. }), "{err}");
    }
}
