#![allow(clippy::tests_outside_test_module)]
//! Interop at the WireGuard message level: a bare boringtun `Tunn` with a
//! UDP socket, driven by hand, on the other side of a `WgNet`; its IP
//! packets are built and read with smoltcp's wire types, no TCP stack.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use dstack_wgnet::{Peer, WgConfig, WgError, WgNet, generate_private_key};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::time::timeout;

const PATIENCE: Duration = Duration::from_secs(10);

/// A WireGuard peer made of a `Tunn` and a socket, nothing else.
struct RawPeer {
    tunn: Tunn,
    udp: UdpSocket,
    /// Where the `WgNet` is.
    server: SocketAddr,
}

/// A TCP segment as the raw peer sees it.
#[derive(Debug)]
struct Segment {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    control: TcpControl,
    seq: i32,
    ack: Option<i32>,
    window: u16,
    payload: Vec<u8>,
}

impl RawPeer {
    async fn new(secret: StaticSecret, server: &WgNet) -> Self {
        let tunn = Tunn::new(
            secret,
            PublicKey::from(server.public_key()),
            None,
            None,
            7,
            None,
        );
        RawPeer {
            tunn,
            udp: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server: server.local_udp_addr(),
        }
    }

    async fn send(&self, datagram: &[u8]) {
        self.udp.send_to(datagram, self.server).await.unwrap();
    }

    /// The next datagram from the server, if one comes within `wait`.
    async fn recv(&self, wait: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        let (len, from) = timeout(wait, self.udp.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        assert_eq!(from, self.server);
        buf.truncate(len);
        Some(buf)
    }

    /// Decapsulates datagrams until one carries an IP packet, answering
    /// handshake messages (and sending what boringtun queued) on the way.
    async fn recv_packet(&mut self, wait: Duration) -> Option<Vec<u8>> {
        loop {
            let datagram = self.recv(wait).await?;
            let mut out = vec![0u8; 65536];
            match self
                .tunn
                .decapsulate(Some(self.server.ip()), &datagram, &mut out)
            {
                TunnResult::WriteToTunnelV4(packet, _) => return Some(packet.to_vec()),
                TunnResult::WriteToNetwork(reply) => {
                    let reply = reply.to_vec();
                    self.send(&reply).await;
                    self.flush().await;
                }
                TunnResult::Done => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Sends the packets boringtun queued while it had no session.
    async fn flush(&mut self) {
        let mut out = vec![0u8; 65536];
        while let TunnResult::WriteToNetwork(queued) = self.tunn.decapsulate(None, &[], &mut out) {
            let queued = queued.to_vec();
            self.send(&queued).await;
        }
    }

    /// Initiates a handshake and completes it.
    async fn handshake(&mut self) {
        let mut out = vec![0u8; 2048];
        let TunnResult::WriteToNetwork(init) =
            self.tunn.format_handshake_initiation(&mut out, false)
        else {
            panic!("no initiation");
        };
        let init = init.to_vec();
        self.send(&init).await;
        let response = self.recv(PATIENCE).await.expect("a handshake response");
        let mut out = vec![0u8; 2048];
        match self
            .tunn
            .decapsulate(Some(self.server.ip()), &response, &mut out)
        {
            // The initiator confirms the session with a keepalive.
            TunnResult::WriteToNetwork(keepalive) => {
                let keepalive = keepalive.to_vec();
                self.send(&keepalive).await;
            }
            other => panic!("unexpected {other:?}"),
        }
        self.flush().await;
    }

    async fn send_segment(&mut self, segment: &Segment) {
        let packet = build(segment);
        let mut out = vec![0u8; packet.len() + 64];
        match self.tunn.encapsulate(&packet, &mut out) {
            TunnResult::WriteToNetwork(datagram) => {
                let datagram = datagram.to_vec();
                self.send(&datagram).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    async fn recv_segment(&mut self, wait: Duration) -> Option<Segment> {
        self.recv_packet(wait).await.map(|packet| parse(&packet))
    }
}

fn build(s: &Segment) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: s.src.port(),
        dst_port: s.dst.port(),
        control: s.control,
        seq_number: TcpSeqNumber(s.seq),
        ack_number: s.ack.map(TcpSeqNumber),
        window_len: s.window,
        window_scale: None,
        max_seg_size: (s.control == TcpControl::Syn).then_some(1380),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &s.payload,
    };
    let ip = Ipv4Repr {
        src_addr: *s.src.ip(),
        dst_addr: *s.dst.ip(),
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    let mut ip_packet = Ipv4Packet::new_unchecked(&mut buf);
    ip.emit(&mut ip_packet, &caps);
    let mut tcp_packet = TcpPacket::new_unchecked(ip_packet.payload_mut());
    tcp.emit(
        &mut tcp_packet,
        &IpAddress::Ipv4(*s.src.ip()),
        &IpAddress::Ipv4(*s.dst.ip()),
        &caps,
    );
    buf
}

fn parse(packet: &[u8]) -> Segment {
    let caps = ChecksumCapabilities::default();
    let ip_packet = Ipv4Packet::new_checked(packet).unwrap();
    // Also checks the IP and TCP checksums the stack computed.
    let ip = Ipv4Repr::parse(&ip_packet, &caps).unwrap();
    assert_eq!(ip.next_header, IpProtocol::Tcp);
    let tcp_packet = TcpPacket::new_checked(ip_packet.payload()).unwrap();
    let tcp = TcpRepr::parse(
        &tcp_packet,
        &IpAddress::Ipv4(ip.src_addr),
        &IpAddress::Ipv4(ip.dst_addr),
        &caps,
    )
    .unwrap();
    Segment {
        src: SocketAddrV4::new(ip.src_addr, tcp.src_port),
        dst: SocketAddrV4::new(ip.dst_addr, tcp.dst_port),
        control: tcp.control,
        seq: tcp.seq_number.0,
        ack: tcp.ack_number.map(|a| a.0),
        window: tcp.window_len,
        payload: tcp.payload.to_vec(),
    }
}

async fn start(ip: Ipv4Addr) -> WgNet {
    WgNet::start(WgConfig::new(
        generate_private_key(),
        "127.0.0.1:0".parse().unwrap(),
        ip,
    ))
    .await
    .unwrap()
}

/// A network at `net_ip` whose one peer is a raw peer at `raw_ip`; the
/// network knows the raw peer's UDP endpoint only when `known_endpoint`
/// (else it learns it from the peer's first packet).
async fn start_with_raw_peer(
    net_ip: Ipv4Addr,
    raw_ip: Ipv4Addr,
    known_endpoint: bool,
) -> (WgNet, RawPeer) {
    let net = start(net_ip).await;
    let secret = StaticSecret::from(generate_private_key());
    let raw = RawPeer::new(secret.clone(), &net).await;
    net.set_peer(Peer {
        public_key: PublicKey::from(&secret).to_bytes(),
        allowed_ip: raw_ip,
        endpoint: known_endpoint.then(|| raw.udp.local_addr().unwrap()),
        keepalive: None,
    })
    .unwrap();
    (net, raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_initiator_reaches_a_listener() {
    let server_ip = Ipv4Addr::new(10, 0, 0, 1);
    let raw_ip = Ipv4Addr::new(10, 0, 0, 2);
    let (net, mut raw) = start_with_raw_peer(server_ip, raw_ip, false).await;
    let listener = net.listen(80).await.unwrap();

    raw.handshake().await;
    // A responder's session counts once the initiator's first packet (the
    // keepalive) confirms it.
    timeout(PATIENCE, async {
        while net.peers()[0].last_handshake.is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the handshake completes");
    assert_eq!(net.peers()[0].endpoint, Some(raw.udp.local_addr().unwrap()));

    // Three-way handshake by hand.
    let client = SocketAddrV4::new(raw_ip, 40000);
    let server = SocketAddrV4::new(server_ip, 80);
    let syn = |src| Segment {
        src,
        dst: server,
        control: TcpControl::Syn,
        seq: 1000,
        ack: None,
        window: 65535,
        payload: Vec::new(),
    };
    raw.send_segment(&syn(client)).await;
    let syn_ack = raw.recv_segment(PATIENCE).await.expect("a SYN-ACK");
    assert_eq!((syn_ack.src, syn_ack.dst), (server, client));
    assert_eq!(syn_ack.control, TcpControl::Syn);
    assert_eq!(syn_ack.ack, Some(1001));
    raw.send_segment(&Segment {
        src: client,
        dst: server,
        control: TcpControl::Psh,
        seq: 1001,
        ack: Some(syn_ack.seq.wrapping_add(1)),
        window: 65535,
        payload: b"hello".to_vec(),
    })
    .await;
    let (mut stream, from) = timeout(PATIENCE, listener.accept()).await.unwrap().unwrap();
    assert_eq!(from, client);
    let mut hello = [0u8; 5];
    stream.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"hello");
    stream.write_all(b"world").await.unwrap();
    let reply = loop {
        let segment = raw.recv_segment(PATIENCE).await.expect("the reply");
        if !segment.payload.is_empty() {
            break segment;
        }
    };
    assert_eq!(reply.payload, b"world");
    assert_eq!(reply.ack, Some(1006));
    raw.send_segment(&Segment {
        src: client,
        dst: server,
        control: TcpControl::None,
        seq: 1006,
        ack: Some(reply.seq.wrapping_add(5)),
        window: 65535,
        payload: Vec::new(),
    })
    .await;

    // A SYN claiming another source address inside an authentic datagram:
    // dropped without an answer, not even a RST.
    raw.send_segment(&syn(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 3), 40001)))
        .await;
    assert!(raw.recv_segment(Duration::from_millis(500)).await.is_none());
    assert!(
        timeout(Duration::from_millis(100), listener.accept())
            .await
            .is_err()
    );
    assert_eq!(net.connection_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wgnet_initiates_to_a_raw_peer() {
    let net_ip = Ipv4Addr::new(10, 0, 1, 1);
    let raw_ip = Ipv4Addr::new(10, 0, 1, 2);
    let (net, mut raw) = start_with_raw_peer(net_ip, raw_ip, true).await;

    let target = SocketAddrV4::new(raw_ip, 22);
    let connecting = tokio::spawn({
        let net = net.clone();
        async move { net.connect(target).await }
    });
    // The handshake initiation comes first; `recv_packet` answers it, and
    // the SYN boringtun held back arrives once the session is up.
    let syn = raw.recv_segment(PATIENCE).await.expect("a SYN");
    assert_eq!(syn.dst, target);
    assert_eq!(*syn.src.ip(), net_ip);
    assert_eq!(syn.control, TcpControl::Syn);
    raw.send_segment(&Segment {
        src: target,
        dst: syn.src,
        control: TcpControl::Rst,
        seq: 0,
        ack: Some(syn.seq.wrapping_add(1)),
        window: 65535,
        payload: Vec::new(),
    })
    .await;
    let result = timeout(PATIENCE, connecting).await.unwrap().unwrap();
    assert!(
        matches!(result, Err(WgError::ConnectionRefused { addr }) if addr == target),
        "{result:?}"
    );
    assert!(net.peers()[0].last_handshake.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_window_is_probed() {
    let net_ip = Ipv4Addr::new(10, 0, 2, 1);
    let raw_ip = Ipv4Addr::new(10, 0, 2, 2);
    let (net, mut raw) = start_with_raw_peer(net_ip, raw_ip, false).await;
    let listener = net.listen(80).await.unwrap();
    raw.handshake().await;

    // Connect with a 1000-byte window, then let the server write 3000 bytes.
    let client = SocketAddrV4::new(raw_ip, 40000);
    let server = SocketAddrV4::new(net_ip, 80);
    let segment = |control, seq, ack, window| Segment {
        src: client,
        dst: server,
        control,
        seq,
        ack: Some(ack),
        window,
        payload: Vec::new(),
    };
    raw.send_segment(&Segment {
        ack: None,
        window: 1000,
        ..segment(TcpControl::Syn, 0, 0, 1000)
    })
    .await;
    let syn_ack = raw.recv_segment(PATIENCE).await.expect("a SYN-ACK");
    let mut next = syn_ack.seq.wrapping_add(1);
    raw.send_segment(&segment(TcpControl::None, 1, next, 1000))
        .await;
    let (mut stream, _) = timeout(PATIENCE, listener.accept()).await.unwrap().unwrap();
    stream.write_all(&[7u8; 3000]).await.unwrap();

    let mut received = 0;
    while received < 1000 {
        let data = raw.recv_segment(PATIENCE).await.expect("data");
        assert_eq!(data.seq, next, "in order");
        next = next.wrapping_add(i32::try_from(data.payload.len()).unwrap());
        received += data.payload.len();
    }
    assert_eq!(received, 1000, "the window is respected");
    // Acknowledge it all with a zero window. The window then reopens, but
    // the update announcing it is "lost": never sent.
    raw.send_segment(&segment(TcpControl::None, 1, next, 0))
        .await;
    let probe = raw
        .recv_segment(Duration::from_secs(3))
        .await
        .expect("a window probe");
    assert!(probe.seq == next.wrapping_sub(1), "{probe:?}");
    // The probe's answer carries the open window: the rest follows.
    raw.send_segment(&segment(TcpControl::None, 1, next, 8000))
        .await;
    while received < 3000 {
        let data = raw.recv_segment(PATIENCE).await.expect("the rest");
        if data.payload.is_empty() || data.seq != next {
            continue;
        }
        next = next.wrapping_add(i32::try_from(data.payload.len()).unwrap());
        received += data.payload.len();
    }
    assert_eq!(received, 3000);
}
