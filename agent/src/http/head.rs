//! The one writer of response heads to clients: relayed provider responses (`relay`,
//! `passthrough`) and Tollgate's own (`ClientConn::respond`). It decides the framing headers from
//! how the client's copy of the body is framed, which may differ from the provider's (a chunked
//! provider body to an HTTP/1.0 client is close-delimited), so the three writers cannot disagree.
//! Hot path: one allocation per response head.

/// How the client's copy of a body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBody {
    /// `content-length: N`.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// No framing header: the body ends when the connection closes (HTTP/1.0 clients), or a
    /// response to HEAD whose provider framing headers were passed on as they were.
    Unframed,
}

/// Builds a response head: status line, headers, framing, `connection`, blank line.
pub struct HeadWriter {
    out: Vec<u8>,
}

impl HeadWriter {
    /// Starts a head with `status` and its reason phrase; `capacity` sizes the buffer.
    pub fn new(status: u16, capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity.max(128));
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        out.push(b' ');
        out.extend_from_slice(reason(status).as_bytes());
        out.extend_from_slice(b"\r\n");
        HeadWriter { out }
    }

    /// Header lines already rendered as `Name: value\r\n` (a provider's end-to-end headers).
    pub fn lines(&mut self, rendered: &[u8]) {
        self.out.extend_from_slice(rendered);
    }

    /// One header.
    pub fn header(&mut self, name: &str, value: &[u8]) {
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value);
        self.out.extend_from_slice(b"\r\n");
    }

    /// Adds the framing and `connection: close` (when the connection ends after this response)
    /// and the blank line.
    pub fn finish(mut self, body: ClientBody, keep_alive: bool) -> Vec<u8> {
        match body {
            ClientBody::Length(n) => {
                self.out.extend_from_slice(b"content-length: ");
                self.out
                    .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                self.out.extend_from_slice(b"\r\n");
            }
            ClientBody::Chunked => self
                .out
                .extend_from_slice(b"transfer-encoding: chunked\r\n"),
            ClientBody::Unframed => {}
        }
        if !keep_alive {
            self.out.extend_from_slice(b"connection: close\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        self.out
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
        402 => "Payment Required",
        406 => "Not Acceptable",
        409 => "Conflict",
        410 => "Gone",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        501 => "Not Implemented",
        504 => "Gateway Timeout",
        529 => "Overloaded",
        // The reason phrase is informational (RFC 9112 4); an unknown code gets its class name.
        _ => match status / 100 {
            1 => "Informational",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Unknown",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_carry_their_framing() {
        let mut h = HeadWriter::new(200, 0);
        h.lines(b"x-provider: a\r\n");
        h.header("x-tollgate-request-id", b"tg-1");
        assert_eq!(
            h.finish(ClientBody::Length(12), true),
            b"HTTP/1.1 200 OK\r\nx-provider: a\r\nx-tollgate-request-id: tg-1\r\ncontent-length: 12\r\n\r\n"
        );
        let h = HeadWriter::new(599, 0);
        assert_eq!(
            h.finish(ClientBody::Chunked, false),
            b"HTTP/1.1 599 Server Error\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
    }
}
