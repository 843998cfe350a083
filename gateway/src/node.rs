//! One gateway node: its keys, its tunnel, its copy of the cluster's state
//! kept current by an etcd watch, and the periodic work — announcing
//! itself, publishing connection counts and handshake times, recycling
//! instances no node has heard from, and renewing certificates under a
//! cluster-wide lock so exactly one replica issues each.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine;
use dstack_cluster_kv::{ClusterKv, SealKey};
use dstack_proto::gateway::{
    ACME_ACCOUNT_TAG, AcmeInfoResponse, CERT_KEY_TAG, HostInfo, QuotedPublicKey,
};
use tokio::sync::Notify;

use crate::certs::{CertStore, certified_key, certified_key_from_files};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pages::Pages;
use crate::proxy::{AppConnections, Tunnel};
use crate::state::{CertRecord, Instance, Key, NodeRecord, SharedView, now_secs};
use crate::tee::Tee;

/// How often this node re-announces itself.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(30);
/// How often connection counts and handshake times are published.
const PUBLISH_EVERY: Duration = Duration::from_secs(10);
/// How often the handshake cache used for load balancing is refreshed.
const HANDSHAKES_EVERY: Duration = Duration::from_secs(5);
/// How often the CVMs' WireGuard endpoints are checked for changes (and
/// written to etcd when they changed).
const ENDPOINTS_EVERY: Duration = Duration::from_secs(1);
/// How soon a node retries a certificate that is missing or failed.
const RENEW_RETRY: Duration = Duration::from_secs(20);
/// The lease of published counts: they vanish this long after their node.
const PUBLISH_TTL: Duration = Duration::from_secs(45);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Keys or evidence.
    #[error(transparent)]
    Tee(#[from] crate::tee::TeeError),
    /// Cluster state.
    #[error("etcd: {0}")]
    Store(#[from] dstack_cluster_kv::KvError),
    /// The tunnel.
    #[error("WireGuard: {0}")]
    Tunnel(#[from] dstack_wgnet::WgError),
    /// ACME configuration.
    #[error("ACME: {0}")]
    Acme(String),
    /// The operator's certificate (`[proxy] cert_chain`/`cert_key`).
    #[error(transparent)]
    Cert(#[from] crate::certs::CertError),
}

/// The ACME side of a node.
#[derive(Debug)]
pub struct Acme {
    directory: String,
    contact: Vec<String>,
    caa_identity: String,
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    dns: dstack_acme::Rfc2136,
    renew_before: Duration,
    renew_interval: Duration,
    renew_timeout: Duration,
}

/// One running gateway node.
#[derive(Debug)]
pub struct Node {
    /// The configuration.
    pub config: Arc<Config>,
    /// Cluster state.
    pub kv: ClusterKv,
    /// This node's copy of it.
    pub view: Arc<SharedView>,
    /// The tunnel.
    pub tunnel: Tunnel,
    /// Certificates served.
    pub certs: Arc<CertStore>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Open connections per app.
    pub connections: Arc<AppConnections>,
    /// `gateway.<base>` pages.
    pub pages: Arc<Pages>,
    /// Keys and quotes.
    pub tee: Tee,
    /// The cluster's app id.
    pub app_id: String,
    acme: Option<Acme>,
    renew_now: Notify,
    renew_request: std::sync::Mutex<Option<HashMap<String, Option<CertRecord>>>>,
}

/// What one renewal attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    /// A certificate was issued and stored.
    Issued,
    /// Nothing was due (or another node just renewed).
    NotNeeded,
    /// Another node holds the domain's lock.
    Elsewhere,
}

impl Node {
    /// Starts a node: keys, etcd, tunnel, announcement, initial state.
    pub async fn start(config: Arc<Config>, tee: Tee) -> Result<Arc<Self>, NodeError> {
        // Read first: a wrong path is reported before anything connects.
        let operator_cert = match (&config.proxy.cert_chain, &config.proxy.cert_key) {
            (Some(chain), Some(key)) => Some(certified_key_from_files(chain, key)?),
            _ => None,
        };
        let secrets = tee.secrets(config.node.id).await?;
        let namespace = config
            .etcd
            .namespace
            .clone()
            .unwrap_or_else(|| format!("/dstack-gateway/{}/", secrets.app_id));
        let seal = SealKey::derive(&secrets.seal_secret, "dstack-gateway cluster state v1");
        let kv = ClusterKv::connect(
            &config.etcd.endpoints,
            &namespace,
            seal,
            dstack_cluster_kv::ConnectOptions::default(),
        )
        .await?;
        let net = dstack_wgnet::WgNet::start(dstack_wgnet::WgConfig {
            socket_buffer: config.proxy.tunnel_socket_buffer,
            // The proxy's own connect timeout is the one that matters.
            connect_timeout: config.proxy.timeouts.connect.0,
            ..dstack_wgnet::WgConfig::new(*secrets.wg_private, config.wg.listen, config.wg.ip.addr)
        })
        .await?;
        let acme = match &config.acme {
            Some(acme) => Some(acme_from_config(acme)?),
            None => None,
        };
        let responder = dstack_acme::TlsAlpnResponder::new();
        let mut certs = CertStore::new(Some(responder));
        if let Some(key) = operator_cert {
            certs = certs.with_fallback(&config.proxy.base_domains, key);
        }
        let node = Arc::new(Self {
            tunnel: Tunnel {
                net,
                handshakes: Arc::new(ArcSwap::default()),
            },
            certs: Arc::new(certs),
            view: Arc::new(SharedView::default()),
            metrics: Arc::new(Metrics::default()),
            connections: Arc::new(AppConnections::default()),
            pages: Arc::new(Pages::default()),
            app_id: secrets.app_id.clone(),
            config,
            kv,
            tee,
            acme,
            renew_now: Notify::new(),
            renew_request: std::sync::Mutex::default(),
        });
        node.announce().await?;
        node.load().await?;
        node.restore_endpoints().await?;
        node.refresh_pages().await;
        Ok(node)
    }

    /// This node's record.
    fn record(&self) -> NodeRecord {
        NodeRecord {
            id: self.config.node.id,
            url: self.config.node.url.clone(),
            wg_public_key: base64::engine::general_purpose::STANDARD
                .encode(self.tunnel.net.public_key()),
            wg_ip: self.config.wg.ip.to_string(),
            wg_endpoint: self.config.wg.endpoint.clone(),
            last_seen: now_secs(),
        }
    }

    async fn announce(&self) -> Result<(), NodeError> {
        let record = self.record();
        self.kv.put(&format!("node/{}", record.id), &record).await?;
        self.view.update(|v| v.nodes.insert(record.id, record));
        Ok(())
    }

    /// Reads every record and makes the view exactly that; returns the
    /// revision read at.
    async fn load(&self) -> Result<i64, NodeError> {
        let snapshot = self.kv.snapshot::<serde_json::Value>("").await?;
        self.replace_all(snapshot.entries);
        Ok(snapshot.revision)
    }

    /// Makes the view exactly `entries`: what is gone is removed (its
    /// tunnel peer too), what is there is applied.
    fn replace_all(&self, entries: Vec<dstack_cluster_kv::Entry<serde_json::Value>>) {
        let present: std::collections::HashSet<&str> =
            entries.iter().map(|e| e.key.as_str()).collect();
        let (instances, certs, policies) = {
            let view = self.view.read();
            (
                view.instances
                    .keys()
                    .map(|id| format!("inst/{id}"))
                    .collect::<Vec<_>>(),
                view.certs
                    .keys()
                    .map(|d| format!("cert/{d}"))
                    .collect::<Vec<_>>(),
                view.overrides
                    .keys()
                    .map(|i| format!("policy/{i}"))
                    .collect::<Vec<_>>(),
            )
        };
        for key in instances.iter().chain(&certs).chain(&policies) {
            if !present.contains(key.as_str()) {
                self.apply(key, None);
            }
        }
        for entry in entries {
            self.apply(&entry.key, Some(entry.value));
        }
    }

    /// Applies one change of `key` (None: deleted) to the view, the tunnel
    /// and the certificate store.
    pub fn apply(&self, key: &str, value: Option<serde_json::Value>) {
        match (Key::parse(key), value) {
            (Key::Instance(_), Some(value)) => {
                let Some(instance) = decode::<Instance>(value) else {
                    return;
                };
                let old = self.view.update(|v| {
                    let old = v.instances.get(&instance.instance_id).cloned();
                    v.put_instance(instance.clone());
                    old
                });
                set_peer(&self.tunnel.net, old.as_ref(), &instance);
            }
            (Key::Instance(id), None) => {
                if let Some(old) = self.view.update(|v| v.remove_instance(id)) {
                    remove_peer(&self.tunnel.net, &old);
                }
            }
            (Key::Node(id), Some(value)) => {
                if let Some(record) = decode(value) {
                    self.view.update(|v| v.nodes.insert(id, record));
                }
            }
            (Key::Node(id), None) => {
                self.view.update(|v| v.nodes.remove(&id));
            }
            (Key::Status(id), value) => {
                let status: Option<String> = value.and_then(decode);
                self.view.update(|v| match status {
                    Some(s) => v.statuses.insert(id, s),
                    None => v.statuses.remove(&id),
                });
            }
            (Key::Cert(domain), Some(value)) => {
                let Some(record) = decode(value) else { return };
                self.load_cert(&record);
                self.view
                    .update(|v| v.certs.insert(domain.to_owned(), record));
            }
            (Key::Cert(domain), None) => {
                self.certs.remove(domain);
                self.view.update(|v| v.certs.remove(domain));
            }
            (Key::Policy(id), value) => {
                let policy = value.and_then(decode);
                self.view.update(|v| match policy {
                    Some(p) => v.overrides.insert(id.to_owned(), p),
                    None => v.overrides.remove(id),
                });
            }
            (Key::Connections(node), value) if node != self.config.node.id => {
                let counts: Option<HashMap<String, u64>> = value.and_then(decode);
                self.view.update(|v| match counts {
                    Some(c) => v.remote_connections.insert(node, c),
                    None => v.remote_connections.remove(&node),
                });
            }
            (Key::Handshakes(node), value) if node != self.config.node.id => {
                let times: Option<HashMap<String, u64>> = value.and_then(decode);
                self.view.update(|v| match times {
                    Some(t) => v.remote_handshakes.insert(node, t),
                    None => v.remote_handshakes.remove(&node),
                });
            }
            _ => {}
        }
    }

    fn load_cert(&self, record: &CertRecord) {
        match certified_key(&record.domain, &record.chain_pem, &record.key_pem) {
            Ok(key) => self.certs.set(&record.domain, key),
            Err(e) => eprintln!(
                "dstack-gateway: certificate for {} not loaded: {e}",
                record.domain
            ),
        }
    }

    /// Follows the cluster's changes until the task is dropped; a broken
    /// watch is re-opened after a full reload.
    pub async fn follow(self: Arc<Self>) {
        loop {
            let watch = match self.load().await {
                Ok(revision) => {
                    self.kv
                        .watch_from::<serde_json::Value>("", revision + 1)
                        .await
                }
                Err(e) => {
                    eprintln!("dstack-gateway: cannot read etcd: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut watch = match watch {
                Ok(watch) => watch,
                Err(e) => {
                    eprintln!("dstack-gateway: cannot watch etcd: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                match watch.next().await {
                    Ok(dstack_cluster_kv::Event::Put(entry)) => {
                        let acme =
                            entry.key.starts_with("certkey/") || entry.key.starts_with("acme/");
                        self.apply(&entry.key, Some(entry.value));
                        if acme {
                            self.refresh_pages().await;
                        }
                    }
                    Ok(dstack_cluster_kv::Event::Delete(key)) => self.apply(&key, None),
                    Ok(dstack_cluster_kv::Event::Resync(entries)) => {
                        self.replace_all(entries);
                        self.refresh_pages().await;
                    }
                    Err(e) => {
                        eprintln!("dstack-gateway: watch: {e}");
                        break;
                    }
                }
            }
        }
    }

    /// Periodic work until the task is dropped.
    pub async fn maintain(self: Arc<Self>) {
        let mut announce = tokio::time::interval(ANNOUNCE_EVERY);
        let mut publish = tokio::time::interval(PUBLISH_EVERY);
        let mut handshakes = tokio::time::interval(HANDSHAKES_EVERY);
        let mut recycle = tokio::time::interval(self.config.recycle.interval.0);
        let mut endpoints = tokio::time::interval(ENDPOINTS_EVERY);
        let mut lease: Option<dstack_cluster_kv::Lease> = None;
        let mut saved_endpoints: HashMap<String, SocketAddr> = HashMap::new();
        loop {
            tokio::select! {
                _ = endpoints.tick() => {
                    if let Err(e) = self.save_endpoints(&mut saved_endpoints).await {
                        eprintln!("dstack-gateway: saving WireGuard endpoints: {e}");
                    }
                }
                _ = announce.tick() => {
                    if let Err(e) = self.announce().await {
                        eprintln!("dstack-gateway: announce: {e}");
                    }
                }
                _ = handshakes.tick() => self.refresh_handshakes(),
                _ = publish.tick() => {
                    if let Err(e) = self.publish(&mut lease).await {
                        eprintln!("dstack-gateway: publishing counts: {e}");
                        lease = None;
                    }
                }
                _ = recycle.tick() => self.recycle().await,
            }
        }
    }

    /// Where this node's tunnel last heard each instance from, by instance id.
    fn endpoints(&self) -> HashMap<String, SocketAddr> {
        let by_ip: HashMap<Ipv4Addr, SocketAddr> = self
            .tunnel
            .net
            .peers()
            .into_iter()
            .filter_map(|p| Some((p.allowed_ip, p.endpoint?)))
            .collect();
        let view = self.view.read();
        view.instances
            .values()
            .filter_map(|i| by_ip.get(&i.ip).map(|e| (i.instance_id.clone(), *e)))
            .collect()
    }

    /// Writes this node's CVM endpoints to `ep/<node>` when they changed
    /// since `saved`. Only a CVM starts a WireGuard session (the gateway
    /// learns its endpoint from its handshake), and a restarted node has
    /// lost every session: without the endpoints it could reach no CVM
    /// until each re-handshakes on its own, minutes later.
    async fn save_endpoints(
        &self,
        saved: &mut HashMap<String, SocketAddr>,
    ) -> Result<(), NodeError> {
        let endpoints = self.endpoints();
        if endpoints == *saved {
            return Ok(());
        }
        self.kv
            .put(&format!("ep/{}", self.config.node.id), &endpoints)
            .await?;
        *saved = endpoints;
        Ok(())
    }

    /// Gives the CVMs' peers the endpoints this node saved before it
    /// (re)started, so it can open sessions itself.
    async fn restore_endpoints(&self) -> Result<(), NodeError> {
        let saved: Option<HashMap<String, SocketAddr>> =
            self.kv.get(&format!("ep/{}", self.config.node.id)).await?;
        let view = self.view.read();
        for (id, endpoint) in saved.unwrap_or_default() {
            let Some(instance) = view.instances.get(&id) else {
                continue;
            };
            let Some(public_key) = wg_key(&instance.public_key) else {
                continue;
            };
            // A stale endpoint costs one unanswered handshake; the CVM's
            // next handshake corrects it.
            let _ = self.tunnel.net.set_peer(dstack_wgnet::Peer {
                public_key,
                allowed_ip: instance.ip,
                endpoint: Some(endpoint),
                keepalive: None,
            });
        }
        Ok(())
    }

    fn refresh_handshakes(&self) {
        let times: HashMap<Ipv4Addr, u64> = self
            .tunnel
            .net
            .peers()
            .into_iter()
            .filter_map(|p| {
                let at = p.last_handshake?.duration_since(UNIX_EPOCH).ok()?.as_secs();
                Some((p.allowed_ip, at))
            })
            .collect();
        self.tunnel.handshakes.store(Arc::new(times));
    }

    async fn publish(&self, lease: &mut Option<dstack_cluster_kv::Lease>) -> Result<(), NodeError> {
        if lease.is_none() {
            *lease = Some(self.kv.grant_lease(PUBLISH_TTL).await?);
        }
        let Some(lease) = lease.as_ref() else {
            return Ok(());
        };
        let id = self.config.node.id;
        let counts = self.connections.snapshot();
        self.kv
            .put_ephemeral(&format!("conn/{id}"), &counts, lease)
            .await?;
        let by_ip = self.tunnel.handshakes.load();
        let times: HashMap<String, u64> = {
            let view = self.view.read();
            view.instances
                .values()
                .filter_map(|i| by_ip.get(&i.ip).map(|t| (i.instance_id.clone(), *t)))
                .collect()
        };
        self.kv
            .put_ephemeral(&format!("hs/{id}"), &times, lease)
            .await?;
        Ok(())
    }

    /// Removes instances no node has had a handshake with for the recycle
    /// timeout (never-handshaken instances count from their registration).
    async fn recycle(&self) {
        let timeout = self.config.recycle.timeout.0.as_secs();
        let now = now_secs();
        let stale: Vec<Instance> = {
            let view = self.view.read();
            let local = self.tunnel.handshakes.load();
            view.instances
                .values()
                .filter(|i| {
                    let last = local
                        .get(&i.ip)
                        .copied()
                        .unwrap_or(0)
                        .max(view.remote_handshake(&i.instance_id))
                        .max(i.registered_at);
                    now.saturating_sub(last) > timeout
                })
                .cloned()
                .collect()
        };
        for instance in stale {
            let _ = self
                .kv
                .delete(&format!("inst/{}", instance.instance_id))
                .await;
            let _ = self.kv.delete(&format!("ip/{}", instance.ip)).await;
            self.metrics.count("recycled", "instance");
        }
    }

    /// Asks the renewal loop to renew every certificate now. The request
    /// names the certificates this node serves at this moment: when
    /// several replicas are asked at once, the first to take a domain's
    /// lock renews it and the others find it already replaced, so the
    /// cluster renews once, not once per replica asked.
    pub fn renew_now(&self) {
        let seen: HashMap<String, Option<CertRecord>> = {
            let view = self.view.read();
            self.config
                .proxy
                .base_domains
                .iter()
                .map(|d| (d.clone(), view.certs.get(d).cloned()))
                .collect()
        };
        // An earlier request still pending saw older certificates: keep it.
        self.renew_request
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(seen);
        self.renew_now.notify_one();
    }

    /// Renews certificates as they come due, until the task is dropped;
    /// without `[acme]` there is nothing to renew and it never returns
    /// (the node's tasks are joined and any that ends stops the node).
    pub async fn renew_certificates(self: Arc<Self>) {
        let Some(acme) = &self.acme else {
            return std::future::pending().await;
        };
        let mut request: Option<HashMap<String, Option<CertRecord>>> = None;
        loop {
            let mut retry_soon = false;
            for domain in self.config.proxy.base_domains.clone() {
                let forced = request
                    .as_ref()
                    .map(|seen| seen.get(&domain).cloned().flatten());
                match self.renew(acme, &domain, forced).await {
                    Ok(Renewal::Issued) => self.metrics.count("certificates", "issued"),
                    Ok(Renewal::NotNeeded) => {}
                    Ok(Renewal::Elsewhere) => {
                        // If the holder fails, this node must try again
                        // soon, not half a day later.
                        retry_soon |= !self.view.read().certs.contains_key(&domain);
                    }
                    Err(e) => {
                        retry_soon = true;
                        self.metrics.count("certificates", "failed");
                        eprintln!("dstack-gateway: certificate for {domain}: {e}");
                    }
                }
            }
            let wait = if retry_soon {
                acme.renew_interval.min(RENEW_RETRY)
            } else {
                acme.renew_interval
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => request = None,
                () = self.renew_now.notified() => {
                    request = self
                        .renew_request
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take();
                }
            }
        }
    }

    /// Issues a certificate for `domain` if it is missing or due, holding
    /// the domain's lock. `forced` is a renewal request (with the
    /// certificate served when it was made): it renews even what is not
    /// due, unless the certificate was replaced since.
    async fn renew(
        &self,
        acme: &Acme,
        domain: &str,
        forced: Option<Option<CertRecord>>,
    ) -> Result<Renewal, String> {
        let key = format!("cert/{domain}");
        let due = |record: &Option<CertRecord>| match record {
            None => true,
            Some(r) => dstack_acme::renew_due(
                UNIX_EPOCH + Duration::from_secs(r.not_after),
                SystemTime::now(),
                acme.renew_before,
            ),
        };
        let current: Option<CertRecord> = self.view.read().certs.get(domain).cloned();
        if forced.is_none() && !due(&current) {
            return Ok(Renewal::NotNeeded);
        }
        let Some(_lock) = self
            .kv
            .try_lock(
                &format!("certlock/{domain}"),
                acme.renew_timeout + Duration::from_secs(60),
            )
            .await
            .map_err(|e| e.to_string())?
        else {
            eprintln!("dstack-gateway: certificate for {domain}: another node is renewing it");
            return Ok(Renewal::Elsewhere);
        };
        // Another node may have renewed since this one looked (or since
        // the renewal was asked for).
        let stored: Option<CertRecord> = self.kv.get(&key).await.map_err(|e| e.to_string())?;
        if !must_issue(forced.as_ref(), &stored, due(&stored)) {
            eprintln!("dstack-gateway: certificate for {domain}: another node renewed it");
            return Ok(Renewal::NotNeeded);
        }
        eprintln!(
            "dstack-gateway: certificate for {domain}: {}",
            match (&forced, &stored) {
                (_, None) => "issuing the first one",
                (Some(_), Some(_)) => "renewing on request",
                (None, Some(_)) => "renewing before it expires",
            }
        );
        let client = self.acme_client(acme).await?;
        if !acme.caa_identity.is_empty() {
            acme.dns
                .set_caa(domain, client.account_uri(), &acme.caa_identity)
                .await
                .map_err(|e| format!("CAA: {e}"))?;
        }
        let names = vec![format!("*.{domain}"), domain.to_owned()];
        let issued = client
            .issue(&names, dstack_acme::Solver::Dns01(&acme.dns))
            .await
            .map_err(|e| crate::registry::error_chain(&e))?;
        let not_after = issued
            .not_after
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let record = CertRecord {
            domain: domain.to_owned(),
            chain_pem: issued.chain_pem.clone(),
            key_pem: issued.key_pem.to_string(),
            not_after,
            issued_by: self.config.node.id,
            issued_at: now_secs(),
        };
        self.kv
            .put(&key, &record)
            .await
            .map_err(|e| e.to_string())?;
        eprintln!(
            "dstack-gateway: certificate for {domain} issued, valid for {} days",
            not_after.saturating_sub(now_secs()) / 86400
        );
        // Served here at once; the other nodes load it from their watch.
        self.apply(&key, serde_json::to_value(&record).ok());
        // The certificate is issued and stored whatever happens to its
        // quote: a missing quote is reported, not a reason to issue again.
        if let Err(e) = self
            .publish_cert_key(domain, &record, &issued.public_key_der)
            .await
        {
            eprintln!("dstack-gateway: quoting the key of the certificate for {domain}: {e}");
        }
        Ok(Renewal::Issued)
    }

    /// Publishes the quoted public key of a new certificate for `/acme-info`.
    async fn publish_cert_key(
        &self,
        domain: &str,
        record: &CertRecord,
        public_key_der: &[u8],
    ) -> Result<(), String> {
        let (quote, attestation) = self
            .tee
            .quote_content(CERT_KEY_TAG, public_key_der)
            .await
            .map_err(|e| e.to_string())?;
        let quoted = QuotedPublicKey {
            public_key: public_key_der.to_vec(),
            quote,
            attestation,
        };
        self.kv
            .put(
                &format!("certkey/{domain}/{:020}", record.issued_at),
                &quoted,
            )
            .await
            .map_err(|e| e.to_string())
    }

    /// The cluster's ACME account, created (and quoted) on first use.
    async fn acme_client(&self, acme: &Acme) -> Result<dstack_acme::AcmeClient, String> {
        let stored: Option<dstack_acme::AccountCredentials> = self
            .kv
            .get("acme/account")
            .await
            .map_err(|e| e.to_string())?;
        let client = match stored {
            Some(credentials) => dstack_acme::AcmeClient::restore(credentials, &acme.extra_roots)
                .await
                .map_err(|e| crate::registry::error_chain(&e))?,
            None => {
                let (client, credentials) = dstack_acme::AcmeClient::create(
                    &acme.directory,
                    &acme.contact,
                    &acme.extra_roots,
                )
                .await
                .map_err(|e| crate::registry::error_chain(&e))?;
                // Only the first writer's account counts: a racing node adopts it.
                if !self
                    .kv
                    .create("acme/account", &credentials)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    return Box::pin(self.acme_client(acme)).await;
                }
                let (quote, attestation) = self
                    .tee
                    .quote_content(ACME_ACCOUNT_TAG, client.account_uri().as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                let record = serde_json::json!({
                    "account_uri": client.account_uri(),
                    "quote": quote,
                    "attestation": attestation,
                });
                self.kv
                    .put("acme/attestation", &record)
                    .await
                    .map_err(|e| e.to_string())?;
                client
            }
        };
        Ok(client.with_timeout(acme.renew_timeout))
    }

    /// Rebuilds `/acme-info` from the cluster's records.
    pub async fn refresh_pages(&self) {
        let mut info = AcmeInfoResponse::default();
        if let Ok(Some(account)) = self.kv.get::<serde_json::Value>("acme/attestation").await {
            let field = |name: &str| {
                account
                    .get(name)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            info.account_uri = field("account_uri");
            info.account_quote = field("quote");
            info.account_attestation = field("attestation");
        }
        if let Ok(keys) = self.kv.list::<QuotedPublicKey>("certkey/").await {
            info.quoted_hist_keys = keys.into_iter().map(|e| e.value).collect();
        }
        self.pages
            .acme_info
            .store(Arc::new(serde_json::to_string(&info).unwrap_or_default()));
        let index = format!(
            "dstack-gateway node {} of app {}: {} instances\n",
            self.config.node.id,
            self.app_id,
            self.view.read().instances.len()
        );
        self.pages.index.store(Arc::new(index));
        let app_info = serde_json::json!({
            "app_id": self.app_id,
            "node_id": self.config.node.id,
            "base_domains": self.config.proxy.base_domains,
        });
        self.pages.app_info.store(Arc::new(app_info.to_string()));
    }

    /// The admin API's view of instances.
    pub fn hosts(&self) -> Vec<HostInfo> {
        let view = self.view.read();
        let handshakes = self.tunnel.handshakes.load();
        let connections = self.connections.snapshot();
        let mut hosts: Vec<HostInfo> = view
            .instances
            .values()
            .map(|i| HostInfo {
                instance_id: i.instance_id.clone(),
                ip: i.ip.to_string(),
                app_id: i.app_id.clone(),
                base_domain: self.config.proxy.base_domains[0].clone(),
                latest_handshake: handshakes.get(&i.ip).copied().unwrap_or(0),
                num_connections: connections.get(&i.app_id).copied().unwrap_or(0),
            })
            .collect();
        hosts.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        hosts
    }
}

/// Whether the holder of a domain's lock issues a certificate: `stored` is
/// the domain's record in etcd, `due` whether it is missing or near expiry,
/// and `forced` a renewal request with the record served when it was made.
/// A request is void once the record changed: another node took the lock
/// first and renewed.
fn must_issue(forced: Option<&Option<CertRecord>>, stored: &Option<CertRecord>, due: bool) -> bool {
    match forced {
        Some(seen) => due || stored == seen,
        None => due,
    }
}

/// A WireGuard key, base64, as the tunnel takes it.
fn wg_key(text: &str) -> Option<[u8; 32]> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    <[u8; 32]>::try_from(key.as_slice()).ok()
}

/// Makes `instance` a peer of the tunnel. `old` is what the instance was
/// before: a CVM that rebooted re-registers with a new key but keeps its
/// address, and the tunnel refuses a second key for one address, so the
/// old key goes first.
pub(crate) fn set_peer(net: &dstack_wgnet::WgNet, old: Option<&Instance>, instance: &Instance) {
    if let Some(old) = old
        && old.public_key != instance.public_key
    {
        remove_peer(net, old);
    }
    let Some(public_key) = wg_key(&instance.public_key) else {
        return;
    };
    let peer = dstack_wgnet::Peer {
        public_key,
        allowed_ip: instance.ip,
        endpoint: None,
        keepalive: None,
    };
    if let Err(e) = net.set_peer(peer) {
        eprintln!(
            "dstack-gateway: instance {} not added to the tunnel: {e}",
            instance.instance_id
        );
    }
}

/// Removes `instance`'s peer from the tunnel.
pub(crate) fn remove_peer(net: &dstack_wgnet::WgNet, instance: &Instance) {
    if let Some(public_key) = wg_key(&instance.public_key) {
        net.remove_peer(&public_key);
    }
}

fn decode<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Option<T> {
    serde_json::from_value(value).ok()
}

fn acme_from_config(acme: &crate::config::AcmeConfig) -> Result<Acme, NodeError> {
    let bad = |e: String| NodeError::Acme(e);
    let extra_roots = match &acme.ca_root {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| bad(format!("ca_root {}: {e}", path.display())))?;
            dstack_acme::parse_pem_certs(&pem).map_err(|e| bad(e.to_string()))?
        }
        None => Vec::new(),
    };
    let secret = std::env::var(&acme.rfc2136.tsig_secret_env).map_err(|_| {
        bad(format!(
            "the TSIG secret is read from ${}, which is not set",
            acme.rfc2136.tsig_secret_env
        ))
    })?;
    let secret = base64::engine::general_purpose::STANDARD
        .decode(secret.trim())
        .map_err(|e| bad(format!("${}: {e}", acme.rfc2136.tsig_secret_env)))?;
    let tsig = dstack_acme::TsigKey::new(
        acme.rfc2136.tsig_name.clone(),
        dstack_acme::TsigAlgorithm::HmacSha256,
        secret,
    );
    let dns = dstack_acme::Rfc2136::new(acme.rfc2136.server, &acme.rfc2136.zone, Some(tsig))
        .map_err(|e| bad(e.to_string()))?;
    Ok(Acme {
        directory: acme.directory.clone(),
        contact: acme.contact.clone(),
        caa_identity: acme.caa_identity.clone(),
        extra_roots,
        dns,
        renew_before: acme.renew_before.0,
        renew_interval: acme.renew_interval.0,
        renew_timeout: acme.renew_timeout.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(issued_at: u64) -> CertRecord {
        CertRecord {
            domain: "apps.test".into(),
            chain_pem: format!("chain {issued_at}"),
            key_pem: "key".into(),
            not_after: issued_at + 90 * 86400,
            issued_by: 1,
            issued_at,
        }
    }

    #[test]
    fn a_renewal_request_is_void_once_another_node_renewed() {
        let old = Some(record(1));
        let new = Some(record(2));
        // Asked while `old` was served, and `old` is still stored: renew.
        assert!(must_issue(Some(&old), &old, false));
        // Another replica renewed first: this one does not again.
        assert!(!must_issue(Some(&old), &new, false));
        // Unless what is stored is due anyway.
        assert!(must_issue(Some(&old), &new, true));
        // Without a request only a due (or missing) certificate is issued.
        assert!(!must_issue(None, &old, false));
        assert!(must_issue(None, &None, true));
    }

    fn instance(public_key: [u8; 32]) -> Instance {
        Instance {
            instance_id: "i1".into(),
            app_id: "a1".into(),
            compose_hash: String::new(),
            ip: Ipv4Addr::new(10, 8, 64, 1),
            public_key: base64::engine::general_purpose::STANDARD.encode(public_key),
            port_policy: None,
            registered_at: 0,
            registered_by: 1,
        }
    }

    #[tokio::test]
    async fn a_rebooted_cvm_keeps_its_address_under_a_new_key() {
        let net = dstack_wgnet::WgNet::start(dstack_wgnet::WgConfig::new(
            dstack_wgnet::generate_private_key(),
            "127.0.0.1:0".parse().unwrap(),
            Ipv4Addr::new(10, 8, 0, 1),
        ))
        .await
        .unwrap();
        let first = instance([1; 32]);
        set_peer(&net, None, &first);
        // The watch delivers the same record again: nothing changes.
        set_peer(&net, Some(&first), &first);
        let rebooted = instance([2; 32]);
        set_peer(&net, Some(&first), &rebooted);
        let peers = net.peers();
        assert_eq!(peers.len(), 1, "the old key is gone");
        assert_eq!(peers[0].public_key, [2; 32]);
        assert_eq!(peers[0].allowed_ip, rebooted.ip);
        remove_peer(&net, &rebooted);
        assert!(net.peers().is_empty());
        net.shutdown().await;
    }
}
