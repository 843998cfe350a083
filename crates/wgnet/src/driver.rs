//! The one task that does I/O: it owns the UDP socket, decrypts what
//! arrives, runs the TCP stack, encrypts what the stack emits and sends it.
//!
//! Locks are never held across an await, and never both at once: the peer
//! table for the crypto, the stack for smoltcp. Streams take only the stack
//! lock, for a copy into or out of a socket buffer.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::peers::{BUF_LEN, Outbox, PeerTable};
use crate::stack::Stack;

/// Datagrams read per round before the stack runs: enough to amortise a
/// round and keep the socket buffer drained while the stack emits its
/// budget of packets per round, few enough to bound the batch's memory.
const RX_BATCH: usize = 512;

/// How often boringtun's timers run (its device uses 250 ms).
const TIMER_TICK: Duration = Duration::from_millis(250);

/// How often the handshake rate limiter starts a new budget.
const RATE_LIMIT_PERIOD: Duration = Duration::from_secs(1);

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65536;

/// Asked-for UDP socket buffers; the kernel caps them at net.core.[rw]mem_max.
/// Many connections' windows can be in flight at once, and a full receive
/// buffer drops datagrams, which TCP then has to retransmit.
pub(crate) const UDP_SOCKET_BUFFER: usize = 4 << 20;

/// State shared by the driver, the `WgNet` handles and the streams.
#[derive(Debug)]
pub(crate) struct Shared {
    stack: Mutex<Stack>,
    peers: Mutex<PeerTable>,
    /// Wakes the driver: a stream has work for the stack, or shutdown.
    wake: Notify,
    closed: AtomicBool,
}

impl Shared {
    /// Shared state over a stack and a peer table.
    pub(crate) fn new(stack: Stack, peers: PeerTable) -> Self {
        Shared {
            stack: Mutex::new(stack),
            peers: Mutex::new(peers),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// The TCP stack. A panic while it was held leaves nothing half-updated
    /// that matters more than stopping every stream, so poisoning is ignored.
    pub(crate) fn stack(&self) -> MutexGuard<'_, Stack> {
        self.stack.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The peer table.
    pub(crate) fn peers(&self) -> MutexGuard<'_, PeerTable> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the driver for a round.
    pub(crate) fn wake_driver(&self) {
        self.wake.notify_one();
    }

    /// Tells the driver to shut everything down.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Whether shutdown was asked for.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// The driver's own buffers, reused from round to round.
struct Driver {
    shared: Arc<Shared>,
    udp: UdpSocket,
    recv_buf: Vec<u8>,
    /// Decrypted IP packets (buffer, length) for the stack.
    rx: Vec<(Vec<u8>, usize)>,
    rx_pool: Vec<Vec<u8>>,
    /// IP packets from the stack, to encrypt; their buffers go back to it.
    tx: Vec<Vec<u8>>,
    out: Outbox,
}

/// Runs the network until shutdown; then resets every connection and
/// returns, closing the UDP socket.
pub(crate) async fn run(shared: Arc<Shared>, udp: UdpSocket) {
    let mut driver = Driver {
        shared,
        udp,
        recv_buf: vec![0; MAX_DATAGRAM],
        rx: Vec::with_capacity(RX_BATCH),
        rx_pool: Vec::with_capacity(RX_BATCH),
        tx: Vec::new(),
        out: Outbox::default(),
    };
    driver.run().await;
}

impl Driver {
    async fn run(&mut self) {
        let mut next_tick = Instant::now() + TIMER_TICK;
        let mut next_rate_reset = Instant::now() + RATE_LIMIT_PERIOD;
        while !self.shared.is_closed() {
            let more_datagrams = self.receive();
            let (next_timer, more_polls) = self.run_stack();
            self.encrypt();
            let now = Instant::now();
            if now >= next_tick {
                self.shared.peers().tick(&mut self.out);
                next_tick = now + TIMER_TICK;
            }
            if now >= next_rate_reset {
                self.shared.peers().reset_rate_limiter();
                next_rate_reset = now + RATE_LIMIT_PERIOD;
            }
            self.flush().await;
            if more_datagrams || more_polls {
                // Work is waiting, but let the streams' tasks run first.
                tokio::task::yield_now().await;
                continue;
            }
            let deadline = next_timer.map_or(next_tick, |t| t.min(next_tick));
            tokio::select! {
                ready = self.udp.readable() => {
                    if let Err(e) = ready {
                        tracing::warn!(error = %e, "WireGuard UDP socket failed");
                        tokio::time::sleep(TIMER_TICK).await;
                    }
                }
                () = self.shared.wake.notified() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
        {
            let mut stack = self.shared.stack();
            stack.shutdown();
            stack.take_tx(&mut self.tx);
        }
        self.encrypt();
        self.flush().await;
    }

    /// Reads and decrypts up to a batch of datagrams. Returns whether more may be waiting.
    fn receive(&mut self) -> bool {
        let mut peers = self.shared.peers();
        for _ in 0..RX_BATCH {
            let (len, from) = match self.udp.try_recv_from(&mut self.recv_buf) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                // ICMP errors from earlier sends surface here; they concern no one now.
                Err(e) => {
                    tracing::trace!(error = %e, "UDP receive error");
                    continue;
                }
            };
            let datagram = &self.recv_buf[..len];
            let mut buf = self.rx_pool.pop().unwrap_or_default();
            let need = len.max(BUF_LEN);
            if buf.len() < need {
                buf.resize(need, 0);
            }
            match peers.receive(from, datagram, &mut buf, &mut self.out) {
                Some(packet_len) => self.rx.push((buf, packet_len)),
                None => self.rx_pool.push(buf),
            }
        }
        true
    }

    /// Feeds the decrypted packets to the stack and polls it. Returns the
    /// next smoltcp timer and whether connections are still waiting for a poll.
    fn run_stack(&mut self) -> (Option<Instant>, bool) {
        let mut stack = self.shared.stack();
        let now = stack.now();
        for (buf, len) in self.rx.drain(..) {
            stack.ingress(now, &buf[..len]);
            self.rx_pool.push(buf);
        }
        stack.poll(now);
        stack.take_tx(&mut self.tx);
        let next_timer = stack.next_timer().map(|at| stack.deadline(at));
        (next_timer, stack.has_dirty())
    }

    /// Encrypts the stack's packets for their peers.
    fn encrypt(&mut self) {
        if self.tx.is_empty() {
            return;
        }
        let mut peers = self.shared.peers();
        for packet in &self.tx {
            peers.send(packet, &mut self.out);
        }
    }

    /// Sends every queued datagram, waiting only if the socket buffer is full.
    async fn flush(&mut self) {
        let mut queue = std::mem::take(&mut self.out.queue);
        for (datagram, to) in queue.drain(..) {
            if let Err(e) = self.udp.send_to(&datagram, to).await {
                trace_send_error(to, &e);
            }
            self.out.recycle(datagram);
        }
        self.out.queue = queue;
    }
}

fn trace_send_error(to: SocketAddr, error: &io::Error) {
    tracing::trace!(%to, %error, "UDP send failed");
}
