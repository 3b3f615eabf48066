//! The single-threaded event loop that drives all connections for one run.
//!
//! Why it exists: it decides when each request goes out — at once after the previous response (closed
//! loop) or at its scheduled instant (open loop) — and records latency from the right origin. In open loop
//! the origin is the *intended* send time, so a server (or generator) that falls behind shows up as latency
//! instead of silently lowering the offered rate. Requests that are due while every connection is busy wait
//! in a queue and that wait is counted.
//!
//! Owns the connections, the timer and the histograms for one run. Never spawns threads. Hot path.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;

use super::conn::{Conn, InFlight, ReadOutcome};
use super::schedule::Schedule;
use super::sys::{self, Epoll, TimerFd};

/// Epoll token of the schedule timer; connections use their index.
const TIMER_TOKEN: u64 = u64::MAX;
/// Size of the shared read buffer, in bytes.
const SCRATCH_BYTES: usize = 64 * 1024;
/// Histogram ceiling, in ns (values above are clamped).
const HISTOGRAM_MAX_NS: u64 = 3_600_000_000_000;

/// How requests are paced.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Each connection sends its next request as soon as the previous response is complete.
    Closed,
    /// Requests are due at a fixed rate regardless of responses.
    Open(Schedule),
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Server address.
    pub target: SocketAddr,
    /// Complete request bytes, sent as-is.
    pub request: Vec<u8>,
    /// The request is `HEAD`: responses have no body.
    pub head_request: bool,
    /// Pacing.
    pub mode: Mode,
    /// Connections kept open (closed loop: the concurrency).
    pub connections: usize,
    /// Load applied before measuring.
    pub warmup: Duration,
    /// Measured window.
    pub duration: Duration,
    /// How long to wait for outstanding responses after the window.
    pub drain: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Open loop: stop sleeping this long before each due send and busy-poll instead. Zero (the default)
    /// never spins; a few hundred µs hides a VM's timer wake-up latency at the price of CPU the server may
    /// need.
    pub spin: Duration,
}

/// What one run measured. Histograms are in nanoseconds.
#[derive(Debug)]
pub struct Outcome {
    /// Intended send time (closed loop: actual send time) to last response byte, 2xx only.
    pub latency: Histogram<u64>,
    /// Intended send time to first response body byte, 2xx only.
    pub ttft: Histogram<u64>,
    /// Open loop only: actual send time minus intended send time (generator and queueing lag).
    pub send_lag: Histogram<u64>,
    /// 2xx responses in the measured window.
    pub ok: u64,
    /// Non-2xx responses in the measured window.
    pub status_errors: u64,
    /// Count per non-2xx status code.
    pub statuses: BTreeMap<u16, u64>,
    /// The first I/O or framing error of the measured window, for diagnosis.
    pub first_error: Option<String>,
    /// Requests lost to a socket error, EOF or bad framing.
    pub io_errors: u64,
    /// Failed (re)connects.
    pub connect_errors: u64,
    /// Measured requests still queued or outstanding when the drain time ran out.
    pub unfinished: u64,
    /// Measured window: its start to the last measured completion (at least the nominal duration).
    pub elapsed: Duration,
    /// The generator's own CPU time over the whole run, warm-up included.
    pub generator_cpu: Duration,
    /// Requests sent during the whole run, warm-up included (for the generator's CPU per request).
    pub sent_total: u64,
}

impl Outcome {
    fn new() -> anyhow::Result<Self> {
        let hist =
            || Histogram::new_with_bounds(1, HISTOGRAM_MAX_NS, 3).context("histogram bounds");
        Ok(Self {
            latency: hist()?,
            ttft: hist()?,
            send_lag: hist()?,
            ok: 0,
            status_errors: 0,
            statuses: BTreeMap::new(),
            first_error: None,
            io_errors: 0,
            connect_errors: 0,
            unfinished: 0,
            elapsed: Duration::ZERO,
            generator_cpu: Duration::ZERO,
            sent_total: 0,
        })
    }
}

/// Mutable state of a run, so the event handlers can be small methods.
struct Run<'a> {
    plan: &'a Plan,
    epoll: Epoll,
    timer: TimerFd,
    /// Readiness from the last wait (kept to reuse its allocation).
    ready: Vec<sys::Ready>,
    conns: Vec<Conn>,
    /// Open loop: idle connection indices, oldest first.
    idle: VecDeque<usize>,
    /// Open loop: intended send times of due requests waiting for a connection.
    pending: VecDeque<Instant>,
    measure_start: Instant,
    end: Instant,
    last_completion: Option<Instant>,
    out: Outcome,
}

/// Execute a plan and return its measurements.
pub fn run(plan: &Plan) -> anyhow::Result<Outcome> {
    anyhow::ensure!(plan.connections > 0, "at least one connection is needed");
    sys::tighten_timer_slack();
    let cpu_before = sys::process_cpu_time().context("getrusage")?;
    let epoll = Epoll::new(plan.connections + 1).context("epoll_create1")?;
    let timer = TimerFd::new().context("timerfd_create")?;
    epoll
        .add(timer.raw_fd(), TIMER_TOKEN, false)
        .context("registering the timer")?;
    let mut conns = Vec::with_capacity(plan.connections);
    for index in 0..plan.connections {
        let mut conn = Conn::new(index as u64, plan.head_request);
        conn.connect(plan.target, plan.connect_timeout, &epoll)
            .with_context(|| format!("connecting to {}", plan.target))?;
        conns.push(conn);
    }
    let start = Instant::now();
    let measure_start = start + plan.warmup;
    let mut run = Run {
        plan,
        epoll,
        timer,
        ready: Vec::with_capacity(plan.connections + 1),
        conns,
        idle: (0..plan.connections).collect(),
        pending: VecDeque::new(),
        measure_start,
        end: measure_start + plan.duration,
        last_completion: None,
        out: Outcome::new()?,
    };
    match plan.mode {
        Mode::Closed => run.closed_loop(start)?,
        Mode::Open(schedule) => run.open_loop(start, schedule)?,
    }
    let mut out = run.out;
    let finished = run.last_completion.unwrap_or(run.end).max(run.end);
    out.elapsed = finished.saturating_duration_since(measure_start);
    out.generator_cpu = sys::process_cpu_time()
        .context("getrusage")?
        .saturating_sub(cpu_before);
    Ok(out)
}

impl Run<'_> {
    fn closed_loop(&mut self, start: Instant) -> anyhow::Result<()> {
        for index in 0..self.conns.len() {
            self.send_closed(index, start);
        }
        let drain_deadline = self.end + self.plan.drain;
        let mut scratch = vec![0u8; SCRATCH_BYTES];
        loop {
            let now = Instant::now();
            if (now >= self.end && self.outstanding() == 0) || now >= drain_deadline {
                break;
            }
            let wake = if now < self.end {
                self.end
            } else {
                drain_deadline
            };
            self.poll(Some(wake - now), &mut scratch, |run, index, done_at| {
                if done_at < run.end {
                    run.send_closed(index, done_at);
                }
            })?;
        }
        self.count_unfinished();
        Ok(())
    }

    fn open_loop(&mut self, start: Instant, schedule: Schedule) -> anyhow::Result<()> {
        let window = self.plan.warmup + self.plan.duration;
        let total = schedule.total_in(u64::try_from(window.as_nanos()).unwrap_or(u64::MAX));
        let drain_deadline = self.end + self.plan.drain;
        let mut scratch = vec![0u8; SCRATCH_BYTES];
        let mut issued = 0u64;
        let mut timer_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let elapsed_ns =
                u64::try_from(now.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX);
            let due = schedule.due_count(elapsed_ns).min(total);
            while issued < due {
                self.pending
                    .push_back(start + Duration::from_nanos(schedule.offset_ns(issued)));
                issued += 1;
            }
            self.dispatch(now);
            let done = issued == total && self.pending.is_empty() && self.outstanding() == 0;
            if done || now >= drain_deadline {
                break;
            }
            let timeout = if issued < total {
                let next = start + Duration::from_nanos(schedule.offset_ns(issued));
                // Wake `spin` early and poll without sleeping for the rest, when asked to.
                let wake = next.checked_sub(self.plan.spin).unwrap_or(next);
                if wake <= now {
                    Some(Duration::ZERO)
                } else {
                    if timer_at.is_none_or(|at| at <= now || at > wake) {
                        self.timer
                            .arm_after(wake.saturating_duration_since(now))
                            .context("timerfd_settime")?;
                        timer_at = Some(wake);
                    }
                    None
                }
            } else {
                Some(drain_deadline - now)
            };
            self.poll(timeout, &mut scratch, |run, index, _| {
                run.idle.push_back(index)
            })?;
        }
        self.count_unfinished();
        Ok(())
    }

    /// Open loop: hand queued requests to idle connections, oldest request first.
    fn dispatch(&mut self, now: Instant) {
        while !self.pending.is_empty() {
            let Some(index) = self.idle.pop_front() else {
                return;
            };
            if let Some(intended) = self.pending.pop_front() {
                if self.send(index, intended) && intended >= self.measure_start {
                    self.out
                        .send_lag
                        .saturating_record(nanos(now.saturating_duration_since(intended)));
                }
                if !self.conns[index].busy() {
                    self.idle.push_back(index);
                }
            }
        }
    }

    /// Closed loop: start the next request on `index`; if the connection turns out to be broken, retry once on
    /// a fresh one so the concurrency holds. A connection that cannot reconnect drops out of the run.
    fn send_closed(&mut self, index: usize, now: Instant) {
        let was_connected = self.conns[index].connected();
        if !self.send(index, now) && was_connected {
            self.send(index, now);
        }
    }

    /// Start a request on connection `index`, reconnecting first if needed. Returns whether it went out;
    /// a failure is counted against the request.
    fn send(&mut self, index: usize, intended: Instant) -> bool {
        let measured = intended >= self.measure_start;
        let conn = &mut self.conns[index];
        if !conn.connected() {
            if let Err(_e) = conn.connect(self.plan.target, self.plan.connect_timeout, &self.epoll)
            {
                self.out.connect_errors += 1;
                if measured {
                    self.out.io_errors += 1;
                }
                return false;
            }
        }
        let flight = InFlight {
            intended,
            first_byte: None,
            measured,
        };
        self.out.sent_total += 1;
        match conn.send(&self.plan.request, flight, &self.epoll) {
            Ok(()) => true,
            Err(e) => {
                if measured {
                    self.out.io_errors += 1;
                    self.out
                        .first_error
                        .get_or_insert_with(|| format!("write: {e}"));
                }
                false
            }
        }
    }

    /// Wait for readiness and handle it; `on_free(run, index, at)` is called for each connection that became
    /// free (response complete or request failed) at time `at`.
    fn poll(
        &mut self,
        timeout: Option<Duration>,
        scratch: &mut [u8],
        mut on_free: impl FnMut(&mut Self, usize, Instant),
    ) -> anyhow::Result<()> {
        let mut ready = std::mem::take(&mut self.ready);
        self.epoll.wait(timeout, &mut ready).context("epoll_wait")?;
        for &event in &ready {
            if event.token == TIMER_TOKEN {
                self.timer.clear();
                continue;
            }
            let index = event.token as usize;
            let Some(conn) = self.conns.get_mut(index) else {
                continue;
            };
            if event.writable {
                let measured = conn.in_flight().is_some_and(|f| f.measured);
                if let Err(e) = conn.on_writable(&self.plan.request, &self.epoll) {
                    if measured {
                        self.out.io_errors += 1;
                        self.out
                            .first_error
                            .get_or_insert_with(|| format!("write: {e}"));
                    }
                    on_free(self, index, Instant::now());
                    continue;
                }
            }
            if !(event.readable || event.error) {
                continue;
            }
            let conn = &mut self.conns[index];
            match conn.on_readable(scratch) {
                ReadOutcome::Pending => {}
                ReadOutcome::Complete {
                    request, status, ..
                } => {
                    let done_at = Instant::now();
                    self.record(request, status, done_at);
                    on_free(self, index, done_at);
                }
                // An idle connection closed by the server (keep-alive timeout) is reopened lazily; only a
                // lost request counts.
                ReadOutcome::Failed { request, error } => {
                    if let Some(request) = request {
                        if request.measured {
                            self.out.io_errors += 1;
                            self.out
                                .first_error
                                .get_or_insert_with(|| error.to_string());
                        }
                        on_free(self, index, Instant::now());
                    }
                }
            }
        }
        self.ready = ready;
        Ok(())
    }

    fn record(&mut self, request: InFlight, status: u16, done_at: Instant) {
        if !request.measured {
            return;
        }
        self.last_completion = Some(done_at);
        if (200..300).contains(&status) {
            self.out.ok += 1;
            self.out
                .latency
                .saturating_record(nanos(done_at.saturating_duration_since(request.intended)));
            let first = request.first_byte.unwrap_or(done_at);
            self.out
                .ttft
                .saturating_record(nanos(first.saturating_duration_since(request.intended)));
        } else {
            self.out.status_errors += 1;
            *self.out.statuses.entry(status).or_default() += 1;
        }
    }

    fn outstanding(&self) -> usize {
        self.conns.iter().filter(|c| c.busy()).count()
    }

    fn count_unfinished(&mut self) {
        let measure_start = self.measure_start;
        let queued = self
            .pending
            .iter()
            .filter(|&&at| at >= measure_start)
            .count();
        let on_wire = self.conns.iter().filter(|c| c.busy()).count();
        self.out.unfinished = (queued + on_wire) as u64;
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}
