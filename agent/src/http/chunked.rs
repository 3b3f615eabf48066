//! Incremental `Transfer-Encoding: chunked` decoder. It consumes framing from the front of a
//! read buffer and hands out payload as `Bytes` split off that buffer (no copy).

use bytes::{Bytes, BytesMut};

use super::HttpError;

/// Longest chunk-size line (with extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// Result of one decode step.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Payload bytes, in order.
    Data(Bytes),
    /// The buffer holds no complete next element; read more.
    NeedMore,
    /// The terminating chunk and trailers were consumed.
    Done,
}

#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self { state: State::Size }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes the next element from the front of `buf`.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Decoded, HttpError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::Done),
                State::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = parse_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = remaining.min(buf.len() as u64) as usize;
                    let left = remaining - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(HttpError::BadChunk("chunk data not followed by CRLF"));
                    }
                    let _ = buf.split_to(2);
                    self.state = State::Size;
                }
                State::Trailers => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                    }
                }
            }
        }
    }
}

/// Takes one CRLF-terminated line (without the CRLF) off the front of `buf`.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, HttpError> {
    match memchr::memchr(b'\n', buf) {
        // The same limit whether the line arrived in one read or several (found by fuzzing:
        // a long line was refused only when it was split).
        Some(i) if i > MAX_LINE => Err(HttpError::BadChunk("line too long")),
        Some(i) => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i);
            if line.last() == Some(&b'\r') {
                line.truncate(i - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE => Err(HttpError::BadChunk("line too long")),
        None => Ok(None),
    }
}

fn parse_size(line: &[u8]) -> Result<u64, HttpError> {
    let hex = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or(line)
        .trim_ascii();
    if hex.is_empty() || hex.len() > 15 {
        return Err(HttpError::BadChunk("invalid chunk size"));
    }
    hex.iter().try_fold(0u64, |acc, c| {
        let d = (*c as char)
            .to_digit(16)
            .ok_or(HttpError::BadChunk("invalid chunk size"))?;
        Ok(acc * 16 + u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], split_every: usize) -> Result<(Vec<u8>, bool), HttpError> {
        let mut dec = ChunkedDecoder::new();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(split_every) {
            buf.extend_from_slice(piece);
            loop {
                match dec.next(&mut buf)? {
                    Decoded::Data(b) => out.extend_from_slice(&b),
                    Decoded::NeedMore => break,
                    Decoded::Done => return Ok((out, true)),
                }
            }
        }
        Ok((out, false))
    }

    #[test]
    fn decodes_whole_and_byte_by_byte() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: y\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (out, done) = decode_all(wire, step).unwrap();
            assert_eq!(out, b"hello world", "step {step}");
            assert!(done);
        }
    }

    #[test]
    fn rejects_bad_framing() {
        assert!(decode_all(b"zz\r\n", 100).is_err());
        assert!(decode_all(b"2\r\nabXY", 100).is_err());
        let long = vec![b'1'; MAX_LINE + 10];
        assert!(decode_all(&long, 100_000).is_err());
    }
}
