//! Calls Tollgate makes itself on a request's behalf: a guard model's check, the semantic
//! cache's embedding. Each goes to the first target of a configured model (an OpenAI-compatible
//! replica) over the worker's connection pool, and is metered and attributed like any request:
//! a ledger row of its own (id `<request id>.<suffix>`, the caller's identity and key, the
//! model's provider and price, a `route` naming why it was made), the model's metrics, and a
//! charge to the budgets and token rate limits the request was admitted under.
//! The caller bounds the whole call with its own timeout.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::api::Api;
use crate::http::iovec::BytesVec;
use crate::ledger::writer::LedgerMsg;
use crate::ledger::UsageRecord;
use crate::metering::Usage;
use crate::phase::forward::{self, Forwarded};
use crate::pipeline::RequestCtx;
use crate::snapshot::Snapshot;
use crate::telemetry::metrics::SeriesKey;
use crate::upstream::body::BodyReader;
use crate::worker::Worker;

/// Largest answer read.
const MAX_ANSWER: usize = 1 << 20;

/// What model `model` is called at its first target.
pub fn upstream_model(snap: &Snapshot, model: usize) -> Result<&str, String> {
    snap.cfg.models[model]
        .targets
        .first()
        .map(|t| t.upstream_model.as_str())
        .ok_or_else(|| format!("model `{}` has no target", snap.cfg.models[model].name))
}

/// POSTs `body` to `api`'s path at model `model`'s first target; the 200 answer's body.
pub async fn post(
    w: &Worker,
    snap: &Snapshot,
    model: usize,
    api: Api,
    body: Bytes,
    request_id: &str,
) -> Result<Vec<u8>, String> {
    let m = &snap.cfg.models[model];
    let target = m
        .targets
        .first()
        .ok_or_else(|| format!("model `{}` has no target", m.name))?;
    let provider = &snap.cfg.providers[target.provider];
    let head = Bytes::from(head(provider, api, body.len(), request_id));
    let parts = || {
        let mut v = BytesVec::with_capacity(2);
        v.push(head.clone());
        v.push(body.clone());
        v
    };
    let Forwarded { mut conn, head } =
        forward::exchange(w, snap, target.provider, &m.timeouts, parts)
            .await
            .map_err(|e| e.message)?;
    let mut reader = BodyReader::new(head.framing);
    let mut answer = Vec::new();
    while !reader.is_done() {
        match reader.next(&mut conn, m.timeouts.idle).await {
            Ok(Some(p)) if answer.len() + p.len() <= MAX_ANSWER => answer.extend_from_slice(&p),
            Ok(Some(_)) => return Err(format!("answer over {MAX_ANSWER} bytes")),
            Ok(None) => break,
            Err(e) => return Err(format!("reading the answer: {e:?}")),
        }
    }
    if reader.is_done() && head.keep_alive {
        w.pool.borrow_mut().put(conn, Instant::now());
    }
    if head.status != 200 {
        return Err(format!("model `{}` answered {}", m.name, head.status));
    }
    Ok(answer)
}

fn head(provider: &crate::config::Provider, api: Api, body_len: usize, id: &str) -> Vec<u8> {
    let mut h = format!(
        "POST {}{} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         accept-encoding: identity\r\ncontent-length: {body_len}\r\nx-tollgate-request-id: {id}\r\n",
        provider.base_path,
        api.upstream_path(),
        provider.host_header,
    );
    if let Some(k) = &provider.api_key {
        h.push_str("authorization: Bearer ");
        h.push_str(k);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// One answered call, for its ledger row.
pub struct Call<'a> {
    pub model: usize,
    pub api: Api,
    /// The row's id is `<request id>.<id_suffix>`.
    pub id_suffix: &'a str,
    /// Why the call was made (`guard:<rule>`, `cache:semantic`).
    pub route: &'a str,
    pub usage: Option<Usage>,
    pub started: Instant,
}

/// The call's own ledger row and metrics, attributed to the caller.
pub fn record(w: &Worker, ctx: &RequestCtx, call: Call<'_>) {
    let snap = &ctx.snap;
    let model = &snap.cfg.models[call.model];
    let Some(target) = model.targets.first() else {
        return;
    };
    let latency = call.started.elapsed();
    let usage = call.usage.unwrap_or_default();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64;
    let mut rec = UsageRecord {
        id: format!("{}.{}", ctx.id, call.id_suffix),
        ts_ms: now_ms - latency.as_millis() as i64,
        latency_us: latency.as_micros() as u64,
        status: 200,
        outcome: "ok".into(),
        api: call.api.label(),
        identity: ctx.identity.clone(),
        requested_model: Some(model.name.clone()),
        served_model: Some(target.upstream_model.clone()),
        provider: Some(snap.cfg.providers[target.provider].name.clone()),
        usage,
        key_id: ctx.key.as_ref().map(|k| k.id.clone()),
        cost_micro_usd: target.price.map_or(0, |p| p.micro_usd(&usage)),
        price: target.price,
        route: Some(call.route.to_string()),
        attempts: 1,
        // Charged to the budgets and token limits the request was admitted under.
        hold: ctx.hold.companion(),
        ..UsageRecord::default()
    };
    let series = SeriesKey {
        model: snap.model_labels[call.model],
        provider: snap.providers[target.provider].label,
        api: call.api.label(),
        status: crate::telemetry::metrics::status_series(200),
    };
    let shard = &w.shared.metrics.shards[w.index];
    shard.record_answered(series, latency, None, Some((&usage, rec.cost_micro_usd)));
    crate::governance::settle_record(&mut rec, &w.shared.governor);
    crate::phase::settle::enqueue(w, LedgerMsg::Record(Box::new(rec)), true, &ctx.id);
}
