//! `RegisterCvm` (UPSTREAM §10.4–10.5): a CVM proves who it is with the
//! RA-TLS client certificate of its registration call; its app id,
//! instance id and compose hash come from the verified quote and event
//! log, never from what the certificate claims. The CVM gets a tunnel
//! address (claimed cluster-wide in etcd, kept across re-registrations)
//! and every gateway node as a WireGuard peer.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine;
use dstack_cluster_kv::ClusterKv;
use dstack_proto::gateway::{
    GuestAgentConfig, RegisterCvmRequest, RegisterCvmResponse, WireGuardConfig, WireGuardPeer,
};
use dstack_ra_tls::boot_info::{MeasuredAt, boot_info};
use dstack_ra_tls::evidence::EvidenceChecker;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::state::{Instance, SharedView, now_secs};

/// A node not seen for this long is left out of the peers handed to CVMs
/// (upstream's `node_timeout`).
const NODE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// How many addresses one registration tries to claim before giving up
/// (others are racing for the same ones).
const CLAIM_ATTEMPTS: usize = 64;

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// No client certificate was presented.
    #[error("no attestation provided: register with an RA-TLS client certificate")]
    NoClientCertificate,
    /// The certificate's evidence did not verify.
    #[error("the CVM's attestation was refused: {0}")]
    Attestation(String),
    /// The evidence lacks the app's identity.
    #[error("the CVM's boot info is invalid: {0}")]
    BootInfo(String),
    /// A request field is wrong.
    #[error("invalid {field}: {reason}")]
    BadRequest {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// This node is down (draining) and takes no registrations.
    #[error("this gateway node is down and takes no registrations")]
    NodeDown,
    /// The WireGuard key belongs to another instance, or the instance to another app.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The authorisation webhook refused or failed.
    #[error("not authorised: {0}")]
    Denied(String),
    /// No tunnel address is free.
    #[error("no free tunnel address in {0}")]
    Exhausted(String),
    /// Cluster state could not be read or written.
    #[error("cluster state: {0}")]
    Store(String),
}

impl RegisterError {
    /// The metrics label and HTTP status of this refusal.
    pub fn kind(&self) -> (&'static str, u16) {
        match self {
            Self::NoClientCertificate => ("no_client_certificate", 401),
            Self::Attestation(_) => ("attestation_refused", 403),
            Self::BootInfo(_) => ("boot_info_invalid", 403),
            Self::BadRequest { .. } => ("bad_request", 400),
            Self::NodeDown => ("node_down", 503),
            Self::Conflict(_) => ("conflict", 409),
            Self::Denied(_) => ("denied", 403),
            Self::Exhausted(_) => ("exhausted", 503),
            Self::Store(_) => ("store", 503),
        }
    }
}

/// The identity of a registering CVM.
#[derive(Debug, Clone)]
pub struct Identity {
    /// App id, hex.
    pub app_id: String,
    /// Instance id, hex (the app id when the app has none).
    pub instance_id: String,
    /// Compose hash, hex.
    pub compose_hash: String,
}

/// Takes registrations for this node.
#[derive(Debug)]
pub struct Registrar {
    config: Arc<Config>,
    kv: ClusterKv,
    view: Arc<SharedView>,
    evidence: EvidenceChecker,
    metrics: Arc<Metrics>,
    tunnel: dstack_wgnet::WgNet,
}

impl Registrar {
    /// A registrar writing to `kv`.
    pub fn new(
        config: Arc<Config>,
        kv: ClusterKv,
        view: Arc<SharedView>,
        evidence: EvidenceChecker,
        metrics: Arc<Metrics>,
        tunnel: dstack_wgnet::WgNet,
    ) -> Self {
        Self {
            config,
            kv,
            view,
            evidence,
            metrics,
            tunnel,
        }
    }

    /// The identity a client certificate proves.
    pub async fn identify(&self, cert: Option<&[u8]>) -> Result<Identity, RegisterError> {
        identify(&self.evidence, cert).await
    }

    /// Registers a CVM whose client certificate is `cert`.
    pub async fn register(
        &self,
        cert: Option<&[u8]>,
        request: RegisterCvmRequest,
    ) -> Result<RegisterCvmResponse, RegisterError> {
        let result = async {
            let identity = self.identify(cert).await?;
            self.register_identity(identity, request).await
        }
        .await;
        match &result {
            Ok(_) => self.metrics.count("registrations", "ok"),
            Err(e) => self.metrics.count("registrations", e.kind().0),
        }
        result
    }

    /// Registers `identity` without any proof: upstream's Debug RPC,
    /// only served when `[debug] insecure_debug_rpc` is set. Counted like
    /// any registration.
    pub async fn register_unattested(
        &self,
        identity: Identity,
        request: RegisterCvmRequest,
    ) -> Result<RegisterCvmResponse, RegisterError> {
        let result = self.register_identity(identity, request).await;
        match &result {
            Ok(_) => self.metrics.count("registrations", "ok"),
            Err(e) => self.metrics.count("registrations", e.kind().0),
        }
        result
    }

    /// Registers `identity` (proved by the caller).
    pub async fn register_identity(
        &self,
        identity: Identity,
        request: RegisterCvmRequest,
    ) -> Result<RegisterCvmResponse, RegisterError> {
        let key = base64::engine::general_purpose::STANDARD
            .decode(request.client_public_key.trim())
            .map_err(|e| RegisterError::BadRequest {
                field: "client_public_key",
                reason: e.to_string(),
            })?;
        if key.len() != 32 {
            return Err(RegisterError::BadRequest {
                field: "client_public_key",
                reason: format!("{} bytes, a WireGuard key has 32", key.len()),
            });
        }
        let public_key = base64::engine::general_purpose::STANDARD.encode(&key);
        if self.view.read().is_down(self.config.node.id) {
            return Err(RegisterError::NodeDown);
        }
        if let Some(auth) = &self.config.auth {
            crate::webhook::authorise(auth, &identity)
                .await
                .map_err(RegisterError::Denied)?;
        }
        let existing = {
            let view = self.view.read();
            if let Some(other) = view
                .instances
                .values()
                .find(|i| i.public_key == public_key && i.instance_id != identity.instance_id)
            {
                return Err(RegisterError::Conflict(format!(
                    "the WireGuard key is registered to instance {}",
                    other.instance_id
                )));
            }
            view.instances.get(&identity.instance_id).cloned()
        };
        let stored: Option<Instance> = self
            .kv
            .get(&format!("inst/{}", identity.instance_id))
            .await
            .map_err(|e| RegisterError::Store(e.to_string()))?;
        let previous = stored.or(existing);
        if let Some(previous) = &previous
            && previous.app_id != identity.app_id
        {
            return Err(RegisterError::Conflict(format!(
                "instance {} belongs to app {}",
                identity.instance_id, previous.app_id
            )));
        }
        let ip = match &previous {
            Some(previous) => previous.ip,
            None => self.claim_address(&identity.instance_id).await?,
        };
        let instance = Instance {
            instance_id: identity.instance_id.clone(),
            app_id: identity.app_id.clone(),
            compose_hash: identity.compose_hash.clone(),
            ip,
            public_key,
            port_policy: request.port_policy,
            registered_at: now_secs(),
            registered_by: self.config.node.id,
        };
        self.kv
            .put(&format!("inst/{}", instance.instance_id), &instance)
            .await
            .map_err(|e| RegisterError::Store(e.to_string()))?;
        // The CVM starts its handshakes as soon as it has the answer: the
        // peer must be in this node's tunnel by then, not whenever the
        // watch delivers the record.
        let old = self.view.update(|view| {
            let old = view.instances.get(&instance.instance_id).cloned();
            view.put_instance(instance.clone());
            old
        });
        crate::node::set_peer(&self.tunnel, old.as_ref(), &instance);
        Ok(self.response(ip))
    }

    /// Claims the first free address of the client range.
    async fn claim_address(&self, instance_id: &str) -> Result<Ipv4Addr, RegisterError> {
        let range = self.config.wg.client_ip_range;
        let taken: std::collections::HashSet<Ipv4Addr> =
            self.view.read().instances.values().map(|i| i.ip).collect();
        let mut attempts = 0;
        for ip in range.hosts() {
            if !self.config.allocatable(ip) || taken.contains(&ip) {
                continue;
            }
            attempts += 1;
            if attempts > CLAIM_ATTEMPTS {
                break;
            }
            let claimed = self
                .kv
                .create(&format!("ip/{ip}"), &instance_id.to_owned())
                .await
                .map_err(|e| RegisterError::Store(e.to_string()))?;
            if claimed {
                return Ok(ip);
            }
            // Claimed by an instance this node has not seen yet (or left
            // behind by a node that died between claim and record): only
            // this instance's own claim is reused. Taking over a claim whose
            // holder has no record yet could steal an address from a
            // registration in flight on another node.
            let holder: Option<String> = self
                .kv
                .get(&format!("ip/{ip}"))
                .await
                .map_err(|e| RegisterError::Store(e.to_string()))?;
            if holder.as_deref() == Some(instance_id) {
                return Ok(ip);
            }
        }
        Err(RegisterError::Exhausted(range.to_string()))
    }

    /// The answer for a CVM at `ip`: every up node as a WireGuard peer.
    pub fn response(&self, ip: Ipv4Addr) -> RegisterCvmResponse {
        let view = self.view.read();
        let now = now_secs();
        // A node that stopped announcing itself is gone: CVMs are not handed
        // a dead peer (they re-register periodically and drop it).
        let up: Vec<_> = view
            .nodes
            .values()
            .filter(|n| {
                !view.is_down(n.id)
                    && (n.id == self.config.node.id
                        || now.saturating_sub(n.last_seen) <= NODE_TIMEOUT.as_secs())
            })
            .collect();
        RegisterCvmResponse {
            wg: WireGuardConfig {
                client_ip: ip.to_string(),
                servers: up
                    .iter()
                    .map(|n| WireGuardPeer {
                        pk: n.wg_public_key.clone(),
                        ip: n.wg_ip.clone(),
                        endpoint: n.wg_endpoint.clone(),
                    })
                    .collect(),
            },
            agent: GuestAgentConfig {
                external_port: u32::from(self.config.proxy.external_port),
                internal_port: 0,
                domain: self.config.proxy.base_domains[0].clone(),
                app_address_ns_prefix: self.config.proxy.app_address_ns_prefix.clone(),
            },
            gateways: up.iter().map(|n| n.info()).collect(),
        }
    }
}

/// The identity `cert` (a CVM's RA-TLS client certificate) proves: its
/// quote verified by `evidence`, its key bound by the quote, its event log
/// replayed, and the app id, instance id and compose hash read from the
/// measured events (the certificate's own app-info claim is ignored).
pub async fn identify(
    evidence: &EvidenceChecker,
    cert: Option<&[u8]>,
) -> Result<Identity, RegisterError> {
    let cert = cert.ok_or(RegisterError::NoClientCertificate)?;
    let peer = evidence
        .verify_cert(cert, SystemTime::now())
        .await
        .map_err(|e| RegisterError::Attestation(error_chain(&e)))?;
    let info = boot_info(&peer, "", MeasuredAt::Now)
        .map_err(|e| RegisterError::BootInfo(e.to_string()))?;
    let app_id = hex::encode(&info.app_id);
    let instance_id = if info.instance_id.is_empty() {
        app_id.clone()
    } else {
        hex::encode(&info.instance_id)
    };
    Ok(Identity {
        app_id,
        instance_id,
        compose_hash: hex::encode(&info.compose_hash),
    })
}

/// An error with its sources, on one line.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
