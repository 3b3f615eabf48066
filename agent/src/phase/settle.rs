//! Phase 9, settle: runs for every proxied request, failed or not. Records metrics and
//! hands one usage record to the ledger writer. When the provider reported no usage for a
//! successful response, the record goes to the control thread to be estimated with the
//! tokenizer first (never on this thread), and is flagged `estimated`. The connection's kernel
//! attribution rides along by reference (an `Arc` clone); the control thread resolves its
//! cgroup and applies attribution rules (`ledger/enrich.rs`).
//!
//! A response the client received must be on the ledger even if the agent dies right after
//! sending it. So [`seal`] builds the record and journals it *before* the response's last byte
//! is written (relay and `pipeline::fail` call it); [`run`] then only refreshes the timing and
//! outcome and queues it, journalling again only if the outcome changed (replay keeps the last
//! line per request id). Requests that end without a final write (the client went away) are
//! journalled here. A plain response's usage is read after its last byte ([`seal_unread`]
//! journals the body instead, for replay to read), so the client does not wait on it.
//! Reads: the whole `ctx` and the connection's attribution. Writes: `ctx.sealed`; metrics and
//! the ledger channel.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::clock::WallAnchor;
use crate::kernel::ConnAttribution;
use crate::ledger::writer::LedgerMsg;
use crate::ledger::UsageRecord;
use crate::metering::estimate::EstimateInput;
use crate::pipeline::RequestCtx;
use crate::telemetry::metrics::{SeriesKey, MODEL_INTERCEPTED};
use crate::worker::Worker;

/// A record built (and journalled) before the response's last byte.
pub struct Sealed {
    msg: SealedMsg,
    /// The outcome that was journalled.
    outcome: Cow<'static, str>,
}

enum SealedMsg {
    Ready(LedgerMsg),
    /// Journalled with the response's body, its usage still to be read ([`seal_unread`]).
    Unread {
        record: Box<UsageRecord>,
        /// Taken when the usage is read.
        body: Option<Bytes>,
    },
}

/// Largest plain response body [`seal_unread`] journals; a larger one's usage is read before
/// its last byte, as before (an embeddings response runs to megabytes).
pub const UNREAD_MAX: usize = 16 << 10;

/// Builds the record and journals it. Call right before the response's final write.
pub fn seal(w: &Worker, ctx: &mut RequestCtx, conn: Option<&Arc<ConnAttribution>>) {
    let msg = build(ctx, conn, Instant::now(), &w.wall);
    w.ledger.journal(&msg);
    let outcome = record_of(&msg).outcome.clone();
    ctx.sealed = Some(Sealed {
        msg: SealedMsg::Ready(msg),
        outcome,
    });
}

/// Like [`seal`] for a complete plain 2xx response whose usage has not been read: the record
/// is journalled with the body (at most [`UNREAD_MAX`] bytes), which replay reads the usage
/// from, so reading it (~7,400 instructions, the validation of the whole body) waits until
/// the client has its last byte ([`read_unread`]).
pub fn seal_unread(
    w: &Worker,
    ctx: &mut RequestCtx,
    conn: Option<&Arc<ConnAttribution>>,
    body: Bytes,
) {
    let record = record(ctx, conn, Instant::now(), &w.wall);
    w.ledger.journal_unread(&record, ctx.upstream_api, &body);
    ctx.sealed = Some(Sealed {
        outcome: record.outcome.clone(),
        msg: SealedMsg::Unread {
            record: Box::new(record),
            body: Some(body),
        },
    });
}

/// Reads the usage of a response sealed unread, once; nothing for any other request.
pub fn read_unread(w: &Worker, ctx: &mut RequestCtx) {
    let body = match &mut ctx.sealed {
        Some(Sealed {
            msg: SealedMsg::Unread { body, .. },
            ..
        }) => body.take(),
        _ => None,
    };
    if let Some(body) = body {
        read_plain(w, ctx, &body);
    }
}

/// The usage (and model version) of a complete plain 2xx response body.
pub fn read_plain(w: &Worker, ctx: &mut RequestCtx, body: &[u8]) {
    (ctx.usage, ctx.upstream_version) =
        crate::metering::usage::plain_response_facts(ctx.upstream_api, body);
    keep_payload_for_sampling(w, ctx);
}

/// With the provider's usage in hand, the retained response is dropped, unless this request
/// is one the estimator is measured on (`ledger.accuracy_sample_every`).
pub fn keep_payload_for_sampling(w: &Worker, ctx: &mut RequestCtx) {
    if ctx.usage.is_some() {
        ctx.sample_accuracy = !ctx.response_payload.is_empty() && w.samples_accuracy();
        if !ctx.sample_accuracy {
            ctx.response_payload.clear();
        }
    }
}

pub fn run(w: &Worker, ctx: &mut RequestCtx, conn: Option<&Arc<ConnAttribution>>) {
    let end = ctx.last_byte_at.unwrap_or_else(Instant::now);
    read_unread(w, ctx);
    let (mut msg, journalled) = match ctx.sealed.take() {
        Some(Sealed {
            msg: SealedMsg::Ready(msg),
            outcome,
        }) => (msg, Some(outcome)),
        Some(Sealed {
            msg: SealedMsg::Unread { mut record, .. },
            outcome,
        }) => {
            record.usage = ctx.usage.unwrap_or_default();
            record.cost_micro_usd = cost(ctx.usage.as_ref(), record.price);
            record.upstream_version = ctx.upstream_version.take();
            (message(ctx, record), Some(outcome))
        }
        None => (build(ctx, conn, end, &w.wall), None),
    };
    let latency = end.duration_since(ctx.started);
    let record = record_mut(&mut msg);
    record.latency_us = latency.as_micros() as u64;
    // `ts_ms`, the request's wall-clock start, is the one `build` wrote (and journalled):
    // reading the wall clock again would only move it by jitter.
    record.outcome = outcome_label(ctx);
    record.status = ctx.status;
    let journal = journalled.as_ref() != Some(&record.outcome);

    crate::phase::guard::record(w, ctx);
    let series = series(ctx);
    if let LedgerMsg::Estimate { series: s, .. } = &mut msg {
        *s = series;
    }
    let shard = &w.shared.metrics.shards[w.index];
    let ttft = ctx.first_byte_at.map(|t| t - ctx.started);
    match final_record(&mut msg) {
        Some(r) => {
            let usage = ctx.usage.as_ref().map(|u| (u, r.cost_micro_usd));
            shard.record_answered(series, latency, ttft, usage);
            // The usage is final: settle the reservations here, where admission took them.
            crate::governance::settle_record(r, &w.shared.governor);
        }
        // The estimate's usage is counted when the estimator has it.
        None => shard.record_request(series, latency, ttft),
    }
    enqueue(w, msg, journal, &ctx.id);
}

/// Hands a record to the ledger writer, counted in the queue gauge until it is written.
pub fn enqueue(w: &Worker, msg: LedgerMsg, journal: bool, id: &str) {
    let queue = &w.shared.metrics.globals.ledger_queue;
    queue.fetch_add(1, Ordering::Relaxed);
    if !w.ledger.push(msg, journal) {
        queue.fetch_sub(1, Ordering::Relaxed);
        tracing::error!(id = %id, "ledger writer is gone; usage record lost");
    }
}

/// The request's metric series, by the stable label ids of its snapshot.
fn series(ctx: &RequestCtx) -> SeriesKey {
    let target = ctx.target;
    let snap = &ctx.snap;
    SeriesKey {
        model: target.map_or(u32::MAX, |t| {
            t.model_index()
                .map_or(MODEL_INTERCEPTED, |m| snap.model_labels[m])
        }),
        provider: target.map_or(u32::MAX, |t| snap.providers[t.provider].label),
        api: ctx.api.label(),
        status: crate::telemetry::metrics::status_series(ctx.status),
    }
}

fn outcome_label(ctx: &RequestCtx) -> Cow<'static, str> {
    Cow::Borrowed(ctx.error_code.unwrap_or_else(|| ctx.outcome.label()))
}

fn record_of(msg: &LedgerMsg) -> &UsageRecord {
    match msg {
        LedgerMsg::Record(r) => r,
        LedgerMsg::Sampled { record, .. } | LedgerMsg::Estimate { record, .. } => record,
    }
}

fn record_mut(msg: &mut LedgerMsg) -> &mut UsageRecord {
    match msg {
        LedgerMsg::Record(r) => r,
        LedgerMsg::Sampled { record, .. } | LedgerMsg::Estimate { record, .. } => record,
    }
}

/// The record when its usage is final (the provider's): settled here, on the worker.
fn final_record(msg: &mut LedgerMsg) -> Option<&mut UsageRecord> {
    match msg {
        LedgerMsg::Record(r) | LedgerMsg::Sampled { record: r, .. } => Some(r),
        LedgerMsg::Estimate { .. } => None,
    }
}

/// The ledger message for the request as it stands at `end`. Moves the identity, prompt spans
/// and retained response out of `ctx` (nothing reads them after this).
fn build(
    ctx: &mut RequestCtx,
    conn: Option<&Arc<ConnAttribution>>,
    end: Instant,
    wall: &WallAnchor,
) -> LedgerMsg {
    let record = Box::new(record(ctx, conn, end, wall));
    message(ctx, record)
}

/// The request's ledger row as it stands at `end`. Moves the identity, hold and route trail
/// out of `ctx`.
fn record(
    ctx: &mut RequestCtx,
    conn: Option<&Arc<ConnAttribution>>,
    end: Instant,
    wall: &WallAnchor,
) -> UsageRecord {
    let snap = ctx.snap.clone();
    let cfg = &snap.cfg;
    let latency = end.duration_since(ctx.started);
    let target = ctx.target;
    // Charged at the serving model's price: its configured name, then the provider's name.
    // Configured targets carry their price (resolved at load); an intercepted request's model
    // is looked up in the catalog.
    let price = match target.and_then(|t| t.model) {
        Some((m, t)) => cfg.models[m].targets[t].price.or(ctx.price),
        None => ctx
            .price
            .or_else(|| cfg.prices.lookup(&[ctx.inspection.model.as_str()])),
    };
    UsageRecord {
        trace_parent: ctx
            .head
            .header("traceparent")
            .and_then(crate::telemetry::otlp::parse_traceparent),
        upstream_version: ctx.upstream_version.take(),
        prompt_bytes: ctx
            .inspection
            .prompt_spans
            .iter()
            .map(|s| s.len() as u64)
            .sum(),
        id: ctx.id.clone(),
        // The request's wall-clock start, from the worker's anchor (no clock read).
        ts_ms: wall.ms_at(ctx.started),
        latency_us: latency.as_micros() as u64,
        ttft_us: ctx
            .first_byte_at
            .map(|t| t.duration_since(ctx.started).as_micros() as u64),
        status: ctx.status,
        outcome: outcome_label(ctx),
        api: ctx.api.label(),
        identity: std::mem::take(&mut ctx.identity),
        requested_model: ctx
            .inspection
            .original_model
            .clone()
            .or_else(|| (!ctx.inspection.model.is_empty()).then(|| ctx.inspection.model.clone())),
        served_model: target.map(|t| t.upstream_model(cfg, &ctx.inspection.model).to_string()),
        provider: target.map(|t| cfg.providers[t.provider].name.clone()),
        usage: ctx.usage.unwrap_or_default(),
        estimated: false,
        conn: conn.cloned(),
        cgroup: None,
        key_id: ctx.key.as_ref().map(|k| k.id.clone()),
        cost_micro_usd: cost(ctx.usage.as_ref(), price),
        price,
        hold: std::mem::take(&mut ctx.hold),
        route: (!ctx.route.trail.is_empty()).then(|| std::mem::take(&mut ctx.route.trail)),
        attempts: if ctx.upstream_head_at.is_some() || ctx.route.attempts > 1 {
            ctx.route.attempts.max(1)
        } else {
            0
        },
        score: ctx.route.score,
        prefix_bytes: ctx.route.prefix_bytes,
        guard: ctx.guard.summary(),
        cache: ctx.cache.label(),
        saved_micro_usd: ctx.cache.saved_micro_usd,
        saved_tokens: ctx.cache.saved_tokens,
    }
}

/// What `usage` costs at `price`; nothing without either.
fn cost(
    usage: Option<&crate::metering::Usage>,
    price: Option<crate::metering::prices::Price>,
) -> u64 {
    match (usage, price) {
        (Some(u), Some(p)) => p.micro_usd(u),
        _ => 0,
    }
}

/// The message `record` goes to the ledger in: estimated first when the provider reported no
/// usage, sampled for the estimator's accuracy, or as it is. Moves the prompt spans and the
/// retained response out of `ctx`.
fn message(ctx: &mut RequestCtx, record: Box<UsageRecord>) -> LedgerMsg {
    // Bill generated tokens whenever the provider produced a response body we relayed,
    // including streams cut short by the client or the provider.
    // (A response a guardrail blocked mid-stream counts too: the provider generated it.)
    let produced = (200..300).contains(&ctx.status) && ctx.response_started;
    let needs_estimate = ctx.usage.is_none() && produced;
    if needs_estimate {
        let partial = ctx.partial_usage;
        LedgerMsg::Estimate {
            record,
            input: estimate_input(ctx, partial),
            series: series(ctx),
        }
    } else if ctx.sample_accuracy && ctx.usage.is_some() {
        LedgerMsg::Sampled {
            record,
            input: estimate_input(ctx, None),
        }
    } else {
        LedgerMsg::Record(record)
    }
}

/// What the estimator needs, moved out of `ctx` (nothing reads it after settle).
fn estimate_input(
    ctx: &mut RequestCtx,
    partial: Option<crate::metering::Usage>,
) -> Box<EstimateInput> {
    Box::new(EstimateInput {
        api: ctx.upstream_api,
        stream: ctx.inspection.stream,
        request_body: ctx.body.clone(),
        prompt_spans: std::mem::take(&mut ctx.inspection.prompt_spans),
        response: std::mem::take(&mut ctx.response_payload),
        partial,
        tokenizer: tokenizer_of(ctx),
        engine: engine_of(ctx),
    })
}

/// The engine that served, when its model counts prompts with the engine's `/tokenize`.
fn engine_of(
    ctx: &RequestCtx,
) -> Option<std::sync::Arc<crate::metering::engine_tokenize::EngineTokenize>> {
    let (m, t) = ctx.target?.model?;
    ctx.snap.cfg.models[m].targets[t].tokenize.clone()
}

/// The served model's tokenizer, when its configuration names one.
fn tokenizer_of(ctx: &RequestCtx) -> Option<crate::metering::tokenizer::ModelTokenizer> {
    let m = ctx.target.and_then(|t| t.model_index())?;
    ctx.snap.cfg.models[m].tokenizer.clone()
}
