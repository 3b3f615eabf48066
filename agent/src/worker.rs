//! One data-plane worker per core: a single-threaded monoio runtime (io_uring, or epoll where
//! io_uring is unavailable or disabled), its own SO_REUSEPORT listener, its own upstream pool
//! and metrics shard. Nothing on this thread is shared with another worker except read-only
//! config, atomics, the ledger channel and the kernel's attribution map (read once per accepted
//! connection).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::abort::AbortSignal;
use crate::api::{Api, Wire};
use crate::client::{ClientConn, KernelClient};
use crate::config::{Config, IoDriver};
use crate::http::idle::IdleClock;
use crate::ledger::journal::Journal;
use crate::ledger::local::LedgerLocal;
use crate::ledger::writer::ToWriter;
use crate::phase::read::{self, BodyBudget, FirstRead, ReadEnd, Request, Reservation};
use crate::phase::settle;
use crate::pipeline::{self, RequestCtx};
use crate::shared::Shared;
use crate::upstream::pool::PoolLocal;

/// Stack of a worker thread. JSON is only handed to sonic-rs (recursive) after the depth guard
/// (`json.rs`), and at the largest `limits.max_json_depth` (1024) that needs ~250 KB in a
/// release build; the rest is headroom (the pages are only committed when touched).
pub const STACK_BYTES: usize = 8 * 1024 * 1024;

/// Longest a stopping worker waits for cut requests to record themselves (they only need to be
/// polled once more).
const ABORT_WAIT: Duration = Duration::from_secs(2);

/// Per-core state. Lives in an `Rc` on its worker thread.
pub struct Worker {
    pub index: usize,
    /// The configuration the agent started with, for what a reload does not change (I/O
    /// driver, data dir, per-worker caps, shutdown grace). Requests read `ctx.snap` instead.
    pub boot: Arc<Config>,
    pub shared: Arc<Shared>,
    pub pool: RefCell<PoolLocal>,
    pub ledger: Rc<LedgerLocal>,
    /// "io_uring" or "epoll".
    pub driver: &'static str,
    next_id: Cell<u64>,
    /// `tg-<boot id, hex>-<worker>-`: every id of this worker starts so.
    id_prefix: String,
    /// Relayed responses with provider usage, for `ledger.accuracy_sample_every`.
    accuracy_tick: Cell<u32>,
    /// When this worker may take its next accuracy sample.
    accuracy_next: Cell<Option<Instant>>,
    in_flight: Cell<usize>,
    /// Client connections this worker holds (capped by `limits.max_connections_per_worker`).
    connections: Cell<usize>,
    /// Bytes freed (closed connections, idle buffers) since memory was last handed back.
    released: Cell<usize>,
    /// Request-body bytes this worker buffers (capped by `limits.max_buffered_bytes_per_worker`).
    pub body_budget: Rc<BodyBudget>,
    /// Fired when the shutdown grace expires: requests still running are cut and recorded.
    abort: AbortSignal,
    /// The deadlines of idle client connections (`http/idle.rs`).
    idle: Rc<IdleClock>,
    /// The deadlines of reads from providers (`client::read_more_by`): the same clock, but
    /// never closed, since a stop lets responses in flight finish within the grace.
    pub upstream_clock: Rc<IdleClock>,
    /// Wall-clock times of instants this worker read (records' `ts_ms`).
    pub wall: crate::clock::WallAnchor,
    /// Cancellers of finished first reads, reused (`read::first_read`): a new one costs two
    /// allocations and a hash-set setup per request.
    pub cancellers: RefCell<Vec<monoio::io::Canceller>>,
    /// Providers this worker saw refuse a connection lately (route avoids them).
    /// Weighted draws and the retry budget (`phase/route`).
    pub route: crate::phase::route::RouteLocal,
}

impl Worker {
    /// Whether the request asking is the only one this worker is handling: work put after its
    /// response then delays no other request.
    pub fn alone(&self) -> bool {
        self.in_flight.get() <= 1
    }

    /// Whether this response (with provider usage) is also estimated, to measure the
    /// estimator: one in `ledger.accuracy_sample_every`, and at most
    /// [`ACCURACY_SAMPLES_PER_SECOND`] per worker. Every sample costs a tokenizer pass on the
    /// sampler's thread, and on a small node that thread competes with the workers for a core:
    /// at 37k requests/s one in 100 took 5 % of the agent's CPU. `accuracy_sample_every: 1`
    /// asks for every response and is not capped.
    pub fn samples_accuracy(&self) -> bool {
        let every = self.boot.ledger.accuracy_sample_every;
        if every == 0 {
            return false;
        }
        let n = self.accuracy_tick.get().wrapping_add(1);
        self.accuracy_tick.set(n % every);
        if !n.is_multiple_of(every) {
            return false;
        }
        if every == 1 {
            return true;
        }
        let now = Instant::now();
        if self.accuracy_next.get().is_some_and(|next| now < next) {
            return false;
        }
        self.accuracy_next.set(Some(
            now + Duration::from_secs(1) / ACCURACY_SAMPLES_PER_SECOND,
        ));
        true
    }

    /// Ids of one worker sort in the order they were issued (the counter is zero-padded), so
    /// the ledger's id index grows at its right edge instead of touching a random page per row.
    pub fn next_request_id(&self) -> String {
        let n = self.next_id.get();
        self.next_id.set(n + 1);
        request_id_after(&self.id_prefix, n)
    }
}

/// `tg-<boot id, hex>-<worker>-<counter, hex, at least 10 digits>`, as `format!("tg-{:x}-{}-{:010x}")`
/// writes it, without the formatting machinery: `format!` cost ~2,300 of the worker's ~50,000
/// instructions per request (callgrind), most of them in `LowerHex` and `pad_integral`.
#[cfg(test)]
fn request_id(boot_id: u64, worker: usize, n: u64) -> String {
    request_id_after(&request_id_prefix(boot_id, worker), n)
}

/// `v` in lower-case hex, zero-padded to `min_digits` (at most 16).
fn hex(out: &mut String, v: u64, min_digits: usize) {
    let digits = (16 - v.leading_zeros() as usize / 4).clamp(min_digits, 16);
    for i in (0..digits).rev() {
        out.push(char::from(
            b"0123456789abcdef"[((v >> (4 * i)) & 0xf) as usize],
        ));
    }
}

/// The part of a worker's ids that never changes, written once per worker.
fn request_id_prefix(boot_id: u64, worker: usize) -> String {
    let mut id = String::with_capacity(32);
    id.push_str("tg-");
    hex(&mut id, boot_id, 1);
    id.push('-');
    id.push_str(itoa::Buffer::new().format(worker));
    id.push('-');
    id
}

/// `prefix` and the counter.
fn request_id_after(prefix: &str, n: u64) -> String {
    let mut id = String::with_capacity(prefix.len() + 16);
    id.push_str(prefix);
    hex(&mut id, n, 10);
    id
}

/// Most accuracy samples a worker takes per second (`Worker::samples_accuracy`).
const ACCURACY_SAMPLES_PER_SECOND: u32 = 20;

/// Everything a worker thread is started with.
pub struct WorkerSeed {
    pub index: usize,
    pub cfg: Arc<Config>,
    pub shared: Arc<Shared>,
    pub ledger: Sender<ToWriter>,
    pub listener: std::net::TcpListener,
}

/// Runs a worker on the current thread until shutdown.
/// A seed for the worker's weighted draws: OS randomness, else the clock; distinct per worker.
fn route_seed(index: usize) -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = now.to_le_bytes();
    }
    u64::from_le_bytes(b) ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

pub fn run(seed: WorkerSeed) -> std::io::Result<()> {
    let driver = seed.cfg.io_driver;
    let entries = seed.cfg.uring_entries;
    block_on(driver, entries, move |name| serve(seed, name))
}

/// Builds the chosen runtime and runs `make(driver_name)` on it.
fn block_on<F: Future<Output = std::io::Result<()>>>(
    driver: IoDriver,
    entries: u32,
    make: impl FnOnce(&'static str) -> F,
) -> std::io::Result<()> {
    let want_uring = match driver {
        IoDriver::IoUring => true,
        IoDriver::Epoll => false,
        IoDriver::Auto => monoio::utils::detect_uring(),
    };
    if want_uring {
        // Completions are posted when the worker enters the kernel to wait (monoio's park
        // always asks for events), not by interrupting it: see `uring_setup`.
        let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(entries)
            .uring_builder(uring_setup())
            .enable_timer()
            .build()
            .or_else(|e| {
                tracing::debug!(error = %e, "io_uring without deferred task work");
                monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .with_entries(entries)
                    .enable_timer()
                    .build()
            });
        match built {
            Ok(mut rt) => return rt.block_on(make("io_uring")),
            Err(e) if driver == IoDriver::Auto => {
                tracing::warn!(error = %e, "io_uring runtime failed to start; using epoll")
            }
            Err(e) => return Err(e),
        }
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()?;
    rt.block_on(make("epoll"))
}

/// The ring's flags. By default the kernel runs a completion's task work by interrupting the
/// thread (an IPI and `task_work` on its way back to user space): a profile of one worker at
/// 64 connections put 1.6 µs per request in `irqentry_exit_to_user_mode`, where nginx had
/// none. `DEFER_TASKRUN` (which needs `SINGLE_ISSUER`: the worker thread that built the ring
/// is the only one that submits) runs it when the worker waits for completions instead, which
/// monoio does every time it runs out of tasks. Kernels before 6.1 refuse the flags; the
/// worker then builds a plain ring.
fn uring_setup() -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    b.setup_single_issuer().setup_defer_taskrun();
    b
}

async fn serve(seed: WorkerSeed, driver: &'static str) -> std::io::Result<()> {
    let listener = monoio::net::TcpListener::from_std(seed.listener)?;
    let cfg = seed.cfg;
    let journal = if cfg.ledger.journal {
        match Journal::open(&cfg.data_dir, seed.index, seed.shared.boot_id) {
            Ok(j) => Some(j),
            Err(e) => {
                tracing::error!(worker = seed.index, error = %e, "cannot open the usage journal; this worker's records are not crash-safe");
                None
            }
        }
    } else {
        None
    };
    let cfg_budget = cfg.limits.max_buffered_bytes_per_worker;
    let provider_slots = seed.shared.snapshot.load().provider_slots();
    let replicas = seed.shared.metrics.replicas.clone();
    let shared_boot_id = seed.shared.boot_id;
    let w = Rc::new(Worker {
        index: seed.index,
        pool: RefCell::new(PoolLocal::new(
            provider_slots,
            cfg.upstream.pool_max_idle,
            cfg.upstream.pool_idle_timeout,
        )),
        boot: cfg,
        shared: seed.shared,
        ledger: LedgerLocal::new(seed.ledger, journal),
        driver,
        next_id: Cell::new(0),
        id_prefix: request_id_prefix(shared_boot_id, seed.index),
        accuracy_tick: Cell::new(0),
        accuracy_next: Cell::new(None),
        in_flight: Cell::new(0),
        connections: Cell::new(0),
        released: Cell::new(0),
        body_budget: BodyBudget::new(cfg_budget),
        abort: AbortSignal::default(),
        idle: Rc::default(),
        upstream_clock: Rc::default(),
        wall: crate::clock::WallAnchor::default(),
        cancellers: RefCell::default(),
        route: crate::phase::route::RouteLocal::new(route_seed(seed.index), replicas),
    });
    let _ = w.shared.io_driver.set(driver);
    w.shared
        .prefix_indexes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(w.route.balance.index.clone());
    tracing::info!(worker = w.index, driver, "worker started");
    w.shared.workers_ready.fetch_add(1, Ordering::AcqRel);
    monoio::spawn(housekeeping(w.clone()));
    monoio::spawn(w.idle.clone().run());
    monoio::spawn(w.upstream_clock.clone().run());
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                if w.connections.get() >= w.boot.limits.max_connections_per_worker {
                    monoio::spawn(refuse(w.clone(), stream));
                    continue;
                }
                let panicked = w.clone();
                monoio::spawn(CatchPanic {
                    task: serve_conn(w.clone(), ClientConn::new(stream), peer),
                    on_panic: move || {
                        let g = &panicked.shared.metrics.globals;
                        g.task_panics.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            worker = panicked.index,
                            "a connection task panicked; that connection is closed, the worker goes on"
                        );
                    },
                });
            }
            Err(e) => {
                if w.shared.shutting_down.load(Ordering::Acquire) {
                    break;
                }
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let stop = Instant::now();
    // Idle connections close now; one whose request raced the stop is answered first. Waiting
    // for the connections (not only the requests) is what keeps that request: its bytes were
    // accepted, and dropping the connection unread would reset it.
    w.idle.close();
    while (w.in_flight.get() > 0 || w.connections.get() > 0)
        && stop.elapsed() < w.boot.shutdown_grace
    {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    if w.in_flight.get() > 0 {
        // Cut what is still running: each request's settle guard records it as `shutdown`.
        tracing::warn!(
            worker = w.index,
            requests = w.in_flight.get(),
            "shutdown grace expired; cutting the requests still running"
        );
        w.abort.fire();
        let cut = Instant::now();
        while w.in_flight.get() > 0 && cut.elapsed() < ABORT_WAIT {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Records still gathered on this core go to the writer before the runtime is dropped.
    w.ledger.close();
    tracing::info!(worker = w.index, "worker stopped");
    Ok(())
}

/// Answers a request whose body could not be read (and records it when it was an API call).
async fn answer_body_error(
    w: &Worker,
    client: &mut ClientConn,
    head: crate::http::request::RequestHead,
    snap: Arc<crate::snapshot::Snapshot>,
    e: crate::error::GateError,
) {
    match Api::from_path(head.path()) {
        Some(api) => {
            let mut ctx = RequestCtx::new(
                w.next_request_id(),
                Instant::now(),
                api,
                Request {
                    head,
                    body: Bytes::new(),
                    snap,
                    reservation: Reservation::none(),
                },
            );
            ctx.client_keep_alive = false;
            pipeline::fail(w, client, &mut ctx, &e).await;
            settle::run(w, &mut ctx, client.attribution());
        }
        None => {
            let _ = client.respond_error(&e, Wire::OpenAi, false, None).await;
        }
    }
}

/// The client's cgroup and what the attribution rules make of it, once per connection. A
/// cgroup seen before is a cache hit; a new one walks the cgroup tree once (on this worker:
/// admission needs the answer before the first request).
fn kernel_client(w: &Worker, attribution: Arc<crate::kernel::ConnAttribution>) -> KernelClient {
    let cgroup = w
        .shared
        .cgroups
        .as_ref()
        .and_then(|r| r.resolve(attribution.cgroup_id));
    let cg = cgroup.as_deref();
    let facts = crate::config::KernelFacts {
        cgroup_path: cg.map(|c| c.path.as_str()),
        comm: Some(attribution.comm.as_str()),
        container_id: cg.and_then(|c| c.identity.container_id.as_deref()),
        pod_uid: cg.and_then(|c| c.identity.pod_uid.as_deref()),
    };
    let snap = w.shared.snapshot.load();
    let identity = snap
        .cfg
        .attribution
        .rule_for(&facts)
        .map(|rule| Box::new(rule.fills.clone()));
    KernelClient {
        attribution,
        cgroup,
        identity,
    }
}

/// Phase 1, accept, continues here: one task per client connection, serving its requests in
/// order. A local client's kernel attribution (pid, comm, cgroup, original destination) is
/// looked up here, once per connection (one map lookup syscall), never per request.
///
/// A plain function returning an `async move` block, not an `async fn`: an `async fn` copies
/// its by-value arguments into locals, so every connection's task held the `ClientConn` twice
/// (168 bytes); the block uses the captured connection in place. The task's state is what an
/// idle connection costs (`idle_task_state_stays_small` below).
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn serve_conn(
    w: Rc<Worker>,
    mut client: ClientConn,
    peer: std::net::SocketAddr,
) -> impl std::future::Future<Output = ()> {
    // Counted in here (before the next accept checks the cap) and out on drop, so a connection
    // that ends in a panic is not counted forever. Made here, not in the block: the block captures it in place of the worker (a guard made
    // inside would be a second slot in every connection's task).
    let w = OpenConnection::new(w);
    // Before the block: the peer's address is not kept in every connection's task.
    if let Some(reader) = &w.shared.attribution {
        client.kernel = reader
            .lookup(peer)
            .map(|a| Box::new(kernel_client(&w, Arc::new(a))));
    }
    async move {
        let deadline = w.idle.deadline();
        // A connection that has not carried a request yet is owed one answer even when the worker
        // stops: its client connected to send a request and, not having sent one, cannot tell a
        // close from a failure (a reused keep-alive connection's client can, and retries).
        let mut served = false;
        loop {
            // Whether the wait for the next request may end in a close (always, unless stopping).
            // A plain expression, not a closure: a closure's captures would sit in the task.
            if client.buf.is_empty() && (served || !stopping(&w)) {
                // Idle between requests: a small wait; the buffer goes back if it lasts
                // (read.rs). Once the worker stops, the wait ends at once, keeping bytes that
                // already came. Boxed: the read with a buffer is the larger state and lasts one
                // second at most; a long-idle connection's task holds only the small
                // `read::idle_wait` on the worker's idle clock (`http/idle.rs`).
                // The read's result is matched in a statement of its own: a match scrutinee
                // lives to the end of the match, so awaiting the idle wait in an arm kept it
                // (16 bytes) in every idle connection's task.
                // A fresh connection, and every connection of a crowded worker, skips the read
                // with a buffer and waits for its bytes in the small wait, as nginx does: a wave
                // of connections holds no read buffers, at one more readiness wait per request.
                let quiet = if !served
                    || w.connections.get() > w.boot.limits.buffered_wait_connections_per_worker
                {
                    read::arm_idle_wait(&mut client, &deadline, &w);
                    true
                } else {
                    match boxed(|| read::first_read(&mut client, &deadline, &w)).await {
                        Ok(FirstRead::Ready) => false,
                        Ok(FirstRead::Quiet) => true,
                        Ok(FirstRead::Closed) | Err(_) => break,
                    }
                };
                if quiet
                    && read::idle_wait(&client, &deadline).await.is_err()
                    && (served || !stopping(&w))
                {
                    break;
                }
            }
            // One box for the read and its answer: nothing of either sits in an idle connection's
            // task (a request result held across an await here reserved ~200 bytes in every one).
            if !boxed(|| next_request(&w, &mut client)).await {
                break;
            }
            // The connection goes on only after a request was read and answered.
            served = true;
        }
    }
}

/// `make()`'s future, built in its box. `Box::pin(f())` builds the future on the stack and then
/// copies all of it, its size being its largest state's, into the box: for `next_request`,
/// ~8 KB per request when its first state holds two references (callgrind: ~8,400 of the
/// worker's ~58,700 instructions per request). Allocating first lets the compiler build the
/// future in place.
fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    let mut slot = Box::<F>::new_uninit();
    slot.write(make());
    // SAFETY: `write` initialised the value.
    Box::into_pin(unsafe { slot.assume_init() })
}

/// The agent is stopping: connections close after their current request.
fn stopping(w: &Worker) -> bool {
    w.shared.shutting_down.load(Ordering::Relaxed)
}

/// Reads the next request and answers it; returns whether the connection goes on.
async fn next_request(w: &Worker, client: &mut ClientConn) -> bool {
    let read = read::read_request(client, &w.shared.snapshot, &w.body_budget).await;
    answer(w, client, read, stopping(w)).await
}

/// Answers what reading the next request produced; returns whether the connection goes on.
async fn answer(
    w: &Worker,
    client: &mut ClientConn,
    read: Result<read::Request, ReadEnd>,
    stopping: bool,
) -> bool {
    match read {
        Ok(mut req) => {
            if stopping {
                // Answered with `Connection: close`: the next request goes elsewhere.
                req.head.keep_alive = false;
            }
            let started = Instant::now();
            let in_flight = InFlight::new(w);
            let keep = monoio::select! {
                keep = pipeline::handle(w, client, req, started) => keep,
                // Dropping the request future runs its settle guard.
                _ = w.abort.fired() => false,
            };
            drop(in_flight);
            keep
        }
        Err(ReadEnd::Closed) => false,
        Err(ReadEnd::Error(e)) => {
            let _ = client.respond_error(&e, Wire::OpenAi, false, None).await;
            false
        }
        Err(ReadEnd::BodyError(head, snap, e)) => {
            answer_body_error(w, client, head, snap, e).await;
            false
        }
    }
}

/// One open client connection, for the gauges and the per-worker cap; its task's handle on
/// the worker.
struct OpenConnection(Rc<Worker>);

impl OpenConnection {
    /// Counts the connection in (`Drop` counts it out).
    fn new(w: Rc<Worker>) -> OpenConnection {
        w.connections.set(w.connections.get() + 1);
        let globals = &w.shared.metrics.globals;
        globals.connections_open.fetch_add(1, Ordering::Relaxed);
        globals.connections_total.fetch_add(1, Ordering::Relaxed);
        OpenConnection(w)
    }
}

impl std::ops::Deref for OpenConnection {
    type Target = Worker;
    fn deref(&self) -> &Worker {
        &self.0
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let w = &self.0;
        w.shared
            .metrics
            .globals
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
        w.connections.set(w.connections.get() - 1);
        w.released(CONNECTION_BYTES);
    }
}

/// What a closed connection gives back, roughly (its task, buffers, socket state).
const CONNECTION_BYTES: usize = 8 * 1024;
/// Freed bytes after which free pages are handed back (checked once a second).
const TRIM_AFTER: usize = 4 * 1024 * 1024;

impl Worker {
    /// Counts memory this worker freed (closed connections, buffers of idle ones).
    pub fn released(&self, bytes: usize) {
        self.released.set(self.released.get() + bytes);
    }
}

/// The worker's once-a-second chores. It publishes the prefix balancer's and the batch
/// class's figures to its own metrics shard. If this worker freed enough memory since the last
/// time, it hands the free pages back to the system now rather than after jemalloc's decay
/// (`alloc.rs`), so RSS falls right after a wave of connections closes (measured with glibc,
/// before any trim: 5,000 idle connections left 60 MB behind after they closed). Rare (a mass
/// close, many connections going idle at once), never per request.
async fn housekeeping(w: Rc<Worker>) {
    while !w.shared.shutting_down.load(Ordering::Relaxed) {
        monoio::time::sleep(Duration::from_secs(1)).await;
        // The prefix balancer's figures, for /metrics (its own shard: no shared cache line).
        if let Some(shard) = w.shared.metrics.shards.get(w.index) {
            let b = &w.route.balance;
            shard.prefix[0].store(b.lookups.get(), Ordering::Relaxed);
            shard.prefix[1].store(b.hits.get(), Ordering::Relaxed);
            shard.prefix[2].store(b.index().len() as u64, Ordering::Relaxed);
            let r = &w.route;
            shard.batch[0].store(r.batch_waiting.get(), Ordering::Relaxed);
            shard.batch[1].store(r.batch_waited.get(), Ordering::Relaxed);
            shard.batch[2].store(r.batch_deferred.get(), Ordering::Relaxed);
        }
        if w.released.get() >= TRIM_AFTER {
            w.released.set(0);
            crate::alloc::release_free_memory();
        }
    }
}

/// One request being handled (a stopping worker waits for these).
struct InFlight<'a>(&'a Worker);

impl<'a> InFlight<'a> {
    fn new(w: &'a Worker) -> Self {
        w.in_flight.set(w.in_flight.get() + 1);
        InFlight(w)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
    }
}

/// A connection task that contains its panics: a bug reached by one request closes that
/// connection (its state is dropped, counters and budget reservations given back by their
/// guards) instead of unwinding through the worker's runtime and taking every other connection
/// on the core with it. `on_panic` reports it.
struct CatchPanic<F, P> {
    task: F,
    on_panic: P,
}

impl<F: Future<Output = ()>, P: FnMut()> Future for CatchPanic<F, P> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: `task` is structurally pinned: it is never moved out of `self`, and `self` is
        // pinned, so projecting to a pinned reference to it is sound. `on_panic` is not pinned.
        let (task, on_panic) = unsafe {
            let this = self.get_unchecked_mut();
            (Pin::new_unchecked(&mut this.task), &mut this.on_panic)
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| task.poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                on_panic();
                Poll::Ready(())
            }
        }
    }
}

/// Answers a connection over the worker's cap with a 503 and closes it, without reading its
/// request: holding it open to read would spend what the cap protects.
async fn refuse(w: Rc<Worker>, stream: monoio::net::TcpStream) {
    w.shared
        .metrics
        .globals
        .connections_refused
        .fetch_add(1, Ordering::Relaxed);
    let e = crate::error::GateError::new(
        crate::error::ErrorKind::Overloaded { retry_after_s: 1 },
        "the gateway holds too many connections right now; retry shortly",
    );
    let mut client = ClientConn::new(stream);
    let _ = monoio::time::timeout(
        Duration::from_secs(1),
        client.respond_error(&e, Wire::OpenAi, false, None),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn request_ids_read_as_format_writes_them(boot in proptest::prelude::any::<u64>(), worker in 0usize..1000, n in proptest::prelude::any::<u64>()) {
            for (b, n) in [(boot, n), (boot >> 40, n >> 30), (0, 0), (boot, n & 0xff)] {
                proptest::prop_assert_eq!(request_id(b, worker, n), format!("tg-{b:x}-{worker}-{n:010x}"));
            }
        }
    }

    /// The size of the future a function returns, without calling it.
    fn future_size<A, B, C, R>(_f: fn(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// Every idle keep-alive connection holds its task, whose state is this future. monoio's
    /// task adds 56 bytes (header, stage tag, trailer, the panic hook), so up to 264 bytes the
    /// task sits in jemalloc's 320-byte class. It was 832 bytes (a request result, closures and
    /// a second copy of the connection), then 416 (the 512-byte class), then 320 (384), then
    /// 264: the peer's address left the connection, the kernel's facts became one pointer,
    /// and the idle wait stopped keeping a second reference to its deadline.
    #[test]
    fn idle_task_state_stays_small() {
        let size = future_size(serve_conn);
        assert!(size <= 264, "serve_conn's state grew to {size} bytes");
        let conn = std::mem::size_of::<ClientConn>();
        assert!(conn <= 120, "ClientConn grew to {conn} bytes");
    }

    /// A task that panics ends alone: the runtime keeps running the tasks next to it.
    #[test]
    fn a_panicking_task_does_not_take_the_runtime_down() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let caught = Rc::new(Cell::new(0));
        let done = rt.block_on({
            let caught = caught.clone();
            async move {
                let c = caught.clone();
                let bad = monoio::spawn(CatchPanic {
                    task: async {
                        monoio::time::sleep(Duration::from_millis(1)).await;
                        panic!("a bug reached by one request");
                    },
                    on_panic: move || c.set(c.get() + 1),
                });
                let good = monoio::spawn(async {
                    monoio::time::sleep(Duration::from_millis(5)).await;
                    42
                });
                bad.await;
                good.await
            }
        });
        assert_eq!((done, caught.get()), (42, 1));
    }
}
