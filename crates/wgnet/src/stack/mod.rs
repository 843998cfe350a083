//! The TCP side: smoltcp sockets behind one `Interface`, with the
//! bookkeeping that keeps every operation O(1) in the number of connections.
//!
//! smoltcp's `Interface::poll` walks every socket of the set it is given, on
//! ingress (to find the socket for each segment) and on egress (repeatedly,
//! until nothing is left to send). So each connection gets a `SocketSet` of
//! its own: incoming segments are routed by 4-tuple to their connection, and
//! only connections with something to do are polled, namely those with a
//! segment, those their stream touched ("dirty"), and those whose smoltcp
//! timer fell due (a heap ordered by `poll_at`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::task::{Context, Poll, Waker};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use self::device::{Device, TxQueue};
use self::slab::Slab;
use crate::error::{Abort, WgError};
use crate::packet::parse_tcp;

mod device;
mod slab;

pub(crate) use self::device::MTU;
pub(crate) use self::slab::ConnId;

/// How long a dropped stream may keep its socket to deliver what is left of
/// its data and its FIN before it is reset.
const LINGER: Duration = Duration::from_secs(30);

/// Connections a listener holds (handshaking or not yet accepted) before it
/// drops further SYNs, which the client then retransmits.
const BACKLOG: usize = 1024;

/// A half-open connection (SYN received) is dropped after this long in silence.
const SYN_RECEIVED_TIMEOUT: Duration = Duration::from_secs(30);

/// smoltcp's clock at start. smoltcp takes `Instant::ZERO` for "long ago"
/// (a first keep-alive is due at zero, the challenge-ACK limiter starts
/// there), which only holds on a clock that has been running for a while.
const CLOCK_START: Instant = Instant::from_micros_const(24 * 3600 * 1_000_000);

/// How often a sender blocked by a zero window makes the receiver repeat it.
const PERSIST_INTERVAL: Duration = Duration::from_secs(1);

/// Longer than smoltcp's delayed-ACK timer (10 ms), shorter than its TIME-WAIT (10 s).
const MAX_ACK_DELAY: Duration = Duration::from_millis(100);

/// RFC 6335's dynamic port range, for `connect`.
const EPHEMERAL_PORTS: RangeInclusive<u16> = 49152..=65535;

/// Who holds a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// A `WgStream` (or a `connect` in progress).
    Stream,
    /// A listener's, while the three-way handshake completes.
    Handshaking { port: u16 },
    /// A listener's, established and waiting for `accept`.
    Queued { port: u16 },
    /// Nobody's: the stream was dropped and the socket is closing.
    Detached { deadline: Instant },
}

#[derive(Debug)]
struct Conn {
    /// This connection's socket alone (see the module docs).
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    local_port: u16,
    remote: SocketAddrV4,
    owner: Owner,
    /// Already in `Stack::dirty`.
    dirty: bool,
    /// The earliest entry this connection has in `Stack::timers`.
    timer_at: Option<Instant>,
    /// Set when the stack itself tore the connection down.
    aborted: Option<Abort>,
    /// Keep-alives are on, standing in for a persist timer (see `after_poll`).
    probing: bool,
    /// Until the handshake of a `connect` completes: when it gives up.
    connect_deadline: Option<Instant>,
}

impl Conn {
    fn socket(&self) -> &tcp::Socket<'static> {
        self.sockets.get(self.handle)
    }

    fn socket_mut(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut(self.handle)
    }
}

#[derive(Debug, Default)]
struct Listener {
    /// Established, waiting for `accept`.
    ready: VecDeque<ConnId>,
    /// Still in the handshake.
    handshaking: usize,
    /// Tasks waiting in `accept`.
    wakers: Vec<Waker>,
}

impl Listener {
    fn wake(&mut self) {
        for waker in self.wakers.drain(..) {
            waker.wake();
        }
    }
}

/// The userspace TCP/IP stack: the interface, every connection and listener.
pub(crate) struct Stack {
    iface: Interface,
    address: Ipv4Addr,
    socket_buffer: usize,
    connect_timeout: Duration,
    epoch: std::time::Instant,
    conns: Slab<Conn>,
    by_tuple: HashMap<(u16, SocketAddrV4), ConnId>,
    listeners: HashMap<u16, Listener>,
    dirty: Vec<ConnId>,
    /// Reused by `poll` to walk `dirty` while new entries accumulate.
    dirty_spare: Vec<ConnId>,
    timers: BinaryHeap<Reverse<(Instant, ConnId)>>,
    /// No sockets: smoltcp answers segments no connection owns with a RST,
    /// and pings with a reply.
    no_sockets: SocketSet<'static>,
    tx: TxQueue,
    closed: bool,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("address", &self.address)
            .field("connections", &self.conns.len())
            .field("listeners", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

impl Stack {
    /// A stack answering on `address`, with `socket_buffer` bytes per
    /// socket and direction, whose `connect`s give up after `connect_timeout`.
    pub(crate) fn new(
        address: Ipv4Addr,
        socket_buffer: usize,
        connect_timeout: std::time::Duration,
    ) -> Self {
        let epoch = std::time::Instant::now();
        let mut config = Config::new(HardwareAddress::Ip);
        // Seeds smoltcp's initial sequence numbers.
        config.random_seed = rand::random();
        let mut tx = TxQueue::default();
        let mut device = Device {
            rx: &[],
            rx_pending: false,
            tx: &mut tx,
        };
        let mut iface = Interface::new(config, &mut device, CLOCK_START);
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(IpAddress::Ipv4(address), 32))
                .expect("room for one address");
        });
        Stack {
            iface,
            address,
            socket_buffer,
            connect_timeout: connect_timeout.into(),
            epoch,
            conns: Slab::default(),
            by_tuple: HashMap::new(),
            listeners: HashMap::new(),
            dirty: Vec::new(),
            dirty_spare: Vec::new(),
            timers: BinaryHeap::new(),
            no_sockets: SocketSet::new(Vec::new()),
            tx,
            closed: false,
        }
    }

    /// The current time on smoltcp's clock.
    pub(crate) fn now(&self) -> Instant {
        let micros = i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX / 2);
        CLOCK_START + Duration::from_micros(micros.unsigned_abs())
    }

    /// When `at` (on smoltcp's clock) falls, on tokio's.
    pub(crate) fn deadline(&self, at: Instant) -> tokio::time::Instant {
        let micros = (at - CLOCK_START).total_micros();
        tokio::time::Instant::from_std(self.epoch + std::time::Duration::from_micros(micros))
    }

    /// Live connections, including closing ones nobody holds any more.
    pub(crate) fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn new_socket(&self) -> tcp::Socket<'static> {
        let rx = tcp::SocketBuffer::new(vec![0; self.socket_buffer]);
        let tx = tcp::SocketBuffer::new(vec![0; self.socket_buffer]);
        let mut socket = tcp::Socket::new(rx, tx);
        // A proxy relays whatever it has at once (TCP_NODELAY); Nagle would
        // hold small writes back behind the peer's delayed ACKs.
        socket.set_nagle_enabled(false);
        socket
    }

    fn insert(
        &mut self,
        socket: tcp::Socket<'static>,
        local_port: u16,
        remote: SocketAddrV4,
        owner: Owner,
    ) -> ConnId {
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(socket);
        let id = self.conns.insert(Conn {
            sockets,
            handle,
            local_port,
            remote,
            owner,
            dirty: false,
            timer_at: None,
            aborted: None,
            probing: false,
            connect_deadline: None,
        });
        self.by_tuple.insert((local_port, remote), id);
        id
    }

    fn remove(&mut self, id: ConnId) {
        let Some(conn) = self.conns.remove(id) else {
            return;
        };
        self.by_tuple.remove(&(conn.local_port, conn.remote));
        if let Owner::Handshaking { port } = conn.owner
            && let Some(listener) = self.listeners.get_mut(&port)
        {
            listener.handshaking -= 1;
        }
    }

    /// Queues `id` for a poll; returns whether the driver needs waking for it.
    pub(crate) fn mark_dirty(&mut self, id: ConnId) -> bool {
        match self.conns.get_mut(id) {
            Some(conn) if !conn.dirty => {
                conn.dirty = true;
                self.dirty.push(id);
                true
            }
            _ => false,
        }
    }

    /// Feeds one IP packet (already checked against its peer's allowed IP) to its connection.
    pub(crate) fn ingress(&mut self, now: Instant, packet: &[u8]) {
        let Some(meta) = parse_tcp(packet) else {
            // Not TCP (ping, say): smoltcp answers what it can.
            self.poll_without_sockets(now, packet);
            return;
        };
        if *meta.dst.ip() != self.address {
            return;
        }
        let tuple = (meta.dst.port(), meta.src);
        if let Some(&id) = self.by_tuple.get(&tuple) {
            self.poll_conn(now, id, Some(packet));
            return;
        }
        if meta.is_syn
            && !self.closed
            && let Some(listener) = self.listeners.get_mut(&meta.dst.port())
        {
            if listener.handshaking + listener.ready.len() >= BACKLOG {
                return;
            }
            listener.handshaking += 1;
            let mut socket = self.new_socket();
            socket
                .listen(meta.dst.port())
                .expect("listening on a non-zero port");
            socket.set_timeout(Some(SYN_RECEIVED_TIMEOUT));
            let owner = Owner::Handshaking {
                port: meta.dst.port(),
            };
            let id = self.insert(socket, meta.dst.port(), meta.src, owner);
            self.poll_conn(now, id, Some(packet));
            return;
        }
        // No connection, no listener: the empty set makes smoltcp send a RST.
        self.poll_without_sockets(now, packet);
    }

    fn poll_without_sockets(&mut self, now: Instant, packet: &[u8]) {
        let mut device = Device {
            rx: packet,
            rx_pending: true,
            tx: &mut self.tx,
        };
        self.iface.poll(now, &mut device, &mut self.no_sockets);
    }

    fn poll_conn(&mut self, now: Instant, id: ConnId, packet: Option<&[u8]>) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let mut device = Device {
            rx: packet.unwrap_or(&[]),
            rx_pending: packet.is_some(),
            tx: &mut self.tx,
        };
        self.iface.poll(now, &mut device, &mut conn.sockets);
        if std::mem::take(&mut self.tx.exhausted) && !conn.dirty {
            // Out of budget with more to send: again next round.
            conn.dirty = true;
            self.dirty.push(id);
        }
        self.after_poll(now, id);
    }

    /// Moves a connection along after smoltcp ran: hands established ones to
    /// their listener, frees finished ones, and re-arms its timer.
    fn after_poll(&mut self, now: Instant, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        // smoltcp 0.12 has no persist timer: a sender facing a zero window
        // waits for the receiver's window update, and if that is lost, waits
        // forever. A keep-alive makes the receiver repeat its window, so
        // while there is data to send, one goes out each `PERSIST_INTERVAL`
        // that nothing is in flight (the timer only runs when idle).
        let probing = conn.socket().send_queue() > 0;
        if probing != conn.probing {
            conn.probing = probing;
            conn.socket_mut()
                .set_keep_alive(probing.then_some(PERSIST_INTERVAL));
        }
        let state = conn.socket().state();
        if let Some(deadline) = conn.connect_deadline {
            if state != State::SynSent {
                conn.connect_deadline = None;
            } else if now >= deadline {
                conn.connect_deadline = None;
                conn.aborted = Some(Abort::ConnectTimedOut);
                conn.socket_mut().abort();
                self.mark_dirty(id);
                return;
            }
        }
        match conn.owner {
            Owner::Handshaking { port } => match state {
                State::SynReceived => {}
                // Reset or timed out mid-handshake; smoltcp went back to listening.
                State::Listen | State::Closed => {
                    self.remove(id);
                    return;
                }
                _ => {
                    conn.owner = Owner::Queued { port };
                    conn.socket_mut().set_timeout(None);
                    if let Some(listener) = self.listeners.get_mut(&port) {
                        listener.handshaking -= 1;
                        listener.ready.push_back(id);
                        listener.wake();
                    }
                }
            },
            Owner::Detached { deadline } => {
                let finished = match state {
                    // TIME-WAIT is cut short: it would hold both buffers for
                    // its whole period, and random ports make a reuse of the
                    // tuple unlikely. But the ACK of the peer's FIN may still
                    // wait for its delay; only the 10 s TIME-WAIT timer
                    // (or nothing) may be left.
                    State::TimeWait => self
                        .iface
                        .poll_at(now, &conn.sockets)
                        .is_none_or(|at| at > now + MAX_ACK_DELAY),
                    // Its RST is out.
                    State::Closed => conn.socket().remote_endpoint().is_none(),
                    _ => false,
                };
                if finished {
                    self.remove(id);
                    return;
                }
                if now >= deadline && state != State::Closed {
                    conn.socket_mut().abort();
                    self.mark_dirty(id);
                    return;
                }
            }
            Owner::Stream | Owner::Queued { .. } => {}
        }
        self.schedule(now, id);
    }

    fn schedule(&mut self, now: Instant, id: ConnId) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let linger = match conn.owner {
            Owner::Detached { deadline } => Some(deadline),
            _ => None,
        };
        let Some(at) = [
            self.iface.poll_at(now, &conn.sockets),
            linger,
            conn.connect_deadline,
        ]
        .into_iter()
        .flatten()
        .min() else {
            return;
        };
        // Right after a poll, "now" means smoltcp cannot make progress yet;
        // a millisecond's pause keeps that from spinning.
        let at = at.max(now + Duration::from_millis(1));
        if conn.timer_at.is_none_or(|current| at < current) {
            conn.timer_at = Some(at);
            self.timers.push(Reverse((at, id)));
        }
    }

    /// Polls the connections streams touched and those whose timers are
    /// due, as far as this round's transmit budget goes.
    pub(crate) fn poll(&mut self, now: Instant) {
        let mut dirty = std::mem::replace(&mut self.dirty, std::mem::take(&mut self.dirty_spare));
        let mut done = 0;
        for &id in &dirty {
            if self.tx.is_full() {
                break;
            }
            done += 1;
            if let Some(conn) = self.conns.get_mut(id) {
                conn.dirty = false;
                self.poll_conn(now, id, None);
            }
        }
        // The rest stay dirty (their flag is still set) and go first next
        // round, ahead of those dirtied since, so none starves.
        dirty.drain(..done);
        dirty.append(&mut self.dirty);
        self.dirty_spare = std::mem::replace(&mut self.dirty, dirty);

        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now || self.tx.is_full() {
                break;
            }
            self.timers.pop();
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            // Entries superseded by an earlier one are stale.
            if conn.timer_at != Some(at) {
                continue;
            }
            conn.timer_at = None;
            self.poll_conn(now, id, None);
        }
    }

    /// Whether connections wait for a poll right away.
    pub(crate) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The earliest timer, if any.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Hands the packets emitted since the last call to the driver, taking
    /// back the buffers of the ones it has sent (`out`, emptied first).
    pub(crate) fn take_tx(&mut self, out: &mut Vec<Vec<u8>>) {
        self.tx.recycle(out);
        std::mem::swap(&mut self.tx.packets, out);
    }

    /// Opens a connection to `remote` from a free ephemeral port.
    pub(crate) fn connect(&mut self, remote: SocketAddrV4) -> Result<ConnId, WgError> {
        if self.closed {
            return Err(WgError::Shutdown);
        }
        let span = u32::from(EPHEMERAL_PORTS.end() - EPHEMERAL_PORTS.start()) + 1;
        // A random start (RFC 6056) makes ports hard to guess and spreads reuse.
        let start = rand::random::<u32>() % span;
        let port = (0..span)
            .map(|i| {
                let offset = u16::try_from((start + i) % span).expect("offset fits the port range");
                EPHEMERAL_PORTS.start() + offset
            })
            .find(|&port| {
                !self.by_tuple.contains_key(&(port, remote)) && !self.listeners.contains_key(&port)
            })
            .ok_or(WgError::PortsExhausted { addr: remote })?;
        let mut socket = self.new_socket();
        let remote_endpoint = IpEndpoint::new(IpAddress::Ipv4(*remote.ip()), remote.port());
        let local_endpoint = IpEndpoint::new(IpAddress::Ipv4(self.address), port);
        socket
            .connect(self.iface.context(), remote_endpoint, local_endpoint)
            .map_err(|_| WgError::NoRoute { ip: *remote.ip() })?;
        let id = self.insert(socket, port, remote, Owner::Stream);
        let deadline = self.now() + self.connect_timeout;
        if let Some(conn) = self.conns.get_mut(id) {
            conn.connect_deadline = Some(deadline);
        }
        self.mark_dirty(id);
        Ok(id)
    }

    /// Local and remote addresses of a connection.
    pub(crate) fn addrs(&self, id: ConnId) -> Option<(SocketAddrV4, SocketAddrV4)> {
        let conn = self.conns.get(id)?;
        Some((
            SocketAddrV4::new(self.address, conn.local_port),
            conn.remote,
        ))
    }

    /// Waits for a `connect` to complete.
    pub(crate) fn poll_established(
        &mut self,
        id: ConnId,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WgError>> {
        if self.closed {
            return Poll::Ready(Err(WgError::Shutdown));
        }
        let Some(conn) = self.conns.get_mut(id) else {
            return Poll::Ready(Err(WgError::Shutdown));
        };
        let remote = conn.remote;
        let aborted = conn.aborted;
        let socket = conn.socket_mut();
        match socket.state() {
            State::SynSent | State::SynReceived => {
                socket.register_send_waker(cx.waker());
                Poll::Pending
            }
            State::Closed | State::Listen => Poll::Ready(Err(match aborted {
                Some(Abort::Shutdown) => WgError::Shutdown,
                Some(Abort::PeerRemoved) => WgError::ConnectionReset { addr: remote },
                Some(Abort::ConnectTimedOut) => WgError::ConnectTimedOut { addr: remote },
                None => WgError::ConnectionRefused { addr: remote },
            })),
            _ => Poll::Ready(Ok(())),
        }
    }

    /// A stream's read. The bool says whether the driver needs waking.
    pub(crate) fn poll_recv(
        &mut self,
        id: ConnId,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> (Poll<io::Result<usize>>, bool) {
        let Some(conn) = self.conns.get_mut(id) else {
            return (Poll::Ready(Err(Abort::Shutdown.io_error())), false);
        };
        let aborted = conn.aborted;
        let socket = conn.socket_mut();
        match socket.recv_slice(buf) {
            Ok(0) if !buf.is_empty() => {
                socket.register_recv_waker(cx.waker());
                (Poll::Pending, false)
            }
            // Reading frees window the peer may be waiting for.
            Ok(n) => (Poll::Ready(Ok(n)), self.mark_dirty(id)),
            Err(tcp::RecvError::Finished) => (Poll::Ready(Ok(0)), false),
            Err(tcp::RecvError::InvalidState) => (Poll::Ready(Err(reset_error(aborted))), false),
        }
    }

    /// A stream's write. The bool says whether the driver needs waking.
    pub(crate) fn poll_send(
        &mut self,
        id: ConnId,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> (Poll<io::Result<usize>>, bool) {
        let Some(conn) = self.conns.get_mut(id) else {
            return (Poll::Ready(Err(Abort::Shutdown.io_error())), false);
        };
        let aborted = conn.aborted;
        let socket = conn.socket_mut();
        match socket.send_slice(buf) {
            Ok(0) if !buf.is_empty() => {
                socket.register_send_waker(cx.waker());
                (Poll::Pending, false)
            }
            Ok(n) => (Poll::Ready(Ok(n)), self.mark_dirty(id)),
            Err(tcp::SendError::InvalidState) => {
                let error = if socket.state() == State::Closed {
                    reset_error(aborted)
                } else {
                    write_after_shutdown()
                };
                (Poll::Ready(Err(error)), false)
            }
        }
    }

    /// Sends FIN once the buffered data is out. Returns whether the driver needs waking.
    pub(crate) fn shutdown_write(&mut self, id: ConnId) -> bool {
        let Some(conn) = self.conns.get_mut(id) else {
            return false;
        };
        conn.socket_mut().close();
        self.mark_dirty(id)
    }

    /// A stream (or a pending `connect`) let go of its connection: close it
    /// gracefully in the background, or reset it if data would be lost.
    /// Returns whether the driver needs waking.
    pub(crate) fn release(&mut self, id: ConnId) -> bool {
        let now = self.now();
        let Some(conn) = self.conns.get_mut(id) else {
            return false;
        };
        let socket = conn.socket_mut();
        let state = socket.state();
        // Closed already: reset by the peer, or by us for a lost route,
        // whose RST could not be delivered anyway.
        if self.closed || state == State::Closed {
            self.remove(id);
            return false;
        }
        // Unread data would be silently lost: tell the peer, as Linux does.
        if socket.recv_queue() > 0 || matches!(state, State::SynSent | State::SynReceived) {
            socket.abort();
        } else {
            socket.close();
        }
        conn.owner = Owner::Detached {
            deadline: now + LINGER,
        };
        self.mark_dirty(id)
    }

    /// Starts listening on `port`.
    pub(crate) fn listen(&mut self, port: u16) -> Result<(), WgError> {
        if self.closed {
            return Err(WgError::Shutdown);
        }
        if port == 0 {
            return Err(WgError::InvalidConfig {
                reason: "cannot listen on port 0",
            });
        }
        if self.listeners.contains_key(&port) {
            return Err(WgError::PortInUse { port });
        }
        self.listeners.insert(port, Listener::default());
        Ok(())
    }

    /// Stops listening on `port`, resetting connections nobody accepted.
    /// Returns whether the driver needs waking.
    pub(crate) fn unlisten(&mut self, port: u16) -> bool {
        if self.listeners.remove(&port).is_none() {
            return false;
        }
        let orphans: Vec<ConnId> = self
            .conns
            .ids()
            .into_iter()
            .filter(|&id| {
                self.conns.get(id).is_some_and(|conn| {
                    matches!(conn.owner, Owner::Handshaking { port: p } | Owner::Queued { port: p } if p == port)
                })
            })
            .collect();
        let mut wake = false;
        for id in orphans {
            if let Some(conn) = self.conns.get_mut(id) {
                // The listener's backlog count is gone with it.
                conn.owner = Owner::Stream;
            }
            wake |= self.release_abort(id);
        }
        wake
    }

    fn release_abort(&mut self, id: ConnId) -> bool {
        let now = self.now();
        let Some(conn) = self.conns.get_mut(id) else {
            return false;
        };
        conn.socket_mut().abort();
        conn.owner = Owner::Detached { deadline: now };
        self.mark_dirty(id)
    }

    /// Takes the next established connection off `port`'s queue, with its
    /// local and remote addresses.
    pub(crate) fn poll_accept(
        &mut self,
        port: u16,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(ConnId, SocketAddrV4, SocketAddrV4), WgError>> {
        if self.closed {
            return Poll::Ready(Err(WgError::Shutdown));
        }
        let Some(listener) = self.listeners.get_mut(&port) else {
            return Poll::Ready(Err(WgError::Shutdown));
        };
        // Entries whose connection was reset while queued are skipped.
        while let Some(id) = listener.ready.pop_front() {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.owner = Owner::Stream;
                let local = SocketAddrV4::new(self.address, conn.local_port);
                return Poll::Ready(Ok((id, local, conn.remote)));
            }
        }
        if !listener.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            listener.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Resets every connection to `ip` (its peer is gone). Returns whether the driver needs waking.
    pub(crate) fn reset_remote(&mut self, ip: Ipv4Addr) -> bool {
        let mut wake = false;
        for id in self.conns.ids() {
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            if *conn.remote.ip() != ip {
                continue;
            }
            conn.aborted = Some(Abort::PeerRemoved);
            conn.socket_mut().abort();
            match conn.owner {
                Owner::Stream => wake |= self.mark_dirty(id),
                _ => {
                    self.remove(id);
                }
            }
        }
        wake
    }

    /// Aborts everything: streams see errors, listeners stop. Polls every
    /// connection once more so its RST goes out with the final flush.
    pub(crate) fn shutdown(&mut self) {
        self.closed = true;
        let now = self.now();
        for id in self.conns.ids() {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.aborted = Some(Abort::Shutdown);
                conn.socket_mut().abort();
            }
            self.poll_conn(now, id, None);
            if let Some(conn) = self.conns.get(id)
                && conn.owner != Owner::Stream
            {
                self.remove(id);
            }
        }
        for listener in self.listeners.values_mut() {
            listener.wake();
        }
        self.listeners.clear();
        self.timers.clear();
        self.dirty.clear();
    }
}

fn write_after_shutdown() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the stream was shut down for writing",
    )
}

fn reset_error(aborted: Option<Abort>) -> io::Error {
    match aborted {
        Some(abort) => abort.io_error(),
        None => io::Error::new(io::ErrorKind::ConnectionReset, "connection reset by peer"),
    }
}
