//! What the control thread adds to a record before it is written: the client's cgroup path,
//! container and pod (from the kernel's cgroup id, through [`CgroupResolver`]'s cache), the
//! identity fields the attribution rules fill for requests that did not send them, and the
//! node counters (`tg_model_usage`, `tg_cg_usage`) that node tools read from bpffs.
//!
//! Why here and not on a worker: resolving a cgroup id can walk the whole cgroup hierarchy on
//! a cache miss (milliseconds), and counter updates are map syscalls; neither belongs on the
//! request path. The cost is that kernel-derived identity reaches the ledger, not the request:
//! governance that needs it on the hot path (limits per team of an unlabelled client) will
//! resolve and cache it per connection when it lands.

use std::collections::HashMap;

use crate::config::{AttributionSettings, KernelFacts};
use crate::kernel::cgroup::CgroupResolver;
use crate::kernel::CounterWriter;

use super::UsageRecord;

/// Control-thread state for enriching records. Everything is optional: without the kernel
/// side there is nothing to resolve or count, and records pass through unchanged.
#[derive(Debug, Default)]
pub struct Enricher {
    resolver: Option<std::sync::Arc<CgroupResolver>>,
    counters: Option<CounterWriter>,
    attribution: AttributionSettings,
    /// Whether a counter update already failed (logged once, then counted silently).
    counter_failed: bool,
    /// Counter deltas gathered over one batch, written by `flush_counters` with one map update
    /// per model and cgroup instead of one per record.
    pending_models: HashMap<String, tollgate_common::Usage>,
    pending_cgroups: HashMap<u64, tollgate_common::Usage>,
    pending_keys: HashMap<u64, tollgate_common::Usage>,
    /// Per target, by provider then model: requests served, prefix hits, matched bytes
    /// (`tg_sched`, `/metrics`, keyed `provider/model` there). Two levels so a record is
    /// counted by looking up its two names: a `provider/model` key built per record was a
    /// `format!` and an allocation for every row the writer takes.
    pending_targets: HashMap<String, HashMap<String, [u64; 3]>>,
    totals: Option<std::sync::Arc<crate::telemetry::sched::TargetTotals>>,
}

/// `map`'s value for `key`, inserted empty if absent; the key is copied only then (`entry`
/// would copy it on every call).
fn slot<'m, V: Default>(map: &'m mut HashMap<String, V>, key: &str) -> &'m mut V {
    if !map.contains_key(key) {
        map.insert(key.to_string(), V::default());
    }
    map.get_mut(key).expect("the key was inserted above")
}

fn add(into: &mut tollgate_common::Usage, d: &tollgate_common::Usage) {
    into.input_tokens += d.input_tokens;
    into.cached_tokens += d.cached_tokens;
    into.output_tokens += d.output_tokens;
    into.requests += d.requests;
    into.cost_micro_usd += d.cost_micro_usd;
}

impl Enricher {
    pub fn new(
        resolver: Option<std::sync::Arc<CgroupResolver>>,
        counters: Option<CounterWriter>,
        attribution: AttributionSettings,
    ) -> Self {
        Enricher {
            resolver,
            counters,
            attribution,
            counter_failed: false,
            pending_models: HashMap::new(),
            pending_cgroups: HashMap::new(),
            pending_keys: HashMap::new(),
            pending_targets: HashMap::new(),
            totals: None,
        }
    }

    /// Also keeps per-target totals for `/metrics`.
    pub fn with_totals(
        mut self,
        totals: std::sync::Arc<crate::telemetry::sched::TargetTotals>,
    ) -> Self {
        self.totals = Some(totals);
        self
    }

    /// Resolves the cgroup, applies the attribution rules, and adds to the node counters.
    pub fn apply(&mut self, r: &mut UsageRecord) {
        if let Some(conn) = r.conn.clone() {
            if let Some(resolver) = &self.resolver {
                r.cgroup = resolver.resolve(conn.cgroup_id);
            }
            let cg = r.cgroup.as_deref();
            let facts = KernelFacts {
                cgroup_path: cg.map(|c| c.path.as_str()),
                comm: Some(conn.comm.as_str()),
                container_id: cg.and_then(|c| c.identity.container_id.as_deref()),
                pod_uid: cg.and_then(|c| c.identity.pod_uid.as_deref()),
            };
            if let Some(rule) = self.attribution.rule_for(&facts) {
                r.identity.fill_missing_from(&rule.fills);
            }
        }
        self.count(r);
    }

    fn count(&mut self, r: &UsageRecord) {
        if self.counters.is_none() && self.totals.is_none() {
            return;
        }
        if let (Some(provider), Some(model), true) = (&r.provider, &r.served_model, r.status < 500)
        {
            let t = slot(slot(&mut self.pending_targets, provider), model);
            t[0] += 1;
            t[1] += u64::from(r.prefix_bytes > 0);
            t[2] += r.prefix_bytes;
        }
        if self.counters.is_none() {
            return;
        }
        let delta = tollgate_common::Usage {
            input_tokens: r.usage.input_tokens,
            cached_tokens: r.usage.cached_tokens,
            output_tokens: r.usage.output_tokens,
            requests: 1,
            cost_micro_usd: r.cost_micro_usd,
        };
        if let Some(model) = &r.requested_model {
            match self.pending_models.get_mut(model) {
                Some(u) => add(u, &delta),
                None => {
                    self.pending_models.insert(model.clone(), delta);
                }
            }
        }
        if let Some(conn) = &r.conn {
            add(
                self.pending_cgroups.entry(conn.cgroup_id).or_default(),
                &delta,
            );
        }
        if let Some(key) = &r.key_id {
            add(
                self.pending_keys
                    .entry(crate::governance::keys::counter_id(key))
                    .or_default(),
                &delta,
            );
        }
    }

    /// Writes the counter deltas gathered since the last call (one map update per key).
    pub fn flush_counters(&mut self) {
        let mut result = Ok(());
        for (provider, models) in self.pending_targets.drain() {
            for (model, delta) in models {
                let target = format!("{provider}/{model}");
                if let Some(totals) = &self.totals {
                    totals.add(&target, delta);
                }
                if let Some(counters) = &self.counters {
                    let [routed, hits, bytes] = delta;
                    result = result.and(counters.add_target_routing(&target, routed, hits, bytes));
                }
            }
        }
        if let Some(counters) = &self.counters {
            for (model, delta) in self.pending_models.drain() {
                result = result.and(counters.add_model_usage(&model, &delta));
            }
            for (cgroup, delta) in self.pending_cgroups.drain() {
                result = result.and(counters.add_cgroup_usage(cgroup, &delta));
            }
            for (key, delta) in self.pending_keys.drain() {
                result = result.and(counters.add_key_usage(key, &delta));
            }
        }
        if let Err(e) = result {
            if !self.counter_failed {
                tracing::warn!(error = %e, "updating the node counters failed (logged once)");
                self.counter_failed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Anonymous, AttributionRule, Glob};
    use crate::identity::Identity;
    use crate::kernel::ConnAttribution;
    use std::sync::Arc;

    fn conn(comm: &str, cgroup_id: u64) -> Arc<ConnAttribution> {
        Arc::new(ConnAttribution {
            pid: 7,
            tgid: 7,
            uid: 0,
            gid: 0,
            comm: comm.into(),
            cgroup_id,
            original_dst: None,
            connect_ns: 0,
        })
    }

    fn settings(rules: Vec<AttributionRule>) -> AttributionSettings {
        AttributionSettings {
            anonymous: Anonymous::AttributeByKernel,
            rules,
        }
    }

    #[test]
    fn headers_win_and_rules_fill_the_rest() {
        let rule = AttributionRule {
            comm: Some(Glob::new("python*")),
            fills: Identity {
                team: Some("batch".into()),
                project: Some("nightly".into()),
                ..Identity::default()
            },
            ..AttributionRule::default()
        };
        let mut e = Enricher::new(None, None, settings(vec![rule]));
        let mut r = UsageRecord {
            conn: Some(conn("python3", 1)),
            ..UsageRecord::default()
        };
        r.identity.team = Some("from-header".into());
        e.apply(&mut r);
        assert_eq!(r.identity.team.as_deref(), Some("from-header"));
        assert_eq!(r.identity.project.as_deref(), Some("nightly"));

        // No kernel attribution (a remote client): nothing to match.
        let mut r = UsageRecord::default();
        e.apply(&mut r);
        assert_eq!(r.identity, Identity::default());
        // Another process: no rule matches.
        let mut r = UsageRecord {
            conn: Some(conn("curl", 1)),
            ..UsageRecord::default()
        };
        e.apply(&mut r);
        assert_eq!(r.identity, Identity::default());
    }

    /// Per-target totals add up by provider and model, across batches, and skip records the
    /// target failed (status 500 and up) or that no target served.
    #[test]
    fn target_totals_add_up_per_provider_and_model() {
        let totals = Arc::new(crate::telemetry::sched::TargetTotals::default());
        let mut e = Enricher::new(None, None, settings(vec![])).with_totals(totals.clone());
        let served = |provider: &str, model: &str, status: u16, prefix_bytes: u64| UsageRecord {
            provider: Some(provider.into()),
            served_model: Some(model.into()),
            status,
            prefix_bytes,
            ..UsageRecord::default()
        };
        for mut r in [
            served("a", "m", 200, 10),
            served("a", "m", 200, 0),
            served("a", "n", 200, 5),
            served("b", "m", 200, 0),
            served("b", "m", 503, 7),
            UsageRecord::default(),
        ] {
            e.apply(&mut r);
        }
        e.flush_counters();
        let mut r = served("a", "m", 200, 1);
        e.apply(&mut r);
        e.flush_counters();
        let mut text = String::new();
        totals.render(&mut text);
        for line in [
            "tollgate_target_requests_total{target=\"a/m\"} 3",
            "tollgate_target_requests_total{target=\"a/n\"} 1",
            "tollgate_target_requests_total{target=\"b/m\"} 1",
            "tollgate_target_prefix_hits_total{target=\"a/m\"} 2",
            "tollgate_target_prefix_hits_total{target=\"b/m\"} 0",
            "tollgate_target_prefix_bytes_total{target=\"a/m\"} 11",
            "tollgate_target_prefix_bytes_total{target=\"a/n\"} 5",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert_eq!(text.lines().filter(|l| l.contains("{target=")).count(), 9);
    }

    #[test]
    fn cgroup_rules_use_the_resolved_path() {
        let base = std::env::temp_dir().join(format!("tg-enrich-{}", std::process::id()));
        let leaf = base.join("system.slice/batch-42.scope");
        std::fs::create_dir_all(&leaf).unwrap_or_else(|e| panic!("{e}"));
        let id = crate::kernel::cgroup::cgroup_id_of(&leaf).unwrap_or_else(|e| panic!("{e}"));
        let rule = AttributionRule {
            cgroup: Some(Glob::new("/system.slice/batch-*.scope")),
            fills: Identity {
                team: Some("batch".into()),
                ..Identity::default()
            },
            ..AttributionRule::default()
        };
        let mut e = Enricher::new(
            Some(std::sync::Arc::new(CgroupResolver::new(&base))),
            None,
            settings(vec![rule]),
        );
        let mut r = UsageRecord {
            conn: Some(conn("sh", id)),
            ..UsageRecord::default()
        };
        e.apply(&mut r);
        assert_eq!(
            r.cgroup.as_deref().map(|c| c.path.as_str()),
            Some("/system.slice/batch-42.scope")
        );
        assert_eq!(r.identity.team.as_deref(), Some("batch"));
        let _ = std::fs::remove_dir_all(&base);
    }
}
