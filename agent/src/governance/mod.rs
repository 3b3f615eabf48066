//! Governance: who may spend what. Virtual keys (`keys.rs`, stored in `store.rs`), the policy
//! from the configuration (`policy.rs`), live counters that cannot be overshot (lock-free rate
//! limits in `gcra.rs`, calendar-window budgets in `budget.rs` and `window.rs`), reservations
//! settled to actual use (`hold.rs`), the loop guard (`loopguard.rs`), and the governance
//! thread (`thread.rs`): audit log, alert webhooks, exception expiry.
//!
//! The request path (`phase/admit/`) reads immutable tables through `ArcSwap` and charges
//! atomics; it takes no lock shared across cores. Counters are rebuilt from the ledger when
//! the agent starts (`rebuild`), so a restart forgets no spend in an open window.

pub mod api;
pub mod budget;
pub mod gcra;
pub mod hold;
pub mod keys;
pub mod loopguard;
pub mod policy;
pub mod store;
pub mod thread;
pub mod window;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use self::budget::BudgetState;
use self::gcra::Gcra;
use self::hold::{Alert, BudgetInfo};
use self::keys::KeyTable;
use self::loopguard::Sessions;
use self::policy::{Facts, Policy, Scope};
use self::store::{AuditEntry, Exception, Store, SubjectKind};

/// Counters of admission decisions, rendered with the other metrics.
#[derive(Debug, Default)]
pub struct GovCounters {
    pub auth_failures: AtomicU64,
    pub rate_limited: AtomicU64,
    pub budget_blocked: AtomicU64,
    pub budget_fallbacks: AtomicU64,
    pub budget_queued: AtomicU64,
    pub model_denied: AtomicU64,
    pub loop_trips: AtomicU64,
    pub budget_alerts: AtomicU64,
    pub webhook_failures: AtomicU64,
}

/// What the governance thread is told.
pub enum Event {
    Audit(AuditEntry),
    Alert(Alert),
    /// Reload keys and exceptions from the store (after an admin change).
    Reload,
}

/// The live counters of the configured rules, by rule, in the order of the snapshot's policy.
#[derive(Debug, Default)]
pub struct Bound {
    /// Per rate-limit rule, one limiter per rate.
    pub rates: Vec<Vec<Arc<Gcra>>>,
    pub budgets: Vec<(Arc<BudgetState>, Arc<BudgetInfo>)>,
}

enum Slot {
    Rate(Arc<Gcra>),
    Budget(Arc<BudgetState>),
}

/// Governance state shared by every worker, the admin listener and the control threads.
pub struct Governor {
    pub keys: ArcSwap<KeyTable>,
    /// Exceptions in force (expired ones are removed by the governance thread). Read through
    /// [`Governor::exceptions_in_force`].
    exceptions: ArcSwap<Vec<Exception>>,
    /// How many `exceptions` holds, stored after it: most nodes have none, and one atomic read
    /// of this answers every budget and model check without `ArcSwap::load`, whose debt-slot
    /// `xchg` was ~40 % of the budget reservation in a profile of governed traffic.
    exception_count: AtomicUsize,
    pub sessions: Sessions,
    pub counters: GovCounters,
    /// Rule counters by rule identity, so a reload keeps the spend of unchanged rules. Locked
    /// only when a snapshot is bound (start, reload).
    slots: Mutex<HashMap<String, Slot>>,
    /// The loop guard of the latest bound policy (the control thread settles tokens with it).
    loop_guard: arc_swap::ArcSwapOption<policy::LoopGuard>,
    /// To the governance thread (`Sender` is `Sync`: no lock).
    events: Sender<Event>,
    data_dir: PathBuf,
    /// The batch runner's per-process token (`batch::internal_token`), set once at start when
    /// `batch_jobs` is on: with it, a loopback request may act on behalf of a key by its id
    /// (`x-tollgate-on-behalf-of`). Kept in memory only, never logged.
    pub internal_token: std::sync::OnceLock<String>,
    /// Bumped by every key or exception change made on this node (the admin API, which
    /// `tollgate keys` uses); cluster mode pushes the changes to Redis when it moves.
    pub local_changes: AtomicU64,
    /// Held while the key table is rebuilt: the admin listener, the governance thread and the
    /// cluster sync thread reload concurrently, and a rebuild from older rows must not be
    /// stored after one from newer rows.
    reload_lock: Mutex<()>,
}

impl Governor {
    /// Loads keys and exceptions from the store under `data_dir`; the receiver goes to the
    /// governance thread.
    pub fn open(data_dir: &Path) -> rusqlite::Result<(Arc<Governor>, Receiver<Event>)> {
        let store = Store::open(data_dir)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let gov = Arc::new(Governor {
            keys: ArcSwap::from_pointee(KeyTable::default()),
            exceptions: ArcSwap::from_pointee(Vec::new()),
            exception_count: AtomicUsize::new(0),
            sessions: Sessions::default(),
            counters: GovCounters::default(),
            slots: Mutex::new(HashMap::new()),
            loop_guard: arc_swap::ArcSwapOption::empty(),
            events: tx,
            data_dir: data_dir.to_path_buf(),
            internal_token: std::sync::OnceLock::new(),
            local_changes: AtomicU64::new(0),
            reload_lock: Mutex::new(()),
        });
        gov.reload_from(&store)?;
        Ok((gov, rx))
    }

    /// A governor over a fresh store in a temporary directory (unit tests).
    #[cfg(test)]
    pub fn for_tests() -> Arc<Governor> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tollgate-gov-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        match Governor::open(&dir) {
            Ok((g, _rx)) => g,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Rebuilds the key table and the exception set from the store. Keys whose counters are
    /// new get their window's spend from the ledger.
    pub fn reload_from(&self, store: &Store) -> rusqlite::Result<()> {
        let _serial = self
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let rows = store.keys_with_hashes()?;
        let previous = self.keys.load_full();
        let table = KeyTable::build(rows, &previous);
        let old_ids: std::collections::HashSet<&str> =
            previous.entries().map(|e| e.id.as_str()).collect();
        let now = window::now_ms();
        for e in table.entries() {
            let has_budget = e.spec.budget_tokens.is_some() || e.spec.budget_usd.is_some();
            if has_budget && !old_ids.contains(e.id.as_str()) {
                let span = e.window().at(now);
                let scope = Scope {
                    key: Some(e.id.clone()),
                    ..Scope::default()
                };
                let (t, c) = rebuild::spent(&self.data_dir, &scope, span.start_ms);
                e.state.budget.tokens.add(span.index, t);
                e.state.budget.micro_usd.add(span.index, c);
            }
        }
        self.keys.store(Arc::new(table));
        let mut exceptions = store.exceptions()?;
        exceptions.retain(|x| x.expires_ms > now);
        let count = exceptions.len();
        self.exceptions.store(Arc::new(exceptions));
        self.exception_count.store(count, Ordering::Release);
        Ok(())
    }

    /// The counters for `policy`'s rules: the same ones as before for rules that did not
    /// change, new ones (with their window's spend read from the ledger) for new rules.
    pub fn bind(&self, policy: &Policy) -> Bound {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let mut used: HashMap<String, Slot> = HashMap::new();
        let mut bound = Bound::default();
        for rule in &policy.rate_limits {
            let mut limiters = Vec::new();
            for rate in &rule.rates {
                let id = format!("rate|{}", rule.rate_id(rate));
                let g = match slots.remove(&id).or_else(|| used.remove(&id)) {
                    Some(Slot::Rate(g)) => g,
                    _ => Arc::new(Gcra::new(rate.amount, rate.period)),
                };
                used.insert(id, Slot::Rate(g.clone()));
                limiters.push(g);
            }
            bound.rates.push(limiters);
        }
        let now = window::now_ms();
        for b in &policy.budgets {
            let id = format!("budget|{}", b.id());
            let state = match slots.remove(&id).or_else(|| used.remove(&id)) {
                Some(Slot::Budget(s)) => s,
                _ => {
                    let s = Arc::new(BudgetState::default());
                    let span = b.window.at(now);
                    let (t, c) = rebuild::spent(&self.data_dir, &b.scope, span.start_ms);
                    s.tokens.add(span.index, t);
                    s.micro_usd.add(span.index, c);
                    s
                }
            };
            used.insert(id, Slot::Budget(state.clone()));
            bound.budgets.push((
                state,
                Arc::new(BudgetInfo {
                    name: b.name.clone(),
                    scope: b.scope.label(),
                    window: b.window,
                    alert_at: b.alert_at.clone(),
                    limit_tokens: b.tokens,
                    limit_micro_usd: b.micro_usd,
                }),
            ));
        }
        *slots = used;
        self.loop_guard
            .store(policy.loop_guard.clone().map(Arc::new));
        bound
    }

    /// The loop guard in force, if any.
    pub fn loop_guard(&self) -> Option<policy::LoopGuard> {
        self.loop_guard.load_full().map(|g| (*g).clone())
    }

    /// Hands an event to the governance thread (never blocks).
    pub fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    /// Writes an audit entry by the agent itself.
    pub fn audit(&self, action: &str, subject: &str, detail: serde_json::Value) {
        self.emit(Event::Audit(AuditEntry {
            seq: 0,
            ts_ms: window::now_ms(),
            actor: "agent".into(),
            action: action.into(),
            subject: subject.into(),
            detail,
        }));
    }

    /// The exceptions list, or `None` when it is empty (one atomic read, no `ArcSwap` load).
    fn exceptions_in_force(&self) -> Option<arc_swap::Guard<Arc<Vec<Exception>>>> {
        if self.exception_count.load(Ordering::Acquire) == 0 {
            return None;
        }
        Some(self.exceptions.load())
    }

    /// Whether an exception in force grants `model` to this request.
    pub fn exception_grants_model(&self, f: &Facts<'_>, model: &str) -> bool {
        let Some(list) = self.exceptions_in_force() else {
            return false;
        };
        let now = window::now_ms();
        list.iter().any(|x| {
            x.expires_ms > now
                && x.model
                    .as_deref()
                    .is_some_and(|m| crate::config::Glob::new(m).matches(model))
                && subject_matches(x, f)
        })
    }

    /// Extra tokens and micro-USD that exceptions in force add to a key's own budget.
    pub fn exception_extra_for_key(&self, id: &str) -> (u64, u64) {
        if self.exceptions_in_force().is_none() {
            return (0, 0);
        }
        self.exception_extra(&Scope {
            key: Some(id.to_string()),
            ..Scope::default()
        })
    }

    /// Extra tokens and micro-USD that exceptions in force add to a budget over `scope` (an
    /// exception for a team extends the budgets scoped to exactly that team, and so on).
    pub fn exception_extra(&self, scope: &Scope) -> (u64, u64) {
        let Some(list) = self.exceptions_in_force() else {
            return (0, 0);
        };
        let now = window::now_ms();
        let mut extra = (0u64, 0u64);
        for x in list.iter() {
            if x.expires_ms <= now {
                continue;
            }
            let target = match x.subject_kind {
                SubjectKind::Key => scope.key.as_deref(),
                SubjectKind::Team => scope.team.as_deref(),
                SubjectKind::Project => scope.project.as_deref(),
                SubjectKind::User => scope.user.as_deref(),
            };
            if target == Some(x.subject.as_str()) {
                extra.0 = extra.0.saturating_add(x.extra_tokens.unwrap_or(0));
                extra.1 = extra
                    .1
                    .saturating_add((x.extra_usd.unwrap_or(0.0).max(0.0) * 1e6) as u64);
            }
        }
        extra
    }

    /// Governance metrics in the Prometheus text format.
    pub fn render(&self, bound: &Bound, out: &mut String) {
        use std::fmt::Write;
        let c = &self.counters;
        let counters: [(&str, &str, &AtomicU64); 9] = [
            (
                "tollgate_auth_failures_total",
                "Requests refused for a missing, unknown, revoked or expired key.",
                &c.auth_failures,
            ),
            (
                "tollgate_rate_limited_total",
                "Requests refused by a rate limit.",
                &c.rate_limited,
            ),
            (
                "tollgate_budget_blocked_total",
                "Requests refused because a budget had no room.",
                &c.budget_blocked,
            ),
            (
                "tollgate_budget_fallbacks_total",
                "Requests served by a budget's fallback model.",
                &c.budget_fallbacks,
            ),
            (
                "tollgate_budget_queued_total",
                "Requests that waited for budget headroom.",
                &c.budget_queued,
            ),
            (
                "tollgate_model_denied_total",
                "Requests refused by model access policy.",
                &c.model_denied,
            ),
            (
                "tollgate_loop_trips_total",
                "Loop-guard breaker trips.",
                &c.loop_trips,
            ),
            (
                "tollgate_budget_alerts_total",
                "Budget alert thresholds crossed.",
                &c.budget_alerts,
            ),
            (
                "tollgate_alert_webhook_failures_total",
                "Alert webhook POSTs that failed.",
                &c.webhook_failures,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tollgate_keys_active Virtual keys that can be used.\n# TYPE tollgate_keys_active gauge\ntollgate_keys_active {}",
            self.keys.load().len()
        );
        if bound.budgets.is_empty() {
            return;
        }
        let now = window::now_ms();
        out.push_str("# HELP tollgate_budget_used_tokens Tokens charged (and reserved) in the budget's current window.\n# TYPE tollgate_budget_used_tokens gauge\n");
        for (state, info) in &bound.budgets {
            let span = info.window.at(now);
            let _ = writeln!(
                out,
                "tollgate_budget_used_tokens{{budget=\"{}\"}} {}",
                crate::telemetry::metrics::escape(&info.name),
                state.tokens.used(span.index)
            );
        }
        out.push_str("# HELP tollgate_budget_used_usd USD charged (and reserved) in the budget's current window.\n# TYPE tollgate_budget_used_usd gauge\n");
        for (state, info) in &bound.budgets {
            let span = info.window.at(now);
            let _ = writeln!(
                out,
                "tollgate_budget_used_usd{{budget=\"{}\"}} {:.6}",
                crate::telemetry::metrics::escape(&info.name),
                state.micro_usd.used(span.index) as f64 / 1e6
            );
        }
        out.push_str("# HELP tollgate_budget_limit_tokens The budget's token limit (as configured).\n# TYPE tollgate_budget_limit_tokens gauge\n");
        for (_, info) in &bound.budgets {
            if let Some(l) = info.limit_tokens {
                let name = crate::telemetry::metrics::escape(&info.name);
                let _ = writeln!(out, "tollgate_budget_limit_tokens{{budget=\"{name}\"}} {l}");
            }
        }
        out.push_str("# HELP tollgate_budget_limit_usd The budget's USD limit (as configured).\n# TYPE tollgate_budget_limit_usd gauge\n");
        for (_, info) in &bound.budgets {
            if let Some(l) = info.limit_micro_usd {
                let name = crate::telemetry::metrics::escape(&info.name);
                let _ = writeln!(
                    out,
                    "tollgate_budget_limit_usd{{budget=\"{name}\"}} {:.6}",
                    l as f64 / 1e6
                );
            }
        }
        out.push_str("# HELP tollgate_budget_window_end_timestamp_seconds When the budget's current window ends (it then starts again from zero).\n# TYPE tollgate_budget_window_end_timestamp_seconds gauge\n");
        for (_, info) in &bound.budgets {
            let name = crate::telemetry::metrics::escape(&info.name);
            let end = info.window.at(now).end_ms / 1000;
            let _ = writeln!(
                out,
                "tollgate_budget_window_end_timestamp_seconds{{budget=\"{name}\"}} {end}"
            );
        }
        let shared: Vec<_> = bound
            .budgets
            .iter()
            .filter(|(s, _)| s.lease.is_shared())
            .collect();
        if shared.is_empty() {
            return;
        }
        out.push_str("# HELP tollgate_budget_cluster_used_tokens Tokens every agent of the cluster charged in the budget's current window (read from Redis once a second).\n# TYPE tollgate_budget_cluster_used_tokens gauge\n");
        for (state, info) in &shared {
            let span = info.window.at(now);
            let _ = writeln!(
                out,
                "tollgate_budget_cluster_used_tokens{{budget=\"{}\"}} {}",
                crate::telemetry::metrics::escape(&info.name),
                state.lease.cluster_tokens.used(span.index)
            );
        }
        out.push_str("# HELP tollgate_budget_cluster_used_usd USD every agent of the cluster charged in the budget's current window.\n# TYPE tollgate_budget_cluster_used_usd gauge\n");
        for (state, info) in &shared {
            let span = info.window.at(now);
            let _ = writeln!(
                out,
                "tollgate_budget_cluster_used_usd{{budget=\"{}\"}} {:.6}",
                crate::telemetry::metrics::escape(&info.name),
                state.lease.cluster_micro_usd.used(span.index) as f64 / 1e6
            );
        }
    }
}

/// Replaces a finished request's reservations by its final usage, raises the budget alerts
/// that crossed, and tells the loop guard the session's tokens. Runs where the usage became
/// final: on the request's worker (provider usage; the counters' cache lines stay there), or on
/// the estimator thread after an estimate. A record settles once; later calls do nothing.
pub fn settle_record(record: &mut crate::ledger::UsageRecord, governor: &Governor) {
    if record.hold.is_empty() {
        return;
    }
    let session = record.hold.session.take();
    for alert in record.hold.settle(&record.usage, record.cost_micro_usd) {
        governor.emit(Event::Alert(alert));
    }
    let (Some(session), Some(guard)) = (session, governor.loop_guard()) else {
        return;
    };
    let tokens = record.usage.input_tokens + record.usage.output_tokens;
    if let Some(trip) = session.observe_tokens(&guard, window::now_ms(), tokens) {
        governor.counters.loop_trips.fetch_add(1, Ordering::Relaxed);
        let subject = record.identity.session.clone().unwrap_or_default();
        governor.audit(
            "loop.trip",
            &subject,
            serde_json::json!({ "reason": trip.describe(), "request": record.id, "key": record.key_id }),
        );
    }
}

fn subject_matches(x: &Exception, f: &Facts<'_>) -> bool {
    let have = match x.subject_kind {
        SubjectKind::Key => f.key,
        SubjectKind::Team => f.identity.team.as_deref(),
        SubjectKind::Project => f.identity.project.as_deref(),
        SubjectKind::User => f.identity.user.as_deref(),
    };
    have == Some(x.subject.as_str())
}

/// Rebuilding a window's spend from the ledger at start (and for rules added by a reload).
mod rebuild {
    use std::path::Path;

    use rusqlite::types::Value;

    use super::policy::Scope;

    /// Tokens and micro-USD that requests within `scope` started since `since_ms` spent, as
    /// recorded in the ledger. A ledger that cannot be read counts as empty (logged).
    pub fn spent(data_dir: &Path, scope: &Scope, since_ms: i64) -> (u64, u64) {
        match query(data_dir, scope, since_ms) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(scope = %scope.label(), error = %e, "could not read this window's spend from the ledger; counting from zero");
                (0, 0)
            }
        }
    }

    fn query(data_dir: &Path, scope: &Scope, since_ms: i64) -> rusqlite::Result<(u64, u64)> {
        let path = crate::ledger::db_path(data_dir);
        if !path.exists() {
            return Ok((0, 0));
        }
        let conn = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut sql = String::from(
            "SELECT COALESCE(SUM(input_tokens + output_tokens), 0), COALESCE(SUM(cost_micro_usd), 0) FROM usage WHERE ts_ms >= ?1",
        );
        let mut args: Vec<Value> = vec![Value::Integer(since_ms)];
        for (field, value) in scope.fields() {
            let (column, op) = match field {
                "team" => ("team", "="),
                "project" => ("project", "="),
                "user" => ("user_id", "="),
                "session" => ("session_id", "="),
                "workflow" => ("workflow", "="),
                "cost_center" => ("cost_center", "="),
                "key" => ("key_id", "="),
                "model" => ("requested_model", "GLOB"),
                "cgroup" => ("cgroup_path", "GLOB"),
                _ => ("container_id", "="),
            };
            args.push(Value::Text(value.to_string()));
            sql.push_str(&format!(" AND {column} {op} ?{}", args.len()));
        }
        conn.query_row(&sql, rusqlite::params_from_iter(args), |r| {
            Ok((
                r.get::<_, i64>(0)?.max(0) as u64,
                r.get::<_, i64>(1)?.max(0) as u64,
            ))
        })
    }
}
