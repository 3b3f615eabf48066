//! The configuration a request runs on: one immutable [`Snapshot`] (config, per-provider runtime
//! state, metric label ids) published through `ArcSwap` and loaded once per request. A reload
//! builds a new snapshot and swaps it in; requests in flight keep the one they started with.
//!
//! Providers get a stable id (`ProviderRuntime::id`) that survives reloads as long as their
//! connection definition (name, kind, host, port, TLS, CA) is unchanged; per-core state (pools,
//! health) is keyed by it, so a reload keeps warm connections to unchanged providers and never
//! reuses a connection to an address that changed. The runtime object itself (TLS connector,
//! resolved addresses) is shared between snapshots while unchanged. Metric label ids come from
//! append-only tables, so a series keeps its label across reloads.
//! Not on the hot path, except `Shared::snapshot.load_full()` (one atomic) per request.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, Provider};
use crate::phase::route::queue::ModelGate;
use crate::telemetry::metrics::Metrics;
use crate::upstream::breaker::Breaker;
use crate::upstream::tls::{self, Tls};

/// What a worker needs to reach one provider, shared by every snapshot that has it unchanged.
pub struct ProviderRuntime {
    /// Stable per connection definition; keys per-core pools and health.
    pub id: usize,
    /// The provider's metric label id (by name).
    pub label: u32,
    pub tls: Option<Tls>,
    /// Current addresses, refreshed by the upstream thread (workers never resolve).
    pub addrs: ArcSwap<Vec<SocketAddr>>,
    /// False while the provider's active health check fails (`upstream/health.rs`); routing
    /// passes its targets over. Always true without a check.
    pub healthy: std::sync::atomic::AtomicBool,
}

impl ProviderRuntime {
    /// Re-resolves the provider's host; keeps the old addresses when resolution fails.
    pub fn refresh(&self, p: &Provider) {
        match (p.host.as_str(), p.port).to_socket_addrs() {
            Ok(list) => {
                let list: Vec<SocketAddr> = list.collect();
                if !list.is_empty() && **self.addrs.load() != list {
                    self.addrs.store(Arc::new(list));
                }
            }
            Err(e) => {
                tracing::warn!(provider = %p.name, host = %p.host, error = %e, "cannot resolve provider")
            }
        }
    }
}

/// One immutable view of the configuration, with everything derived from it.
pub struct Snapshot {
    /// 1 at start, +1 per applied reload.
    pub generation: u64,
    pub cfg: Arc<Config>,
    /// By `cfg.providers` index.
    pub providers: Vec<Arc<ProviderRuntime>>,
    /// Metric label id of each model, by `cfg.models` index.
    pub model_labels: Vec<u32>,
    /// The live counters of `cfg.governance`'s rate limits and budgets.
    pub governance: Arc<crate::governance::Bound>,
    /// The circuit breaker of each model target, by `cfg.models` and target index. Shared by
    /// every model with the same target, and kept across reloads while the target exists.
    pub breakers: Vec<Vec<Arc<TargetBreaker>>>,
    /// The slots and fair queue of each model whose targets all have a `max_in_flight`, by
    /// `cfg.models` index; kept across reloads while the model's targets and caps are the same.
    pub gates: Vec<Option<Arc<ModelGate>>>,
}

/// A target's breaker and what names it in metrics and `/readyz`.
pub struct TargetBreaker {
    /// `provider/upstream_model`.
    pub label: String,
    pub breaker: Breaker,
}

impl Snapshot {
    /// The largest provider id in use, plus one (sizes per-core tables).
    pub fn provider_slots(&self) -> usize {
        self.providers.iter().map(|p| p.id + 1).max().unwrap_or(0)
    }
}

/// Why a snapshot could not be built from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("provider `{provider}`: TLS settings: {detail}")]
    Tls { provider: String, detail: String },
}

/// Provider ids by connection definition; lives as long as the agent, owned by whoever builds
/// snapshots (start, then the reloader).
#[derive(Default)]
pub struct Registry {
    ids: HashMap<String, usize>,
    /// The runtime of each definition in the latest snapshot, reused while unchanged.
    live: HashMap<usize, Arc<ProviderRuntime>>,
    /// Breakers by provider id and upstream model.
    breakers: HashMap<(usize, String), Arc<TargetBreaker>>,
    /// Gates by model name.
    gates: HashMap<String, Arc<ModelGate>>,
}

/// What makes two provider entries the same connection target.
fn signature(p: &Provider) -> String {
    format!(
        "{}|{:?}|{}|{}|{}|{:?}|{}",
        p.name, p.kind, p.host, p.port, p.tls, p.ca_file, p.implicit
    )
}

impl Registry {
    /// Builds the snapshot for `cfg`: reuses the runtime of unchanged providers, resolves and
    /// builds TLS for new ones (blocking: call off the workers).
    pub fn build(
        &mut self,
        cfg: Arc<Config>,
        generation: u64,
        metrics: &Metrics,
        governor: &crate::governance::Governor,
    ) -> Result<Snapshot, SnapshotError> {
        let mut providers = Vec::with_capacity(cfg.providers.len());
        let mut live = HashMap::new();
        for p in &cfg.providers {
            let next_id = self.ids.len();
            let id = *self.ids.entry(signature(p)).or_insert(next_id);
            let rt = match self.live.get(&id) {
                Some(rt) => rt.clone(),
                None => {
                    let tls = if p.tls {
                        Some(tls::for_provider(p).map_err(|detail| SnapshotError::Tls {
                            provider: p.name.clone(),
                            detail,
                        })?)
                    } else {
                        None
                    };
                    let rt = Arc::new(ProviderRuntime {
                        id,
                        label: metrics.provider_label(&p.name),
                        tls,
                        addrs: ArcSwap::from_pointee(Vec::new()),
                        healthy: std::sync::atomic::AtomicBool::new(true),
                    });
                    rt.refresh(p);
                    rt
                }
            };
            live.insert(id, rt.clone());
            providers.push(rt);
        }
        self.live = live;
        let model_labels = cfg
            .models
            .iter()
            .map(|m| metrics.model_label(&m.name))
            .collect();
        let governance = Arc::new(governor.bind(&cfg.governance));
        let mut breakers_now = HashMap::new();
        let breakers: Vec<Vec<Arc<TargetBreaker>>> = cfg
            .models
            .iter()
            .map(|m| {
                m.targets
                    .iter()
                    .map(|t| {
                        let key = (providers[t.provider].id, t.upstream_model.clone());
                        let b = self.breakers.get(&key).cloned().unwrap_or_else(|| {
                            Arc::new(TargetBreaker {
                                label: format!(
                                    "{}/{}",
                                    cfg.providers[t.provider].name, t.upstream_model
                                ),
                                breaker: Breaker::default(),
                            })
                        });
                        breakers_now.insert(key, b.clone());
                        b
                    })
                    .collect()
            })
            .collect();
        self.breakers = breakers_now;
        let gates = self.gates(&cfg, &breakers);
        Ok(Snapshot {
            generation,
            cfg,
            providers,
            model_labels,
            governance,
            breakers,
            gates,
        })
    }

    fn gates(
        &mut self,
        cfg: &Config,
        breakers: &[Vec<Arc<TargetBreaker>>],
    ) -> Vec<Option<Arc<ModelGate>>> {
        let mut now = HashMap::new();
        let gates = cfg
            .models
            .iter()
            .zip(breakers)
            .map(|(m, list)| {
                let labels: Vec<String> = list.iter().map(|b| b.label.clone()).collect();
                let signature = ModelGate::signature_of(m, &labels);
                let gate = match self.gates.get(&m.name) {
                    Some(g) if g.signature == signature => Some(g.clone()),
                    _ => ModelGate::for_model(m, &labels).map(Arc::new),
                }?;
                now.insert(m.name.clone(), gate.clone());
                Some(gate)
            })
            .collect();
        self.gates = now;
        gates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> Arc<Config> {
        Arc::new(Config::from_yaml(yaml, &|_| None).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn unchanged_providers_keep_their_id_and_runtime() {
        let metrics = Metrics::new(1, vec![], vec![]);
        let gov = crate::governance::Governor::for_tests();
        let mut reg = Registry::default();
        let a = reg
            .build(
                cfg("providers:\n  - {name: a, kind: openai, base_url: http://127.0.0.1:8001}\n  - {name: b, kind: openai, base_url: http://127.0.0.1:8002}\nmodels:\n  - {name: m, provider: a}\n"),
                1,
                &metrics,
                &gov,
            )
            .unwrap();
        // b moves to another port, c is new, a is unchanged (and listed second now).
        let b = reg
            .build(
                cfg("providers:\n  - {name: b, kind: openai, base_url: http://127.0.0.1:9002}\n  - {name: a, kind: openai, base_url: http://127.0.0.1:8001}\n  - {name: c, kind: openai, base_url: http://127.0.0.1:8003}\nmodels:\n  - {name: n, provider: c}\n  - {name: m, provider: a}\n"),
                2,
                &metrics,
                &gov,
            )
            .unwrap();
        assert!(Arc::ptr_eq(&a.providers[0], &b.providers[1]), "a is shared");
        assert_eq!(b.providers[1].id, a.providers[0].id);
        assert_ne!(
            b.providers[0].id, a.providers[1].id,
            "b's address changed: new id"
        );
        assert_eq!(
            b.providers[0].label, a.providers[1].label,
            "same name, same label"
        );
        assert_eq!(
            b.model_labels[1], a.model_labels[0],
            "model m keeps its label"
        );
        assert_eq!(b.provider_slots(), 4);
        assert_eq!(
            **b.providers[2].addrs.load(),
            vec!["127.0.0.1:8003".parse().unwrap()]
        );
    }
}
