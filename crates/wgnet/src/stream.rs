//! TCP streams and listeners inside the tunnel, as tokio I/O types.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddrV4;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::driver::Shared;
use crate::error::WgError;
use crate::stack::ConnId;

/// A TCP connection through the tunnel.
///
/// Reads and writes copy into and out of the connection's smoltcp buffers;
/// the network's task moves the data. `poll_shutdown` sends FIN after the
/// buffered data. Dropping the stream closes it in the background (the data
/// still buffered is delivered, for up to 30 s), or resets it if received
/// data was left unread; its buffers are freed once the close completes.
#[derive(Debug)]
pub struct WgStream {
    shared: Arc<Shared>,
    id: ConnId,
    local: SocketAddrV4,
    remote: SocketAddrV4,
}

impl WgStream {
    pub(crate) fn new(
        shared: Arc<Shared>,
        id: ConnId,
        local: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Self {
        WgStream {
            shared,
            id,
            local,
            remote,
        }
    }

    /// Our tunnel address and port.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }

    /// The remote tunnel address and port.
    pub fn peer_addr(&self) -> SocketAddrV4 {
        self.remote
    }

    /// Waits until the three-way handshake of a `connect` completes.
    pub(crate) async fn established(&self) -> Result<(), WgError> {
        poll_fn(|cx| self.shared.stack().poll_established(self.id, cx)).await
    }
}

impl AsyncRead for WgStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let (poll, wake) = self
            .shared
            .stack()
            .poll_recv(self.id, cx, buf.initialize_unfilled());
        if wake {
            self.shared.wake_driver();
        }
        poll.map_ok(|n| buf.advance(n))
    }
}

impl AsyncWrite for WgStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let (poll, wake) = self.shared.stack().poll_send(self.id, cx, buf);
        if wake {
            self.shared.wake_driver();
        }
        poll
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written data is already the stack's to send; there is no user-space buffer.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.shared.stack().shutdown_write(self.id) {
            self.shared.wake_driver();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for WgStream {
    fn drop(&mut self) {
        if self.shared.stack().release(self.id) {
            self.shared.wake_driver();
        }
    }
}

/// A TCP port listening inside the tunnel. Dropping it resets the
/// connections it received but nobody accepted.
#[derive(Debug)]
pub struct WgListener {
    shared: Arc<Shared>,
    port: u16,
}

impl WgListener {
    pub(crate) fn new(shared: Arc<Shared>, port: u16) -> Self {
        WgListener { shared, port }
    }

    /// The port listened on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits for the next established connection and its remote address.
    pub async fn accept(&self) -> Result<(WgStream, SocketAddrV4), WgError> {
        let (id, local, remote) =
            poll_fn(|cx| self.shared.stack().poll_accept(self.port, cx)).await?;
        Ok((
            WgStream::new(Arc::clone(&self.shared), id, local, remote),
            remote,
        ))
    }
}

impl Drop for WgListener {
    fn drop(&mut self) {
        if self.shared.stack().unlisten(self.port) {
            self.shared.wake_driver();
        }
    }
}
