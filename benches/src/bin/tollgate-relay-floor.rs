//! The kernel's floor for one proxied request on io_uring: a byte relay with no HTTP in it.
//!
//! One thread, one ring (`SINGLE_ISSUER | DEFER_TASKRUN`, as the agent's workers), each client
//! connection paired with its own keep-alive upstream connection, every byte passed on as it
//! came. No parsing, no metering, no timers: what it costs per request is what the kernel
//! charges for receiving and sending it, plus the least user space that can drive the ring.
//! Run side by side with nginx and the agent (`benches/scripts/relay_floor_ab.sh`), it says how
//! much of the agent's kernel time a different way of receiving would save:
//!
//! - `--mode single`: one receive per read, armed when the last one completed; what monoio
//!   0.2.4 does. A receive on an empty socket is tried, fails, and arms a poll.
//! - `--mode poll-first`: the same with `IORING_RECVSEND_POLL_FIRST`: the poll is armed
//!   without the empty try.
//! - `--mode multishot`: one multishot receive per socket, armed once, into provided buffers;
//!   the poll stays armed across reads, as an epoll registration does.
//!
//! A measuring tool, not a product path: it trusts its peers (no limits, no deadlines).
//!
//! usage: tollgate-relay-floor --listen 127.0.0.1:18191 --upstream 127.0.0.1:18080 --mode multishot

use std::collections::VecDeque;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use io_uring::{cqueue, opcode, squeue, types, IoUring};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Mode {
    Single,
    PollFirst,
    Multishot,
}

#[derive(Parser)]
struct Args {
    #[arg(long)]
    listen: String,
    #[arg(long)]
    upstream: String,
    #[arg(long, value_enum, default_value = "single")]
    mode: Mode,
}

/// Bytes a read takes at most, and each provided buffer's size.
const BUF: usize = 16 * 1024;
/// Provided buffers (multishot): enough for every socket to hold a few reads in flight.
const BUFFERS: u16 = 1024;
const GROUP: u16 = 0;

/// What a completion is for: the low 3 bits of its `user_data`, the socket's slot above them.
const ACCEPT: u64 = 0;
const RECV: u64 = 1;
const SEND: u64 = 2;
const PROVIDE: u64 = 3;

/// `IORING_RECVSEND_POLL_FIRST`, in the SQE's `ioprio` (io-uring 0.6 has no setter for it).
const POLL_FIRST: u16 = 1;

/// One direction's socket: where its reads go, and what waits to be sent to it.
struct Side {
    fd: RawFd,
    /// Index of the socket its bytes are sent to.
    peer: usize,
    /// Single and poll-first: the read buffer. Multishot: unused.
    buf: Vec<u8>,
    /// Bytes waiting to be written to this socket: (buffer id or `u16::MAX` for the peer's
    /// own buffer, offset, length). One send in flight at a time keeps the bytes in order.
    out: VecDeque<(u16, usize, usize)>,
    sending: bool,
    open: bool,
}

struct Relay {
    ring: IoUring,
    mode: Mode,
    sides: Vec<Side>,
    /// Multishot's provided buffers, one block.
    pool: Vec<u8>,
    upstream: String,
}

fn data(slot: usize, kind: u64) -> u64 {
    ((slot as u64) << 3) | kind
}

impl Relay {
    fn push(&mut self, e: squeue::Entry) {
        // The ring is sized for every socket's ops; a full queue is submitted first.
        while unsafe { self.ring.submission().push(&e) }.is_err() {
            let _ = self.ring.submit();
        }
    }

    fn arm_recv(&mut self, slot: usize) {
        let fd = types::Fd(self.sides[slot].fd);
        let e = match self.mode {
            Mode::Multishot => opcode::RecvMulti::new(fd, GROUP).build(),
            Mode::Single | Mode::PollFirst => {
                let b = &mut self.sides[slot].buf;
                let mut e = opcode::Recv::new(fd, b.as_mut_ptr(), b.len() as u32).build();
                if self.mode == Mode::PollFirst {
                    // SAFETY: `Entry` is `repr(C)` over `io_uring_sqe`, whose `ioprio` is the
                    // u16 at byte offset 2.
                    unsafe {
                        *((&mut e as *mut squeue::Entry as *mut u8).add(2) as *mut u16) = POLL_FIRST
                    };
                }
                e
            }
        };
        self.push(e.user_data(data(slot, RECV)));
    }

    fn provide(&mut self, bid: u16) {
        let ptr = self.pool[bid as usize * BUF..].as_mut_ptr();
        let e = opcode::ProvideBuffers::new(ptr, BUF as i32, 1, GROUP, bid).build();
        self.push(e.user_data(data(0, PROVIDE)));
    }

    /// Sends the head of `slot`'s queue, unless a send is in flight.
    fn send_next(&mut self, slot: usize) {
        let side = &self.sides[slot];
        if side.sending || !side.open {
            return;
        }
        let Some(&(bid, off, len)) = side.out.front() else {
            return;
        };
        let ptr = if bid == u16::MAX {
            self.sides[side.peer].buf[off..].as_ptr()
        } else {
            self.pool[bid as usize * BUF + off..].as_ptr()
        };
        let e = opcode::Send::new(types::Fd(side.fd), ptr, len as u32).build();
        self.sides[slot].sending = true;
        self.push(e.user_data(data(slot, SEND)));
    }

    fn close(&mut self, slot: usize) {
        for s in [slot, self.sides[slot].peer] {
            if self.sides[s].open {
                self.sides[s].open = false;
                // A shutdown ends a receive still armed on the socket (it holds the file).
                unsafe {
                    libc::shutdown(self.sides[s].fd, libc::SHUT_RDWR);
                    libc::close(self.sides[s].fd);
                }
            }
        }
    }

    fn accepted(&mut self, fd: RawFd) -> Result<()> {
        let up = TcpStream::connect(&self.upstream).context("connecting upstream")?;
        up.set_nodelay(true)?;
        up.set_nonblocking(true)?;
        let client = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        client.set_nodelay(true)?;
        client.set_nonblocking(true)?;
        let (c, u) = (self.sides.len(), self.sides.len() + 1);
        let buf = |m: Mode| {
            if m == Mode::Multishot {
                Vec::new()
            } else {
                vec![0; BUF]
            }
        };
        for (fd, peer) in [(client.into_raw_fd(), u), (up.into_raw_fd(), c)] {
            self.sides.push(Side {
                fd,
                peer,
                buf: buf(self.mode),
                out: VecDeque::new(),
                sending: false,
                open: true,
            });
        }
        self.arm_recv(c);
        self.arm_recv(u);
        Ok(())
    }

    fn complete(&mut self, user_data: u64, res: i32, flags: u32) -> Result<()> {
        let (slot, kind) = ((user_data >> 3) as usize, user_data & 7);
        match kind {
            ACCEPT => {
                if res >= 0 {
                    self.accepted(res)?;
                }
                if !cqueue::more(flags) {
                    bail!("the multishot accept ended: {res}");
                }
            }
            RECV => {
                let bid = cqueue::buffer_select(flags);
                if !self.sides[slot].open {
                    if let Some(b) = bid {
                        self.provide(b);
                    }
                    return Ok(());
                }
                if res == -libc::ENOBUFS {
                    // Every buffer is waiting to be sent: the re-arm below retries.
                } else if res <= 0 {
                    if let Some(b) = bid {
                        self.provide(b);
                    }
                    self.close(slot);
                    return Ok(());
                } else {
                    let peer = self.sides[slot].peer;
                    let entry = match bid {
                        Some(b) => (b, 0, res as usize),
                        None => (u16::MAX, 0, res as usize),
                    };
                    self.sides[peer].out.push_back(entry);
                    self.send_next(peer);
                }
                let rearm = match self.mode {
                    Mode::Multishot => !cqueue::more(flags),
                    // A single receive is armed again when its bytes are sent (its buffer is
                    // free then), or now when it read nothing.
                    _ => res == -libc::ENOBUFS,
                };
                if rearm {
                    self.arm_recv(slot);
                }
            }
            SEND => {
                self.sides[slot].sending = false;
                if !self.sides[slot].open {
                    return Ok(());
                }
                if res <= 0 {
                    self.close(slot);
                    return Ok(());
                }
                let done = {
                    let head = self.sides[slot]
                        .out
                        .front_mut()
                        .context("a send without bytes")?;
                    head.1 += res as usize;
                    head.2 -= res as usize;
                    head.2 == 0
                };
                if done {
                    let (bid, ..) = self.sides[slot]
                        .out
                        .pop_front()
                        .context("a send without bytes")?;
                    if bid == u16::MAX {
                        let reader = self.sides[slot].peer;
                        self.arm_recv(reader);
                    } else {
                        self.provide(bid);
                    }
                }
                self.send_next(slot);
            }
            _ => {
                if res < 0 {
                    bail!("providing buffers failed: {res}");
                }
            }
        }
        Ok(())
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.listen).context("binding")?;
    // The bound address (the port may have been 0): `cargo xtask bench` reads it from here.
    println!(
        "tollgate-relay-floor ({:?}) listening on {}",
        args.mode,
        listener.local_addr()?
    );
    run(listener, args.upstream, args.mode)
}

/// Relays every connection `listener` accepts to `upstream` until an error.
fn run(listener: TcpListener, upstream: String, mode: Mode) -> Result<()> {
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4096)
        .context("io_uring setup (kernel 6.1 or later)")?;
    let mut relay = Relay {
        ring,
        mode,
        sides: Vec::new(),
        pool: if mode == Mode::Multishot {
            vec![0; BUF * BUFFERS as usize]
        } else {
            Vec::new()
        },
        upstream,
    };
    if relay.mode == Mode::Multishot {
        let ptr = relay.pool.as_mut_ptr();
        let e = opcode::ProvideBuffers::new(ptr, BUF as i32, BUFFERS, GROUP, 0).build();
        relay.push(e.user_data(data(0, PROVIDE)));
    }
    let accept = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd())).build();
    relay.push(accept.user_data(data(0, ACCEPT)));
    let mut done = Vec::with_capacity(256);
    loop {
        relay.ring.submit_and_wait(1)?;
        done.extend(
            relay
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for (u, r, f) in done.drain(..) {
            relay.complete(u, r, f)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// An upstream that answers each message with its bytes reversed, so a reply shows that
    /// both directions carried every byte, in order.
    fn reversing_upstream() -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let mut c = conn.unwrap();
                std::thread::spawn(move || loop {
                    let mut len = [0u8; 4];
                    if c.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut msg = vec![0; u32::from_le_bytes(len) as usize];
                    c.read_exact(&mut msg).unwrap();
                    msg.reverse();
                    c.write_all(&len).unwrap();
                    c.write_all(&msg).unwrap();
                });
            }
        });
        addr
    }

    #[test]
    fn every_mode_relays_every_byte_both_ways() {
        let upstream = reversing_upstream();
        for mode in [Mode::Single, Mode::PollFirst, Mode::Multishot] {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let up = upstream.clone();
            std::thread::spawn(move || run(l, up, mode));
            // Two clients at once; messages from one byte to several buffers' worth.
            let clients: Vec<_> = (0..2)
                .map(|k| {
                    std::thread::spawn(move || {
                        let mut c = TcpStream::connect(addr).unwrap();
                        // A lost byte fails the test instead of hanging it.
                        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                            .unwrap();
                        for n in [1usize, 100, BUF - 1, BUF * 5 + 7] {
                            let msg: Vec<u8> = (0..n).map(|i| (i * 7 + k) as u8).collect();
                            c.write_all(&(n as u32).to_le_bytes()).unwrap();
                            c.write_all(&msg).unwrap();
                            let mut got = vec![0; 4 + n];
                            c.read_exact(&mut got).unwrap();
                            let mut want = msg.clone();
                            want.reverse();
                            assert_eq!(&got[4..], &want[..], "{mode:?}, {n} bytes");
                        }
                    })
                })
                .collect();
            for c in clients {
                c.join().unwrap();
            }
        }
    }
}
