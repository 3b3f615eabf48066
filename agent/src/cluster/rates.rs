//! Rate limits across the cluster. A rate limit is a flow, not a stock, so instead of leasing
//! units each agent admits a *share* of the cluster-wide rate — rate and burst alike
//! (`Gcra::set_share`) — and the shares follow demand: once a second every agent reports the
//! units it was asked for (admitted or not) to Redis and reads every other agent's report; its
//! share is its demand over the total, with a floor so an agent that falls quiet can still
//! admit its next request. Shares add up to 1, so the agents together admit at most the limit
//! per period, plus what a share change lets through while tokens already counted under the
//! old share drain (at most one period's burst of the share that changed). While Redis is
//! away the shares stay where they were.

use std::collections::HashMap;
use std::time::Instant;

use crate::governance::window::now_ms;
use crate::shared::Shared;

use super::store::{Store, StoreError, DEMAND_STALE_MS};

/// The least share an agent that reported gets, as a fraction of an even split.
const FLOOR: f64 = 0.05;

/// This agent's share from every agent's `(node, demand, reported at)`.
pub fn share(me: &str, reports: &[(String, f64, i64)], now_ms: i64) -> f64 {
    let fresh: Vec<&(String, f64, i64)> = reports
        .iter()
        .filter(|r| now_ms - r.2 <= DEMAND_STALE_MS)
        .collect();
    if fresh.len() <= 1 {
        return 1.0;
    }
    let total: f64 = fresh.iter().map(|r| r.1.max(0.0)).sum();
    let floor = FLOOR * total.max(1.0) / fresh.len() as f64;
    let sum: f64 = fresh.iter().map(|r| r.1.max(floor)).sum();
    let mine = fresh
        .iter()
        .find(|r| r.0 == me)
        .map_or(floor, |r| r.1.max(floor));
    (mine / sum).clamp(0.0, 1.0)
}

/// Smoothed demand per limiter, between syncs.
#[derive(Default)]
pub struct Rates {
    demand: HashMap<String, f64>,
    last: Option<Instant>,
}

impl Rates {
    /// Reports every shared rate limit's demand and sets this agent's shares.
    pub fn sync(
        &mut self,
        shared: &Shared,
        node: &str,
        store: &mut Store,
    ) -> Result<(), StoreError> {
        let snap = shared.snapshot.load();
        let now = Instant::now();
        let dt = self
            .last
            .map_or(1.0, |t| now.duration_since(t).as_secs_f64().max(1e-3));
        self.last = Some(now);
        let ms = now_ms();
        let mut limiters: Vec<(String, std::sync::Arc<crate::governance::gcra::Gcra>)> = Vec::new();
        for (rule, list) in snap
            .cfg
            .governance
            .rate_limits
            .iter()
            .zip(snap.governance.rates.iter())
        {
            if !rule.shared {
                continue;
            }
            for (rate, g) in rule.rates.iter().zip(list) {
                limiters.push((rule.rate_id(rate), g.clone()));
            }
        }
        // The keys' own rpm and tpm (a key's id is the same on every agent once keys are shared).
        for k in shared.governor.keys.load().entries() {
            for (what, g) in [("rpm", &k.state.rpm), ("tpm", &k.state.tpm)] {
                if let Some(g) = g {
                    limiters.push((format!("key|{}|{what}|{}", k.id, g.amount), g.clone()));
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (id, g) in limiters {
            let asked = g.take_demand() as f64 / dt;
            let d = self.demand.entry(id.clone()).or_insert(asked);
            *d = 0.5 * *d + 0.5 * asked;
            seen.insert(id.clone());
            // A limiter nobody here has used lately is not synced (thousands of idle keys would
            // cost a round trip each): it keeps its share until it is used again.
            if *d < 0.01 && asked == 0.0 && id.starts_with("key|") {
                continue;
            }
            let key = format!("tollgate:rate:{{{id}}}");
            let reports = store.demand(&key, *d, ms)?;
            g.set_share(share(node, &reports, ms));
        }
        self.demand.retain(|id, _| seen.contains(id));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_demand_add_up_to_one_and_keep_a_floor() {
        let now = 100_000;
        let r = |n: &str, d: f64| (n.to_string(), d, now);
        let reports = vec![r("a", 300.0), r("b", 100.0), r("c", 0.0)];
        let shares: Vec<f64> = ["a", "b", "c"]
            .iter()
            .map(|n| share(n, &reports, now))
            .collect();
        assert!(
            (shares.iter().sum::<f64>() - 1.0).abs() < 1e-9,
            "{shares:?}"
        );
        assert!(shares[0] > 2.5 * shares[1], "{shares:?}");
        assert!(shares[2] > 0.0 && shares[2] < 0.05, "{shares:?}");
        // Alone (or the others stale): the whole limit.
        assert_eq!(share("a", &[r("a", 5.0)], now), 1.0);
        let stale = vec![r("a", 5.0), ("b".into(), 500.0, now - DEMAND_STALE_MS - 1)];
        assert_eq!(share("a", &stale, now), 1.0);
        // Nobody asking: an even split.
        let idle = vec![r("a", 0.0), r("b", 0.0)];
        assert!((share("a", &idle, now) - 0.5).abs() < 1e-9);
    }
}
