//! Phase 7a, guard: the guardrails that cover this attempt's destination scan the prompt spans
//! inspect located and decide what the provider may read. Runs before each attempt, because a
//! retry or fallback can move the request to a provider other rules cover (a public cloud after
//! a local replica); the scan is redone only when the set of rules changes.
//!
//! * `block`: the request ends here with 400 `content_blocked`, naming the classes found and
//!   never the text.
//! * `redact` / `pseudonymize`: replacements that `forward` splices into the body it sends
//!   (the client's body is never copied or re-serialised); pseudonymized originals go to
//!   `relay`, which puts them back into the response.
//! * `log`: counted and audited only.
//!
//! Where rules disagree about the same bytes, the stronger action wins (block > pseudonymize >
//! redact > log). Findings reach metrics, the ledger row and the audit log at settle ([`record`]),
//! for the attempt that was finally forwarded.
//! Reads: `ctx.body`, `ctx.inspection.prompt_spans`, `ctx.target`, identity. Writes: `ctx.guard`.

use std::sync::Arc;

use crate::client::ClientConn;
use crate::error::{ErrorKind, GateError};
use crate::guard::{
    pseudonyms, redactions, settle_overlaps, Action, Class, Encoding, Match, PseudoMap,
    Replacement, ResponseRule,
};
use crate::phase::admit;
use crate::pipeline::RequestCtx;
use crate::snapshot::Snapshot;
use crate::worker::Worker;

/// What the guardrails did to the request as forwarded.
#[derive(Default)]
pub struct GuardState {
    /// Indexes of the rules that covered the last attempt; `None` before the first.
    applied: Option<Vec<u16>>,
    /// Spliced into the forwarded body, in order.
    pub replacements: Vec<Replacement>,
    /// What the provider read in place of each pseudonymized value.
    pub pseudo: Option<Arc<PseudoMap>>,
    /// Per class, action and side: how many values.
    pub findings: Vec<Finding>,
    /// Rules whose guard model was asked already (`phase/guard_model.rs`).
    pub model_checked: Vec<u16>,
    /// The rules that cover the response (`on: response|both`); relay scans it with them.
    pub response_rules: Option<Arc<[ResponseRule]>>,
    /// The refusal, when a `block` rule matched.
    blocked: Option<GateError>,
    /// Names of the rules that found something (for the audit entry).
    rules: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub class: Class,
    pub action: Action,
    pub count: u32,
    /// Found in the response (else in the prompt).
    pub response: bool,
}

impl GuardState {
    /// Rules covering this attempt whose guard model has not been asked yet.
    pub fn due_model_checks(&self, snap: &Snapshot) -> Vec<u16> {
        let Some(applied) = &self.applied else {
            return Vec::new();
        };
        applied
            .iter()
            .copied()
            .filter(|i| {
                snap.cfg.guardrails[*i as usize].guard_model.is_some()
                    && !self.model_checked.contains(i)
            })
            .collect()
    }

    /// Counts one finding of `rule` (and names the rule for the audit entry).
    pub fn count(
        &mut self,
        snap: &Snapshot,
        class: &Class,
        action: Action,
        rule: u16,
        response: bool,
    ) {
        match self
            .findings
            .iter_mut()
            .find(|f| &f.class == class && f.action == action && f.response == response)
        {
            Some(f) => f.count += 1,
            None => self.findings.push(Finding {
                class: class.clone(),
                action,
                count: 1,
                response,
            }),
        }
        if let Some(r) = snap.cfg.guardrails.get(rule as usize) {
            if !self.rules.contains(&r.name) {
                self.rules.push(r.name.clone());
            }
        }
    }

    /// `email:2:pseudonymize,response:jwt:1:block`: the ledger's `guard` column (no matched
    /// text; response findings are prefixed).
    pub fn summary(&self) -> Option<String> {
        if self.findings.is_empty() {
            return None;
        }
        let parts: Vec<String> = self
            .findings
            .iter()
            .map(|f| {
                let side = if f.response { "response:" } else { "" };
                format!("{side}{}:{}:{}", f.class.name(), f.count, f.action.label())
            })
            .collect();
        Some(parts.join(","))
    }
}

/// Applies the guardrails that cover the chosen target. Call before each attempt.
pub fn run(snap: &Snapshot, client: &ClientConn, ctx: &mut RequestCtx) -> Result<(), GateError> {
    let rules = &snap.cfg.guardrails;
    let Some(target) = ctx.target.filter(|_| !rules.is_empty()) else {
        return Ok(());
    };
    let provider = &snap.cfg.providers[target.provider];
    let facts = admit::facts(client, ctx, ctx.key.as_deref());
    let applied: Vec<u16> = rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.applies(&facts, provider))
        .map(|(i, _)| i as u16)
        .collect();
    if ctx.guard.applied.as_ref() != Some(&applied) {
        // Guard-model answers hold for the request, whatever the destination.
        let checked = std::mem::take(&mut ctx.guard.model_checked);
        let answered: Vec<Finding> = ctx
            .guard
            .findings
            .iter()
            .filter(|f| f.class == Class::GuardModel)
            .cloned()
            .collect();
        ctx.guard = evaluate(snap, ctx, &provider.name, applied);
        ctx.guard.model_checked = checked;
        ctx.guard.findings.extend(answered);
    }
    match &ctx.guard.blocked {
        Some(e) => Err(e.clone()),
        None => Ok(()),
    }
}

/// Scans with each applied rule and turns the findings into one decision.
fn evaluate(snap: &Snapshot, ctx: &RequestCtx, provider: &str, applied: Vec<u16>) -> GuardState {
    let body = &ctx.body[..];
    let mut found: Vec<(Match, Action, u16)> = Vec::new();
    for &i in &applied {
        let rule = &snap.cfg.guardrails[i as usize];
        if !rule.on_request {
            continue;
        }
        for m in rule
            .detectors
            .scan_spans(body, &ctx.inspection.prompt_spans)
        {
            found.push((m, rule.action, i));
        }
    }
    let kept = settle_overlaps(found);
    let response: Vec<ResponseRule> = applied
        .iter()
        .map(|&i| (i, &snap.cfg.guardrails[i as usize]))
        .filter(|(_, r)| r.on_response)
        .map(|(i, r)| ResponseRule {
            detectors: r.detectors.clone(),
            action: r.action,
            rule: i,
        })
        .collect();
    let mut state = GuardState {
        applied: Some(applied),
        response_rules: (!response.is_empty()).then(|| Arc::from(response)),
        ..GuardState::default()
    };
    for (m, action, rule) in &kept {
        state.count(snap, &m.class, *action, *rule, false);
    }
    let blocking: Vec<&Finding> = state
        .findings
        .iter()
        .filter(|f| f.action == Action::Block)
        .collect();
    if !blocking.is_empty() {
        let what: Vec<String> = blocking
            .iter()
            .map(|f| format!("{} {}", f.count, f.class.name()))
            .collect();
        let rule = kept
            .iter()
            .find(|(_, a, _)| *a == Action::Block)
            .map(|(_, _, r)| snap.cfg.guardrails[*r as usize].name.as_str())
            .unwrap_or_default();
        state.blocked = Some(GateError::new(
            ErrorKind::ContentBlocked,
            format!(
                "the request was blocked by guardrail `{rule}`: it contains {} that may not be \
                 sent to provider `{provider}`",
                what.join(", ")
            ),
        ));
        return state;
    }
    let of = |action: Action| -> Vec<Match> {
        kept.iter()
            .filter(|(_, a, _)| *a == action)
            .map(|(m, _, _)| m.clone())
            .collect()
    };
    let mut reps = redactions(body, &of(Action::Redact));
    let pseudo_matches = of(Action::Pseudonymize);
    if !pseudo_matches.is_empty() {
        let (p, map) = pseudonyms(body, &pseudo_matches, Encoding::Json);
        reps.extend(p);
        state.pseudo = Some(Arc::new(map));
    }
    reps.sort_by_key(|r| r.range.start);
    state.replacements = reps;
    state
}

/// Counts the request's findings and writes its audit entry. Called once, at settle.
pub fn record(w: &Worker, ctx: &RequestCtx) {
    let g = &ctx.guard;
    if g.findings.is_empty() {
        return;
    }
    let shard = &w.shared.metrics.shards[w.index];
    let mut classes = serde_json::Map::new();
    for f in &g.findings {
        let side = if f.response { "response" } else { "request" };
        shard.record_guard(&f.class.name(), f.action.label(), side, u64::from(f.count));
        classes.insert(
            format!("{side}:{}:{}", f.class.name(), f.action.label()),
            f.count.into(),
        );
    }
    let strongest = g
        .findings
        .iter()
        .map(|f| f.action)
        .max()
        .unwrap_or(Action::Log);
    let subject = ctx
        .key
        .as_ref()
        .map(|k| k.id.clone())
        .unwrap_or_else(|| ctx.id.clone());
    w.shared.governor.audit(
        &format!("guard.{}", strongest.label()),
        &subject,
        serde_json::json!({
            "request": ctx.id,
            "rules": g.rules,
            "findings": classes,
            "provider": ctx.target.map(|t| ctx.snap.cfg.providers[t.provider].name.clone()),
        }),
    );
}
