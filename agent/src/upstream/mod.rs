//! Connections to providers: plain TCP or rustls, kept alive in a per-core pool.
//! Each worker owns its pool (`PoolLocal`, `!Send` on purpose): no lock, no cross-core traffic.
//! Addresses are resolved on the control thread (`resolve.rs`) so a worker never blocks on DNS.

pub mod body;
pub mod pool;
pub mod resolve;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::BufResult;
use monoio_rustls::ClientTlsStream;
use thiserror::Error;

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

    pub async fn write_vectored_all<T: IoVecBuf + 'static>(
        &mut self,
        buf: T,
    ) -> BufResult<usize, T> {
        match self {
            UpstreamStream::Plain(s) => s.write_vectored_all(buf).await,
            UpstreamStream::Tls(s) => s.write_vectored_all(buf).await,
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
}

/// Connects to the first reachable address of a provider.
pub async fn connect(
    provider: usize,
    addrs: &[SocketAddr],
    host: &str,
    tls: Option<&tls::Tls>,
    timeout: Duration,
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
        });
    }
    Err(last)
}
