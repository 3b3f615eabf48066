//! Governance policy as the configuration states it, validated: who must authenticate, which
//! identity headers are required, rate limits and budgets per scope, model access, workload
//! classes, the loop guard and alerting. Immutable; part of `Config`. The live counters these
//! rules charge are kept apart (`state.rs`), so a reload keeps a window's spend.

use std::time::Duration;

use crate::config::Glob;
use crate::identity::Identity;

use super::window::Window;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Every request needs a virtual key (intercepted connections are identified by the kernel).
    #[default]
    Keys,
    /// Keys are optional: requests without one are admitted under their headers' identity.
    Open,
}

/// An identity envelope field, by its header name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityField {
    Team,
    Project,
    User,
    Session,
    Workflow,
    CostCenter,
}

impl IdentityField {
    pub fn parse(s: &str) -> Option<IdentityField> {
        Some(match s.trim_start_matches("x-tollgate-") {
            "team" => IdentityField::Team,
            "project" => IdentityField::Project,
            "user" => IdentityField::User,
            "session" => IdentityField::Session,
            "workflow" => IdentityField::Workflow,
            "cost-center" | "cost_center" => IdentityField::CostCenter,
            _ => return None,
        })
    }

    pub fn header(self) -> &'static str {
        match self {
            IdentityField::Team => "x-tollgate-team",
            IdentityField::Project => "x-tollgate-project",
            IdentityField::User => "x-tollgate-user",
            IdentityField::Session => "x-tollgate-session",
            IdentityField::Workflow => "x-tollgate-workflow",
            IdentityField::CostCenter => "x-tollgate-cost-center",
        }
    }

    pub fn get(self, i: &Identity) -> Option<&str> {
        match self {
            IdentityField::Team => i.team.as_deref(),
            IdentityField::Project => i.project.as_deref(),
            IdentityField::User => i.user.as_deref(),
            IdentityField::Session => i.session.as_deref(),
            IdentityField::Workflow => i.workflow.as_deref(),
            IdentityField::CostCenter => i.cost_center.as_deref(),
        }
        .filter(|v| !v.is_empty())
    }
}

/// Which requests a rule applies to: every given field must match (exact values; `model` and
/// `cgroup` are globs). An empty scope matches every request.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub team: Option<String>,
    pub project: Option<String>,
    pub user: Option<String>,
    pub session: Option<String>,
    pub workflow: Option<String>,
    pub cost_center: Option<String>,
    /// A virtual key's id.
    pub key: Option<String>,
    pub model: Option<Glob>,
    pub cgroup: Option<Glob>,
    pub container: Option<String>,
}

/// What a request is, for scope matching.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub identity: &'a Identity,
    pub key: Option<&'a str>,
    pub model: &'a str,
    pub cgroup: Option<&'a str>,
    pub container: Option<&'a str>,
}

impl Scope {
    pub fn matches(&self, f: &Facts<'_>) -> bool {
        let id = f.identity;
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        eq(&self.team, id.team.as_deref())
            && eq(&self.project, id.project.as_deref())
            && eq(&self.user, id.user.as_deref())
            && eq(&self.session, id.session.as_deref())
            && eq(&self.workflow, id.workflow.as_deref())
            && eq(&self.cost_center, id.cost_center.as_deref())
            && eq(&self.key, f.key)
            && eq(&self.container, f.container)
            && self.model.as_ref().is_none_or(|g| g.matches(f.model))
            && self
                .cgroup
                .as_ref()
                .is_none_or(|g| f.cgroup.is_some_and(|c| g.matches(c)))
    }

    /// `team=search,model=gpt-4o*`: names the scope in errors, metrics and the audit log.
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        for (name, v) in self.fields() {
            parts.push(format!("{name}={v}"));
        }
        if parts.is_empty() {
            "all".into()
        } else {
            parts.join(",")
        }
    }

    /// The given fields as (name, value), in a fixed order; `model` and `cgroup` are globs.
    pub fn fields(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        let pairs: [(&'static str, Option<&str>); 10] = [
            ("team", self.team.as_deref()),
            ("project", self.project.as_deref()),
            ("user", self.user.as_deref()),
            ("session", self.session.as_deref()),
            ("workflow", self.workflow.as_deref()),
            ("cost_center", self.cost_center.as_deref()),
            ("key", self.key.as_deref()),
            ("model", self.model.as_ref().map(Glob::as_str)),
            ("cgroup", self.cgroup.as_ref().map(Glob::as_str)),
            ("container", self.container.as_deref()),
        ];
        for (name, v) in pairs {
            if let Some(v) = v {
                out.push((name, v));
            }
        }
        out
    }
}

/// What a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateKind {
    Requests,
    /// Input plus output tokens.
    Tokens,
    InputTokens,
    OutputTokens,
}

impl RateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RateKind::Requests => "requests",
            RateKind::Tokens => "tokens",
            RateKind::InputTokens => "input_tokens",
            RateKind::OutputTokens => "output_tokens",
        }
    }
}

/// `amount` per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub kind: RateKind,
    pub amount: u64,
    pub period: Duration,
}

impl Rate {
    /// `requests_per_minute`, as the config names it.
    pub fn name(&self) -> String {
        let per = match self.period.as_secs() {
            1 => "second",
            60 => "minute",
            3600 => "hour",
            86400 => "day",
            _ => "period",
        };
        format!("{}_per_{per}", self.kind.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct RateLimitRule {
    pub name: String,
    pub scope: Scope,
    pub rates: Vec<Rate>,
    /// With `cluster` configured: this agent admits its share of the cluster-wide rate.
    pub shared: bool,
}

impl RateLimitRule {
    /// What names one of its rates' counters: kept across reloads while equal, and the same on
    /// every agent of a cluster.
    pub fn rate_id(&self, rate: &Rate) -> String {
        format!(
            "{}|{}|{}|{}",
            self.name,
            self.scope.label(),
            rate.name(),
            rate.amount
        )
    }
}

/// What happens to a request that a budget cannot take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnBreach {
    /// 429 `budget_exceeded`, with the window's reset time.
    Block,
    /// Served by this (cheaper) configured model instead; `x-tollgate-fallback` says so.
    Fallback { model: String },
    /// Wait up to this long for headroom (running requests settling), then 429.
    Queue { timeout: Duration },
}

#[derive(Debug, Clone)]
pub struct BudgetRule {
    pub name: String,
    pub scope: Scope,
    pub tokens: Option<u64>,
    pub micro_usd: Option<u64>,
    pub window: Window,
    /// Fractions of the budget at which an alert is raised, ascending.
    pub alert_at: Vec<f64>,
    pub on_breach: OnBreach,
    /// With `cluster` configured: leased from the cluster-wide budget (`cluster/`).
    pub shared: bool,
}

impl BudgetRule {
    /// What names its counters: kept across reloads while equal, and the same on every agent
    /// of a cluster.
    pub fn id(&self) -> String {
        format!(
            "{}|{}|{}",
            self.name,
            self.scope.label(),
            self.window.as_str()
        )
    }
}

/// Models a scope may use (every matching rule must allow the model).
#[derive(Debug, Clone)]
pub struct AccessRule {
    pub scope: Scope,
    pub models: Vec<Glob>,
}

/// Requests whose `x-tollgate-workflow` matches `class` may use only `models` (the union of
/// the class's tiers).
#[derive(Debug, Clone)]
pub struct WorkloadClass {
    pub class: Glob,
    pub tiers: Vec<String>,
    pub models: Vec<Glob>,
}

#[derive(Debug, Clone)]
pub struct LoopGuard {
    /// The Nth identical request (same model and messages) within `window` trips the breaker.
    pub identical_requests: u32,
    pub window: Duration,
    /// A session whose tokens over the last `window` exceed this multiple of its average over
    /// `baseline_window` trips the breaker (0 disables).
    pub token_rate_multiple: f64,
    pub baseline_window: Duration,
    /// Below this many tokens in the window the rate test does not apply.
    pub min_tokens: u64,
    pub cooldown: Duration,
}

/// All governance settings.
#[derive(Debug, Clone)]
pub struct Policy {
    pub auth: AuthMode,
    pub require_headers: Vec<IdentityField>,
    pub rate_limits: Vec<RateLimitRule>,
    pub budgets: Vec<BudgetRule>,
    pub model_access: Vec<AccessRule>,
    pub workload_classes: Vec<WorkloadClass>,
    pub loop_guard: Option<LoopGuard>,
    /// POSTed a JSON body for every budget alert.
    pub alert_webhook: Option<String>,
    /// Output tokens reserved for a request that sets no maximum.
    pub default_max_output_tokens: u64,
    /// Unmetered paths an intercepted client may still POST to under `auth: keys` (they spend
    /// no generation tokens).
    pub unmetered_post_paths: Vec<String>,
    /// Who may be routed to public providers (cloud APIs).
    pub egress: Egress,
}

/// Public-provider permission: a `deny` scope that matches wins, then an `allow` scope, then
/// the default.
#[derive(Debug, Clone)]
pub struct Egress {
    pub public_by_default: bool,
    pub allow: Vec<Scope>,
    pub deny: Vec<Scope>,
}

impl Default for Egress {
    fn default() -> Self {
        Egress {
            public_by_default: true,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

impl Egress {
    pub fn allows_public(&self, f: &Facts<'_>) -> bool {
        if self.deny.iter().any(|s| s.matches(f)) {
            return false;
        }
        self.public_by_default || self.allow.iter().any(|s| s.matches(f))
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            auth: AuthMode::Keys,
            require_headers: Vec::new(),
            rate_limits: Vec::new(),
            budgets: Vec::new(),
            model_access: Vec::new(),
            workload_classes: Vec::new(),
            loop_guard: None,
            alert_webhook: None,
            default_max_output_tokens: 4096,
            unmetered_post_paths: vec!["/tokenize".into(), "/detokenize".into()],
            egress: Egress::default(),
        }
    }
}

impl Policy {
    /// Whether the model access rules and workload classes let `f` use `model`.
    pub fn allows_model(&self, f: &Facts<'_>, model: &str) -> Result<(), String> {
        for rule in &self.model_access {
            if rule.scope.matches(f) && !rule.models.iter().any(|g| g.matches(model)) {
                return Err(format!(
                    "The model `{model}` is not allowed for {}.",
                    rule.scope.label()
                ));
            }
        }
        if let Some(workflow) = f.identity.workflow.as_deref() {
            for class in &self.workload_classes {
                if class.class.matches(workflow) && !class.models.iter().any(|g| g.matches(model)) {
                    return Err(format!(
                        "The workload class `{}` may use the tiers [{}], which do not include `{model}`.",
                        class.class.as_str(),
                        class.tiers.join(", ")
                    ));
                }
            }
        }
        Ok(())
    }
}
