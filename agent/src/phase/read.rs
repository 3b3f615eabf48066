//! Phase 2, read: one HTTP/1.1 request (head and whole body) from the client, under limits on
//! head size, header count, body size and time. The body is kept as one `Bytes` because the
//! inspect pass needs it contiguous; chunked bodies are de-chunked into it.
//!
//! Every time limit is an absolute deadline (a head must be complete `header_timeout` after its
//! first byte, a body `body_timeout` after its head), so a client trickling one byte at a time
//! cannot hold a connection. Body bytes are reserved from the worker's [`BodyBudget`] before
//! they are buffered; when the budget is spent the request gets a 503 with `Retry-After`.
//! Writes: the `Request` that starts a `RequestCtx`. Hot path.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use monoio::io::CancelableAsyncReadRent;

use crate::client::{read_more, take_spare, ClientConn};
use crate::config::Limits;
use crate::error::{ErrorKind, GateError};
use crate::http::chunked::{ChunkedDecoder, Decoded};
use crate::http::idle::{first_of, Deadline};
use crate::http::request::{BodyFraming, RequestHead};
use crate::http::{find_head_end, HttpError};
use crate::snapshot::Snapshot;

pub struct Request {
    pub head: RequestHead,
    pub body: Bytes,
    /// The configuration this request runs on, loaded when its head arrived.
    pub snap: Arc<Snapshot>,
    /// The body's share of the worker's budget, released when the request is done.
    pub reservation: Reservation,
}

/// Request-body bytes a worker may hold at once, across all its connections. `!Send`: one per
/// worker, no atomics.
pub struct BodyBudget {
    limit: u64,
    used: Cell<u64>,
}

impl BodyBudget {
    pub fn new(limit: u64) -> Rc<Self> {
        Rc::new(BodyBudget {
            limit,
            used: Cell::new(0),
        })
    }
}

/// A share of a [`BodyBudget`]; given back on drop.
pub struct Reservation {
    budget: Option<Rc<BodyBudget>>,
    bytes: u64,
}

impl Reservation {
    /// A reservation of nothing (requests without a body, or built outside the read phase).
    pub fn none() -> Self {
        Reservation {
            budget: None,
            bytes: 0,
        }
    }

    fn new(budget: &Rc<BodyBudget>) -> Self {
        Reservation {
            budget: Some(budget.clone()),
            bytes: 0,
        }
    }

    /// Grows the reservation to `total` bytes, if the budget has room.
    fn grow_to(&mut self, total: u64) -> bool {
        let Some(b) = &self.budget else { return true };
        if total <= self.bytes {
            return true;
        }
        let more = total - self.bytes;
        if b.used.get() + more > b.limit {
            return false;
        }
        b.used.set(b.used.get() + more);
        self.bytes = total;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.used.set(b.used.get() - self.bytes);
        }
    }
}

/// Why reading stopped without a request.
pub enum ReadEnd {
    /// The client closed (or idled out) between requests: close quietly.
    Closed,
    /// The client sent something we must answer with an error, then close.
    Error(GateError),
    /// A head was read but its body failed (the error is answered; the API is known).
    BodyError(RequestHead, Arc<Snapshot>, GateError),
}

fn http_error(e: HttpError) -> GateError {
    let kind = match e {
        HttpError::HeadTooLarge { limit } => ErrorKind::HeadTooLarge { limit },
        HttpError::TooManyHeaders { limit } => ErrorKind::TooManyHeaders { limit },
        HttpError::Malformed(_) | HttpError::BadChunk(_) => ErrorKind::MalformedHttp,
    };
    GateError::new(kind, e.to_string())
}

fn timeout_error(what: &str) -> GateError {
    GateError::new(
        ErrorKind::ClientTimeout,
        format!("the client did not send the {what} in time"),
    )
}

fn overloaded() -> GateError {
    GateError::new(
        ErrorKind::Overloaded { retry_after_s: 1 },
        "the gateway is buffering too many request bodies right now; retry shortly",
    )
}

/// Reads the next request on a keep-alive connection. The head is read under the limits current
/// when the wait began; the request then takes the snapshot current when its head arrived (so a
/// reload applies to the next request even on a connection that was idle through it).
pub async fn read_request(
    conn: &mut ClientConn,
    snapshot: &ArcSwap<Snapshot>,
    budget: &Rc<BodyBudget>,
) -> Result<Request, ReadEnd> {
    let limits = snapshot.load().cfg.limits.clone();
    let head = read_head(conn, &limits).await?;
    let snap = snapshot.load_full();
    let mut reservation = Reservation::new(budget);
    match read_body(conn, &head, &snap.cfg.limits, &mut reservation).await {
        Ok(body) => Ok(Request {
            head,
            body,
            snap,
            reservation,
        }),
        Err(e) => Err(ReadEnd::BodyError(head, snap, e)),
    }
}

/// How long a quiet keep-alive connection keeps its read buffer.
const KEEP_BUFFER: Duration = Duration::from_secs(1);

/// Finished first reads' cancellers a worker keeps for reuse (each ~170 bytes).
const MAX_SPARE_CANCELLERS: usize = 64;

/// How the first wait for the next request ended.
pub enum FirstRead {
    /// Bytes are in the buffer.
    Ready,
    /// The client closed.
    Closed,
    /// Quiet for [`KEEP_BUFFER`]: the buffer went back, and the connection's deadline is armed
    /// for what is left of the idle timeout, which [`idle_wait`] waits out. (No payload: the
    /// connection's task then keeps one `bool` across the idle wait, not a `Duration`.)
    Quiet,
}

/// The first read of the next request on a keep-alive connection whose buffer is empty.
///
/// A connection quiet for [`KEEP_BUFFER`] gives its read buffer back (and then waits in
/// [`idle_wait`], without one), so idle connections hold no buffer. The read in flight is
/// cancelled with monoio's `cancelable_read`, which hands back the buffer *and any bytes that
/// raced the cancel* (dropping an io_uring read in flight would lose them). The worker is told
/// the bytes of buffer given back. `deadline` (the connection's, on the worker's idle clock)
/// ends the wait: no monoio timer is involved (`http/idle.rs`). The idle timeout is read here,
/// not passed in: the caller's task would keep it, and every idle connection holds that task.
pub async fn first_read(
    conn: &mut ClientConn,
    deadline: &Deadline,
    w: &crate::worker::Worker,
) -> io::Result<FirstRead> {
    let started = Instant::now();
    let idle_timeout = w.shared.snapshot.load().cfg.limits.idle_timeout;
    let spare = take_spare(&mut conn.buf);
    deadline.arm_at(started, KEEP_BUFFER.min(idle_timeout));
    // Only a canceller that never cancelled goes back to the pool (a cancel, once a second
    // per idle connection at most, is rare enough to pay for a new one).
    let canceller = w.cancellers.borrow_mut().pop().unwrap_or_default();
    let (res, spare, unused) = {
        let mut read = std::pin::pin!(conn.stream.cancelable_read(spare, canceller.handle()));
        match first_of(read.as_mut(), deadline.expired()).await {
            Some((res, spare)) => (res, spare, Some(canceller)),
            None => {
                let _ = canceller.cancel();
                let (res, spare) = read.await;
                (res, spare, None)
            }
        }
    };
    // The read is dropped, and with it its association with the canceller.
    if let Some(c) = unused {
        let mut pool = w.cancellers.borrow_mut();
        if pool.len() < MAX_SPARE_CANCELLERS {
            pool.push(c);
        }
    }
    deadline.disarm();
    conn.buf = spare.into_inner();
    match res {
        Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
        Err(e) => return Err(e),
        Ok(0) => return Ok(FirstRead::Closed),
        Ok(_) => return Ok(FirstRead::Ready),
    }
    give_back_buffer(conn, w);
    match idle_timeout.checked_sub(started.elapsed()) {
        Some(rest) if !rest.is_zero() => {
            deadline.arm(rest);
            Ok(FirstRead::Quiet)
        }
        _ => Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
    }
}

/// Connections a worker may hold and still wait for each one's next request with a read in
/// flight ([`first_read`]); the default of `limits.buffered_wait_connections_per_worker`.
/// Above it every wait is [`idle_wait`], without a buffer: the read saves a readiness wait
/// per request, but holds 14 KiB for up to [`KEEP_BUFFER`], and a wave of thousands of
/// connections that each sent a request held them all at once (a 70 MiB peak at 5,000, whose
/// allocator bookkeeping stayed after they closed). So at most this many buffers (14 MiB)
/// wait at once by default.
pub const BUFFERED_WAIT_CONNECTIONS: usize = 1024;

/// Readies a wait for the next request in [`idle_wait`], without a read buffer: gives back
/// what is left of the last request's (the buffer is empty) and arms `deadline` for the idle
/// timeout. A connection that never sends then costs only its task; a buffer is taken once
/// bytes are there to read (`read_request`).
pub fn arm_idle_wait(conn: &mut ClientConn, deadline: &Deadline, w: &crate::worker::Worker) {
    give_back_buffer(conn, w);
    deadline.arm(w.shared.snapshot.load().cfg.limits.idle_timeout);
}

/// Drops the connection's (empty) read buffer, telling the worker how many bytes went back.
fn give_back_buffer(conn: &mut ClientConn, w: &crate::worker::Worker) {
    if conn.buf.capacity() > 0 {
        w.released(conn.buf.capacity());
        conn.buf = BytesMut::new();
    }
}

/// Waits, without a buffer, until the connection is readable (a request or the client's
/// close: the request's own read, under the head's deadline, tells which), or the deadline
/// [`first_read`] armed passes. This is what a long-idle connection task awaits, so it is kept
/// small: the readiness operation and the connection's deadline, no timer, no buffer, and no
/// `async` wrapper (one around a `first_of` took 192 bytes where this takes 120).
pub fn idle_wait<'a>(
    conn: &'a ClientConn,
    deadline: &'a Deadline,
) -> impl std::future::Future<Output = io::Result<()>> + 'a {
    IdleWait {
        readable: conn.stream.readable(false),
        deadline,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`idle_wait`]. The deadline's [`Deadline::expired`] is made at each poll
    /// (it holds nothing but a reference), not kept: 8 bytes less in every idle task.
    struct IdleWait<'a, R> {
        #[pin]
        readable: R,
        deadline: &'a Deadline,
    }
}

impl<R: std::future::Future<Output = io::Result<()>>> std::future::Future for IdleWait<'_, R> {
    type Output = io::Result<()>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        let this = self.project();
        let out = match this.readable.poll(cx) {
            Poll::Ready(readable) => readable,
            Poll::Pending => match std::pin::pin!(this.deadline.expired()).poll(cx) {
                Poll::Ready(()) => Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
                Poll::Pending => return Poll::Pending,
            },
        };
        this.deadline.disarm();
        Poll::Ready(out)
    }
}

/// Time left until `deadline`, or a timeout error when it has passed.
fn left(deadline: Instant) -> io::Result<Duration> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed")),
    }
}

async fn read_head(conn: &mut ClientConn, limits: &Limits) -> Result<RequestHead, ReadEnd> {
    let mut scanned = 0;
    // Pipelined bytes already here mean the head has started; its deadline is read from the
    // clock only if the head is not complete yet (it almost always is).
    let started = !conn.buf.is_empty();
    let mut deadline = None;
    loop {
        if let Some(end) = find_head_end(&conn.buf, scanned) {
            if end > limits.max_head_bytes {
                return Err(ReadEnd::Error(http_error(HttpError::HeadTooLarge {
                    limit: limits.max_head_bytes,
                })));
            }
            let raw = conn.buf.split_to(end).freeze();
            return RequestHead::parse(raw, limits.max_headers)
                .map_err(|e| ReadEnd::Error(http_error(e)));
        }
        scanned = conn.buf.len();
        if scanned > limits.max_head_bytes {
            return Err(ReadEnd::Error(http_error(HttpError::HeadTooLarge {
                limit: limits.max_head_bytes,
            })));
        }
        if started && deadline.is_none() {
            deadline = Some(Instant::now() + limits.header_timeout);
        }
        // Between requests the idle timeout applies; once a head has started, its deadline.
        let idle = conn.buf.is_empty();
        // The caller made the first read of a request (`first_read`); this runs only when the
        // buffer already holds part of a head, so the head's deadline applies.
        let read = match deadline {
            None => read_more(&mut conn.stream, &mut conn.buf, limits.header_timeout).await,
            Some(d) => match left(d) {
                Ok(t) => read_more(&mut conn.stream, &mut conn.buf, t).await,
                Err(e) => Err(e),
            },
        };
        if deadline.is_none() && !conn.buf.is_empty() {
            deadline = Some(Instant::now() + limits.header_timeout);
        }
        match read {
            Ok(0) => {
                return Err(if idle {
                    ReadEnd::Closed
                } else {
                    ReadEnd::Error(GateError::new(
                        ErrorKind::MalformedHttp,
                        "connection closed in the middle of a request head",
                    ))
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut && !idle => {
                return Err(ReadEnd::Error(timeout_error("request head")))
            }
            Err(_) => return Err(ReadEnd::Closed),
        }
    }
}

async fn read_body(
    conn: &mut ClientConn,
    head: &RequestHead,
    limits: &Limits,
    reservation: &mut Reservation,
) -> Result<Bytes, GateError> {
    // From the first time the body must be waited for (most bodies are already here).
    let mut deadline = LazyDeadline::new(limits.body_timeout);
    let too_large = || {
        GateError::new(
            ErrorKind::BodyTooLarge {
                limit: limits.max_body_bytes,
            },
            format!(
                "request body exceeds the limit of {} bytes",
                limits.max_body_bytes
            ),
        )
    };
    if head.expect_continue && head.framing != BodyFraming::None {
        if let BodyFraming::Length(n) = head.framing {
            if n > limits.max_body_bytes {
                return Err(too_large());
            }
            if !reservation.grow_to(n) {
                return Err(overloaded());
            }
        }
        deadline.get();
        conn.write_all(&b"HTTP/1.1 100 Continue\r\n\r\n"[..])
            .await
            .map_err(|e| {
                GateError::new(ErrorKind::MalformedHttp, format!("client went away: {e}"))
            })?;
    }
    match head.framing {
        BodyFraming::None => Ok(Bytes::new()),
        BodyFraming::Length(n) => {
            if n > limits.max_body_bytes {
                return Err(too_large());
            }
            if !reservation.grow_to(n) {
                return Err(overloaded());
            }
            let n = n as usize;
            if conn.buf.capacity() < n {
                conn.buf.reserve(n - conn.buf.len());
            }
            while conn.buf.len() < n {
                fill(conn, deadline.get(), "request body").await?;
            }
            Ok(conn.buf.split_to(n).freeze())
        }
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            let mut body = BytesMut::new();
            loop {
                match decoder.next(&mut conn.buf).map_err(http_error)? {
                    Decoded::Data(d) => {
                        let total = (body.len() + d.len()) as u64;
                        if total > limits.max_body_bytes {
                            return Err(too_large());
                        }
                        if !reservation.grow_to(total) {
                            return Err(overloaded());
                        }
                        body.extend_from_slice(&d);
                    }
                    Decoded::NeedMore => fill(conn, deadline.get(), "request body").await?,
                    Decoded::Done => return Ok(body.freeze()),
                }
            }
        }
    }
}

/// A deadline `timeout` after the first time it is asked for.
struct LazyDeadline {
    timeout: Duration,
    at: Option<Instant>,
}

impl LazyDeadline {
    fn new(timeout: Duration) -> Self {
        Self { timeout, at: None }
    }

    fn get(&mut self) -> Instant {
        *self.at.get_or_insert_with(|| Instant::now() + self.timeout)
    }
}

async fn fill(conn: &mut ClientConn, deadline: Instant, what: &str) -> Result<(), GateError> {
    let read = match left(deadline) {
        Ok(t) => read_more(&mut conn.stream, &mut conn.buf, t).await,
        Err(e) => Err(e),
    };
    match read {
        Ok(0) => Err(GateError::new(
            ErrorKind::MalformedHttp,
            format!("connection closed before the whole {what} arrived"),
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(timeout_error(what)),
        Err(e) => Err(GateError::new(
            ErrorKind::MalformedHttp,
            format!("reading the {what} failed: {e}"),
        )),
    }
}
