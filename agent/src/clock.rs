//! A worker's wall clock without a clock read per use.
//!
//! A request read the clock about 14 times (a `perf probe` on glibc's `clock_gettime` during
//! load, `benches/results/2026-12-03-clock-reads.md`), ~25 ns each on this VM's TSC-backed
//! vDSO: 2 % of the worker's samples. The moments a record needs to the microsecond (start,
//! the provider's head, first and last byte, seal) keep their precise `Instant` reads. Wall-
//! clock times of those moments (a record's `ts_ms`, the time a provider's answer is charged
//! to its breaker) come from a [`WallAnchor`]: a pair of readings of the monotonic and the
//! wall clock, renewed every 100 ms, so they cost no read of their own.

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long one pairing of the monotonic and wall clocks is used: a wall-clock step shows in
/// records within this, and NTP's slew (at most 500 ppm) moves a time by under 0.05 ms in it.
const ANCHOR_FOR: Duration = Duration::from_millis(100);

/// A worker's pairing of an `Instant` with the wall-clock time read beside it.
pub struct WallAnchor {
    at: Cell<Instant>,
    /// Wall-clock nanoseconds since the Unix epoch at `at`.
    wall_ns: Cell<i128>,
}

impl Default for WallAnchor {
    fn default() -> Self {
        let anchor = WallAnchor {
            at: Cell::new(Instant::now()),
            wall_ns: Cell::new(0),
        };
        anchor.renew();
        anchor
    }
}

impl WallAnchor {
    fn renew(&self) {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        self.at.set(Instant::now());
        self.wall_ns.set(wall);
    }

    /// Milliseconds since the Unix epoch at `t`, an `Instant` read on this worker. An instant
    /// before the anchor (a long request's start, settled after a newer request renewed the
    /// anchor) is counted back from the anchor on the monotonic clock.
    pub fn ms_at(&self, t: Instant) -> i64 {
        // One subtraction of instants in the common case, where three were ~150 instructions
        // a call (callgrind): `t` at or after the anchor, and within its 100 ms.
        let offset = match t.checked_duration_since(self.at.get()) {
            Some(d) if d <= ANCHOR_FOR => d.as_nanos() as i128,
            Some(_) => {
                self.renew();
                let at = self.at.get();
                t.saturating_duration_since(at).as_nanos() as i128
                    - at.saturating_duration_since(t).as_nanos() as i128
            }
            None => -(self.at.get().duration_since(t).as_nanos() as i128),
        };
        ((self.wall_ns.get() + offset).div_euclid(1_000_000)) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governance::window::now_ms;

    #[test]
    fn an_anchored_time_is_the_wall_clock_of_that_instant() {
        let anchor = WallAnchor::default();
        for back in [0u64, 3, 50, 99, 150, 5_000] {
            let before = now_ms();
            let t = Instant::now();
            let after = now_ms();
            // An instant read `back` ms before now (a request's start, settled later).
            let earlier = t.checked_sub(Duration::from_millis(back));
            let Some(earlier) = earlier else { continue };
            let ms = anchor.ms_at(earlier);
            let (lo, hi) = (before - back as i64 - 1, after - back as i64 + 1);
            assert!(
                (lo..=hi).contains(&ms),
                "{back} ms back: {ms} not in {lo}..={hi}"
            );
            // The same instant again, from whatever anchor that left, reads the same.
            let again = anchor.ms_at(earlier);
            assert!((again - ms).abs() <= 1, "{again} vs {ms}");
        }
    }

    /// An instant past the anchor's 100 ms renews it and still reads as its wall-clock time
    /// (instants within the 100 ms are counted forward from the anchor).
    #[test]
    fn an_instant_past_the_anchor_renews_it() {
        let anchor = WallAnchor::default();
        let first = anchor.at.get();
        for ahead in [0u64, 40, 100, 101, 150, 2_000] {
            let before = now_ms();
            let t = Instant::now() + Duration::from_millis(ahead);
            let after = now_ms();
            let ms = anchor.ms_at(t);
            let (lo, hi) = (before + ahead as i64 - 1, after + ahead as i64 + 1);
            assert!(
                (lo..=hi).contains(&ms),
                "{ahead} ms ahead: {ms} not in {lo}..={hi}"
            );
        }
        assert!(anchor.at.get() > first, "the anchor was never renewed");
    }
}
