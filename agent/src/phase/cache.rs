//! Phase 5a, cache: after admission (the caller may use this model, and its limits count the
//! request) and before routing, a repeated request is answered from the exact cache.
//!
//! * Only requests that ask for repeatable output are cached by default (`temperature` 0 or a
//!   `seed`; embeddings always), and only 200 responses with reported usage are stored.
//! * `x-tollgate-cache: no-store` skips the cache both ways; `refresh` skips the lookup and
//!   stores the fresh answer. Responses say `x-tollgate-cache: hit` or `miss`.
//! * A hit costs nothing: its ledger row has zero tokens and zero cost, and records what it
//!   saved (`saved_tokens`, `saved_micro_usd`) so FinOps can show the saving.
//!
//! Reads: `ctx.inspection`, identity, key, the `x-tollgate-cache` header. Writes: `ctx.cache`;
//! on a hit the whole response.

use std::time::Instant;

use bytes::Bytes;

use crate::api::Api;
use crate::cache::{key_of, Entry, Key, KeyParts};
use crate::client::ClientConn;
use crate::error::{ErrorKind, GateError};
use crate::http::head::{ClientBody, HeadWriter};
use crate::http::iovec::BytesVec;
use crate::metering::Usage;
use crate::phase::settle;
use crate::pipeline::{Outcome, RequestCtx};
use crate::telemetry::metrics::CacheStat;
use crate::worker::Worker;

/// What the cache did for a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheState {
    /// No cache applies (none configured, not cacheable, or `no-store`).
    #[default]
    Off,
    Miss,
    /// `x-tollgate-cache: refresh`: not looked up, stored again.
    Refresh,
    Hit,
}

#[derive(Default)]
pub struct CacheCtx {
    pub state: CacheState,
    key: Option<Key>,
    /// Tokens and micro-USD a hit did not spend.
    pub saved_tokens: u64,
    pub saved_micro_usd: u64,
}

impl CacheCtx {
    /// The ledger's `cache` column.
    pub fn label(&self) -> Option<String> {
        match self.state {
            CacheState::Off => None,
            CacheState::Miss => Some("miss".into()),
            CacheState::Refresh => Some("refresh".into()),
            CacheState::Hit => Some("exact".into()),
        }
    }

    /// Whether the response should be stored.
    pub fn stores(&self) -> bool {
        matches!(self.state, CacheState::Miss | CacheState::Refresh)
    }

    /// The `x-tollgate-cache` response header value, if any.
    pub fn header(&self) -> Option<&'static [u8]> {
        match self.state {
            CacheState::Off => None,
            CacheState::Miss | CacheState::Refresh => Some(b"miss"),
            CacheState::Hit => Some(b"hit"),
        }
    }
}

/// Looks the request up; on a hit answers it and returns `true`.
pub async fn run(
    w: &Worker,
    client: &mut ClientConn,
    ctx: &mut RequestCtx,
) -> Result<bool, GateError> {
    let snap = ctx.snap.clone();
    let (Some(settings), Some(store)) = (&snap.cfg.cache.exact, &w.shared.cache) else {
        return Ok(false);
    };
    let refresh = match ctx.head.header("x-tollgate-cache") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case(b"no-store") => return Ok(false),
        Some(v) if v.eq_ignore_ascii_case(b"refresh") => true,
        Some(_) => {
            return Err(GateError::new(
                ErrorKind::InvalidRequest { param: None },
                "the x-tollgate-cache header must be `no-store` or `refresh`",
            ))
        }
    };
    let cacheable =
        ctx.inspection.deterministic || settings.nondeterministic || ctx.api == Api::Embeddings;
    if !cacheable {
        return Ok(false);
    }
    let Some(key) = key_of(&KeyParts {
        scope: settings.scope,
        key_id: ctx.key.as_ref().map(|k| k.id.as_str()),
        team: ctx.identity.team.as_deref(),
        api: ctx.api,
        model: &ctx.inspection.model,
        stream: ctx.inspection.stream,
        body: &ctx.body,
    }) else {
        return Ok(false);
    };
    ctx.cache.key = Some(key);
    let shard = &w.shared.metrics.shards[w.index];
    if refresh {
        ctx.cache.state = CacheState::Refresh;
        return Ok(false);
    }
    match store.get(&key, settings.ttl) {
        Some(e) if e.stream == ctx.inspection.stream => {
            shard.add_cache(CacheStat::Hits, 1);
            serve(w, client, ctx, &e).await;
            Ok(true)
        }
        _ => {
            shard.add_cache(CacheStat::Misses, 1);
            ctx.cache.state = CacheState::Miss;
            Ok(false)
        }
    }
}

/// Answers a hit: the stored body, as the first client received it.
async fn serve(w: &Worker, client: &mut ClientConn, ctx: &mut RequestCtx, e: &Entry) {
    let snap = ctx.snap.clone();
    let cfg = &snap.cfg;
    let model = ctx.inspection.model.as_str();
    let price = cfg
        .model_by_name(model)
        .and_then(|(_, m)| m.targets.iter().find_map(|t| t.price))
        .or_else(|| cfg.prices.lookup(&[model]));
    ctx.cache.state = CacheState::Hit;
    ctx.cache.saved_tokens = e.usage.input_tokens + e.usage.output_tokens;
    ctx.cache.saved_micro_usd = price.map_or(0, |p| p.micro_usd(&e.usage));
    let shard = &w.shared.metrics.shards[w.index];
    shard.add_cache(CacheStat::SavedTokens, ctx.cache.saved_tokens);
    shard.add_cache(CacheStat::SavedMicroUsd, ctx.cache.saved_micro_usd);
    ctx.status = 200;
    ctx.usage = Some(Usage::default());
    let mut head = HeadWriter::new(200, 256);
    head.header(
        "content-type",
        if e.stream {
            b"text/event-stream"
        } else {
            b"application/json"
        },
    );
    head.header("x-tollgate-request-id", ctx.id.as_bytes());
    head.header("x-tollgate-cache", b"hit");
    if let Some(q) = &ctx.quota {
        head.lines(crate::phase::admit::render_quota(q, ctx.api.wire()).as_bytes());
    }
    let head = head.finish(
        ClientBody::Length(e.body.len() as u64),
        ctx.client_keep_alive,
    );
    ctx.response_started = true;
    ctx.first_byte_at = Some(Instant::now());
    // Journalled before the last byte, like every response.
    settle::seal(w, ctx, client.attribution.as_ref());
    let mut parts = BytesVec::with_capacity(2);
    parts.push(Bytes::from(head));
    parts.push(e.body.clone());
    let (res, _) = client.write_vectored(parts).await;
    if res.is_err() {
        ctx.outcome = Outcome::ClientDisconnected;
        ctx.client_keep_alive = false;
    }
    ctx.last_byte_at = Some(Instant::now());
}

/// Collects what the client is sent, for the store; gives up past the entry size bound.
pub struct Capture {
    parts: Vec<Bytes>,
    bytes: u64,
    max: u64,
    over: bool,
}

impl Capture {
    /// A capture for this response, when it may be stored.
    pub fn start(ctx: &RequestCtx, status: u16) -> Option<Capture> {
        let settings = ctx.snap.cfg.cache.exact.as_ref()?;
        (ctx.cache.stores() && status == 200).then(|| Capture {
            parts: Vec::new(),
            bytes: 0,
            max: settings.max_entry_bytes,
            over: false,
        })
    }

    /// Keeps references to `parts` (no copies until the end).
    pub fn keep(&mut self, parts: &[Bytes]) {
        if self.over {
            return;
        }
        self.bytes += parts.iter().map(|p| p.len() as u64).sum::<u64>();
        if self.bytes > self.max {
            self.over = true;
            self.parts = Vec::new();
            return;
        }
        self.parts.extend(parts.iter().cloned());
    }

    /// Stores the complete response.
    pub fn store(self, w: &Worker, ctx: &RequestCtx) {
        let (Some(store), Some(key), Some(usage)) = (&w.shared.cache, ctx.cache.key, ctx.usage)
        else {
            return;
        };
        if self.over {
            return;
        }
        store.put(
            key,
            Entry {
                body: Bytes::from(self.parts.concat()),
                stream: ctx.inspection.stream,
                usage,
                stored_at: Instant::now(),
            },
        );
        w.shared.metrics.shards[w.index].add_cache(CacheStat::Stores, 1);
    }
}
