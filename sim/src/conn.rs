//! One accepted TCP connection, and the means to kill it with a reset.
//!
//! The reset fault must look like a replica crashing mid-stream: the client sees `ECONNRESET`, not
//! a clean end. A handler asks for it through its [`ConnHandle`]; the connection task then drops
//! the hyper connection, and [`ResettableStream`] sets `SO_LINGER` to zero just before the socket
//! closes, which makes the kernel send an RST instead of a FIN. Connections that are not reset
//! close normally.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Shared between a connection task and the requests it serves.
#[derive(Clone, Default)]
pub struct ConnHandle {
    inner: Arc<ResetSignal>,
}

#[derive(Default)]
struct ResetSignal {
    requested: AtomicBool,
    notify: Notify,
}

impl ConnHandle {
    /// Asks the connection task to abort the connection with an RST.
    pub fn reset(&self) {
        self.inner.requested.store(true, Ordering::Release);
        self.inner.notify.notify_one();
    }

    fn is_reset_requested(&self) -> bool {
        self.inner.requested.load(Ordering::Acquire)
    }

    /// Resolves once [`ConnHandle::reset`] was called (also if it was called before).
    pub async fn reset_requested(&self) {
        self.inner.notify.notified().await;
    }
}

/// A TCP stream that closes with an RST when its connection asked for a reset.
pub struct ResettableStream {
    stream: TcpStream,
    conn: ConnHandle,
}

impl ResettableStream {
    pub fn new(stream: TcpStream, conn: ConnHandle) -> Self {
        ResettableStream { stream, conn }
    }
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.conn.is_reset_requested() {
            // Linger 0: close() discards unsent data and sends RST.
            if let Err(error) =
                socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO))
            {
                tracing::warn!(%error, "setting SO_LINGER 0 for a reset");
            }
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
