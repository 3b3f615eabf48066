//! Map key and value types shared by Tollgate's kernel programs (C, `ebpf/`) and the agent.
//!
//! Why it exists: the agent reads and writes BPF maps whose layouts are defined in
//! `ebpf/include/tollgate/types.h`; this crate is their Rust twin. One module per map (or per
//! value type shared by several maps), each `#[repr(C)]` with the C field order, explicit
//! `_pad` fields, no `bool`, and a compile-time size assertion. [`layout::ALL`] lists every
//! shared struct with its field offsets so the agent's layout test can compare them against the
//! BTF of the built objects, like cilium's alignchecker.
//!
//! What it must never do: depend on `std` or on anything but `core` (it is usable from
//! `no_std` code), or change a layout without changing `types.h` in the same commit. Not on a hot
//! path itself; the agent's accept path reads [`attribution::Attribution`] once per connection.
//!
//! With the `user` feature every type implements `aya::Pod` so aya's typed maps accept it.
#![no_std]

pub mod addr;
pub mod attribution;
pub mod cg_usage;
pub mod config;
pub mod gpu;
pub mod intercept;
pub mod key_usage;
pub mod layout;
pub mod listen;
pub mod model_usage;
pub mod replica;
pub mod sched;
pub mod stats;
pub mod usage;

pub use addr::AddrKey;
pub use attribution::Attribution;
pub use config::Config;
pub use gpu::GpuStats;
pub use intercept::InterceptEntry;
pub use listen::ListenEntry;
pub use model_usage::ModelKey;
pub use replica::{ReplicaKey, ReplicaLoad};
pub use sched::{QueueKey, QueueStats, SchedStats};
pub use usage::Usage;

/// `AF_INET` as the kernel numbers it.
pub const AF_INET: u16 = 2;
/// `AF_INET6` as the kernel numbers it.
pub const AF_INET6: u16 = 10;

/// Implements `aya::Pod` for map types when the `user` feature is on.
macro_rules! impl_pod {
    ($($ty:ty),+ $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is `#[repr(C)]`, `Copy`, made only of integers and byte arrays,
            // and has explicit `_pad` fields wherever C would insert padding, so every bit
            // pattern is a valid value and no uninitialised byte is read or written.
            unsafe impl aya::Pod for $ty {}
        )+
    };
}
pub(crate) use impl_pod;

/// Copies `s` into a NUL-padded fixed-size name, truncating at a UTF-8 character boundary so that
/// at least one NUL terminates it (what C readers and bpftool expect).
pub fn name_bytes<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let mut end = s.len().min(N.saturating_sub(1));
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&s.as_bytes()[..end]);
    out
}

/// The text of a NUL-padded fixed-size name, up to its first NUL (lossy only for invalid UTF-8,
/// where the valid prefix is returned).
pub fn name_str(bytes: &[u8]) -> &str {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    match core::str::from_utf8(&bytes[..end]) {
        Ok(s) => s,
        Err(e) => {
            // The prefix up to `valid_up_to` is valid UTF-8 by definition.
            core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or("")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_truncate_on_char_boundary() {
        let b: [u8; 8] = name_bytes("gpt-4o");
        assert_eq!(name_str(&b), "gpt-4o");
        let b: [u8; 8] = name_bytes("abcdefghij");
        assert_eq!(name_str(&b), "abcdefg");
        assert_eq!(b[7], 0);
        // "é" is two bytes; it must not be split.
        let b: [u8; 8] = name_bytes("abcdeféz");
        assert_eq!(name_str(&b), "abcdef");
    }
}
