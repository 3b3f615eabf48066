//! `tg_replica` (hash, [`ReplicaKey`] → [`ReplicaLoad`]): the latest load figures the agent
//! scraped from each inference replica, for node schedulers.

/// Pinned map name.
pub const MAP_NAME: &str = "tg_replica";
/// `max_entries` in maps.h.
pub const MAX_ENTRIES: u32 = 256;
/// Bytes in a name, the terminating NUL included.
pub const NAME_LEN: usize = 64;

/// `struct tg_replica_key`: the replica's configured name, NUL-padded. 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplicaKey {
    pub name: [u8; NAME_LEN],
}

const _: () = assert!(core::mem::size_of::<ReplicaKey>() == 64);

impl ReplicaKey {
    /// Key for `name`, truncated to 63 bytes on a character boundary.
    pub fn new(name: &str) -> Self {
        Self {
            name: crate::name_bytes(name),
        }
    }

    /// The name up to its first NUL.
    pub fn as_str(&self) -> &str {
        crate::name_str(&self.name)
    }
}

/// `struct tg_replica_load`. 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaLoad {
    /// Requests being decoded.
    pub running: u32,
    /// Requests queued.
    pub waiting: u32,
    /// KV cache in use, per mille (0..=1000).
    pub kv_cache_permille: u32,
    pub _pad: u32,
    /// When the agent wrote it, Unix milliseconds.
    pub updated_unix_ms: u64,
}

const _: () = assert!(core::mem::size_of::<ReplicaLoad>() == 24);

crate::impl_pod!(ReplicaKey, ReplicaLoad);
