//! HTTP/1.1 for the data plane: heads are parsed with httparse; bodies are framed here
//! (content-length, chunked, close-delimited) so payload bytes move as `Bytes` slices of the
//! read buffer and are never re-encoded. Hot path.

pub mod chunked;
pub mod head;
pub mod idle;
pub mod iovec;
pub mod request;
pub mod response;

use thiserror::Error;

/// What can go wrong reading HTTP from a peer.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("request head is larger than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("request has more than {limit} headers")]
    TooManyHeaders { limit: usize },
    #[error("malformed HTTP: {0}")]
    Malformed(&'static str),
    #[error("invalid chunked encoding: {0}")]
    BadChunk(&'static str),
}

/// Finds the end of a head (`\r\n\r\n`), searching from `from` (to avoid rescanning).
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    // Built once: `memmem::find` builds a searcher per call, which a worker's profile named.
    static HEAD_END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    let start = from.saturating_sub(3);
    HEAD_END.find(&buf[start..]).map(|i| start + i + 4)
}

/// True for headers that describe one connection hop and must not be forwarded.
/// Chosen by length first: a name is compared with at most two of them (~740 instructions
/// per request went to trying all nine on each header, callgrind).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    let is = |h: &[u8]| name.eq_ignore_ascii_case(h);
    match name.len() {
        2 => is(b"te"),
        7 => is(b"upgrade") || is(b"trailer"),
        10 => is(b"connection") || is(b"keep-alive"),
        14 => is(b"content-length"),
        16 => is(b"proxy-connection"),
        17 => is(b"transfer-encoding"),
        19 => is(b"proxy-authorization"),
        _ => false,
    }
}

/// Parses a decimal Content-Length value strictly (digits only).
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// True when a comma-separated header value contains `token` (case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The length switch says what a scan of the nine names says, in any case.
    #[test]
    fn hop_by_hop_names_by_length_match_the_list() {
        const HOP: [&str; 9] = [
            "connection",
            "keep-alive",
            "transfer-encoding",
            "content-length",
            "upgrade",
            "te",
            "trailer",
            "proxy-connection",
            "proxy-authorization",
        ];
        let mut names: Vec<String> = HOP.iter().map(|h| h.to_string()).collect();
        names.extend(HOP.iter().map(|h| h.to_ascii_uppercase()));
        names.extend(HOP.iter().map(|h| format!("{h}x")));
        names.extend(HOP.iter().map(|h| h[1..].to_string()));
        names.extend(
            [
                "content-type",
                "x-request-id",
                "authorization",
                "t",
                "",
                "date",
            ]
            .map(String::from),
        );
        for n in names {
            let listed = HOP.iter().any(|h| h.eq_ignore_ascii_case(&n));
            assert_eq!(is_hop_by_hop(n.as_bytes()), listed, "{n}");
        }
    }

    #[test]
    fn head_end_across_reads() {
        let buf = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest";
        assert_eq!(find_head_end(buf, 0), Some(27));
        assert_eq!(find_head_end(buf, 25), Some(27));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n", 0), None);
    }

    #[test]
    fn content_length_is_strict() {
        assert_eq!(parse_content_length(b" 42 "), Some(42));
        assert_eq!(parse_content_length(b"-1"), None);
        assert_eq!(parse_content_length(b"4 2"), None);
        assert_eq!(parse_content_length(b"99999999999999999999"), None);
    }

    #[test]
    fn tokens() {
        assert!(has_token(b"keep-alive, Close", b"close"));
        assert!(!has_token(b"closed", b"close"));
    }
}
