//! Budgets: reserve in tokens and USD against every matching budget, or none of them; on a
//! breach block, fall back to a cheaper model, or queue for headroom.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::client::ClientConn;
use crate::error::{ErrorDetail, ErrorKind, GateError};
use crate::governance::hold::{HeldBudget, Hold};
use crate::governance::keys::KeyEntry;
use crate::governance::policy::OnBreach;
use crate::governance::window::{now_ms, rfc3339};
use crate::governance::Governor;
use crate::metering::prices::Price;
use crate::pipeline::RequestCtx;
use crate::snapshot::Snapshot;

use super::{check_model, facts, render_quota, reservation};

/// How often a queued request looks for budget headroom again.
const QUEUE_POLL: Duration = Duration::from_millis(50);

/// The price a reservation is made at: the dearest of the model's targets (any may serve it;
/// prices resolved at load), or the catalog's for a name that is not a configured model.
pub fn price_of(snap: &Snapshot, model: &str) -> Option<Price> {
    match snap.cfg.model_by_name(model) {
        // Any target may serve (weights, failover): reserve at the dearest; the record is
        // charged at the price of the one that served.
        Some((_, m)) => m
            .targets
            .iter()
            .filter_map(|t| t.price)
            .max_by(|a, b| (a.input + a.output).total_cmp(&(b.input + b.output))),
        None => snap.cfg.prices.lookup(&[model]),
    }
}

/// How long a request waits for the cluster thread to refill this agent's lease of a shared
/// budget that still has room cluster-wide, before the budget counts as full.
const LEASE_WAIT: Duration = Duration::from_millis(500);
const LEASE_POLL: Duration = Duration::from_millis(5);

/// What one attempt at reserving found.
enum Attempt {
    Held(Vec<HeldBudget>),
    Full {
        rule: Option<usize>,
        name: String,
        resets_at_ms: i64,
        used: String,
        /// The budget is shared and the cluster still has room: a refill is on its way.
        refill: bool,
    },
}

pub(super) async fn budgets(
    gov: &Governor,
    snap: &Snapshot,
    client: &ClientConn,
    ctx: &mut RequestCtx,
    key: Option<&KeyEntry>,
) -> Result<(), GateError> {
    let policy = &snap.cfg.governance;
    let any = key.is_some_and(|k| k.spec.budget_tokens.is_some() || k.spec.budget_usd.is_some())
        || !policy.budgets.is_empty();
    if !any {
        return Ok(());
    }
    let (input, output) = reservation(snap, ctx);
    let mut price = price_of(snap, &ctx.inspection.model);
    // Budgets that breached with `fallback`: still charged, no longer a limit.
    let mut unlimited: Vec<usize> = Vec::new();
    let mut queue_deadline: Option<Instant> = None;
    let mut lease_deadline: Option<Instant> = None;
    loop {
        let micro_usd = price.map_or(0, |p| p.estimate_micro_usd(input, output));
        match attempt(
            gov,
            snap,
            client,
            ctx,
            key,
            input + output,
            micro_usd,
            &unlimited,
        ) {
            Attempt::Held(held) => {
                ctx.hold.budgets = held;
                ctx.price = price;
                return Ok(());
            }
            Attempt::Full { refill: true, .. }
                if *lease_deadline.get_or_insert_with(|| Instant::now() + LEASE_WAIT)
                    > Instant::now() =>
            {
                monoio::time::sleep(LEASE_POLL).await;
            }
            Attempt::Full {
                rule,
                name,
                resets_at_ms,
                used,
                ..
            } => {
                let on_breach = rule.map_or(&OnBreach::Block, |i| &policy.budgets[i].on_breach);
                match on_breach {
                    OnBreach::Fallback { model }
                        if !unlimited.contains(&rule.unwrap_or(usize::MAX)) =>
                    {
                        gov.counters
                            .budget_fallbacks
                            .fetch_add(1, Ordering::Relaxed);
                        let from = std::mem::replace(&mut ctx.inspection.model, model.clone());
                        ctx.inspection.original_model.get_or_insert(from.clone());
                        let q = ctx.quota.get_or_insert_with(Box::default);
                        q.fallback = Some(format!("{from} -> {model} (budget {name} is used up)"));
                        unlimited.extend(rule);
                        price = price_of(snap, model);
                        // The fallback model must be allowed too.
                        check_model(gov, snap, client, ctx, key, model)?;
                    }
                    OnBreach::Queue { timeout } => {
                        let deadline = *queue_deadline.get_or_insert_with(|| {
                            gov.counters.budget_queued.fetch_add(1, Ordering::Relaxed);
                            Instant::now() + *timeout
                        });
                        if Instant::now() >= deadline {
                            return Err(exhausted(gov, ctx, &name, resets_at_ms, &used, true));
                        }
                        monoio::time::sleep(QUEUE_POLL.min(deadline - Instant::now())).await;
                    }
                    _ => return Err(exhausted(gov, ctx, &name, resets_at_ms, &used, false)),
                }
            }
        }
    }
}

fn exhausted(
    gov: &Governor,
    ctx: &RequestCtx,
    name: &str,
    resets_at_ms: i64,
    used: &str,
    queued: bool,
) -> GateError {
    gov.counters.budget_blocked.fetch_add(1, Ordering::Relaxed);
    let waited = if queued {
        " after waiting for headroom"
    } else {
        ""
    };
    let retry = ((resets_at_ms - now_ms()).max(1000) / 1000) as u32;
    GateError::new(
        ErrorKind::BudgetExceeded,
        format!(
            "The budget `{name}` has no room for this request{waited} ({used}); it resets at {}.",
            rfc3339(resets_at_ms)
        ),
    )
    .with_detail(ErrorDetail {
        limit: Some(name.to_string()),
        resets_at_ms: Some(resets_at_ms),
        retry_after_s: Some(retry),
        headers: ctx
            .quota
            .as_deref()
            .map(|q| render_quota(q, ctx.api.wire()))
            .unwrap_or_default(),
    })
}

/// Reserves `tokens` and `micro_usd` against every budget that applies, or none of them.
#[allow(clippy::too_many_arguments)]
fn attempt(
    gov: &Governor,
    snap: &Snapshot,
    client: &ClientConn,
    ctx: &RequestCtx,
    key: Option<&KeyEntry>,
    tokens: u64,
    micro_usd: u64,
    unlimited: &[usize],
) -> Attempt {
    let policy = &snap.cfg.governance;
    let f = facts(client, ctx, key);
    let now = now_ms();
    let mut held: Vec<HeldBudget> = Vec::new();
    let key_budget = key
        .filter(|k| k.spec.budget_tokens.is_some() || k.spec.budget_usd.is_some())
        .map(|k| {
            let (xt, xc) = gov.exception_extra_for_key(&k.id);
            (
                None,
                k.state.budget.clone(),
                k.budget_info.clone(),
                k.spec.budget_tokens.map(|t| t.saturating_add(xt)),
                k.spec
                    .budget_usd
                    .map(|u| ((u * 1e6) as u64).saturating_add(xc)),
            )
        });
    let rules = policy
        .budgets
        .iter()
        .enumerate()
        .zip(snap.governance.budgets.iter())
        .filter(|((_, rule), _)| rule.scope.matches(&f))
        .map(|((i, rule), (state, info))| {
            let (xt, xc) = gov.exception_extra(&rule.scope);
            (
                Some(i),
                state.clone(),
                info.clone(),
                rule.tokens.map(|t| t.saturating_add(xt)),
                rule.micro_usd.map(|c| c.saturating_add(xc)),
            )
        });
    for (rule, state, info, limit_t, limit_c) in key_budget.into_iter().chain(rules) {
        let span = info.window.at(now);
        let free = rule.is_some_and(|i| unlimited.contains(&i));
        let cap = |limit: Option<u64>| {
            if free {
                u64::MAX
            } else {
                limit.unwrap_or(u64::MAX)
            }
        };
        // In cluster mode a shared budget's cap is what this agent leased.
        let leased = |limit: Option<u64>, granted: &crate::governance::budget::Meter| match limit {
            Some(l) if !free => state.lease.cap(granted, span.index, l),
            _ => cap(limit),
        };
        let t = state
            .tokens
            .try_reserve(span.index, tokens, leased(limit_t, &state.lease.tokens));
        let c = match t {
            Ok(_) => state.micro_usd.try_reserve(
                span.index,
                micro_usd,
                leased(limit_c, &state.lease.micro_usd),
            ),
            Err(_) => Err(0),
        };
        if t.is_err() || c.is_err() {
            if t.is_ok() {
                state.tokens.settle(span.index, tokens, 0);
            }
            let used = match (t, c) {
                (Err(used), _) => format!(
                    "{used} of {} tokens used, {tokens} requested",
                    limit_t.unwrap_or(0)
                ),
                (_, Err(used)) => format!(
                    "${:.4} of ${:.2} used, ${:.4} requested",
                    used as f64 / 1e6,
                    limit_c.unwrap_or(0) as f64 / 1e6,
                    micro_usd as f64 / 1e6
                ),
                _ => String::new(),
            };
            // Dropping `held` releases what this attempt reserved.
            let mut release = Hold::default();
            release.budgets = held;
            drop(release);
            let refill = state.lease.may_refill(span.index);
            if refill {
                state
                    .lease
                    .starved
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            return Attempt::Full {
                rule,
                name: info.name.clone(),
                resets_at_ms: span.end_ms,
                used,
                refill,
            };
        }
        held.push(HeldBudget {
            state,
            info,
            window: span.index,
            window_start_ms: span.start_ms,
            window_end_ms: span.end_ms,
            limit_tokens: limit_t,
            limit_micro_usd: limit_c,
            tokens,
            micro_usd,
        });
    }
    Attempt::Held(held)
}
