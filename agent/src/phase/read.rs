//! Phase 2, read: one HTTP/1.1 request (head and whole body) from the client, under limits on
//! head size, header count, body size and time. The body is kept as one `Bytes` because the
//! inspect pass needs it contiguous; chunked bodies are de-chunked into it.
//! Writes: the `Request` that starts a `RequestCtx`. Hot path.

use std::io;

use bytes::{Bytes, BytesMut};

use crate::client::{read_more, ClientConn};
use crate::config::Limits;
use crate::error::{ErrorKind, GateError};
use crate::http::chunked::{ChunkedDecoder, Decoded};
use crate::http::request::{BodyFraming, RequestHead};
use crate::http::{find_head_end, HttpError};

pub struct Request {
    pub head: RequestHead,
    pub body: Bytes,
}

/// Why reading stopped without a request.
pub enum ReadEnd {
    /// The client closed (or idled out) between requests: close quietly.
    Closed,
    /// The client sent something we must answer with an error, then close.
    Error(GateError),
    /// A head was read but its body failed (the error is answered; the API is known).
    BodyError(RequestHead, GateError),
}

fn http_error(e: HttpError) -> GateError {
    let kind = match e {
        HttpError::HeadTooLarge { limit } => ErrorKind::HeadTooLarge { limit },
        HttpError::TooManyHeaders { limit } => ErrorKind::TooManyHeaders { limit },
        HttpError::Malformed(_) | HttpError::BadChunk(_) => ErrorKind::MalformedHttp,
    };
    GateError::new(kind, e.to_string())
}

fn timeout_error(what: &str) -> GateError {
    GateError::new(
        ErrorKind::ClientTimeout,
        format!("the client did not send the {what} in time"),
    )
}

/// Reads the next request on a keep-alive connection.
pub async fn read_request(conn: &mut ClientConn, limits: &Limits) -> Result<Request, ReadEnd> {
    let head = read_head(conn, limits).await?;
    match read_body(conn, &head, limits).await {
        Ok(body) => Ok(Request { head, body }),
        Err(e) => Err(ReadEnd::BodyError(head, e)),
    }
}

async fn read_head(conn: &mut ClientConn, limits: &Limits) -> Result<RequestHead, ReadEnd> {
    let mut scanned = 0;
    loop {
        if let Some(end) = find_head_end(&conn.buf, scanned) {
            if end > limits.max_head_bytes {
                return Err(ReadEnd::Error(http_error(HttpError::HeadTooLarge {
                    limit: limits.max_head_bytes,
                })));
            }
            let raw = conn.buf.split_to(end).freeze();
            return RequestHead::parse(raw, limits.max_headers)
                .map_err(|e| ReadEnd::Error(http_error(e)));
        }
        scanned = conn.buf.len();
        if scanned > limits.max_head_bytes {
            return Err(ReadEnd::Error(http_error(HttpError::HeadTooLarge {
                limit: limits.max_head_bytes,
            })));
        }
        // Between requests the idle timeout applies; once a head has started, the head timeout.
        let idle = conn.buf.is_empty();
        let timeout = if idle {
            limits.idle_timeout
        } else {
            limits.header_timeout
        };
        match read_more(&mut conn.stream, &mut conn.buf, timeout).await {
            Ok(0) => {
                return Err(if idle {
                    ReadEnd::Closed
                } else {
                    ReadEnd::Error(GateError::new(
                        ErrorKind::MalformedHttp,
                        "connection closed in the middle of a request head",
                    ))
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut && !idle => {
                return Err(ReadEnd::Error(timeout_error("request head")))
            }
            Err(_) => return Err(ReadEnd::Closed),
        }
    }
}

async fn read_body(
    conn: &mut ClientConn,
    head: &RequestHead,
    limits: &Limits,
) -> Result<Bytes, GateError> {
    let too_large = || {
        GateError::new(
            ErrorKind::BodyTooLarge {
                limit: limits.max_body_bytes,
            },
            format!(
                "request body exceeds the limit of {} bytes",
                limits.max_body_bytes
            ),
        )
    };
    if head.expect_continue && head.framing != BodyFraming::None {
        if let BodyFraming::Length(n) = head.framing {
            if n > limits.max_body_bytes {
                return Err(too_large());
            }
        }
        conn.write_all(&b"HTTP/1.1 100 Continue\r\n\r\n"[..])
            .await
            .map_err(|e| {
                GateError::new(ErrorKind::MalformedHttp, format!("client went away: {e}"))
            })?;
    }
    match head.framing {
        BodyFraming::None => Ok(Bytes::new()),
        BodyFraming::Length(n) => {
            if n > limits.max_body_bytes {
                return Err(too_large());
            }
            let n = n as usize;
            if conn.buf.capacity() < n {
                conn.buf.reserve(n - conn.buf.len());
            }
            while conn.buf.len() < n {
                fill(conn, limits, "request body").await?;
            }
            Ok(conn.buf.split_to(n).freeze())
        }
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            let mut body = BytesMut::new();
            loop {
                match decoder.next(&mut conn.buf).map_err(http_error)? {
                    Decoded::Data(d) => {
                        if (body.len() + d.len()) as u64 > limits.max_body_bytes {
                            return Err(too_large());
                        }
                        body.extend_from_slice(&d);
                    }
                    Decoded::NeedMore => fill(conn, limits, "request body").await?,
                    Decoded::Done => return Ok(body.freeze()),
                }
            }
        }
    }
}

async fn fill(conn: &mut ClientConn, limits: &Limits, what: &str) -> Result<(), GateError> {
    match read_more(&mut conn.stream, &mut conn.buf, limits.body_timeout).await {
        Ok(0) => Err(GateError::new(
            ErrorKind::MalformedHttp,
            format!("connection closed before the whole {what} arrived"),
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(timeout_error(what)),
        Err(e) => Err(GateError::new(
            ErrorKind::MalformedHttp,
            format!("reading the {what} failed: {e}"),
        )),
    }
}
