//! A deliberately small HTTP/1.1 client over `std::net::TcpStream`.
//!
//! Tests need what ordinary clients hide: several requests in one write (pipelining), chunked
//! request bodies, half-sent heads, malformed bytes, reading a stream frame by frame and then
//! dropping the socket, and telling a clean end of a chunked body from a cut connection. So the
//! client writes exactly the bytes it is given and decodes responses itself (content-length,
//! chunked, or until close).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// Longest a test waits for any single read.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// A response head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// First value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `x-tollgate-request-id`, which every proxied response must carry.
    pub fn request_id(&self) -> &str {
        self.header("x-tollgate-request-id").unwrap_or_else(|| {
            panic!(
                "response {} has no x-tollgate-request-id: {:?}",
                self.status, self.headers
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response {} body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    /// The body split into SSE frames, each with its `\n\n` terminator.
    pub fn frames(&self) -> Vec<String> {
        split_frames(&self.text())
    }
}

/// Splits an SSE body into frames, each keeping its `\n\n`; a trailing partial frame is kept too.
pub fn split_frames(body: &str) -> Vec<String> {
    let mut frames = Vec::new();
    let mut rest = body;
    while let Some(end) = rest.find("\n\n") {
        frames.push(rest[..end + 2].to_string());
        rest = &rest[end + 2..];
    }
    if !rest.is_empty() {
        frames.push(rest.to_string());
    }
    frames
}

/// The JSON of a frame's `data:` line; `None` for `[DONE]` or a frame without data.
pub fn frame_data(frame: &str) -> Option<Value> {
    let data = frame.lines().find_map(|l| l.strip_prefix("data: "))?;
    if data == "[DONE]" {
        return None;
    }
    Some(
        serde_json::from_str(data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {frame:?}")),
    )
}

/// The text of a chat-completions stream: every `choices[0].delta.content`, in order.
pub fn chat_stream_text(frames: &[String]) -> String {
    frames
        .iter()
        .filter_map(|f| frame_data(f))
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

/// The `event:` name of a frame, if any.
pub fn frame_event(frame: &str) -> Option<&str> {
    frame.lines().find_map(|l| l.strip_prefix("event: "))
}

/// How the body of the response being read is framed, and how much of it is left.
#[derive(Debug)]
enum Framing {
    Length(u64),
    /// `Some(n)`: n bytes left in the current chunk (then its CRLF); `None`: a size line is next.
    Chunked(Option<u64>),
    UntilClose,
    Done,
}

/// One connection to a server.
pub struct Client {
    stream: TcpStream,
    /// Received, not yet consumed.
    buf: Vec<u8>,
    framing: Framing,
    /// Decoded body bytes not yet returned as SSE frames.
    pending: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("set_read_timeout");
        stream.set_nodelay(true).expect("set_nodelay");
        Client {
            stream,
            buf: Vec::new(),
            framing: Framing::Done,
            pending: Vec::new(),
        }
    }

    /// Changes how long one read may block.
    pub fn set_read_timeout(&self, timeout: Duration) {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("set_read_timeout");
    }

    /// Opens a connection, POSTs a chat `body` asking for a stream, and reads the 200 head;
    /// returns the client (positioned at the first frame) and the request id.
    pub fn start_stream(addr: SocketAddr, body: &Value) -> (Client, String) {
        let mut client = Client::connect(addr);
        client
            .send(&request_bytes(
                "POST",
                "/v1/chat/completions",
                &[("content-type", "application/json")],
                body.to_string().as_bytes(),
            ))
            .expect("sending the stream request");
        let head = client.read_head().expect("the stream's head");
        assert_eq!(head.status, 200, "the stream did not start");
        let id = head
            .header("x-tollgate-request-id")
            .expect("x-tollgate-request-id")
            .to_string();
        (client, id)
    }

    /// Writes exactly these bytes.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Sends one request and reads its response; panics (with the path) on I/O errors.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.send(&request_bytes(method, path, headers, body))
            .unwrap_or_else(|e| panic!("sending {method} {path}: {e}"));
        self.read_response()
            .unwrap_or_else(|e| panic!("reading the response to {method} {path}: {e}"))
    }

    /// Sends a JSON body to `/v1/chat/completions` on this connection and reads the response.
    pub fn post_chat(&mut self, body: &Value) -> Response {
        self.request(
            "POST",
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// Reads more bytes into the buffer; `Ok(0)` at end of stream.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Takes everything up to and including `delimiter` from the buffer, reading as needed.
    fn take_through(&mut self, delimiter: &[u8]) -> io::Result<Vec<u8>> {
        let mut searched = 0;
        loop {
            if let Some(pos) = find(&self.buf[searched..], delimiter) {
                let end = searched + pos + delimiter.len();
                return Ok(self.buf.drain(..end).collect());
            }
            searched = self.buf.len().saturating_sub(delimiter.len());
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed while waiting for {:?} (have {:?})",
                        String::from_utf8_lossy(delimiter),
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
    }

    /// Takes exactly `n` bytes from the buffer, reading as needed.
    fn take_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed with {} of {n} bytes", self.buf.len()),
                ));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads a response head and prepares to read its body.
    pub fn read_head(&mut self) -> io::Result<Head> {
        let raw = self.take_through(b"\r\n\r\n")?;
        let text = String::from_utf8_lossy(&raw);
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let status = parts.next().and_then(|s| s.parse().ok());
        let Some(status) = status.filter(|_| version.starts_with("HTTP/1.")) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            ));
        };
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let head = Head { status, headers };
        let chunked = head
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
        self.framing = if chunked {
            Framing::Chunked(None)
        } else if let Some(len) = head.header("content-length") {
            let len: u64 = len.parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("content-length {len:?}"),
                )
            })?;
            if len == 0 {
                Framing::Done
            } else {
                Framing::Length(len)
            }
        } else if status == 204 || status == 304 || (100..200).contains(&status) {
            Framing::Done
        } else {
            Framing::UntilClose
        };
        self.pending.clear();
        Ok(head)
    }

    /// The next decoded piece of the body; `Ok(None)` once the body ended as framed. A connection
    /// that closes inside a length- or chunk-framed body is an `UnexpectedEof` error.
    pub fn read_body_piece(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            match self.framing {
                Framing::Done => return Ok(None),
                Framing::Length(left) => {
                    if self.buf.is_empty() && self.fill()? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("connection closed with {left} body bytes to go"),
                        ));
                    }
                    let n = (left as usize).min(self.buf.len());
                    let piece: Vec<u8> = self.buf.drain(..n).collect();
                    self.framing = match left - n as u64 {
                        0 => Framing::Done,
                        rest => Framing::Length(rest),
                    };
                    return Ok(Some(piece));
                }
                Framing::UntilClose => {
                    if self.buf.is_empty() && self.fill()? == 0 {
                        self.framing = Framing::Done;
                        return Ok(None);
                    }
                    return Ok(Some(std::mem::take(&mut self.buf)));
                }
                Framing::Chunked(None) => {
                    let line = self.take_through(b"\r\n")?;
                    let line = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
                    let size = line.split(';').next().unwrap_or_default().trim();
                    let size = u64::from_str_radix(size, 16).map_err(|_| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("chunk size {line:?}"))
                    })?;
                    if size == 0 {
                        // Trailers (none expected) end with an empty line.
                        loop {
                            let trailer = self.take_through(b"\r\n")?;
                            if trailer == b"\r\n" {
                                break;
                            }
                        }
                        self.framing = Framing::Done;
                        return Ok(None);
                    }
                    self.framing = Framing::Chunked(Some(size));
                }
                Framing::Chunked(Some(left)) => {
                    if self.buf.is_empty() && self.fill()? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("connection closed inside a chunk ({left} bytes to go)"),
                        ));
                    }
                    let n = (left as usize).min(self.buf.len());
                    let piece: Vec<u8> = self.buf.drain(..n).collect();
                    if left == n as u64 {
                        let crlf = self.take_exact(2)?;
                        if crlf != b"\r\n" {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("chunk not followed by CRLF: {crlf:?}"),
                            ));
                        }
                        self.framing = Framing::Chunked(None);
                    } else {
                        self.framing = Framing::Chunked(Some(left - n as u64));
                    }
                    return Ok(Some(piece));
                }
            }
        }
    }

    /// The rest of the body.
    pub fn read_body(&mut self) -> io::Result<Vec<u8>> {
        let mut body = std::mem::take(&mut self.pending);
        while let Some(piece) = self.read_body_piece()? {
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }

    pub fn read_response(&mut self) -> io::Result<Response> {
        let head = self.read_head()?;
        let body = self.read_body()?;
        Ok(Response {
            status: head.status,
            headers: head.headers,
            body,
        })
    }

    /// The next SSE frame of the body (with its `\n\n`); `Ok(None)` when the body ended cleanly
    /// (a trailing partial frame is returned first).
    pub fn next_frame(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(pos) = find(&self.pending, b"\n\n") {
                let frame: Vec<u8> = self.pending.drain(..pos + 2).collect();
                return Ok(Some(String::from_utf8_lossy(&frame).into_owned()));
            }
            match self.read_body_piece()? {
                Some(piece) => self.pending.extend_from_slice(&piece),
                None if self.pending.is_empty() => return Ok(None),
                None => {
                    let rest = std::mem::take(&mut self.pending);
                    return Ok(Some(String::from_utf8_lossy(&rest).into_owned()));
                }
            }
        }
    }

    /// Whether the server closed the connection (EOF or reset) with nothing more to read; waits up
    /// to the read timeout, and a timeout means still open.
    pub fn closed_by_peer(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        match self.fill() {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The bytes of a request: the given headers plus `host`, and `content-length` and
/// `content-type: application/json` for a body when the caller set neither framing nor type.
pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut out = format!("{method} {path} HTTP/1.1\r\nhost: tollgate-e2e\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if (method == "POST" || !body.is_empty()) && !has("content-length") && !has("transfer-encoding")
    {
        out.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    if !body.is_empty() && !has("content-type") {
        out.push_str("content-type: application/json\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// `GET path` on a new connection.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    Client::connect(addr).request("GET", path, &[("connection", "close")], b"")
}

/// `POST path` with a JSON body on a new connection.
pub fn post_json(addr: SocketAddr, path: &str, body: &Value) -> Response {
    post_raw(addr, path, &[], body.to_string().as_bytes())
}

/// A chat completion charged to `team` (`x-tollgate-team`), asserted to answer 200.
pub fn chat_as_team(addr: SocketAddr, team: &str, body: &Value) -> Response {
    let r = post_raw(
        addr,
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("x-tollgate-team", team),
        ],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

/// `POST path` with extra headers and raw body bytes on a new connection.
pub fn post_raw(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut all = vec![("connection", "close")];
    all.extend_from_slice(headers);
    Client::connect(addr).request("POST", path, &all, body)
}
