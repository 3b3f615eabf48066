//! Starts and stops the agent: binds the per-core listeners, loads the kernel side (eBPF
//! interception, attribution and node counters; `kernel.enabled: auto` runs without it when the
//! host refuses, saying so once), starts one worker thread per core and the control thread
//! (ledger writer, estimates, cgroup resolution, node counters), the DNS refresh thread and the
//! telemetry thread (replica load scrapes, GPU samples; `telemetry::control`), the batch
//! thread (Batch API jobs, `batch::runner`), waits for
//! SIGINT/SIGTERM, then drains workers, flushes the ledger and detaches the kernel programs
//! before returning. Nothing here is on the request path.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Config, KernelMode};
use crate::kernel::cgroup::CgroupResolver;
use crate::kernel::{self, Features, Kernel, KernelConfig};
use crate::ledger;
use crate::ledger::enrich::Enricher;
use crate::reload::{Reloader, Trigger};
use crate::snapshot::Registry;
use crate::telemetry::control as telemetry_thread;
use crate::telemetry::metrics::Metrics;
use crate::worker::{self, WorkerSeed};

pub use crate::shared::{KernelReport, Shared};

/// Loads the kernel side for an agent listening on `addr`, unless the configuration turns it
/// off. A refusal is logged once (by `kernel::start`) and the agent runs without it.
fn start_kernel(cfg: &Config, addr: SocketAddr) -> (Option<Kernel>, KernelReport) {
    let mut report = KernelReport {
        mode: cfg.kernel.enabled,
        loaded: false,
        pin_dir: cfg.kernel.pin_dir.clone(),
        features: Features::unavailable("kernel.enabled is off in the configuration"),
        programs: Vec::new(),
        intercept: cfg.intercept.clone(),
        took_over_from: None,
    };
    if cfg.kernel.enabled == KernelMode::Off {
        if !cfg.intercept.is_empty() {
            tracing::warn!(
                "kernel.enabled is off, so the {} intercept address(es) are not intercepted",
                cfg.intercept.len()
            );
        }
        return (None, report);
    }
    let mut kcfg = KernelConfig::new(vec![addr], cfg.intercept.clone());
    kcfg.pin_dir = cfg.kernel.pin_dir.clone();
    kcfg.cgroup_root = cfg.kernel.cgroup_root.clone();
    let (k, features) = kernel::start(&kcfg);
    report.features = features;
    if let Some(k) = &k {
        report.loaded = true;
        report.programs = k.program_ids().to_vec();
        report.took_over_from = k.took_over_from();
    }
    (k, report)
}

/// A listener bound with SO_REUSEPORT so every worker can bind the same address.
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Blocks SIGINT and SIGTERM on this thread (and threads it starts) so `sigwait` can take them.
pub fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it, and
    // pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

pub fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` was initialised by block_signals; `sig` is a valid out pointer.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

/// A running agent, as `serve` hands it to callers that start it in-process (the demo).
pub struct Running {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    listener_fds: Vec<i32>,
    workers: Vec<std::thread::JoinHandle<()>>,
    control: std::thread::JoinHandle<()>,
    /// Tells the ledger writer to commit and exit once the workers are gone.
    writer_tx: std::sync::mpsc::Sender<ledger::writer::ToWriter>,
    /// The writer's CPU class: back to normal when the stop begins (`ledger/priority.rs`).
    writer_class: Arc<ledger::priority::WriterClass>,
    dns: std::thread::JoinHandle<()>,
    /// Replica scrapes and GPU samples.
    telemetry: std::thread::JoinHandle<()>,
    /// The batch thread (Batch API and its jobs), stopped after the workers.
    batch: Option<(
        mpsc::Sender<crate::batch::runner::Msg>,
        std::thread::JoinHandle<()>,
    )>,
    /// Gives back unused leases once the last records are settled.
    cluster: Option<crate::cluster::ClusterThread>,
    /// Shares keys through Redis and publishes usage totals (`cluster/keys.rs`).
    cluster_sync: Option<crate::cluster::keys::SyncThread>,
    /// Detached last, after the ledger (which writes the counters) is flushed.
    kernel: Option<Kernel>,
    /// The operators' listener, when configured.
    pub admin: Option<crate::admin::AdminHandle>,
    /// Applies configuration changes; `None` when the agent runs from an in-memory config.
    pub reloader: Option<Arc<Reloader>>,
    watcher: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// What the kernel side is doing.
    pub fn kernel_report(&self) -> &KernelReport {
        &self.shared.kernel
    }

    /// Stops accepting, lets in-flight requests finish, flushes the ledger, detaches the
    /// kernel programs and removes their pins.
    pub fn stop(self) {
        // From here `/readyz` answers 503 "stopping" (on the admin port, which stays up while
        // the workers drain, so probes and scrapers see the drain rather than a refused port).
        self.shared.shutting_down.store(true, Ordering::Release);
        // Its watchdog ends with the telemetry thread, while the writer still takes the
        // drained workers' records: it leaves the idle class now.
        self.writer_class.normal();
        if let Some(w) = self.watcher {
            let _ = w.join();
        }
        for fd in &self.listener_fds {
            // SAFETY: shutdown on a listening socket we own wakes its pending accept; the fd
            // stays open until the worker drops its listener.
            unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
        }
        for w in self.workers {
            let _ = w.join();
        }
        if let Some(admin) = self.admin {
            admin.stop();
        }
        // Batch lines in flight were drained with the workers; their results are recorded
        // before the batch thread exits (lines not answered are sent again at the next start).
        if let Some((tx, thread)) = self.batch {
            let _ = tx.send(crate::batch::runner::Msg::Stop);
            let _ = thread.join();
        }
        // No worker stores any more: the cache's disk writes are finished.
        if let Some(c) = &self.shared.cache {
            c.stop();
        }
        // Every worker has flushed its records; the writer commits them and exits.
        let _ = self.writer_tx.send(ledger::writer::ToWriter::Stop);
        let _ = self.control.join();
        // The ledger writer has offered its last spans: send them.
        if let Some(x) = &self.shared.otlp {
            x.stop();
        }
        // ... and committed its last rows: one bounded attempt to ship them.
        if let Some(s) = &self.shared.ship {
            s.stop();
        }
        if let Some(c) = self.cluster {
            c.stop();
        }
        if let Some(c) = self.cluster_sync {
            c.stop();
        }
        let _ = self.dns.join();
        let _ = self.telemetry.join();
        if let Some(k) = self.kernel {
            match k.detach() {
                Ok(()) => tracing::info!("kernel programs detached and pins removed"),
                Err(e) => tracing::warn!("detaching the kernel programs: {e}"),
            }
        }
    }
}

/// The exact cache (with its spill to `data_dir`, which indexes what an earlier run stored)
/// and the semantic index.
fn open_caches(
    cfg: &Config,
) -> anyhow::Result<(
    Option<Arc<crate::cache::ExactCache>>,
    Arc<crate::cache::SemanticIndex>,
)> {
    let semantic = Arc::new(crate::cache::SemanticIndex::default());
    let Some(exact) = &cfg.cache.exact else {
        return Ok((None, semantic));
    };
    let store = match exact.spill_max_bytes {
        None => crate::cache::ExactCache::new(exact.max_bytes),
        Some(max_bytes) => {
            let dir = cfg.data_dir.join("cache").join("exact");
            let spill = crate::cache::spill::Spill::start(crate::cache::spill::SpillSettings {
                dir: dir.clone(),
                max_bytes,
                ttl: exact.ttl,
                semantic: cfg
                    .cache
                    .semantic
                    .as_ref()
                    .map(|s| (s.max_entries, semantic.clone())),
            })
            .with_context(|| format!("opening the cache spill in {}", dir.display()))?;
            crate::cache::ExactCache::with_spill(exact.max_bytes, spill)
        }
    };
    Ok((Some(Arc::new(store)), semantic))
}

/// The file a configuration came from, for reloads and its history.
pub struct ConfigSource {
    pub path: std::path::PathBuf,
    /// The bytes the running configuration was parsed from.
    pub text: Vec<u8>,
}

/// Starts the agent and returns once every worker is accepting. With a `source`, the agent
/// reloads when the file changes (and on SIGHUP or the admin API) and keeps its history.
pub fn start(cfg: Config, source: Option<ConfigSource>) -> anyhow::Result<Running> {
    let cfg = Arc::new(cfg);
    let mut conn = ledger::open(&cfg.data_dir)
        .with_context(|| format!("opening the ledger in {}", cfg.data_dir.display()))?;
    // Records a crashed run journalled but never committed are committed before serving.
    let replayed = ledger::journal::replay(&cfg.data_dir, &mut conn)
        .with_context(|| format!("replaying the usage journal in {}", cfg.data_dir.display()))?;
    if replayed > 0 {
        tracing::warn!(
            records = replayed,
            "recovered usage records from the journal of a run that did not stop cleanly"
        );
    }
    let metrics = Arc::new(Metrics::new(
        cfg.workers + 1,
        cfg.models.iter().map(|m| m.name.clone()).collect(),
        cfg.providers.iter().map(|p| p.name.clone()).collect(),
    ));
    // Keys and exceptions from the governance store; budget counters are rebuilt from the
    // ledger (journal replayed above) as the first snapshot binds them.
    let (governor, governance_rx) = crate::governance::Governor::open(&cfg.data_dir)
        .with_context(|| format!("opening the governance store in {}", cfg.data_dir.display()))?;
    for w in crate::config::validate_governance::warnings(&cfg.governance) {
        tracing::warn!("{w}");
    }
    // Provider ids, TLS and first address resolution; the reloader keeps the registry.
    let mut registry = Registry::default();
    let first_snapshot = registry
        .build(cfg.clone(), 1, &metrics, &governor)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let boot_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        ^ (u64::from(std::process::id()) << 44);

    let first = bind_reuseport(cfg.listen).with_context(|| format!("binding {}", cfg.listen))?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..cfg.workers {
        listeners.push(bind_reuseport(addr).with_context(|| format!("binding {addr}"))?);
    }
    let listener_fds: Vec<i32> = listeners.iter().map(|l| l.as_raw_fd()).collect();
    // Connections queued on a listener that closes move to one that stays (a successor's),
    // instead of being reset (`kernel/reuseport.rs`).
    if cfg.kernel.enabled != crate::config::kernel::KernelMode::Off {
        match crate::kernel::reuseport::enable_migration(&listeners[0]) {
            Ok(()) => tracing::info!("queued connections migrate to a successor's listener"),
            Err(e) => tracing::info!(
                "queued connections are reset when this agent stops (no request migration): {e}"
            ),
        }
    }

    // The kernel side needs the bound address (port 0 resolved) to redirect to.
    let (kernel, kernel_report) = start_kernel(&cfg, addr);
    // Loading parses the kernel's BTF (tens of MB of small allocations, all freed by now);
    // hand that memory back so the idle agent stays small.
    crate::alloc::release_free_memory();
    let counters = kernel
        .as_ref()
        .filter(|k| k.features().counters.is_active())
        .map(Kernel::counter_writer);
    let cgroups = kernel
        .as_ref()
        .map(|k| Arc::new(CgroupResolver::new(k.cgroup_root())));
    let enricher = Enricher::new(cgroups.clone(), counters.clone(), cfg.attribution.clone())
        .with_totals(metrics.targets.clone());
    // The Batch API: its store is opened before serving (a broken one stops the start, like the
    // ledger); the thread starts once `shared` exists.
    let batch_store = if cfg.batch_jobs.enabled {
        let store = crate::batch::store::Store::open(&cfg.data_dir)
            .with_context(|| format!("opening the batch store in {}", cfg.data_dir.display()))?;
        let token = crate::batch::internal_token().context("generating the batch token")?;
        let _ = governor.internal_token.set(token.clone());
        let (tx, rx) = mpsc::channel();
        Some((store, token, tx, rx))
    } else {
        None
    };
    let (cache, semantic) = open_caches(&cfg)?;
    let otlp = cfg
        .otlp
        .clone()
        .map(crate::telemetry::otlp::Exporter::start)
        .transpose()
        .context("starting the OTLP exporter")?
        .map(Arc::new);
    // Reads the ledger (journal replayed above) over its own read-only connection.
    let ship = cfg
        .ledger
        .ship
        .clone()
        .map(|s| ledger::ship::Shipper::start(&cfg.data_dir, s))
        .transpose()
        .context("starting the ledger shipping thread")?
        .map(Arc::new);
    let shared = Arc::new(Shared {
        metrics: metrics.clone(),
        snapshot: ArcSwap::from_pointee(first_snapshot),
        boot_id,
        workers_ready: AtomicUsize::new(0),
        shutting_down: AtomicBool::new(false),
        attribution: kernel
            .as_ref()
            .filter(|k| k.features().attribution.is_active())
            .map(Kernel::attribution_reader),
        kernel: kernel_report,
        replicas: metrics.replicas.clone(),
        gpus: metrics.gpus.clone(),
        io_driver: std::sync::OnceLock::new(),
        governor: governor.clone(),
        cgroups,
        prefix_indexes: std::sync::Mutex::default(),
        batch: batch_store
            .as_ref()
            .map(|(_, _, tx, _)| crate::batch::Handle { tx: tx.clone() }),
        cluster: cfg
            .cluster
            .as_ref()
            .map(|c| Arc::new(crate::cluster::ClusterStatus::new(&c.node))),
        cache,
        semantic,
        otlp,
        ship,
    });
    let cluster = crate::cluster::start(&shared)?;
    let cluster_sync = crate::cluster::keys::start(&shared)?;
    let batch = match batch_store {
        Some((store, token, tx, rx)) => {
            let runner = crate::batch::runner::start(
                store,
                shared.clone(),
                &cfg.batch_jobs,
                cfg.workers,
                addr,
                token,
                tx.clone(),
            )?;
            let thread = std::thread::Builder::new()
                .name("tollgate-batch".into())
                .spawn(move || runner.run(rx))?;
            Some((tx, thread))
        }
        None => None,
    };
    let gov_shared = shared.clone();
    std::thread::Builder::new()
        .name("tollgate-governance".into())
        .spawn(move || crate::governance::thread::run(gov_shared, governance_rx))?;
    // NVML is opened here so `/readyz` says from the start whether GPU counters are on.
    let gpu = telemetry_thread::open_gpu(&shared.gpus);

    let (tx, rx) = mpsc::channel();
    let settings = cfg.ledger.clone();
    let control_metrics = metrics.clone();
    let writer_otlp = shared.otlp.clone();
    let own = tx.clone();
    let writer_class = Arc::new(ledger::priority::WriterClass::default());
    let parts = ledger::writer::Parts {
        conn,
        channel: (rx, own),
        settings,
        metrics: control_metrics,
        enricher,
        governor,
        otlp: writer_otlp,
        class: writer_class.clone(),
    };
    let control = std::thread::Builder::new()
        .name("tollgate-control".into())
        // Without an estimator thread, estimates parse prompt JSON (depth-checked, recursive)
        // on this thread.
        .stack_size(worker::STACK_BYTES)
        .spawn(move || ledger::writer::run(parts))?;
    let mut workers = Vec::with_capacity(cfg.workers);
    for (index, listener) in listeners.into_iter().enumerate() {
        let seed = WorkerSeed {
            index,
            cfg: cfg.clone(),
            shared: shared.clone(),
            ledger: tx.clone(),
            listener,
        };
        workers.push(
            std::thread::Builder::new()
                .name(format!("tollgate-w{index}"))
                .stack_size(worker::STACK_BYTES)
                .spawn(move || {
                    if let Err(e) = worker::run(seed) {
                        tracing::error!(worker = index, error = %e, "worker failed to start");
                    }
                })?,
        );
    }
    let writer_tx = tx;

    let dns_shared = shared.clone();
    let dns = std::thread::Builder::new()
        .name("tollgate-upstream".into())
        .spawn(move || crate::upstream::health::run(dns_shared))?;

    let tel_shared = shared.clone();
    let tel_cfg = cfg.clone();
    let watchdog_class = writer_class.clone();
    let telemetry = std::thread::Builder::new()
        .name("tollgate-telemetry".into())
        .spawn(move || {
            let watchdog = ledger::priority::Watchdog::new(watchdog_class);
            telemetry_thread::run(tel_shared, tel_cfg, counters, gpu, watchdog)
        })?;

    let mut running = Running {
        addr,
        shared,
        listener_fds,
        workers,
        control,
        writer_tx,
        writer_class,
        dns,
        telemetry,
        batch,
        cluster,
        cluster_sync,
        kernel,
        admin: None,
        reloader: None,
        watcher: None,
    };
    if let Some(src) = source {
        let reloader = Arc::new(Reloader::new(
            src.path,
            &src.text,
            running.shared.clone(),
            cfg.clone(),
            registry,
        ));
        let watched = reloader.clone();
        running.watcher = Some(
            std::thread::Builder::new()
                .name("tollgate-watch".into())
                .spawn(move || crate::reload::watch::run(watched))?,
        );
        running.reloader = Some(reloader);
    }
    running
        .shared
        .metrics
        .globals
        .config_generation
        .store(1, Ordering::Relaxed);
    for _ in 0..500 {
        if running.shared.workers_ready.load(Ordering::Acquire) == cfg.workers {
            if let Some(settings) = &cfg.admin {
                match crate::admin::start(
                    settings,
                    running.shared.clone(),
                    running.reloader.clone(),
                ) {
                    Ok(admin) => running.admin = Some(admin),
                    Err(e) => {
                        running.stop();
                        anyhow::bail!("binding the admin listener {}: {e}", settings.listen);
                    }
                }
            }
            return Ok(running);
        }
        if running.workers.iter().any(|w| w.is_finished()) {
            running.stop();
            anyhow::bail!("a worker failed to start (see the log above)");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    running.stop();
    anyhow::bail!("workers did not start within 5 s")
}

/// `tollgate serve`: runs until SIGINT or SIGTERM; SIGHUP reloads the configuration file.
pub fn serve(cfg: Config, source: ConfigSource) -> anyhow::Result<()> {
    let set = block_signals();
    let workers = cfg.workers;
    let running = start(cfg, Some(source))?;
    if let Some(admin) = &running.admin {
        tracing::info!(addr = %admin.addr, "admin listener up");
        println!("tollgate admin listening on {}", admin.addr);
    }
    tracing::info!(addr = %running.addr, workers, "tollgate listening");
    println!("tollgate listening on {}", running.addr);
    let sig = loop {
        let sig = wait_for_signal(&set);
        if sig != libc::SIGHUP {
            break sig;
        }
        if let Some(r) = &running.reloader {
            // Failures are logged and counted by the reloader; the agent keeps serving.
            let _ = r.reload(Trigger::Sighup);
        }
    };
    tracing::info!(
        signal = sig,
        "stopping: draining in-flight requests and flushing the ledger"
    );
    running.stop();
    tracing::info!("stopped");
    Ok(())
}
