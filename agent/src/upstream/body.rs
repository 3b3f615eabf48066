//! Reading a provider's response body by its framing (content-length, chunked, until close),
//! as `Bytes` pieces split off the connection's read buffer (no copy).
//! `buffered` hands out what has already arrived without touching the socket, so the relay can
//! forward everything that is here in one write. Hot path.

use std::io;
use std::time::Duration;

use bytes::Bytes;

use super::UpstreamConn;
use crate::client::read_more_by;
use crate::http::chunked::{ChunkedDecoder, Decoded};
use crate::http::response::ResponseFraming;
use crate::http::HttpError;

/// Why the provider's body stopped early.
#[derive(Debug)]
pub enum PieceError {
    Reset(io::Error),
    Timeout,
    Protocol(HttpError),
}

/// Pulls body pieces off a provider connection according to its framing.
pub enum BodyReader {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

impl BodyReader {
    pub fn new(framing: ResponseFraming) -> Self {
        match framing {
            ResponseFraming::Empty | ResponseFraming::Length(0) => BodyReader::Done,
            ResponseFraming::Length(n) => BodyReader::Length(n),
            ResponseFraming::Chunked => BodyReader::Chunked(ChunkedDecoder::new()),
            ResponseFraming::UntilClose => BodyReader::UntilClose,
        }
    }

    /// True once the whole body has been read (the connection is at a response boundary).
    pub fn is_done(&self) -> bool {
        matches!(self, BodyReader::Done)
    }

    /// The next piece, reading from the socket (at most `timeout` per read) when nothing is
    /// buffered. `None` at the end of the body.
    pub async fn next(
        &mut self,
        conn: &mut UpstreamConn,
        timeout: Duration,
    ) -> Result<Option<Bytes>, PieceError> {
        loop {
            if let Some(piece) = self.buffered(conn)? {
                return Ok(Some(piece));
            }
            if self.is_done() {
                return Ok(None);
            }
            let n = match read_more_by(&mut conn.stream, &mut conn.buf, &conn.deadline, timeout)
                .await
            {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(PieceError::Timeout),
                Err(e) => return Err(PieceError::Reset(e)),
            };
            if n == 0 {
                if matches!(self, BodyReader::UntilClose) {
                    *self = BodyReader::Done;
                    return Ok(None);
                }
                return Err(PieceError::Reset(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before the end of the body",
                )));
            }
        }
    }

    /// The next piece already in the read buffer, without touching the socket.
    pub fn buffered(&mut self, conn: &mut UpstreamConn) -> Result<Option<Bytes>, PieceError> {
        match self {
            BodyReader::Done => Ok(None),
            BodyReader::Length(rem) => {
                if conn.buf.is_empty() {
                    return Ok(None);
                }
                let n = (*rem).min(conn.buf.len() as u64);
                *rem -= n;
                let piece = conn.buf.split_to(n as usize).freeze();
                if *rem == 0 {
                    *self = BodyReader::Done;
                }
                Ok(Some(piece))
            }
            BodyReader::Chunked(dec) => {
                match dec.next(&mut conn.buf).map_err(PieceError::Protocol)? {
                    Decoded::Data(b) => Ok(Some(b)),
                    Decoded::Done => {
                        *self = BodyReader::Done;
                        Ok(None)
                    }
                    Decoded::NeedMore => Ok(None),
                }
            }
            BodyReader::UntilClose => Ok((!conn.buf.is_empty()).then(|| conn.buf.split().freeze())),
        }
    }
}
