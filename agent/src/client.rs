//! The client side of a connection: the socket, its read buffer (which may already hold the
//! next pipelined request) and the few ways Tollgate writes responses of its own.
//! Hot path.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use monoio::buf::{IoBuf, IoVecBuf};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::api::Wire;
use crate::error::GateError;

pub struct ClientConn {
    pub stream: TcpStream,
    pub buf: BytesMut,
    pub peer: SocketAddr,
}

/// Reads more bytes from `stream` into `buf`, waiting at most `timeout`.
/// A timeout is reported as `ErrorKind::TimedOut`; the caller then closes the connection.
pub async fn read_more<R: AsyncReadRent>(
    stream: &mut R,
    buf: &mut BytesMut,
    timeout: Duration,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    let owned = std::mem::take(buf);
    match monoio::time::timeout(timeout, stream.read(owned)).await {
        Ok((res, owned)) => {
            *buf = owned;
            res
        }
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out")),
    }
}

impl ClientConn {
    pub fn new(stream: TcpStream, peer: SocketAddr) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            peer,
        }
    }

    pub async fn write_all<T: IoBuf + 'static>(&mut self, buf: T) -> io::Result<()> {
        self.stream.write_all(buf).await.0.map(|_| ())
    }

    pub async fn write_vectored<T: IoVecBuf + 'static>(&mut self, buf: T) -> (io::Result<()>, T) {
        let (r, b) = self.stream.write_vectored_all(buf).await;
        (r.map(|_| ()), b)
    }

    /// Writes a complete response with a body of our own.
    pub async fn respond(
        &mut self,
        status: u16,
        content_type: &str,
        body: Vec<u8>,
        keep_alive: bool,
        extra: &str,
    ) -> io::Result<()> {
        let mut out = Vec::with_capacity(160 + extra.len() + body.len());
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{}{extra}\r\n",
                reason(status),
                body.len(),
                if keep_alive { "" } else { "connection: close\r\n" },
            )
            .as_bytes(),
        );
        out.extend_from_slice(&body);
        self.write_all(out).await
    }

    /// Writes a gateway error in the client's wire format.
    pub async fn respond_error(
        &mut self,
        err: &GateError,
        wire: Wire,
        keep_alive: bool,
        request_id: Option<&str>,
    ) -> io::Result<()> {
        let r = err.to_response(wire);
        let mut extra = String::new();
        if let Some(s) = r.retry_after_s {
            extra.push_str(&format!("retry-after: {s}\r\n"));
        }
        if let Some(id) = request_id {
            extra.push_str(&format!("x-tollgate-request-id: {id}\r\n"));
        }
        self.respond(
            r.status,
            "application/json",
            r.body.into_bytes(),
            keep_alive,
            &extra,
        )
        .await
    }
}

/// Reason phrase for the status codes Tollgate produces or relays.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
