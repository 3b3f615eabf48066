//! Phase 9, settle: runs for every proxied request, failed or not. Records metrics and
//! hands one usage record to the ledger writer. When the provider reported no usage for a
//! successful response, the record goes to the control thread to be estimated with the
//! tokenizer first (never on this thread), and is flagged `estimated`. The connection's kernel
//! attribution rides along by reference (an `Arc` clone); the control thread resolves its
//! cgroup and applies attribution rules (`ledger/enrich.rs`).
//! Reads: the whole `ctx` and the connection's attribution. Writes: nothing on the ctx;
//! metrics and the ledger channel.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::kernel::ConnAttribution;
use crate::ledger::writer::LedgerMsg;
use crate::ledger::UsageRecord;
use crate::metering::estimate::EstimateInput;
use crate::pipeline::{Outcome, RequestCtx};
use crate::telemetry::metrics::{SeriesKey, MODEL_INTERCEPTED};
use crate::worker::Worker;

pub fn run(w: &Worker, ctx: &mut RequestCtx, conn: Option<&Arc<ConnAttribution>>) {
    let cfg = &w.cfg;
    let end = ctx.last_byte_at.unwrap_or_else(std::time::Instant::now);
    let latency = end.duration_since(ctx.started);
    let ttft = ctx.first_byte_at.map(|t| t.duration_since(ctx.started));
    let target = ctx.target;
    let series = SeriesKey {
        model: target.map_or(u32::MAX, |t| {
            t.model.map_or(MODEL_INTERCEPTED, |m| m as u32)
        }),
        provider: target.map_or(u32::MAX, |t| t.provider as u32),
        api: ctx.api.label(),
        status: ctx.status,
    };
    let shard = &w.shared.metrics.shards[w.index];
    shard.record_request(series, latency, ttft);

    let ts_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
        - latency.as_millis() as i64;
    let record = UsageRecord {
        id: ctx.id.clone(),
        ts_ms,
        latency_us: latency.as_micros() as u64,
        ttft_us: ttft.map(|t| t.as_micros() as u64),
        status: ctx.status,
        outcome: match &ctx.error_code {
            Some(code) => (*code).to_string(),
            None => ctx.outcome.label().to_string(),
        },
        api: ctx.api.label(),
        identity: std::mem::take(&mut ctx.identity),
        requested_model: (!ctx.inspection.model.is_empty()).then(|| ctx.inspection.model.clone()),
        served_model: target.map(|t| t.upstream_model(cfg, &ctx.inspection.model).to_string()),
        provider: target.map(|t| cfg.providers[t.provider].name.clone()),
        usage: ctx.usage.unwrap_or_default(),
        estimated: false,
        conn: conn.cloned(),
        cgroup: None,
    };
    // Bill generated tokens whenever the provider produced a response body we relayed,
    // including streams cut short by the client or the provider.
    let produced = (200..300).contains(&ctx.status) && ctx.response_started;
    let needs_estimate = ctx.usage.is_none() && produced && ctx.outcome != Outcome::Rejected;
    let msg = if needs_estimate {
        LedgerMsg::Estimate {
            record: Box::new(record),
            input: Box::new(EstimateInput {
                api: ctx.api,
                stream: ctx.inspection.stream,
                request_body: ctx.body.clone(),
                prompt_spans: std::mem::take(&mut ctx.inspection.prompt_spans),
                response: std::mem::take(&mut ctx.response_payload),
                partial: ctx.partial_usage,
            }),
            series,
        }
    } else {
        if let Some(u) = &ctx.usage {
            shard.record_usage(series, u, false);
        }
        LedgerMsg::Record(Box::new(record))
    };
    w.shared
        .metrics
        .globals
        .ledger_queue
        .fetch_add(1, Ordering::Relaxed);
    if !w.ledger.push(msg) {
        w.shared
            .metrics
            .globals
            .ledger_queue
            .fetch_sub(1, Ordering::Relaxed);
        tracing::error!(id = %ctx.id, "ledger writer is gone; usage record lost");
    }
}
