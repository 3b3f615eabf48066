//! `tg_cg_usage` (LRU hash, cgroup v2 id `u64` → [`crate::Usage`]): token and cost totals per
//! client cgroup (pod or container), written by the agent. LRU so departed cgroups age out.

/// Pinned map name.
pub const MAP_NAME: &str = "tg_cg_usage";
/// `max_entries` in maps.h.
pub const MAX_ENTRIES: u32 = 8192;
