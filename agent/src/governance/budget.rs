//! Budget counters: what a scope has spent (plus what running requests have reserved) in the
//! current calendar window, in tokens and in micro-USD. Lock-free: each amount shares one
//! `AtomicU64` with the index of the window it belongs to, so moving to a new window and
//! reserving in it are the same compare-and-swap (no reset race, no lock). A reservation only
//! succeeds if it fits under the limit, so concurrent requests can overshoot a budget only by
//! the difference between what they reserved and what they used.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of a word holding the amount; the rest hold the window index (low 24 bits of it:
/// 1900 years of hours).
const AMOUNT_BITS: u32 = 40;
const AMOUNT_MASK: u64 = (1 << AMOUNT_BITS) - 1;
const WINDOW_MASK: u64 = (1 << (64 - AMOUNT_BITS)) - 1;
/// The largest amount a window can hold: 1.1e12 tokens, or $1.1M in micro-USD.
pub const MAX_AMOUNT: u64 = AMOUNT_MASK;

fn pack(window: u64, amount: u64) -> u64 {
    ((window & WINDOW_MASK) << AMOUNT_BITS) | amount.min(AMOUNT_MASK)
}

fn unpack(word: u64) -> (u64, u64) {
    (word >> AMOUNT_BITS, word & AMOUNT_MASK)
}

/// One amount (tokens, or micro-USD) of one budget.
#[derive(Debug, Default)]
pub struct Meter(AtomicU64);

impl Meter {
    /// What has been charged in `window` (0 if the meter still holds an older window).
    pub fn used(&self, window: u64) -> u64 {
        let (w, amount) = unpack(self.0.load(Ordering::Acquire));
        if w == window & WINDOW_MASK {
            amount
        } else {
            0
        }
    }

    /// Adds `amount` if the total stays within `limit`; returns the new total, or the current
    /// total when it would not fit.
    pub fn try_reserve(&self, window: u64, amount: u64, limit: u64) -> Result<u64, u64> {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let (w, used) = unpack(cur);
            let used = if w == window & WINDOW_MASK { used } else { 0 };
            let total = used.saturating_add(amount);
            if total > limit {
                return Err(used);
            }
            match self.0.compare_exchange_weak(
                cur,
                pack(window, total),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(total),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Replaces a reservation of `reserved` by the actual `used`, in `window` only: once the
    /// window has moved on, the old window's spend no longer matters to the counter (the
    /// ledger still has it). Returns the new total in `window`.
    pub fn settle(&self, window: u64, reserved: u64, used: u64) -> u64 {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let (w, total) = unpack(cur);
            if w != window & WINDOW_MASK {
                return 0;
            }
            let next = total.saturating_sub(reserved).saturating_add(used);
            match self.0.compare_exchange_weak(
                cur,
                pack(window, next),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return next,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Sets the amount of `window` (a figure read from elsewhere: the cluster's spend).
    pub fn set(&self, window: u64, amount: u64) {
        self.0.store(pack(window, amount), Ordering::Release);
    }

    /// Adds `amount` spent in `window` (rebuilding from the ledger at start).
    pub fn add(&self, window: u64, amount: u64) {
        let _ = self.try_reserve(window, amount, u64::MAX);
    }
}

/// Cluster mode: what this agent may spend of a shared budget in a window — the leases it
/// drew from the cluster-wide total in Redis (`cluster/`), plus its local share while Redis is
/// away. Written by the cluster thread; read by admission, which reserves against
/// `min(limit, granted)`.
#[derive(Debug, Default)]
pub struct Lease {
    /// Whether this budget is leased (set by the cluster thread when it takes the budget on).
    pub shared: std::sync::atomic::AtomicBool,
    pub tokens: Meter,
    pub micro_usd: Meter,
    /// `window + 1` when the cluster had nothing more to lease in that window.
    pub exhausted: AtomicU64,
    /// Set by a request that found the lease too small; the cluster thread refills at once.
    pub starved: std::sync::atomic::AtomicBool,
    /// What every agent has spent in the window, as last read from Redis (once a second), for
    /// the budget views (`/metrics`, `/admin/keys/ID`).
    pub cluster_tokens: Meter,
    pub cluster_micro_usd: Meter,
}

impl Lease {
    pub fn is_shared(&self) -> bool {
        self.shared.load(Ordering::Acquire)
    }

    /// The cap in `window` for an amount with configured `limit`: the limit, or in cluster
    /// mode what was leased, whichever is lower.
    pub fn cap(&self, unit: &Meter, window: u64, limit: u64) -> u64 {
        if self.is_shared() {
            limit.min(unit.used(window))
        } else {
            limit
        }
    }

    /// Whether waiting for a refill can help: shared, and the cluster still had budget left.
    pub fn may_refill(&self, window: u64) -> bool {
        self.is_shared() && self.exhausted.load(Ordering::Acquire) != window + 1
    }
}

/// A budget's meters and the highest alert level already raised in a window.
#[derive(Debug, Default)]
pub struct BudgetState {
    pub tokens: Meter,
    pub micro_usd: Meter,
    pub lease: Lease,
    /// `window << 8 | alert level index + 1`, so an alert fires once per window.
    alerted: AtomicU64,
}

impl BudgetState {
    /// Claims alert level `level` (index into the budget's `alert_at`) for `window`; true for
    /// the one caller that should raise it.
    pub fn claim_alert(&self, window: u64, level: usize) -> bool {
        let want = (window << 8) | (level as u64 + 1);
        self.alerted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur < want).then_some(want)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_new_window_starts_from_zero_in_the_same_swap() {
        let m = Meter::default();
        assert_eq!(m.try_reserve(7, 60, 100), Ok(60));
        assert_eq!(m.try_reserve(7, 50, 100), Err(60));
        assert_eq!(m.used(7), 60);
        assert_eq!(m.used(8), 0);
        assert_eq!(m.try_reserve(8, 50, 100), Ok(50));
        // A request admitted in window 7 settles after the move: nothing changes in 8.
        assert_eq!(m.settle(7, 60, 10), 0);
        assert_eq!(m.used(8), 50);
        assert_eq!(m.settle(8, 50, 20), 20);
        assert_eq!(
            m.settle(8, 0, 30),
            50,
            "use beyond the reservation is charged"
        );
    }

    #[test]
    fn concurrent_reservations_never_pass_the_limit() {
        let m = Arc::new(Meter::default());
        let ok: u64 = (0..8)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    (0..1000)
                        .filter(|_| m.try_reserve(3, 7, 10_000).is_ok())
                        .count() as u64
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap_or(0))
            .sum();
        assert_eq!(ok, 10_000 / 7);
        assert_eq!(m.used(3), 7 * (10_000 / 7));
    }

    #[test]
    fn alerts_fire_once_per_level_and_window() {
        let s = BudgetState::default();
        assert!(s.claim_alert(5, 0));
        assert!(!s.claim_alert(5, 0));
        assert!(s.claim_alert(5, 1));
        assert!(!s.claim_alert(5, 0), "a lower level after a higher one");
        assert!(s.claim_alert(6, 0), "a new window");
    }
}
