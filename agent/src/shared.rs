//! State shared by every worker and the control threads: atomics, lock-free boards and the
//! configuration snapshot, nothing a worker locks on the hot path. Built by `server::start`; its
//! own module so that workers, the admin listener and telemetry depend on it, not on the server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::KernelMode;
use crate::kernel::{self, AttributionReader, Features};
use crate::snapshot::Snapshot;
use crate::telemetry::gpu::GpuBoard;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::replicas::ReplicaBoard;

/// State shared by all workers: atomics and read-only data only.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    /// The configuration requests run on; swapped whole by a reload, loaded once per request.
    pub snapshot: ArcSwap<Snapshot>,
    /// Distinguishes request ids across restarts.
    pub boot_id: u64,
    pub workers_ready: AtomicUsize,
    pub shutting_down: AtomicBool,
    /// What the kernel side is doing, for /readyz.
    pub kernel: KernelReport,
    /// Looks up accepted connections in the kernel's attribution map (once per connection).
    pub attribution: Option<AttributionReader>,
    /// The latest load of each scraped replica (lock-free reads), for load-aware routing.
    pub replicas: Arc<ReplicaBoard>,
    /// Whether GPU figures are read, and the latest ones (lock-free reads).
    pub gpus: Arc<GpuBoard>,
    /// The I/O driver the workers run on, set by the first worker that starts.
    pub io_driver: std::sync::OnceLock<&'static str>,
    /// Keys, live limit and budget counters, exceptions, loop-guard sessions.
    pub governor: Arc<crate::governance::Governor>,
    /// Resolves a client's cgroup id to its path, container and pod (once per connection, so
    /// limits by team hold for unlabelled clients in a team's containers).
    pub cgroups: Option<Arc<crate::kernel::cgroup::CgroupResolver>>,
    /// Each worker's prefix index, registered when the worker starts, read by the admin
    /// listener's `/admin/route/predict` (never by a worker).
    pub prefix_indexes: std::sync::Mutex<Vec<crate::phase::route::balance::SharedIndex>>,
    /// The batch thread (`batch_jobs.enabled`), which answers the Batch API.
    pub batch: Option<crate::batch::Handle>,
    /// Cluster mode's state (`cluster:`), for `/readyz` and `/metrics`.
    pub cluster: Option<Arc<crate::cluster::ClusterStatus>>,
    /// The exact response cache, sized by the configuration the agent started with (a reload
    /// changes its TTL and scope, not its size; enabling it needs a restart).
    pub cache: Option<Arc<crate::cache::ExactCache>>,
    /// Request spans to an OpenTelemetry collector (`otlp:`); fed by the ledger writer.
    pub otlp: Option<Arc<crate::telemetry::otlp::Exporter>>,
    /// Copies committed ledger rows to an organisation-wide store (`ledger.ship`).
    pub ship: Option<Arc<crate::ledger::ship::Shipper>>,
    /// The semantic cache's index (its answers live in `cache`).
    pub semantic: Arc<crate::cache::SemanticIndex>,
}

impl Shared {
    /// Every metric, for `/metrics` (client port and admin listener).
    pub fn render_metrics(&self) -> String {
        let mut out = self.metrics.render();
        let snap = self.snapshot.load();
        self.governor.render(&snap.governance, &mut out);
        render_breakers(&snap, &mut out);
        render_queues(&snap, &mut out);
        self.metrics.targets.render(&mut out);
        self.metrics.accuracy.render(&mut out);
        self.metrics.drift.render(&mut out);
        if let Some(c) = &self.cluster {
            c.render(&mut out);
        }
        if let Some(c) = &self.cache {
            c.render(&mut out);
        }
        if let Some(x) = &self.otlp {
            x.render(&mut out);
        }
        if let Some(s) = &self.ship {
            s.render(&mut out);
        }
        out
    }
}

/// Each target's circuit breaker: its state (0 closed, 1 half-open, 2 open) and its trips.
fn render_breakers(snap: &crate::snapshot::Snapshot, out: &mut String) {
    use std::fmt::Write;
    let now = crate::governance::window::now_ms().max(0) as u64;
    let mut seen = std::collections::HashSet::new();
    let mut state = String::new();
    let mut trips = String::new();
    for (m, list) in snap.breakers.iter().enumerate() {
        if !snap.cfg.models[m].breaker.enabled {
            continue;
        }
        for tb in list {
            // A target shared by several models has one breaker: one series.
            if !seen.insert(tb.label.as_str()) {
                continue;
            }
            let label = crate::telemetry::metrics::escape(&tb.label);
            let _ = writeln!(
                state,
                "tollgate_target_breaker_state{{target=\"{label}\"}} {}",
                tb.breaker.state(now).gauge()
            );
            let _ = writeln!(
                trips,
                "tollgate_target_breaker_trips_total{{target=\"{label}\"}} {}",
                tb.breaker.trips()
            );
        }
    }
    if !state.is_empty() {
        out.push_str("# HELP tollgate_target_breaker_state Circuit breaker per target: 0 closed, 1 half-open, 2 open.\n# TYPE tollgate_target_breaker_state gauge\n");
        out.push_str(&state);
        out.push_str("# HELP tollgate_target_breaker_trips_total Times a target's breaker opened on failures.\n# TYPE tollgate_target_breaker_trips_total counter\n");
        out.push_str(&trips);
    }
}

/// Each gated model's slots and fair queue (`phase/route/queue.rs`).
fn render_queues(snap: &crate::snapshot::Snapshot, out: &mut String) {
    use crate::telemetry::metrics::escape;
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let gated: Vec<(&str, &crate::phase::route::queue::ModelGate, usize)> = snap
        .gates
        .iter()
        .enumerate()
        .filter_map(|(m, g)| {
            g.as_deref()
                .map(|g| (snap.cfg.models[m].name.as_str(), g, m))
        })
        .collect();
    if gated.is_empty() {
        return;
    }
    let mut family = |name: &str, kind: &str, help: &str, rows: &dyn Fn(&mut String)| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        rows(out);
    };
    family(
        "tollgate_queue_slots",
        "gauge",
        "Slots of a gated model (the sum of its targets' max_in_flight) and how many are in use.",
        &|out| {
            for (model, g, _) in &gated {
                let (_, in_use) = g.load();
                let m = escape(model);
                let _ = writeln!(
                    out,
                    "tollgate_queue_slots{{model=\"{m}\",state=\"capacity\"}} {}",
                    g.capacity()
                );
                let _ = writeln!(
                    out,
                    "tollgate_queue_slots{{model=\"{m}\",state=\"in_use\"}} {in_use}"
                );
            }
        },
    );
    family(
        "tollgate_queue_waiting",
        "gauge",
        "Requests waiting for a slot, by tenant and priority class.",
        &|out| {
            for (model, g, _) in &gated {
                for (tenant, class, n) in g.waiting_by_tenant() {
                    let _ = writeln!(
                        out,
                        "tollgate_queue_waiting{{model=\"{}\",tenant=\"{}\",class=\"{class}\"}} {n}",
                        escape(model),
                        escape(&tenant)
                    );
                }
            }
        },
    );
    family(
        "tollgate_queue_tenant_tokens",
        "gauge",
        "Each tenant's virtual token counter in the fair queue (tokens let through while the model was saturated).",
        &|out| {
            for (model, g, _) in &gated {
                for (tenant, served) in g.served_by_tenant() {
                    let _ = writeln!(
                        out,
                        "tollgate_queue_tenant_tokens{{model=\"{}\",tenant=\"{}\"}} {served}",
                        escape(model),
                        escape(&tenant)
                    );
                }
            }
        },
    );
    family(
        "tollgate_queue_waited_total",
        "counter",
        "Requests that waited for a slot, and the seconds they waited in all.",
        &|out| {
            for (model, g, _) in &gated {
                let m = escape(model);
                let _ = writeln!(
                    out,
                    "tollgate_queue_waited_total{{model=\"{m}\"}} {}",
                    g.stats.queued.load(Relaxed)
                );
            }
        },
    );
    family(
        "tollgate_queue_wait_seconds_total",
        "counter",
        "Seconds requests spent waiting for a slot.",
        &|out| {
            for (model, g, _) in &gated {
                let m = escape(model);
                let secs = g.stats.wait_us.load(Relaxed) as f64 / 1e6;
                let _ = writeln!(
                    out,
                    "tollgate_queue_wait_seconds_total{{model=\"{m}\"}} {secs}"
                );
            }
        },
    );
    family(
        "tollgate_queue_refused_total",
        "counter",
        "Requests refused by the queue: queue_full, tenant_queue_full, queue_timeout.",
        &|out| {
            for (model, g, _) in &gated {
                let m = escape(model);
                for (reason, n) in [
                    ("queue_full", &g.stats.full),
                    ("tenant_queue_full", &g.stats.tenant_full),
                    ("queue_timeout", &g.stats.timed_out),
                ] {
                    let _ = writeln!(
                        out,
                        "tollgate_queue_refused_total{{model=\"{m}\",reason=\"{reason}\"}} {}",
                        n.load(Relaxed)
                    );
                }
            }
        },
    );
    family(
        "tollgate_target_in_flight",
        "gauge",
        "Requests in flight to each target of a gated model (all workers), against its max_in_flight.",
        &|out| {
            for (_, g, m) in &gated {
                for (t, tb) in snap.breakers[*m].iter().enumerate() {
                    let (n, cap) = g.target_load(t);
                    let label = escape(&tb.label);
                    let _ = writeln!(out, "tollgate_target_in_flight{{target=\"{label}\"}} {n}");
                    let _ = writeln!(out, "tollgate_target_max_in_flight{{target=\"{label}\"}} {cap}");
                }
            }
        },
    );
}

/// What the kernel side is doing, for `/readyz` and `tollgate status`.
#[derive(Debug, Clone)]
pub struct KernelReport {
    pub mode: KernelMode,
    pub loaded: bool,
    pub pin_dir: std::path::PathBuf,
    pub features: Features,
    /// Program names and kernel ids (as `bpftool prog show` lists them).
    pub programs: Vec<(&'static str, u32)>,
    pub intercept: Vec<SocketAddr>,
    /// The agent this one took the kernel programs over from at start (an upgrade), by tgid.
    pub took_over_from: Option<u32>,
}

impl KernelReport {
    pub fn to_json(&self) -> serde_json::Value {
        let features: serde_json::Map<String, serde_json::Value> = self
            .features
            .iter()
            .map(|(name, state)| {
                let v = match state {
                    kernel::FeatureState::Active => serde_json::json!({ "active": true }),
                    kernel::FeatureState::Inactive { reason } => {
                        serde_json::json!({ "active": false, "reason": reason })
                    }
                };
                (name.to_string(), v)
            })
            .collect();
        serde_json::json!({
            "enabled": self.mode.as_str(),
            "loaded": self.loaded,
            "pin_dir": self.pin_dir.display().to_string(),
            "summary": self.features.to_string(),
            "features": features,
            "programs": self.programs.iter().map(|(name, id)| serde_json::json!({ "name": name, "id": id })).collect::<Vec<_>>(),
            "intercept": self.intercept.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "took_over_from": self.took_over_from,
        })
    }
}
