//! Guardrail rules as the request path applies them: which requests a rule covers (identity
//! scope, the provider, and whether that provider is public), what it detects, and what it does
//! with a finding. Built once per configuration (`config/validate_guard.rs`); shared read-only
//! by every worker through the snapshot.

use std::sync::Arc;

use super::{Detectors, Match};
use crate::config::{Glob, Provider};
use crate::governance::policy::{Facts, Scope};

/// What a rule does with what it found. Ordered by strength: where rules disagree about the
/// same bytes, the stronger action wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// An audit event and a count; the request goes on unchanged.
    Log,
    /// The match becomes `[REDACTED_<CLASS>]`; the provider never sees it, nor does the client
    /// get it back.
    Redact,
    /// The match becomes `<CLASS_n>`, and the original is put back into the response.
    Pseudonymize,
    /// The request is refused with 400 `content_blocked`.
    Block,
}

impl Action {
    pub const ALL: [Action; 4] = [
        Action::Log,
        Action::Redact,
        Action::Pseudonymize,
        Action::Block,
    ];

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.label() == s)
    }

    pub fn label(self) -> &'static str {
        match self {
            Action::Log => "log",
            Action::Redact => "redact",
            Action::Pseudonymize => "pseudonymize",
            Action::Block => "block",
        }
    }

    /// Whether the action changes what the provider receives.
    pub fn rewrites(self) -> bool {
        matches!(self, Action::Redact | Action::Pseudonymize)
    }
}

/// Which destinations a rule covers. The default is `Public`: what leaves the perimeter is
/// checked, traffic to replicas on the node passes unchanged unless a rule says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Egress {
    Public,
    Private,
    Any,
}

impl Egress {
    pub fn parse(s: &str) -> Option<Egress> {
        match s {
            "public" => Some(Egress::Public),
            "private" => Some(Egress::Private),
            "any" => Some(Egress::Any),
            _ => None,
        }
    }

    fn covers(self, provider: &Provider) -> bool {
        match self {
            Egress::Public => provider.public,
            Egress::Private => !provider.public,
            Egress::Any => true,
        }
    }
}

/// `guard_model:` of a rule: a Llama-Guard-style classifier (a configured model served by an
/// OpenAI-compatible replica) that answers `safe` or `unsafe` and its categories.
#[derive(Clone, Debug)]
pub struct GuardModel {
    /// Index into the configuration's models.
    pub model: usize,
    /// The check's whole budget: connect, send, answer.
    pub timeout: std::time::Duration,
    /// When the check fails or times out: refuse the request (`fail: closed`) instead of
    /// letting it through (`open`, the default).
    pub fail_closed: bool,
}

/// One `guardrails:` entry.
#[derive(Clone)]
pub struct Guardrail {
    pub name: String,
    /// Identity, key and model fields; empty matches every request.
    pub scope: Scope,
    pub egress: Egress,
    /// Provider name glob.
    pub provider: Option<Glob>,
    pub detectors: Arc<Detectors>,
    pub action: Action,
    /// A classifier model asked about the prompt before forwarding.
    pub guard_model: Option<GuardModel>,
    /// Where it looks: the prompt (`on: request`, the default), the response, or both.
    pub on_request: bool,
    pub on_response: bool,
}

impl std::fmt::Debug for Guardrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guardrail")
            .field("name", &self.name)
            .field("scope", &self.scope.label())
            .field("egress", &self.egress)
            .field("action", &self.action)
            .finish_non_exhaustive()
    }
}

impl Guardrail {
    /// Whether the rule covers a request with these facts going to `provider`.
    pub fn applies(&self, f: &Facts<'_>, provider: &Provider) -> bool {
        self.egress.covers(provider)
            && self
                .provider
                .as_ref()
                .is_none_or(|g| g.matches(&provider.name))
            && self.scope.matches(f)
    }
}

/// Sorts findings and settles overlaps: of two findings that share bytes, one remains, covering
/// both, with the stronger action.
pub fn settle_overlaps(mut found: Vec<(Match, Action, u16)>) -> Vec<(Match, Action, u16)> {
    found.sort_by(|a, b| {
        a.0.range
            .start
            .cmp(&b.0.range.start)
            .then(b.1.cmp(&a.1))
            .then(b.0.range.end.cmp(&a.0.range.end))
    });
    let mut out: Vec<(Match, Action, u16)> = Vec::with_capacity(found.len());
    for f in found {
        match out.last_mut() {
            Some(last) if f.0.range.start < last.0.range.end => {
                let range = last.0.range.start..last.0.range.end.max(f.0.range.end);
                if f.1 > last.1 {
                    *last = f;
                }
                last.0.range = range;
            }
            _ => out.push(f),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::{Class, Match};

    fn f(class: Class, r: std::ops::Range<usize>, a: Action) -> (Match, Action, u16) {
        (Match { class, range: r }, a, 0)
    }

    #[test]
    fn overlaps_keep_the_stronger_action_over_both_ranges() {
        let out = settle_overlaps(vec![
            f(Class::Secret, 10..30, Action::Redact),
            f(Class::Jwt, 12..40, Action::Block),
            f(Class::Email, 50..60, Action::Log),
            f(Class::Email, 50..60, Action::Pseudonymize),
        ]);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].0.range.clone(), out[0].1), (10..40, Action::Block));
        assert_eq!(out[0].0.class, Class::Jwt);
        assert_eq!(out[1].1, Action::Pseudonymize);
    }
}
