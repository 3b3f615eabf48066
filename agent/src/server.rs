//! Starts and stops the agent: binds the per-core listeners, starts one worker thread per core
//! and the control thread (ledger writer, estimates, DNS refresh), waits for SIGINT/SIGTERM,
//! then drains workers and flushes the ledger before returning.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::ledger;
use crate::telemetry::metrics::Metrics;
use crate::upstream::resolve::Resolved;
use crate::upstream::tls;
use crate::worker::{self, WorkerSeed};

/// State shared by all workers: atomics and read-only data only.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub resolved: Resolved,
    /// Distinguishes request ids across restarts.
    pub boot_id: u64,
    pub workers_ready: AtomicUsize,
    pub shutting_down: AtomicBool,
    /// What the kernel side is doing, for /readyz.
    pub kernel_status: String,
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
    dns: std::thread::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, flushes the ledger.
    pub fn stop(self) {
        self.shared.shutting_down.store(true, Ordering::Release);
        for fd in &self.listener_fds {
            // SAFETY: shutdown on a listening socket we own wakes its pending accept; the fd
            // stays open until the worker drops its listener.
            unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
        }
        for w in self.workers {
            let _ = w.join();
        }
        // Workers held the only senders: the writer now flushes and exits.
        let _ = self.control.join();
        let _ = self.dns.join();
    }
}

/// Starts the agent and returns once every worker is accepting.
pub fn start(cfg: Config, kernel_status: String) -> anyhow::Result<Running> {
    let cfg = Arc::new(cfg);
    let conn = ledger::open(&cfg.data_dir)
        .with_context(|| format!("opening the ledger in {}", cfg.data_dir.display()))?;
    let metrics = Arc::new(Metrics::new(
        cfg.workers + 1,
        cfg.models.iter().map(|m| m.name.clone()).collect(),
        cfg.providers.iter().map(|p| p.name.clone()).collect(),
    ));
    let mut tls_by_provider = Vec::with_capacity(cfg.providers.len());
    for p in &cfg.providers {
        tls_by_provider.push(if p.tls {
            Some(tls::for_provider(p).map_err(|e| anyhow::anyhow!("provider {}: {e}", p.name))?)
        } else {
            None
        });
    }
    let boot_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        ^ (u64::from(std::process::id()) << 44);
    let shared = Arc::new(Shared {
        metrics: metrics.clone(),
        resolved: Resolved::new(&cfg.providers),
        boot_id,
        workers_ready: AtomicUsize::new(0),
        shutting_down: AtomicBool::new(false),
        kernel_status,
    });

    let (tx, rx) = mpsc::channel();
    let settings = cfg.ledger.clone();
    let control_metrics = metrics.clone();
    let control = std::thread::Builder::new()
        .name("tollgate-control".into())
        .spawn(move || ledger::writer::run(conn, rx, settings, control_metrics))?;

    let first = bind_reuseport(cfg.listen).with_context(|| format!("binding {}", cfg.listen))?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..cfg.workers {
        listeners.push(bind_reuseport(addr).with_context(|| format!("binding {addr}"))?);
    }
    let listener_fds: Vec<i32> = listeners.iter().map(|l| l.as_raw_fd()).collect();
    let mut workers = Vec::with_capacity(cfg.workers);
    for (index, listener) in listeners.into_iter().enumerate() {
        let seed = WorkerSeed {
            index,
            cfg: cfg.clone(),
            shared: shared.clone(),
            tls: tls_by_provider.clone(),
            ledger: tx.clone(),
            listener,
        };
        workers.push(
            std::thread::Builder::new()
                .name(format!("tollgate-w{index}"))
                .spawn(move || {
                    if let Err(e) = worker::run(seed) {
                        tracing::error!(worker = index, error = %e, "worker failed to start");
                    }
                })?,
        );
    }
    drop(tx);

    let dns_shared = shared.clone();
    let dns_cfg = cfg.clone();
    let dns = std::thread::Builder::new()
        .name("tollgate-dns".into())
        .spawn(move || {
            let mut waited = Duration::ZERO;
            while !dns_shared.shutting_down.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(200));
                waited += Duration::from_millis(200);
                if waited >= Duration::from_secs(30) {
                    dns_shared.resolved.refresh(&dns_cfg.providers);
                    waited = Duration::ZERO;
                }
            }
        })?;

    let running = Running {
        addr,
        shared,
        listener_fds,
        workers,
        control,
        dns,
    };
    for _ in 0..500 {
        if running.shared.workers_ready.load(Ordering::Acquire) == cfg.workers {
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

/// `tollgate serve`: runs until SIGINT or SIGTERM.
pub fn serve(cfg: Config, kernel_status: String) -> anyhow::Result<()> {
    let set = block_signals();
    let workers = cfg.workers;
    let running = start(cfg, kernel_status)?;
    tracing::info!(addr = %running.addr, workers, "tollgate listening");
    println!("tollgate listening on {}", running.addr);
    let sig = wait_for_signal(&set);
    tracing::info!(
        signal = sig,
        "stopping: draining in-flight requests and flushing the ledger"
    );
    running.stop();
    tracing::info!("stopped");
    Ok(())
}
