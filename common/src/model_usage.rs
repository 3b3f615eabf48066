//! `tg_model_usage` (LRU hash, [`ModelKey`] → [`crate::Usage`]): token and cost totals per
//! model name as clients asked for it, written by the agent. bpftool prints the key as a string.

/// Pinned map name.
pub const MAP_NAME: &str = "tg_model_usage";
/// `max_entries` in maps.h.
pub const MAX_ENTRIES: u32 = 1024;
/// Bytes in a name, the terminating NUL included.
pub const NAME_LEN: usize = 64;

/// `struct tg_model_key`: NUL-padded model name (at most 63 bytes). 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ModelKey {
    pub name: [u8; NAME_LEN],
}

const _: () = assert!(core::mem::size_of::<ModelKey>() == 64);

impl ModelKey {
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

crate::impl_pod!(ModelKey);
