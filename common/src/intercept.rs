//! `tg_intercept` (hash, [`AddrKey`] → [`InterceptEntry`]): destinations whose TCP connects the
//! connect programs redirect to the agent's listener. Written by the agent at load and on
//! reload; the programs bump `hits`.

/// Pinned map name.
pub const MAP_NAME: &str = "tg_intercept";
/// `max_entries` in maps.h.
pub const MAX_ENTRIES: u32 = 1024;

/// `struct tg_intercept_entry`. 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterceptEntry {
    /// Connects redirected so far.
    pub hits: u64,
}

const _: () = assert!(core::mem::size_of::<InterceptEntry>() == 8);

crate::impl_pod!(InterceptEntry);
