//! The loop guard: a breaker per session (`x-tollgate-session`) for the agent stuck in a loop,
//! the case where one bug drains a quarter's budget overnight. It trips on the Nth identical
//! request (same model and prompt) within a window, or when the session's tokens over the
//! window exceed a multiple of its own baseline; while tripped, the session gets 429
//! `loop_detected` until the cooldown passes. Sessions live in a lock-free map (workers of
//! every core look them up); each session's short history has its own small lock, contended
//! only by that session's concurrent requests.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::policy::LoopGuard;

/// Most history entries kept per session (bounds memory whatever the window).
const MAX_HISTORY: usize = 4096;
/// Most sessions tracked at once: new sessions past this are not guarded until idle ones are
/// evicted (so unique session ids cannot grow the agent's memory without bound).
pub const MAX_SESSIONS: usize = 100_000;

#[derive(Debug, Default)]
pub struct SessionState {
    /// Until when (ms since epoch) the breaker is open.
    pub tripped_until_ms: AtomicI64,
    pub last_seen_ms: AtomicI64,
    inner: Mutex<History>,
}

#[derive(Debug, Default)]
struct History {
    /// (time, digest of model and prompt)
    requests: VecDeque<(i64, u64)>,
    /// (time, tokens used) per settled request
    tokens: VecDeque<(i64, u64)>,
    first_ms: i64,
}

/// Why a breaker tripped.
#[derive(Debug, Clone, PartialEq)]
pub enum Trip {
    Identical { count: u32 },
    TokenRate { recent: u64, baseline: f64 },
}

impl Trip {
    pub fn describe(&self) -> String {
        match self {
            Trip::Identical { count } => format!("{count} identical requests"),
            Trip::TokenRate { recent, baseline } => format!(
                "{recent} tokens in the last window against a baseline of {baseline:.0} per window"
            ),
        }
    }
}

impl SessionState {
    /// Whether the breaker is open at `now`; returns the remaining cooldown in ms.
    pub fn open_for(&self, now_ms: i64) -> Option<i64> {
        let until = self.tripped_until_ms.load(Ordering::Acquire);
        (until > now_ms).then_some(until - now_ms)
    }

    /// Records a request; trips the breaker if it is the Nth identical one in the window.
    pub fn observe_request(&self, g: &LoopGuard, now_ms: i64, digest: u64) -> Option<Trip> {
        self.last_seen_ms.store(now_ms, Ordering::Relaxed);
        let mut h = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if h.first_ms == 0 {
            h.first_ms = now_ms;
        }
        let horizon = now_ms - g.window.as_millis() as i64;
        while h.requests.front().is_some_and(|(t, _)| *t < horizon) {
            h.requests.pop_front();
        }
        if h.requests.len() >= MAX_HISTORY {
            h.requests.pop_front();
        }
        h.requests.push_back((now_ms, digest));
        let count = h.requests.iter().filter(|(_, d)| *d == digest).count() as u32;
        if g.identical_requests > 0 && count >= g.identical_requests {
            self.trip(g, now_ms);
            return Some(Trip::Identical { count });
        }
        None
    }

    /// Records a settled request's tokens; trips the breaker on a token rate far above the
    /// session's own baseline.
    pub fn observe_tokens(&self, g: &LoopGuard, now_ms: i64, tokens: u64) -> Option<Trip> {
        let mut h = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let window = g.window.as_millis() as i64;
        let baseline_window = g.baseline_window.as_millis().max(1) as i64;
        let horizon = now_ms - baseline_window - window;
        while h.tokens.front().is_some_and(|(t, _)| *t < horizon) {
            h.tokens.pop_front();
        }
        if h.tokens.len() >= MAX_HISTORY {
            h.tokens.pop_front();
        }
        h.tokens.push_back((now_ms, tokens));
        if g.token_rate_multiple <= 0.0 || now_ms - h.first_ms < window {
            return None;
        }
        let recent: u64 = h
            .tokens
            .iter()
            .filter(|(t, _)| *t >= now_ms - window)
            .map(|(_, n)| n)
            .sum();
        let before: u64 = h
            .tokens
            .iter()
            .filter(|(t, _)| *t < now_ms - window)
            .map(|(_, n)| n)
            .sum();
        // The baseline covers the part of the baseline window the session has existed for.
        let span = (now_ms - window - h.first_ms).clamp(1, baseline_window);
        let baseline = before as f64 * window as f64 / span as f64;
        if recent >= g.min_tokens
            && baseline > 0.0
            && recent as f64 > g.token_rate_multiple * baseline
        {
            drop(h);
            self.trip(g, now_ms);
            return Some(Trip::TokenRate { recent, baseline });
        }
        None
    }

    fn trip(&self, g: &LoopGuard, now_ms: i64) {
        self.tripped_until_ms
            .store(now_ms + g.cooldown.as_millis() as i64, Ordering::Release);
    }
}

/// Sessions by name.
#[derive(Default)]
pub struct Sessions {
    map: papaya::HashMap<String, Arc<SessionState>>,
}

impl Sessions {
    /// The session's state; `None` for a new session when [`MAX_SESSIONS`] are tracked.
    pub fn get(&self, session: &str) -> Option<Arc<SessionState>> {
        self.get_capped(session, MAX_SESSIONS)
    }

    fn get_capped(&self, session: &str, cap: usize) -> Option<Arc<SessionState>> {
        let map = self.map.pin();
        if let Some(s) = map.get(session) {
            return Some(s.clone());
        }
        if map.len() >= cap {
            return None;
        }
        Some(
            map.get_or_insert_with(session.to_string(), Arc::default)
                .clone(),
        )
    }

    /// Drops sessions idle for longer than `idle_ms` (governance thread).
    pub fn evict_idle(&self, now_ms: i64, idle_ms: i64) -> usize {
        let map = self.map.pin();
        let before = map.len();
        map.retain(|_, s| {
            s.last_seen_ms.load(Ordering::Relaxed) >= now_ms - idle_ms
                || s.open_for(now_ms).is_some()
        });
        before - map.len()
    }

    pub fn len(&self) -> usize {
        self.map.pin().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn guard() -> LoopGuard {
        LoopGuard {
            identical_requests: 3,
            window: Duration::from_secs(60),
            token_rate_multiple: 5.0,
            baseline_window: Duration::from_secs(600),
            min_tokens: 100,
            cooldown: Duration::from_secs(30),
        }
    }

    #[test]
    fn the_nth_identical_request_trips_until_cooldown() {
        let g = guard();
        let s = SessionState::default();
        assert!(s.observe_request(&g, 1_000, 7).is_none());
        assert!(s.observe_request(&g, 2_000, 8).is_none());
        assert!(s.observe_request(&g, 3_000, 7).is_none());
        assert_eq!(
            s.observe_request(&g, 4_000, 7),
            Some(Trip::Identical { count: 3 })
        );
        assert_eq!(s.open_for(5_000), Some(29_000));
        assert!(s.open_for(34_000).is_none());
        // Outside the window, old repeats no longer count.
        let s = SessionState::default();
        s.observe_request(&g, 0, 7);
        s.observe_request(&g, 1, 7);
        assert!(s.observe_request(&g, 70_000, 7).is_none());
    }

    #[test]
    fn a_token_burst_far_above_baseline_trips() {
        let g = guard();
        let s = SessionState::default();
        // Ten minutes at 100 tokens a minute.
        for m in 0..10 {
            assert!(s.observe_tokens(&g, m * 60_000 + 1, 100).is_none());
        }
        // Then 1000 tokens within a minute: 10x the baseline.
        let mut tripped = None;
        for i in 0..10 {
            tripped = tripped.or(s.observe_tokens(&g, 600_000 + i * 1000, 100));
        }
        assert!(
            matches!(tripped, Some(Trip::TokenRate { .. })),
            "{tripped:?}"
        );
    }

    #[test]
    fn sessions_are_shared_capped_and_evicted_when_idle() {
        let sessions = Sessions::default();
        let a = sessions.get("a").expect("tracked");
        assert!(Arc::ptr_eq(&a, &sessions.get("a").expect("tracked")));
        a.last_seen_ms.store(1_000, Ordering::Relaxed);
        let b = sessions.get("b").expect("tracked");
        b.last_seen_ms.store(50_000, Ordering::Relaxed);
        assert!(
            sessions.get_capped("c", 2).is_none(),
            "full: a new session is not tracked"
        );
        assert!(
            sessions.get_capped("b", 2).is_some(),
            "a known one still is"
        );
        assert_eq!(sessions.evict_idle(60_000, 30_000), 1);
        assert_eq!(sessions.len(), 1);
        assert!(sessions.get_capped("c", 2).is_some());
    }
}
