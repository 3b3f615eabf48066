//! Rate limits as a lock-free GCRA (generic cell rate algorithm): one `AtomicU64` per limit
//! holding the theoretical arrival time. "N per period" admits bursts of up to N and refills
//! continuously; a request of cost `c` (1 for request limits, its tokens for token limits)
//! moves the arrival time by `c × period / N`. Settling a token reservation gives back what
//! was not used. No lock; contention is one CAS per limit per request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Nanoseconds on one monotonic clock shared by all limiters (process start = 0, offset so
/// that an empty limiter's arrival time, 0, is always in the past).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_nanos() as u64 + HOUR_NS
}

const HOUR_NS: u64 = 3_600_000_000_000;

/// One "amount per period" limit.
#[derive(Debug)]
pub struct Gcra {
    tat: AtomicU64,
    /// Nanoseconds one unit occupies (`period / (amount × share)`), at least 1.
    unit_ns: AtomicU64,
    /// `period / amount`: the unit at a share of 1.
    base_unit_ns: u64,
    period_ns: u64,
    pub amount: u64,
    /// Cluster mode: the limit is cluster-wide and this agent admits its share of it
    /// (`cluster/rates.rs` sets it from every agent's demand); units asked for are counted.
    shared: AtomicBool,
    demand: AtomicU64,
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted; `remaining` units are left in the current period.
    Allowed { remaining: u64, reset: Duration },
    /// Refused; try again after `retry_after`.
    Denied { retry_after: Duration },
}

impl Gcra {
    pub fn new(amount: u64, period: Duration) -> Gcra {
        let period_ns = period.as_nanos().max(1) as u64;
        let amount = amount.max(1);
        let unit = (period_ns / amount).max(1);
        Gcra {
            tat: AtomicU64::new(0),
            unit_ns: AtomicU64::new(unit),
            base_unit_ns: unit,
            period_ns,
            amount,
            shared: AtomicBool::new(false),
            demand: AtomicU64::new(0),
        }
    }

    fn unit_ns(&self) -> u64 {
        self.unit_ns.load(Ordering::Relaxed)
    }

    /// Cluster mode: admit `share` (0..=1) of the limit from now on, rate and burst alike.
    pub fn set_share(&self, share: f64) {
        self.shared.store(true, Ordering::Relaxed);
        let share = share.clamp(1e-6, 1.0);
        let unit = ((self.base_unit_ns as f64 / share) as u64).max(1);
        self.unit_ns.store(unit, Ordering::Relaxed);
    }

    /// The share in force (1 when alone).
    pub fn share(&self) -> f64 {
        self.base_unit_ns as f64 / self.unit_ns() as f64
    }

    /// Units asked for since the last call (admitted or not), counted in cluster mode only.
    pub fn take_demand(&self) -> u64 {
        self.demand.swap(0, Ordering::Relaxed)
    }

    /// Takes `cost` units if they fit.
    pub fn check(&self, cost: u64, now: u64) -> Verdict {
        if self.shared.load(Ordering::Relaxed) {
            self.demand.fetch_add(cost, Ordering::Relaxed);
        }
        let unit_ns = self.unit_ns();
        let inc = cost.saturating_mul(unit_ns);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(now).saturating_add(inc);
            let ahead = new_tat - now;
            if ahead > self.period_ns {
                // More than this limit can ever admit at once still gets a finite answer: the
                // time until the whole period is free.
                let wait = (ahead - self.period_ns).min(self.period_ns);
                return Verdict::Denied {
                    retry_after: Duration::from_nanos(wait),
                };
            }
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Verdict::Allowed {
                        remaining: (self.period_ns - ahead) / unit_ns,
                        reset: Duration::from_nanos(ahead),
                    }
                }
                Err(actual) => tat = actual,
            }
        }
    }

    /// Gives back `units` taken by an earlier check (a reservation larger than the use).
    pub fn refund(&self, units: u64) {
        let dec = units.saturating_mul(self.unit_ns());
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(dec))
            });
    }

    /// Takes `units` more without checking (use beyond the reservation is still counted).
    pub fn charge(&self, units: u64, now: u64) {
        let inc = units.saturating_mul(self.unit_ns());
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| {
                Some(t.max(now).saturating_add(inc))
            });
    }

    /// What is left now, without taking anything.
    pub fn remaining(&self, now: u64) -> u64 {
        let ahead = self.tat.load(Ordering::Relaxed).saturating_sub(now);
        self.period_ns.saturating_sub(ahead) / self.unit_ns()
    }

    pub fn period(&self) -> Duration {
        Duration::from_nanos(self.period_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn admits_a_burst_of_n_then_refills() {
        let g = Gcra::new(3, Duration::from_secs(60));
        let t = 100 * SEC;
        for left in [2, 1, 0] {
            match g.check(1, t) {
                Verdict::Allowed { remaining, .. } => assert_eq!(remaining, left),
                v => panic!("{v:?}"),
            }
        }
        match g.check(1, t) {
            Verdict::Denied { retry_after } => assert_eq!(retry_after, Duration::from_secs(20)),
            v => panic!("{v:?}"),
        }
        assert!(matches!(g.check(1, t + 20 * SEC), Verdict::Allowed { .. }));
        assert!(matches!(g.check(1, t + 20 * SEC), Verdict::Denied { .. }));
    }

    #[test]
    fn token_costs_and_refunds() {
        let g = Gcra::new(1000, Duration::from_secs(60));
        let t = 100 * SEC;
        assert!(matches!(
            g.check(800, t),
            Verdict::Allowed { remaining: 200, .. }
        ));
        assert!(matches!(g.check(300, t), Verdict::Denied { .. }));
        g.refund(500);
        assert_eq!(g.remaining(t), 700);
        assert!(matches!(
            g.check(300, t),
            Verdict::Allowed { remaining: 400, .. }
        ));
        g.charge(100, t);
        assert_eq!(g.remaining(t), 300);
        // A single request above the whole limit is refused with a bounded wait.
        match Gcra::new(10, Duration::from_secs(1)).check(11, t) {
            Verdict::Denied { retry_after } => assert!(retry_after <= Duration::from_secs(1)),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_share_scales_rate_and_burst() {
        let g = Gcra::new(100, Duration::from_secs(60));
        let t = 100 * SEC;
        g.set_share(0.25);
        assert!((g.share() - 0.25).abs() < 1e-9);
        let admitted = (0..100)
            .filter(|_| matches!(g.check(1, t), Verdict::Allowed { .. }))
            .count();
        assert_eq!(admitted, 25, "a quarter of the burst");
        assert_eq!(g.take_demand(), 100, "every unit asked for is demand");
        assert_eq!(g.take_demand(), 0);
        // A quarter of the rate: one unit every 2.4 s.
        assert!(matches!(
            g.check(1, t + 2_400_000_000),
            Verdict::Allowed { .. }
        ));
        assert!(matches!(
            g.check(1, t + 2_400_000_000),
            Verdict::Denied { .. }
        ));
    }

    #[test]
    fn concurrent_checks_never_admit_more_than_the_limit() {
        let g = std::sync::Arc::new(Gcra::new(500, Duration::from_secs(3600)));
        let t = now_ns();
        let admitted: u64 = (0..8)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || {
                    (0..200)
                        .filter(|_| matches!(g.check(1, t), Verdict::Allowed { .. }))
                        .count() as u64
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap_or(0))
            .sum();
        assert_eq!(admitted, 500);
    }
}
