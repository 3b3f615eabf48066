//! The client side of a connection: the socket, its read buffer (which may already hold the
//! next pipelined request), what the kernel knows about the process behind it (looked up once
//! at accept), and the few ways Tollgate writes responses of its own.
//! Hot path.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use monoio::buf::{IoBuf, IoBufMut, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::api::Wire;
use crate::error::GateError;
use crate::http::head::{ClientBody, HeadWriter};
use crate::http::idle::{first_of, Deadline};
use crate::http::iovec::BytesVec;
use crate::kernel::ConnAttribution;

/// Every open connection's task holds one, idle ones included, so it is kept small: 120
/// bytes. The peer's address is not kept (monoio's stream reads it back on the rare request
/// that needs it), and the kernel's facts are one pointer, `None` for most connections.
pub struct ClientConn {
    pub stream: TcpStream,
    pub buf: BytesMut,
    /// What the kernel knows about a local client, looked up once at accept; `None` for remote
    /// clients or without the kernel side.
    pub kernel: Option<Box<KernelClient>>,
}

/// The kernel's facts about the process behind a local client's connection.
pub struct KernelClient {
    /// pid, uid, comm, cgroup id and original destination, from the attribution map. Shared
    /// by reference with the records of this connection's requests.
    pub attribution: Arc<ConnAttribution>,
    /// The client's cgroup (path, container, pod).
    pub cgroup: Option<Arc<crate::kernel::cgroup::CgroupInfo>>,
    /// What the attribution rules say about this client, resolved before any request is
    /// admitted (so limits per team hold for unlabelled clients). Boxed: most have none.
    pub identity: Option<Box<crate::identity::Identity>>,
}

impl ClientConn {
    /// The kernel's attribution of this connection (local clients with the kernel side on).
    pub fn attribution(&self) -> Option<&Arc<ConnAttribution>> {
        self.kernel.as_ref().map(|k| &k.attribution)
    }

    /// The client's cgroup, when the kernel attributed the connection and it resolved.
    pub fn cgroup(&self) -> Option<&crate::kernel::cgroup::CgroupInfo> {
        self.kernel.as_ref().and_then(|k| k.cgroup.as_deref())
    }

    /// The identity the attribution rules give this client, if one matched.
    pub fn kernel_identity(&self) -> Option<&crate::identity::Identity> {
        self.kernel.as_ref().and_then(|k| k.identity.as_deref())
    }

    /// Where the client meant to connect, when the kernel redirected it to the agent.
    pub fn original_dst(&self) -> Option<SocketAddr> {
        self.attribution().and_then(|a| a.original_dst)
    }

    /// The client's address, IPv4-mapped IPv6 as IPv4; `None` when the socket can no longer
    /// say (the client is gone). A `getpeername` on the first call per connection: only key
    /// IP allow-lists and the batch runner's loopback check ask.
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        Some(self.stream.peer_addr().ok()?.ip().to_canonical())
    }
}

/// Reads more bytes from `stream` and appends them to `buf`, waiting at most `timeout`.
/// A timeout is reported as `ErrorKind::TimedOut`; the caller then closes the connection.
///
/// The read goes into the spare capacity after `buf.len()` (a `SliceMut`): monoio's
/// `IoBufMut` for `BytesMut` writes at the start of the buffer, so reading into `buf` itself
/// would overwrite bytes already there (a head or chunk split across reads).
pub async fn read_more<R: AsyncReadRent>(
    stream: &mut R,
    buf: &mut BytesMut,
    timeout: Duration,
) -> io::Result<usize> {
    let spare = take_spare(buf);
    match monoio::time::timeout(timeout, stream.read(spare)).await {
        Ok((res, spare)) => {
            *buf = spare.into_inner();
            res
        }
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out")),
    }
}

/// [`read_more`] for reads from providers, bounded by the connection's `deadline` on the
/// worker's upstream clock instead of a monoio timer: a `timeout` built a 640-byte `Sleep`,
/// inserted it into the timer wheel and took it out again on every read, ~1,300 instructions
/// of each request (callgrind). On expiry the read in flight is dropped, as `timeout` did
/// (monoio keeps its buffer until the kernel finishes with it); the caller then drops the
/// connection.
pub async fn read_more_by<R: AsyncReadRent>(
    stream: &mut R,
    buf: &mut BytesMut,
    deadline: &Deadline,
    timeout: Duration,
) -> io::Result<usize> {
    let spare = take_spare(buf);
    deadline.arm(timeout);
    let read = std::pin::pin!(stream.read(spare));
    let done = first_of(read, deadline.expired()).await;
    deadline.disarm();
    match done {
        Some((res, spare)) => {
            *buf = spare.into_inner();
            res
        }
        None => Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out")),
    }
}

/// What a client read buffer grows by: 14 KiB, jemalloc's largest small size class. 16 KiB
/// is its smallest large class, where every buffer is an extent of its own, and the
/// allocator's metadata for an extent (kept for reuse, never returned) stayed resident after
/// a wave of connections: 5,000 idle keep-alive connections, each of whose first read holds a
/// buffer for up to a second, took 0.64–0.68 KB each from a fresh process with 16 KiB and
/// 0.58–0.60 with 14 KiB, and kept 1.0–1.2 MiB against 0.7 after they closed
/// (`benches/results/2026-12-03-idle-buffer-class.md`). Small classes share slabs.
pub const READ_BUFFER_BYTES: usize = 14 * 1024;

/// Moves `buf` out as its spare capacity (at least 4 KiB, growing by [`READ_BUFFER_BYTES`]),
/// for a read that appends; `spare.into_inner()` puts it back.
pub fn take_spare(buf: &mut BytesMut) -> SliceMut<BytesMut> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(READ_BUFFER_BYTES);
    }
    let (len, cap) = (buf.len(), buf.capacity());
    std::mem::take(buf).slice_mut(len..cap)
}

impl ClientConn {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            // Allocated by the first read: a connection that never sends holds no buffer.
            buf: BytesMut::new(),
            kernel: None,
        }
    }

    pub async fn write_all<T: IoBuf + 'static>(&mut self, buf: T) -> io::Result<()> {
        self.stream.write_all(buf).await.0.map(|_| ())
    }

    /// Writes all of `buf`, across partial writes; returns it for reuse.
    pub async fn write_vectored(&mut self, buf: BytesVec) -> (io::Result<()>, BytesVec) {
        crate::http::iovec::write_all(&mut self.stream, buf).await
    }

    /// Writes a complete response with a body of our own.
    pub async fn respond(
        &mut self,
        status: u16,
        content_type: &str,
        body: Vec<u8>,
        keep_alive: bool,
        extra: &str,
    ) -> io::Result<()> {
        let mut head = HeadWriter::new(status, 96 + extra.len() + body.len());
        head.header("content-type", content_type.as_bytes());
        head.lines(extra.as_bytes());
        let mut out = head.finish(ClientBody::Length(body.len() as u64), keep_alive);
        out.extend_from_slice(&body);
        self.write_all(out).await
    }

    /// Writes a gateway error in the client's wire format.
    pub async fn respond_error(
        &mut self,
        err: &GateError,
        wire: Wire,
        keep_alive: bool,
        request_id: Option<&str>,
    ) -> io::Result<()> {
        let r = err.to_response(wire);
        let mut extra = String::new();
        if let Some(s) = r.retry_after_s {
            extra.push_str(&format!("retry-after: {s}\r\n"));
        }
        if let Some(id) = request_id {
            extra.push_str(&format!("x-tollgate-request-id: {id}\r\n"));
        }
        if let Some(d) = &err.detail {
            extra.push_str(&d.headers);
        }
        self.respond(
            r.status,
            "application/json",
            r.body.into_bytes(),
            keep_alive,
            &extra,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A connection's first buffer is exactly one small-class allocation, and a buffer with
    /// less than 4 KiB to spare gets a new one of the same size once its requests are gone.
    #[test]
    fn read_buffers_stay_in_the_small_size_class() {
        let mut buf = BytesMut::new();
        let mut spare = take_spare(&mut buf);
        assert_eq!(spare.bytes_total(), READ_BUFFER_BYTES);
        buf = spare.into_inner();
        buf.extend_from_slice(&[b'x'; READ_BUFFER_BYTES - 100]);
        drop(buf.split_to(READ_BUFFER_BYTES - 100).freeze());
        let mut spare = take_spare(&mut buf);
        assert_eq!(spare.bytes_total(), READ_BUFFER_BYTES);
        // The size classes of the jemalloc this binary links: the largest small (slab) class.
        // SAFETY: NUL-terminated names; `arenas.nbins` is an unsigned, a bin's size a size_t.
        let bins: u32 = unsafe { tikv_jemalloc_ctl::raw::read(b"arenas.nbins\0") }.unwrap();
        let name = format!("arenas.bin.{}.size\0", bins - 1);
        let largest_small: usize =
            unsafe { tikv_jemalloc_ctl::raw::read(name.as_bytes()) }.unwrap();
        assert!(READ_BUFFER_BYTES <= largest_small, "{largest_small}");
    }

    /// A provider read bounded by the upstream clock: a silent peer times out when the
    /// deadline passes (not before, and the read in flight is dropped cleanly), and on a fresh
    /// connection the bytes that come are read, with the re-armed deadline not firing early.
    #[test]
    fn read_more_by_ends_on_the_clock_or_with_the_bytes() {
        async fn scenario(addr: std::net::SocketAddr) {
            let clock = std::rc::Rc::new(crate::http::idle::IdleClock::default());
            monoio::spawn(clock.clone().run());
            let deadline = clock.deadline();
            let mut silent = TcpStream::connect_addr(addr)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let mut buf = BytesMut::new();
            let started = std::time::Instant::now();
            let read = read_more_by(&mut silent, &mut buf, &deadline, Duration::from_millis(100));
            let e = monoio::time::timeout(Duration::from_secs(5), read)
                .await
                .unwrap_or_else(|_| panic!("the deadline never fired"))
                .err()
                .unwrap_or_else(|| panic!("a silent peer must time out"));
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
            // The clock fires what is due within its 1 ms slack in one sweep.
            assert!(started.elapsed() >= Duration::from_millis(99));
            drop(silent);
            let mut talking = TcpStream::connect_addr(addr)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let mut buf = BytesMut::new();
            while buf.len() < 6 {
                let n = read_more_by(&mut talking, &mut buf, &deadline, Duration::from_secs(5))
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                assert!(n > 0, "closed early with {buf:?}");
            }
            assert_eq!(&buf[..], b"abcdef");
        }
        for io_uring in [false, true] {
            let listener =
                std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
            let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
            let peer = std::thread::spawn(move || {
                let (silent, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
                let (mut talking, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
                drop(silent);
                // Later than the first read's whole deadline would have allowed.
                std::thread::sleep(Duration::from_millis(150));
                for piece in [&b"abc"[..], b"def"] {
                    talking.write_all(piece).unwrap_or_else(|e| panic!("{e}"));
                    std::thread::sleep(Duration::from_millis(30));
                }
            });
            if io_uring {
                monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .enable_timer()
                    .build()
                    .unwrap_or_else(|e| panic!("{e}"))
                    .block_on(scenario(addr));
            } else {
                monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                    .enable_timer()
                    .build()
                    .unwrap_or_else(|e| panic!("{e}"))
                    .block_on(scenario(addr));
            }
            peer.join().unwrap_or_else(|_| panic!("peer"));
        }
    }

    /// A head that arrives in several reads is appended, not overwritten.
    #[test]
    fn read_more_appends_across_reads() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let writer = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
            for piece in [&b"GET "[..], b"/readyz", b" HTTP/1.1\r\n\r\n"] {
                s.write_all(piece).unwrap_or_else(|e| panic!("{e}"));
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let got = rt.block_on(async move {
            let mut stream = TcpStream::connect_addr(addr)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let mut buf = BytesMut::with_capacity(64);
            while !buf.ends_with(b"\r\n\r\n") {
                let n = read_more(&mut stream, &mut buf, Duration::from_secs(5))
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                assert!(n > 0, "closed early with {buf:?}");
            }
            buf
        });
        writer.join().unwrap_or_else(|_| panic!("writer"));
        assert_eq!(&got[..], b"GET /readyz HTTP/1.1\r\n\r\n");
    }
}
