//! One keep-alive client connection: writes the pre-built request, reads and frames the response.
//!
//! Why it exists: the event loop juggles many connections; this keeps each one's socket, partial-write
//! offset, response parser and in-flight timestamps together, so the loop only decides *when* to send.
//! Never holds a response body: reads go through the loop's shared scratch buffer. Hot path.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::framing::ResponseParser;
use super::sys::Epoll;

/// Timestamps of the request currently on the wire.
#[derive(Debug, Clone, Copy)]
pub struct InFlight {
    /// When the request was meant to go out (the schedule's time in open loop, the send time in closed loop).
    pub intended: Instant,
    /// When its first response body byte was read.
    pub first_byte: Option<Instant>,
    /// Whether it falls in the measured window (not warm-up).
    pub measured: bool,
}

/// How a read turn ended for this connection.
#[derive(Debug)]
pub enum ReadOutcome {
    /// Nothing to report yet (partial response or nothing read).
    Pending,
    /// A whole response arrived: status and whether the connection stays usable.
    Complete {
        request: InFlight,
        status: u16,
        keep_alive: bool,
    },
    /// The connection failed or closed; `request` is the one lost with it, if any.
    Failed {
        request: Option<InFlight>,
        error: io::Error,
    },
}

/// A client connection slot; `stream` is `None` while disconnected.
#[derive(Debug)]
pub struct Conn {
    token: u64,
    stream: Option<TcpStream>,
    parser: ResponseParser,
    inflight: Option<InFlight>,
    /// Bytes of the request already written; equals the request length once sent.
    written: usize,
    /// Whether the epoll registration currently includes writability.
    want_write: bool,
}

impl Conn {
    /// A disconnected slot registered under `token`; `no_body` for `HEAD` requests.
    pub fn new(token: u64, no_body: bool) -> Self {
        let mut parser = ResponseParser::new();
        parser.set_no_body(no_body);
        Self {
            token,
            stream: None,
            parser,
            inflight: None,
            written: 0,
            want_write: false,
        }
    }

    /// Whether a request is outstanding on this connection.
    pub fn busy(&self) -> bool {
        self.inflight.is_some()
    }

    /// The request on the wire, if any.
    pub fn in_flight(&self) -> Option<InFlight> {
        self.inflight
    }

    /// Open (or reopen) the TCP connection and register it for reads.
    pub fn connect(
        &mut self,
        target: SocketAddr,
        timeout: Duration,
        epoll: &Epoll,
    ) -> io::Result<()> {
        // Dropping the old stream closes its fd, which also removes it from the epoll set.
        self.stream = None;
        self.parser.reset();
        self.inflight = None;
        let stream = TcpStream::connect_timeout(&target, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        epoll.add(stream.as_raw_fd(), self.token, false)?;
        self.want_write = false;
        self.stream = Some(stream);
        Ok(())
    }

    /// Drop the connection (after an error or `connection: close`).
    pub fn disconnect(&mut self) {
        self.stream = None;
        self.inflight = None;
        self.parser.reset();
    }

    /// Whether a TCP connection is open.
    pub fn connected(&self) -> bool {
        self.stream.is_some()
    }

    /// Start a request: write as much of `request` as the socket takes now, and ask for writability if the
    /// rest must wait. On error the connection is dropped and the error returned.
    pub fn send(&mut self, request: &[u8], flight: InFlight, epoll: &Epoll) -> io::Result<()> {
        self.inflight = Some(flight);
        self.written = 0;
        self.parser.reset();
        let result = self.write_some(request, epoll);
        if result.is_err() {
            self.disconnect();
        }
        result
    }

    /// Continue a partial write after the socket became writable.
    pub fn on_writable(&mut self, request: &[u8], epoll: &Epoll) -> io::Result<()> {
        if self.inflight.is_none() || self.written >= request.len() {
            return Ok(());
        }
        let result = self.write_some(request, epoll);
        if result.is_err() {
            self.disconnect();
        }
        result
    }

    fn write_some(&mut self, request: &[u8], epoll: &Epoll) -> io::Result<()> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        while self.written < request.len() {
            match stream.write(&request[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        let want_write = self.written < request.len();
        if want_write != self.want_write {
            epoll.modify(stream.as_raw_fd(), self.token, want_write)?;
            self.want_write = want_write;
        }
        Ok(())
    }

    /// Read what the socket has, framing it with the parser. `scratch` is reused across connections.
    pub fn on_readable(&mut self, scratch: &mut [u8]) -> ReadOutcome {
        let Some(stream) = self.stream.as_mut() else {
            return ReadOutcome::Pending;
        };
        loop {
            let n = match stream.read(scratch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Pending,
                Err(error) => return self.fail(error),
            };
            let now = Instant::now();
            if n == 0 {
                if self.inflight.is_some() && self.parser.ends_at_close() {
                    return self.complete(false);
                }
                return self.fail(io::ErrorKind::UnexpectedEof.into());
            }
            let Some(flight) = self.inflight.as_mut() else {
                return self.fail(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "bytes without a request",
                ));
            };
            let progress = match self.parser.feed(&scratch[..n]) {
                Ok(progress) => progress,
                Err(e) => return self.fail(io::Error::new(io::ErrorKind::InvalidData, e)),
            };
            if progress.body_started && flight.first_byte.is_none() {
                flight.first_byte = Some(now);
            }
            if progress.complete {
                if progress.consumed < n {
                    return self.fail(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "bytes after the response",
                    ));
                }
                let keep_alive = self.parser.keep_alive();
                return self.complete(keep_alive);
            }
            if n < scratch.len() {
                // Level-triggered epoll reports the rest; avoid a read that would just say WouldBlock.
                return ReadOutcome::Pending;
            }
        }
    }

    fn complete(&mut self, keep_alive: bool) -> ReadOutcome {
        let status = self.parser.status();
        let Some(request) = self.inflight.take() else {
            return ReadOutcome::Pending;
        };
        self.parser.reset();
        if !keep_alive {
            self.disconnect();
        }
        ReadOutcome::Complete {
            request,
            status,
            keep_alive,
        }
    }

    fn fail(&mut self, error: io::Error) -> ReadOutcome {
        let request = self.inflight.take();
        self.disconnect();
        ReadOutcome::Failed { request, error }
    }
}
