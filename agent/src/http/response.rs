//! Provider response heads: status, framing and the headers worth passing on to the client.

use bytes::Bytes;

use super::{has_token, is_hop_by_hop, parse_content_length, HttpError};

/// How the response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the provider closes the connection.
    UntilClose,
}

#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    pub framing: ResponseFraming,
    pub keep_alive: bool,
    pub event_stream: bool,
    /// End-to-end headers to pass to the client, already rendered as `Name: value\r\n` lines.
    pub passthrough: Bytes,
}

impl ResponseHead {
    /// The value of the first passed-through header called `name` (lower case), trimmed.
    pub fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.passthrough.split(|b| *b == b'\n').find_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            line[..colon]
                .eq_ignore_ascii_case(name)
                .then(|| line[colon + 1..].trim_ascii())
        })
    }

    /// Parses a complete response head (`raw` ends where `find_head_end` found `CRLF CRLF`).
    /// As for requests, a bare LF is refused and httparse must end the head exactly there, so
    /// the body boundary on a pooled connection cannot be read two ways.
    pub fn parse(raw: &[u8]) -> Result<ResponseHead, HttpError> {
        if memchr::memchr_iter(b'\n', raw).any(|i| i == 0 || raw[i - 1] != b'\r') {
            return Err(HttpError::Malformed("bare LF in the response head"));
        }
        // Uninitialised: filling 128 empty headers (4 KiB) cost ~480 instructions a response.
        let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
        let mut resp = httparse::Response::new(&mut []);
        match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            raw,
            &mut storage,
        ) {
            Ok(httparse::Status::Complete(n)) if n == raw.len() => {}
            Ok(httparse::Status::Complete(_)) => {
                return Err(HttpError::Malformed("the response head ends early"))
            }
            Ok(httparse::Status::Partial) => {
                return Err(HttpError::Malformed("incomplete response head"))
            }
            Err(_) => return Err(HttpError::Malformed("invalid response head")),
        }
        let status = resp.code.ok_or(HttpError::Malformed("no status code"))?;
        let mut length = None;
        let mut chunked = false;
        let mut keep_alive = resp.version == Some(1);
        let mut event_stream = false;
        let mut passthrough = Vec::with_capacity(256);
        for h in resp.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = parse_content_length(h.value)
                    .ok_or(HttpError::Malformed("invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(HttpError::Malformed("conflicting Content-Length headers"));
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                // Several Transfer-Encoding lines form one list: any of them saying chunked
                // frames the body (the last line alone must not decide; found by fuzzing).
                chunked |= has_token(h.value, b"chunked");
            } else if name.eq_ignore_ascii_case(b"connection") {
                if has_token(h.value, b"close") {
                    keep_alive = false;
                } else if has_token(h.value, b"keep-alive") {
                    keep_alive = true;
                }
            } else if name.eq_ignore_ascii_case(b"content-type") {
                event_stream =
                    h.value.len() >= 17 && h.value[..17].eq_ignore_ascii_case(b"text/event-stream");
            }
            if !is_hop_by_hop(name)
                && !name.eq_ignore_ascii_case(b"date")
                && !name.eq_ignore_ascii_case(b"server")
            {
                passthrough.extend_from_slice(name);
                passthrough.extend_from_slice(b": ");
                passthrough.extend_from_slice(h.value);
                passthrough.extend_from_slice(b"\r\n");
            }
        }
        let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
            ResponseFraming::Empty
        } else if chunked {
            // With Content-Length too, chunked wins (RFC 9112 6.3), but the connection is not
            // trusted with another response.
            if length.is_some() {
                keep_alive = false;
            }
            ResponseFraming::Chunked
        } else if let Some(n) = length {
            ResponseFraming::Length(n)
        } else {
            keep_alive = false;
            ResponseFraming::UntilClose
        };
        Ok(ResponseHead {
            status,
            framing,
            keep_alive,
            event_stream,
            passthrough: Bytes::from(passthrough),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_chunked_response() {
        let h = ResponseHead::parse(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\nx-request-id: abc\r\nDate: x\r\n\r\n").unwrap();
        assert_eq!(h.status, 200);
        assert!(h.event_stream);
        assert_eq!(h.framing, ResponseFraming::Chunked);
        assert!(h.keep_alive);
        assert_eq!(
            &h.passthrough[..],
            b"content-type: text/event-stream; charset=utf-8\r\nx-request-id: abc\r\n"
        );
    }

    #[test]
    fn transfer_encoding_lines_add_up() {
        let h = ResponseHead::parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
        )
        .unwrap();
        assert_eq!(h.framing, ResponseFraming::Chunked);
    }

    #[test]
    fn close_delimited_and_empty() {
        let h = ResponseHead::parse(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert_eq!(h.framing, ResponseFraming::UntilClose);
        assert!(!h.keep_alive);
        let h =
            ResponseHead::parse(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(h.framing, ResponseFraming::Empty);
    }
}
