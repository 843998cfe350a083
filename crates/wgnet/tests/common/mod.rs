//! Fixtures: `WgNet`s on loopback peered with each other, and checkable content.
#![allow(dead_code, unreachable_pub)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use dstack_wgnet::{Peer, WgConfig, WgListener, WgNet, generate_private_key};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const A_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const B_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// A network with a fresh key on an ephemeral loopback port.
pub async fn start(ip: Ipv4Addr) -> WgNet {
    WgNet::start(WgConfig::new(
        generate_private_key(),
        "127.0.0.1:0".parse().unwrap(),
        ip,
    ))
    .await
    .unwrap()
}

/// `net` as a peer of another network.
pub fn peer_of(net: &WgNet, endpoint: Option<SocketAddr>) -> Peer {
    Peer {
        public_key: net.public_key(),
        allowed_ip: net.address(),
        endpoint,
        keepalive: None,
    }
}

/// Two networks, A (10.0.0.1) and B (10.0.0.2), each knowing the other's endpoint.
pub async fn pair() -> (WgNet, WgNet) {
    let a = start(A_IP).await;
    let b = start(B_IP).await;
    a.set_peer(peer_of(&b, Some(b.local_udp_addr()))).unwrap();
    b.set_peer(peer_of(&a, Some(a.local_udp_addr()))).unwrap();
    (a, b)
}

/// Serves `listener` with one echo task per connection.
pub fn echo_server(listener: WgListener) {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(stream);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
}

pub fn addr(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// Pseudo-random content: the byte at offset `i` of stream `seed` is
/// `block[(start + i) % len]`, with a different start per seed. The prime
/// period never lines up with read or write sizes, so a lost, repeated or
/// reordered chunk shows.
pub struct Pattern {
    block: &'static [u8],
    start: usize,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        const PERIOD: usize = 1_000_003;
        static BLOCK: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let block = BLOCK.get_or_init(|| {
            let mut state = 0u64;
            let mut block = Vec::with_capacity(PERIOD + 8);
            while block.len() < PERIOD {
                // splitmix64
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                block.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
            }
            block.truncate(PERIOD);
            block
        });
        let start = usize::try_from(seed.wrapping_mul(104_729) % PERIOD as u64).unwrap();
        Pattern { block, start }
    }

    /// `len` bytes of the pattern from `offset`.
    pub fn bytes(&self, offset: usize, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.fill(offset, &mut buf);
        buf
    }

    fn fill(&self, offset: usize, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            let at = (self.start + offset + done) % self.block.len();
            let n = (buf.len() - done).min(self.block.len() - at);
            buf[done..done + n].copy_from_slice(&self.block[at..at + n]);
            done += n;
        }
    }

    /// Writes `total` bytes of the pattern.
    pub async fn write<W: AsyncWrite + Unpin>(
        &self,
        w: &mut W,
        total: usize,
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut offset = 0;
        while offset < total {
            let n = buf.len().min(total - offset);
            self.fill(offset, &mut buf[..n]);
            w.write_all(&buf[..n]).await?;
            offset += n;
        }
        Ok(())
    }

    /// Reads to EOF, checking the content is exactly `total` bytes of the pattern.
    pub async fn read_exact_to_eof<R: AsyncRead + Unpin>(
        &self,
        r: &mut R,
        total: usize,
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut expected = vec![0u8; 64 * 1024];
        let mut offset = 0;
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            assert!(offset + n <= total, "more than {total} bytes");
            self.fill(offset, &mut expected[..n]);
            assert!(
                buf[..n] == expected[..n],
                "content differs in {offset}..{}",
                offset + n
            );
            offset += n;
        }
        assert_eq!(offset, total, "stream ended early");
        Ok(())
    }
}
