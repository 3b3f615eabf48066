//! Phase 5, admit: may this request spend, and how much does it hold while it runs?
//!
//! 1. **Key** — `Authorization: Bearer tg-…` (OpenAI SDKs, newer Anthropic SDKs) or
//!    `x-api-key: tg-…` (Anthropic SDKs). Unknown, revoked, expired, disabled or used from a
//!    network outside its allowlist → 401/403. Without a key: 401 in `auth: {mode: keys}`,
//!    except on intercepted connections, whose identity the kernel gave (`ClientConn`).
//! 2. **Identity** — the key's team, project and user win over headers that contradict them;
//!    `require_headers` → 400 naming the missing header.
//! 3. **Model access** — the key's model globs, `model_access` rules, workload classes; an
//!    exception in force can grant a model.
//! 4. **Loop guard** — a session whose breaker is open, or whose Nth identical request this is.
//! 5. **Rate limits** — requests (1) and tokens (estimated input + maximum output) against
//!    every matching rule and the key's rpm/tpm; 429 with `Retry-After` and `x-ratelimit-*`.
//! 6. **Budgets** — the same reservation in tokens and USD against every matching budget;
//!    on breach `block` (429 `budget_exceeded`), `fallback` (a cheaper model) or `queue`.
//!
//! What was taken rides in `ctx.hold` to the ledger writer, which settles it to the actual
//! usage. Reads: `ctx.head`, `ctx.identity`, `ctx.inspection`, the snapshot and governor.
//! Writes: `ctx.key`, `ctx.identity`, `ctx.hold`, `ctx.quota`; on fallback `ctx.inspection.model`.
//! Hot path: one SHA-256 of the key, a map probe, one CAS per matching limit and budget.

mod auth;
mod budgets;
mod limits;

use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;

use crate::api::Api;
use crate::client::ClientConn;
use crate::error::{ErrorDetail, ErrorKind, GateError};
use crate::governance::keys::KeyEntry;
use crate::governance::policy::Facts;
use crate::governance::window::now_ms;
use crate::governance::Governor;
use crate::pipeline::RequestCtx;
use crate::snapshot::Snapshot;

pub use auth::{authenticate, unmetered_post};
pub use budgets::price_of;
pub use limits::{openai_duration, render_quota, room_for_quota, Quota, Remaining};

pub async fn run(
    gov: &Governor,
    client: &ClientConn,
    ctx: &mut RequestCtx,
) -> Result<(), GateError> {
    let snap = ctx.snap.clone();
    let policy = &snap.cfg.governance;
    let key = authenticate(gov, client, &ctx.head, ctx.api.wire(), policy.auth)?;
    if let Some(k) = &key {
        let s = &k.spec;
        let id = &mut ctx.identity;
        for (field, value) in [
            (&mut id.team, &s.team),
            (&mut id.project, &s.project),
            (&mut id.user, &s.user),
        ] {
            if value.is_some() {
                field.clone_from(value);
            }
        }
    }
    if let Some(k) = client.kernel_identity() {
        ctx.identity.fill_missing_from(k);
    }
    for field in &policy.require_headers {
        if field.get(&ctx.identity).is_none() {
            return Err(GateError::new(
                ErrorKind::MissingIdentityHeader {
                    header: field.header(),
                },
                format!(
                    "This endpoint requires the `{}` header (set by policy `require_headers`).",
                    field.header()
                ),
            ));
        }
    }
    ctx.key = key.clone();
    // A tiered request is checked against the model the client named, not the tier's.
    let asked = ctx
        .inspection
        .original_model
        .as_deref()
        .unwrap_or(&ctx.inspection.model);
    check_model(gov, &snap, client, ctx, key.as_deref(), asked)?;
    loop_guard(gov, &snap, ctx)?;
    limits::rate_limits(gov, &snap, client, ctx, key.as_deref())?;
    budgets::budgets(gov, &snap, client, ctx, key.as_deref()).await
}

/// Whether `egress` lets this caller be routed to public providers.
pub fn may_use_public(snap: &Snapshot, client: &ClientConn, ctx: &RequestCtx) -> bool {
    let e = &snap.cfg.governance.egress;
    if e.public_by_default && e.deny.is_empty() {
        return true;
    }
    e.allows_public(&facts(client, ctx, ctx.key.as_deref()))
}

/// The facts scopes match against.
pub(crate) fn facts<'a>(
    client: &'a ClientConn,
    ctx: &'a RequestCtx,
    key: Option<&'a KeyEntry>,
) -> Facts<'a> {
    let cg = client.cgroup();
    Facts {
        identity: &ctx.identity,
        key: key.map(|k| k.id.as_str()),
        model: &ctx.inspection.model,
        cgroup: cg.map(|c| c.path.as_str()),
        container: cg.and_then(|c| c.identity.container_id.as_deref()),
    }
}

pub(super) fn check_model(
    gov: &Governor,
    snap: &Snapshot,
    client: &ClientConn,
    ctx: &RequestCtx,
    key: Option<&KeyEntry>,
    model: &str,
) -> Result<(), GateError> {
    let f = facts(client, ctx, key);
    let denied = match key {
        Some(k) if !k.allows_model(model) => Some(format!(
            "The key {} may not use the model `{model}`.",
            k.prefix
        )),
        _ => snap.cfg.governance.allows_model(&f, model).err(),
    };
    match denied {
        Some(reason) if !gov.exception_grants_model(&f, model) => {
            gov.counters.model_denied.fetch_add(1, Ordering::Relaxed);
            Err(GateError::new(
                ErrorKind::Forbidden {
                    code: "model_not_allowed",
                },
                reason,
            ))
        }
        _ => Ok(()),
    }
}

fn loop_guard(gov: &Governor, snap: &Snapshot, ctx: &mut RequestCtx) -> Result<(), GateError> {
    let (Some(guard), Some(session)) = (&snap.cfg.governance.loop_guard, &ctx.identity.session)
    else {
        return Ok(());
    };
    let Some(state) = gov.sessions.get(session) else {
        return Ok(());
    };
    let now = now_ms();
    let tripped = |cooldown_ms: i64, why: String| {
        GateError::new(
            ErrorKind::LoopDetected,
            format!("The session `{session}` looks stuck in a loop ({why}); its requests are refused until the cooldown passes."),
        )
        .with_detail(ErrorDetail {
            limit: Some(format!("session={session}/loop_guard")),
            resets_at_ms: Some(now + cooldown_ms),
            retry_after_s: Some(((cooldown_ms + 999) / 1000).max(1) as u32),
            headers: String::new(),
        })
    };
    if let Some(left) = state.open_for(now) {
        return Err(tripped(left, "breaker open".into()));
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ctx.inspection.model.hash(&mut h);
    for span in &ctx.inspection.prompt_spans {
        ctx.body.get(span.clone()).unwrap_or_default().hash(&mut h);
    }
    if let Some(trip) = state.observe_request(guard, now, h.finish()) {
        gov.counters.loop_trips.fetch_add(1, Ordering::Relaxed);
        gov.audit(
            "loop.trip",
            session,
            serde_json::json!({ "reason": trip.describe(), "request": ctx.id, "key": ctx.key.as_ref().map(|k| k.id.clone()), "model": ctx.inspection.model }),
        );
        return Err(tripped(guard.cooldown.as_millis() as i64, trip.describe()));
    }
    ctx.hold.session = Some(state);
    Ok(())
}

/// Tokens a request may use: (estimated input, maximum output). The input estimate is one
/// token per 3 prompt bytes (above the real count for English and code), so a reservation
/// rarely falls short of the actual use. Without `max_tokens` the model's `max_output_tokens`
/// (else `default_max_output_tokens`) is reserved.
pub(super) fn reservation(snap: &Snapshot, ctx: &RequestCtx) -> (u64, u64) {
    let input = ctx.inspection.prompt_bytes as u64 / 3 + 16;
    let cfg = &snap.cfg;
    let default = || {
        cfg.model_by_name(&ctx.inspection.model)
            .and_then(|(_, m)| m.max_output_tokens)
            .unwrap_or(cfg.governance.default_max_output_tokens)
    };
    let output = match ctx.api {
        Api::Embeddings => 0,
        _ => ctx
            .inspection
            .max_output_tokens
            .unwrap_or_else(default)
            .saturating_mul(u64::from(ctx.inspection.n.max(1))),
    };
    (input, output)
}
