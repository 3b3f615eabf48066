//! The request lifecycle, top to bottom. A connection's requests come here one at a time;
//! each goes through the phases of DESIGN.md in order, and `settle` always runs last so
//! every proxied request is metered and recorded, whatever failed.
//!
//! ```text
//! accept (worker.rs) → read → identify → inspect → admit → cache → route → guard
//!     → guard_model → forward → relay → settle
//! ```
//! `admit` decides who may spend (keys, model access, loop guard, rate limits, budgets) and
//! reserves what the request may use; settle (or the estimator thread, for an estimate)
//! replaces that by the actual usage.
//! `cache` answers a repeated request from the exact cache, or a close paraphrase from the
//! semantic cache (relay stores fresh answers). `guard` and `guard_model` run before every
//! attempt, since a retry may go to a provider other guardrails cover; `relay` scans the
//! response where guardrails cover it and puts pseudonymized values back.
//! Kernel attribution was looked up once at accept and lives on the `ClientConn`: route reads
//! its original destination (intercepted connections), settle hands it to the ledger. On an
//! intercepted connection, requests that are not inference calls bypass the phases and are
//! relayed to the original server as they are (`phase/passthrough.rs`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::api::Api;
use crate::client::ClientConn;
use crate::error::GateError;
use crate::http::request::{Method, RequestHead};
use crate::identity::Identity;
use crate::local;
use crate::metering::Usage;
use crate::phase::inspect::Inspection;
use crate::phase::read::{Request, Reservation};
use crate::phase::route::Target;
use crate::phase::{
    admit, cache, forward, guard, guard_model, identify, inspect, passthrough, relay, route, settle,
};
use crate::snapshot::Snapshot;
use crate::worker::Worker;

/// How a request ended, for the ledger and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Tollgate answered with an error (see `error_code`).
    Rejected,
    ClientDisconnected,
    UpstreamReset,
    UpstreamTimeout,
    /// The provider answered with an error status (relayed to the client as it was).
    UpstreamError,
    /// Still running when the shutdown grace expired; cut, and billed as far as it went.
    Shutdown,
    /// Ended by a bug (a panic in a phase); billed as far as it went.
    Aborted,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Rejected => "rejected",
            Outcome::ClientDisconnected => "client_disconnected",
            Outcome::UpstreamReset => "upstream_reset",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Shutdown => "shutdown",
            Outcome::Aborted => "aborted",
        }
    }
}

/// Per-request state, created from the read request and passed `&mut` through the phases.
pub struct RequestCtx {
    pub id: String,
    pub started: Instant,
    pub api: Api,
    pub head: RequestHead,
    pub body: Bytes,
    pub identity: Identity,
    pub inspection: Inspection,
    pub target: Option<Target>,
    /// Tollgate added `include_usage`, so the usage-only chunk is hidden from the client.
    pub injected_usage: bool,
    pub upstream_head_at: Option<Instant>,
    pub first_byte_at: Option<Instant>,
    pub last_byte_at: Option<Instant>,
    pub status: u16,
    pub response_started: bool,
    pub client_keep_alive: bool,
    pub outcome: Outcome,
    /// The error code when Tollgate itself answered with an error.
    pub error_code: Option<&'static str>,
    /// Complete usage as the provider reported it.
    pub usage: Option<Usage>,
    /// Usage seen in an incomplete stream (e.g. only Anthropic's message_start).
    pub partial_usage: Option<Usage>,
    /// Response bytes kept for metering when no usage has been seen (by reference).
    pub response_payload: Vec<Bytes>,
    /// Keep `response_payload` although the provider reported usage: the record is estimated
    /// too, to measure the estimator (`ledger.accuracy_sample_every`).
    pub sample_accuracy: bool,
    /// The model version the provider said served the response (`metering::usage::upstream_version`).
    pub upstream_version: Option<String>,
    /// The record, journalled before the response's last byte (see `settle::seal`).
    pub sealed: Option<settle::Sealed>,
    /// The body's share of the worker's buffer budget, held until the request is done.
    pub reservation: Reservation,
    /// The configuration this request runs on, start to finish (a reload does not change it).
    pub snap: Arc<Snapshot>,
    /// The virtual key that authorised the request.
    pub key: Option<Arc<crate::governance::keys::KeyEntry>>,
    /// Budget and token-limit reservations, settled to the actual use by the ledger writer.
    pub hold: crate::governance::hold::Hold,
    /// Rate-limit headers (and fallback) for the response.
    pub quota: Option<Box<crate::phase::admit::Quota>>,
    /// The price the request is charged at.
    pub price: Option<crate::metering::prices::Price>,
    /// Tier, fallback, attempts: what routing went through.
    pub route: route::RouteState,
    /// The API the provider is spoken to in: `api`, unless the request is translated.
    pub upstream_api: Api,
    /// Set by forward when the target's provider speaks the other wire format.
    pub translation: Option<crate::translate::Direction>,
    /// What the guardrails found and changed for the attempt forwarded.
    pub guard: crate::phase::guard::GuardState,
    /// Whether the exact cache answered, missed, or did not apply.
    pub cache: crate::phase::cache::CacheCtx,
}

impl RequestCtx {
    pub fn new(id: String, started: Instant, api: Api, req: Request) -> Self {
        let keep_alive = req.head.keep_alive;
        RequestCtx {
            id,
            started,
            api,
            head: req.head,
            body: req.body,
            identity: Identity::default(),
            inspection: Inspection::default(),
            target: None,
            injected_usage: false,
            upstream_head_at: None,
            first_byte_at: None,
            last_byte_at: None,
            status: 0,
            response_started: false,
            client_keep_alive: keep_alive,
            outcome: Outcome::Ok,
            error_code: None,
            usage: None,
            partial_usage: None,
            response_payload: Vec::new(),
            sample_accuracy: false,
            upstream_version: None,
            sealed: None,
            reservation: req.reservation,
            snap: req.snap,
            key: None,
            hold: crate::governance::hold::Hold::default(),
            quota: None,
            price: None,
            route: route::RouteState::default(),
            upstream_api: api,
            translation: None,
            guard: Default::default(),
            cache: Default::default(),
        }
    }
}

/// Handles one request; returns whether the connection may carry another.
pub async fn handle(w: &Worker, client: &mut ClientConn, req: Request, started: Instant) -> bool {
    let path = req.head.path();
    let metered = Api::from_path(path).is_some() && req.head.method == Method::Post;
    if let (false, Some(dst)) = (metered, client.original_dst()) {
        if let Some(e) = admit::unmetered_post(&req.snap.cfg.governance, &req.head) {
            // A POST that could spend tokens unmetered (an engine's native `/generate`).
            let keep = req.head.keep_alive;
            return client
                .respond_error(&e, crate::api::Wire::OpenAi, keep, None)
                .await
                .is_ok()
                && keep;
        }
        // Intercepted, but not an inference call: the original server answers it.
        return passthrough::run(w, client, req, dst).await;
    }
    let Some(api) = Api::from_path(path) else {
        if crate::batch::api::handles(path) {
            return crate::batch::api::serve(w, client, req).await;
        }
        return local::serve(w, &req.snap.cfg, client, &req.head).await;
    };
    if req.head.method != Method::Post {
        let e = GateError::new(
            crate::error::ErrorKind::MethodNotAllowed,
            format!("{path} accepts POST only"),
        );
        let keep = req.head.keep_alive;
        return client
            .respond_error(&e, api.wire(), keep, None)
            .await
            .is_ok()
            && keep;
    }
    let mut s = Settling {
        w,
        conn: client.attribution().cloned(),
        ctx: RequestCtx::new(w.next_request_id(), started, api, req),
        settled: false,
    };
    if let Err(e) = proxy(w, client, &mut s.ctx).await {
        fail(w, client, &mut s.ctx, &e).await;
    }
    s.settle()
}

/// Owns a request's context so that `settle` runs on every exit path: the normal end, and the
/// future being dropped mid-phase (the shutdown grace expired, or a phase panicked and the
/// connection task was torn down). A request is never left without its record.
struct Settling<'w> {
    w: &'w Worker,
    conn: Option<Arc<crate::kernel::ConnAttribution>>,
    ctx: RequestCtx,
    settled: bool,
}

impl Settling<'_> {
    /// Settles the request; returns whether the connection may carry another.
    fn settle(mut self) -> bool {
        self.settled = true;
        settle::run(self.w, &mut self.ctx, self.conn.as_ref());
        self.ctx.client_keep_alive
    }
}

impl Drop for Settling<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let stopping = self
            .w
            .shared
            .shutting_down
            .load(std::sync::atomic::Ordering::Relaxed);
        self.ctx.outcome = if stopping {
            Outcome::Shutdown
        } else {
            Outcome::Aborted
        };
        self.ctx.error_code = None;
        self.ctx.client_keep_alive = false;
        self.ctx.last_byte_at.get_or_insert_with(Instant::now);
        settle::run(self.w, &mut self.ctx, self.conn.as_ref());
    }
}

/// The phases that can fail before the response starts.
async fn proxy(w: &Worker, client: &mut ClientConn, ctx: &mut RequestCtx) -> Result<(), GateError> {
    identify::run(ctx);
    let snap = ctx.snap.clone();
    inspect::run(ctx, snap.cfg.limits.max_json_depth)?;
    route::resolve_tier(&snap, ctx);
    admit::run(&w.shared.governor, client, ctx).await?;
    ctx.route.public_ok = admit::may_use_public(&snap, client, ctx);
    if cache::run(w, client, ctx).await? {
        return Ok(());
    }
    let batch = route::hold_batch(&snap, &w.route, &w.shared.gpus, ctx).await?;
    ctx.route.permit = route::wait_turn(&snap, ctx, batch).await?;
    route::run(&snap, &w.route, ctx, client.original_dst())?;
    let forwarded = loop {
        guard::run(&snap, client, ctx)?;
        guard_model::run(w, ctx).await?;
        match forward::run(w, ctx).await {
            Ok(f) => {
                let status = f.head.status;
                let retry_after = (status == 429 || status == 503)
                    .then(|| {
                        f.head
                            .header(b"retry-after")
                            .and_then(route::retry_after_ms)
                    })
                    .flatten();
                // Nothing of this response has reached the client: when another target may
                // serve, it is dropped unread (its connection closes) and the request goes on.
                // The head's arrival, read by `forward::run`, on the wall clock.
                let at = w
                    .wall
                    .ms_at(ctx.upstream_head_at.unwrap_or_else(Instant::now));
                if route::after_attempt(&snap, &w.route, ctx, status, retry_after, at.max(0) as u64)
                {
                    tracing::debug!(id = %ctx.id, status, "trying another target");
                    continue;
                }
                break f;
            }
            Err(e) => {
                if route::after_error(&snap, &w.route, ctx, &e) {
                    tracing::debug!(id = %ctx.id, error = %e, "trying another target");
                    continue;
                }
                return Err(e);
            }
        }
    };
    relay::run(w, ctx, client, forwarded).await;
    Ok(())
}

/// Answers a request that failed before its response started. The record is journalled
/// before the error goes out, like any other response.
pub async fn fail(w: &Worker, client: &mut ClientConn, ctx: &mut RequestCtx, e: &GateError) {
    ctx.status = e.status();
    ctx.outcome = match e.kind {
        crate::error::ErrorKind::UpstreamTimeout => Outcome::UpstreamTimeout,
        _ => Outcome::Rejected,
    };
    ctx.error_code = Some(e.metric_reason());
    if e.side() != crate::error::Side::Client {
        tracing::warn!(id = %ctx.id, error = %e, "request failed");
    }
    settle::seal(w, ctx, client.attribution());
    let keep = ctx.client_keep_alive;
    if client
        .respond_error(e, ctx.api.wire(), keep, Some(&ctx.id))
        .await
        .is_err()
    {
        ctx.client_keep_alive = false;
    }
    ctx.last_byte_at = Some(Instant::now());
}
