//! Open-loop schedule arithmetic: when each request is *meant* to be sent.
//!
//! Why it exists: an open-loop generator that measures from the actual send time hides queueing whenever the
//! server (or the generator) falls behind — coordinated omission. We fix every request's intended send time
//! up front, `i / rate` after the start, and latency is measured from that instant. Integer nanoseconds with a
//! rational rate keep the schedule drift-free over any run length.
//!
//! Pure arithmetic only; no clocks. Hot path: `due_count` is called once per event-loop turn.

/// A fixed-rate schedule. Rates are held in milli-requests per second so fractional rates stay exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    rate_milli: u64,
}

const NANOS_PER_SEC_MILLI: u128 = 1_000_000_000_000;

impl Schedule {
    /// A schedule of `rate` requests per second. Returns `None` for rates that are not positive and finite or
    /// below 0.001 req/s.
    pub fn new(rate: f64) -> Option<Self> {
        if !rate.is_finite() || rate <= 0.0 {
            return None;
        }
        let rate_milli = (rate * 1000.0).round();
        if rate_milli < 1.0 || rate_milli > u64::MAX as f64 {
            return None;
        }
        Some(Self {
            rate_milli: rate_milli as u64,
        })
    }

    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.rate_milli as f64 / 1000.0
    }

    /// Intended send time of request `index`, in ns after the schedule's start (rounded down).
    pub fn offset_ns(&self, index: u64) -> u64 {
        let ns = u128::from(index) * NANOS_PER_SEC_MILLI / u128::from(self.rate_milli);
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// How many requests are due at `elapsed_ns` after the start: the number of indices whose
    /// `offset_ns` is at most `elapsed_ns`. Request 0 is due at once.
    pub fn due_count(&self, elapsed_ns: u64) -> u64 {
        // offset(i) <= e  ⇔  i·1e12/r < e + 1  ⇔  i < (e + 1)·r/1e12, so the count is ceil((e + 1)·r / 1e12).
        let scaled = (u128::from(elapsed_ns) + 1) * u128::from(self.rate_milli);
        let count = scaled.div_ceil(NANOS_PER_SEC_MILLI);
        u64::try_from(count).unwrap_or(u64::MAX)
    }

    /// Number of requests intended strictly before `duration_ns`: the size of a run of that length.
    pub fn total_in(&self, duration_ns: u64) -> u64 {
        match duration_ns {
            0 => 0,
            d => self.due_count(d - 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_nonsense_rates() {
        assert!(Schedule::new(0.0).is_none());
        assert!(Schedule::new(-5.0).is_none());
        assert!(Schedule::new(f64::NAN).is_none());
        assert!(Schedule::new(f64::INFINITY).is_none());
        assert!(Schedule::new(0.0001).is_none());
        assert_eq!(Schedule::new(0.5).map(|s| s.rate()), Some(0.5));
    }

    #[test]
    fn offsets_are_evenly_spaced_without_drift() {
        let s = Schedule::new(10_000.0).expect("valid rate");
        assert_eq!(s.offset_ns(0), 0);
        assert_eq!(s.offset_ns(1), 100_000);
        assert_eq!(s.offset_ns(10_000), 1_000_000_000);
        // One hour at 10k/s lands exactly on the hour.
        assert_eq!(s.offset_ns(36_000_000), 3_600_000_000_000);
        // A rate that does not divide 1e9: 3 req/s → 333_333_333, 666_666_666, then exactly 1 s.
        let third = Schedule::new(3.0).expect("valid rate");
        assert_eq!(
            [third.offset_ns(1), third.offset_ns(2), third.offset_ns(3)],
            [333_333_333, 666_666_666, 1_000_000_000]
        );
    }

    #[test]
    fn due_count_agrees_with_offsets() {
        for rate in [1.0, 3.0, 7.5, 1000.0, 2000.0, 5000.0, 10_000.0, 12_345.678] {
            let s = Schedule::new(rate).expect("valid rate");
            for i in 0..2000u64 {
                let at = s.offset_ns(i);
                assert!(
                    s.due_count(at) > i,
                    "rate {rate} index {i}: due at its own offset"
                );
                if at > 0 {
                    assert!(
                        s.due_count(at - 1) <= i,
                        "rate {rate} index {i}: not due before its offset"
                    );
                }
            }
        }
    }

    #[test]
    fn run_sizes() {
        let s = Schedule::new(1000.0).expect("valid rate");
        assert_eq!(s.total_in(0), 0);
        assert_eq!(s.total_in(1), 1);
        assert_eq!(s.total_in(5_000_000_000), 5000);
        assert_eq!(s.total_in(5_000_000_001), 5001);
        let slow = Schedule::new(0.5).expect("valid rate");
        assert_eq!(slow.total_in(4_000_000_000), 2);
    }
}
