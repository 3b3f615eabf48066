//! Cluster mode: one set of budgets for many agents (one per GPU node), through Redis.
//!
//! **Why leases.** The request path must never wait on Redis. Each agent draws *leases* — a
//! slice of a shared budget's remaining tokens or dollars — in the background (`thread.rs`),
//! and admission reserves against what this agent leased (`governance::budget::Lease`), with the
//! same lock-free compare-and-swap it uses alone. Leases are taken from the cluster-wide total
//! by a Lua script that never leases past the limit (`store.rs`), so the agents together can
//! only overshoot a budget by what requests use beyond their reservation, as a lone agent can.
//! What they can do is *under*-use it: budget sits in other agents' leases. A lease is sized to
//! a couple of seconds of this agent's own spend (at most `lease_fraction` of the limit), so a
//! busy agent holds more, and an agent idle for `idle_return_ms` gives its lease back.
//!
//! **Losing Redis.** The agents keep spending from the leases they hold, then from a local
//! share of each limit (`fallback_share`), once per window. When Redis returns, each agent
//! reads back what Redis holds for it and reports the spend beyond that, so totals are
//! resynchronised without counting anything twice. `/readyz`, `tollgate status` and
//! `tollgate_cluster_redis_up` say which mode an agent is in.
//!
//! **Restarts.** Redis keeps each agent's leases under its node name, so an agent that
//! restarts (even killed) takes back its own leases; its spend is rebuilt from its ledger as
//! always.

pub mod conn;
pub mod keys;
pub mod rates;
pub mod store;
pub mod thread;
pub mod usage;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// What `/readyz` and `/metrics` say about cluster mode.
#[derive(Debug, Default)]
pub struct ClusterStatus {
    pub node: String,
    up: AtomicBool,
    /// Unix ms since when Redis has been unreachable; 0 while up (or never tried).
    down_since_ms: AtomicI64,
    last_error: Mutex<Option<String>>,
    pub ops: AtomicU64,
    pub refills: AtomicU64,
    pub returns: AtomicU64,
    pub fallbacks: AtomicU64,
    pub shared_budgets: AtomicU64,
}

impl ClusterStatus {
    pub fn new(node: &str) -> Self {
        ClusterStatus {
            node: node.to_string(),
            ..ClusterStatus::default()
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn down_since_ms(&self) -> i64 {
        self.down_since_ms.load(Ordering::Acquire)
    }

    fn set_up(&self, up: bool, error: Option<String>) {
        self.up.store(up, Ordering::Release);
        if up {
            self.down_since_ms.store(0, Ordering::Release);
        } else if self.down_since_ms() == 0 {
            self.down_since_ms
                .store(crate::governance::window::now_ms(), Ordering::Release);
        }
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    pub fn to_json(&self) -> serde_json::Value {
        let error = self
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        serde_json::json!({
            "node": self.node,
            "redis": if self.is_up() { "up" } else { "down" },
            "mode": if self.is_up() { "leases" } else { "local share" },
            "down_since_ms": (self.down_since_ms() != 0).then(|| self.down_since_ms()),
            "last_error": error,
            "shared_budgets": self.shared_budgets.load(Ordering::Relaxed),
        })
    }

    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let node = crate::telemetry::metrics::escape(&self.node);
        let rows = [
            (
                "tollgate_cluster_redis_up",
                "gauge",
                "1 while Redis is reachable; 0: enforcing with leases held and the local share.",
                u64::from(self.is_up()),
            ),
            (
                "tollgate_cluster_redis_ops_total",
                "counter",
                "Redis commands sent (they follow lease refills, not requests).",
                self.ops.load(Ordering::Relaxed),
            ),
            (
                "tollgate_cluster_lease_refills_total",
                "counter",
                "Leases drawn from the cluster-wide budgets.",
                self.refills.load(Ordering::Relaxed),
            ),
            (
                "tollgate_cluster_lease_returns_total",
                "counter",
                "Idle leases given back.",
                self.returns.load(Ordering::Relaxed),
            ),
            (
                "tollgate_cluster_fallback_grants_total",
                "counter",
                "Local shares granted while Redis was unreachable.",
                self.fallbacks.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, v) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{node=\"{node}\"}} {v}"
            );
        }
    }
}

/// The running cluster thread; `stop` gives back every unused lease, then joins it.
pub struct ClusterThread {
    stop: std::sync::Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl ClusterThread {
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.thread.join();
    }
}

/// Starts the cluster thread when `cluster:` is configured.
pub fn start(
    shared: &std::sync::Arc<crate::shared::Shared>,
) -> std::io::Result<Option<ClusterThread>> {
    let snap = shared.snapshot.load();
    let (Some(settings), Some(status)) = (snap.cfg.cluster.clone(), shared.cluster.clone()) else {
        return Ok(None);
    };
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (shared, flag) = (shared.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name("tollgate-cluster".into())
        .spawn(move || thread::run(shared, settings, status, flag))?;
    Ok(Some(ClusterThread { stop, thread }))
}
