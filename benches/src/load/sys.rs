//! Thin safe wrappers over the Linux calls the event loop needs: epoll, a timerfd, timer slack, rusage.
//!
//! Why it exists: the generator runs on the same two cores as the server it measures, so it uses one
//! thread, level-triggered epoll and a nanosecond timerfd instead of an async runtime. Every `unsafe` in the
//! load generator lives here, each with its `SAFETY` note. Nothing here knows about HTTP.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Readiness reported for one registered descriptor.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    /// The token given at registration.
    pub token: u64,
    /// Data (or EOF) can be read.
    pub readable: bool,
    /// The socket accepts writes.
    pub writable: bool,
    /// Error or hang-up; a read will report it.
    pub error: bool,
}

/// An epoll instance, level-triggered.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    /// A new epoll instance able to return up to `capacity` events per wait.
    pub fn new(capacity: usize) -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked before use.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let events = vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)];
        Ok(Self { fd, events })
    }

    /// Register `fd` for reads, and for writes too when `writable` is set.
    pub fn add(&self, fd: RawFd, token: u64, writable: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, writable)
    }

    /// Change the interest of a registered `fd`.
    pub fn modify(&self, fd: RawFd, token: u64, writable: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, writable)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, writable: bool) -> io::Result<()> {
        let mut flags = libc::EPOLLIN | libc::EPOLLRDHUP;
        if writable {
            flags |= libc::EPOLLOUT;
        }
        let mut event = libc::epoll_event {
            events: flags as u32,
            u64: token,
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the call; both fds are open.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wait up to `timeout` (`None`: forever; rounded up to whole milliseconds) and put what is ready in
    /// `out` (cleared first). An interrupted wait returns with `out` empty.
    pub fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Ready>) -> io::Result<()> {
        out.clear();
        let timeout_ms = match timeout {
            None => -1,
            Some(t) => i32::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX),
        };
        let capacity = i32::try_from(self.events.len()).unwrap_or(i32::MAX);
        // SAFETY: the buffer holds `capacity` initialised events and outlives the call.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                capacity,
                timeout_ms,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(err)
            };
        }
        out.extend(self.events[..n as usize].iter().map(|e| {
            let flags = e.events as libc::c_int;
            Ready {
                token: e.u64,
                readable: flags & (libc::EPOLLIN | libc::EPOLLRDHUP) != 0,
                writable: flags & libc::EPOLLOUT != 0,
                error: flags & (libc::EPOLLERR | libc::EPOLLHUP) != 0,
            }
        }));
        Ok(())
    }
}

/// A one-shot CLOCK_MONOTONIC timer readable through epoll, with nanosecond resolution (epoll's own timeout
/// is whole milliseconds, far too coarse for a 10k req/s schedule).
#[derive(Debug)]
pub struct TimerFd {
    fd: OwnedFd,
}

impl TimerFd {
    /// A disarmed, non-blocking timer.
    pub fn new() -> io::Result<Self> {
        // SAFETY: no pointers; the result is checked.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    /// The descriptor, for epoll registration.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Consume an expiry so the (level-triggered) descriptor stops reporting readable.
    pub fn clear(&self) {
        let mut ticks = [0u8; 8];
        // SAFETY: `ticks` is a writable 8-byte buffer, the size a timerfd read requires. A WouldBlock result
        // (nothing expired) is fine to ignore.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), ticks.as_mut_ptr().cast(), ticks.len()) };
    }

    /// Fire once after `delay` (at least 1 ns: a zero value would disarm). Re-arming also clears a pending
    /// expiry, so the timer never needs to be read.
    pub fn arm_after(&self, delay: Duration) -> io::Result<()> {
        let delay = delay.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(delay.as_secs()).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::from(delay.subsec_nanos() as i32),
            },
        };
        // SAFETY: `spec` is valid for the call; the old-value pointer may be null.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Ask the kernel for 1 ns timer slack on this thread (the default 50 µs would blur the send schedule).
/// Best effort: failure only costs precision.
pub fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and no pointers.
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// CPU time (user + system) used by this process so far.
pub fn process_cpu_time() -> io::Result<Duration> {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Ok(tv(usage.ru_utime) + tv(usage.ru_stime))
}
