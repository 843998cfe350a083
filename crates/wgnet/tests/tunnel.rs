#![allow(clippy::tests_outside_test_module)]
//! Two userspace WireGuard networks on loopback, talking TCP through the tunnel.

mod common;

use std::io::ErrorKind;
use std::net::SocketAddrV4;
use std::time::Duration;

use common::{A_IP, B_IP, Pattern, addr, echo_server, pair, peer_of, start};
use dstack_wgnet::{
    Peer, WgConfig, WgError, WgListener, WgNet, WgStream, generate_private_key, public_key,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_through_the_tunnel() {
    let (a, b) = pair().await;
    echo_server(b.listen(7).await.unwrap());

    let mut stream = timeout(PATIENCE, a.connect(addr(B_IP, 7)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stream.peer_addr(), addr(B_IP, 7));
    assert_eq!(*stream.local_addr().ip(), A_IP);
    stream.write_all(b"hello through wireguard").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    timeout(PATIENCE, stream.read_to_end(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, b"hello through wireguard");

    for (net, other) in [(&a, &b), (&b, &a)] {
        let peers = net.peers();
        assert_eq!(peers.len(), 1);
        let status = &peers[0];
        assert_eq!(status.public_key, other.public_key());
        assert_eq!(status.allowed_ip, other.address());
        assert_eq!(status.endpoint, Some(other.local_udp_addr()));
        assert!(status.last_handshake.is_some(), "{status:?}");
        assert!(status.rx_bytes > 0 && status.tx_bytes > 0, "{status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_errors() {
    let (a, _b) = pair().await;
    let listener = a.listen(80).await.unwrap();
    assert!(matches!(
        a.listen(80).await,
        Err(WgError::PortInUse { port: 80 })
    ));
    drop(listener);
    a.listen(80).await.unwrap();
    assert!(matches!(
        a.connect(addr("10.9.9.9".parse().unwrap(), 80)).await,
        Err(WgError::NoRoute { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_is_refused() {
    let (a, _b) = pair().await;
    let result = timeout(PATIENCE, a.connect(addr(B_IP, 12345)))
        .await
        .unwrap();
    match result {
        Err(WgError::ConnectionRefused { addr: refused }) => assert_eq!(refused, addr(B_IP, 12345)),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The failed attempt left nothing behind.
    assert_eq!(a.connection_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_peer_key_never_handshakes() {
    let a = WgNet::start(WgConfig {
        connect_timeout: Duration::from_secs(3),
        ..WgConfig::new(generate_private_key(), "127.0.0.1:0".parse().unwrap(), A_IP)
    })
    .await
    .unwrap();
    let b = start(B_IP).await;
    // A believes B has some other key: B cannot even check A's initiation.
    a.set_peer(Peer {
        public_key: public_key(&generate_private_key()),
        ..peer_of(&b, Some(b.local_udp_addr()))
    })
    .unwrap();
    b.set_peer(peer_of(&a, Some(a.local_udp_addr()))).unwrap();
    echo_server(b.listen(7).await.unwrap());

    // The caller's timeout, and the attempt is abandoned.
    let attempt = timeout(Duration::from_secs(1), a.connect(addr(B_IP, 7))).await;
    assert!(attempt.is_err(), "connect should time out");
    wait_until(|| a.connection_count() == 0).await;
    // The configured one.
    let started = std::time::Instant::now();
    let attempt = timeout(PATIENCE, a.connect(addr(B_IP, 7))).await.unwrap();
    assert!(
        matches!(attempt, Err(WgError::ConnectTimedOut { .. })),
        "{attempt:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(a.peers()[0].last_handshake, None);
    assert_eq!(b.peers()[0].last_handshake, None);
    assert_eq!(b.peers()[0].rx_bytes, 0);
    assert_eq!(a.connection_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_peer_resets_open_streams() {
    let (a, b) = pair().await;
    echo_server(b.listen(7).await.unwrap());
    let mut stream = a.connect(addr(B_IP, 7)).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();

    assert!(a.remove_peer(&b.public_key()));
    assert!(!a.remove_peer(&b.public_key()));
    let read = timeout(PATIENCE, stream.read(&mut buf)).await.unwrap();
    assert_eq!(read.unwrap_err().kind(), ErrorKind::ConnectionReset);
    assert_eq!(
        stream.write(b"more").await.unwrap_err().kind(),
        ErrorKind::ConnectionReset
    );
    assert!(a.peers().is_empty());
    assert!(matches!(
        a.connect(addr(B_IP, 7)).await,
        Err(WgError::NoRoute { .. })
    ));
    drop(stream);
    assert_eq!(a.connection_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responder_learns_the_endpoint() {
    let a = start(A_IP).await;
    let b = start(B_IP).await;
    a.set_peer(peer_of(&b, Some(b.local_udp_addr()))).unwrap();
    // B, like the gateway, does not know where A is until A's handshake.
    b.set_peer(peer_of(&a, None)).unwrap();
    assert_eq!(b.peers()[0].endpoint, None);
    echo_server(b.listen(7).await.unwrap());

    echo_round_trip(&a, addr(B_IP, 7), b"roam").await;
    assert_eq!(b.peers()[0].endpoint, Some(a.local_udp_addr()));

    // Now B can open connections towards A too.
    echo_server(a.listen(8).await.unwrap());
    echo_round_trip(&b, addr(A_IP, 8), b"back").await;
}

/// Connects from `net` to the echo server at `to` and checks `message`
/// comes back.
async fn echo_round_trip(net: &WgNet, to: SocketAddrV4, message: &[u8]) {
    let mut stream = timeout(PATIENCE, net.connect(to)).await.unwrap().unwrap();
    stream.write_all(message).await.unwrap();
    let mut buf = vec![0u8; message.len()];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_from_outside_the_allowed_ip_are_dropped() {
    let a = start(A_IP).await;
    let b = start(B_IP).await;
    a.set_peer(peer_of(&b, Some(b.local_udp_addr()))).unwrap();
    // B only accepts 10.0.0.9 from A's key, but A sends from 10.0.0.1.
    b.set_peer(Peer {
        allowed_ip: "10.0.0.9".parse().unwrap(),
        ..peer_of(&a, Some(a.local_udp_addr()))
    })
    .unwrap();
    let listener = b.listen(7).await.unwrap();

    let attempt = timeout(Duration::from_secs(2), a.connect(addr(B_IP, 7))).await;
    assert!(attempt.is_err(), "connect should time out");
    // The tunnel itself is up: it is the inner packets that were refused.
    assert!(b.peers()[0].last_handshake.is_some());
    assert!(
        timeout(Duration::from_millis(200), listener.accept())
            .await
            .is_err(),
        "nothing may reach the listener"
    );
    assert_eq!(b.connection_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_ips_are_exclusive() {
    let a = start(A_IP).await;
    let b = start(B_IP).await;
    a.set_peer(peer_of(&b, None)).unwrap();
    let other = Peer {
        public_key: public_key(&generate_private_key()),
        ..peer_of(&b, None)
    };
    assert!(matches!(
        a.set_peer(other),
        Err(WgError::AllowedIpInUse { .. })
    ));
    // Updating the same peer is fine, and moving it frees the old address.
    a.set_peer(Peer {
        allowed_ip: "10.0.0.3".parse().unwrap(),
        ..peer_of(&b, Some(b.local_udp_addr()))
    })
    .unwrap();
    assert_eq!(a.peers().len(), 1);
    assert_eq!(
        a.peers()[0].allowed_ip,
        "10.0.0.3".parse::<std::net::Ipv4Addr>().unwrap()
    );
    assert_eq!(a.peers()[0].endpoint, Some(b.local_udp_addr()));
    assert!(matches!(
        a.set_peer(peer_of(&a, None)),
        Err(WgError::InvalidConfig { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_the_port_and_stops_streams() {
    let (a, b) = pair().await;
    echo_server(b.listen(7).await.unwrap());
    let listener = a.listen(9).await.unwrap();
    let mut stream = a.connect(addr(B_IP, 7)).await.unwrap();
    stream.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 1];
    stream.read_exact(&mut buf).await.unwrap();

    let udp = a.local_udp_addr();
    let clone = a.clone();
    timeout(PATIENCE, a.shutdown()).await.unwrap();
    std::net::UdpSocket::bind(udp).expect("the UDP port is free again");

    assert_eq!(
        stream.read(&mut buf).await.unwrap_err().kind(),
        ErrorKind::ConnectionAborted
    );
    assert!(matches!(listener.accept().await, Err(WgError::Shutdown)));
    assert!(matches!(
        clone.connect(addr(B_IP, 7)).await,
        Err(WgError::Shutdown)
    ));
    assert!(matches!(clone.listen(10).await, Err(WgError::Shutdown)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_streams_frees_connections() {
    let (a, b) = pair().await;
    let listener = b.listen(7).await.unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut data = Vec::new();
        stream.read_to_end(&mut data).await.unwrap();
        stream.write_all(&data).await.unwrap();
        // Dropped with its reply still in flight: the close must deliver it.
    });
    let mut stream = a.connect(addr(B_IP, 7)).await.unwrap();
    let payload = vec![7u8; 100_000];
    stream.write_all(&payload).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    timeout(PATIENCE, stream.read_to_end(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, payload);
    server.await.unwrap();
    drop(stream);
    wait_until(|| a.connection_count() == 0 && b.connection_count() == 0).await;
}

async fn wait_until(mut condition: impl FnMut() -> bool) {
    timeout(PATIENCE, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("condition never held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_megabytes_each_way() {
    const TOTAL: usize = 20 * 1024 * 1024;
    let (a, b) = pair().await;
    let listener = b.listen(5001).await.unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = tokio::io::split(stream);
        let send = async {
            Pattern::new(2).write(&mut w, TOTAL).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let expected = Pattern::new(1);
        let recv = expected.read_exact_to_eof(&mut r, TOTAL);
        let ((), received) = tokio::join!(send, recv);
        received.unwrap();
    });

    let started = std::time::Instant::now();
    let stream = a.connect(addr(B_IP, 5001)).await.unwrap();
    let (mut r, mut w) = tokio::io::split(stream);
    let send = async {
        Pattern::new(1).write(&mut w, TOTAL).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let expected = Pattern::new(2);
    let recv = expected.read_exact_to_eof(&mut r, TOTAL);
    let ((), received) = timeout(Duration::from_secs(120), async { tokio::join!(send, recv) })
        .await
        .unwrap();
    received.unwrap();
    server.await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "20 MB each way in {secs:.2} s: {:.1} MB/s per direction",
        20.0 / secs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_keeps_the_window_closing() {
    const TOTAL: usize = 1024 * 1024;
    let (a, b) = pair().await;
    let listener = b.listen(7).await.unwrap();
    let reader = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        // Small reads with pauses: the sender keeps running into a zero window.
        let mut received = Vec::with_capacity(TOTAL);
        let mut buf = [0u8; 4096];
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
        }
        assert!(
            received == Pattern::new(3).bytes(0, TOTAL),
            "content differs"
        );
    });
    let mut stream = a.connect(addr(B_IP, 7)).await.unwrap();
    Pattern::new(3).write(&mut stream, TOTAL).await.unwrap();
    stream.shutdown().await.unwrap();
    timeout(Duration::from_secs(60), reader)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<WgNet>();
    check::<WgStream>();
    check::<WgListener>();
    check::<WgError>();
}
