//! Published ports: `published:target` with different numbers becomes a TCP
//! proxy from 0.0.0.0:published to 127.0.0.1:target. Same-number ports need
//! nothing: services listen in the guest's own network namespace.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

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
}
