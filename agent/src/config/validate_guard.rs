//! `guardrails:` and `cache:`, validated into the rules and settings the request path reads
//! (`guard::Guardrail`, [`CacheSettings`]). Detectors are compiled here, once per
//! configuration, so a bad custom pattern is a configuration error with its path, never a
//! failure on a request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::validate::Validator;
use super::validate_governance::ScopeFile;
use super::Glob;
use crate::guard::{Action, Class, DetectorConfig, Detectors, Egress, GuardModel, Guardrail};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuardrailFile {
    name: String,
    #[serde(default)]
    scope: GuardScopeFile,
    /// Class names, groups (`pii`, `secrets`, `all`) and `custom:<name>`.
    #[serde(default)]
    detect: Vec<String>,
    action: String,
    /// `request` (default), `response` or `both`.
    on: Option<String>,
    /// A classifier model asked about the prompt.
    guard_model: Option<GuardModelFile>,
    /// Operator patterns: name → regex; each adds the class `custom:<name>`.
    #[serde(default)]
    patterns: BTreeMap<String, String>,
    /// Operator word lists: name → words (whole words, ASCII case-insensitive).
    #[serde(default)]
    words: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuardModelFile {
    model: String,
    timeout_ms: Option<u64>,
    /// `open` (default) or `closed`.
    fail: Option<String>,
}

/// A governance scope plus the destination: `egress` (public, private, any) and `provider`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GuardScopeFile {
    egress: Option<String>,
    provider: Option<String>,
    team: Option<String>,
    project: Option<String>,
    user: Option<String>,
    session: Option<String>,
    workflow: Option<String>,
    cost_center: Option<String>,
    key: Option<String>,
    model: Option<String>,
    cgroup: Option<String>,
    container: Option<String>,
}

impl GuardScopeFile {
    fn identity_scope(&self) -> ScopeFile {
        ScopeFile {
            team: self.team.clone(),
            project: self.project.clone(),
            user: self.user.clone(),
            session: self.session.clone(),
            workflow: self.workflow.clone(),
            cost_center: self.cost_center.clone(),
            key: self.key.clone(),
            model: self.model.clone(),
            cgroup: self.cgroup.clone(),
            container: self.container.clone(),
        }
    }
}

/// Who may receive a cached answer: the same key, the same team, or anyone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheScope {
    Key,
    Team,
    Global,
}

/// The exact response cache.
#[derive(Clone, Debug)]
pub struct ExactCacheSettings {
    pub ttl: Duration,
    /// Bytes of cached responses held in memory, all workers together.
    pub max_bytes: u64,
    pub scope: CacheScope,
    /// Cache requests that do not ask for deterministic output too (default false).
    pub nondeterministic: bool,
    /// Largest response cached.
    pub max_entry_bytes: u64,
    /// Bytes of cached responses kept on disk under `<data_dir>/cache/exact/`
    /// (`spill.max_mb`), when the spill is on.
    pub spill_max_bytes: Option<u64>,
}

/// The semantic cache (`cache.semantic`): answers a chat request whose last user turn is
/// close enough to one already answered, in the same conversation, scope and model.
#[derive(Clone, Debug)]
pub struct SemanticCacheSettings {
    /// Index into the configuration's models: the embedding model.
    pub model: usize,
    /// Least cosine similarity served as a hit.
    pub threshold: f32,
    /// The embedding call's whole budget; past it the request goes on as a miss.
    pub timeout: Duration,
    /// Entries kept per scope and conversation (at most 1024); the oldest go first.
    pub max_entries: usize,
}

/// `cache:`.
#[derive(Clone, Debug, Default)]
pub struct CacheSettings {
    pub exact: Option<ExactCacheSettings>,
    pub semantic: Option<SemanticCacheSettings>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct CacheFile {
    exact: Option<ExactFile>,
    semantic: Option<SemanticFile>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ExactFile {
    enabled: Option<bool>,
    ttl_s: Option<u64>,
    max_mb: Option<u64>,
    scope: Option<String>,
    nondeterministic: Option<bool>,
    max_entry_kb: Option<u64>,
    spill: Option<SpillFile>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SpillFile {
    enabled: Option<bool>,
    max_mb: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SemanticFile {
    enabled: Option<bool>,
    embedding_model: Option<String>,
    threshold: Option<f32>,
    timeout_ms: Option<u64>,
    max_entries: Option<usize>,
}

impl Validator<'_> {
    pub(super) fn guardrails(
        &mut self,
        items: Vec<serde_yaml_ng::Value>,
        models: &[super::Model],
        provider_kinds: &[super::ProviderKind],
    ) -> Vec<Guardrail> {
        let mut out: Vec<Guardrail> = Vec::new();
        for (i, raw) in items.into_iter().enumerate() {
            let path = format!("guardrails[{i}]");
            let Some(g) = self.item::<GuardrailFile>(&path, raw) else {
                continue;
            };
            if out.iter().any(|o| o.name == g.name) {
                self.problem(
                    format!("{path}.name"),
                    format!("guardrail `{}` is defined twice", g.name),
                );
            }
            if g.name.is_empty() || g.name.chars().any(char::is_control) {
                self.problem(format!("{path}.name"), "must be a non-empty printable name");
            }
            let Some(action) = Action::parse(&g.action) else {
                self.problem(
                    format!("{path}.action"),
                    format!(
                        "`{}` is not one of block, redact, pseudonymize, log",
                        g.action
                    ),
                );
                continue;
            };
            let (on_request, on_response) = match g.on.as_deref().unwrap_or("request") {
                "request" => (true, false),
                "response" => (false, true),
                "both" => (true, true),
                other => {
                    self.problem(
                        format!("{path}.on"),
                        format!("`{other}` is not one of request, response, both"),
                    );
                    continue;
                }
            };
            // A response has no placeholders of its own to put back: pseudonymizing it would
            // only hide the value from the client, which is what `redact` says.
            if on_response && action == Action::Pseudonymize {
                self.problem(
                    format!("{path}.action"),
                    "pseudonymize applies to requests only (`on: request`); use redact on responses",
                );
                continue;
            }
            let egress = match g.scope.egress.as_deref().map(Egress::parse) {
                None => Egress::Public,
                Some(Some(e)) => e,
                Some(None) => {
                    self.problem(
                        format!("{path}.scope.egress"),
                        "must be public, private or any",
                    );
                    continue;
                }
            };
            let mut classes = Vec::new();
            for (j, word) in g.detect.iter().enumerate() {
                match Class::parse(word) {
                    Ok(c) => classes.extend(c),
                    Err(e) => self.problem(format!("{path}.detect[{j}]"), e.to_string()),
                }
            }
            // A `custom:<name>` in `detect` needs a pattern or word list of that name.
            for c in &classes {
                if let Class::Custom(n) = c {
                    if !g.patterns.contains_key(&**n) && !g.words.contains_key(&**n) {
                        self.problem(
                            format!("{path}.detect"),
                            format!("`custom:{n}` has no entry in `patterns` or `words`"),
                        );
                    }
                }
            }
            let guard_model = match &g.guard_model {
                None => None,
                Some(gm) => {
                    match self.guard_model(&path, gm, action, on_response, models, provider_kinds) {
                        Some(m) => Some(m),
                        None => continue,
                    }
                }
            };
            if classes.is_empty()
                && g.patterns.is_empty()
                && g.words.is_empty()
                && guard_model.is_none()
            {
                self.problem(
                    format!("{path}.detect"),
                    "names nothing to detect (give classes, `patterns`, `words` or `guard_model`)",
                );
                continue;
            }
            let cfg = DetectorConfig {
                classes,
                custom_patterns: g.patterns.into_iter().collect(),
                word_lists: g.words.into_iter().collect(),
            };
            let detectors = match Detectors::new(&cfg) {
                Ok(d) => Arc::new(d),
                Err(e) => {
                    self.problem(path, e.to_string());
                    continue;
                }
            };
            out.push(Guardrail {
                name: g.name,
                scope: g.scope.identity_scope().into_scope(),
                egress,
                provider: g.scope.provider.as_deref().map(Glob::new),
                detectors,
                action,
                guard_model,
                on_request,
                on_response,
            });
        }
        out
    }

    fn guard_model(
        &mut self,
        path: &str,
        gm: &GuardModelFile,
        action: Action,
        on_response: bool,
        models: &[super::Model],
        provider_kinds: &[super::ProviderKind],
    ) -> Option<GuardModel> {
        let path = format!("{path}.guard_model");
        let Some(model) = models.iter().position(|m| m.name == gm.model) else {
            self.problem(
                format!("{path}.model"),
                format!("`{}` is not a configured model", gm.model),
            );
            return None;
        };
        let chat = models[model]
            .targets
            .first()
            .is_some_and(|t| provider_kinds[t.provider] == super::ProviderKind::OpenAi);
        if !chat {
            self.problem(
                format!("{path}.model"),
                format!(
                    "`{}` must be served by an OpenAI-compatible provider (the check is a chat \
                     completion)",
                    gm.model
                ),
            );
            return None;
        }
        if !matches!(action, Action::Block | Action::Log) || on_response {
            self.problem(
                path,
                "a guard model checks the prompt before forwarding: use action block or log, on: request",
            );
            return None;
        }
        let fail_closed = match gm.fail.as_deref().unwrap_or("open") {
            "open" => false,
            "closed" => true,
            other => {
                self.problem(
                    format!("{path}.fail"),
                    format!("`{other}` is not one of open, closed"),
                );
                return None;
            }
        };
        let ms = gm.timeout_ms.unwrap_or(500);
        if !(1..=60_000).contains(&ms) {
            self.problem(format!("{path}.timeout_ms"), "must be between 1 and 60000");
            return None;
        }
        Some(GuardModel {
            model,
            timeout: Duration::from_millis(ms),
            fail_closed,
        })
    }

    fn semantic(
        &mut self,
        sf: SemanticFile,
        exact: bool,
        models: &[super::Model],
        provider_kinds: &[super::ProviderKind],
    ) -> Option<SemanticCacheSettings> {
        let path = "cache.semantic";
        if !exact {
            self.problem(
                path,
                "the semantic cache keeps its answers in the exact cache's store: enable cache.exact",
            );
            return None;
        }
        let Some(name) = sf.embedding_model else {
            self.problem(format!("{path}.embedding_model"), "is required");
            return None;
        };
        let Some(model) = models.iter().position(|m| m.name == name) else {
            self.problem(
                format!("{path}.embedding_model"),
                format!("`{name}` is not a configured model"),
            );
            return None;
        };
        let openai = models[model]
            .targets
            .first()
            .is_some_and(|t| provider_kinds[t.provider] == super::ProviderKind::OpenAi);
        if !openai {
            self.problem(
                format!("{path}.embedding_model"),
                format!(
                    "`{name}` must be served by an OpenAI-compatible provider (/v1/embeddings)"
                ),
            );
            return None;
        }
        let threshold = sf.threshold.unwrap_or(0.95);
        if !(threshold > 0.0 && threshold <= 1.0) {
            self.problem(format!("{path}.threshold"), "must be in (0, 1]");
            return None;
        }
        let ms = sf.timeout_ms.unwrap_or(100);
        if !(1..=10_000).contains(&ms) {
            self.problem(format!("{path}.timeout_ms"), "must be between 1 and 10000");
            return None;
        }
        Some(SemanticCacheSettings {
            model,
            threshold,
            timeout: Duration::from_millis(ms),
            max_entries: sf.max_entries.unwrap_or(1024).clamp(1, 1024),
        })
    }

    fn cache_scope(&mut self, path: &str, v: Option<&str>) -> CacheScope {
        match v.unwrap_or("key") {
            "key" => CacheScope::Key,
            "team" => CacheScope::Team,
            "global" => CacheScope::Global,
            other => {
                self.problem(path, format!("`{other}` is not one of key, team, global"));
                CacheScope::Key
            }
        }
    }

    pub(super) fn cache(
        &mut self,
        raw: Option<serde_yaml_ng::Value>,
        models: &[super::Model],
        provider_kinds: &[super::ProviderKind],
    ) -> CacheSettings {
        let Some(raw) = raw else {
            return CacheSettings::default();
        };
        let Some(f) = self.item::<CacheFile>("cache", raw) else {
            return CacheSettings::default();
        };
        let exact = match f.exact {
            Some(e) if e.enabled.unwrap_or(true) => {
                if e.max_mb == Some(0) || e.ttl_s == Some(0) {
                    self.problem(
                        "cache.exact",
                        "ttl_s and max_mb must be at least 1 (set enabled: false to turn it off)",
                    );
                }
                let scope = self.cache_scope("cache.exact.scope", e.scope.as_deref());
                let spill_max_bytes = match e.spill {
                    Some(sp) if sp.enabled.unwrap_or(true) => {
                        if sp.max_mb == Some(0) {
                            self.problem(
                                "cache.exact.spill.max_mb",
                                "must be at least 1 (set enabled: false to turn the spill off)",
                            );
                        }
                        Some(sp.max_mb.unwrap_or(1024) << 20)
                    }
                    _ => None,
                };
                Some(ExactCacheSettings {
                    ttl: Duration::from_secs(e.ttl_s.unwrap_or(3600)),
                    max_bytes: e.max_mb.unwrap_or(256) << 20,
                    scope,
                    nondeterministic: e.nondeterministic.unwrap_or(false),
                    max_entry_bytes: e.max_entry_kb.unwrap_or(1024) << 10,
                    spill_max_bytes,
                })
            }
            _ => None,
        };
        let semantic = match f.semantic {
            Some(sf) if sf.enabled.unwrap_or(false) => {
                self.semantic(sf, exact.is_some(), models, provider_kinds)
            }
            _ => None,
        };
        CacheSettings { exact, semantic }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::guard::{Action, Egress};

    fn load(extra: &str) -> Result<Config, String> {
        let src = format!(
            "providers:\n  - {{name: cloud, kind: openai, base_url: \"https://api.openai.com\", public: true}}\n\
             models:\n  - {{name: m, targets: [{{provider: cloud, model: gpt}}]}}\n{extra}"
        );
        Config::from_yaml(&src, &|_| None).map_err(|e| e.to_string())
    }

    #[test]
    fn the_issue_sketch_loads() {
        let c = load(
            "guardrails:\n  - name: no-pii-to-cloud\n    scope: {egress: public}\n    detect: [email, phone, credit_card, iban, secrets]\n    action: pseudonymize\n\
             cache:\n  exact: {enabled: true, ttl_s: 3600, max_mb: 256, scope: key}\n  semantic: {enabled: false, embedding_model: embed, threshold: 0.95}\n",
        )
        .unwrap();
        assert_eq!(c.guardrails.len(), 1);
        assert_eq!(c.guardrails[0].action, Action::Pseudonymize);
        assert_eq!(c.guardrails[0].egress, Egress::Public);
        let e = c.cache.exact.as_ref().unwrap();
        assert_eq!(e.max_bytes, 256 << 20);
    }

    #[test]
    fn bad_rules_name_their_field() {
        let e = load(
            "guardrails:\n  - {name: a, detect: [emial], action: block}\n  - {name: b, detect: [email], action: shred}\n  - {name: c, detect: [custom:emp], action: log}\n  - {name: d, detect: [custom:x], patterns: {x: \"(\"}, action: log}\n  - {name: e, detect: [email], action: log, scope: {egress: mars}}\n",
        )
        .unwrap_err();
        for want in [
            "guardrails[0].detect[0]",
            "guardrails[1].action",
            "guardrails[2].detect",
            "guardrails[3]",
            "does not compile",
            "guardrails[4].scope.egress",
        ] {
            assert!(e.contains(want), "{want} missing from:\n{e}");
        }
    }

    #[test]
    fn response_and_guard_model_rules_are_checked() {
        let c = load(
            "guardrails:\n  - {name: out, on: both, detect: [email], action: redact}\n  - {name: g, guard_model: {model: m, timeout_ms: 200, fail: closed}, action: block}\n",
        )
        .unwrap();
        assert!(c.guardrails[0].on_request && c.guardrails[0].on_response);
        let gm = c.guardrails[1].guard_model.as_ref().unwrap();
        assert!(gm.fail_closed && gm.timeout.as_millis() == 200);
        let e = load(
            "guardrails:\n  - {name: a, on: response, detect: [email], action: pseudonymize}\n  - {name: b, on: sideways, detect: [email], action: log}\n  - {name: c, guard_model: {model: nope}, action: block}\n  - {name: d, guard_model: {model: m}, action: redact}\n  - {name: e, guard_model: {model: m, fail: maybe}, action: log}\n",
        )
        .unwrap_err();
        for want in [
            "guardrails[0].action",
            "guardrails[1].on",
            "guardrails[2].guard_model.model",
            "guardrails[3].guard_model",
            "guardrails[4].guard_model.fail",
        ] {
            assert!(e.contains(want), "{want} missing from:\n{e}");
        }
    }

    #[test]
    fn the_semantic_cache_needs_the_exact_store_and_an_embedding_model() {
        let c = load(
            "cache:\n  exact: {enabled: true}\n  semantic: {enabled: true, embedding_model: m, threshold: 0.9, timeout_ms: 80}\n",
        )
        .unwrap();
        let s = c.cache.semantic.as_ref().unwrap();
        assert_eq!((s.model, s.threshold, s.timeout.as_millis()), (0, 0.9, 80));
        for (yaml, want) in [
            ("  semantic: {enabled: true, embedding_model: m}\n", "enable cache.exact"),
            ("  exact: {enabled: true}\n  semantic: {enabled: true}\n", "embedding_model"),
            ("  exact: {enabled: true}\n  semantic: {enabled: true, embedding_model: x}\n", "not a configured model"),
            ("  exact: {enabled: true}\n  semantic: {enabled: true, embedding_model: m, threshold: 1.5}\n", "threshold"),
        ] {
            let e = load(&format!("cache:\n{yaml}")).unwrap_err();
            assert!(e.contains(want), "{want} missing from:\n{e}");
        }
    }

    #[test]
    fn the_spill_is_off_unless_asked_and_bounded_when_on() {
        let c = load("cache:\n  exact: {enabled: true}\n").unwrap();
        assert_eq!(c.cache.exact.as_ref().unwrap().spill_max_bytes, None);
        let c = load("cache:\n  exact: {enabled: true, spill: {}}\n").unwrap();
        assert_eq!(
            c.cache.exact.as_ref().unwrap().spill_max_bytes,
            Some(1024 << 20)
        );
        let c = load("cache:\n  exact: {spill: {max_mb: 3}}\n").unwrap();
        assert_eq!(
            c.cache.exact.as_ref().unwrap().spill_max_bytes,
            Some(3 << 20)
        );
        let c = load("cache:\n  exact: {spill: {enabled: false, max_mb: 3}}\n").unwrap();
        assert_eq!(c.cache.exact.as_ref().unwrap().spill_max_bytes, None);
        let e = load("cache:\n  exact: {spill: {max_mb: 0}}\n").unwrap_err();
        assert!(e.contains("cache.exact.spill.max_mb"), "{e}");
        let e = load("cache:\n  exact: {spill: {dir: /tmp}}\n").unwrap_err();
        assert!(e.contains("dir"), "{e}");
    }
}
