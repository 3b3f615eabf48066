//! Validation of the governance sections: `auth`, `require_headers`, `prices`, rate limits
//! (`limits:` as a list, or `rate_limits:`), `budgets`, `model_access`, `model_tiers` and
//! `workload_classes`, `loop_guard`, `alerts`. Produces the immutable `Policy` and the price
//! catalog; the live counters are bound later (`Governor::bind`).

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use super::validate::{Model, Validator};
use super::Glob;
use crate::governance::budget::MAX_AMOUNT;
use crate::governance::policy::{
    AccessRule, AuthMode, BudgetRule, IdentityField, LoopGuard, OnBreach, Policy, Rate, RateKind,
    RateLimitRule, Scope, WorkloadClass,
};
use crate::governance::window::Window;
use crate::metering::prices::{Price, PriceCatalog};

/// The governance part of the file, gathered by `validate.rs`.
#[derive(Debug, Default)]
pub struct GovernanceFile {
    pub auth: Option<serde_yaml_ng::Value>,
    pub require_headers: Vec<String>,
    pub prices: HashMap<String, serde_yaml_ng::Value>,
    /// (path prefix, item) of every rate limit rule.
    pub rate_limits: Vec<(String, serde_yaml_ng::Value)>,
    pub budgets: Vec<serde_yaml_ng::Value>,
    pub model_access: Vec<serde_yaml_ng::Value>,
    pub model_tiers: HashMap<String, Vec<String>>,
    pub workload_classes: HashMap<String, serde_yaml_ng::Value>,
    pub loop_guard: Option<serde_yaml_ng::Value>,
    pub alerts: Option<serde_yaml_ng::Value>,
    pub default_max_output_tokens: Option<u64>,
    pub unmetered_post_paths: Option<Vec<String>>,
    pub egress: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EgressFile {
    /// `allow` (default) or `deny`: whether public providers serve callers no rule names.
    public: Option<String>,
    #[serde(default)]
    allow: Vec<ScopeFile>,
    #[serde(default)]
    deny: Vec<ScopeFile>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    /// `keys` (default) or `open`.
    mode: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct ScopeFile {
    pub(super) team: Option<String>,
    pub(super) project: Option<String>,
    pub(super) user: Option<String>,
    pub(super) session: Option<String>,
    pub(super) workflow: Option<String>,
    pub(super) cost_center: Option<String>,
    pub(super) key: Option<String>,
    pub(super) model: Option<String>,
    pub(super) cgroup: Option<String>,
    pub(super) container: Option<String>,
}

impl ScopeFile {
    pub(super) fn into_scope(self) -> Scope {
        Scope {
            team: self.team,
            project: self.project,
            user: self.user,
            session: self.session,
            workflow: self.workflow,
            cost_center: self.cost_center,
            key: self.key,
            model: self.model.as_deref().map(Glob::new),
            cgroup: self.cgroup.as_deref().map(Glob::new),
            container: self.container,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitFile {
    name: Option<String>,
    #[serde(default)]
    scope: ScopeFile,
    requests_per_second: Option<u64>,
    requests_per_minute: Option<u64>,
    requests_per_hour: Option<u64>,
    tokens_per_second: Option<u64>,
    tokens_per_minute: Option<u64>,
    tokens_per_hour: Option<u64>,
    input_tokens_per_minute: Option<u64>,
    input_tokens_per_hour: Option<u64>,
    output_tokens_per_minute: Option<u64>,
    output_tokens_per_hour: Option<u64>,
    /// Counted across every agent of the cluster (default true when `cluster` is set).
    shared: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetFile {
    name: Option<String>,
    #[serde(default)]
    scope: ScopeFile,
    tokens: Option<u64>,
    usd: Option<f64>,
    window: Option<String>,
    #[serde(default)]
    alert_at: Vec<f64>,
    /// `block` (default), `fallback` or `queue`.
    on_breach: Option<String>,
    fallback_model: Option<String>,
    queue_timeout_ms: Option<u64>,
    /// Counted across every agent of the cluster (default true when `cluster` is set).
    shared: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessFile {
    #[serde(default)]
    scope: ScopeFile,
    models: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassFile {
    tiers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoopGuardFile {
    identical_requests: Option<u32>,
    window_s: Option<u64>,
    token_rate_multiple: Option<f64>,
    baseline_window_s: Option<u64>,
    min_tokens: Option<u64>,
    cooldown_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertsFile {
    webhook: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    input: f64,
    cached_input: Option<f64>,
    cache_write: Option<f64>,
    output: Option<f64>,
}

impl Validator<'_> {
    pub(super) fn governance(
        &mut self,
        f: GovernanceFile,
        models: &[Model],
    ) -> (Policy, PriceCatalog) {
        let mut p = Policy::default();
        if let Some(v) = f.auth {
            if let Some(a) = self.item::<AuthFile>("auth", v) {
                p.auth = match a.mode.as_deref().unwrap_or("keys") {
                    "keys" => AuthMode::Keys,
                    "open" => AuthMode::Open,
                    other => {
                        self.problem("auth.mode", format!("`{other}` is not one of keys, open"));
                        AuthMode::Keys
                    }
                };
            }
        }
        for (i, h) in f.require_headers.iter().enumerate() {
            match IdentityField::parse(h) {
                Some(field) => p.require_headers.push(field),
                None => self.problem(
                    format!("require_headers[{i}]"),
                    format!(
                        "`{h}` is not one of team, project, user, session, workflow, cost_center"
                    ),
                ),
            }
        }
        let prices = self.prices(f.prices);
        let model_named = |n: &str| models.iter().any(|m| m.name == n);

        let mut names = std::collections::HashSet::new();
        for (path, v) in f.rate_limits {
            let Some(r) = self.item::<RateLimitFile>(&path, v) else {
                continue;
            };
            let scope = r.scope.clone().into_scope();
            let spec: [(Option<u64>, RateKind, u64); 10] = [
                (r.requests_per_second, RateKind::Requests, 1),
                (r.requests_per_minute, RateKind::Requests, 60),
                (r.requests_per_hour, RateKind::Requests, 3600),
                (r.tokens_per_second, RateKind::Tokens, 1),
                (r.tokens_per_minute, RateKind::Tokens, 60),
                (r.tokens_per_hour, RateKind::Tokens, 3600),
                (r.input_tokens_per_minute, RateKind::InputTokens, 60),
                (r.input_tokens_per_hour, RateKind::InputTokens, 3600),
                (r.output_tokens_per_minute, RateKind::OutputTokens, 60),
                (r.output_tokens_per_hour, RateKind::OutputTokens, 3600),
            ];
            let mut rates = Vec::new();
            for (amount, kind, secs) in spec {
                match amount {
                    Some(0) => self.problem(&path, "a rate must be at least 1"),
                    Some(amount) => rates.push(Rate {
                        kind,
                        amount,
                        period: Duration::from_secs(secs),
                    }),
                    None => {}
                }
            }
            if rates.is_empty() {
                self.problem(
                    &path,
                    "sets no rate (requests_per_minute, tokens_per_minute, ...)",
                );
            }
            let name = r.name.unwrap_or_else(|| scope.label());
            if !names.insert(format!("rate|{name}")) {
                self.problem(
                    &path,
                    format!("a second rate limit named `{name}` (give each a distinct `name`)"),
                );
            }
            p.rate_limits.push(RateLimitRule {
                name,
                scope,
                rates,
                shared: r.shared.unwrap_or(true),
            });
        }

        for (i, v) in f.budgets.into_iter().enumerate() {
            let path = format!("budgets[{i}]");
            let Some(b) = self.item::<BudgetFile>(&path, v) else {
                continue;
            };
            let window = match b.window.as_deref() {
                None => Window::Month,
                Some(w) => Window::parse(w).unwrap_or_else(|| {
                    self.problem(
                        format!("{path}.window"),
                        format!("`{w}` is not one of hour, day, week, month"),
                    );
                    Window::Month
                }),
            };
            if b.tokens.is_none() && b.usd.is_none() {
                self.problem(&path, "sets neither `tokens` nor `usd`");
            }
            if b.tokens.is_some_and(|t| t > MAX_AMOUNT) {
                self.problem(
                    format!("{path}.tokens"),
                    format!("must be at most {MAX_AMOUNT}"),
                );
            }
            let micro_usd = match b.usd {
                Some(u) if !(u.is_finite() && u >= 0.0 && u * 1e6 <= MAX_AMOUNT as f64) => {
                    self.problem(format!("{path}.usd"), "must be between 0 and 1000000");
                    None
                }
                Some(u) => Some((u * 1e6).round() as u64),
                None => None,
            };
            let mut alert_at = b.alert_at.clone();
            if alert_at
                .iter()
                .any(|a| !(a.is_finite() && *a > 0.0 && *a <= 10.0))
            {
                self.problem(
                    format!("{path}.alert_at"),
                    "fractions must be above 0 (1.0 is the whole budget)",
                );
            }
            alert_at.sort_by(f64::total_cmp);
            alert_at.dedup();
            let on_breach = match b.on_breach.as_deref().unwrap_or("block") {
                "block" => OnBreach::Block,
                "fallback" => match b.fallback_model {
                    Some(m) if model_named(&m) => OnBreach::Fallback { model: m },
                    Some(m) => {
                        self.problem(
                            format!("{path}.fallback_model"),
                            format!("`{m}` is not a configured model"),
                        );
                        OnBreach::Block
                    }
                    None => {
                        self.problem(
                            format!("{path}.fallback_model"),
                            "on_breach: fallback needs a fallback_model",
                        );
                        OnBreach::Block
                    }
                },
                "queue" => OnBreach::Queue {
                    timeout: Duration::from_millis(
                        b.queue_timeout_ms.unwrap_or(30_000).min(600_000),
                    ),
                },
                other => {
                    self.problem(
                        format!("{path}.on_breach"),
                        format!("`{other}` is not one of block, fallback, queue"),
                    );
                    OnBreach::Block
                }
            };
            let scope = b.scope.into_scope();
            let name = b
                .name
                .unwrap_or_else(|| format!("{}/{}", scope.label(), window.as_str()));
            if !names.insert(format!("budget|{name}")) {
                self.problem(
                    &path,
                    format!("a second budget named `{name}` (give each a distinct `name`)"),
                );
            }
            p.budgets.push(BudgetRule {
                name,
                scope,
                tokens: b.tokens,
                micro_usd,
                window,
                alert_at,
                on_breach,
                shared: b.shared.unwrap_or(true),
            });
        }

        for (i, v) in f.model_access.into_iter().enumerate() {
            if let Some(a) = self.item::<AccessFile>(&format!("model_access[{i}]"), v) {
                p.model_access.push(AccessRule {
                    scope: a.scope.into_scope(),
                    models: a.models.iter().map(|m| Glob::new(m)).collect(),
                });
            }
        }
        let mut classes: Vec<_> = f.workload_classes.into_iter().collect();
        classes.sort_by(|a, b| a.0.cmp(&b.0));
        for (class, v) in classes {
            let path = format!("workload_classes.{class}");
            // `{tiers: [...]}` or just the list of tiers.
            let tiers = match v {
                serde_yaml_ng::Value::Sequence(_) => self.item::<Vec<String>>(&path, v),
                other => self.item::<ClassFile>(&path, other).map(|c| c.tiers),
            };
            let Some(tiers) = tiers else { continue };
            let mut models = Vec::new();
            for t in &tiers {
                match f.model_tiers.get(t) {
                    Some(globs) => models.extend(globs.iter().map(|g| Glob::new(g))),
                    None => self.problem(&path, format!("`{t}` is not a tier of model_tiers")),
                }
            }
            p.workload_classes.push(WorkloadClass {
                class: Glob::new(&class),
                tiers,
                models,
            });
        }
        if let Some(v) = f.loop_guard {
            if let Some(g) = self.item::<LoopGuardFile>("loop_guard", v) {
                p.loop_guard = Some(LoopGuard {
                    identical_requests: g.identical_requests.unwrap_or(20),
                    window: Duration::from_secs(g.window_s.unwrap_or(300).max(1)),
                    token_rate_multiple: g.token_rate_multiple.unwrap_or(10.0),
                    baseline_window: Duration::from_secs(
                        g.baseline_window_s.unwrap_or(3600).max(1),
                    ),
                    min_tokens: g.min_tokens.unwrap_or(10_000),
                    cooldown: Duration::from_secs(g.cooldown_s.unwrap_or(300)),
                });
            }
        }
        if let Some(v) = f.alerts {
            if let Some(a) = self.item::<AlertsFile>("alerts", v) {
                if let Some(url) = &a.webhook {
                    if url.starts_with("https://") {
                        // The control plane's HTTP client is built without TLS.
                        self.problem("alerts.webhook", "https webhooks are not supported yet: use an http:// URL (e.g. a local relay)");
                    } else if !url.starts_with("http://") {
                        self.problem("alerts.webhook", "must be an http:// URL");
                    }
                }
                p.alert_webhook = a.webhook;
            }
        }
        if let Some(n) = f.default_max_output_tokens {
            p.default_max_output_tokens = n.max(1);
        }
        if let Some(v) = f.egress {
            if let Some(e) = self.item::<EgressFile>("egress", v) {
                p.egress.public_by_default = match e.public.as_deref().unwrap_or("allow") {
                    "allow" => true,
                    "deny" => false,
                    other => {
                        self.problem(
                            "egress.public",
                            format!("`{other}` is not one of allow, deny"),
                        );
                        true
                    }
                };
                p.egress.allow = e.allow.into_iter().map(ScopeFile::into_scope).collect();
                p.egress.deny = e.deny.into_iter().map(ScopeFile::into_scope).collect();
            }
        }
        if let Some(paths) = f.unmetered_post_paths {
            p.unmetered_post_paths = paths;
        }
        (p, prices)
    }

    fn prices(&mut self, prices: HashMap<String, serde_yaml_ng::Value>) -> PriceCatalog {
        let mut out = HashMap::new();
        for (model, v) in prices {
            let path = format!("prices.{model}");
            let Some(pf) = self.item::<PriceFile>(&path, v) else {
                continue;
            };
            let price = Price {
                input: pf.input,
                cached_input: pf.cached_input.unwrap_or(pf.input),
                cache_write: pf.cache_write.unwrap_or(pf.input),
                output: pf.output.unwrap_or(0.0),
            };
            let all = [
                price.input,
                price.cached_input,
                price.cache_write,
                price.output,
            ];
            if all.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
                self.problem(&path, "prices must be USD per 1M tokens, 0 or more");
                continue;
            }
            out.insert(model, price);
        }
        PriceCatalog::new(out)
    }
}

/// Warnings that do not stop the agent (printed by `tollgate validate` and at start).
pub fn warnings(p: &Policy) -> Vec<String> {
    let mut w = Vec::new();
    if p.auth == AuthMode::Open {
        w.push("auth.mode is `open`: requests without a virtual key are admitted; anyone who reaches the port can spend".into());
    }
    w
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::governance::policy::{AuthMode, OnBreach, RateKind};

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// The sketch from the governance issue, verbatim.
    const SKETCH: &str = "
providers:
  - {name: sim, kind: openai, base_url: http://127.0.0.1:9}
models:
  - {name: gpt-4o, provider: sim, max_output_tokens: 2048}
  - {name: smol-cheap, provider: sim, model: smol}
auth: {mode: keys}
prices:
  smol: {input: 0.10, cached_input: 0.01, output: 0.40}      # USD per 1M tokens
require_headers: [project]
limits:
  - scope: {team: search}
    requests_per_minute: 600
    tokens_per_minute: 200000
budgets:
  - scope: {team: search}
    tokens: 5000000
    usd: 40
    window: month
    alert_at: [0.8, 1.0]
    on_breach: fallback
    fallback_model: smol-cheap
";

    #[test]
    fn the_issue_sketch_validates() {
        let c = Config::from_yaml(SKETCH, &no_env).unwrap_or_else(|e| panic!("{e}"));
        let g = &c.governance;
        assert_eq!(g.auth, AuthMode::Keys);
        assert_eq!(g.require_headers.len(), 1);
        assert_eq!(g.rate_limits.len(), 1);
        let r = &g.rate_limits[0];
        assert_eq!(r.name, "team=search");
        assert_eq!(
            r.rates
                .iter()
                .map(|x| (x.kind, x.amount))
                .collect::<Vec<_>>(),
            [(RateKind::Requests, 600), (RateKind::Tokens, 200_000)]
        );
        // Transport limits keep their defaults when `limits:` is a list.
        assert_eq!(c.limits.max_headers, 100);
        let b = &g.budgets[0];
        assert_eq!((b.tokens, b.micro_usd), (Some(5_000_000), Some(40_000_000)));
        assert_eq!(b.alert_at, [0.8, 1.0]);
        assert_eq!(
            b.on_breach,
            OnBreach::Fallback {
                model: "smol-cheap".into()
            }
        );
        assert_eq!(
            c.prices.lookup(&["smol"]).map(|p| p.cached_input),
            Some(0.01)
        );
        assert!(super::warnings(g).is_empty());
        assert_eq!(c.models[0].max_output_tokens, Some(2048));
        assert_eq!(c.models[1].max_output_tokens, None);
        // Each target's price is resolved at load: configured by upstream name, or built in.
        assert_eq!(c.models[1].targets[0].price.map(|p| p.input), Some(0.10));
        assert_eq!(c.models[0].targets[0].price.map(|p| p.input), Some(2.50));
    }

    #[test]
    fn keys_are_the_default_and_open_must_be_written_out() {
        let c = Config::from_yaml("", &no_env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.governance.auth, AuthMode::Keys);
        let c =
            Config::from_yaml("auth: {mode: open}\n", &no_env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.governance.auth, AuthMode::Open);
        assert_eq!(super::warnings(&c.governance).len(), 1);
    }

    #[test]
    fn governance_problems_are_reported_with_their_paths() {
        let e = Config::from_yaml(
            "auth: {mode: maybe}\nrequire_headers: [team, colour]\nrate_limits:\n  - scope: {team: a}\n  - scope: {tem: a}\n    requests_per_minute: 1\nbudgets:\n  - scope: {team: a}\n    on_breach: fallback\n    fallback_model: nope\n    window: fortnight\nprices:\n  m: {input: -1}\n",
            &no_env,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        for needle in [
            "auth.mode",
            "require_headers[1]",
            "rate_limits[0]: sets no rate",
            "rate_limits[1]",
            "sets neither `tokens` nor `usd`",
            "`nope` is not a configured model",
            "budgets[0].window",
            "prices.m",
        ] {
            assert!(e.contains(needle), "{needle} missing from:\n{e}");
        }
    }
}
