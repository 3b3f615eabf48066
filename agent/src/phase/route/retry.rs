//! After an attempt: feed the target's breaker, and decide whether the request goes to
//! another target. Only failures where nothing reached the client are retried — a connect
//! that failed or a request that could not be written (the provider never had it), or a
//! status the model's `retry.on` names, answered before any body byte was relayed (the
//! response is dropped unread). Providers bill nothing for requests they refuse with 429 or
//! 5xx, so a retried attempt costs no tokens; it is recorded in the request's route trail,
//! and only the attempt that answered is billed. A request the provider may have processed
//! (written in full, then no answer or a timeout) is never sent again.

use crate::config::routing::RetryPolicy;
use crate::error::{ErrorKind, GateError};
use crate::governance::window::now_ms;
use crate::pipeline::RequestCtx;
use crate::snapshot::Snapshot;

use super::{pick, RouteLocal};

/// Longest `Retry-After` honoured (a provider asking for more is held off this long).
const MAX_HOLD_OFF_MS: u64 = 10 * 60 * 1000;

/// A provider answered with `status` (its `Retry-After`, if any, in ms) at `now` (ms since
/// the Unix epoch; the caller has the head's arrival time already). Returns whether the
/// request was routed to another target; if so the caller drops this response unread.
pub fn after_attempt(
    snap: &Snapshot,
    local: &RouteLocal,
    ctx: &mut RequestCtx,
    status: u16,
    retry_after_ms: Option<u64>,
    now: u64,
) -> bool {
    let failed = status == 429 || status >= 500;
    record(snap, ctx, failed, retry_after_ms, now);
    if !policy(snap, ctx).is_some_and(|p| p.retries_status(status)) {
        return false;
    }
    let label = label(snap, ctx);
    retry(
        snap,
        local,
        ctx,
        now,
        format_args!("{label} answered {status}"),
    )
}

/// An attempt failed before a response head. Returns whether the request was routed to
/// another target.
pub fn after_error(
    snap: &Snapshot,
    local: &RouteLocal,
    ctx: &mut RequestCtx,
    e: &GateError,
) -> bool {
    let failed = matches!(
        e.kind,
        ErrorKind::UpstreamUnreachable | ErrorKind::UpstreamTimeout | ErrorKind::UpstreamProtocol
    );
    let now = now_ms().max(0) as u64;
    record(snap, ctx, failed, None, now);
    if !e.retry_elsewhere || !policy(snap, ctx).is_some_and(|p| p.on_connect) {
        return false;
    }
    let label = label(snap, ctx);
    retry(
        snap,
        local,
        ctx,
        now,
        format_args!("{label}: {}", e.message),
    )
}

/// The retry policy of the model the request asked for (after tiers).
fn policy<'a>(snap: &'a Snapshot, ctx: &RequestCtx) -> Option<&'a RetryPolicy> {
    ctx.route.model.map(|m| &snap.cfg.models[m].retry)
}

fn label(snap: &Snapshot, ctx: &RequestCtx) -> String {
    match ctx.target.and_then(|t| t.model) {
        Some((m, t)) => snap.breakers[m][t].label.clone(),
        None => String::new(),
    }
}

/// The attempt's outcome on its target's breaker.
fn record(snap: &Snapshot, ctx: &RequestCtx, failed: bool, hold_ms: Option<u64>, now: u64) {
    let Some((m, t)) = ctx.target.and_then(|t| t.model) else {
        return;
    };
    let tb = &snap.breakers[m][t];
    if !snap.cfg.models[m].breaker.enabled {
        return;
    }
    if !failed {
        tb.breaker.success();
        return;
    }
    if tb.breaker.failure(now, &snap.cfg.models[m].breaker) {
        tracing::warn!(target = %tb.label, "circuit breaker opened: too many failures");
    }
    if let Some(ms) = hold_ms {
        tb.breaker.hold_off(now, ms.min(MAX_HOLD_OFF_MS));
    }
}

fn retry(
    snap: &Snapshot,
    local: &RouteLocal,
    ctx: &mut RequestCtx,
    now: u64,
    why: std::fmt::Arguments<'_>,
) -> bool {
    let (Some((m, t)), Some(policy)) = (ctx.target.and_then(|t| t.model), policy(snap, ctx)) else {
        return false;
    };
    ctx.route.note(why);
    ctx.route.tried.push((m, t));
    if ctx.route.attempts > policy.attempts {
        return false;
    }
    local.roll(now);
    let budget = &snap.cfg.routing.retry_budget;
    let allowed = (budget.ratio * f64::from(local.requests.get())) as u32;
    if local.retries.get() >= allowed.max(budget.min_per_second) {
        ctx.route.note(format_args!("retry budget exhausted"));
        return false;
    }
    let before = ctx.target;
    if pick(snap, local, ctx, now).is_err() || ctx.target == before {
        ctx.target = before;
        return false;
    }
    local.retries.set(local.retries.get() + 1);
    ctx.route.attempts += 1;
    true
}

/// A provider's `Retry-After` in milliseconds: delay-seconds (the form providers send; an
/// HTTP date is not honoured).
pub fn retry_after_ms(value: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let secs: f64 = s.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some((secs * 1000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds() {
        assert_eq!(retry_after_ms(b"2"), Some(2000));
        assert_eq!(retry_after_ms(b" 0.5 "), Some(500));
        assert_eq!(retry_after_ms(b"-1"), None);
        assert_eq!(retry_after_ms(b"Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
