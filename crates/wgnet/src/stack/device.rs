//! The smoltcp device: one received packet in, a shared queue of packets out.

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::peers::BUF_LEN;

/// WireGuard's default interface MTU: 1500 less the outer IPv4/UDP and
/// WireGuard headers (with room for IPv6 outside).
pub(crate) const MTU: usize = 1420;

/// Free IP buffers kept for the next packets smoltcp emits.
const POOL_MAX: usize = 1024;

/// Packets the stack may emit per driver round. Past it, connections keep
/// their data for the next round, so the driver gets back to reading the UDP
/// socket: a socket buffer left to fill drops datagrams, which TCP then has
/// to retransmit.
const TX_BUDGET: usize = 256;

/// IP packets smoltcp emitted, waiting for the driver to encrypt them.
#[derive(Debug, Default)]
pub(super) struct TxQueue {
    pub(super) packets: Vec<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    /// A socket wanted to send past `TX_BUDGET` during the current poll.
    pub(super) exhausted: bool,
}

impl TxQueue {
    /// Takes back buffers whose packets were sent.
    pub(super) fn recycle(&mut self, bufs: &mut Vec<Vec<u8>>) {
        for buf in bufs.drain(..) {
            if self.pool.len() < POOL_MAX {
                self.pool.push(buf);
            }
        }
    }

    /// Whether this round's budget is spent.
    pub(super) fn is_full(&self) -> bool {
        self.packets.len() >= TX_BUDGET
    }
}

/// The smoltcp device for one poll: at most one received packet, and the
/// shared transmit queue.
pub(super) struct Device<'a> {
    pub(super) rx: &'a [u8],
    pub(super) rx_pending: bool,
    pub(super) tx: &'a mut TxQueue,
}

impl phy::Device for Device<'_> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        if !self.rx_pending {
            return None;
        }
        self.rx_pending = false;
        Some((RxToken(self.rx), TxToken(self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        // Replies to received packets (`receive` above) are never held back:
        // the packet would be lost. Only what sockets send on their own waits.
        if self.tx.is_full() {
            self.tx.exhausted = true;
            return None;
        }
        Some(TxToken(self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        capabilities()
    }
}

/// The packet being received.
pub(super) struct RxToken<'a>(&'a [u8]);

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

/// A slot in the transmit queue.
pub(super) struct TxToken<'a>(&'a mut TxQueue);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = self
            .0
            .pool
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUF_LEN));
        buf.clear();
        buf.resize(len, 0);
        let result = f(&mut buf);
        self.0.packets.push(buf);
        result
    }
}

/// A medium-IP device with WireGuard's MTU.
pub(super) fn capabilities() -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ip;
    caps.max_transmission_unit = MTU;
    // Received packets were authenticated by WireGuard's AEAD, which any
    // corruption would have failed; the kernel's WireGuard skips these
    // checksums on receive for the same reason. Sent ones are still summed.
    let mut checksum = ChecksumCapabilities::default();
    checksum.ipv4 = Checksum::Tx;
    checksum.tcp = Checksum::Tx;
    checksum.udp = Checksum::Tx;
    checksum.icmpv4 = Checksum::Tx;
    caps.checksum = checksum;
    caps
}
