//! `tg_config` (array, one entry): the agent's identity and redirect targets, written by the
//! agent at load and read by the connect programs on every connect.

use crate::AddrKey;

/// Pinned map name.
pub const MAP_NAME: &str = "tg_config";
/// The only index of the array.
pub const INDEX: u32 = 0;
/// The programs' rodata global that says which `generation` they serve.
pub const GENERATION_SYMBOL: &str = "tg_generation";

/// The programs act only while this is set; the agent clears it first when it detaches.
pub const FLAG_ENABLED: u32 = 1 << 0;
/// `redirect4` is valid.
pub const FLAG_REDIRECT4: u32 = 1 << 1;
/// `redirect6` is valid.
pub const FLAG_REDIRECT6: u32 = 1 << 2;

/// `struct tg_config`. 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Connects from this tgid (as the init pid namespace numbers it) are never redirected.
    pub agent_tgid: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Connects from this cgroup v2 id are never redirected; 0 = none.
    pub agent_cgroup_id: u64,
    /// Where redirected IPv4 connects go.
    pub redirect4: AddrKey,
    /// Where redirected IPv6 connects go.
    pub redirect6: AddrKey,
    /// The programs that act: those loaded with this `tg_generation` (an upgrade's new agent
    /// attaches its own beside the old ones and takes over by writing its generation here).
    pub generation: u32,
    /// During a hand-over, the other agent's tgid, exempt like `agent_tgid`; 0 = none.
    pub agent_tgid2: u32,
}

const _: () = assert!(core::mem::size_of::<Config>() == 64);

crate::impl_pod!(Config);
