//! Errors of the userspace WireGuard network.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// What went wrong starting the network, configuring a peer, or opening a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WgError {
    /// The UDP socket for the tunnel could not be set up.
    #[error("cannot bind the WireGuard UDP socket on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why the OS refused.
        #[source]
        source: io::Error,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// Which value, and why.
        reason: &'static str,
    },
    /// Another peer already routes this tunnel address.
    #[error("allowed IP {ip} already belongs to another peer")]
    AllowedIpInUse {
        /// The contested address.
        ip: Ipv4Addr,
    },
    /// No peer's allowed IP matches the destination.
    #[error("no peer routes {ip}")]
    NoRoute {
        /// The unroutable address.
        ip: Ipv4Addr,
    },
    /// The remote answered the SYN with a reset: nothing listens on that port.
    #[error("connection to {addr} refused")]
    ConnectionRefused {
        /// The remote endpoint.
        addr: SocketAddrV4,
    },
    /// The connection was reset before it was established (its peer was removed).
    #[error("connection to {addr} reset before it was established")]
    ConnectionReset {
        /// The remote endpoint.
        addr: SocketAddrV4,
    },
    /// The SYN went unanswered for `CONNECT_TIMEOUT` (a safety net for
    /// callers without a timeout of their own).
    #[error("connection to {addr} timed out")]
    ConnectTimedOut {
        /// The remote endpoint.
        addr: SocketAddrV4,
    },
    /// Every ephemeral port towards this remote endpoint is in use.
    #[error("no free local port to connect to {addr}")]
    PortsExhausted {
        /// The remote endpoint.
        addr: SocketAddrV4,
    },
    /// A listener already holds this port.
    #[error("port {port} already has a listener")]
    PortInUse {
        /// The contested port.
        port: u16,
    },
    /// The network was shut down (or every `WgNet` handle was dropped).
    #[error("the WireGuard network is shut down")]
    Shutdown,
}

/// Why the stack tore a connection down on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Abort {
    /// `remove_peer` (or a changed allowed IP) took its route away.
    PeerRemoved,
    /// The whole network shut down.
    Shutdown,
    /// The SYN went unanswered for too long.
    ConnectTimedOut,
}

impl Abort {
    /// The I/O error a stream reports for it.
    pub(crate) fn io_error(self) -> io::Error {
        match self {
            Abort::PeerRemoved => io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection reset: its WireGuard peer was removed",
            ),
            Abort::Shutdown => io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection aborted: the WireGuard network shut down",
            ),
            Abort::ConnectTimedOut => {
                io::Error::new(io::ErrorKind::TimedOut, "connection timed out")
            }
        }
    }
}
