//! `tg_gpu` (array, GPU index `u32` → [`GpuStats`]): per-GPU utilisation and memory, written by
//! the agent from NVML where a GPU exists. An entry with `updated_unix_ms == 0` is no GPU.

/// Pinned map name.
pub const MAP_NAME: &str = "tg_gpu";
/// `max_entries` in maps.h: GPU indices 0..16.
pub const MAX_ENTRIES: u32 = 16;

/// `struct tg_gpu_stats`. 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuStats {
    /// SM utilisation, percent (0..=100).
    pub util_pct: u32,
    pub _pad: u32,
    /// Device memory in use, bytes.
    pub mem_used_bytes: u64,
    /// Device memory in total, bytes.
    pub mem_total_bytes: u64,
    /// When the agent wrote it, Unix milliseconds; 0 = no such GPU.
    pub updated_unix_ms: u64,
}

const _: () = assert!(core::mem::size_of::<GpuStats>() == 32);

crate::impl_pod!(GpuStats);
