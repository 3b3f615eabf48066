//! The heap: jemalloc, set up for a small footprint.
//!
//! Measured against glibc's malloc (ABBA at 64 connections, `benches/scripts/ab_cpu.py`):
//! 25.4 → 24.2 µs of agent CPU per request. A request makes about fifty allocations; the ones
//! past glibc's 1 KiB thread cache (boxed request futures, which monoio's 128-byte-aligned timer
//! entries make `posix_memalign` calls) went through its arena bins and `malloc_consolidate`.
//! jemalloc's defaults (four arenas per core, pages kept 10 s) doubled idle RSS, so:
//! - one arena: the workers allocate from their thread caches, rarely from the arena;
//! - freed pages go back to the system after 1 s (`dirty_decay_ms`), skipping the lazy
//!   `MADV_FREE` stage (`muzzy_decay_ms: 0`), so memory returns after a wave of connections
//!   closes without a trim call of our own.

use std::ffi::c_char;

/// jemalloc reads its options from this symbol (`malloc_conf`, prefixed as the
/// `tikv-jemalloc-sys` build names its symbols) when it first allocates.
#[repr(transparent)]
pub struct MallocConf(*const c_char);

// SAFETY: a pointer to a constant, NUL-terminated string, never written.
unsafe impl Sync for MallocConf {}

pub const OPTIONS: &str = "narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0";

#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: MallocConf =
    MallocConf(c"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// Hands every arena's free pages back to the system now (after a burst that freed a lot,
/// e.g. the kernel loader's BTF parse), instead of waiting for the decay.
pub fn release_free_memory() {
    // MALLCTL_ARENAS_ALL (4096): every arena.
    // SAFETY: `arena.<i>.purge` takes no value; the name is NUL-terminated.
    let _ = unsafe { tikv_jemalloc_ctl::raw::write(b"arena.4096.purge\0", ()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_options_are_the_ones_jemalloc_runs_with() {
        // SAFETY: the names are NUL-terminated and the types are the options' C types.
        let narenas: u32 = unsafe { tikv_jemalloc_ctl::raw::read(b"opt.narenas\0") }.unwrap();
        let dirty: isize =
            unsafe { tikv_jemalloc_ctl::raw::read(b"opt.dirty_decay_ms\0") }.unwrap();
        let muzzy: isize =
            unsafe { tikv_jemalloc_ctl::raw::read(b"opt.muzzy_decay_ms\0") }.unwrap();
        assert_eq!((narenas, dirty, muzzy), (1, 1000, 0), "{OPTIONS}");
        // SAFETY: the string is NUL-terminated and lives as long as the process.
        let conf = unsafe { std::ffi::CStr::from_ptr(MALLOC_CONF.0) };
        assert_eq!(conf.to_str().unwrap(), OPTIONS);
        release_free_memory();
    }
}
