//! Published ports: the guest listens on 0.0.0.0:published and forwards to
//! the service's address on its network (or loopback for a service in the
//! guest's own stack): a TCP proxy, or a UDP relay keeping one upstream
//! socket per client so replies find their way back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// A UDP client silent this long loses its upstream socket.
const UDP_IDLE: Duration = Duration::from_secs(60);

/// At most this many UDP clients at once per port; more are dropped, as a
/// full conntrack table would drop them.
const UDP_MAX_CLIENTS: usize = 4096;

/// Listens on `listen` and forwards every connection to `target`. Binding
/// happens before this returns, so a port in use is reported to the caller.
pub(crate) async fn spawn_proxy(
    listen: SocketAddr,
    target: SocketAddr,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                // Accept errors (EMFILE...) are transient; back off briefly.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(async move {
                // A refused connect just closes the client's connection, as a
                // port with nobody listening would.
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Ok((bound, task))
}

/// Relays UDP datagrams from `listen` to `target` and the replies back to
/// each client. Binding happens before this returns.
pub(crate) async fn spawn_udp_relay(
    listen: SocketAddr,
    target: SocketAddr,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let front = Arc::new(UdpSocket::bind(listen).await?);
    let bound = front.local_addr()?;
    let task = tokio::spawn(async move {
        let clients: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, client)) = front.recv_from(&mut buf).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let existing = clients.lock().await.get(&client).cloned();
            let upstream = match existing {
                Some(upstream) => upstream,
                None => {
                    if clients.lock().await.len() >= UDP_MAX_CLIENTS {
                        continue;
                    }
                    let Ok(upstream) = connect_udp(target).await else {
                        continue;
                    };
                    let upstream = Arc::new(upstream);
                    clients.lock().await.insert(client, upstream.clone());
                    tokio::spawn(relay_replies(
                        front.clone(),
                        upstream.clone(),
                        client,
                        clients.clone(),
                    ));
                    upstream
                }
            };
            let _ = upstream.send(&buf[..n]).await;
        }
    });
    Ok((bound, task))
}

async fn connect_udp(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(target).await?;
    Ok(socket)
}

/// Sends `upstream`'s replies to `client` until it is idle for [`UDP_IDLE`].
async fn relay_replies(
    front: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    clients: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>>,
) {
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, upstream.recv(&mut buf)).await {
        let _ = front.send_to(&buf[..n], client).await;
    }
    clients.lock().await.remove(&client);
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn forwards_both_ways_on_loopback() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    let n = conn.read(&mut buf).await.unwrap();
                    conn.write_all(b"echo:").await.unwrap();
                    conn.write_all(&buf[..n]).await.unwrap();
                });
            }
        });
        let (proxy, task) = spawn_proxy("127.0.0.1:0".parse().unwrap(), echo_addr)
            .await
            .unwrap();
        for _ in 0..2 {
            let mut client = TcpStream::connect(proxy).await.unwrap();
            client.write_all(b"hi").await.unwrap();
            let mut reply = Vec::new();
            client.read_to_end(&mut reply).await.unwrap();
            assert_eq!(reply, b"echo:hi");
        }
        // A second listener on the same port is refused up front.
        assert!(spawn_proxy(proxy, echo_addr).await.is_err());
        task.abort();
    }

    #[tokio::test]
    async fn relays_udp_both_ways_per_client() {
        let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = echo.recv_from(&mut buf).await {
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                echo.send_to(&reply, from).await.unwrap();
            }
        });
        let (relay, task) = spawn_udp_relay("127.0.0.1:0".parse().unwrap(), echo_addr)
            .await
            .unwrap();
        for word in [&b"one"[..], b"two"] {
            let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            client.send_to(word, relay).await.unwrap();
            let mut buf = [0u8; 64];
            let (n, from) =
                tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
            assert_eq!(from, relay);
            assert_eq!(&buf[..n], [&b"echo:"[..], word].concat());
        }
        task.abort();
    }
}
