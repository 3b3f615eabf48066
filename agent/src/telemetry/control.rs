//! The control-plane telemetry thread: replica load scrapes and GPU samples.
//!
//! Why a thread of its own: both block (HTTP with timeouts, NVML calls into the driver) and
//! neither may delay the ledger writer on the control thread or, worse, a worker. What it does,
//! every `replicas.scrape_interval_ms` (replicas) and every second (GPUs): read, publish into the
//! [`ReplicaBoard`] / [`GpuBoard`] that `/metrics`, `/readyz` and future routing read lock-free,
//! and write the pinned `tg_replica` / `tg_gpu` maps when the kernel counters are active.
//! Every 50 ms it also watches the ledger writer, which runs in the idle CPU class, and moves
//! it back to the normal one when a busy node starves it (`ledger/priority.rs`).
//! Never on the request path; failures are logged once per change (failing, recovered), counted,
//! and never stop the agent.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::gpu::{GpuBoard, GpuError, GpuSource, GpuStatus, Nvml};
use super::replicas::{self, ReplicaBoard, ReplicaState};
use crate::config::{Config, Provider};
use crate::kernel::CounterWriter;
use crate::shared::Shared;

/// How often GPUs are sampled.
pub const GPU_INTERVAL: Duration = Duration::from_secs(1);
/// How often the scheduler's figures are written to `tg_sched` / `tg_queue`.
pub const SCHED_INTERVAL: Duration = Duration::from_secs(1);

/// Scrapes the configured replicas and publishes their load.
pub struct ReplicaScraper {
    providers: Vec<Provider>,
    states: Vec<ReplicaState>,
    board: Arc<ReplicaBoard>,
    counters: Option<CounterWriter>,
    timeout: Duration,
    /// Whether a map write failure was already logged.
    map_warned: bool,
}

impl ReplicaScraper {
    pub fn new(cfg: &Config, board: Arc<ReplicaBoard>, counters: Option<CounterWriter>) -> Self {
        let targets = replicas::targets(cfg);
        let states = targets
            .iter()
            .map(|(i, p)| ReplicaState {
                provider: p.name.clone(),
                provider_index: *i,
                load: None,
                updated: None,
                errors_total: 0,
                last_error: None,
            })
            .collect();
        let providers = targets.into_iter().map(|(_, p)| p.clone()).collect();
        let s = Self {
            providers,
            states,
            board,
            counters,
            timeout: cfg.replicas.timeout,
            map_warned: false,
        };
        s.board.publish(s.states.clone());
        s
    }

    /// Whether there is anything to scrape.
    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Scrapes every replica once; `addrs(i)` gives provider `i`'s resolved addresses.
    pub fn scrape_once(&mut self, addrs: &dyn Fn(usize) -> Arc<Vec<SocketAddr>>) {
        for (p, st) in self.providers.iter().zip(self.states.iter_mut()) {
            let result = replicas::scrape(p, &addrs(st.provider_index), self.timeout);
            match result {
                Ok(load) => {
                    if st.last_error.is_some() {
                        tracing::info!(provider = %p.name, "replica metrics readable again");
                    }
                    st.load = Some(load);
                    st.updated = Some(Instant::now());
                    st.last_error = None;
                    if let Some(c) = &self.counters {
                        if let Err(e) = c.set_replica_load(&p.name, load.to_map_value()) {
                            if !self.map_warned {
                                tracing::warn!(provider = %p.name, "writing tg_replica: {e}");
                                self.map_warned = true;
                            }
                        }
                    }
                }
                Err(e) => {
                    let first = st.last_error.is_none();
                    st.errors_total += 1;
                    st.load = None;
                    let msg = e.to_string();
                    if first {
                        tracing::warn!(
                            provider = %p.name,
                            "cannot read replica load from {}/metrics: {msg} (retrying every scrape; \
                             set replicas.scrape: false to stop)",
                            p.base_path
                        );
                    }
                    st.last_error = Some(msg);
                }
            }
        }
        self.board.publish(self.states.clone());
    }
}

/// Samples GPUs and publishes their figures.
pub struct GpuSampler {
    source: Box<dyn GpuSource>,
    board: Arc<GpuBoard>,
    counters: Option<CounterWriter>,
    /// Whether a sampling or map write failure was already logged.
    failing: bool,
    map_warned: bool,
}

impl GpuSampler {
    pub fn new(
        source: Box<dyn GpuSource>,
        board: Arc<GpuBoard>,
        counters: Option<CounterWriter>,
    ) -> Self {
        Self {
            source,
            board,
            counters,
            failing: false,
            map_warned: false,
        }
    }

    /// Samples once: publishes the figures (and writes `tg_gpu`), or marks GPU counters off.
    pub fn sample_once(&mut self) -> Result<usize, GpuError> {
        match self.source.devices() {
            Ok(samples) => {
                if self.failing {
                    tracing::info!("GPU figures readable again");
                    self.failing = false;
                }
                if let Some(c) = &self.counters {
                    for s in &samples {
                        if let Err(e) = c.set_gpu_stats(s.index, s.to_map_value()) {
                            if !self.map_warned {
                                tracing::warn!(gpu = s.index, "writing tg_gpu: {e}");
                                self.map_warned = true;
                            }
                        }
                    }
                }
                let n = samples.len();
                self.board.publish(samples);
                self.board.set_status(GpuStatus::Active { devices: n });
                Ok(n)
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!("reading GPU figures: {e}");
                    self.failing = true;
                }
                self.board.publish(Vec::new());
                self.board.set_status(GpuStatus::Inactive {
                    reason: e.to_string(),
                });
                Err(e)
            }
        }
    }
}

/// Opens NVML for the agent; when it cannot, logs once (info: a host without a GPU is normal)
/// and marks GPU counters off on `board`.
pub fn open_gpu(board: &GpuBoard) -> Option<Box<dyn GpuSource>> {
    match Nvml::open() {
        Ok(nvml) => Some(Box::new(nvml)),
        Err(e) => {
            tracing::info!("GPU counters are off: {e}");
            board.set_status(GpuStatus::Inactive {
                reason: e.to_string(),
            });
            None
        }
    }
}

/// The thread body: runs until `shared.shutting_down`.
pub fn run(
    shared: Arc<Shared>,
    cfg: Arc<Config>,
    counters: Option<CounterWriter>,
    gpu: Option<Box<dyn GpuSource>>,
    mut watchdog: crate::ledger::priority::Watchdog,
) {
    let metrics = &shared.metrics;
    let mut snap = shared.snapshot.load_full();
    let mut scraper = ReplicaScraper::new(&snap.cfg, metrics.replicas.clone(), counters.clone());
    let mut sampler = gpu.map(|g| GpuSampler::new(g, metrics.gpus.clone(), counters.clone()));
    let mut sched = counters.clone().map(super::sched::SchedMaps::new);
    let interval = cfg.replicas.scrape_interval;
    let mut next_scrape = Instant::now();
    let mut next_gpu = Instant::now();
    let mut next_sched = Instant::now();
    let wall_ms = crate::governance::window::now_ms;
    // GPU cost lines of self-hosted replicas (`gpu_accounting:`, as the agent started).
    let mut gpu_cost = cfg
        .gpu_accounting
        .clone()
        .map(|g| crate::ledger::gpu_cost::Accountant::new(g, &cfg.data_dir, wall_ms()));
    while !shared.shutting_down.load(Ordering::Acquire) {
        let now = Instant::now();
        // A reload may add or remove replicas: scrape what the current configuration lists.
        if shared.snapshot.load().generation != snap.generation {
            snap = shared.snapshot.load_full();
            scraper = ReplicaScraper::new(&snap.cfg, metrics.replicas.clone(), counters.clone());
        }
        if !scraper.is_empty() && now >= next_scrape {
            let addrs = |i: usize| {
                snap.providers
                    .get(i)
                    .map(|p| p.addrs.load_full())
                    .unwrap_or_default()
            };
            scraper.scrape_once(&addrs);
            if let Some(a) = gpu_cost.as_mut() {
                a.observe(&metrics.replicas);
            }
            next_scrape = (next_scrape + interval).max(Instant::now());
        }
        if let Some(a) = gpu_cost.as_mut() {
            a.close_due(wall_ms(), false);
        }
        if let Some(s) = sampler.as_mut() {
            if now >= next_gpu {
                if s.sample_once().is_ok() {
                    if let Some(a) = gpu_cost.as_mut() {
                        a.observe_gpus(&metrics.gpus.samples());
                    }
                }
                next_gpu = (next_gpu + GPU_INTERVAL).max(Instant::now());
            }
        }
        if let Some(s) = sched.as_mut() {
            if now >= next_sched {
                s.write(&shared);
                next_sched = (next_sched + SCHED_INTERVAL).max(Instant::now());
            }
        }
        // The ledger writer runs in the idle CPU class; this thread, at the normal policy,
        // moves it back when a busy node starves it (`ledger/priority.rs`).
        watchdog.look(
            metrics.globals.ledger_queue.load(Ordering::Relaxed),
            cfg.ledger.flush_interval,
        );
        let mut wake = now + Duration::from_secs(3600);
        if sched.is_some() {
            wake = wake.min(next_sched);
        }
        if !scraper.is_empty() {
            wake = wake.min(next_scrape);
        }
        if sampler.is_some() {
            wake = wake.min(next_gpu);
        }
        if let Some(a) = &gpu_cost {
            wake = wake.min(now + a.due_in(wall_ms()));
        }
        // Sleep in short steps so a stop is noticed quickly.
        let left = wake.saturating_duration_since(Instant::now());
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
    // The interval running at the stop is cut there, so no GPU time goes unaccounted.
    if let Some(a) = gpu_cost.as_mut() {
        a.close_due(wall_ms(), true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::gpu::GpuSample;
    use crate::telemetry::metrics::Metrics;

    /// The vendor-library boundary: yields the figures it is given.
    struct FakeGpus(Vec<Result<Vec<GpuSample>, ()>>);

    impl GpuSource for FakeGpus {
        fn devices(&mut self) -> Result<Vec<GpuSample>, GpuError> {
            match self.0.remove(0) {
                Ok(v) => Ok(v),
                Err(()) => Err(GpuError::Call {
                    call: "nvmlDeviceGetCount_v2",
                    code: 999,
                }),
            }
        }
    }

    fn sample(index: u32, util: u32, used: u64) -> GpuSample {
        GpuSample {
            index,
            utilization_pct: util,
            memory_used_bytes: used,
            memory_total_bytes: 80 << 30,
        }
    }

    #[test]
    fn gpu_samples_flow_into_gauges_and_status() {
        let metrics = Metrics::new(1, vec![], vec![]);
        let fake = FakeGpus(vec![
            Ok(vec![sample(0, 87, 1 << 30), sample(1, 5, 2 << 30)]),
            Err(()),
            Ok(vec![sample(0, 50, 3 << 30)]),
        ]);
        let mut s = GpuSampler::new(Box::new(fake), metrics.gpus.clone(), None);
        assert_eq!(s.sample_once().unwrap(), 2);
        let text = metrics.render();
        assert!(
            text.contains("tollgate_gpu_utilization_ratio{gpu=\"0\"} 0.87\n"),
            "{text}"
        );
        assert!(
            text.contains("tollgate_gpu_utilization_ratio{gpu=\"1\"} 0.05\n"),
            "{text}"
        );
        assert!(
            text.contains("tollgate_gpu_memory_used_bytes{gpu=\"1\"} 2147483648\n"),
            "{text}"
        );
        assert!(
            text.contains("tollgate_gpu_memory_total_bytes{gpu=\"0\"} 85899345920\n"),
            "{text}"
        );
        assert_eq!(*metrics.gpus.status(), GpuStatus::Active { devices: 2 });

        assert!(s.sample_once().is_err());
        let text = metrics.render();
        assert!(!text.contains("tollgate_gpu_utilization_ratio{"), "{text}");
        assert!(matches!(*metrics.gpus.status(), GpuStatus::Inactive { .. }));
        assert_eq!(metrics.gpus.status().to_json()["active"], false);

        assert_eq!(s.sample_once().unwrap(), 1);
        let text = metrics.render();
        assert!(
            text.contains("tollgate_gpu_utilization_ratio{gpu=\"0\"} 0.5\n"),
            "{text}"
        );
        assert!(!text.contains("{gpu=\"1\"}"), "{text}");
    }

    #[test]
    fn replica_scrapes_flow_into_the_board_and_gauges() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let bodies = [
                "vllm:num_requests_running{model_name=\"a\"} 2\nvllm:num_requests_running{model_name=\"b\"} 1\nvllm:num_requests_waiting 4\nvllm:kv_cache_usage_perc 0.25\n",
                "garbage\n",
            ];
            for body in bodies {
                let (mut s, _) = listener.accept().unwrap();
                let mut b = [0u8; 2048];
                let _ = s.read(&mut b).unwrap();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).unwrap();
            }
        });
        let yaml = format!(
            "providers:\n  - {{ name: vllm-a, kind: openai, base_url: \"http://{addr}\" }}\n  - {{ name: claude, kind: anthropic, base_url: \"http://{addr}\" }}\n  - {{ name: cloud, kind: openai, base_url: \"https://api.example.com/v1\" }}\nreplicas: {{ scrape_interval_ms: 100, timeout_ms: 1000 }}\n"
        );
        let cfg = Config::from_yaml(&yaml, &|_| None).unwrap();
        assert_eq!(cfg.replicas.scrape_interval, Duration::from_millis(100));
        let metrics = Metrics::new(
            1,
            vec![],
            cfg.providers.iter().map(|p| p.name.clone()).collect(),
        );
        let mut scraper = ReplicaScraper::new(&cfg, metrics.replicas.clone(), None);
        let addrs = move |_: usize| Arc::new(vec![addr]);
        scraper.scrape_once(&addrs);
        let board = metrics.replicas.load();
        assert_eq!(
            board.len(),
            1,
            "only the plain-http openai provider: {board:?}"
        );
        let load = board[0].load.expect("scraped");
        assert_eq!(
            (load.running, load.waiting, load.kv_cache_ratio),
            (3.0, 4.0, Some(0.25))
        );
        assert_eq!(
            metrics.replicas.get(0).map(|s| s.provider),
            Some("vllm-a".to_string())
        );
        let text = metrics.render();
        assert!(
            text.contains("tollgate_replica_requests_running{provider=\"vllm-a\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("tollgate_replica_requests_waiting{provider=\"vllm-a\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("tollgate_replica_kv_cache_usage_ratio{provider=\"vllm-a\"} 0.25\n"),
            "{text}"
        );
        assert!(
            text.contains("tollgate_replica_scrape_errors_total{provider=\"vllm-a\"} 0\n"),
            "{text}"
        );

        scraper.scrape_once(&addrs);
        server.join().unwrap();
        let st = metrics.replicas.get(0).unwrap();
        assert!(st.load.is_none() && st.errors_total == 1, "{st:?}");
        let text = metrics.render();
        assert!(
            !text.contains("tollgate_replica_requests_running{"),
            "{text}"
        );
        assert!(
            text.contains("tollgate_replica_scrape_errors_total{provider=\"vllm-a\"} 1\n"),
            "{text}"
        );

        // Scraping off: nothing to do.
        let off = Config::from_yaml(
            &format!("{yaml}\n").replace("scrape_interval_ms: 100", "scrape: false"),
            &|_| None,
        )
        .unwrap();
        assert!(ReplicaScraper::new(&off, Arc::new(ReplicaBoard::default()), None).is_empty());
    }
}
