//! Request metrics in Prometheus text format.
//!
//! Each worker records into its own shard; the scrape merges shards. A shard's mutex is only
//! ever contended by a scrape (once every few seconds), never by another worker, so the hot path
//! pays an uncontended lock and a hash lookup per request. Label values come from configuration
//! (model and provider names) or fixed sets, never from client input, so cardinality is bounded.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::gpu::GpuBoard;
use super::replicas::ReplicaBoard;

use crate::metering::Usage;

/// Histogram upper bounds in seconds.
const BUCKETS_S: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

#[derive(Clone, Default)]
struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    counts: [u64; BUCKETS_S.len() + 1],
    sum_s: f64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS_S
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS_S.len());
        self.counts[i] += 1;
        self.sum_s += s;
    }

    fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += b;
        }
        self.sum_s += o.sum_s;
    }
}

/// `SeriesKey::model` of an intercepted request whose model passed through unconfigured:
/// labelled `intercepted`, so client-chosen names never become label values.
pub const MODEL_INTERCEPTED: u32 = u32::MAX - 1;

/// Labels of one series. `model`/`provider` are indices into the config (u32::MAX: none;
/// [`MODEL_INTERCEPTED`]: an intercepted passthrough).
/// `(class, action, side)` of a guardrail finding counter.
type GuardSeries = (String, &'static str, &'static str);

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SeriesKey {
    pub model: u32,
    pub provider: u32,
    pub api: &'static str,
    pub status: u16,
}

#[derive(Clone, Default)]
struct Series {
    requests: u64,
    tokens: [u64; 5],
    /// What the requests cost, at the catalog's prices.
    micro_usd: u64,
    estimated: u64,
    latency: Histogram,
    ttft: Histogram,
}

const TOKEN_KINDS: [&str; 5] = ["input", "cached", "cache_write", "output", "reasoning"];

/// One core's metrics.
#[derive(Default)]
pub struct Shard {
    series: Mutex<BTreeMap<SeriesKey, Series>>,
    /// The worker's prefix balancer, published by it once a second (`worker::housekeeping`):
    /// lookups, lookups that matched a replica, blocks in its index.
    pub prefix: [AtomicU64; 3],
    /// Batch-class requests: waiting now, that waited, that were deferred (same publisher).
    pub batch: [AtomicU64; 3],
    /// Guardrail findings by (class, action), added as requests settle.
    guard: Mutex<BTreeMap<GuardSeries, u64>>,
    /// Response caches, indexed by [`CacheStat`].
    pub cache: [AtomicU64; CACHE_STATS.len()],
}

/// Cache counters: their metric names and help, in the order of `Shard::cache`.
pub const CACHE_STATS: [(&str, &str, &str); 7] = [
    (
        "tollgate_cache_hits_total",
        "counter",
        "Requests answered from a response cache.",
    ),
    (
        "tollgate_cache_misses_total",
        "counter",
        "Cacheable requests the caches could not answer.",
    ),
    (
        "tollgate_cache_stores_total",
        "counter",
        "Responses stored in a response cache.",
    ),
    (
        "tollgate_cache_saved_tokens_total",
        "counter",
        "Tokens not paid for because a cache answered.",
    ),
    (
        "tollgate_cache_saved_micro_usd_total",
        "counter",
        "What cache hits would have cost, in micro-USD.",
    ),
    (
        "tollgate_cache_semantic_hits_total",
        "counter",
        "Requests the semantic cache answered (also counted in tollgate_cache_hits_total).",
    ),
    (
        "tollgate_cache_embedding_failures_total",
        "counter",
        "Semantic-cache embeddings that failed or ran past cache.semantic.timeout_ms (the request went on as a miss).",
    ),
];

/// Index into `Shard::cache`.
#[derive(Clone, Copy)]
pub enum CacheStat {
    Hits,
    Misses,
    Stores,
    SavedTokens,
    SavedMicroUsd,
    SemanticHits,
    EmbeddingFailures,
}

impl Shard {
    /// Counts `n` findings of `class` handled with `action`.
    pub fn record_guard(&self, class: &str, action: &'static str, side: &'static str, n: u64) {
        let mut map = self.guard.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((class.to_string(), action, side)).or_default() += n;
    }

    pub fn add_cache(&self, stat: CacheStat, n: u64) {
        self.cache[stat as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Records one finished request.
    pub fn record_request(&self, key: SeriesKey, latency: Duration, ttft: Option<Duration>) {
        self.record_answered(key, latency, ttft, None);
    }

    /// A request and, when the provider reported it, its usage and cost: one lock and one walk
    /// of the series map where `record_request` then `record_usage` took two (~190–270 fewer
    /// worker instructions a request, callgrind; its cache misses are the first walk's).
    pub fn record_answered(
        &self,
        key: SeriesKey,
        latency: Duration,
        ttft: Option<Duration>,
        usage: Option<(&Usage, u64)>,
    ) {
        let mut map = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.entry(key).or_default();
        s.requests += 1;
        s.latency.observe(latency);
        if let Some(t) = ttft {
            s.ttft.observe(t);
        }
        if let Some((u, micro_usd)) = usage {
            s.add_usage(u, micro_usd, false);
        }
    }

    /// Adds token usage (possibly later than the request, for estimates).
    pub fn record_usage(&self, key: SeriesKey, u: &Usage, micro_usd: u64, estimated: bool) {
        let mut map = self.series.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key)
            .or_default()
            .add_usage(u, micro_usd, estimated);
    }
}

impl Series {
    fn add_usage(&mut self, u: &Usage, micro_usd: u64, estimated: bool) {
        self.micro_usd += micro_usd;
        let vals = [
            u.input_tokens,
            u.cached_tokens,
            u.cache_write_tokens,
            u.output_tokens,
            u.reasoning_tokens,
        ];
        for (t, v) in self.tokens.iter_mut().zip(vals) {
            *t += v;
        }
        if estimated {
            self.estimated += 1;
        }
    }
}

/// Process-wide gauges and counters that are not per request series.
#[derive(Default)]
pub struct Globals {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    /// Connections answered 503 because their worker was at `limits.max_connections_per_worker`.
    pub connections_refused: AtomicU64,
    /// Connection tasks that panicked (each closed its connection; the worker went on).
    pub task_panics: AtomicU64,
    /// Configuration reloads applied, and refused (the running configuration stayed).
    pub config_reloads: AtomicU64,
    pub config_reload_failures: AtomicU64,
    /// The generation of the configuration serving now (1 at start).
    pub config_generation: AtomicU64,
    pub upstream_retries: AtomicU64,
    pub ledger_written: AtomicU64,
    pub ledger_errors: AtomicU64,
    /// Records at the estimator thread (`ledger/estimator.rs`).
    pub estimator_queue: AtomicU64,
    /// Prompts the serving engine counted (`tokenizer: {engine: true}`), and failed attempts.
    pub estimator_engine_counts: AtomicU64,
    pub estimator_engine_errors: AtomicU64,
    pub ledger_queue: AtomicU64,
    /// Batch API: a job running now (0 or 1), jobs ended by status (completed, failed,
    /// cancelled, expired), and lines recorded in output and error files.
    pub batch_running: AtomicU64,
    pub batch_finished: [AtomicU64; 4],
    pub batch_lines_completed: AtomicU64,
    pub batch_lines_failed: AtomicU64,
}

/// All shards plus label names, owned by the server and shared with workers.
pub struct Metrics {
    pub shards: Vec<Shard>,
    pub globals: Globals,
    /// Replica load, published by the telemetry thread (rendered as `tollgate_replica_*`).
    pub replicas: Arc<ReplicaBoard>,
    /// GPU figures, published by the telemetry thread (rendered as `tollgate_gpu_*`).
    pub gpus: Arc<GpuBoard>,
    /// Requests and prefix hits per target, added by the ledger writer as requests settle.
    pub targets: Arc<super::sched::TargetTotals>,
    /// The estimator measured against provider usage (`ledger/accuracy.rs`), by the writer.
    pub accuracy: crate::ledger::accuracy::AccuracyMetrics,
    /// Tokens per prompt byte by model version, and drifts seen (`ledger/drift.rs`).
    pub drift: crate::ledger::drift::DriftTracker,
    /// Label tables, indexed by the ids in `SeriesKey`. They only grow (a reload adds names,
    /// never renumbers), so a series keeps its labels; locked at reload and scrape only.
    model_names: Mutex<Vec<String>>,
    provider_names: Mutex<Vec<String>>,
}

/// Statuses that keep their own label; any other status is counted under its class (`4xx`), so a
/// provider sending hundreds of odd statuses cannot grow `/metrics` without bound.
const KNOWN_STATUSES: [u16; 24] = [
    200, 201, 202, 204, 400, 401, 402, 403, 404, 405, 408, 409, 413, 415, 422, 429, 431, 499, 500,
    501, 502, 503, 504, 529,
];

/// Offset of a bucketed status: `BUCKETED + class` stands for every unknown status of a class.
const BUCKETED: u16 = 1000;

/// The status a metric series is keyed by: the status itself when known, else its class bucket.
pub fn status_series(status: u16) -> u16 {
    if KNOWN_STATUSES.contains(&status) {
        status
    } else {
        BUCKETED + (status / 100).min(9)
    }
}

/// Renders a series status (`200`, or `4xx` for a bucket).
struct StatusLabel(u16);

impl std::fmt::Display for StatusLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 >= BUCKETED {
            write!(f, "{}xx", self.0 - BUCKETED)
        } else {
            write!(f, "{}", self.0)
        }
    }
}

pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn new(shards: usize, model_names: Vec<String>, provider_names: Vec<String>) -> Metrics {
        Metrics {
            shards: (0..shards).map(|_| Shard::default()).collect(),
            globals: Globals::default(),
            replicas: Arc::default(),
            gpus: Arc::default(),
            targets: Arc::default(),
            accuracy: Default::default(),
            drift: Default::default(),
            model_names: Mutex::new(model_names),
            provider_names: Mutex::new(provider_names),
        }
    }

    /// The label id of model `name`, added to the table if new.
    pub fn model_label(&self, name: &str) -> u32 {
        Self::label(&self.model_names, name)
    }

    /// The label id of provider `name`, added to the table if new.
    pub fn provider_label(&self, name: &str) -> u32 {
        Self::label(&self.provider_names, name)
    }

    fn label(table: &Mutex<Vec<String>>, name: &str) -> u32 {
        let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
        match t.iter().position(|n| n == name) {
            Some(i) => i as u32,
            None => {
                t.push(name.to_string());
                (t.len() - 1) as u32
            }
        }
    }

    fn name(list: &[String], i: u32) -> &str {
        if i == MODEL_INTERCEPTED {
            return crate::config::INTERCEPTED;
        }
        list.get(i as usize).map(String::as_str).unwrap_or("none")
    }

    /// Renders the Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut merged: BTreeMap<SeriesKey, Series> = BTreeMap::new();
        for shard in &self.shards {
            let map = shard.series.lock().unwrap_or_else(|e| e.into_inner());
            for (k, s) in map.iter() {
                let m = merged.entry(*k).or_default();
                m.requests += s.requests;
                for (a, b) in m.tokens.iter_mut().zip(s.tokens.iter()) {
                    *a += b;
                }
                m.estimated += s.estimated;
                m.micro_usd += s.micro_usd;
                m.latency.merge(&s.latency);
                m.ttft.merge(&s.ttft);
            }
        }
        let mut out = String::with_capacity(8192);
        let model_names = self.model_names.lock().unwrap_or_else(|e| e.into_inner());
        let provider_names = self
            .provider_names
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let labels = |k: &SeriesKey| {
            format!(
                "model=\"{}\",provider=\"{}\",api=\"{}\",status=\"{}\"",
                escape(Self::name(&model_names, k.model)),
                escape(Self::name(&provider_names, k.provider)),
                k.api,
                StatusLabel(k.status)
            )
        };
        out.push_str("# HELP tollgate_requests_total Proxied requests by model, provider, API and status.\n# TYPE tollgate_requests_total counter\n");
        for (k, s) in merged.iter().filter(|(_, s)| s.requests > 0) {
            let _ = writeln!(
                out,
                "tollgate_requests_total{{{}}} {}",
                labels(k),
                s.requests
            );
        }
        out.push_str("# HELP tollgate_tokens_total Tokens metered, by kind (cached and reasoning are subsets of input and output).\n# TYPE tollgate_tokens_total counter\n");
        for (k, s) in &merged {
            for (kind, v) in TOKEN_KINDS.iter().zip(s.tokens.iter()) {
                if *v > 0 {
                    let _ = writeln!(
                        out,
                        "tollgate_tokens_total{{{},kind=\"{kind}\"}} {v}",
                        labels(k)
                    );
                }
            }
        }
        out.push_str("# HELP tollgate_cost_usd_total What metered requests cost at the price catalog's prices, in USD.\n# TYPE tollgate_cost_usd_total counter\n");
        for (k, s) in merged.iter().filter(|(_, s)| s.micro_usd > 0) {
            let _ = writeln!(
                out,
                "tollgate_cost_usd_total{{{}}} {}.{:06}",
                labels(k),
                s.micro_usd / 1_000_000,
                s.micro_usd % 1_000_000
            );
        }
        out.push_str("# HELP tollgate_usage_estimated_total Requests whose usage was estimated with the tokenizer.\n# TYPE tollgate_usage_estimated_total counter\n");
        for (k, s) in merged.iter().filter(|(_, s)| s.estimated > 0) {
            let _ = writeln!(
                out,
                "tollgate_usage_estimated_total{{{}}} {}",
                labels(k),
                s.estimated
            );
        }
        for (name, help, pick) in [
            (
                "tollgate_request_duration_seconds",
                "Time from request head to last response byte.",
                0,
            ),
            (
                "tollgate_ttft_seconds",
                "Time from request head to the first response byte from the provider.",
                1,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (k, s) in &merged {
                let h = if pick == 0 { &s.latency } else { &s.ttft };
                let count: u64 = h.counts.iter().sum();
                if count == 0 {
                    continue;
                }
                let l = labels(k);
                let mut cum = 0;
                for (i, b) in BUCKETS_S.iter().enumerate() {
                    cum += h.counts[i];
                    let _ = writeln!(out, "{name}_bucket{{{l},le=\"{b}\"}} {cum}");
                }
                let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {count}");
                let _ = writeln!(out, "{name}_sum{{{l}}} {}", h.sum_s);
                let _ = writeln!(out, "{name}_count{{{l}}} {count}");
            }
        }
        let g = &self.globals;
        for (name, kind, help, v) in [
            (
                "tollgate_connections_open",
                "gauge",
                "Client connections open now.",
                &g.connections_open,
            ),
            (
                "tollgate_connections_total",
                "counter",
                "Client connections accepted.",
                &g.connections_total,
            ),
            (
                "tollgate_connections_refused_total",
                "counter",
                "Client connections answered 503 at the per-worker connection cap.",
                &g.connections_refused,
            ),
            (
                "tollgate_config_reloads_total",
                "counter",
                "Configuration reloads applied.",
                &g.config_reloads,
            ),
            (
                "tollgate_config_reload_failures_total",
                "counter",
                "Configuration reloads refused (invalid file; the running configuration stayed).",
                &g.config_reload_failures,
            ),
            (
                "tollgate_config_generation",
                "gauge",
                "Generation of the configuration serving now (1 at start).",
                &g.config_generation,
            ),
            (
                "tollgate_task_panics_total",
                "counter",
                "Connection tasks that panicked (a bug: the connection was closed, the worker went on).",
                &g.task_panics,
            ),
            (
                "tollgate_upstream_retries_total",
                "counter",
                "Requests retried on a fresh connection after a stale keep-alive.",
                &g.upstream_retries,
            ),
            (
                "tollgate_ledger_records_total",
                "counter",
                "Usage records committed to the ledger.",
                &g.ledger_written,
            ),
            (
                "tollgate_ledger_errors_total",
                "counter",
                "Ledger batches that failed to commit.",
                &g.ledger_errors,
            ),
            (
                "tollgate_ledger_queue",
                "gauge",
                "Usage records waiting to be committed.",
                &g.ledger_queue,
            ),
            (
                "tollgate_estimator_queue",
                "gauge",
                "Records without provider usage being counted by the estimator thread.",
                &g.estimator_queue,
            ),
            (
                "tollgate_estimator_engine_counts_total",
                "counter",
                "Prompts counted by the serving engine's /tokenize.",
                &g.estimator_engine_counts,
            ),
            (
                "tollgate_estimator_engine_errors_total",
                "counter",
                "Engine /tokenize calls that failed (the prompt was counted locally).",
                &g.estimator_engine_errors,
            ),
            (
                "tollgate_batch_jobs_running",
                "gauge",
                "Batch API jobs running now.",
                &g.batch_running,
            ),
            (
                "tollgate_batch_lines_completed_total",
                "counter",
                "Batch lines answered 2xx (recorded in an output file).",
                &g.batch_lines_completed,
            ),
            (
                "tollgate_batch_lines_failed_total",
                "counter",
                "Batch lines recorded in an error file (an error status or no response).",
                &g.batch_lines_failed,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let mut guard: BTreeMap<GuardSeries, u64> = BTreeMap::new();
        for shard in &self.shards {
            let map = shard.guard.lock().unwrap_or_else(|e| e.into_inner());
            for (k, v) in map.iter() {
                *guard.entry(k.clone()).or_default() += v;
            }
        }
        out.push_str("# HELP tollgate_guard_findings_total Guardrail findings, by class, the action taken and where (request or response).\n# TYPE tollgate_guard_findings_total counter\n");
        for ((class, action, side), v) in &guard {
            let _ = writeln!(
                out,
                "tollgate_guard_findings_total{{class=\"{}\",action=\"{action}\",side=\"{side}\"}} {v}",
                escape(class)
            );
        }
        for (i, (name, kind, help)) in CACHE_STATS.iter().enumerate() {
            let v: u64 = self
                .shards
                .iter()
                .map(|s| s.cache[i].load(Ordering::Relaxed))
                .sum();
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        out.push_str("# HELP tollgate_batch_jobs_finished_total Batch API jobs ended, by final status.\n# TYPE tollgate_batch_jobs_finished_total counter\n");
        for (status, v) in ["completed", "failed", "cancelled", "expired"]
            .iter()
            .zip(g.batch_finished.iter())
        {
            let _ = writeln!(
                out,
                "tollgate_batch_jobs_finished_total{{status=\"{status}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let sum = |i: usize| -> u64 {
            self.shards
                .iter()
                .map(|s| s.prefix[i].load(Ordering::Relaxed))
                .sum()
        };
        let batch = |i: usize| -> u64 {
            self.shards
                .iter()
                .map(|s| s.batch[i].load(Ordering::Relaxed))
                .sum()
        };
        for (name, kind, help, v) in [
            (
                "tollgate_prefix_lookups_total",
                "counter",
                "Requests the prefix balancer scored.",
                sum(0),
            ),
            (
                "tollgate_prefix_hits_total",
                "counter",
                "Scored requests whose chosen replica had recently been sent their prefix.",
                sum(1),
            ),
            (
                "tollgate_prefix_index_blocks",
                "gauge",
                "Prompt blocks in the workers' prefix indexes (about 40 bytes each).",
                sum(2),
            ),
            (
                "tollgate_batch_waiting",
                "gauge",
                "Batch-class requests waiting for a replica with room.",
                batch(0),
            ),
            (
                "tollgate_batch_waited_total",
                "counter",
                "Batch-class requests that waited before running.",
                batch(1),
            ),
            (
                "tollgate_batch_deferred_total",
                "counter",
                "Batch-class requests answered 503 batch_deferred after waiting max_wait_ms.",
                batch(2),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        self.render_replicas(&mut out);
        self.render_gpus(&mut out);
        render_heap(&mut out, crate::alloc::heap_stats());
        out
    }

    /// `tollgate_replica_*`: the latest scrape of each replica. A replica whose latest scrape
    /// failed has no load series (stale figures would mislead), only its error count.
    fn render_replicas(&self, out: &mut String) {
        let states = self.replicas.load();
        if states.is_empty() {
            return;
        }
        type Pick = fn(&super::replicas::EngineLoad) -> Option<f64>;
        let gauges: [(&str, &str, Pick); 3] = [
            (
                "tollgate_replica_requests_running",
                "Requests the replica reports running (vllm:num_requests_running, sglang:num_running_reqs).",
                |l| Some(l.running),
            ),
            (
                "tollgate_replica_requests_waiting",
                "Requests the replica reports queued (vllm:num_requests_waiting, sglang:num_queue_reqs).",
                |l| Some(l.waiting),
            ),
            (
                "tollgate_replica_kv_cache_usage_ratio",
                "KV cache in use as the replica reports it, 0 to 1.",
                |l| l.kv_cache_ratio,
            ),
        ];
        for (name, help, pick) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for st in states.iter() {
                if let Some(v) = st.load.as_ref().and_then(pick) {
                    let _ = writeln!(out, "{name}{{provider=\"{}\"}} {v}", escape(&st.provider));
                }
            }
        }
        let name = "tollgate_replica_up";
        let _ = writeln!(
            out,
            "# HELP {name} 1 when the replica's latest /metrics scrape succeeded, else 0.\n# TYPE {name} gauge"
        );
        for st in states.iter() {
            let up = u8::from(st.load.is_some());
            let _ = writeln!(out, "{name}{{provider=\"{}\"}} {up}", escape(&st.provider));
        }
        let name = "tollgate_replica_scrape_errors_total";
        let _ = writeln!(
            out,
            "# HELP {name} Failed scrapes of the replica's /metrics.\n# TYPE {name} counter"
        );
        for st in states.iter() {
            let _ = writeln!(
                out,
                "{name}{{provider=\"{}\"}} {}",
                escape(&st.provider),
                st.errors_total
            );
        }
    }

    /// `tollgate_gpu_*`: the latest NVML sample of each GPU (nothing without a GPU).
    fn render_gpus(&self, out: &mut String) {
        // The families are listed even without a GPU (empty), so dashboards and alerts over
        // them stay valid on every node.
        let samples = self.gpus.samples();
        type Pick = fn(&super::gpu::GpuSample) -> f64;
        let gauges: [(&str, &str, Pick); 3] = [
            (
                "tollgate_gpu_utilization_ratio",
                "Share of the last sample period a kernel ran on the GPU, 0 to 1 (NVML).",
                |s| f64::from(s.utilization_pct.min(100)) / 100.0,
            ),
            (
                "tollgate_gpu_memory_used_bytes",
                "GPU memory in use (NVML).",
                |s| s.memory_used_bytes as f64,
            ),
            (
                "tollgate_gpu_memory_total_bytes",
                "GPU memory in total (NVML).",
                |s| s.memory_total_bytes as f64,
            ),
        ];
        for (name, help, pick) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for s in samples.iter() {
                let _ = writeln!(out, "{name}{{gpu=\"{}\"}} {}", s.index, pick(s));
            }
        }
    }
}

/// The agent's heap (`alloc::heap_stats`), one gauge per kind; nothing when unread.
fn render_heap(out: &mut String, heap: Option<crate::alloc::HeapStats>) {
    let Some(heap) = heap else { return };
    out.push_str(
        "# HELP tollgate_heap_bytes The agent's heap (jemalloc): allocated, in active pages, the allocator's metadata, resident, mapped, and retained (address space whose pages went back).\n# TYPE tollgate_heap_bytes gauge\n",
    );
    for (kind, bytes) in heap.kinds() {
        let _ = writeln!(out, "tollgate_heap_bytes{{kind=\"{kind}\"}} {bytes}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heap_is_one_gauge_per_kind_and_nothing_when_unread() {
        let heap = crate::alloc::HeapStats {
            allocated: 1,
            active: 2,
            metadata: 3,
            resident: 4,
            mapped: 5,
            retained: 6,
        };
        let mut out = String::new();
        render_heap(&mut out, Some(heap));
        let gauges: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            gauges,
            [
                "tollgate_heap_bytes{kind=\"allocated\"} 1",
                "tollgate_heap_bytes{kind=\"active\"} 2",
                "tollgate_heap_bytes{kind=\"metadata\"} 3",
                "tollgate_heap_bytes{kind=\"resident\"} 4",
                "tollgate_heap_bytes{kind=\"mapped\"} 5",
                "tollgate_heap_bytes{kind=\"retained\"} 6",
            ]
        );
        assert!(out.contains("# TYPE tollgate_heap_bytes gauge\n"), "{out}");
        let mut none = String::new();
        render_heap(&mut none, None);
        assert!(none.is_empty());
    }

    #[test]
    fn merges_shards_and_renders() {
        let m = Metrics::new(2, vec!["smol".into()], vec!["local".into()]);
        let k = SeriesKey {
            model: 0,
            provider: 0,
            api: "chat",
            status: 200,
        };
        m.shards[0].record_request(k, Duration::from_millis(3), Some(Duration::from_millis(1)));
        m.shards[1].record_request(k, Duration::from_millis(30), None);
        m.shards[1].record_usage(
            k,
            &Usage {
                input_tokens: 7,
                output_tokens: 2,
                ..Usage::default()
            },
            1_250_000,
            true,
        );
        let text = m.render();
        assert!(text.contains("tollgate_cost_usd_total{model=\"smol\",provider=\"local\",api=\"chat\",status=\"200\"} 1.250000"), "{text}");
        assert!(text.contains("tollgate_requests_total{model=\"smol\",provider=\"local\",api=\"chat\",status=\"200\"} 2"), "{text}");
        assert!(text.contains("kind=\"input\"} 7"));
        assert!(text.contains("tollgate_usage_estimated_total{model=\"smol\",provider=\"local\",api=\"chat\",status=\"200\"} 1"));
        assert!(text.contains("tollgate_request_duration_seconds_bucket{model=\"smol\",provider=\"local\",api=\"chat\",status=\"200\",le=\"0.005\"} 1"));
        assert!(text.contains("tollgate_request_duration_seconds_count{model=\"smol\",provider=\"local\",api=\"chat\",status=\"200\"} 2"));
        assert!(text.contains("tollgate_ttft_seconds_count{model=\"smol\",provider=\"local\",api=\"chat\",status=\"200\"} 1"));
    }

    /// One `record_answered` renders as `record_request` then `record_usage` did, and without
    /// usage as `record_request` alone.
    #[test]
    fn an_answered_request_records_as_request_then_usage() {
        let k = SeriesKey {
            model: 0,
            provider: 0,
            api: "chat",
            status: 200,
        };
        let usage = Usage {
            input_tokens: 11,
            cached_tokens: 3,
            output_tokens: 5,
            reasoning_tokens: 2,
            ..Usage::default()
        };
        let ttft = Some(Duration::from_millis(2));
        let (one, two) = (
            Metrics::new(1, vec!["smol".into()], vec!["local".into()]),
            Metrics::new(1, vec!["smol".into()], vec!["local".into()]),
        );
        one.shards[0].record_answered(k, Duration::from_millis(9), ttft, Some((&usage, 4_000)));
        one.shards[0].record_answered(k, Duration::from_millis(40), None, None);
        two.shards[0].record_request(k, Duration::from_millis(9), ttft);
        two.shards[0].record_usage(k, &usage, 4_000, false);
        two.shards[0].record_request(k, Duration::from_millis(40), None);
        let text = one.render();
        assert_eq!(text, two.render());
        assert!(text.contains("kind=\"reasoning\"} 2"), "{text}");
        assert!(text.contains("tollgate_requests_total{model=\"smol\",provider=\"local\",api=\"chat\",status=\"200\"} 2"), "{text}");
        assert!(!text.contains("tollgate_usage_estimated_total{model=\"smol\",provider=\"local\",api=\"chat\",status=\"200\"} 1"), "{text}");
    }
}
