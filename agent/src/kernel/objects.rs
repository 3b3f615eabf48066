//! The compiled kernel objects, embedded in the binary by `agent/build.rs`.
//!
//! Owns nothing at run time; it only names the bytes. When the build had no clang-19 the
//! objects are empty stubs and [`BUILD_MISSING`] says why, which the loader turns into
//! [`super::KernelError::NotBuilt`]. Not on the hot path.

/// Why the objects are stubs (empty when they were compiled).
pub const BUILD_MISSING: &str = env!("TOLLGATE_BPF_MISSING");

/// The map-only object: creates and pins every map in `ebpf/include/tollgate/maps.h`.
pub const MAPS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpf/maps.bpf.o"));
/// `cgroup/connect4` (`tg_connect4`).
pub const CONNECT4: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpf/connect4.bpf.o"));
/// `cgroup/connect6` (`tg_connect6`).
pub const CONNECT6: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpf/connect6.bpf.o"));
/// `sockops` (`tg_sockops`).
pub const SOCKOPS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpf/sockops.bpf.o"));
/// `tp_btf/inet_sock_set_state` (`tg_sock_state`).
pub const SOCK_STATE: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpf/sock_state.bpf.o"));

/// `sk_reuseport/migrate` (`tg_reuseport`): request migration for the listening group, loaded
/// apart from the others (`kernel/reuseport.rs`).
pub const REUSEPORT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpf/reuseport.bpf.o"));

/// Every object with its file stem, in load order (`REUSEPORT` is not part of the set).
pub const ALL: &[(&str, &[u8])] = &[
    ("maps", MAPS),
    ("connect4", CONNECT4),
    ("sockops", SOCKOPS),
    ("connect6", CONNECT6),
    ("sock_state", SOCK_STATE),
];

/// Whether the objects were compiled into this binary.
pub fn built() -> bool {
    !cfg!(tollgate_no_bpf) && !MAPS.is_empty()
}
