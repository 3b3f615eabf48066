//! `tg_key_usage` (LRU hash, virtual key hash `u64` → [`crate::Usage`]): token and cost totals
//! per virtual key, written by the agent. The key hash is the one the agent's ledger records.

/// Pinned map name.
pub const MAP_NAME: &str = "tg_key_usage";
/// `max_entries` in maps.h.
pub const MAX_ENTRIES: u32 = 16384;
