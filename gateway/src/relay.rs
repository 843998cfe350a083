//! Moving bytes: a stream that first replays bytes already read from it
//! (the ClientHello, bytes after a PROXY header), and the two-way relay
//! with upstream's idle and total limits.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Any byte stream the proxy relays.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// `inner`, with `prefix` read first.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Rewind<S> {
    /// Replays `prefix`, then reads `inner`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            offset: 0,
            inner,
        }
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.offset < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.offset);
            let start = self.offset;
            buf.put_slice(&self.prefix[start..start + n]);
            self.offset += n;
            if self.offset == self.prefix.len() {
                // The prefix is done with: give its memory back.
                self.prefix = Vec::new();
                self.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A stream that notes when bytes last moved through it.
struct Activity<S> {
    inner: S,
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<S> Activity<S> {
    fn touch(&self) {
        let elapsed = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(elapsed, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed (or one failed).
    Closed,
    /// No bytes moved for the idle limit.
    Idle,
    /// The connection reached its total lifetime.
    Total,
}

/// Relay limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// No bytes either way for this long ends the relay.
    pub idle: Duration,
    /// The relay's whole life.
    pub total: Duration,
    /// Buffer per direction.
    pub buffer: usize,
}

/// Copies both ways between `client` and `backend` until both close or a
/// limit is reached; returns bytes (client→backend, backend→client).
pub async fn relay<A: Io, B: Io>(client: A, backend: B, limits: Limits) -> (RelayEnd, u64, u64) {
    let last = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let mut client = Activity {
        inner: client,
        last: last.clone(),
        epoch,
    };
    let mut backend = Activity {
        inner: backend,
        last: last.clone(),
        epoch,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut backend,
        limits.buffer,
        limits.buffer,
    );
    tokio::pin!(copy);
    let deadline = tokio::time::sleep(limits.total);
    tokio::pin!(deadline);
    let tick = limits
        .idle
        .min(Duration::from_secs(5))
        .max(Duration::from_millis(50));
    let mut ticker = tokio::time::interval(tick);
    loop {
        tokio::select! {
            result = &mut copy => {
                let (up, down) = result.unwrap_or((0, 0));
                return (RelayEnd::Closed, up, down);
            }
            () = &mut deadline => return (RelayEnd::Total, 0, 0),
            _ = ticker.tick() => {
                let idle_ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
                    .saturating_sub(last.load(Ordering::Relaxed));
                if Duration::from_millis(idle_ms) >= limits.idle {
                    return (RelayEnd::Idle, 0, 0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn rewind_replays_then_reads() {
        let (mut far, near) = tokio::io::duplex(64);
        let mut stream = Rewind::new(b"hello ".to_vec(), near);
        far.write_all(b"world").await.unwrap();
        drop(far);
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn relay_copies_both_ways_and_ends_when_idle() {
        let (client, mut client_far) = tokio::io::duplex(1024);
        let (backend, mut backend_far) = tokio::io::duplex(1024);
        let limits = Limits {
            idle: Duration::from_millis(300),
            total: Duration::from_secs(30),
            buffer: 1024,
        };
        let task = tokio::spawn(relay(client, backend, limits));
        client_far.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        backend_far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        backend_far.write_all(b"pong").await.unwrap();
        client_far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        let (end, _, _) = task.await.unwrap();
        assert_eq!(end, RelayEnd::Idle);
    }

    #[tokio::test]
    async fn relay_ends_at_its_total_lifetime_even_when_busy() {
        let (client, mut client_far) = tokio::io::duplex(1 << 16);
        let (backend, mut backend_far) = tokio::io::duplex(1 << 16);
        let limits = Limits {
            idle: Duration::from_secs(30),
            total: Duration::from_millis(300),
            buffer: 1024,
        };
        let task = tokio::spawn(relay(client, backend, limits));
        let writer = tokio::spawn(async move {
            while client_far.write_all(&[0u8; 512]).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while backend_far.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        let (end, _, _) = task.await.unwrap();
        assert_eq!(end, RelayEnd::Total);
        writer.abort();
        reader.abort();
    }
}
