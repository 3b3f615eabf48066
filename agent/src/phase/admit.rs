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

use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{Api, Wire};
use crate::client::ClientConn;
use crate::error::{ErrorDetail, ErrorKind, GateError};
use crate::governance::gcra::{now_ns, Verdict};
use crate::governance::hold::{HeldBudget, HeldRate, Hold};
use crate::governance::keys::{KeyEntry, KEY_PREFIX};
use crate::governance::policy::{AuthMode, Facts, OnBreach, RateKind};
use crate::governance::window::{now_ms, rfc3339};
use crate::governance::Governor;
use crate::metering::prices::Price;
use crate::pipeline::RequestCtx;
use crate::snapshot::Snapshot;

/// How often a queued request looks for budget headroom again.
const QUEUE_POLL: Duration = Duration::from_millis(50);

/// What the client is told about its quota, as the providers' rate-limit headers.
#[derive(Debug, Clone, Default)]
pub struct Quota {
    pub requests: Option<Remaining>,
    pub tokens: Option<Remaining>,
    /// `x-tollgate-fallback`: the model asked for, the one serving, the budget that was full.
    pub fallback: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Remaining {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
}

impl Remaining {
    /// Keeps whichever of two limits is closer to running out.
    fn tighter(a: Option<Remaining>, b: Remaining) -> Option<Remaining> {
        match a {
            Some(a) if a.remaining <= b.remaining => Some(a),
            _ => Some(b),
        }
    }
}

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
    if let Some(k) = &client.kernel_identity {
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
    check_model(
        gov,
        &snap,
        client,
        ctx,
        key.as_deref(),
        &ctx.inspection.model,
    )?;
    loop_guard(gov, &snap, ctx)?;
    rate_limits(gov, &snap, client, ctx, key.as_deref())?;
    budgets(gov, &snap, client, ctx, key.as_deref()).await
}

/// On an intercepted connection under `auth: {mode: keys}`, a POST to a path Tollgate does not
/// meter (an engine's native `/generate`, `/v1/score`, ...) would spend tokens outside every
/// limit and budget: refused (403 `unmetered_endpoint`) unless `unmetered_post_paths` lists it.
/// GETs and other methods still pass through to the original server.
pub fn unmetered_post(
    policy: &crate::governance::policy::Policy,
    head: &crate::http::request::RequestHead,
) -> Option<GateError> {
    let path = head.path();
    let allowed = policy.unmetered_post_paths.iter().any(|p| p == path);
    (policy.auth == AuthMode::Keys && head.method == crate::http::request::Method::Post && !allowed)
        .then(|| {
            GateError::new(
                ErrorKind::Forbidden {
                    code: "unmetered_endpoint",
                },
                format!("POST {path} is not an endpoint Tollgate meters, so it cannot be governed; use the OpenAI or Anthropic API paths (or list it in `unmetered_post_paths`)."),
            )
        })
}

/// The facts scopes match against.
fn facts<'a>(client: &'a ClientConn, ctx: &'a RequestCtx, key: Option<&'a KeyEntry>) -> Facts<'a> {
    let cg = client.cgroup.as_deref();
    Facts {
        identity: &ctx.identity,
        key: key.map(|k| k.id.as_str()),
        model: &ctx.inspection.model,
        cgroup: cg.map(|c| c.path.as_str()),
        container: cg.and_then(|c| c.identity.container_id.as_deref()),
    }
}

/// The request's virtual key: `None` when none is needed (open mode, intercepted connections).
/// Also used by `GET /v1/models`, which lists only what the key may use.
pub fn authenticate(
    gov: &Governor,
    client: &ClientConn,
    head: &crate::http::request::RequestHead,
    wire: Wire,
    mode: AuthMode,
) -> Result<Option<Arc<KeyEntry>>, GateError> {
    let bearer = head
        .header_str("authorization")
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let api_key = head.header_str("x-api-key").map(str::trim);
    // Ours wherever it is (a client may send a provider key in the other header), else
    // whatever was sent.
    let credential = [bearer, api_key]
        .into_iter()
        .flatten()
        .find(|c| c.starts_with(KEY_PREFIX))
        .or(bearer)
        .or(api_key);
    let fail = |code: &'static str, message: String| {
        gov.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
        GateError::new(ErrorKind::Unauthorized { code }, message)
    };
    let intercepted = client.original_dst().is_some();
    let secret = match credential {
        Some(c) if c.starts_with(KEY_PREFIX) => c,
        // Intercepted clients keep their own credentials for the server they addressed; in
        // open mode a credential that is not ours is ignored.
        _ if intercepted || mode == AuthMode::Open => return Ok(None),
        Some(c) => {
            return Err(fail(
                "invalid_api_key",
                format!(
                    "Incorrect API key provided: {}. Use a Tollgate virtual key (tg-...).",
                    redact(c)
                ),
            ))
        }
        None => {
            let hint = match wire {
                Wire::OpenAi => "Authorization: Bearer tg-...",
                Wire::Anthropic => "x-api-key: tg-...",
            };
            return Err(fail(
                "missing_api_key",
                format!(
                    "You didn't provide an API key. Send your Tollgate virtual key as `{hint}`."
                ),
            ));
        }
    };
    let table = gov.keys.load();
    let Some(key) = table.lookup(secret) else {
        return Err(fail(
            "invalid_api_key",
            format!(
                "Incorrect API key provided: {}. The key is unknown or was revoked.",
                redact(secret)
            ),
        ));
    };
    if !key.spec.enabled {
        return Err(fail(
            "key_disabled",
            format!("The key {} is disabled.", key.prefix),
        ));
    }
    if key.spec.expires_at_ms.is_some_and(|t| t <= now_ms()) {
        return Err(fail(
            "key_expired",
            format!("The key {} has expired.", key.prefix),
        ));
    }
    if !key.ip_allowed(client.peer.ip()) {
        gov.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
        return Err(GateError::new(
            ErrorKind::Forbidden {
                code: "ip_not_allowed",
            },
            format!(
                "The key {} may not be used from {}.",
                key.prefix,
                client.peer.ip()
            ),
        ));
    }
    Ok(Some(key.clone()))
}

/// `sk-abc...wxyz`: enough to recognise a key, never the key.
fn redact(c: &str) -> String {
    let chars: Vec<char> = c.chars().collect();
    if chars.len() <= 10 {
        return "***".into();
    }
    let head: String = chars[..6].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}...{tail}")
}

fn check_model(
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
fn reservation(snap: &Snapshot, ctx: &RequestCtx) -> (u64, u64) {
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

fn rate_limits(
    gov: &Governor,
    snap: &Snapshot,
    client: &ClientConn,
    ctx: &mut RequestCtx,
    key: Option<&KeyEntry>,
) -> Result<(), GateError> {
    let policy = &snap.cfg.governance;
    let (input, output) = reservation(snap, ctx);
    let mut taken: Vec<HeldRate> = Vec::new();
    let mut quota = Quota::default();
    let now = now_ns();
    let f = facts(client, ctx, key);
    // Names are only rendered for a refusal (no allocation per admitted request).
    let key_limits = key.into_iter().flat_map(|k| {
        [
            k.state
                .rpm
                .clone()
                .map(|g| (Named::Key(k, "requests_per_minute"), RateKind::Requests, g)),
            k.state
                .tpm
                .clone()
                .map(|g| (Named::Key(k, "tokens_per_minute"), RateKind::Tokens, g)),
        ]
        .into_iter()
        .flatten()
    });
    let rule_limits = policy
        .rate_limits
        .iter()
        .zip(snap.governance.rates.iter())
        .filter(|(rule, _)| rule.scope.matches(&f))
        .flat_map(|(rule, limiters)| {
            rule.rates
                .iter()
                .zip(limiters)
                .map(move |(rate, g)| (Named::Rule(&rule.name, rate), rate.kind, g.clone()))
        });
    let mut denied = None;
    for (name, kind, gcra) in key_limits.chain(rule_limits) {
        let cost = match kind {
            RateKind::Requests => 1,
            RateKind::Tokens => input + output,
            RateKind::InputTokens => input,
            RateKind::OutputTokens => output,
        };
        match gcra.check(cost, now) {
            Verdict::Allowed { remaining, reset } => {
                let r = Remaining {
                    limit: gcra.amount,
                    remaining,
                    reset,
                };
                if kind == RateKind::Requests {
                    quota.requests = Remaining::tighter(quota.requests, r);
                } else {
                    quota.tokens = Remaining::tighter(quota.tokens, r);
                }
                taken.push(HeldRate {
                    gcra,
                    kind,
                    reserved: cost,
                });
            }
            Verdict::Denied { retry_after } => {
                let r = Remaining {
                    limit: gcra.amount,
                    remaining: 0,
                    reset: retry_after,
                };
                if kind == RateKind::Requests {
                    quota.requests = Some(r);
                } else {
                    quota.tokens = Some(r);
                }
                denied = Some((name, kind, cost, gcra.amount, retry_after));
                break;
            }
        }
    }
    if let Some((name, kind, cost, limit, retry_after)) = denied {
        let name = name.render();
        for t in taken {
            t.gcra.refund(t.reserved);
        }
        gov.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        let what = if kind == RateKind::Requests {
            "requests"
        } else {
            "tokens"
        };
        let message = if cost > limit {
            format!("This request needs {cost} {what}, more than the whole limit `{name}` ({limit}) allows; reduce max_tokens or the prompt.")
        } else {
            format!("Rate limit reached for `{name}`: limit {limit}, requested {cost}. Please try again in {}.", openai_duration(retry_after))
        };
        let headers = render_quota(&quota, ctx.api.wire());
        return Err(
            GateError::new(ErrorKind::RateLimited { kind: what }, message).with_detail(
                ErrorDetail {
                    limit: Some(name),
                    resets_at_ms: Some(now_ms() + retry_after.as_millis() as i64),
                    retry_after_s: Some(retry_after.as_secs_f64().ceil().max(1.0) as u32),
                    headers,
                },
            ),
        );
    }
    ctx.hold.rates = taken;
    if quota.requests.is_some() || quota.tokens.is_some() {
        ctx.quota = Some(Box::new(quota));
    }
    Ok(())
}

/// A rate limit, named when it refuses a request.
enum Named<'a> {
    Key(&'a KeyEntry, &'static str),
    Rule(&'a str, &'a crate::governance::policy::Rate),
}

impl Named<'_> {
    fn render(&self) -> String {
        match self {
            Named::Key(k, what) => format!("key={}/{what}", k.id),
            Named::Rule(name, rate) => format!("{name}/{}", rate.name()),
        }
    }
}

/// The price the request will be charged at: the client's model name (configured prices),
/// then each target's provider model name.
pub fn price_of(snap: &Snapshot, model: &str) -> Option<Price> {
    let cfg = &snap.cfg;
    let upstream = cfg
        .model_by_name(model)
        .and_then(|(_, m)| m.targets.first())
        .map(|t| t.upstream_model.as_str());
    match upstream {
        Some(u) => cfg.prices.lookup(&[model, u]),
        None => cfg.prices.lookup(&[model]),
    }
}

/// What one attempt at reserving found.
enum Attempt {
    Held(Vec<HeldBudget>),
    Full {
        rule: Option<usize>,
        name: String,
        resets_at_ms: i64,
        used: String,
    },
}

async fn budgets(
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
            Attempt::Full {
                rule,
                name,
                resets_at_ms,
                used,
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
                        check_model(gov, snap, client, ctx, key, &model.clone())?;
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
        let t = state.tokens.try_reserve(span.index, tokens, cap(limit_t));
        let c = match t {
            Ok(_) => state
                .micro_usd
                .try_reserve(span.index, micro_usd, cap(limit_c)),
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
            return Attempt::Full {
                rule,
                name: info.name.clone(),
                resets_at_ms: span.end_ms,
                used,
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

/// The providers' rate-limit headers for `q`, in the client's wire format, plus
/// `x-tollgate-fallback`. Written straight into one buffer (it runs for every governed response).
pub fn render_quota(q: &Quota, wire: Wire) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(384);
    for (what, r) in [("requests", q.requests), ("tokens", q.tokens)] {
        let Some(r) = r else { continue };
        match wire {
            Wire::OpenAi => {
                let _ = write!(
                    out,
                    "x-ratelimit-limit-{what}: {}\r\nx-ratelimit-remaining-{what}: {}\r\nx-ratelimit-reset-{what}: ",
                    r.limit, r.remaining
                );
                write_openai_duration(&mut out, r.reset);
                out.push_str("\r\n");
            }
            Wire::Anthropic => {
                let _ = write!(
                    out,
                    "anthropic-ratelimit-{what}-limit: {}\r\nanthropic-ratelimit-{what}-remaining: {}\r\nanthropic-ratelimit-{what}-reset: {}\r\n",
                    r.limit,
                    r.remaining,
                    rfc3339(now_ms() + r.reset.as_millis() as i64)
                );
            }
        }
    }
    if let Some(f) = &q.fallback {
        let _ = write!(out, "x-tollgate-fallback: {f}\r\n");
    }
    out
}

/// `20ms`, `1s`, `6m0s`, `1h2m3s`, as OpenAI writes its reset headers.
pub fn openai_duration(d: Duration) -> String {
    let mut s = String::new();
    write_openai_duration(&mut s, d);
    s
}

fn write_openai_duration(out: &mut String, d: Duration) {
    use std::fmt::Write;
    let ms = d.as_millis() as u64;
    if ms < 1000 {
        let _ = write!(out, "{ms}ms");
        return;
    }
    let s = d.as_secs_f64().ceil() as u64;
    let _ = match s {
        0..=59 => write!(out, "{s}s"),
        60..=3599 => write!(out, "{}m{}s", s / 60, s % 60),
        _ => write!(out, "{}h{}m{}s", s / 3600, s / 60 % 60, s % 60),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_durations_read_like_openai() {
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "2s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(openai_duration(Duration::from_secs(3723)), "1h2m3s");
    }

    #[test]
    fn redaction_never_shows_the_middle() {
        assert_eq!(redact("sk-1234567890abcdef"), "sk-123...cdef");
        assert_eq!(redact("short"), "***");
    }
}
