//! Writes the scheduler's figures to the pinned `tg_sched` and `tg_queue` maps once a second
//! (telemetry thread), so a scheduler or an operator's tool on the node reads them with bpftool
//! and no API: per target, requests in flight against its cap, requests waiting for its model
//! and the prefix index's size (the totals — requests routed, prefix hits, matched bytes — are
//! added by the ledger writer as requests settle); per gated model and tenant, requests waiting
//! by class and the tenant's virtual token counter. Tenants the queue forgot are removed.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use crate::kernel::counters::{CounterWriter, SchedGauges};
use crate::shared::Shared;

pub struct SchedMaps {
    counters: CounterWriter,
    /// (model, tenant) written last time.
    tenants: HashSet<(String, String)>,
    warned: bool,
}

impl SchedMaps {
    pub fn new(counters: CounterWriter) -> Self {
        SchedMaps {
            counters,
            tenants: HashSet::new(),
            warned: false,
        }
    }

    pub fn write(&mut self, shared: &Shared) {
        let snap = shared.snapshot.load();
        let index_blocks: usize = shared
            .prefix_indexes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|i| {
                i.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            })
            .sum();
        let mut result = Ok(());
        let mut seen = HashSet::new();
        for (m, model) in snap.cfg.models.iter().enumerate() {
            let gate = snap.gates.get(m).and_then(Option::as_ref);
            let waiting = gate.map_or(0, |g| g.load().0);
            for (t, tb) in snap.breakers[m].iter().enumerate() {
                let (in_flight, max_in_flight) = gate.map_or((0, 0), |g| g.target_load(t));
                let g = SchedGauges {
                    in_flight,
                    max_in_flight,
                    waiting,
                    index_blocks: index_blocks.min(u32::MAX as usize) as u32,
                };
                result = result.and(self.counters.set_target_gauges(&tb.label, g));
            }
            let Some(gate) = gate else { continue };
            let waiting = gate.waiting_by_tenant();
            for (tenant, served) in gate.served_by_tenant() {
                let count = |class: &str| {
                    waiting
                        .iter()
                        .filter(|(t, c, _)| *t == tenant && *c == class)
                        .map(|(_, _, n)| *n as u32)
                        .sum()
                };
                let stats = tollgate_common::QueueStats {
                    waiting_interactive: count("interactive"),
                    waiting_batch: count("batch"),
                    served_tokens: served,
                    updated_unix_ms: 0,
                };
                result = result.and(self.counters.set_queue(&model.name, &tenant, stats));
                seen.insert((model.name.clone(), tenant));
            }
        }
        for (model, tenant) in self.tenants.difference(&seen) {
            result = result.and(self.counters.remove_queue(model, tenant));
        }
        self.tenants = seen;
        if let Err(e) = result {
            if !self.warned {
                tracing::warn!("writing tg_sched / tg_queue: {e} (logged once)");
                self.warned = true;
            }
        }
    }
}

/// Targets tracked at most (an intercepted request passes its own model name through, so the
/// set is not bounded by the configuration).
const MAX_TARGETS: usize = 4096;

/// Requests served, prefix hits and matched bytes per target (`provider/model`), for
/// `/metrics`: the replica's prefix hit ratio is hits / requests. Written by the ledger writer
/// once per batch, read at scrape.
#[derive(Debug, Default)]
pub struct TargetTotals(Mutex<BTreeMap<String, [u64; 3]>>);

impl TargetTotals {
    pub fn add(&self, target: &str, delta: [u64; 3]) {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !m.contains_key(target) && m.len() >= MAX_TARGETS {
            return;
        }
        let e = m.entry(target.to_string()).or_default();
        for (a, d) in e.iter_mut().zip(delta) {
            *a = a.saturating_add(d);
        }
    }

    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.is_empty() {
            return;
        }
        for (i, (name, help)) in [
            (
                "tollgate_target_requests_total",
                "Requests each target served (settled, status below 500).",
            ),
            (
                "tollgate_target_prefix_hits_total",
                "Of those, requests sent where their prompt prefix had recently been sent.",
            ),
            (
                "tollgate_target_prefix_bytes_total",
                "Matched prompt bytes over those requests.",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (target, v) in m.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{target=\"{}\"}} {}",
                    crate::telemetry::metrics::escape(target),
                    v[i]
                );
            }
        }
    }
}
