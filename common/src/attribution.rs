//! `tg_pending` (LRU hash, socket cookie `u64` → [`Attribution`]) and `tg_attr` (LRU hash,
//! client [`crate::AddrKey`] → [`Attribution`]): who opened a connection to the agent.
//!
//! connect4/connect6 write `tg_pending` in the caller's context; sockops moves the record to
//! `tg_attr` when the connection is established; the close tracepoint deletes it. The agent
//! reads `tg_attr` on accept by its peer address.

/// Pinned name of the cookie-keyed map.
pub const PENDING_MAP_NAME: &str = "tg_pending";
/// Pinned name of the client-address-keyed map.
pub const ATTR_MAP_NAME: &str = "tg_attr";

/// `orig_dst` is where the client meant to go before redirection.
pub const FLAG_REDIRECTED: u32 = 1 << 0;

/// Length of `comm` (the kernel's `TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// `struct tg_attribution`. 72 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    /// Thread id of the connecting thread (init pid namespace).
    pub pid: u32,
    /// Process id (init pid namespace).
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    /// cgroup v2 id: the inode number of the cgroup's directory.
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns()` at connect (CLOCK_MONOTONIC, nanoseconds).
    pub connect_ns: u64,
    /// Thread name, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// Destination before redirection; zero unless `flags` has [`FLAG_REDIRECTED`].
    pub orig_dst: crate::AddrKey,
    /// `FLAG_*` bits.
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<Attribution>() == 72);

impl Attribution {
    /// `comm` up to its first NUL.
    pub fn comm_str(&self) -> &str {
        crate::name_str(&self.comm)
    }
}

crate::impl_pod!(Attribution);
