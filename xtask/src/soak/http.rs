//! A small blocking HTTP/1.1 client for the soak's traffic: enough to write a request at a chosen
//! pace, read one response (Content-Length, chunked or until close) at a chosen pace, and stop
//! reading part-way through a body. It parses only what the soak needs: the status, framing,
//! `connection` and `x-tollgate-request-id`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

/// Longest a single read or write may block (the agent's own upstream timeouts are shorter).
const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Body bytes kept (the end of the body) to check a stream's final event.
const TAIL: usize = 256;

/// How bytes move: all at once, or `chunk` bytes at a time with `pause` before each.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    Fast,
    Slow { chunk: usize, pause: Duration },
}

/// One response as far as it was read.
#[derive(Debug, Default)]
pub struct Response {
    pub status: u16,
    pub request_id: Option<String>,
    /// The server keeps the connection open after this response.
    pub keep_alive: bool,
    /// The body arrived to its end (last chunk, Content-Length, or close for unframed bodies).
    pub complete: bool,
    pub body_bytes: usize,
    /// The last [`TAIL`] bytes of the body.
    pub tail: Vec<u8>,
}

impl Response {
    fn keep(&mut self, bytes: &[u8]) {
        self.body_bytes += bytes.len();
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > TAIL {
            self.tail.drain(..self.tail.len() - TAIL);
        }
    }
}

/// How a response body ends.
enum Framing {
    Chunked,
    Length(usize),
    UntilClose,
}

/// A client connection with its read buffer.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
        })
    }

    pub fn send(&mut self, bytes: &[u8], pace: Pace) -> io::Result<()> {
        match pace {
            Pace::Fast => self.stream.write_all(bytes),
            Pace::Slow { chunk, pause } => {
                for part in bytes.chunks(chunk.max(1)) {
                    thread::sleep(pause);
                    self.stream.write_all(part)?;
                }
                Ok(())
            }
        }
    }

    /// Half-close: the server reads EOF after what was sent.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads one response. An error means no complete head arrived; a body cut short is a
    /// response with `complete: false`. With `stop_after`, reading stops (incomplete) once that
    /// many body bytes arrived: the caller then drops the connection mid-body.
    pub fn read_response(&mut self, pace: Pace, stop_after: Option<usize>) -> io::Result<Response> {
        let (mut response, mut framing) = self.read_head(pace)?;
        while response.status == 100 {
            (response, framing) = self.read_head(pace)?;
        }
        if matches!(response.status, 101..=199 | 204 | 304) {
            framing = Framing::Length(0);
        }
        let outcome = match framing {
            Framing::Chunked => self.chunked_body(pace, stop_after, &mut response),
            Framing::Length(n) => self
                .take(n, pace, stop_after, &mut response)
                .map(|stopped| !stopped),
            Framing::UntilClose => {
                response.keep_alive = false;
                self.until_close(pace, stop_after, &mut response)
            }
        };
        // A read error inside the body is a cut body, not a failed exchange.
        response.complete = outcome.unwrap_or(false);
        Ok(response)
    }

    /// The status line and headers.
    fn read_head(&mut self, pace: Pace) -> io::Result<(Response, Framing)> {
        let status_line = self.line(pace)?;
        let status = std::str::from_utf8(&status_line)
            .ok()
            .filter(|l| l.starts_with("HTTP/1."))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {:?}", lossy(&status_line))))?;
        let mut response = Response {
            status,
            keep_alive: true,
            ..Response::default()
        };
        let (mut chunked, mut length) = (false, None);
        let mut head_len = status_line.len();
        loop {
            let line = self.line(pace)?;
            head_len += line.len() + 2;
            if head_len > MAX_HEAD {
                return Err(invalid("response head too large".into()));
            }
            if line.is_empty() {
                let framing = match (chunked, length) {
                    (true, _) => Framing::Chunked,
                    (false, Some(n)) => Framing::Length(n),
                    (false, None) => Framing::UntilClose,
                };
                return Ok((response, framing));
            }
            let text = String::from_utf8_lossy(&line);
            let Some((name, value)) = text.split_once(':') else {
                return Err(invalid(format!("bad header line {text:?}")));
            };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => {
                    length = Some(
                        value
                            .parse()
                            .map_err(|_| invalid(format!("bad content-length {value:?}")))?,
                    );
                }
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "connection" => response.keep_alive = !value.eq_ignore_ascii_case("close"),
                "x-tollgate-request-id" => response.request_id = Some(value.to_string()),
                _ => {}
            }
        }
    }

    /// `Ok(true)` once the last chunk and trailers are read; `Ok(false)` when stopped early.
    fn chunked_body(
        &mut self,
        pace: Pace,
        stop_after: Option<usize>,
        response: &mut Response,
    ) -> io::Result<bool> {
        loop {
            let line = self.line(pace)?;
            let text = String::from_utf8_lossy(&line);
            let hex = text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(hex, 16)
                .map_err(|_| invalid(format!("bad chunk size {text:?}")))?;
            if size == 0 {
                while !self.line(pace)?.is_empty() {}
                return Ok(true);
            }
            if self.take(size, pace, stop_after, response)? {
                return Ok(false);
            }
            if !self.line(pace)?.is_empty() {
                return Err(invalid("chunk not followed by CRLF".into()));
            }
        }
    }

    /// Unframed body: everything until the server closes.
    fn until_close(
        &mut self,
        pace: Pace,
        stop_after: Option<usize>,
        response: &mut Response,
    ) -> io::Result<bool> {
        loop {
            if self.start == self.end && self.fill(pace)? == 0 {
                return Ok(true);
            }
            if self.take(self.end - self.start, pace, stop_after, response)? {
                return Ok(false);
            }
        }
    }

    /// Consumes `n` body bytes. `Ok(true)`: stopped because `stop_after` was reached.
    fn take(
        &mut self,
        mut n: usize,
        pace: Pace,
        stop_after: Option<usize>,
        response: &mut Response,
    ) -> io::Result<bool> {
        while n > 0 {
            if self.start == self.end && self.fill(pace)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let k = n.min(self.end - self.start);
            response.keep(&self.buf[self.start..self.start + k]);
            self.start += k;
            n -= k;
            if stop_after.is_some_and(|limit| response.body_bytes >= limit) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// One line without its CRLF (or bare LF).
    fn line(&mut self, pace: Pace) -> io::Result<Vec<u8>> {
        let mut scanned = 0;
        loop {
            let window = &self.buf[self.start..self.end];
            if let Some(i) = window[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + i;
                let mut line = window[..end].to_vec();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.start += end + 1;
                return Ok(line);
            }
            scanned = window.len();
            if scanned > MAX_HEAD {
                return Err(invalid("line too long".into()));
            }
            if self.fill(pace)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads more bytes after the buffered ones; 0 at EOF.
    fn fill(&mut self, pace: Pace) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let room = self.buf.len() - self.end;
        let want = match pace {
            Pace::Fast => room,
            Pace::Slow { chunk, pause } => {
                thread::sleep(pause);
                chunk.clamp(1, room)
            }
        };
        let n = self.stream.read(&mut self.buf[self.end..self.end + want])?;
        self.end += n;
        Ok(n)
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves `reply` once to whoever connects, then closes.
    fn serve_once(reply: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0; 1024];
            let _ = s.read(&mut buf);
            s.write_all(reply).unwrap();
        });
        addr
    }

    fn exchange(reply: &'static [u8], pace: Pace, stop_after: Option<usize>) -> Response {
        let mut conn = Conn::connect(serve_once(reply)).unwrap();
        conn.send(b"GET / HTTP/1.1\r\n\r\n", Pace::Fast).unwrap();
        conn.read_response(pace, stop_after).unwrap()
    }

    #[test]
    fn chunked_complete_and_slow() {
        let reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Tollgate-Request-Id: tg-1-0-2\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n";
        for pace in [
            Pace::Fast,
            Pace::Slow {
                chunk: 3,
                pause: Duration::ZERO,
            },
        ] {
            let r = exchange(reply, pace, None);
            assert_eq!(r.status, 200);
            assert!(r.complete && r.keep_alive);
            assert_eq!(r.request_id.as_deref(), Some("tg-1-0-2"));
            assert_eq!(r.tail, b"hello world");
        }
    }

    #[test]
    fn cut_and_stopped_bodies_are_incomplete() {
        let cut = exchange(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
            Pace::Fast,
            None,
        );
        assert!(!cut.complete);
        let stopped = exchange(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789",
            Pace::Fast,
            Some(4),
        );
        assert!(!stopped.complete);
        let whole = exchange(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
            Pace::Fast,
            None,
        );
        assert!(whole.complete && !whole.keep_alive);
        assert_eq!((whole.status, whole.body_bytes), (413, 2));
    }

    #[test]
    fn garbage_is_an_error() {
        let mut conn = Conn::connect(serve_once(b"SSH-2.0-nope\r\n\r\n")).unwrap();
        conn.send(b"GET / HTTP/1.1\r\n\r\n", Pace::Fast).unwrap();
        assert!(conn.read_response(Pace::Fast, None).is_err());
    }
}
