//! Priority classes: `x-tollgate-priority: interactive` (the default, unless the request's key
//! has a default class) runs at once;
//! `batch` waits until some replica of its model has room — its queue (the engine's scraped
//! running + waiting, plus this worker's requests in flight) below `routing.batch.max_queue`,
//! and, with `routing.batch.max_gpu_util`, some GPU of the node below that utilisation (NVML) —
//! or until the clock is inside `routing.batch.hours` (an off-peak window), polling every
//! 50 ms. Past `max_wait_ms` it gets 503 `batch_deferred` with `Retry-After`. It waits in the
//! agent, holding no provider connection, after admission (its budget reservation is held).

use std::time::{Duration, Instant};

use crate::config::routing::{BatchPolicy, PriorityClass};
use crate::error::{ErrorDetail, ErrorKind, GateError};
use crate::pipeline::RequestCtx;
use crate::snapshot::Snapshot;
use crate::telemetry::gpu::{GpuBoard, GpuSample};

use super::balance::Candidate;
use super::RouteLocal;

const POLL: Duration = Duration::from_millis(50);

/// The request's class: `x-tollgate-priority`, else its key's default, else interactive.
fn is_batch(ctx: &RequestCtx) -> Result<bool, GateError> {
    match ctx.head.header("x-tollgate-priority") {
        None => Ok(ctx
            .key
            .as_ref()
            .and_then(|k| k.spec.priority)
            .is_some_and(|p| p == PriorityClass::Batch)),
        Some(v) if v.eq_ignore_ascii_case(b"interactive") => Ok(false),
        Some(v) if v.eq_ignore_ascii_case(b"batch") => Ok(true),
        Some(_) => Err(GateError::new(
            ErrorKind::InvalidRequest {
                param: Some("x-tollgate-priority"),
            },
            "`x-tollgate-priority` must be `interactive` or `batch`",
        )),
    }
}

/// The shortest queue among the model's targets.
fn shortest_queue(snap: &Snapshot, local: &RouteLocal, model: usize) -> f64 {
    let board = local.balance.replicas.load();
    let stale = snap.cfg.routing.prefix.stale_after;
    snap.cfg.models[model]
        .targets
        .iter()
        .map(|t| {
            let c = Candidate {
                target: 0,
                provider_index: t.provider,
                provider_id: snap.providers[t.provider].id,
                weight: t.weight,
            };
            local.balance.load(&board, &c, stale).0
        })
        .fold(f64::INFINITY, f64::min)
}

/// Whether a batch request may run now: inside the off-peak window, or while some replica's
/// queue is below `max_queue` and (with `max_gpu_util`) some GPU of the node is below it. A node
/// whose GPU figures are unknown (no NVML) is judged by the queues alone.
fn may_run(policy: &BatchPolicy, minute: u16, shortest_queue: f64, gpus: &[GpuSample]) -> bool {
    if policy.hours.is_some_and(|h| h.contains(minute)) {
        return true;
    }
    let gpu_room = match policy.max_gpu_util {
        Some(max) if !gpus.is_empty() => gpus.iter().any(|g| g.utilization_pct < max),
        _ => true,
    };
    shortest_queue < policy.max_queue && gpu_room
}

/// Holds a batch request until it may run; interactive requests pass at once. Returns whether
/// the request is of the batch class.
pub async fn hold(
    snap: &Snapshot,
    local: &RouteLocal,
    gpus: &GpuBoard,
    ctx: &mut RequestCtx,
) -> Result<bool, GateError> {
    if !is_batch(ctx)? {
        return Ok(false);
    }
    let Some((model, _)) = snap.cfg.model_by_name(&ctx.inspection.model) else {
        return Ok(true);
    };
    let policy = &snap.cfg.routing.batch;
    let started = Instant::now();
    let _waiting = Waiting::new(local);
    loop {
        let minute = ((crate::governance::window::now_ms().max(0) / 60_000) % 1440) as u16;
        let gpus = gpus.samples();
        if may_run(policy, minute, shortest_queue(snap, local, model), &gpus) {
            break;
        }
        if started.elapsed() >= policy.max_wait {
            local.batch_deferred.set(local.batch_deferred.get() + 1);
            return Err(GateError::new(
                ErrorKind::Unavailable {
                    code: "batch_deferred",
                },
                format!(
                    "batch request deferred: every replica of `{}` stayed busy for {} ms",
                    ctx.inspection.model,
                    policy.max_wait.as_millis()
                ),
            )
            .with_detail(ErrorDetail {
                retry_after_s: Some(policy.max_wait.as_secs().clamp(1, 60) as u32),
                ..ErrorDetail::default()
            }));
        }
        monoio::time::sleep(POLL).await;
    }
    let waited = started.elapsed();
    if waited >= POLL {
        local.batch_waited.set(local.batch_waited.get() + 1);
        ctx.route
            .note(format_args!("batch waited {} ms", waited.as_millis()));
    }
    Ok(true)
}

/// Counts a batch request as waiting for as long as it holds (whatever way `hold` returns).
struct Waiting<'a>(&'a RouteLocal);

impl<'a> Waiting<'a> {
    fn new(local: &'a RouteLocal) -> Self {
        local.batch_waiting.set(local.batch_waiting.get() + 1);
        Waiting(local)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let w = &self.0.batch_waiting;
        w.set(w.get().saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::routing::Hours;

    fn gpu(util: u32) -> GpuSample {
        GpuSample {
            index: 0,
            utilization_pct: util,
            memory_used_bytes: 0,
            memory_total_bytes: 1,
        }
    }

    #[test]
    fn batch_runs_off_peak_or_when_queues_and_gpus_leave_room() {
        let mut p = BatchPolicy {
            max_queue: 4.0,
            hours: Hours::parse("01:00-06:00"),
            max_wait: std::time::Duration::from_secs(1),
            max_gpu_util: Some(80),
        };
        let noon = 12 * 60;
        assert!(may_run(&p, noon, 1.0, &[gpu(50)]));
        assert!(!may_run(&p, noon, 9.0, &[gpu(50)]), "queues full");
        assert!(
            !may_run(&p, noon, 1.0, &[gpu(95), gpu(85)]),
            "every GPU busy"
        );
        assert!(
            may_run(&p, noon, 1.0, &[gpu(95), gpu(10)]),
            "one GPU has room"
        );
        assert!(may_run(&p, noon, 1.0, &[]), "no GPU figures: queues decide");
        assert!(
            may_run(&p, 2 * 60, 9.0, &[gpu(99)]),
            "off-peak: whatever the load"
        );
        p.max_gpu_util = None;
        assert!(may_run(&p, noon, 1.0, &[gpu(99)]));
    }
}
