//! `tg_key_usage` (LRU hash, virtual key hash `u64` → [`crate::Usage`]): token and cost totals
//! per virtual key, written by the agent. The map key is FNV-1a 64 of the key's id (`k_...`, the
//! id `tollgate keys list` shows and the ledger's `key_id` column holds).

/// Pinned map name.
pub const MAP_NAME: &str = "tg_key_usage";
/// `max_entries` in maps.h.
pub const MAX_ENTRIES: u32 = 16384;
