//! What this worker has seen of each provider's health (by provider id, `snapshot.rs`): a provider that refused or timed out a
//! connection is avoided for a short while when a model has another target. Passive and per
//! core (no lock, no cross-core traffic); the routing issue's circuit breakers replace it with
//! real failure accounting. `!Send` on purpose: one per worker.

use std::cell::RefCell;
use std::time::{Duration, Instant};

/// How long a provider that failed a connect is avoided.
pub const DOWN_FOR: Duration = Duration::from_secs(5);

pub struct HealthLocal {
    down_until: RefCell<Vec<Option<Instant>>>,
}

impl HealthLocal {
    pub fn new(providers: usize) -> Self {
        HealthLocal {
            down_until: RefCell::new(vec![None; providers]),
        }
    }

    /// Marks `provider` as failing connects from `now` for [`DOWN_FOR`].
    pub fn mark_down(&self, provider: usize, now: Instant) {
        let mut down = self.down_until.borrow_mut();
        // Provider ids only grow (a reload may add providers): make room.
        if down.len() <= provider {
            down.resize(provider + 1, None);
        }
        down[provider] = Some(now + DOWN_FOR);
    }

    /// A connect to `provider` succeeded: it is up again.
    pub fn mark_up(&self, provider: usize) {
        if let Some(slot) = self.down_until.borrow_mut().get_mut(provider) {
            *slot = None;
        }
    }

    /// Whether `provider` is not marked down at `now`.
    pub fn is_up(&self, provider: usize, now: Instant) -> bool {
        self.down_until
            .borrow()
            .get(provider)
            .copied()
            .flatten()
            .is_none_or(|until| now >= until)
    }
}
