//! Phase 5a, cache: after admission (the caller may use this model, and its limits count the
//! request) and before routing, a repeated request is answered from the exact cache, and a
//! chat request whose last user turn is close enough to one answered before (same scope,
//! model and conversation) from the semantic cache.
//!
//! * Only requests that ask for repeatable output are cached by default (`temperature` 0 or a
//!   `seed`; embeddings always), and only 200 responses with reported usage are stored.
//! * `x-tollgate-cache: no-store` skips the cache both ways; `refresh` skips the lookup and
//!   stores the fresh answer. Responses say `x-tollgate-cache: hit` or `miss`.
//! * A hit costs nothing: its ledger row has zero tokens and zero cost, and records what it
//!   saved (`saved_tokens`, `saved_micro_usd`) so FinOps can show the saving.
//!
//! * Semantic (`cache.semantic`, off by default): the last user turn is embedded by the
//!   configured model on a local replica (`side_call`, its own ledger row), bounded by
//!   `timeout_ms` (a failure or timeout is a miss, never an error or a longer wait); the
//!   nearest answered turn in the bucket is served when its cosine similarity reaches
//!   `threshold`. A miss's embedding is indexed when its answer is stored.
//!
//! Reads: `ctx.inspection`, identity, key, the `x-tollgate-cache` header. Writes: `ctx.cache`;
//! on a hit the whole response.

use std::time::Instant;

use bytes::Bytes;

use crate::api::Api;
use crate::cache::{key_of, semantic_parts, unit, Entry, Key, KeyParts, Stamp};
use crate::client::ClientConn;
use crate::config::SemanticCacheSettings;
use crate::error::{ErrorKind, GateError};
use crate::http::head::{ClientBody, HeadWriter};
use crate::http::iovec::BytesVec;
use crate::metering::usage::extract_usage;
use crate::metering::Usage;
use crate::phase::settle;
use crate::phase::side_call;
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
    /// The semantic cache answered (a close enough earlier question).
    SemanticHit,
}

#[derive(Default)]
pub struct CacheCtx {
    pub state: CacheState,
    key: Option<Key>,
    /// A semantic miss: its bucket and embedding, indexed when the answer is stored.
    semantic: Option<(Key, Vec<f32>)>,
    /// A semantic hit's cosine similarity.
    pub similarity: Option<f32>,
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
            CacheState::SemanticHit => Some("semantic".into()),
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
            CacheState::Hit | CacheState::SemanticHit => Some(b"hit"),
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
    let parts = KeyParts {
        scope: settings.scope,
        key_id: ctx.key.as_ref().map(|k| k.id.as_str()),
        team: ctx.identity.team.as_deref(),
        api: ctx.api,
        model: &ctx.inspection.model,
        stream: ctx.inspection.stream,
        body: &ctx.body,
    };
    let Some(key) = key_of(&parts) else {
        return Ok(false);
    };
    let semantic = snap
        .cfg
        .cache
        .semantic
        .as_ref()
        .and_then(|sem| Some((sem, semantic_parts(&parts)?)));
    ctx.cache.key = Some(key);
    let shard = &w.shared.metrics.shards[w.index];
    if refresh {
        // Not looked up; the fresh answer is stored, and indexed for the semantic cache.
        if let Some((sem, (bucket, text))) = semantic {
            if let Some(vector) = embed(w, ctx, sem, &text).await {
                ctx.cache.semantic = Some((bucket, vector));
            }
        }
        ctx.cache.state = CacheState::Refresh;
        return Ok(false);
    }
    match store.lookup(&key, settings.ttl).await {
        Some(e) if e.stream == ctx.inspection.stream => {
            shard.add_cache(CacheStat::Hits, 1);
            serve(w, client, ctx, &e, CacheState::Hit).await;
            return Ok(true);
        }
        _ => {}
    }
    if let Some((sem, (bucket, text))) = semantic {
        if let Some(vector) = embed(w, ctx, sem, &text).await {
            let near = w
                .shared
                .semantic
                .nearest(&bucket, &vector, sem.threshold, settings.ttl);
            let entry = match near {
                Some((k, sim)) => store.lookup(&k, settings.ttl).await.map(|e| (e, sim)),
                None => None,
            };
            if let Some((e, sim)) = entry.filter(|(e, _)| e.stream == ctx.inspection.stream) {
                shard.add_cache(CacheStat::Hits, 1);
                shard.add_cache(CacheStat::SemanticHits, 1);
                ctx.cache.similarity = Some(sim);
                serve(w, client, ctx, &e, CacheState::SemanticHit).await;
                return Ok(true);
            }
            ctx.cache.semantic = Some((bucket, vector));
        }
    }
    shard.add_cache(CacheStat::Misses, 1);
    ctx.cache.state = CacheState::Miss;
    Ok(false)
}

/// The unit-length embedding of `text` from the semantic cache's model, within its timeout;
/// `None` (counted, and the request goes on as a miss) when the call fails or runs out.
async fn embed(
    w: &Worker,
    ctx: &RequestCtx,
    sem: &SemanticCacheSettings,
    text: &str,
) -> Option<Vec<f32>> {
    let started = Instant::now();
    let call = async {
        let upstream = side_call::upstream_model(&ctx.snap, sem.model)?;
        let body =
            serde_json::json!({"model": upstream, "input": text, "encoding_format": "float"});
        let answer = side_call::post(
            w,
            &ctx.snap,
            sem.model,
            Api::Embeddings,
            Bytes::from(body.to_string()),
            &ctx.id,
        )
        .await?;
        let v: Vec<f32> = sonic_rs::get(&answer[..], &sonic_rs::pointer!["data", 0, "embedding"])
            .ok()
            .and_then(|v| sonic_rs::from_str(v.as_raw_str()).ok())
            .ok_or_else(|| "the answer has no data[0].embedding".to_string())?;
        Ok::<_, String>((v, extract_usage(Api::Embeddings, &answer)))
    };
    let result = match monoio::time::timeout(sem.timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(format!("no embedding within {:?}", sem.timeout)),
    };
    match result {
        Ok((v, usage)) => {
            side_call::record(
                w,
                ctx,
                side_call::Call {
                    model: sem.model,
                    api: Api::Embeddings,
                    id_suffix: "embed",
                    route: "cache:semantic",
                    usage,
                    started,
                },
            );
            unit(v)
        }
        Err(why) => {
            w.shared.metrics.shards[w.index].add_cache(CacheStat::EmbeddingFailures, 1);
            tracing::debug!(id = %ctx.id, error = %why, "semantic cache: no embedding; going on as a miss");
            None
        }
    }
}

/// Answers a hit: the stored body, as the first client received it.
async fn serve(
    w: &Worker,
    client: &mut ClientConn,
    ctx: &mut RequestCtx,
    e: &Entry,
    state: CacheState,
) {
    let snap = ctx.snap.clone();
    let cfg = &snap.cfg;
    let model = ctx.inspection.model.as_str();
    let price = cfg
        .model_by_name(model)
        .and_then(|(_, m)| m.targets.iter().find_map(|t| t.price))
        .or_else(|| cfg.prices.lookup(&[model]));
    ctx.cache.state = state;
    ctx.cache.saved_tokens = e.usage.input_tokens + e.usage.output_tokens;
    ctx.cache.saved_micro_usd = price.map_or(0, |p| p.micro_usd(&e.usage));
    let shard = &w.shared.metrics.shards[w.index];
    shard.add_cache(CacheStat::SavedTokens, ctx.cache.saved_tokens);
    shard.add_cache(CacheStat::SavedMicroUsd, ctx.cache.saved_micro_usd);
    ctx.status = 200;
    ctx.usage = Some(Usage::default());
    let quota = crate::phase::admit::room_for_quota(ctx.quota.as_deref());
    let mut head = HeadWriter::new(200, 256 + quota);
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
    if let Some(sim) = ctx.cache.similarity {
        head.header(
            "x-tollgate-cache-similarity",
            format!("{sim:.4}").as_bytes(),
        );
    }
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
    settle::seal(w, ctx, client.attribution());
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
        let (Some(settings), semantic) = (&ctx.snap.cfg.cache.exact, &ctx.snap.cfg.cache.semantic)
        else {
            return;
        };
        let indexed = ctx.cache.semantic.as_ref().filter(|_| semantic.is_some());
        store.put(
            key,
            Entry {
                body: Bytes::from(self.parts.concat()),
                stream: ctx.inspection.stream,
                usage,
                stored_at: Stamp::now(),
            },
            indexed,
            settings.ttl,
        );
        w.shared.metrics.shards[w.index].add_cache(CacheStat::Stores, 1);
        if let (Some((bucket, vector)), Some(sem)) = (indexed, semantic) {
            w.shared
                .semantic
                .insert(*bucket, vector.clone(), key, sem.max_entries);
        }
    }
}
