//! Routing settings: how a model's targets are chosen and what happens when one fails. Runtime
//! types (read by `phase/route.rs` and `pipeline.rs` per request) and their validation from
//! `routing:` (defaults) and each model's `retry`, `breaker`, `timeouts`, `fallback`, `tiers`
//! and per-target conditions (`priority`, `context_window`, `serves`, `hours`).

use std::time::Duration;

use super::file::{
    BatchFile, BreakerFile, HealthCheckFile, PrefixFile, QueueFile, RetryFile, RoutingFile,
    TargetFile, TierFile, TimeoutsFile,
};
use super::validate::Validator;
use super::Glob;

/// Which failures send a request to another target. Statuses 400–599 as a bit set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Further targets a request may try after the first.
    pub attempts: u32,
    pub on_connect: bool,
    statuses: [u64; 4],
}

impl RetryPolicy {
    pub fn retries_status(&self, status: u16) -> bool {
        let Some(i) = status.checked_sub(400).map(usize::from) else {
            return false;
        };
        i < 200 && self.statuses[i / 64] & (1 << (i % 64)) != 0
    }

    fn add_status(&mut self, status: u16) {
        let i = usize::from(status - 400);
        self.statuses[i / 64] |= 1 << (i % 64);
    }
}

impl Default for RetryPolicy {
    /// Connect failures only: nothing reached the provider, so nothing can be billed twice.
    fn default() -> Self {
        RetryPolicy {
            attempts: 2,
            on_connect: true,
            statuses: [0; 4],
        }
    }
}

/// A target's circuit breaker: `failures` in a row (no success between them) within `window`
/// open it for `cooldown`, then one probe request is let through (half-open); its success
/// closes the breaker. Unless configured, a breaker is on only for models with somewhere else
/// to send traffic (several targets or a fallback): with one target and nothing after it, the
/// provider's own error tells the client more than a 503 of ours would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    pub enabled: bool,
    /// Set in the file (`routing.breaker` or the model's `breaker`), so not decided by shape.
    pub explicit: bool,
    pub failures: u32,
    pub window: Duration,
    pub cooldown: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            enabled: true,
            explicit: false,
            failures: 5,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(30),
        }
    }
}

/// Deadlines for one request to a model's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// Request written → response head.
    pub first_token: Duration,
    /// The whole request, from its first byte read; `None`: no overall limit.
    pub request: Option<Duration>,
    /// Longest gap between two pieces of the response body.
    pub idle: Duration,
}

/// Retries a worker allows: `ratio` of its requests in the current second, at least
/// `min_per_second`. Keeps a failing provider from doubling the load on the others.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: 0.2,
            min_per_second: 10,
        }
    }
}

/// The kinds of request a target serves (bit set of [`RequestKind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Serves(u8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Chat = 1,
    Embeddings = 2,
    Tools = 4,
    Images = 8,
}

impl Serves {
    pub const ALL: Serves = Serves(0xf);

    pub fn contains(self, k: RequestKind) -> bool {
        self.0 & k as u8 != 0
    }

    pub fn bits(self) -> u8 {
        self.0
    }
}

/// UTC minutes of the day a target is used, `[start, end)`; wraps past midnight when
/// `start > end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hours {
    pub start_min: u16,
    pub end_min: u16,
}

impl Hours {
    pub fn contains(self, minute_of_day: u16) -> bool {
        if self.start_min <= self.end_min {
            (self.start_min..self.end_min).contains(&minute_of_day)
        } else {
            minute_of_day >= self.start_min || minute_of_day < self.end_min
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Hours> {
        let (a, b) = s.split_once('-')?;
        let minute = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h <= 24 && m < 60 && h * 60 + m <= 1440).then_some(h * 60 + m)
        };
        let (start_min, end_min) = (minute(a)?, minute(b)?);
        (start_min != end_min).then_some(Hours { start_min, end_min })
    }
}

/// A cost tier of a virtual model: requests that satisfy `when` go to `model`.
#[derive(Debug, Clone)]
pub struct Tier {
    /// Index of the model that serves the tier (a model with targets).
    pub model: usize,
    pub model_name: String,
    pub when: TierRule,
    /// The rule as written, for the ledger's `route` and `x-tollgate-route`.
    pub label: String,
}

/// Every condition given must hold; an empty rule matches everything.
#[derive(Debug, Clone, Default)]
pub struct TierRule {
    pub max_prompt_tokens: Option<u64>,
    pub min_prompt_tokens: Option<u64>,
    pub tools: Option<bool>,
    pub reasoning_effort: Vec<String>,
    pub workflow: Vec<Glob>,
    /// Lower-cased.
    pub keywords: Vec<String>,
    pub regex: Option<regex::Regex>,
}

impl TierRule {
    /// Whether the rule reads the last user message (only then is it extracted).
    pub fn needs_text(&self) -> bool {
        !self.keywords.is_empty() || self.regex.is_some()
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.max_prompt_tokens {
            parts.push(format!("prompt<={n}"));
        }
        if let Some(n) = self.min_prompt_tokens {
            parts.push(format!("prompt>={n}"));
        }
        if let Some(t) = self.tools {
            parts.push(format!("tools={t}"));
        }
        if !self.reasoning_effort.is_empty() {
            parts.push(format!("effort={}", self.reasoning_effort.join("|")));
        }
        if !self.workflow.is_empty() {
            let w: Vec<&str> = self.workflow.iter().map(Glob::as_str).collect();
            parts.push(format!("workflow={}", w.join("|")));
        }
        if !self.keywords.is_empty() {
            parts.push(format!("keywords={}", self.keywords.join("|")));
        }
        if let Some(r) = &self.regex {
            parts.push(format!("regex={}", r.as_str()));
        }
        if parts.is_empty() {
            "default".into()
        } else {
            parts.join(",")
        }
    }
}

/// Target conditions as validated (the rest of a target is built by `validate.rs`).
pub(super) struct TargetConditions {
    pub priority: u8,
    pub context_window: Option<u64>,
    pub serves: Serves,
    pub hours: Option<Hours>,
    /// `None`: the routing default.
    pub max_in_flight: Option<u32>,
}

/// How a replica is chosen among a model's available targets (`phase/route/balance.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    Weighted,
    RoundRobin,
    LeastLoad,
    /// Prefix affinity, queue and KV use in one score.
    Prefix,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::Weighted => "weighted",
            Balance::RoundRobin => "round_robin",
            Balance::LeastLoad => "least_load",
            Balance::Prefix => "prefix",
        }
    }
}

/// The `prefix` balancer's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixSettings {
    pub block_bytes: usize,
    pub max_blocks: usize,
    pub ttl: Duration,
    pub weight_prefix: f64,
    pub weight_queue: f64,
    pub weight_kv: f64,
    pub imbalance: f64,
    /// Scraped load older than this is ignored (three scrape intervals).
    pub stale_after: Duration,
}

impl Default for PrefixSettings {
    fn default() -> Self {
        PrefixSettings {
            block_bytes: 256,
            max_blocks: 200_000,
            ttl: Duration::from_secs(600),
            weight_prefix: 1.0,
            weight_queue: 0.05,
            weight_kv: 0.2,
            imbalance: 8.0,
            stale_after: Duration::from_secs(3),
        }
    }
}

/// A request's class (`x-tollgate-priority`, or its key's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PriorityClass {
    Interactive,
    Batch,
}

/// When batch-class requests (`x-tollgate-priority: batch`) may run.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPolicy {
    pub max_queue: f64,
    pub hours: Option<Hours>,
    pub max_wait: Duration,
    /// Batch runs only while some GPU of the node is below this utilisation (percent).
    pub max_gpu_util: Option<u32>,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            max_queue: 4.0,
            hours: None,
            max_wait: Duration::from_secs(60),
            max_gpu_util: None,
        }
    }
}

/// A provider's active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Failed checks in a row that take the provider out of routing.
    pub failures: u32,
}

/// `routing:` resolved against the transport defaults.
#[derive(Debug, Clone)]
pub struct RoutingDefaults {
    pub retry: RetryPolicy,
    pub breaker: BreakerPolicy,
    pub timeouts: Timeouts,
    pub retry_budget: RetryBudget,
    pub prefix: PrefixSettings,
    pub batch: BatchPolicy,
    pub queue: QueuePolicy,
}

/// Who a fair queue shares among.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantBy {
    /// The request's team; a request without one counts as its key (or its client address).
    Team,
    Key,
}

/// `routing.queue`: how many requests a replica gets at once, and the fair queue past that.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuePolicy {
    /// Per replica; 0 turns the queue off (targets may still set their own).
    pub max_in_flight: u32,
    pub max_waiting: u32,
    pub max_waiting_per_tenant: u32,
    pub max_wait: Duration,
    pub tenant: TenantBy,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy {
            max_in_flight: 0,
            max_waiting: 1024,
            max_waiting_per_tenant: 256,
            max_wait: Duration::from_secs(30),
            tenant: TenantBy::Team,
        }
    }
}

impl Validator<'_> {
    pub(super) fn health_check(
        &mut self,
        path: &str,
        h: &HealthCheckFile,
        tls: bool,
    ) -> Option<HealthCheck> {
        if tls {
            self.problem(
                path,
                "active health checks are plain http (cloud APIs rely on the passive breaker)",
            );
            return None;
        }
        let out = HealthCheck {
            path: h.path.clone().unwrap_or_else(|| "/health".into()),
            interval: Duration::from_millis(h.interval_ms.unwrap_or(5_000)),
            timeout: Duration::from_millis(h.timeout_ms.unwrap_or(1_000)),
            failures: h.failures.unwrap_or(2),
        };
        if !out.path.starts_with('/') || out.path.chars().any(|c| c.is_control() || c == ' ') {
            self.problem(format!("{path}.path"), "must be a path starting with `/`");
        }
        if !(100..=3_600_000).contains(&out.interval.as_millis()) {
            self.problem(
                format!("{path}.interval_ms"),
                "must be between 100 and 3600000",
            );
        }
        if out.timeout.is_zero() || out.timeout > out.interval {
            self.problem(
                format!("{path}.timeout_ms"),
                "must be at least 1 and at most interval_ms",
            );
        }
        if out.failures == 0 {
            self.problem(format!("{path}.failures"), "must be at least 1");
        }
        Some(out)
    }

    pub(super) fn routing_defaults(&mut self, f: &RoutingFile, base: Timeouts) -> RoutingDefaults {
        let budget = f.retry_budget.clone().unwrap_or_default();
        let d = RetryBudget::default();
        let retry_budget = RetryBudget {
            ratio: budget.ratio.unwrap_or(d.ratio),
            min_per_second: budget.min_per_second.unwrap_or(d.min_per_second),
        };
        if !(0.0..=10.0).contains(&retry_budget.ratio) {
            self.problem(
                "routing.retry_budget.ratio",
                "must be between 0 and 10 (retries per request)",
            );
        }
        let prefix = self.prefix_settings(f.prefix.as_ref());
        let batch = self.batch_policy(f.batch.as_ref());
        let queue = self.queue_policy(f.queue.as_ref());
        RoutingDefaults {
            prefix,
            batch,
            queue,
            retry: self.retry("routing.retry", f.retry.as_ref(), &RetryPolicy::default()),
            breaker: self.breaker(
                "routing.breaker",
                f.breaker.as_ref(),
                BreakerPolicy::default(),
            ),
            timeouts: self.timeouts("routing.timeouts", f.timeouts.as_ref(), base),
            retry_budget,
        }
    }

    fn prefix_settings(&mut self, f: Option<&PrefixFile>) -> PrefixSettings {
        let d = PrefixSettings::default();
        let Some(f) = f else {
            return d;
        };
        let out = PrefixSettings {
            block_bytes: f.block_bytes.unwrap_or(d.block_bytes),
            max_blocks: f.max_blocks.unwrap_or(d.max_blocks),
            ttl: f.ttl_s.map_or(d.ttl, Duration::from_secs),
            weight_prefix: f.weight_prefix.unwrap_or(d.weight_prefix),
            weight_queue: f.weight_queue.unwrap_or(d.weight_queue),
            weight_kv: f.weight_kv.unwrap_or(d.weight_kv),
            imbalance: f.imbalance.unwrap_or(d.imbalance),
            stale_after: d.stale_after,
        };
        if !(16..=65_536).contains(&out.block_bytes) {
            self.problem("routing.prefix.block_bytes", "must be between 16 and 65536");
        }
        if !(1_000..=50_000_000).contains(&out.max_blocks) {
            self.problem(
                "routing.prefix.max_blocks",
                "must be between 1000 and 50000000",
            );
        }
        for (field, v) in [
            ("weight_prefix", out.weight_prefix),
            ("weight_queue", out.weight_queue),
            ("weight_kv", out.weight_kv),
            ("imbalance", out.imbalance),
        ] {
            if !(0.0..=1e6).contains(&v) {
                self.problem(
                    format!("routing.prefix.{field}"),
                    "must be between 0 and 1000000",
                );
            }
        }
        out
    }

    fn batch_policy(&mut self, f: Option<&BatchFile>) -> BatchPolicy {
        let d = BatchPolicy::default();
        let Some(f) = f else {
            return d;
        };
        let hours = f.hours.as_deref().and_then(|h| {
            let parsed = Hours::parse(h);
            if parsed.is_none() {
                self.problem(
                    "routing.batch.hours",
                    format!("`{h}` is not a UTC time range like \"01:00-06:00\""),
                );
            }
            parsed
        });
        let out = BatchPolicy {
            max_queue: f.max_queue.unwrap_or(d.max_queue),
            hours,
            max_wait: f.max_wait_ms.map_or(d.max_wait, Duration::from_millis),
            max_gpu_util: f.max_gpu_util,
        };
        if out.max_gpu_util.is_some_and(|u| u == 0 || u > 100) {
            self.problem(
                "routing.batch.max_gpu_util",
                "must be between 1 and 100 (percent)",
            );
        }
        if !(0.0..=1e6).contains(&out.max_queue) {
            self.problem("routing.batch.max_queue", "must be between 0 and 1000000");
        }
        if out.max_wait > Duration::from_secs(3600) {
            self.problem("routing.batch.max_wait_ms", "must be at most 3600000");
        }
        out
    }

    fn queue_policy(&mut self, f: Option<&QueueFile>) -> QueuePolicy {
        let d = QueuePolicy::default();
        let Some(f) = f else {
            return d;
        };
        let tenant = match f.tenant.as_deref() {
            None | Some("team") => TenantBy::Team,
            Some("key") => TenantBy::Key,
            Some(other) => {
                self.problem(
                    "routing.queue.tenant",
                    format!("`{other}` must be `team` or `key`"),
                );
                TenantBy::Team
            }
        };
        let out = QueuePolicy {
            max_in_flight: f.max_in_flight.unwrap_or(d.max_in_flight),
            max_waiting: f.max_waiting.unwrap_or(d.max_waiting),
            max_waiting_per_tenant: f.max_waiting_per_tenant.unwrap_or(d.max_waiting_per_tenant),
            max_wait: f.max_wait_ms.map_or(d.max_wait, Duration::from_millis),
            tenant,
        };
        if out.max_waiting > 1_000_000 {
            self.problem("routing.queue.max_waiting", "must be at most 1000000");
        }
        if out.max_waiting_per_tenant == 0 || out.max_waiting_per_tenant > out.max_waiting.max(1) {
            self.problem(
                "routing.queue.max_waiting_per_tenant",
                "must be between 1 and max_waiting",
            );
        }
        if out.max_wait > Duration::from_secs(3600) {
            self.problem("routing.queue.max_wait_ms", "must be at most 3600000");
        }
        out
    }

    /// `balance:` of a model; `None` when not given (decided by the model's shape).
    pub(super) fn balance(&mut self, path: &str, v: Option<&str>) -> Option<Balance> {
        match v? {
            "weighted" => Some(Balance::Weighted),
            "round_robin" => Some(Balance::RoundRobin),
            "least_load" => Some(Balance::LeastLoad),
            "prefix" => Some(Balance::Prefix),
            other => {
                self.problem(
                    format!("{path}.balance"),
                    format!("`{other}` is not one of weighted, round_robin, least_load, prefix"),
                );
                None
            }
        }
    }

    pub(super) fn retry(
        &mut self,
        path: &str,
        f: Option<&RetryFile>,
        base: &RetryPolicy,
    ) -> RetryPolicy {
        let Some(f) = f else {
            return base.clone();
        };
        let mut out = RetryPolicy {
            attempts: f.attempts.unwrap_or(base.attempts),
            ..base.clone()
        };
        if out.attempts > 16 {
            self.problem(format!("{path}.attempts"), "must be at most 16");
        }
        if let Some(on) = &f.on {
            out.on_connect = false;
            out.statuses = [0; 4];
            for (i, v) in on.iter().enumerate() {
                let text = match v {
                    serde_yaml_ng::Value::String(s) => s.trim().to_ascii_lowercase(),
                    serde_yaml_ng::Value::Number(n) => n.to_string(),
                    _ => String::new(),
                };
                match text.as_str() {
                    "connect" => out.on_connect = true,
                    "5xx" => (500..600).for_each(|s| out.add_status(s)),
                    "4xx" => (400..500).for_each(|s| out.add_status(s)),
                    t => match t.parse::<u16>() {
                        Ok(s) if (400..600).contains(&s) => out.add_status(s),
                        _ => self.problem(
                            format!("{path}.on[{i}]"),
                            "must be `connect`, `5xx`, `4xx` or a status between 400 and 599",
                        ),
                    },
                }
            }
        }
        out
    }

    pub(super) fn breaker(
        &mut self,
        path: &str,
        f: Option<&BreakerFile>,
        base: BreakerPolicy,
    ) -> BreakerPolicy {
        let Some(f) = f else {
            return base;
        };
        let out = BreakerPolicy {
            enabled: f.enabled.unwrap_or(true),
            explicit: true,
            failures: f.failures.unwrap_or(base.failures),
            window: f.window_ms.map_or(base.window, Duration::from_millis),
            cooldown: f.cooldown_ms.map_or(base.cooldown, Duration::from_millis),
        };
        if out.failures == 0 {
            self.problem(format!("{path}.failures"), "must be at least 1");
        }
        for (field, d) in [("window_ms", out.window), ("cooldown_ms", out.cooldown)] {
            if d.is_zero() || d > Duration::from_secs(24 * 3600) {
                self.problem(format!("{path}.{field}"), "must be between 1 and 86400000");
            }
        }
        out
    }

    pub(super) fn timeouts(
        &mut self,
        path: &str,
        f: Option<&TimeoutsFile>,
        base: Timeouts,
    ) -> Timeouts {
        let Some(f) = f else {
            return base;
        };
        for (field, v) in [
            ("connect_ms", f.connect_ms),
            ("first_token_ms", f.first_token_ms),
            ("request_ms", f.request_ms),
            ("idle_ms", f.idle_ms),
        ] {
            if v == Some(0) {
                self.problem(format!("{path}.{field}"), "must be at least 1");
            }
        }
        Timeouts {
            connect: f.connect_ms.map_or(base.connect, Duration::from_millis),
            first_token: f
                .first_token_ms
                .map_or(base.first_token, Duration::from_millis),
            request: f.request_ms.map(Duration::from_millis).or(base.request),
            idle: f.idle_ms.map_or(base.idle, Duration::from_millis),
        }
    }

    pub(super) fn target_conditions(&mut self, path: &str, t: &TargetFile) -> TargetConditions {
        let mut serves = 0u8;
        for (i, s) in t.serves.iter().flatten().enumerate() {
            serves |= match s.as_str() {
                "chat" => RequestKind::Chat as u8,
                "embeddings" => RequestKind::Embeddings as u8,
                "tools" => RequestKind::Tools as u8,
                "images" => RequestKind::Images as u8,
                _ => {
                    self.problem(
                        format!("{path}.serves[{i}]"),
                        "must be `chat`, `embeddings`, `tools` or `images`",
                    );
                    0
                }
            };
        }
        let hours = t.hours.as_deref().and_then(|h| {
            let parsed = Hours::parse(h);
            if parsed.is_none() {
                self.problem(
                    format!("{path}.hours"),
                    format!("`{h}` is not a UTC time range like \"22:00-06:00\""),
                );
            }
            parsed
        });
        if t.context_window == Some(0) {
            self.problem(format!("{path}.context_window"), "must be at least 1");
        }
        TargetConditions {
            priority: t.priority.unwrap_or(0),
            context_window: t.context_window,
            serves: if t.serves.is_some() {
                Serves(serves)
            } else {
                Serves::ALL
            },
            hours,
            max_in_flight: t.max_in_flight,
        }
    }

    pub(super) fn tier_rules(&mut self, path: &str, tiers: &[TierFile]) -> Vec<(String, TierRule)> {
        let mut out = Vec::with_capacity(tiers.len());
        for (i, t) in tiers.iter().enumerate() {
            let w = &t.when;
            let regex = w.regex.as_deref().and_then(|r| {
                match regex::RegexBuilder::new(r)
                    .size_limit(1 << 20)
                    .case_insensitive(true)
                    .build()
                {
                    Ok(re) => Some(re),
                    Err(e) => {
                        self.problem(format!("{path}[{i}].when.regex"), e.to_string());
                        None
                    }
                }
            });
            out.push((
                t.model.clone(),
                TierRule {
                    max_prompt_tokens: w.max_prompt_tokens,
                    min_prompt_tokens: w.min_prompt_tokens,
                    tools: w.tools,
                    reasoning_effort: w.reasoning_effort.clone().unwrap_or_default(),
                    workflow: w.workflow.iter().flatten().map(|g| Glob::new(g)).collect(),
                    keywords: w
                        .keywords
                        .iter()
                        .flatten()
                        .map(|k| k.to_lowercase())
                        .collect(),
                    regex,
                },
            ));
        }
        out
    }
}

/// A model's names still to resolve: its index, field path, fallback names, tier rules.
pub(super) struct Pending {
    pub model: usize,
    pub path: String,
    pub fallback: Vec<String>,
    pub tiers: Vec<(String, TierRule)>,
}

/// Resolves fallback and tier model names once every model is known.
pub(super) fn resolve(v: &mut Validator<'_>, models: &mut [super::Model], pending: Vec<Pending>) {
    let index = |name: &str, models: &[super::Model]| models.iter().position(|m| m.name == name);
    for Pending {
        model: m,
        path,
        fallback,
        tiers,
    } in pending
    {
        for (i, name) in fallback.iter().enumerate() {
            match index(name, models) {
                Some(f) if f == m => v.problem(
                    format!("{path}.fallback[{i}]"),
                    "a model cannot fall back to itself",
                ),
                Some(f) => models[m].fallback.push(f),
                None => v.problem(
                    format!("{path}.fallback[{i}]"),
                    format!("unknown model `{name}`"),
                ),
            }
        }
        let b = &mut models[m].breaker;
        if !b.explicit {
            b.enabled = models[m].targets.len() > 1 || !models[m].fallback.is_empty();
        }
        for (i, (name, when)) in tiers.into_iter().enumerate() {
            match index(&name, models) {
                Some(t) if models[t].targets.is_empty() => v.problem(
                    format!("{path}.tiers[{i}].model"),
                    format!("`{name}` has tiers itself; a tier must name a model with targets"),
                ),
                Some(t) => {
                    let label = format!("tier {i} ({name}: {})", when.describe());
                    models[m].tiers.push(Tier {
                        model: t,
                        model_name: name,
                        when,
                        label,
                    });
                }
                None => v.problem(
                    format!("{path}.tiers[{i}].model"),
                    format!("unknown model `{name}`"),
                ),
            }
        }
    }
}

/// Whether a provider host is outside the cluster: not loopback, private, link-local or a
/// cluster-internal name.
pub fn host_is_public(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = h.parse::<std::net::IpAddr>() {
        return match ip {
            std::net::IpAddr::V4(v4) => {
                !(v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified())
            }
            std::net::IpAddr::V6(v6) => {
                let seg = v6.segments()[0];
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || (seg & 0xfe00) == 0xfc00
                    || (seg & 0xffc0) == 0xfe80)
            }
        };
    }
    let h = h.to_ascii_lowercase();
    !(h == "localhost"
        || !h.contains('.')
        || [
            ".local",
            ".internal",
            ".svc",
            ".cluster.local",
            ".localhost",
        ]
        .iter()
        .any(|s| h.ends_with(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_wrap_past_midnight() {
        let night = Hours::parse("22:00-06:00").unwrap_or_else(|| panic!("parses"));
        assert!(night.contains(23 * 60) && night.contains(0) && night.contains(5 * 60 + 59));
        assert!(!night.contains(6 * 60) && !night.contains(12 * 60));
        let day = Hours::parse("09:30-17:00").unwrap_or_else(|| panic!("parses"));
        assert!(day.contains(9 * 60 + 30) && !day.contains(17 * 60) && !day.contains(0));
        assert!(Hours::parse("25:00-01:00").is_none());
        assert!(Hours::parse("10:00-10:00").is_none());
        assert!(Hours::parse("10-11").is_none());
    }

    fn load(yaml: &str) -> Result<crate::config::Config, String> {
        crate::config::Config::from_yaml(yaml, &|_| None).map_err(|e| e.to_string())
    }

    const PROVIDERS: &str = "providers:
  - {name: a, kind: openai, base_url: http://127.0.0.1:8001}
  - {name: cloud, kind: openai, base_url: https://api.openai.com}
";

    #[test]
    fn routing_settings_are_read_with_defaults_and_overrides() {
        let c = load(&format!(
            "{PROVIDERS}routing:
  retry: {{attempts: 3, on: [connect, \"429\", 503]}}
  timeouts: {{connect_ms: 250}}
models:
  - name: smart
    targets:
      - {{provider: a, model: q, weight: 5, context_window: 32768, serves: [chat, tools], hours: \"22:00-06:00\"}}
      - {{provider: cloud, model: g, priority: 1}}
    fallback: [small]
    timeouts: {{first_token_ms: 900, request_ms: 60000}}
  - name: small
    provider: a
  - name: auto
    tiers:
      - {{model: small, when: {{max_prompt_tokens: 2000, tools: false, regex: \"^fix\"}}}}
      - {{model: smart}}
"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let smart = &c.models[0];
        assert_eq!(smart.retry.attempts, 3);
        assert!(
            smart.retry.on_connect
                && smart.retry.retries_status(429)
                && smart.retry.retries_status(503)
        );
        assert!(!smart.retry.retries_status(500));
        assert_eq!(smart.timeouts.connect, Duration::from_millis(250));
        assert_eq!(smart.timeouts.first_token, Duration::from_millis(900));
        assert_eq!(smart.timeouts.request, Some(Duration::from_secs(60)));
        assert_eq!(smart.fallback, vec![1]);
        assert!(smart.breaker.enabled, "several targets: breaker on");
        assert!(!c.models[1].breaker.enabled, "one target, no fallback: off");
        let t = &smart.targets[0];
        assert_eq!(
            (t.weight, t.priority, t.context_window),
            (5, 0, Some(32768))
        );
        assert!(
            t.serves.contains(RequestKind::Tools) && !t.serves.contains(RequestKind::Embeddings)
        );
        assert!(!c.providers[0].public && c.providers[1].public);
        let auto = &c.models[2];
        assert!(auto.targets.is_empty());
        assert_eq!(auto.tiers.len(), 2);
        assert_eq!(auto.tiers[0].model, 1);
        assert!(
            auto.tiers[0].label.contains("prompt<=2000") && auto.tiers[1].label.contains("default")
        );
    }

    #[test]
    fn routing_problems_are_reported_with_their_paths() {
        let e = load(&format!(
            "{PROVIDERS}routing: {{retry_budget: {{ratio: -1}}, batch: {{hours: nope, max_queue: -1}}, prefix: {{block_bytes: 1}}}}
models:
  - name: m
    targets:
      - {{provider: a, serves: [chat, video], hours: \"9-5\", context_window: 0}}
    retry: {{on: [connect, teapot, 302]}}
    breaker: {{failures: 0, cooldown_ms: 0}}
    timeouts: {{idle_ms: 0}}
    fallback: [m, ghost]
  - name: t
    tiers:
      - {{model: nowhere}}
      - {{model: m, when: {{regex: \"(\"}}}}
  - name: both
    provider: a
    tiers: [{{model: m}}]
"
        ))
        .err()
        .unwrap_or_default();
        for needle in [
            "routing.retry_budget.ratio",
            "routing.batch.hours",
            "routing.batch.max_queue",
            "routing.prefix.block_bytes",
            "models[0].targets[0].serves[1]",
            "models[0].targets[0].hours",
            "models[0].targets[0].context_window",
            "models[0].retry.on[1]",
            "models[0].retry.on[2]",
            "models[0].breaker.failures",
            "models[0].breaker.cooldown_ms",
            "models[0].timeouts.idle_ms",
            "cannot fall back to itself",
            "unknown model `ghost`",
            "unknown model `nowhere`",
            "models[1].tiers[1].when.regex",
            "models[2].tiers: a model with tiers",
        ] {
            assert!(e.contains(needle), "missing {needle:?} in:\n{e}");
        }
    }

    #[test]
    fn provider_routing_options_are_checked() {
        let c = load(
            "providers:\n  - {name: a, kind: openai, base_url: http://127.0.0.1:8001, responses_api: chat, health_check: {interval_ms: 200, timeout_ms: 50}}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let p = &c.providers[0];
        assert!(p.responses_via_chat);
        assert_eq!(
            p.health_check
                .as_ref()
                .map(|h| (h.path.as_str(), h.failures)),
            Some(("/health", 2))
        );
        let e = load(
            "providers:\n  - {name: a, kind: anthropic, base_url: http://127.0.0.1:8001, responses_api: chat}\n  - {name: b, kind: openai, base_url: http://127.0.0.1:8002, responses_api: sometimes, health_check: {path: nope, interval_ms: 10, failures: 0}}\n  - {name: c, kind: openai, base_url: https://api.openai.com, health_check: {}}\n",
        )
        .err()
        .unwrap_or_default();
        for needle in [
            "providers[0].responses_api",
            "providers[1].responses_api",
            "providers[1].health_check.path",
            "providers[1].health_check.interval_ms",
            "providers[1].health_check.failures",
            "providers[2].health_check: active health checks are plain http",
        ] {
            assert!(e.contains(needle), "missing {needle:?} in:\n{e}");
        }
    }

    #[test]
    fn public_hosts() {
        for h in ["api.openai.com", "8.8.8.8", "[2001:db8::1]"] {
            assert!(host_is_public(h), "{h}");
        }
        for h in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "localhost",
            "vllm",
            "vllm.inference.svc.cluster.local",
            "[::1]",
            "[fd00::1]",
        ] {
            assert!(!host_is_public(h), "{h}");
        }
    }
}
