//! A request's reservation: what admission took from each budget and token limit, given back
//! and replaced by the actual use when the request's usage is final: on the request's worker
//! when the provider reported it (the counters' cache lines stay there), on the estimator
//! thread once an estimate is counted. Never on the ledger writer, which runs in the idle CPU
//! class and may wait up to a second on a busy node. Dropping a `Hold` that was never settled releases it (a request that
//! failed before its record was written reserved nothing for good).

use std::sync::Arc;

use super::budget::BudgetState;
use super::gcra::{now_ns, Gcra};
use super::loopguard::SessionState;
use super::policy::RateKind;
use super::window::Window;
use crate::metering::Usage;

/// What a budget is, for alerts and errors (one per rule, shared by its holds).
#[derive(Debug)]
pub struct BudgetInfo {
    /// `team=search/month`, or the key's id.
    pub name: String,
    pub scope: String,
    pub window: Window,
    pub alert_at: Vec<f64>,
    /// The configured limits (exceptions may raise them per request), for `/metrics`.
    pub limit_tokens: Option<u64>,
    pub limit_micro_usd: Option<u64>,
}

#[derive(Debug)]
pub struct HeldBudget {
    pub state: Arc<BudgetState>,
    pub info: Arc<BudgetInfo>,
    /// The window the reservation was made in.
    pub window: u64,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    /// Limits in force for this request (exceptions included).
    pub limit_tokens: Option<u64>,
    pub limit_micro_usd: Option<u64>,
    pub tokens: u64,
    pub micro_usd: u64,
}

#[derive(Debug)]
pub struct HeldRate {
    pub gcra: Arc<Gcra>,
    pub kind: RateKind,
    pub reserved: u64,
}

/// A budget crossed one of its alert fractions.
#[derive(Debug, Clone)]
pub struct Alert {
    pub budget: String,
    pub scope: String,
    pub threshold: f64,
    pub used_tokens: u64,
    pub used_micro_usd: u64,
    pub limit_tokens: Option<u64>,
    pub limit_micro_usd: Option<u64>,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
}

#[derive(Debug, Default)]
pub struct Hold {
    pub budgets: Vec<HeldBudget>,
    pub rates: Vec<HeldRate>,
    /// The loop guard's session, told the request's tokens at settle.
    pub session: Option<Arc<SessionState>>,
    settled: bool,
}

/// A copy never carries the reservation (records are cloned for the journal and tests; only
/// the original settles).
impl Clone for Hold {
    fn clone(&self) -> Self {
        Hold::default()
    }
}

impl Hold {
    pub fn is_empty(&self) -> bool {
        self.budgets.is_empty() && self.rates.is_empty() && self.session.is_none()
    }

    /// Input and output tokens reserved (for the reservation's record and tests).
    pub fn reserved_tokens(&self) -> u64 {
        self.budgets.iter().map(|b| b.tokens).max().unwrap_or(0)
    }

    /// A hold on the same budgets and token rate limits that reserves nothing: settled with
    /// the use of a call made on the request's behalf (a guard model's check, a semantic-cache
    /// embedding), it charges that use where the request's own would go.
    pub fn companion(&self) -> Hold {
        Hold {
            budgets: self
                .budgets
                .iter()
                .map(|b| HeldBudget {
                    state: b.state.clone(),
                    info: b.info.clone(),
                    tokens: 0,
                    micro_usd: 0,
                    ..*b
                })
                .collect(),
            rates: self
                .rates
                .iter()
                .filter(|r| r.kind != RateKind::Requests)
                .map(|r| HeldRate {
                    gcra: r.gcra.clone(),
                    kind: r.kind,
                    reserved: 0,
                })
                .collect(),
            session: None,
            settled: false,
        }
    }

    /// Replaces every reservation by the actual use; returns the alerts this use raised.
    pub fn settle(&mut self, usage: &Usage, micro_usd: u64) -> Vec<Alert> {
        self.settled = true;
        let mut alerts = Vec::new();
        let tokens = usage.input_tokens.saturating_add(usage.output_tokens);
        for b in self.budgets.drain(..) {
            let used_t = b.state.tokens.settle(b.window, b.tokens, tokens);
            let used_c = b.state.micro_usd.settle(b.window, b.micro_usd, micro_usd);
            let frac = |used: u64, limit: Option<u64>| {
                limit.map_or(0.0, |l| if l == 0 { 1.0 } else { used as f64 / l as f64 })
            };
            let fraction = frac(used_t, b.limit_tokens).max(frac(used_c, b.limit_micro_usd));
            let level = b.info.alert_at.iter().rposition(|a| fraction >= *a);
            if let Some(level) = level {
                if b.state.claim_alert(b.window, level) {
                    alerts.push(Alert {
                        budget: b.info.name.clone(),
                        scope: b.info.scope.clone(),
                        threshold: b.info.alert_at[level],
                        used_tokens: used_t,
                        used_micro_usd: used_c,
                        limit_tokens: b.limit_tokens,
                        limit_micro_usd: b.limit_micro_usd,
                        window_start_ms: b.window_start_ms,
                        window_end_ms: b.window_end_ms,
                    });
                }
            }
        }
        // Read when a rate is charged, not for every hold (most hold no rate).
        let mut now = None;
        for r in self.rates.drain(..) {
            let used = match r.kind {
                RateKind::Requests => continue,
                RateKind::Tokens => tokens,
                RateKind::InputTokens => usage.input_tokens,
                RateKind::OutputTokens => usage.output_tokens,
            };
            if used < r.reserved {
                r.gcra.refund(r.reserved - used);
            } else if used > r.reserved {
                r.gcra
                    .charge(used - r.reserved, *now.get_or_insert_with(now_ns));
            }
        }
        alerts
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.settled {
            let _ = self.settle(&Usage::default(), 0);
        }
    }
}
