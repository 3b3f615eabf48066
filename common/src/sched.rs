//! `tg_sched` (hash, [`ReplicaKey`] holding a target's `provider/model` → [`SchedStats`]) and
//! `tg_queue` (hash, [`QueueKey`] → [`QueueStats`]): what the agent's scheduler does with each
//! target and each tenant's place in a gated model's fair queue, for schedulers and tools on
//! the node.

use crate::replica::NAME_LEN;

/// Pinned map names.
pub const SCHED_MAP_NAME: &str = "tg_sched";
pub const QUEUE_MAP_NAME: &str = "tg_queue";
/// `max_entries` in maps.h.
pub const SCHED_MAX_ENTRIES: u32 = 1024;
pub const QUEUE_MAX_ENTRIES: u32 = 4096;

/// `struct tg_sched_stats`. 48 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedStats {
    /// Requests the target served (settled).
    pub routed: u64,
    /// Of those, requests sent where their prompt prefix had recently been sent.
    pub prefix_hits: u64,
    /// Matched prompt bytes over those requests.
    pub prefix_bytes: u64,
    /// Requests the agent has there now (models with a gate).
    pub in_flight: u32,
    /// Its cap; 0: none.
    pub max_in_flight: u32,
    /// Requests waiting for a slot of its model.
    pub waiting: u32,
    /// Prefix index entries over all workers.
    pub index_blocks: u32,
    /// When the agent last wrote it, Unix milliseconds.
    pub updated_unix_ms: u64,
}

const _: () = assert!(core::mem::size_of::<SchedStats>() == 48);

/// `struct tg_queue_key`: a gated model and a tenant, each NUL-padded. 128 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QueueKey {
    pub model: [u8; NAME_LEN],
    pub tenant: [u8; NAME_LEN],
}

const _: () = assert!(core::mem::size_of::<QueueKey>() == 128);

impl QueueKey {
    pub fn new(model: &str, tenant: &str) -> Self {
        Self {
            model: crate::name_bytes(model),
            tenant: crate::name_bytes(tenant),
        }
    }

    pub fn model(&self) -> &str {
        crate::name_str(&self.model)
    }

    pub fn tenant(&self) -> &str {
        crate::name_str(&self.tenant)
    }
}

/// `struct tg_queue_stats`. 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub waiting_interactive: u32,
    pub waiting_batch: u32,
    /// The tenant's virtual token counter.
    pub served_tokens: u64,
    pub updated_unix_ms: u64,
}

const _: () = assert!(core::mem::size_of::<QueueStats>() == 24);

crate::impl_pod!(SchedStats, QueueKey, QueueStats);
