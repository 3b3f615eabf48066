//! Phase 6, route: the requested model name → the target (provider + upstream model) that
//! serves it, and, after a failed attempt, the next one.
//!
//! A model's targets are narrowed by conditions — the request's API and type (chat,
//! embeddings, tools, images), its estimated size against each `context_window`, the caller's
//! permission to use public providers (`egress`), the target's `hours` — and by its circuit
//! breaker (`upstream/breaker.rs`). Among what is left, the lowest `priority` group wins and a
//! target is drawn by `weight`. When no target of the model is left, its `fallback` models are
//! tried in order. A virtual model with `tiers` was already resolved to a tier's model before
//! admission (`tiers.rs`), so budgets reserve at the tier's price.
//!
//! Retries (`retry.rs`): a connect failure, or a 429/5xx answered before any byte reached the
//! client, may send the request to another target (never one it already tried), within the
//! model's `retry.attempts` and the worker's retry budget. Every attempt feeds its target's
//! breaker, and the request's `route.trail` records what happened for the ledger.
//!
//! Intercepted connections (the kernel redirected a client's connect to the agent, so the
//! connection carries an `original_dst`) go where the client addressed them, under full
//! metering: to the configured provider at exactly that address (and the configured model when
//! the name is one of its models, else the model name passes through unchanged), or else to
//! the implicit passthrough provider validation created for that destination. The route for
//! each destination was computed at load (`Config::intercept_routes`).
//!
//! Reads: `ctx.inspection`, `ctx.api`, `ctx.route`, the breakers. Writes: `ctx.target`,
//! `ctx.route`. Hot path: a hash lookup, and for each target a few comparisons and one atomic
//! load.

pub mod balance;
mod batch;
pub mod predict;
pub mod queue;
mod retry;
mod tiers;

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use crate::api::{Api, Wire};
use crate::config::routing::{Balance, RequestKind, Serves};
use crate::config::Config;
use crate::error::{ErrorDetail, ErrorKind, GateError};
use crate::pipeline::RequestCtx;
use crate::snapshot::Snapshot;
use crate::upstream::breaker::State;

pub use batch::hold as hold_batch;
pub use queue::wait_turn;
pub use retry::{after_attempt, after_error, retry_after_ms};
pub use tiers::resolve_tier;

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The configured model and which of its targets; `None` for an intercepted request whose
    /// model name is passed through to the original destination unchanged.
    pub model: Option<(usize, usize)>,
    pub provider: usize,
}

impl Target {
    /// The model name the provider receives: the configured target's, or the client's own.
    pub fn upstream_model<'a>(&self, cfg: &'a Config, requested: &'a str) -> &'a str {
        match self.model {
            Some((m, t)) => &cfg.models[m].targets[t].upstream_model,
            None => requested,
        }
    }

    /// The configured model's index, if any.
    pub fn model_index(&self) -> Option<usize> {
        self.model.map(|(m, _)| m)
    }
}

/// What routing decided and went through for one request.
#[derive(Debug, Default)]
pub struct RouteState {
    /// The model the request asked for (after tiers), whose retry policy applies.
    pub model: Option<usize>,
    /// Targets already tried, as (model, target).
    pub tried: Vec<(usize, usize)>,
    /// Attempts sent to a provider (the first included).
    pub attempts: u32,
    /// Tier, fallback and failed attempts, for the ledger's `route` column; empty when the
    /// first choice served.
    pub trail: String,
    /// The caller may use public providers (from `egress`, decided in the pipeline).
    pub public_ok: bool,
    /// The balancer's score of the chosen replica (`prefix`, `least_load`).
    pub score: Option<f32>,
    /// Leading prompt bytes the chosen replica was recently sent (`prefix`).
    pub prefix_bytes: u64,
    /// This request counted in flight to its provider (for `least_load` and `prefix`).
    pub inflight: Option<balance::Inflight>,
    /// Its slot of the model's gate (`queue.rs`), when the model has one.
    pub permit: Option<queue::Permit>,
    /// Its place among the requests in flight to its target, when the model has a gate.
    pub slot: Option<queue::TargetSlot>,
}

impl RouteState {
    fn note(&mut self, what: std::fmt::Arguments<'_>) {
        use std::fmt::Write;
        if !self.trail.is_empty() {
            self.trail.push_str("; ");
        }
        let _ = self.trail.write_fmt(what);
    }
}

/// Per-worker routing state: the weighted draw, the retry budget and the balancer (prefix
/// index, in-flight counts). `!Send`: one per worker.
pub struct RouteLocal {
    pub balance: balance::BalanceLocal,
    /// Batch-class requests waiting now, that waited, that were deferred (for `/metrics`).
    pub batch_waiting: Cell<u64>,
    pub batch_waited: Cell<u64>,
    pub batch_deferred: Cell<u64>,
    rng: Cell<u64>,
    /// The second the counters below cover (ms / 1000).
    second: Cell<u64>,
    requests: Cell<u32>,
    retries: Cell<u32>,
}

impl RouteLocal {
    pub fn new(
        seed: u64,
        replicas: std::sync::Arc<crate::telemetry::replicas::ReplicaBoard>,
    ) -> Self {
        RouteLocal {
            balance: balance::BalanceLocal::new(replicas),
            batch_waiting: Cell::new(0),
            batch_waited: Cell::new(0),
            batch_deferred: Cell::new(0),
            rng: Cell::new(seed | 1),
            second: Cell::new(0),
            requests: Cell::new(0),
            retries: Cell::new(0),
        }
    }

    /// xorshift64*: cheap, and good enough to spread requests by weight.
    fn draw(&self, below: u64) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) % below.max(1)
    }

    fn roll(&self, now_ms: u64) {
        let s = now_ms / 1000;
        if self.second.get() != s {
            self.second.set(s);
            self.requests.set(0);
            self.retries.set(0);
        }
    }
}

/// What a request needs of a target.
struct Need {
    api: Api,
    wire: Wire,
    kinds: u8,
    /// Estimated prompt tokens plus the output asked for.
    tokens: u64,
    minute_of_day: u16,
    public_ok: bool,
}

impl Need {
    /// `images`: whether any candidate target restricts request types (only then is the body
    /// searched for image parts).
    fn of(ctx: &RequestCtx, now_ms: u64, images: bool) -> Need {
        let kinds = match ctx.api {
            Api::Embeddings => RequestKind::Embeddings as u8,
            _ => {
                let mut k = RequestKind::Chat as u8;
                if ctx.inspection.tool_count > 0 {
                    k |= RequestKind::Tools as u8;
                }
                if images && has_images(&ctx.body) {
                    k |= RequestKind::Images as u8;
                }
                k
            }
        };
        Need {
            api: ctx.api,
            wire: ctx.api.wire(),
            kinds,
            tokens: prompt_tokens(ctx)
                + ctx.inspection.max_output_tokens.unwrap_or(0)
                    * u64::from(ctx.inspection.n.max(1)),
            minute_of_day: ((now_ms / 60_000) % 1440) as u16,
            public_ok: ctx.route.public_ok,
        }
    }
}

/// Estimated prompt tokens: one per 3 bytes of prompt JSON, above the real count for English
/// and code, so a prompt near a window's edge goes to a larger one. The same estimate budgets
/// reserve with.
pub fn prompt_tokens(ctx: &RequestCtx) -> u64 {
    ctx.inspection.prompt_bytes as u64 / 3 + 16
}

/// Image parts in OpenAI chat (`image_url`), Responses (`input_image`) or Anthropic
/// (`"type": "image"`) bodies. A byte search: a prompt that merely mentions the words may be
/// sent to an image-capable target, never the reverse.
fn has_images(body: &[u8]) -> bool {
    use memchr::memmem::find;
    find(body, b"\"image_url\"").is_some()
        || find(body, b"\"input_image\"").is_some()
        || find(body, b"\"image\"").is_some()
}

/// Why targets were passed over, to explain a request that none could take.
#[derive(Default)]
struct Skipped {
    api: u32,
    kind: u32,
    context: u32,
    largest_window: u64,
    egress: u32,
    hours: u32,
    open: u32,
    open_for_ms: u64,
    tried: u32,
}

impl Skipped {
    /// The error for a request no target of `name` (or its fallbacks) could take.
    fn error(&self, name: &str, need: &Need, path: &str) -> GateError {
        if self.tried > 0 {
            return GateError::new(
                ErrorKind::UpstreamUnreachable,
                format!("every target of the model `{name}` failed"),
            );
        }
        if self.open > 0 {
            let secs = self.open_for_ms.div_ceil(1000).max(1);
            return GateError::new(
                ErrorKind::Unavailable {
                    code: "circuit_open",
                },
                format!(
                    "every target of the model `{name}` is failing and its circuit breaker is \
                     open; retry in {secs} s"
                ),
            )
            .with_detail(ErrorDetail {
                retry_after_s: Some(secs.min(u64::from(u32::MAX)) as u32),
                ..ErrorDetail::default()
            });
        }
        if self.context > 0 {
            return GateError::new(
                ErrorKind::ContextTooLong,
                format!(
                    "This model's maximum context length is {} tokens; the request needs about {} \
                     (estimated prompt plus max_tokens). Shorten the messages or max_tokens.",
                    self.largest_window, need.tokens
                ),
            );
        }
        if self.egress > 0 {
            return GateError::new(
                ErrorKind::Forbidden {
                    code: "egress_denied",
                },
                format!(
                    "The model `{name}` is served only by public providers, which policy \
                     `egress` does not allow for this caller."
                ),
            );
        }
        if self.hours > 0 {
            return GateError::new(
                ErrorKind::Unavailable {
                    code: "no_target_available",
                },
                format!("no target of the model `{name}` is in service at this hour (UTC)"),
            );
        }
        if self.kind > 0 {
            return GateError::new(
                ErrorKind::InvalidRequest { param: None },
                format!(
                    "no target of the model `{name}` serves this kind of request (tools, images \
                     or embeddings)"
                ),
            );
        }
        let (kind, hint) = if need.wire == Wire::OpenAi {
            ("Anthropic", "use /v1/messages")
        } else {
            (
                "OpenAi",
                "use the OpenAI endpoints (/v1/chat/completions, ...)",
            )
        };
        GateError::new(
            ErrorKind::UnsupportedApi,
            format!(
                "The model `{name}` is served by an {kind} provider that does not speak {path}; {hint}."
            ),
        )
    }
}

/// The first routing of a request.
pub fn run(
    snap: &Snapshot,
    local: &RouteLocal,
    ctx: &mut RequestCtx,
    original_dst: Option<SocketAddr>,
) -> Result<(), GateError> {
    let cfg = &snap.cfg;
    if let Some(dst) = original_dst {
        return intercepted(cfg, ctx, dst);
    }
    let name = &ctx.inspection.model;
    let Some((model_idx, _)) = cfg.model_by_name(name) else {
        return Err(GateError::new(
            ErrorKind::ModelNotFound,
            format!("The model `{name}` does not exist or you do not have access to it."),
        ));
    };
    let now = crate::governance::window::now_ms().max(0) as u64;
    local.roll(now);
    local.requests.set(local.requests.get().saturating_add(1));
    ctx.route.model = Some(model_idx);
    ctx.route.attempts = 1;
    pick(snap, local, ctx, now)
}

/// Chooses among the targets of the request's model and then its fallbacks, skipping what was
/// tried; sets `ctx.target`.
fn pick(
    snap: &Snapshot,
    local: &RouteLocal,
    ctx: &mut RequestCtx,
    now_ms: u64,
) -> Result<(), GateError> {
    let cfg = &snap.cfg;
    let Some(first) = ctx.route.model else {
        return Err(GateError::new(ErrorKind::Internal, "route without a model"));
    };
    let restricts = std::iter::once(first)
        .chain(cfg.models[first].fallback.iter().copied())
        .any(|m| {
            cfg.models[m]
                .targets
                .iter()
                .any(|t| t.serves != Serves::ALL)
        });
    let need = Need::of(ctx, now_ms, restricts);
    let mut skipped = Skipped::default();
    let prompt = std::cell::OnceCell::new();
    let found = {
        let req = Req {
            ctx,
            prompt: &prompt,
        };
        std::iter::once(first)
            .chain(cfg.models[first].fallback.iter().copied())
            .enumerate()
            .find_map(|(pos, m)| {
                choose(snap, local, &req, m, &need, &mut skipped, now_ms).map(|c| (pos, m, c))
            })
    };
    let Some((pos, m, (t, choice))) = found else {
        return Err(skipped.error(&cfg.models[first].name, &need, ctx.head.path()));
    };
    if pos > 0 && ctx.target.is_none_or(|prev| prev.model_index() != Some(m)) {
        ctx.route.note(format_args!(
            "fallback {} -> {}",
            cfg.models[first].name, cfg.models[m].name
        ));
    }
    ctx.route.score = choice.and_then(|c| c.score);
    ctx.route.prefix_bytes = choice.map_or(0, |c| c.prefix_bytes);
    let provider = cfg.models[m].targets[t].provider;
    if let (Some(p), true) = (prompt.get(), cfg.models[m].balance == Balance::Prefix) {
        // What this replica now holds in its KV cache, for the next request of the session.
        let id = snap.providers[provider].id;
        local
            .balance
            .index()
            .record(&p.hashes, id, cfg.routing.prefix.max_blocks);
    }
    ctx.target = Some(Target {
        model: Some((m, t)),
        provider,
    });
    Ok(())
}

/// The request as `choose` reads it, with its prompt's block hashes computed on first use.
struct Req<'a> {
    ctx: &'a RequestCtx,
    prompt: &'a std::cell::OnceCell<balance::Prompt>,
}

impl Req<'_> {
    fn prompt(&self, snap: &Snapshot, model: &str) -> &balance::Prompt {
        self.prompt.get_or_init(|| {
            let text = balance::render_prompt(self.ctx.api, &self.ctx.body);
            balance::Prompt {
                hashes: balance::block_hashes(
                    model,
                    text.as_bytes(),
                    snap.cfg.routing.prefix.block_bytes,
                ),
            }
        })
    }
}

/// One model's choice: the lowest priority group with an available target, a draw by weight
/// within it. Returns the target (having claimed its breaker's probe when half-open) and what
/// the balancer decided.
fn choose(
    snap: &Snapshot,
    local: &RouteLocal,
    req: &Req<'_>,
    m: usize,
    need: &Need,
    skipped: &mut Skipped,
    now_ms: u64,
) -> Option<(usize, Option<balance::Choice>)> {
    let tried = &req.ctx.route.tried;
    let cfg = &snap.cfg;
    let model = &cfg.models[m];
    let breakers = &snap.breakers[m];
    // Half-open targets whose probe another request holds, passed over on the next round.
    let mut busy: Vec<usize> = Vec::new();
    let mut count = true;
    // Targets at their `max_in_flight` are passed over while another has room.
    let gate = snap.gates.get(m).and_then(Option::as_ref);
    let mut respect_caps = gate.is_some();
    loop {
        let usable = |i: usize, skipped: &mut Skipped, count: bool| -> bool {
            let t = &model.targets[i];
            let why = if crate::api::reach(need.api, &cfg.providers[t.provider]).is_none() {
                &mut skipped.api
            } else if need.kinds & !t.serves.bits() != 0 {
                &mut skipped.kind
            } else if t.context_window.is_some_and(|w| need.tokens > w) {
                skipped.largest_window = skipped.largest_window.max(t.context_window.unwrap_or(0));
                &mut skipped.context
            } else if cfg.providers[t.provider].public && !need.public_ok {
                &mut skipped.egress
            } else if t.hours.is_some_and(|h| !h.contains(need.minute_of_day)) {
                &mut skipped.hours
            } else if tried.contains(&(m, i)) {
                &mut skipped.tried
            } else if busy.contains(&i) || (respect_caps && gate.is_some_and(|g| g.full(i))) {
                return false;
            } else if !snap.providers[t.provider].healthy.load(Ordering::Relaxed) {
                // The active health check fails: like an open breaker, retry in a second.
                if count {
                    skipped.open_for_ms = if skipped.open == 0 {
                        1000
                    } else {
                        skipped.open_for_ms.min(1000)
                    };
                }
                &mut skipped.open
            } else if let (true, State::Open { for_ms }) =
                (model.breaker.enabled, breakers[i].breaker.state(now_ms))
            {
                if count {
                    skipped.open_for_ms = if skipped.open == 0 {
                        for_ms
                    } else {
                        skipped.open_for_ms.min(for_ms)
                    };
                }
                &mut skipped.open
            } else {
                return true;
            };
            if count {
                *why += 1;
            }
            false
        };
        let mut best = u8::MAX;
        let mut total = 0u64;
        for i in 0..model.targets.len() {
            if usable(i, skipped, count) {
                let t = &model.targets[i];
                if t.priority < best {
                    best = t.priority;
                    total = 0;
                }
                if t.priority == best {
                    total += u64::from(t.weight);
                }
            }
        }
        count = false;
        if total == 0 {
            if respect_caps {
                respect_caps = false;
                continue;
            }
            return None;
        }
        let mut choice = None;
        let chosen = if model.balance == Balance::Weighted || model.targets.len() == 1 {
            let mut r = local.draw(total);
            let mut chosen = None;
            for i in 0..model.targets.len() {
                let t = &model.targets[i];
                if t.priority == best && usable(i, skipped, false) {
                    if r < u64::from(t.weight) {
                        chosen = Some(i);
                        break;
                    }
                    r -= u64::from(t.weight);
                }
            }
            chosen
        } else {
            let cands: Vec<balance::Candidate> = (0..model.targets.len())
                .filter(|i| model.targets[*i].priority == best && usable(*i, skipped, false))
                .map(|i| {
                    let t = &model.targets[i];
                    balance::Candidate {
                        target: i,
                        provider_index: t.provider,
                        provider_id: snap.providers[t.provider].id,
                        weight: t.weight,
                    }
                })
                .collect();
            match cands.as_slice() {
                [] => None,
                [one] => Some(one.target),
                _ => {
                    let prompt =
                        (model.balance == Balance::Prefix).then(|| req.prompt(snap, &model.name));
                    let c = balance::pick(
                        model.balance,
                        &cfg.routing.prefix,
                        &local.balance,
                        &cands,
                        prompt,
                        &|total| local.draw(total),
                    );
                    choice = Some(c);
                    Some(c.target)
                }
            }
        };
        let i = chosen?;
        let b = &breakers[i].breaker;
        // A half-open target serves only the request that claims its probe; the probe's
        // outcome (`retry::record`) closes or reopens the breaker.
        match b.state(now_ms) {
            State::HalfOpen if model.breaker.enabled && !b.try_probe(now_ms, &model.breaker) => {
                busy.push(i)
            }
            _ => return Some((i, choice)),
        }
    }
}

/// A request on a connection the kernel redirected from `dst`.
fn intercepted(cfg: &Config, ctx: &mut RequestCtx, dst: SocketAddr) -> Result<(), GateError> {
    let Some(route) = cfg.intercept_route(dst) else {
        // Only destinations in `intercept` are redirected, so this is a configuration that
        // changed under a live connection, or another agent's redirect.
        return Err(GateError::new(
            ErrorKind::UpstreamUnreachable,
            format!("the connection to {dst} was redirected to Tollgate, but {dst} is not in its intercept list"),
        ));
    };
    let provider = route.provider_for(ctx.api.wire());
    let model = cfg
        .model_by_name(&ctx.inspection.model)
        .and_then(|(i, m)| m.target_on(provider).map(|t| (i, t)));
    ctx.target = Some(Target { model, provider });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Api;
    use crate::config::ProviderKind;
    use crate::http::request::RequestHead;
    use crate::phase::read::Request;
    use std::sync::Arc;
    use std::time::Instant;

    const CFG: &str = "listen: 127.0.0.1:4000
providers:
  - name: local
    kind: openai
    base_url: http://127.0.0.1:8000
  - name: other
    kind: openai
    base_url: http://127.0.0.1:9000
models:
  - name: smol
    provider: local
    model: smollm2
  - name: big
    provider: other
intercept:
  - 127.0.0.1:8000
  - 127.0.0.1:7000
";

    fn snap_of(cfg: &Config) -> Arc<Snapshot> {
        let metrics = crate::telemetry::metrics::Metrics::new(1, vec![], vec![]);
        Arc::new(
            crate::snapshot::Registry::default()
                .build(
                    Arc::new(cfg.clone()),
                    1,
                    &metrics,
                    &crate::governance::Governor::for_tests(),
                )
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    fn ctx(snap: &Arc<Snapshot>, api: Api, model: &str) -> RequestCtx {
        let raw =
            bytes::Bytes::from_static(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n\r\n");
        let head = RequestHead::parse(raw, 16).unwrap_or_else(|e| panic!("{e:?}"));
        let mut ctx = RequestCtx::new(
            "t".into(),
            Instant::now(),
            api,
            Request {
                head,
                body: bytes::Bytes::new(),
                snap: snap.clone(),
                reservation: crate::phase::read::Reservation::none(),
            },
        );
        ctx.inspection.model = model.to_string();
        ctx
    }

    fn local() -> RouteLocal {
        RouteLocal::new(42, std::sync::Arc::default())
    }

    fn build(yaml: &str) -> (Config, Arc<Snapshot>) {
        let cfg = Config::from_yaml(yaml, &|_| None).unwrap_or_else(|e| panic!("{e}"));
        let snap = snap_of(&cfg);
        (cfg, snap)
    }

    fn route_of(
        snap: &Arc<Snapshot>,
        local: &RouteLocal,
        api: Api,
        model: &str,
    ) -> Result<Target, GateError> {
        let mut c = ctx(snap, api, model);
        c.route.public_ok = true;
        run(snap, local, &mut c, None).map(|()| c.target.unwrap_or_else(|| panic!("no target")))
    }

    const THREE: &str = "providers:
  - {name: a, kind: openai, base_url: http://127.0.0.1:8001}
  - {name: b, kind: openai, base_url: http://127.0.0.1:8002}
  - {name: c, kind: anthropic, base_url: http://127.0.0.1:8003}
  - {name: cloud, kind: openai, base_url: https://api.openai.com}
models:
  - name: chat
    targets:
      - {provider: c, model: claude-x}
      - {provider: a, model: qwen, weight: 1}
      - {provider: b, model: qwen-b, weight: 3}
      - {provider: cloud, model: gpt-4o-mini, priority: 1}
    breaker: {failures: 2, cooldown_ms: 60000}
    fallback: [small]
  - name: small
    provider: a
    model: tiny
    breaker: {}
";

    fn served(cfg: &Config, r: Result<Target, GateError>) -> String {
        let t = r.unwrap_or_else(|e| panic!("{e}"));
        t.upstream_model(cfg, "?").to_string()
    }

    #[test]
    fn weights_split_the_lowest_priority_group_and_the_api_filters() {
        let (cfg, snap) = build(THREE);
        let local = local();
        let mut count = [0u32; 4];
        for _ in 0..5000 {
            let t = route_of(&snap, &local, Api::ChatCompletions, "chat")
                .unwrap_or_else(|e| panic!("{e}"));
            count[t.model.map_or(0, |(_, t)| t)] += 1;
        }
        // 1:1:3 by weight (the Anthropic target through translation); priority 1 waits.
        assert_eq!(count[3], 0, "{count:?}");
        assert!((800..1200).contains(&count[0]), "{count:?}");
        assert!((800..1200).contains(&count[1]), "{count:?}");
        assert!((2800..3200).contains(&count[2]), "{count:?}");
        // Embeddings: no Anthropic target, whatever its weight.
        for _ in 0..200 {
            let t =
                route_of(&snap, &local, Api::Embeddings, "chat").unwrap_or_else(|e| panic!("{e}"));
            assert_ne!(t.model.map(|(_, t)| t), Some(0));
        }
        let r = route_of(&snap, &local, Api::Messages, "chat");
        assert_eq!(served(&cfg, r), "claude-x");
    }

    #[test]
    fn open_breakers_move_traffic_to_the_next_group_then_the_fallback() {
        let (cfg, snap) = build(THREE);
        let local = local();
        let now = crate::governance::window::now_ms() as u64;
        let policy = cfg.models[0].breaker;
        for t in [0, 1, 2] {
            snap.breakers[0][t].breaker.failure(now, &policy);
            snap.breakers[0][t].breaker.failure(now, &policy);
        }
        let r = route_of(&snap, &local, Api::ChatCompletions, "chat");
        assert_eq!(served(&cfg, r), "gpt-4o-mini", "priority 1 when 0 is open");
        // The public provider is not allowed for this caller: the fallback model serves.
        let mut c = ctx(&snap, Api::ChatCompletions, "chat");
        c.route.public_ok = false;
        run(&snap, &local, &mut c, None).unwrap_or_else(|e| panic!("{e}"));
        let t = c.target.unwrap_or_else(|| panic!("no target"));
        assert_eq!(t.upstream_model(&cfg, "chat"), "tiny");
        assert_eq!(c.route.trail, "fallback chat -> small");
        // Everything open: 503 circuit_open with a Retry-After.
        snap.breakers[0][3].breaker.hold_off(now, 60_000);
        snap.breakers[1][0].breaker.hold_off(now, 5_000);
        let e = route_of(&snap, &local, Api::ChatCompletions, "chat")
            .err()
            .unwrap_or_else(|| panic!("routed"));
        assert_eq!(e.metric_reason(), "circuit_open");
        let retry = e.detail.as_ref().and_then(|d| d.retry_after_s);
        assert!(retry.is_some_and(|s| (1..=5).contains(&s)), "{retry:?}");
    }

    #[test]
    fn context_windows_and_hours_narrow_the_targets() {
        let (cfg, snap) = build(
            "providers:
  - {name: a, kind: openai, base_url: http://127.0.0.1:8001}
  - {name: b, kind: openai, base_url: http://127.0.0.1:8002}
models:
  - name: m
    targets:
      - {provider: a, model: short, context_window: 100}
      - {provider: b, model: long, context_window: 100000, priority: 1}
  - name: never
    targets:
      - {provider: a, model: x, hours: \"00:00-00:01\"}
",
        );
        let local = local();
        for (bytes, want) in [(30, "short"), (3000, "long")] {
            let mut c = ctx(&snap, Api::ChatCompletions, "m");
            c.inspection.prompt_bytes = bytes;
            run(&snap, &local, &mut c, None).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.target.map(|t| t.upstream_model(&cfg, "m")), Some(want));
        }
        let mut c = ctx(&snap, Api::ChatCompletions, "m");
        c.inspection.prompt_bytes = 3_000_000;
        let e = run(&snap, &local, &mut c, None)
            .err()
            .unwrap_or_else(|| panic!("routed"));
        assert_eq!(
            (e.status(), e.metric_reason()),
            (400, "context_length_exceeded")
        );
        // A one-minute window at midnight UTC: closed except in that minute.
        let minute = (crate::governance::window::now_ms() / 60_000) % 1440;
        if minute != 0 {
            let e = route_of(&snap, &local, Api::ChatCompletions, "never")
                .err()
                .unwrap_or_else(|| panic!("routed"));
            assert_eq!(
                (e.status(), e.metric_reason()),
                (503, "no_target_available")
            );
        }
    }

    fn cfg() -> Config {
        Config::from_yaml(CFG, &|_| None).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn intercepted_requests_go_to_their_original_destination() {
        let cfg = cfg();
        let snap = snap_of(&cfg);
        let dst: SocketAddr = "127.0.0.1:8000".parse().unwrap_or_else(|e| panic!("{e}"));
        // A configured model of the provider at that address: its upstream name.
        let mut c = ctx(&snap, Api::ChatCompletions, "smol");
        run(&snap, &local(), &mut c, Some(dst)).unwrap_or_else(|e| panic!("{e}"));
        let t = c.target.unwrap_or_else(|| panic!("no target"));
        assert_eq!((t.model, t.provider), (Some((0, 0)), 0));
        assert_eq!(t.upstream_model(&cfg, "smol"), "smollm2");
        // Any other name passes through, still to that address (never to `other`).
        for name in ["smollm2", "big"] {
            let mut c = ctx(&snap, Api::ChatCompletions, name);
            run(&snap, &local(), &mut c, Some(dst)).unwrap_or_else(|e| panic!("{e}"));
            let t = c.target.unwrap_or_else(|| panic!("no target"));
            assert_eq!((t.model, t.provider), (None, 0), "{name}");
            assert_eq!(t.upstream_model(&cfg, name), name);
        }
        // /v1/messages to that address: the implicit anthropic passthrough.
        let mut c = ctx(&snap, Api::Messages, "claude-x");
        run(&snap, &local(), &mut c, Some(dst)).unwrap_or_else(|e| panic!("{e}"));
        let t = c.target.unwrap_or_else(|| panic!("no target"));
        let p = &cfg.providers[t.provider];
        assert!(p.implicit && p.kind == ProviderKind::Anthropic && p.port == 8000);
        // A destination no provider serves: implicit openai passthrough, no key.
        let other: SocketAddr = "127.0.0.1:7000".parse().unwrap_or_else(|e| panic!("{e}"));
        let mut c = ctx(&snap, Api::ChatCompletions, "smol");
        run(&snap, &local(), &mut c, Some(other)).unwrap_or_else(|e| panic!("{e}"));
        let t = c.target.unwrap_or_else(|| panic!("no target"));
        let p = &cfg.providers[t.provider];
        assert!(p.implicit && p.api_key.is_none() && p.port == 7000);
        assert_eq!(t.model, None);
        // Not intercepted at all: refused rather than sent somewhere else.
        let stray: SocketAddr = "127.0.0.1:6000".parse().unwrap_or_else(|e| panic!("{e}"));
        let mut c = ctx(&snap, Api::ChatCompletions, "smol");
        assert!(run(&snap, &local(), &mut c, Some(stray)).is_err());
    }

    #[test]
    fn direct_requests_route_by_model_name() {
        let cfg = cfg();
        let snap = snap_of(&cfg);
        let mut c = ctx(&snap, Api::ChatCompletions, "big");
        run(&snap, &local(), &mut c, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.target,
            Some(Target {
                model: Some((1, 0)),
                provider: 1
            })
        );
        let mut c = ctx(&snap, Api::ChatCompletions, "smollm2");
        assert!(run(&snap, &local(), &mut c, None).is_err());
    }
}
