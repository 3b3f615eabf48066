//! Per-core keep-alive pool: a LIFO stack of idle connections per provider id (the most
//! recently used socket is the most likely to still be open and warm). Ids are stable across
//! reloads for unchanged providers (`snapshot.rs`), so warm connections survive a reload, and a
//! provider whose address changed gets a new id, so its old connections are never reused.

use std::time::{Duration, Instant};

use super::UpstreamConn;

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
    /// provider has not closed (`UpstreamConn::is_stale`).
    pub fn take(&mut self, provider: usize, now: Instant) -> Option<UpstreamConn> {
        let stack = self.idle.get_mut(provider)?;
        while let Some(conn) = stack.pop() {
            if now.duration_since(conn.idle_since) < self.idle_timeout && !conn.is_stale() {
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
