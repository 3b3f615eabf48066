//! Connections to providers: plain TCP or rustls, kept alive in a per-core pool.
//! Each worker owns its pool (`PoolLocal`, `!Send` on purpose): no lock, no cross-core traffic.
//! Addresses are resolved off the workers (`snapshot::ProviderRuntime`) so a worker never blocks on DNS.

pub mod body;
pub mod breaker;
pub mod health;
pub mod pool;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::buf::{IoBuf, IoBufMut, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::BufResult;
use monoio_rustls::ClientTlsStream;
use thiserror::Error;

use crate::http::idle::{Deadline, IdleClock};
use crate::http::iovec::{write_all, BytesVec};

#[derive(Debug, Error)]
pub enum UpstreamError {
    #[error("no address known for {0}")]
    NoAddress(String),
    #[error("connect to {addr} failed: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("TLS handshake with {host} failed: {detail}")]
    Tls { host: String, detail: String },
}

/// A byte stream to a provider.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<ClientTlsStream<TcpStream>>),
}

impl AsyncReadRent for UpstreamStream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.read(buf).await,
            UpstreamStream::Tls(s) => s.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.readv(buf).await,
            UpstreamStream::Tls(s) => s.readv(buf).await,
        }
    }
}

impl UpstreamStream {
    pub async fn write_all<T: IoBuf + 'static>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.write_all(buf).await,
            UpstreamStream::Tls(s) => s.write_all(buf).await,
        }
    }

    /// Writes all of `buf`, across partial writes (see `http::iovec::write_all`).
    pub async fn write_vectored_all(&mut self, buf: BytesVec) -> (io::Result<()>, BytesVec) {
        match self {
            UpstreamStream::Plain(s) => write_all(s, buf).await,
            UpstreamStream::Tls(s) => write_all(&mut **s, buf).await,
        }
    }
}

/// One connection with its read buffer (which may hold bytes of the next response head).
pub struct UpstreamConn {
    pub stream: UpstreamStream,
    pub buf: BytesMut,
    pub provider: usize,
    /// True when this connection already carried a request (a failure before any response
    /// byte may then be a stale keep-alive and is worth one retry).
    pub reused: bool,
    pub idle_since: Instant,
    /// The TCP socket under the stream (TLS included), for the liveness check of a pooled
    /// connection. Valid for as long as `stream` lives.
    fd: RawFd,
    /// Bounds each read (`client::read_more_by`), on its worker's upstream clock.
    pub deadline: Deadline,
}

impl UpstreamConn {
    /// Whether an idle pooled connection can no longer carry a request: the provider closed it
    /// (its FIN is already here: an idle keep-alive timeout, e.g. uvicorn's 5 s), reset it, or
    /// sent bytes nobody asked for on a plain connection. Checked before reuse, because a
    /// request written to such a socket may be lost or (if the close races the write) already
    /// processed, and must then not be sent again. One non-blocking `recv(MSG_PEEK)`.
    pub fn is_stale(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: `fd` is the open socket owned by `self.stream`; recv writes at most one byte
        // into `byte`, and MSG_PEEK leaves the data (if any) in the socket.
        let n = unsafe {
            libc::recv(
                self.fd,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => true,
            n if n < 0 => io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock,
            // TLS may deliver records between responses (session tickets, close_notify): rustls
            // reads them with the next response. Plain HTTP has nothing to say unasked.
            _ => matches!(self.stream, UpstreamStream::Plain(_)),
        }
    }
}

/// Connects to the first reachable address of a provider.
pub async fn connect(
    provider: usize,
    addrs: &[SocketAddr],
    host: &str,
    tls: Option<&tls::Tls>,
    timeout: Duration,
    clock: &Rc<IdleClock>,
) -> Result<UpstreamConn, UpstreamError> {
    let mut last = UpstreamError::NoAddress(host.to_string());
    for addr in addrs {
        let stream = match monoio::time::timeout(timeout, TcpStream::connect_addr(*addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                last = UpstreamError::Connect {
                    addr: *addr,
                    source,
                };
                continue;
            }
            Err(_) => {
                last = UpstreamError::ConnectTimeout(*addr);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let fd = stream.as_raw_fd();
        let stream = match tls {
            None => UpstreamStream::Plain(stream),
            Some(t) => {
                let hs = monoio::time::timeout(
                    timeout,
                    t.connector.connect(t.server_name.clone(), stream),
                )
                .await;
                match hs {
                    Ok(Ok(s)) => UpstreamStream::Tls(Box::new(s)),
                    Ok(Err(e)) => {
                        return Err(UpstreamError::Tls {
                            host: host.to_string(),
                            // monoio-rustls shows only "io error"/"rustls error";
                            // its io::Error form keeps the cause.
                            detail: io::Error::from(e).to_string(),
                        });
                    }
                    Err(_) => {
                        return Err(UpstreamError::Tls {
                            host: host.to_string(),
                            detail: "handshake timed out".into(),
                        })
                    }
                }
            }
        };
        return Ok(UpstreamConn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            provider,
            reused: false,
            idle_since: Instant::now(),
            fd,
            deadline: clock.deadline(),
        });
    }
    Err(last)
}
