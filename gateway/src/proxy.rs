//! The public proxy (UPSTREAM §10.1–10.3): read the ClientHello, route by
//! its SNI, check the app's port policy and connection cap, dial the app's
//! freshest instances through the tunnel, then relay — after terminating
//! TLS here, or passing it through untouched.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::metrics::{Metrics, Refusal};
use crate::pages::Pages;
use crate::relay::{Io, Limits, RelayEnd, Rewind, relay};
use crate::route::{Mode, Route};
use crate::sni::{MAX_CLIENT_HELLO, SniError};
use crate::state::{Instance, SharedView};
use crate::txt::AppAddressResolver;

/// Relay buffer per direction: small, because a gateway holds many idle
/// connections and the tunnel's TCP buffers already absorb bursts.
const RELAY_BUFFER: usize = 8 * 1024;

/// How long an app's ranked instance list is reused (upstream's `cache_top_n`).
const TOP_N_CACHE: Duration = Duration::from_secs(30);

/// Why the proxy could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The TLS configuration.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The custom-domain resolver.
    #[error("DNS resolver: {0}")]
    Resolver(String),
}

/// Open connections per app on this node.
#[derive(Debug, Default)]
pub struct AppConnections(Mutex<HashMap<String, u64>>);

/// Holds one of an app's connections open.
#[derive(Debug)]
pub struct AppConnection {
    counts: Arc<AppConnections>,
    app: String,
}

impl Drop for AppConnection {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.app) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.app);
            }
        }
    }
}

impl AppConnections {
    /// Opens a connection for `app` unless it (with `elsewhere` open on
    /// other nodes) already has `cap` (0: no cap).
    pub fn open(self: &Arc<Self>, app: &str, elsewhere: u64, cap: u64) -> Option<AppConnection> {
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(app.to_owned()).or_default();
        if cap != 0 && *n + elsewhere >= cap {
            return None;
        }
        *n += 1;
        Some(AppConnection {
            counts: self.clone(),
            app: app.to_owned(),
        })
    }

    /// A snapshot: open connections per app.
    pub fn snapshot(&self) -> HashMap<String, u64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Where the tunnel's dialler and handshake times come from.
#[derive(Debug, Clone)]
pub struct Tunnel {
    /// The userspace WireGuard network.
    pub net: dstack_wgnet::WgNet,
    /// Latest handshake per tunnel address (Unix seconds), refreshed by the node.
    pub handshakes: Arc<ArcSwap<HashMap<Ipv4Addr, u64>>>,
}

/// The proxy's shared state.
pub struct Proxy {
    config: Arc<Config>,
    view: Arc<SharedView>,
    tunnel: Tunnel,
    terminate: TlsAcceptor,
    h2: TlsAcceptor,
    /// TLS-ALPN-01 challenges (RFC 8737): only `acme-tls/1`, answered with
    /// the pending challenge certificate and nothing else.
    acme: TlsAcceptor,
    txt: AppAddressResolver,
    metrics: Arc<Metrics>,
    connections: Arc<AppConnections>,
    pages: Arc<Pages>,
    base_domains: crate::route::BaseDomains,
    ranked: Mutex<HashMap<String, (tokio::time::Instant, Vec<Instance>)>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("listen", &self.config.proxy.listen)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// The proxy over this node's state.
    pub fn new(
        config: Arc<Config>,
        view: Arc<SharedView>,
        tunnel: Tunnel,
        certs: Arc<crate::certs::CertStore>,
        metrics: Arc<Metrics>,
        connections: Arc<AppConnections>,
        pages: Arc<Pages>,
    ) -> Result<Self, ProxyError> {
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = config
            .proxy
            .tls_versions
            .iter()
            .map(|v| {
                if v == "1.2" {
                    &rustls::version::TLS12
                } else {
                    &rustls::version::TLS13
                }
            })
            .collect();
        let server = |alpn: Vec<Vec<u8>>| -> Result<Arc<rustls::ServerConfig>, ProxyError> {
            let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&versions)?
            .with_no_client_auth()
            .with_cert_resolver(certs.clone());
            // Only what the route serves: a client offering ALPN with no
            // overlap would be refused (browsers offer h2 and http/1.1).
            tls.alpn_protocols = alpn;
            Ok(Arc::new(tls))
        };
        let txt = AppAddressResolver::new(crate::txt::ResolverOptions {
            prefix: config.proxy.app_address_ns_prefix.clone(),
            compat: config.proxy.app_address_ns_compat,
            servers: config.proxy.app_address_dns_servers.clone(),
            timeout: config.proxy.timeouts.dns_resolve.0,
        })
        .map_err(|e| ProxyError::Resolver(e.to_string()))?;
        let base_domains: crate::route::BaseDomains =
            config.proxy.base_domains.iter().cloned().collect();
        Ok(Self {
            terminate: TlsAcceptor::from(server(Vec::new())?),
            h2: TlsAcceptor::from(server(vec![b"h2".to_vec()])?),
            acme: TlsAcceptor::from(server(vec![dstack_acme::ACME_TLS_ALPN.to_vec()])?),
            config,
            view,
            tunnel,
            txt,
            metrics,
            connections,
            pages,
            base_domains,
            ranked: Mutex::default(),
        })
    }

    /// Accepts on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (tcp, client) = match listener.accept().await {
                Ok(conn) => conn,
                Err(_) => {
                    // Out of descriptors: let others close, then go on.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let proxy = self.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let total = proxy.config.proxy.timeouts.total.0;
                let _ = tokio::time::timeout(total, proxy.handle(tcp, client)).await;
            });
        }
    }

    async fn handle(&self, tcp: TcpStream, peer: SocketAddr) {
        let _active = self.metrics.active();
        let local = tcp.local_addr().unwrap_or(peer);
        let timeouts = &self.config.proxy.timeouts;
        let (header, stream) = if self.config.proxy.inbound_pp {
            let mut tcp = tcp;
            match crate::pp::read_proxy_header(&mut tcp, timeouts.pp_header.0).await {
                Ok((header, leftover)) => (header, Rewind::new(leftover, tcp)),
                Err(crate::pp::PpError::Timeout(_)) => {
                    return self.metrics.refused(Refusal::HandshakeTimeout);
                }
                Err(crate::pp::PpError::Eof { .. }) => {
                    return self.metrics.refused(Refusal::ClientClosed);
                }
                Err(_) => return self.metrics.refused(Refusal::ProxyHeader),
            }
        } else {
            (
                crate::pp::ProxyHeader::from_connection(peer, local),
                Rewind::new(Vec::new(), tcp),
            )
        };
        let mut stream = stream;
        let hello = tokio::time::timeout(
            timeouts.handshake.0,
            crate::sni::read_client_hello(&mut stream, MAX_CLIENT_HELLO),
        )
        .await;
        let (hello_bytes, hello) = match hello {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => return self.metrics.refused(sni_refusal(&e)),
            Err(_) => return self.metrics.refused(Refusal::HandshakeTimeout),
        };
        let Some(sni) = hello.sni else {
            return self.metrics.refused(Refusal::MalformedSni);
        };
        if hello
            .alpn
            .iter()
            .any(|p| p.as_slice() == dstack_acme::ACME_TLS_ALPN)
        {
            // A CA validating a name this gateway is getting a certificate
            // for: never routed to an app (RFC 8737 §3).
            let client = Rewind::new(hello_bytes, stream);
            return match tokio::time::timeout(timeouts.handshake.0, self.acme.accept(client)).await
            {
                Ok(Ok(_)) => self.metrics.count("connections", "acme_challenge"),
                _ => self.metrics.refused(Refusal::TlsHandshake),
            };
        }
        let route = match crate::route::route(
            &sni,
            &self.base_domains,
            self.config.debug.insecure_localhost_backend,
        ) {
            Ok(route) => route,
            Err(_) => return self.metrics.refused(Refusal::MalformedSni),
        };
        // The ClientHello goes first: to rustls on the terminate path, to the
        // app on the passthrough path.
        let client = Rewind::new(hello_bytes, stream);
        let ends = Ends { header };
        let outcome = match route {
            Route::App { id, port, mode } => self.to_app(client, &id, port, mode, ends).await,
            Route::CustomDomain(name) => self.to_custom_domain(client, &name, ends).await,
            Route::Gateway | Route::Health => self.serve_pages(client).await,
            Route::Localhost { port, mode } => self.to_localhost(client, port, mode, ends).await,
        };
        match outcome {
            Ok(()) => self.metrics.count("connections", "proxied"),
            Err(refusal) => self.metrics.refused(refusal),
        }
    }

    async fn to_custom_domain<C: Io>(
        &self,
        client: C,
        name: &str,
        ends: Ends,
    ) -> Result<(), Refusal> {
        let address = tokio::time::timeout(
            self.config.proxy.timeouts.dns_resolve.0,
            self.txt.lookup(name),
        )
        .await
        .map_err(|_| Refusal::UnknownApp)?
        .map_err(|_| Refusal::UnknownApp)?;
        // A custom domain always passes TLS through: the app holds its certificate.
        self.to_app(
            client,
            &address.app_id,
            address.port,
            Mode::Passthrough,
            ends,
        )
        .await
    }

    async fn to_app<C: Io>(
        &self,
        client: C,
        id: &str,
        port: u16,
        mode: Mode,
        ends: Ends,
    ) -> Result<(), Refusal> {
        let (candidates, app_id, pp, elsewhere) = {
            let view = self.view.read();
            let instances = view.resolve(id);
            let Some(first) = instances.first() else {
                return Err(Refusal::UnknownApp);
            };
            let app_id = first.app_id.clone();
            // Fail closed: an instance whose policy is unknown, or refuses
            // the port, is not dialled.
            let mut pp = false;
            let admitted: Vec<Instance> = instances
                .into_iter()
                .filter(|instance| match view.policy(instance).0 {
                    Some(policy) => match policy.admit(port) {
                        Some(wants_pp) => {
                            pp |= wants_pp;
                            true
                        }
                        None => false,
                    },
                    None => false,
                })
                .cloned()
                .collect();
            let elsewhere = view.remote_connections(&app_id);
            (admitted, app_id, pp, elsewhere)
        };
        if candidates.is_empty() {
            return Err(Refusal::PortPolicy);
        }
        let _slot = self
            .connections
            .open(
                &app_id,
                elsewhere,
                self.config.proxy.max_connections_per_app,
            )
            .ok_or(Refusal::ConnectionCap)?;
        let backend = self.dial(id, candidates, port).await?;
        self.relay_to(client, backend, mode, pp, ends).await
    }

    async fn to_localhost<C: Io>(
        &self,
        client: C,
        port: u16,
        mode: Mode,
        ends: Ends,
    ) -> Result<(), Refusal> {
        let backend = tokio::time::timeout(
            self.config.proxy.timeouts.connect.0,
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
        )
        .await
        .map_err(|_| Refusal::BackendUnreachable)?
        .map_err(|_| Refusal::BackendUnreachable)?;
        self.relay_to(client, Box::new(backend), mode, false, ends)
            .await
    }

    async fn relay_to<C: Io>(
        &self,
        client: C,
        mut backend: Box<dyn Io>,
        mode: Mode,
        pp: bool,
        ends: Ends,
    ) -> Result<(), Refusal> {
        let timeouts = &self.config.proxy.timeouts;
        if pp {
            let header = crate::pp::encode_outbound(&ends.header);
            tokio::time::timeout(timeouts.write.0, backend.write_all(&header))
                .await
                .map_err(|_| Refusal::BackendUnreachable)?
                .map_err(|_| Refusal::BackendUnreachable)?;
        }
        let limits = Limits {
            idle: timeouts.idle.0,
            total: timeouts.total.0,
            buffer: RELAY_BUFFER,
        };
        let end = match mode {
            Mode::Passthrough => relay(client, backend, limits).await.0,
            Mode::Terminate | Mode::H2 => {
                let acceptor = if mode == Mode::H2 {
                    &self.h2
                } else {
                    &self.terminate
                };
                let tls = tokio::time::timeout(timeouts.handshake.0, acceptor.accept(client))
                    .await
                    .map_err(|_| Refusal::HandshakeTimeout)?
                    .map_err(|_| Refusal::TlsHandshake)?;
                relay(tls, backend, limits).await.0
            }
        };
        if end == RelayEnd::Idle {
            self.metrics.count("relay_end", "idle");
        }
        Ok(())
    }

    /// Dials up to `connect_top_n` of the candidates with the freshest
    /// handshakes at once; the first to connect wins.
    async fn dial(
        &self,
        id: &str,
        candidates: Vec<Instance>,
        port: u16,
    ) -> Result<Box<dyn Io>, Refusal> {
        let ranked = self.rank(id, candidates);
        let connect = self.config.proxy.timeouts.connect.0;
        let mut attempts = tokio::task::JoinSet::new();
        for instance in ranked {
            let net = self.tunnel.net.clone();
            let to = SocketAddrV4::new(instance.ip, port);
            attempts.spawn(async move { tokio::time::timeout(connect, net.connect(to)).await });
        }
        while let Some(result) = attempts.join_next().await {
            if let Ok(Ok(Ok(stream))) = result {
                attempts.abort_all();
                return Ok(Box::new(stream));
            }
        }
        Err(Refusal::BackendUnreachable)
    }

    fn rank(&self, id: &str, candidates: Vec<Instance>) -> Vec<Instance> {
        let top_n = self.config.proxy.connect_top_n;
        if candidates.len() <= 1 {
            return candidates;
        }
        if top_n == 0 {
            use rand::seq::SliceRandom;
            let mut candidates = candidates;
            candidates.shuffle(&mut rand::thread_rng());
            candidates.truncate(1);
            return candidates;
        }
        let now = tokio::time::Instant::now();
        let mut cache = self.ranked.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, list)) = cache.get(id)
            && now.duration_since(*at) < TOP_N_CACHE
            && list
                .iter()
                .all(|i| candidates.iter().any(|c| c.instance_id == i.instance_id))
        {
            return list.clone();
        }
        let handshakes = self.tunnel.handshakes.load();
        let stale_before = crate::state::now_secs()
            .saturating_sub(self.config.proxy.timeouts.handshake_stale.0.as_secs());
        let mut ranked: Vec<(u64, Instance)> = candidates
            .into_iter()
            .map(|i| (handshakes.get(&i.ip).copied().unwrap_or(0), i))
            .collect();
        ranked.sort_by_key(|(handshake, _)| std::cmp::Reverse(*handshake));
        let fresh: Vec<Instance> = ranked
            .iter()
            .filter(|(t, _)| *t >= stale_before)
            .take(top_n)
            .map(|(_, i)| i.clone())
            .collect();
        // With no fresh handshake anywhere (just registered), try the newest anyway.
        let list = if fresh.is_empty() {
            ranked.into_iter().take(top_n).map(|(_, i)| i).collect()
        } else {
            fresh
        };
        cache.insert(id.to_owned(), (now, list.clone()));
        list
    }

    async fn serve_pages<C: Io + 'static>(&self, client: C) -> Result<(), Refusal> {
        let tls = tokio::time::timeout(
            self.config.proxy.timeouts.handshake.0,
            self.terminate.accept(client),
        )
        .await
        .map_err(|_| Refusal::HandshakeTimeout)?
        .map_err(|_| Refusal::TlsHandshake)?;
        self.pages.serve(tls).await;
        Ok(())
    }
}

/// What the PROXY header sent to an app says: the client's header when
/// one came in, else this connection's two ends.
#[derive(Debug, Clone)]
struct Ends {
    header: crate::pp::ProxyHeader,
}

fn sni_refusal(error: &SniError) -> Refusal {
    use crate::sni::Malformed;
    match error {
        SniError::Oversized { .. } => Refusal::OversizedHello,
        SniError::Malformed(
            Malformed::ServerName(_) | Malformed::NameType(_) | Malformed::MultipleHostNames,
        ) => Refusal::MalformedSni,
        SniError::Eof { .. } => Refusal::ClientClosed,
        _ => Refusal::MalformedHello,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_hangs_up_is_not_a_timeout() {
        assert_eq!(
            sni_refusal(&SniError::Eof { read: 3 }),
            Refusal::ClientClosed
        );
        assert_eq!(
            sni_refusal(&SniError::Oversized {
                needed: 5000,
                max: 4096
            }),
            Refusal::OversizedHello
        );
        assert_eq!(
            sni_refusal(&SniError::NotHandshake(b'G')),
            Refusal::MalformedHello
        );
    }

    #[test]
    fn app_caps_count_this_node_and_others() {
        let counts = Arc::new(AppConnections::default());
        let a = counts.open("app", 0, 2).unwrap();
        let b = counts.open("app", 0, 2).unwrap();
        assert!(counts.open("app", 0, 2).is_none());
        drop(a);
        assert!(counts.open("app", 1, 2).is_none(), "one open elsewhere");
        assert!(counts.open("other", 0, 2).is_some());
        drop(b);
        assert!(counts.snapshot().is_empty());
        assert!(counts.open("app", 10_000, 0).is_some(), "0 means no cap");
    }
}
