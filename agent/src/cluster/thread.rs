//! The cluster thread: keeps this agent's leases of every shared budget topped up, gives back
//! what sits idle, reports spend made beyond its leases, and falls back to a local share while
//! Redis is away. Requests never wait on it except when a lease runs dry while the cluster
//! still has budget (admission then waits up to half a second for the refill).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::cluster::ClusterSettings;
use crate::governance::budget::{BudgetState, Meter};
use crate::governance::window::now_ms;
use crate::shared::Shared;

use super::store::{lease_key, Store, StoreError};
use super::ClusterStatus;

const TICK: Duration = Duration::from_millis(20);
/// How often every shared budget is looked at; in between, only the ones a request found dry.
const FULL_PASS: Duration = Duration::from_millis(200);
/// How often each agent writes its spend of a shared budget and reads everyone's.
const REPORT: Duration = Duration::from_secs(1);
/// How often rate-limit demand is reported and shares recomputed.
const RATE_SYNC: Duration = Duration::from_secs(1);
const RECONNECT: Duration = Duration::from_millis(500);
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// Leases expire this long after their window ends.
const KEEP_MS: i64 = 86_400_000;

/// This agent's book of one shared budget unit in the current window.
#[derive(Debug, Default)]
struct Book {
    window: u64,
    /// Read back this node's leases from Redis (after a start or a new window).
    restored: bool,
    /// Leased from Redis (what Redis records as this node's).
    from_redis: u64,
    /// Granted locally while Redis was away.
    fallback: u64,
    last_used: u64,
    last_spend: Option<Instant>,
    /// Spend per second, smoothed.
    rate: f64,
    last_tick: Option<Instant>,
    /// When this agent's spend was last written to Redis (and the cluster's read back).
    last_report: Option<Instant>,
}

/// One unit of one shared budget as the thread handles it.
struct Unit<'a> {
    key: String,
    limit: u64,
    window: u64,
    end_ms: i64,
    used: &'a Meter,
    granted: &'a Meter,
    /// Every agent's spend, for the budget views.
    cluster: &'a Meter,
    state: &'a BudgetState,
}

pub fn run(
    shared: Arc<Shared>,
    settings: ClusterSettings,
    status: Arc<ClusterStatus>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut store: Option<Store> = None;
    let mut next_connect = Instant::now();
    let mut books: HashMap<String, Book> = HashMap::new();
    let mut rates = super::rates::Rates::default();
    let mut next_full = Instant::now();
    let mut next_rates = Instant::now();
    loop {
        // Set after the workers and the ledger writer are done, so the last settles are in.
        let stopping = stop.load(Ordering::Acquire);
        if store.is_none() && Instant::now() >= next_connect {
            match Store::connect(&settings, REDIS_TIMEOUT).and_then(|mut s| {
                s.ping()?;
                Ok(s)
            }) {
                Ok(s) => {
                    if !status.is_up() {
                        tracing::info!(node = %settings.node, "cluster: connected to Redis");
                    }
                    status.set_up(true, None);
                    // Every book re-reads its node share and reports spend made meanwhile.
                    for b in books.values_mut() {
                        b.restored = false;
                    }
                    store = Some(s);
                }
                Err(e) => {
                    if status.is_up() || status.down_since_ms() == 0 {
                        tracing::warn!(node = %settings.node, "cluster: Redis unreachable: {e}; enforcing with the leases held, then a local share");
                    }
                    status.set_up(false, Some(e.to_string()));
                    next_connect = Instant::now() + RECONNECT;
                }
            }
        }
        let full = stopping || Instant::now() >= next_full;
        if full {
            next_full = Instant::now() + FULL_PASS;
        }
        let mut result = tick(
            &shared,
            &settings,
            &status,
            store.as_mut(),
            &mut books,
            Pass { full, stopping },
        );
        if let (Ok(()), Some(s)) = (&result, store.as_mut()) {
            if Instant::now() >= next_rates && !stopping {
                result = rates.sync(&shared, &settings.node, s);
                next_rates = Instant::now() + RATE_SYNC;
            }
        }
        if let Some(s) = &store {
            status.ops.store(s.ops, Ordering::Relaxed);
        }
        if let Err(e) = result {
            tracing::warn!(node = %settings.node, "cluster: Redis call failed: {e}");
            status.set_up(false, Some(e.to_string()));
            store = None;
            next_connect = Instant::now() + RECONNECT;
        }
        if stopping {
            return;
        }
        std::thread::sleep(TICK);
    }
}

/// One pass over the shared budget units (see [`Pass`]).
fn tick(
    shared: &Shared,
    settings: &ClusterSettings,
    status: &ClusterStatus,
    mut store: Option<&mut Store>,
    books: &mut HashMap<String, Book>,
    pass: Pass,
) -> Result<(), StoreError> {
    let snap = shared.snapshot.load();
    let policy = &snap.cfg.governance;
    let now = now_ms();
    // Every shared budget: the policy's rules, then the keys' own budgets (a key's id is the
    // same on every agent once keys are shared).
    let mut budgets: Vec<SharedBudget> = Vec::new();
    // Between full passes only the budgets a request found dry are refilled: the other work
    // (ids, keys, exceptions) is not redone fifty times a second.
    let wanted = |state: &BudgetState| pass.full || state.lease.starved.load(Ordering::Acquire);
    for (rule, (state, info)) in policy.budgets.iter().zip(snap.governance.budgets.iter()) {
        if !rule.shared || !wanted(state) {
            continue;
        }
        let (xt, xc) = shared.governor.exception_extra(&rule.scope);
        budgets.push(SharedBudget {
            id: rule.id(),
            state: state.clone(),
            span: info.window.at(now),
            tokens: rule.tokens.map(|t| t.saturating_add(xt)),
            micro_usd: rule.micro_usd.map(|c| c.saturating_add(xc)),
        });
    }
    let keys = shared.governor.keys.load();
    for k in keys.entries() {
        if (k.spec.budget_tokens.is_none() && k.spec.budget_usd.is_none())
            || !wanted(&k.state.budget)
        {
            continue;
        }
        let (xt, xc) = shared.governor.exception_extra_for_key(&k.id);
        budgets.push(SharedBudget {
            id: format!("key|{}|{}", k.id, k.budget_info.window.as_str()),
            state: k.state.budget.clone(),
            span: k.budget_info.window.at(now),
            tokens: k.spec.budget_tokens.map(|t| t.saturating_add(xt)),
            micro_usd: k
                .spec
                .budget_usd
                .map(|u| ((u * 1e6) as u64).saturating_add(xc)),
        });
    }
    for b in &budgets {
        let state = &b.state;
        state.lease.shared.store(true, Ordering::Release);
        for (unit, limit, used, granted, cluster) in [
            (
                "tokens",
                b.tokens,
                &state.tokens,
                &state.lease.tokens,
                &state.lease.cluster_tokens,
            ),
            (
                "micro_usd",
                b.micro_usd,
                &state.micro_usd,
                &state.lease.micro_usd,
                &state.lease.cluster_micro_usd,
            ),
        ] {
            let Some(limit) = limit else { continue };
            let u = Unit {
                key: lease_key(&b.id, unit, b.span.index),
                limit,
                window: b.span.index,
                end_ms: b.span.end_ms,
                used,
                granted,
                cluster,
                state,
            };
            let book = books.entry(format!("{}|{unit}", b.id)).or_default();
            step(
                settings,
                status,
                store.as_deref_mut(),
                &u,
                book,
                pass.stopping,
            )?;
        }
        state.lease.starved.store(false, Ordering::Release);
    }
    if pass.full {
        status
            .shared_budgets
            .store(budgets.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// What one call of `tick` covers.
#[derive(Clone, Copy)]
struct Pass {
    /// Every shared budget (else only the starved ones).
    full: bool,
    /// Give back every unused lease.
    stopping: bool,
}

/// One shared budget as this pass sees it.
struct SharedBudget {
    id: String,
    state: Arc<BudgetState>,
    span: crate::governance::window::Span,
    tokens: Option<u64>,
    micro_usd: Option<u64>,
}

fn step(
    settings: &ClusterSettings,
    status: &ClusterStatus,
    store: Option<&mut Store>,
    u: &Unit<'_>,
    book: &mut Book,
    stopping: bool,
) -> Result<(), StoreError> {
    let w = u.window;
    if book.window != w {
        *book = Book {
            window: w,
            ..Book::default()
        };
    }
    let used = u.used.used(w);
    // Spend rate, for sizing leases to this agent's share of the traffic.
    let now = Instant::now();
    if let Some(t) = book.last_tick {
        let dt = now.duration_since(t).as_secs_f64().max(1e-3);
        let spent = used.saturating_sub(book.last_used) as f64;
        book.rate = 0.8 * book.rate + 0.2 * spent / dt;
    }
    if used != book.last_used {
        book.last_spend = Some(now);
    }
    book.last_used = used;
    book.last_tick = Some(now);
    let max_lease = ((u.limit as f64 * settings.lease_fraction) as u64).max(1);
    let lease = ((book.rate * settings.lease_horizon.as_secs_f64()) as u64)
        .clamp(max_lease / 16 + 1, max_lease);
    let expire_at = u.end_ms + KEEP_MS;
    let starved = u.state.lease.starved.load(Ordering::Acquire);
    let Some(store) = store else {
        // Redis is away: the leases held keep serving; when they run low, this agent's local
        // share of the limit, once per window.
        let headroom = u.granted.used(w).saturating_sub(used);
        if book.fallback == 0 && (headroom < lease / 2 || starved) {
            let share = ((u.limit as f64 * settings.fallback_share) as u64).max(1);
            u.granted.add(w, share);
            book.fallback = share;
            status.fallbacks.fetch_add(1, Ordering::Relaxed);
            u.state.lease.exhausted.store(0, Ordering::Release);
        } else if book.fallback > 0 && headroom == 0 {
            u.state.lease.exhausted.store(w + 1, Ordering::Release);
        }
        return Ok(());
    };
    if !book.restored {
        // What Redis says this node holds (its leases before a restart, or before Redis went
        // away); the local grant is rebuilt from it, and spend beyond it is reported below.
        let (mine, _) = store.held(&u.key)?;
        let granted = u.granted.used(w);
        if granted < mine {
            u.granted.add(w, mine - granted);
        } else if granted > mine.max(used) {
            u.granted.settle(w, granted - mine.max(used), 0);
        }
        book.from_redis = mine;
        book.fallback = 0;
        book.restored = true;
    }
    // Spend beyond what Redis records for this node (use above a reservation, or spend made
    // from the local share while Redis was away): recorded as spent, whatever the limit.
    if used > book.from_redis {
        let debt = used - book.from_redis;
        let took = store.take(&u.key, u.limit, debt, expire_at, true)?;
        book.from_redis += took;
        let granted = u.granted.used(w);
        if granted < book.from_redis {
            u.granted.add(w, book.from_redis - granted);
        }
    }
    if book
        .last_report
        .is_none_or(|t| now.duration_since(t) >= REPORT)
    {
        book.last_report = Some(now);
        let all = store.report_used(&u.key, used, expire_at)?;
        u.cluster.set(w, all.max(used));
    }
    let granted = u.granted.used(w);
    let headroom = granted.saturating_sub(used);
    if stopping {
        if headroom > 0 {
            let back = store.give_back(&u.key, headroom)?;
            u.granted.settle(w, back, 0);
            book.from_redis -= back.min(book.from_redis);
        }
        return Ok(());
    }
    let idle = book
        .last_spend
        .is_none_or(|t| now.duration_since(t) >= settings.idle_return);
    if idle && headroom > 0 && !starved {
        let back = store.give_back(&u.key, headroom)?;
        if back > 0 {
            u.granted.settle(w, back, 0);
            book.from_redis -= back.min(book.from_redis);
            status.returns.fetch_add(1, Ordering::Relaxed);
        }
        return Ok(());
    }
    if headroom < lease / 2 || starved {
        let want = lease.saturating_sub(headroom).max(1);
        let took = store.take(&u.key, u.limit, want, expire_at, false)?;
        if took > 0 {
            u.granted.add(w, took);
            book.from_redis += took;
            status.refills.fetch_add(1, Ordering::Relaxed);
            // Spend is coming: the new lease is not idle.
            book.last_spend = Some(now);
        }
        let exhausted = if took < want { w + 1 } else { 0 };
        u.state.lease.exhausted.store(exhausted, Ordering::Release);
    }
    Ok(())
}
