//! `tg_stats` (per-CPU array of `u64`): event counters bumped by the kernel programs, summed
//! over CPUs by the agent for `tollgate status`. Indices match `TG_STAT_*` in types.h.

/// Pinned map name.
pub const MAP_NAME: &str = "tg_stats";
/// TCP connects seen by the connect programs (while enabled).
pub const CONNECT: u32 = 0;
/// Connects redirected to the agent.
pub const REDIRECT: u32 = 1;
/// Intercepted connects left alone because the agent has no listener of that family.
pub const NO_TARGET: u32 = 2;
/// Attribution records written.
pub const RECORD: u32 = 3;
/// Records re-keyed by client address on establishment.
pub const ESTABLISHED: u32 = 4;
/// tg_attr entries removed on close.
pub const CLOSE: u32 = 5;
/// TCP state transitions seen.
pub const STATE: u32 = 6;
/// `max_entries` of the array.
pub const MAX: u32 = 8;
