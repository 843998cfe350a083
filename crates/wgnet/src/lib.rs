//! WireGuard entirely in userspace: boringtun runs the tunnel (handshakes,
//! timers, encryption) and smoltcp the TCP inside it, so a process can reach
//! (and serve) TCP ports behind WireGuard peers with no TUN device and no
//! `CAP_NET_ADMIN`.
//!
//! A [`WgNet`] owns one UDP socket and one tunnel address. Peers are added
//! with [`WgNet::set_peer`]; each owns one address (a /32) inside the tunnel,
//! and only packets from that address are accepted from it (cryptokey
//! routing). [`WgNet::connect`] opens a [`WgStream`] to a peer's address;
//! [`WgNet::listen`] serves a port on ours.
//!
//! ```no_run
//! # async fn demo(key: [u8; 32], cvm_key: [u8; 32]) -> Result<(), Box<dyn std::error::Error>> {
//! use dstack_wgnet::{Peer, WgConfig, WgNet};
//! use tokio::io::AsyncWriteExt;
//!
//! let net = WgNet::start(WgConfig::new(key, "0.0.0.0:51820".parse()?, "10.4.0.1".parse()?)).await?;
//! net.set_peer(Peer {
//!     public_key: cvm_key,
//!     allowed_ip: "10.4.0.2".parse()?,
//!     endpoint: None, // learned from the CVM's first handshake
//!     keepalive: None,
//! })?;
//! let mut stream = net.connect("10.4.0.2:8080".parse()?).await?;
//! stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Design
//!
//! One task (spawned by [`WgNet::start`]) owns the UDP socket and does all
//! the protocol work, in rounds: read a batch of datagrams and decrypt them
//! (boringtun, one `Tunn` per peer, routed by receiver index, or by the
//! static key of a handshake initiation), feed the IP packets to the TCP
//! stack (smoltcp), encrypt what the stack emitted for the peer owning each
//! destination, send. Between rounds it sleeps until a datagram arrives, a
//! stream has work for it, or a timer (smoltcp's, or boringtun's 250 ms
//! tick) falls due. Streams only copy bytes in and out of their socket
//! buffers under the stack's lock and wake the task.
//!
//! Two mutexes, never held together nor across an await: the peer table
//! (crypto, by the task; configuration) and the stack (the task's polls;
//! streams' reads and writes). Every connection has its own smoltcp
//! `SocketSet`, so nothing scans all connections per packet (see `stack`).
//!
//! The stack is smoltcp 0.12 (the Cargo manifest says why not newer), with
//! keep-alives standing in for the persist timer it lacks.

#![forbid(unsafe_code)]

mod driver;
mod error;
mod packet;
mod peers;
mod stack;
mod stream;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use boringtun::x25519::{PublicKey, StaticSecret};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::driver::Shared;
use crate::peers::PeerTable;
use crate::stack::Stack;

pub use crate::error::WgError;
pub use crate::peers::{Peer, PeerStatus};
pub use crate::stream::{WgListener, WgStream};

/// Default buffer per TCP socket and direction: 16 KiB keeps an idle
/// connection small while a window of ~11 segments keeps a loopback-speed path busy.
pub const DEFAULT_SOCKET_BUFFER: usize = 16 * 1024;

/// Default for how long `connect` retransmits its SYN before giving up
/// (Linux gives up after about two minutes).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// The tunnel interface MTU (WireGuard's default).
pub const MTU: usize = stack::MTU;

/// How to start a [`WgNet`].
#[derive(Clone)]
pub struct WgConfig {
    /// Our X25519 private key.
    pub private_key: [u8; 32],
    /// The UDP address to bind.
    pub listen: SocketAddr,
    /// Our address inside the tunnel.
    pub address: Ipv4Addr,
    /// Bytes per TCP socket per direction (the receive buffer is the window).
    pub socket_buffer: usize,
    /// When an unanswered `connect` fails with [`WgError::ConnectTimedOut`]:
    /// a safety net under the caller's own timeout.
    pub connect_timeout: Duration,
}

impl WgConfig {
    /// A config with the default socket buffer size and connect timeout.
    pub fn new(private_key: [u8; 32], listen: SocketAddr, address: Ipv4Addr) -> Self {
        WgConfig {
            private_key,
            listen,
            address,
            socket_buffer: DEFAULT_SOCKET_BUFFER,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

impl fmt::Debug for WgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WgConfig")
            .field("public_key", &BASE64.encode(public_key(&self.private_key)))
            .field("listen", &self.listen)
            .field("address", &self.address)
            .field("socket_buffer", &self.socket_buffer)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

/// A fresh random X25519 private key.
pub fn generate_private_key() -> [u8; 32] {
    StaticSecret::random_from_rng(rand::rngs::OsRng).to_bytes()
}

/// The public key of an X25519 private key.
pub fn public_key(private_key: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*private_key)).to_bytes()
}

/// A userspace WireGuard interface with a TCP stack on its tunnel address.
///
/// Cheap to clone; every clone drives the same network. It shuts down on
/// [`WgNet::shutdown`], or when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct WgNet {
    handle: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    public_key: [u8; 32],
    address: Ipv4Addr,
    local_udp_addr: SocketAddr,
    driver: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl WgNet {
    /// Binds the UDP socket and spawns the network's task on the current
    /// tokio runtime (which needs its I/O and time drivers).
    pub async fn start(config: WgConfig) -> Result<Self, WgError> {
        if config.socket_buffer == 0 || config.socket_buffer > 1 << 30 {
            return Err(WgError::InvalidConfig {
                reason: "socket_buffer must be between 1 byte and 1 GiB",
            });
        }
        if config.address.is_unspecified() || config.address.is_broadcast() {
            return Err(WgError::InvalidConfig {
                reason: "the tunnel address must be a unicast address",
            });
        }
        let udp = bind_udp(config.listen).map_err(|source| WgError::Bind {
            addr: config.listen,
            source,
        })?;
        let local_udp_addr = udp.local_addr().map_err(|source| WgError::Bind {
            addr: config.listen,
            source,
        })?;
        let peers = PeerTable::new(config.private_key);
        let public_key = peers.public_key();
        let shared = Arc::new(Shared::new(
            Stack::new(config.address, config.socket_buffer, config.connect_timeout),
            peers,
        ));
        let driver = tokio::spawn(driver::run(Arc::clone(&shared), udp));
        Ok(WgNet {
            handle: Arc::new(Handle {
                shared,
                public_key,
                address: config.address,
                local_udp_addr,
                driver: Mutex::new(Some(driver)),
            }),
        })
    }

    /// Our X25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.handle.public_key
    }

    /// Our address inside the tunnel.
    pub fn address(&self) -> Ipv4Addr {
        self.handle.address
    }

    /// The bound UDP address (with the actual port if 0 was asked for).
    pub fn local_udp_addr(&self) -> SocketAddr {
        self.handle.local_udp_addr
    }

    /// Adds a peer, or updates the one with the same key. Connections to
    /// an address the peer no longer owns are reset.
    pub fn set_peer(&self, peer: Peer) -> Result<(), WgError> {
        let shared = &self.handle.shared;
        if shared.is_closed() {
            return Err(WgError::Shutdown);
        }
        if peer.allowed_ip == self.handle.address {
            return Err(WgError::InvalidConfig {
                reason: "a peer's allowed IP cannot be our own tunnel address",
            });
        }
        if peer.public_key == self.handle.public_key {
            return Err(WgError::InvalidConfig {
                reason: "a peer cannot have our own public key",
            });
        }
        let lost = shared.peers().set(&peer)?;
        if let Some(ip) = lost
            && shared.stack().reset_remote(ip)
        {
            shared.wake_driver();
        }
        Ok(())
    }

    /// Removes a peer and resets the connections to it. Returns whether it existed.
    pub fn remove_peer(&self, public_key: &[u8; 32]) -> bool {
        let shared = &self.handle.shared;
        let Some(ip) = shared.peers().remove(public_key) else {
            return false;
        };
        if shared.stack().reset_remote(ip) {
            shared.wake_driver();
        }
        true
    }

    /// Every peer's endpoint, last handshake and traffic counters.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.handle.shared.peers().status()
    }

    /// Open TCP connections, including closing ones no stream holds any more.
    pub fn connection_count(&self) -> usize {
        self.handle.shared.stack().connection_count()
    }

    /// Opens a TCP connection through the tunnel.
    ///
    /// The SYN is retransmitted with backoff until answered, for at most
    /// [`WgConfig::connect_timeout`]; bound the wait with
    /// `tokio::time::timeout` (dropping the future abandons the attempt).
    /// A RST answer is [`WgError::ConnectionRefused`].
    pub async fn connect(&self, to: SocketAddrV4) -> Result<WgStream, WgError> {
        let shared = &self.handle.shared;
        if shared.is_closed() {
            return Err(WgError::Shutdown);
        }
        if to.port() == 0 {
            return Err(WgError::InvalidConfig {
                reason: "cannot connect to port 0",
            });
        }
        if !shared.peers().routes(*to.ip()) {
            return Err(WgError::NoRoute { ip: *to.ip() });
        }
        let (id, local) = {
            let mut stack = shared.stack();
            let id = stack.connect(to)?;
            let (local, _) = stack.addrs(id).expect("just inserted");
            (id, local)
        };
        shared.wake_driver();
        let stream = WgStream::new(Arc::clone(shared), id, local, to);
        stream.established().await?;
        Ok(stream)
    }

    /// Listens on a TCP port of our tunnel address.
    pub async fn listen(&self, port: u16) -> Result<WgListener, WgError> {
        let shared = &self.handle.shared;
        if shared.is_closed() {
            return Err(WgError::Shutdown);
        }
        shared.stack().listen(port)?;
        Ok(WgListener::new(Arc::clone(shared), port))
    }

    /// Stops the network: every connection is reset, listeners stop, and
    /// the UDP socket is closed by the time this returns. Other clones of
    /// this handle then fail with [`WgError::Shutdown`].
    pub async fn shutdown(self) {
        self.handle.shared.close();
        let driver = self
            .handle
            .driver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(driver) = driver {
            // A panicked driver has dropped its socket all the same.
            let _ = driver.await;
        }
    }
}

/// A non-blocking UDP socket with large buffers, registered with tokio.
fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps (or a sandbox refuses) the size.
    let _ = socket.set_recv_buffer_size(driver::UDP_SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(driver::UDP_SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}
