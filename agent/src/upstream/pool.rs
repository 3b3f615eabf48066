//! Per-core keep-alive pool: a LIFO stack of idle connections per provider id (the most
//! recently used socket is the most likely to still be open and warm). Ids are stable across
//! reloads for unchanged providers (`snapshot.rs`), so warm connections survive a reload, and a
//! provider whose address changed gets a new id, so its old connections are never reused.

use std::time::{Duration, Instant};

use super::UpstreamConn;

/// Idle time after which a pooled connection is checked for a close before reuse.
pub const PEEK_AFTER: Duration = Duration::from_millis(10);

pub struct PoolLocal {
    idle: Vec<Vec<UpstreamConn>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl PoolLocal {
    pub fn new(providers: usize, max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            idle: (0..providers).map(|_| Vec::new()).collect(),
            max_idle,
            idle_timeout,
        }
    }

    /// Takes the freshest idle connection to `provider` that has not expired and that the
    /// provider has not closed (`UpstreamConn::is_stale`). The check costs a syscall, so a
    /// connection idle for less than [`PEEK_AFTER`] is taken without it: providers close idle
    /// keep-alives after seconds, and one closed in that window anyway is handled by forward
    /// (a failed write is retried on a new connection; a request written in full is not resent).
    pub fn take(&mut self, provider: usize, now: Instant) -> Option<UpstreamConn> {
        let stack = self.idle.get_mut(provider)?;
        while let Some(conn) = stack.pop() {
            let idle = now.duration_since(conn.idle_since);
            if idle < self.idle_timeout && (idle < PEEK_AFTER || !conn.is_stale()) {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection that finished a response cleanly.
    pub fn put(&mut self, mut conn: UpstreamConn, now: Instant) {
        let max = self.max_idle;
        // Provider ids only grow (a reload may add providers): make room.
        if self.idle.len() <= conn.provider {
            self.idle.resize_with(conn.provider + 1, Vec::new);
        }
        let stack = &mut self.idle[conn.provider];
        if stack.len() >= max {
            stack.remove(0);
        }
        conn.reused = true;
        conn.idle_since = now;
        stack.push(conn);
    }
}
