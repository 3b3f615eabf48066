//! Client request heads: parsed once with httparse into offsets over the head's own `Bytes`,
//! so header lookups borrow and nothing is copied per header.

use std::ops::Range;

use bytes::Bytes;

use super::{has_token, parse_content_length, HttpError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Other,
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    raw: Bytes,
    pub method: Method,
    path: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    headers: Vec<(Range<usize>, Range<usize>)>,
    pub framing: BodyFraming,
    pub keep_alive: bool,
    pub expect_continue: bool,
}

fn range_in(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    start..start + part.len()
}

/// Header slots parsed into on the stack (a `Header` is 32 bytes): a 3.2 KB heap array per
/// request was one of the allocations a worker's profile named.
const STACK_HEADERS: usize = 32;

impl RequestHead {
    /// Parses a complete head (`raw` ends with the blank line, as `find_head_end` found it).
    ///
    /// The reader finds the end of a head by `CRLF CRLF`, while httparse also accepts a bare LF
    /// as a line end; a head where the two would disagree (`Host: x\n\r\n...`) could hide a
    /// second request inside the first one's headers. So a bare LF is refused, and httparse
    /// must end the head exactly where the reader did.
    pub fn parse(raw: Bytes, max_headers: usize) -> Result<RequestHead, HttpError> {
        if memchr::memchr_iter(b'\n', &raw).any(|i| i == 0 || raw[i - 1] != b'\r') {
            return Err(HttpError::Malformed("bare LF in the request head"));
        }
        // Most heads fit the stack array; only a longer one is parsed again into the heap.
        let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
        if max_headers <= STACK_HEADERS {
            return Self::parse_into(&raw, &mut stack[..max_headers], max_headers);
        }
        match Self::parse_into(&raw, &mut stack, max_headers) {
            Err(HttpError::TooManyHeaders { .. }) => {
                let mut heap = vec![httparse::EMPTY_HEADER; max_headers];
                Self::parse_into(&raw, &mut heap, max_headers)
            }
            parsed => parsed,
        }
    }

    fn parse_into<'r>(
        raw: &'r Bytes,
        storage: &mut [httparse::Header<'r>],
        max_headers: usize,
    ) -> Result<RequestHead, HttpError> {
        let mut req = httparse::Request::new(storage);
        match req.parse(raw) {
            Ok(httparse::Status::Complete(n)) if n == raw.len() => {}
            Ok(httparse::Status::Complete(_)) => {
                return Err(HttpError::Malformed("the request head ends early"))
            }
            Ok(httparse::Status::Partial) => return Err(HttpError::Malformed("incomplete head")),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HttpError::TooManyHeaders { limit: max_headers })
            }
            Err(_) => return Err(HttpError::Malformed("invalid request line or header")),
        }
        let method = match req.method {
            Some("GET") => Method::Get,
            Some("HEAD") => Method::Head,
            Some("POST") => Method::Post,
            _ => Method::Other,
        };
        let path = range_in(raw, req.path.unwrap_or("/").as_bytes());
        let minor_version = req.version.unwrap_or(1);
        let mut headers = Vec::with_capacity(req.headers.len());
        let mut content_length: Option<u64> = None;
        let mut chunked = false;
        let mut conn_close = minor_version == 0;
        let mut expect_continue = false;
        for h in req.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = parse_content_length(h.value)
                    .ok_or(HttpError::Malformed("invalid Content-Length"))?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(HttpError::Malformed("conflicting Content-Length headers"));
                }
                content_length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                if !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(HttpError::Malformed("unsupported Transfer-Encoding"));
                }
                chunked = true;
            } else if name.eq_ignore_ascii_case(b"connection") {
                if has_token(h.value, b"close") {
                    conn_close = true;
                } else if has_token(h.value, b"keep-alive") {
                    conn_close = false;
                }
            } else if name.eq_ignore_ascii_case(b"expect") {
                expect_continue = has_token(h.value, b"100-continue");
            }
            headers.push((range_in(raw, name), range_in(raw, h.value)));
        }
        // RFC 9112 6.3: both present is a smuggling vector; refuse it.
        let framing = match (chunked, content_length) {
            (true, Some(_)) => {
                return Err(HttpError::Malformed(
                    "both Content-Length and Transfer-Encoding",
                ))
            }
            (true, None) => BodyFraming::Chunked,
            (false, Some(n)) => BodyFraming::Length(n),
            (false, None) => BodyFraming::None,
        };
        Ok(RequestHead {
            method,
            path,
            minor_version,
            headers,
            framing,
            keep_alive: !conn_close,
            expect_continue,
            raw: raw.clone(),
        })
    }

    /// The request target without its query string.
    pub fn path(&self) -> &str {
        let p = &self.raw[self.path.clone()];
        let p = p.split(|b| *b == b'?').next().unwrap_or(p);
        // httparse only accepts visible ASCII in the target.
        std::str::from_utf8(p).unwrap_or("/")
    }

    /// The method token as sent (`GET`, `DELETE`, ...).
    pub fn method_bytes(&self) -> &[u8] {
        let end = self
            .raw
            .iter()
            .position(|b| *b == b' ')
            .unwrap_or(self.raw.len());
        &self.raw[..end]
    }

    /// The request target as sent, query string included.
    pub fn target(&self) -> &[u8] {
        &self.raw[self.path.clone()]
    }

    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| self.raw[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &self.raw[v.clone()])
    }

    /// First value of header `name` as UTF-8 text.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// How many header lines the head has.
    pub fn header_count(&self) -> usize {
        self.headers.len()
    }

    /// All headers in order, as (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (&self.raw[n.clone()], &self.raw[v.clone()]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<RequestHead, HttpError> {
        RequestHead::parse(Bytes::copy_from_slice(s.as_bytes()), 16)
    }

    #[test]
    fn parses_post_with_length() {
        let h = parse("POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nX-Tollgate-Team: ml\r\n\r\n").unwrap();
        assert_eq!(h.method, Method::Post);
        assert_eq!(h.path(), "/v1/chat/completions");
        assert_eq!(h.framing, BodyFraming::Length(12));
        assert!(h.keep_alive);
        assert_eq!(h.header_str("x-tollgate-team"), Some("ml"));
    }

    #[test]
    fn http10_closes_and_chunked_is_recognised() {
        let h = parse("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        assert_eq!(h.framing, BodyFraming::Chunked);
    }

    #[test]
    fn rejects_smuggling_and_garbage() {
        assert!(parse(
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .is_err());
        assert!(
            parse("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err()
        );
        assert!(parse("\x01\x02 nonsense\r\n\r\n").is_err());
        // A bare LF before CRLF would end the head early for httparse but not for the reader.
        assert_eq!(
            parse("POST / HTTP/1.1\r\nHost: x\n\r\nContent-Length: 5\r\n\r\n").unwrap_err(),
            HttpError::Malformed("bare LF in the request head")
        );
        assert!(parse("GET / HTTP/1.1\nHost: x\r\n\r\n").is_err());
        let many: String = (0..20).map(|i| format!("H{i}: v\r\n")).collect();
        assert_eq!(
            parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err(),
            HttpError::TooManyHeaders { limit: 16 }
        );
    }

    /// Heads past the stack array are parsed again on the heap, up to the configured limit.
    #[test]
    fn header_limits_beyond_the_stack_array() {
        let head = |n: usize| {
            let lines: String = (0..n).map(|i| format!("H{i}: v{i}\r\n")).collect();
            Bytes::from(format!("GET / HTTP/1.1\r\n{lines}\r\n"))
        };
        for limit in [STACK_HEADERS - 1, STACK_HEADERS, STACK_HEADERS + 1, 100] {
            let fits = RequestHead::parse(head(limit), limit).unwrap();
            assert_eq!(fits.headers().count(), limit);
            let last = fits.headers().last().unwrap();
            assert_eq!(last.1, format!("v{}", limit - 1).as_bytes());
            assert_eq!(
                RequestHead::parse(head(limit + 1), limit).unwrap_err(),
                HttpError::TooManyHeaders { limit }
            );
        }
    }
}
