//! A circuit breaker per model target (provider + upstream model), shared by every worker:
//! `failures` in a row within a window open it for a cooldown (counting failures in a row,
//! not in total, keeps a busy target's rare errors from adding up to a trip); then one request at a time is let
//! through as a probe (half-open), and the probe's success closes it. A provider's
//! `Retry-After` holds a target off the same way, without counting as a trip.
//!
//! Hot path: a closed breaker costs one relaxed atomic load per candidate target, and a
//! success on a closed breaker writes nothing, so healthy traffic causes no cross-core cache
//! traffic. Failures (rare) do a CAS on the window word.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::routing::BreakerPolicy;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    /// The cooldown is over: the next request may probe.
    HalfOpen,
    /// Requests stay away for this many more milliseconds.
    Open {
        for_ms: u64,
    },
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open { .. } => "open",
        }
    }

    /// The gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> u8 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open { .. } => 2,
        }
    }
}

/// Failures are counted per window: window index in the high 32 bits, count in the low 32.
#[derive(Debug, Default)]
pub struct Breaker {
    window: AtomicU64,
    /// Wall-clock ms until which requests stay away; 0 when closed.
    open_until_ms: AtomicU64,
    /// When the current probe was let through (0: none); a probe older than the cooldown is
    /// presumed lost (its request was cut) and another may go.
    probe_at_ms: AtomicU64,
    trips: AtomicU64,
}

impl Breaker {
    pub fn state(&self, now_ms: u64) -> State {
        let until = self.open_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            State::Closed
        } else if now_ms < until {
            State::Open {
                for_ms: until - now_ms,
            }
        } else {
            State::HalfOpen
        }
    }

    /// Claims the half-open probe; false when another request is probing.
    pub fn try_probe(&self, now_ms: u64, policy: &BreakerPolicy) -> bool {
        let at = self.probe_at_ms.load(Ordering::Relaxed);
        let stale = at == 0 || now_ms.saturating_sub(at) >= policy.cooldown.as_millis() as u64;
        stale
            && self
                .probe_at_ms
                .compare_exchange(at, now_ms.max(1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// A request to this target succeeded: failures no longer run in a row. Writes only when
    /// there is something to reset.
    pub fn success(&self) {
        if self.window.load(Ordering::Relaxed) & 0xffff_ffff != 0 {
            self.window.store(0, Ordering::Relaxed);
        }
        if self.open_until_ms.load(Ordering::Relaxed) != 0 {
            self.open_until_ms.store(0, Ordering::Relaxed);
            self.probe_at_ms.store(0, Ordering::Relaxed);
            self.window.store(0, Ordering::Relaxed);
        }
    }

    /// A request to this target failed (connect error, 429, 5xx, timeout). Returns whether
    /// this failure opened the breaker.
    pub fn failure(&self, now_ms: u64, policy: &BreakerPolicy) -> bool {
        let cooldown = policy.cooldown.as_millis() as u64;
        if self.open_until_ms.load(Ordering::Relaxed) != 0 {
            // A failed probe (or a request that was already in flight): stay open.
            self.open_until_ms
                .store(now_ms + cooldown, Ordering::Relaxed);
            self.probe_at_ms.store(0, Ordering::Relaxed);
            return false;
        }
        let index = now_ms / (policy.window.as_millis() as u64).max(1);
        let mut cur = self.window.load(Ordering::Relaxed);
        let count = loop {
            let count = if cur >> 32 == index & 0xffff_ffff {
                (cur & 0xffff_ffff) + 1
            } else {
                1
            };
            let next = ((index & 0xffff_ffff) << 32) | count.min(0xffff_ffff);
            match self
                .window
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break count,
                Err(now) => cur = now,
            }
        };
        if count >= u64::from(policy.failures)
            && self
                .open_until_ms
                .compare_exchange(0, now_ms + cooldown, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.trips.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// The provider asked for no requests for `ms` (`Retry-After`): keep away that long, then
    /// probe.
    pub fn hold_off(&self, now_ms: u64, ms: u64) {
        let until = now_ms + ms;
        let cur = self.open_until_ms.load(Ordering::Relaxed);
        if until > cur {
            self.open_until_ms.store(until, Ordering::Relaxed);
            self.probe_at_ms.store(0, Ordering::Relaxed);
        }
    }

    /// How many times the breaker opened on failures.
    pub fn trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            enabled: true,
            explicit: true,
            failures: 3,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(30),
        }
    }

    #[test]
    fn opens_after_failures_in_one_window_then_probes_and_closes() {
        let b = Breaker::default();
        let p = policy();
        let t = 1_000_000;
        assert!(!b.failure(t, &p) && !b.failure(t + 1, &p));
        assert_eq!(b.state(t + 2), State::Closed);
        assert!(b.failure(t + 2, &p), "third failure trips");
        assert_eq!(b.state(t + 3), State::Open { for_ms: 29_999 });
        assert_eq!(b.trips(), 1);
        // Cooldown over: exactly one probe at a time.
        let later = t + 2 + 30_000;
        assert_eq!(b.state(later), State::HalfOpen);
        assert!(b.try_probe(later, &p));
        assert!(!b.try_probe(later + 5, &p), "a second probe waits");
        b.success();
        assert_eq!(b.state(later + 6), State::Closed);
        // The count restarted: two failures do not trip again.
        assert!(!b.failure(later + 7, &p) && !b.failure(later + 8, &p));
        assert_eq!(b.state(later + 9), State::Closed);
    }

    #[test]
    fn a_success_breaks_the_run_of_failures() {
        let b = Breaker::default();
        let p = policy();
        b.failure(1_000, &p);
        b.failure(1_001, &p);
        b.success();
        assert!(!b.failure(1_002, &p) && !b.failure(1_003, &p));
        assert!(b.failure(1_004, &p));
    }

    #[test]
    fn failures_in_different_windows_do_not_add_up() {
        let b = Breaker::default();
        let p = policy();
        b.failure(1_000, &p);
        b.failure(2_000, &p);
        assert!(
            !b.failure(10_001, &p),
            "a new window starts the count again"
        );
        assert_eq!(b.state(10_002), State::Closed);
    }

    #[test]
    fn a_failed_probe_reopens_and_a_lost_probe_expires() {
        let b = Breaker::default();
        let p = policy();
        for i in 0..3 {
            b.failure(100 + i, &p);
        }
        let half = 102 + 30_000;
        assert!(b.try_probe(half, &p));
        assert!(
            !b.failure(half + 10, &p),
            "a failed probe is not a new trip"
        );
        assert_eq!(b.state(half + 11), State::Open { for_ms: 29_999 });
        // A probe whose request never reported back does not block probing forever.
        let again = half + 10 + 30_000;
        assert!(b.try_probe(again, &p));
        assert!(!b.try_probe(again + 1, &p));
        assert!(b.try_probe(again + 30_000, &p));
    }

    #[test]
    fn retry_after_holds_off_without_a_trip() {
        let b = Breaker::default();
        b.hold_off(5_000, 2_000);
        assert_eq!(b.state(6_000), State::Open { for_ms: 1_000 });
        assert_eq!(b.state(7_000), State::HalfOpen);
        assert_eq!(b.trips(), 0);
    }
}
