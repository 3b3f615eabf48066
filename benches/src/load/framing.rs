//! Incremental HTTP/1.1 response framing for the load generator.
//!
//! Why it exists: the generator must know where one response ends on a keep-alive connection and when the
//! first body byte arrived (TTFT), and nothing more. It reads the status code and the three headers that
//! frame a message (`content-length`, `transfer-encoding`, `connection`), then counts body bytes or walks
//! chunked framing without copying or decoding the body.
//!
//! It owns only per-response parse state. It never allocates per body byte, never buffers the body, and
//! never interprets JSON or SSE. Hot path of the generator: one `feed` call per socket read.

use std::fmt;

/// Largest response head accepted, in bytes; anything bigger is treated as a protocol error.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Why a response could not be framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramingError {
    /// The status line is not `HTTP/1.x NNN ...`.
    BadStatusLine,
    /// A header that frames the body has a value we cannot use.
    BadHeader(&'static str),
    /// The head did not end within [`MAX_HEAD_BYTES`].
    HeadTooLarge,
    /// Chunked framing was malformed (bad size line or missing CRLF after data).
    BadChunk,
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadStatusLine => f.write_str("malformed status line"),
            Self::BadHeader(name) => write!(f, "unusable {name} header"),
            Self::HeadTooLarge => write!(f, "response head larger than {MAX_HEAD_BYTES} bytes"),
            Self::BadChunk => f.write_str("malformed chunked framing"),
        }
    }
}

impl std::error::Error for FramingError {}

/// What one `feed` call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Bytes of the input that belong to this response.
    pub consumed: usize,
    /// The first body byte was in this input (or the response turned out to have no body).
    pub body_started: bool,
    /// The response is complete; the parser must be `reset` before the next one.
    pub complete: bool,
}

/// How the body is delimited, once the head is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// `content-length`: bytes still expected.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked(Chunk),
    /// Neither header: the body runs until the server closes the connection.
    UntilClose,
}

/// Position inside chunked framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size; `digits` counts the hex digits seen so far.
    Size { value: u64, digits: u8 },
    /// After the size: skipping chunk extensions up to LF.
    SizeExt { value: u64 },
    /// Inside chunk data: bytes left.
    Data(u64),
    /// After chunk data: expecting CR (or a bare LF).
    DataCr,
    /// After chunk data and CR: expecting LF.
    DataLf,
    /// After the last chunk: at the start of a trailer line (an empty line ends the message).
    TrailerStart,
    /// After the last chunk: an empty trailer line's CR was seen, expecting LF.
    TrailerEndLf,
    /// Inside a non-empty trailer line, skipping to LF.
    TrailerLine,
}

/// Incremental parser for one response at a time on one connection.
#[derive(Debug, Default)]
pub struct ResponseParser {
    /// Head bytes seen so far; kept only until the head is complete (heads are small).
    head: Vec<u8>,
    status: u16,
    keep_alive: bool,
    body: Option<Body>,
    body_started: bool,
    /// The request was `HEAD` (or similar): the response has no body whatever its headers say.
    no_body: bool,
}

impl ResponseParser {
    /// A parser for responses to requests whose responses carry bodies (`GET`, `POST`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Ready the parser for the next response on the same connection; keeps the head buffer's capacity.
    pub fn reset(&mut self) {
        self.head.clear();
        self.status = 0;
        self.keep_alive = false;
        self.body = None;
        self.body_started = false;
    }

    /// Treat every response as bodiless (answers to `HEAD`).
    pub fn set_no_body(&mut self, no_body: bool) {
        self.no_body = no_body;
    }

    /// Status code of the current response; 0 until its head has been parsed.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the connection may be reused after this response (HTTP/1.1 without `connection: close`,
    /// and a body that is not delimited by close).
    pub fn keep_alive(&self) -> bool {
        self.keep_alive && self.body != Some(Body::UntilClose)
    }

    /// Whether the head has been parsed and the body runs until EOF, so EOF completes the response.
    pub fn ends_at_close(&self) -> bool {
        self.body == Some(Body::UntilClose)
    }

    /// Consume bytes read from the socket. Stops at the end of the response; bytes after it are not consumed.
    pub fn feed(&mut self, input: &[u8]) -> Result<Progress, FramingError> {
        let mut progress = Progress::default();
        let mut rest = input;
        while self.body.is_none() {
            if rest.is_empty() {
                return Ok(progress);
            }
            let used = self.feed_head(rest)?;
            progress.consumed += used;
            rest = &rest[used..];
        }
        if !self.body_started {
            // A body that is empty by framing starts and ends at once.
            let empty = matches!(self.body, Some(Body::Length(0)));
            if !rest.is_empty() || empty {
                self.body_started = true;
                progress.body_started = true;
            }
        }
        let (used, complete) = self.feed_body(rest)?;
        progress.consumed += used;
        progress.complete = complete;
        Ok(progress)
    }

    /// Append head bytes up to and including the blank line; parse the head once it is whole.
    /// Returns how many input bytes were taken.
    fn feed_head(&mut self, input: &[u8]) -> Result<usize, FramingError> {
        // Resume the search three bytes back so a CRLFCRLF split across reads is still found.
        let search_from = self.head.len().saturating_sub(3);
        let before = self.head.len();
        let end = find_head_end(&self.head[search_from..], input);
        let take = match end {
            Some(end_in_input) => end_in_input,
            None => input.len(),
        };
        if before + take > MAX_HEAD_BYTES {
            return Err(FramingError::HeadTooLarge);
        }
        self.head.extend_from_slice(&input[..take]);
        if end.is_some() {
            self.parse_head()?;
        }
        Ok(take)
    }

    fn parse_head(&mut self) -> Result<(), FramingError> {
        let mut head = std::mem::take(&mut self.head);
        let result = self.parse_head_bytes(&head);
        if self.body.is_none() {
            // Interim response: the final head starts after it.
            head.clear();
        }
        self.head = head;
        result
    }

    /// Parse a complete head. Leaves `body` unset for an interim (1xx) response.
    fn parse_head_bytes(&mut self, head: &[u8]) -> Result<(), FramingError> {
        let mut lines = head.split(|&b| b == b'\n').map(trim_cr);
        let status_line = lines.next().ok_or(FramingError::BadStatusLine)?;
        let (http11, status) = parse_status_line(status_line)?;
        let mut keep_alive = http11;
        let mut length = None;
        let mut chunked = false;
        for line in lines {
            if line.is_empty() {
                break;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
            if name.eq_ignore_ascii_case(b"content-length") {
                let parsed =
                    parse_decimal(value).ok_or(FramingError::BadHeader("content-length"))?;
                if length.is_some_and(|prior| prior != parsed) {
                    return Err(FramingError::BadHeader("content-length"));
                }
                length = Some(parsed);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = last_token(value).eq_ignore_ascii_case(b"chunked");
            } else if name.eq_ignore_ascii_case(b"connection") {
                for token in value.split(|&b| b == b',').map(trim) {
                    if token.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    }
                }
            }
        }
        if (100..200).contains(&status) {
            // Interim response (100 Continue, 103 Early Hints): skip it and wait for the final one.
            return Ok(());
        }
        self.status = status;
        self.keep_alive = keep_alive;
        self.body = Some(if self.no_body || status == 204 || status == 304 {
            Body::Length(0)
        } else if chunked {
            Body::Chunked(Chunk::Size {
                value: 0,
                digits: 0,
            })
        } else if let Some(length) = length {
            Body::Length(length)
        } else {
            Body::UntilClose
        });
        Ok(())
    }

    /// Advance body framing. Returns (bytes consumed, response complete).
    fn feed_body(&mut self, input: &[u8]) -> Result<(usize, bool), FramingError> {
        match self.body {
            Some(Body::Length(left)) => {
                let take = left.min(input.len() as u64);
                let left = left - take;
                self.body = Some(Body::Length(left));
                Ok((take as usize, left == 0))
            }
            Some(Body::UntilClose) => Ok((input.len(), false)),
            Some(Body::Chunked(state)) => {
                let (used, state, complete) = advance_chunked(state, input)?;
                self.body = Some(Body::Chunked(state));
                Ok((used, complete))
            }
            None => Ok((0, false)),
        }
    }
}

/// Walk chunked framing over `input`. Returns (bytes consumed, new state, message complete).
fn advance_chunked(mut state: Chunk, input: &[u8]) -> Result<(usize, Chunk, bool), FramingError> {
    let mut i = 0;
    while i < input.len() {
        let byte = input[i];
        state = match state {
            Chunk::Data(left) => {
                let take = left.min((input.len() - i) as u64);
                i += take as usize;
                let left = left - take;
                if left == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left)
                }
            }
            Chunk::Size { value, digits } => {
                i += 1;
                match hex_value(byte) {
                    Some(v) => {
                        if digits >= 15 {
                            return Err(FramingError::BadChunk);
                        }
                        Chunk::Size {
                            value: value << 4 | u64::from(v),
                            digits: digits + 1,
                        }
                    }
                    None if digits == 0 => return Err(FramingError::BadChunk),
                    None if byte == b'\n' => after_size(value),
                    None if matches!(byte, b'\r' | b';' | b' ' | b'\t') => Chunk::SizeExt { value },
                    None => return Err(FramingError::BadChunk),
                }
            }
            Chunk::SizeExt { value } => {
                i += 1;
                if byte == b'\n' {
                    after_size(value)
                } else {
                    Chunk::SizeExt { value }
                }
            }
            Chunk::DataCr => {
                i += 1;
                match byte {
                    b'\r' => Chunk::DataLf,
                    b'\n' => Chunk::Size {
                        value: 0,
                        digits: 0,
                    },
                    _ => return Err(FramingError::BadChunk),
                }
            }
            Chunk::DataLf => {
                i += 1;
                if byte != b'\n' {
                    return Err(FramingError::BadChunk);
                }
                Chunk::Size {
                    value: 0,
                    digits: 0,
                }
            }
            Chunk::TrailerStart => {
                i += 1;
                match byte {
                    b'\n' => return Ok((i, Chunk::TrailerStart, true)),
                    b'\r' => Chunk::TrailerEndLf,
                    _ => Chunk::TrailerLine,
                }
            }
            Chunk::TrailerEndLf => {
                i += 1;
                if byte != b'\n' {
                    return Err(FramingError::BadChunk);
                }
                return Ok((i, Chunk::TrailerStart, true));
            }
            Chunk::TrailerLine => {
                i += 1;
                if byte == b'\n' {
                    Chunk::TrailerStart
                } else {
                    Chunk::TrailerLine
                }
            }
        };
    }
    Ok((i, state, false))
}

fn after_size(value: u64) -> Chunk {
    if value == 0 {
        Chunk::TrailerStart
    } else {
        Chunk::Data(value)
    }
}

/// Position just past CRLFCRLF (or LFLF) in `tail ++ input`, counted in `input`, if the head ends there.
/// `tail` is the last few bytes already buffered, so a terminator split across reads is found.
fn find_head_end(tail: &[u8], input: &[u8]) -> Option<usize> {
    let mut window = [0u8; 4];
    let mut filled = 0;
    for &b in tail {
        push_window(&mut window, &mut filled, b);
    }
    for (i, &b) in input.iter().enumerate() {
        push_window(&mut window, &mut filled, b);
        let ends_crlf = filled >= 4 && window == *b"\r\n\r\n";
        let ends_lf = filled >= 2 && window[2..] == *b"\n\n";
        if ends_crlf || ends_lf {
            return Some(i + 1);
        }
    }
    None
}

fn push_window(window: &mut [u8; 4], filled: &mut usize, byte: u8) {
    window.copy_within(1.., 0);
    window[3] = byte;
    *filled = (*filled + 1).min(4);
}

/// `HTTP/1.1 200 OK` → (is HTTP/1.1 or later, 200).
fn parse_status_line(line: &[u8]) -> Result<(bool, u16), FramingError> {
    let rest = line
        .strip_prefix(b"HTTP/1.")
        .ok_or(FramingError::BadStatusLine)?;
    let (&minor, rest) = rest.split_first().ok_or(FramingError::BadStatusLine)?;
    let code = rest.strip_prefix(b" ").ok_or(FramingError::BadStatusLine)?;
    if code.len() < 3 || !code[..3].iter().all(u8::is_ascii_digit) {
        return Err(FramingError::BadStatusLine);
    }
    if code.len() > 3 && code[3] != b' ' {
        return Err(FramingError::BadStatusLine);
    }
    let status = code[..3]
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    Ok((minor != b'0', status))
}

fn parse_decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + u64::from(d - b'0'))
    })
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The last comma-separated token of a header value (`gzip, chunked` → `chunked`).
fn last_token(value: &[u8]) -> &[u8] {
    value
        .rsplit(|&b| b == b',')
        .next()
        .map(trim)
        .unwrap_or_default()
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` in pieces of `step` bytes; return (status, keep-alive, consumed, index of the piece where
    /// the body started, complete).
    fn feed_in_steps(input: &[u8], step: usize) -> (u16, bool, usize, Option<usize>, bool) {
        let mut parser = ResponseParser::new();
        let mut consumed = 0;
        let mut started_at = None;
        for (n, piece) in input.chunks(step).enumerate() {
            let progress = parser.feed(piece).expect("valid framing");
            consumed += progress.consumed;
            if progress.body_started && started_at.is_none() {
                started_at = Some(n);
            }
            if progress.complete {
                return (
                    parser.status(),
                    parser.keep_alive(),
                    consumed,
                    started_at,
                    true,
                );
            }
        }
        (
            parser.status(),
            parser.keep_alive(),
            consumed,
            started_at,
            false,
        )
    }

    #[test]
    fn content_length_whole_and_byte_by_byte() {
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello";
        for step in [1, 2, 3, 7, resp.len()] {
            let (status, keep, consumed, _, complete) = feed_in_steps(resp, step);
            assert_eq!(
                (status, keep, consumed, complete),
                (200, true, resp.len(), true),
                "step {step}"
            );
        }
    }

    #[test]
    fn stops_at_end_of_response() {
        let mut parser = ResponseParser::new();
        let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA";
        let progress = parser.feed(resp).expect("valid");
        assert!(progress.complete);
        assert_eq!(progress.consumed, resp.len() - 5);
    }

    #[test]
    fn body_start_is_reported_with_first_body_byte_not_head() {
        let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".as_slice();
        let mut parser = ResponseParser::new();
        let progress = parser.feed(head).expect("valid");
        assert!(!progress.body_started && !progress.complete);
        let progress = parser.feed(b"6\r\ndata: ").expect("valid");
        assert!(progress.body_started && !progress.complete);
        let progress = parser.feed(b"\r\n0\r\n\r\n").expect("valid");
        assert!(!progress.body_started && progress.complete);
    }

    #[test]
    fn chunked_sse_stream_in_any_split() {
        let resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n\
            f\r\ndata: {\"a\":1}\n\n\r\n\
            10;ext=1\r\ndata: [DONE]\n\n\n\n\r\n\
            0\r\n\r\n";
        for step in 1..=resp.len() {
            let (status, keep, consumed, started, complete) = feed_in_steps(resp, step);
            assert_eq!(
                (status, keep, consumed, complete),
                (200, true, resp.len(), true),
                "step {step}"
            );
            assert!(started.is_some());
        }
    }

    #[test]
    fn chunked_with_trailers() {
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n";
        let (_, _, consumed, _, complete) = feed_in_steps(resp, 1);
        assert_eq!((consumed, complete), (resp.len(), true));
    }

    #[test]
    fn connection_close_and_http10() {
        let close = b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        let (status, keep, _, started, complete) = feed_in_steps(close, 4);
        assert_eq!((status, keep, complete), (503, false, true));
        assert!(started.is_some(), "an empty body starts when the head ends");
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx";
        assert!(!feed_in_steps(old, 100).1);
        let old_ka = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx";
        assert!(feed_in_steps(old_ka, 100).1);
    }

    #[test]
    fn body_until_close_never_completes_by_itself() {
        let mut parser = ResponseParser::new();
        let progress = parser
            .feed(b"HTTP/1.1 200 OK\r\n\r\nsome body")
            .expect("valid");
        assert!(!progress.complete && progress.body_started);
        assert!(parser.ends_at_close() && !parser.keep_alive());
    }

    #[test]
    fn interim_response_is_skipped() {
        let resp =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
        let (status, _, consumed, _, complete) = feed_in_steps(resp, 5);
        assert_eq!((status, consumed, complete), (201, resp.len(), true));
    }

    #[test]
    fn no_body_statuses_and_head_requests() {
        let resp = b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n";
        assert!(feed_in_steps(resp, 100).4);
        let mut parser = ResponseParser::new();
        parser.set_no_body(true);
        let progress = parser
            .feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
            .expect("valid");
        assert!(progress.complete);
    }

    #[test]
    fn reset_allows_next_response() {
        let mut parser = ResponseParser::new();
        let one = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na";
        assert!(parser.feed(one).expect("valid").complete);
        parser.reset();
        let two = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nab";
        assert!(parser.feed(two).expect("valid").complete);
        assert_eq!(parser.status(), 404);
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let cases: [&[u8]; 5] = [
            b"HTTX/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ];
        for case in cases {
            assert!(
                ResponseParser::new().feed(case).is_err(),
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn oversized_head_is_rejected() {
        let mut parser = ResponseParser::new();
        let mut result = Ok(Progress::default());
        let filler = vec![b'a'; 4096];
        for _ in 0..20 {
            result = parser.feed(&filler);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(FramingError::HeadTooLarge));
    }

    #[test]
    fn head_end_split_across_reads() {
        let mut parser = ResponseParser::new();
        assert!(
            !parser
                .feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r")
                .expect("valid")
                .complete
        );
        assert!(parser.feed(b"\n").expect("valid").complete);
    }
}
