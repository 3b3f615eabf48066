//! `tg_listen` (hash, [`crate::AddrKey`] → [`ListenEntry`]): the agent's own listen addresses.
//! Connects to them are attributed even when not redirected; an all-zero address matches any
//! address of its family on that port.

/// Pinned map name.
pub const MAP_NAME: &str = "tg_listen";
/// `max_entries` in maps.h.
pub const MAX_ENTRIES: u32 = 64;

/// The agent's start-up self-test address (removed once the test is done).
pub const FLAG_PROBE: u32 = 1 << 0;

/// `struct tg_listen_entry`. 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenEntry {
    /// `FLAG_*` bits.
    pub flags: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<ListenEntry>() == 8);

crate::impl_pod!(ListenEntry);
