//! The WireGuard side: one boringtun `Tunn` per peer, cryptokey routing, and
//! the datagrams they produce. No I/O here; the driver owns the UDP socket.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

use crate::error::WgError;
use crate::packet::ipv4_dst;

/// Room for any datagram or IP packet this crate builds: an MTU-sized IP
/// packet plus WireGuard's 32 bytes, and every handshake message (≤ 148).
pub(crate) const BUF_LEN: usize = 2048;

/// Buffers kept for reuse; beyond this a burst's buffers are freed.
const POOL_MAX: usize = 1024;

/// Handshake messages allowed per second before cookies are demanded
/// (boringtun's device uses 100). Each handshake is counted twice, once by
/// the routing check here and once inside `Tunn::decapsulate`, hence 2×.
const HANDSHAKE_RATE_LIMIT: u64 = 200;

/// Largest boringtun cookie reply.
const COOKIE_REPLY_LEN: usize = 64;

/// A peer as configured: who it is, which tunnel address it owns, where to reach it.
#[derive(Clone, PartialEq, Eq)]
pub struct Peer {
    /// The peer's X25519 public key.
    pub public_key: [u8; 32],
    /// The one tunnel address (a /32) the peer may send from and is routed to.
    pub allowed_ip: Ipv4Addr,
    /// Where to send; `None` until the peer's first handshake reveals it.
    pub endpoint: Option<SocketAddr>,
    /// Persistent keepalive interval in seconds (for peers behind NAT).
    pub keepalive: Option<u16>,
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("public_key", &BASE64.encode(self.public_key))
            .field("allowed_ip", &self.allowed_ip)
            .field("endpoint", &self.endpoint)
            .field("keepalive", &self.keepalive)
            .finish()
    }
}

/// A peer's live state: its current endpoint, last handshake and traffic counters.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's X25519 public key.
    pub public_key: [u8; 32],
    /// The tunnel address routed to it.
    pub allowed_ip: Ipv4Addr,
    /// Where its packets last came from, or the configured endpoint.
    pub endpoint: Option<SocketAddr>,
    /// When the current session's handshake completed; `None` without a session.
    pub last_handshake: Option<SystemTime>,
    /// IP bytes received from it through the tunnel.
    pub rx_bytes: u64,
    /// IP bytes sent to it through the tunnel.
    pub tx_bytes: u64,
}

impl fmt::Debug for PeerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerStatus")
            .field("public_key", &BASE64.encode(self.public_key))
            .field("allowed_ip", &self.allowed_ip)
            .field("endpoint", &self.endpoint)
            .field("last_handshake", &self.last_handshake)
            .field("rx_bytes", &self.rx_bytes)
            .field("tx_bytes", &self.tx_bytes)
            .finish()
    }
}

/// Datagrams waiting to be sent, and spare buffers to build the next ones in.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// Datagrams and where they go, in order.
    pub(crate) queue: Vec<(Vec<u8>, SocketAddr)>,
    pool: Vec<Vec<u8>>,
}

impl Outbox {
    /// A buffer of at least `len` (and `BUF_LEN`) bytes, reused when possible.
    pub(crate) fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.resize(len.max(BUF_LEN), 0);
        buf
    }

    /// Takes back a buffer that is no longer needed.
    pub(crate) fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < POOL_MAX {
            self.pool.push(buf);
        }
    }

    fn push(&mut self, mut buf: Vec<u8>, len: usize, to: SocketAddr) {
        buf.truncate(len);
        self.queue.push((buf, to));
    }

    fn push_copy(&mut self, datagram: &[u8], to: SocketAddr) {
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(datagram);
        self.queue.push((buf, to));
    }
}

struct PeerState {
    tunn: Tunn,
    public_key: [u8; 32],
    allowed_ip: Ipv4Addr,
    endpoint: Option<SocketAddr>,
    keepalive: Option<u16>,
}

/// Every peer, indexed three ways: by the receiver index boringtun puts in
/// its messages (incoming), by tunnel address (outgoing), and by key (config).
pub(crate) struct PeerTable {
    secret: StaticSecret,
    public: PublicKey,
    /// Shared by all tunnels so the handshake budget is per device, not per peer.
    rate_limiter: Arc<RateLimiter>,
    /// Keyed by the 24-bit index given to `Tunn::new`; its messages carry `index << 8 | n`.
    peers: HashMap<u32, PeerState>,
    by_key: HashMap<[u8; 32], u32>,
    by_ip: HashMap<Ipv4Addr, u32>,
    /// Output of timers and queued-packet flushes.
    scratch: Vec<u8>,
}

impl fmt::Debug for PeerTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTable")
            .field("public_key", &BASE64.encode(self.public.as_bytes()))
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl PeerTable {
    /// An empty table for the device key `private_key`.
    pub(crate) fn new(private_key: [u8; 32]) -> Self {
        let secret = StaticSecret::from(private_key);
        let public = PublicKey::from(&secret);
        PeerTable {
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            secret,
            public,
            peers: HashMap::new(),
            by_key: HashMap::new(),
            by_ip: HashMap::new(),
            scratch: vec![0; BUF_LEN],
        }
    }

    /// The device's public key.
    pub(crate) fn public_key(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    /// Adds or updates a peer. Returns the address it used to own, if that
    /// changed: connections to it have lost their route.
    ///
    /// Updating a peer keeps its tunnel (sessions, counters, learned endpoint)
    /// unless the keepalive changed, which boringtun only takes at creation.
    pub(crate) fn set(&mut self, peer: &Peer) -> Result<Option<Ipv4Addr>, WgError> {
        if let Some(owner) = self.by_ip.get(&peer.allowed_ip)
            && self.peers[owner].public_key != peer.public_key
        {
            return Err(WgError::AllowedIpInUse {
                ip: peer.allowed_ip,
            });
        }
        if let Some(&index) = self.by_key.get(&peer.public_key) {
            let state = self.peers.get_mut(&index).expect("indexes agree");
            if state.keepalive != peer.keepalive {
                state.tunn = new_tunn(&self.secret, peer, index, &self.rate_limiter);
                state.keepalive = peer.keepalive;
            }
            if peer.endpoint.is_some() {
                state.endpoint = peer.endpoint;
            }
            let old_ip = state.allowed_ip;
            if old_ip == peer.allowed_ip {
                return Ok(None);
            }
            state.allowed_ip = peer.allowed_ip;
            self.by_ip.remove(&old_ip);
            self.by_ip.insert(peer.allowed_ip, index);
            return Ok(Some(old_ip));
        }
        let index = loop {
            let index = rand::random::<u32>() & 0x00ff_ffff;
            if !self.peers.contains_key(&index) {
                break index;
            }
        };
        let state = PeerState {
            tunn: new_tunn(&self.secret, peer, index, &self.rate_limiter),
            public_key: peer.public_key,
            allowed_ip: peer.allowed_ip,
            endpoint: peer.endpoint,
            keepalive: peer.keepalive,
        };
        self.peers.insert(index, state);
        self.by_key.insert(peer.public_key, index);
        self.by_ip.insert(peer.allowed_ip, index);
        Ok(None)
    }

    /// Forgets a peer; returns the tunnel address it owned.
    pub(crate) fn remove(&mut self, public_key: &[u8; 32]) -> Option<Ipv4Addr> {
        let index = self.by_key.remove(public_key)?;
        let state = self.peers.remove(&index).expect("indexes agree");
        self.by_ip.remove(&state.allowed_ip);
        Some(state.allowed_ip)
    }

    /// Whether some peer owns `ip`.
    pub(crate) fn routes(&self, ip: Ipv4Addr) -> bool {
        self.by_ip.contains_key(&ip)
    }

    /// Every peer's state.
    pub(crate) fn status(&self) -> Vec<PeerStatus> {
        let now = SystemTime::now();
        self.peers
            .values()
            .map(|p| {
                let (since_handshake, tx, rx, _loss, _rtt) = p.tunn.stats();
                PeerStatus {
                    public_key: p.public_key,
                    allowed_ip: p.allowed_ip,
                    endpoint: p.endpoint,
                    last_handshake: since_handshake.and_then(|d| now.checked_sub(d)),
                    rx_bytes: u64::try_from(rx).unwrap_or(u64::MAX),
                    tx_bytes: u64::try_from(tx).unwrap_or(u64::MAX),
                }
            })
            .collect()
    }

    /// Handles one datagram from `from`. Replies (handshake responses,
    /// cookies, queued packets) go to `out`; a decrypted IP packet is left
    /// at the start of `dst` (at least `datagram.len()` long), and its length returned.
    pub(crate) fn receive(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        dst: &mut [u8],
        out: &mut Outbox,
    ) -> Option<usize> {
        let mut cookie = [0u8; COOKIE_REPLY_LEN];
        // Checks mac1 (and, under load, mac2) before the Diffie-Hellman below,
        // so unauthenticated floods cost a hash each, not a curve operation.
        let packet = match self
            .rate_limiter
            .verify_packet(Some(from.ip()), datagram, &mut cookie)
        {
            Ok(packet) => packet,
            Err(TunnResult::WriteToNetwork(reply)) => {
                out.push_copy(reply, from);
                return None;
            }
            Err(_) => return None,
        };
        let index = match &packet {
            Packet::HandshakeInit(init) => {
                // A responder learns who initiates only by decrypting the static key.
                let half = parse_handshake_anon(&self.secret, &self.public, init).ok()?;
                let Some(&index) = self.by_key.get(&half.peer_static_public) else {
                    tracing::debug!(%from, "handshake from an unknown key");
                    return None;
                };
                index
            }
            Packet::HandshakeResponse(p) => p.receiver_idx >> 8,
            Packet::PacketCookieReply(p) => p.receiver_idx >> 8,
            Packet::PacketData(p) => p.receiver_idx >> 8,
        };
        let peer = self.peers.get_mut(&index)?;
        let (packet_len, flush) = match peer.tunn.decapsulate(Some(from.ip()), datagram, dst) {
            TunnResult::Done => (None, false),
            TunnResult::Err(e) => {
                tracing::trace!(%from, error = ?e, "dropped a datagram");
                return None;
            }
            TunnResult::WriteToNetwork(reply) => {
                out.push_copy(reply, from);
                (None, true)
            }
            // Cryptokey routing: a peer may only speak for its own address.
            TunnResult::WriteToTunnelV4(packet, src) if src == peer.allowed_ip => {
                (Some(packet.len()), false)
            }
            TunnResult::WriteToTunnelV4(_, src) => {
                tracing::debug!(%from, %src, allowed = %peer.allowed_ip, "dropped a packet from outside the peer's allowed IP");
                (None, false)
            }
            TunnResult::WriteToTunnelV6(..) => (None, false),
        };
        // The datagram authenticated: the peer is at `from` now (roaming).
        peer.endpoint = Some(from);
        if flush {
            // After a handshake, boringtun releases the packets it queued
            // while waiting for a session, one per empty call.
            while let TunnResult::WriteToNetwork(queued) = peer.tunn.decapsulate(None, &[], dst) {
                out.push_copy(queued, from);
            }
        }
        packet_len
    }

    /// Encrypts an IP packet for the peer owning its destination; drops it
    /// if none does, or the peer has no endpoint yet.
    pub(crate) fn send(&mut self, packet: &[u8], out: &mut Outbox) {
        let Some(index) = ipv4_dst(packet).and_then(|dst| self.by_ip.get(&dst)) else {
            return;
        };
        let peer = self.peers.get_mut(index).expect("indexes agree");
        let mut buf = out.buffer(packet.len() + 32);
        let len = match peer.tunn.encapsulate(packet, &mut buf) {
            TunnResult::WriteToNetwork(datagram) => Some(datagram.len()),
            // Done: queued inside the tunnel until a handshake completes.
            _ => None,
        };
        match (len, peer.endpoint) {
            (Some(len), Some(endpoint)) => out.push(buf, len, endpoint),
            _ => out.recycle(buf),
        }
    }

    /// Runs every tunnel's timers: handshake retries, rekeying, keepalives.
    pub(crate) fn tick(&mut self, out: &mut Outbox) {
        for peer in self.peers.values_mut() {
            if let TunnResult::WriteToNetwork(datagram) = peer.tunn.update_timers(&mut self.scratch)
                && let Some(endpoint) = peer.endpoint
            {
                out.push_copy(datagram, endpoint);
            }
        }
    }

    /// Starts a new second of the handshake budget.
    pub(crate) fn reset_rate_limiter(&self) {
        self.rate_limiter.reset_count();
    }
}

fn new_tunn(secret: &StaticSecret, peer: &Peer, index: u32, limiter: &Arc<RateLimiter>) -> Tunn {
    Tunn::new(
        secret.clone(),
        PublicKey::from(peer.public_key),
        None,
        peer.keepalive,
        index,
        Some(Arc::clone(limiter)),
    )
}
