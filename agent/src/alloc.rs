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

use std::ffi::{c_char, CStr};

/// The options jemalloc runs with (see above).
pub const OPTIONS: &CStr = c"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0";

/// jemalloc reads its options from this symbol (`malloc_conf`, prefixed as the
/// `tikv-jemalloc-sys` build names its symbols) when it first allocates.
#[repr(transparent)]
pub struct MallocConf(*const c_char);

// SAFETY: a pointer to a constant, NUL-terminated string, never written.
unsafe impl Sync for MallocConf {}

#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: MallocConf = MallocConf(OPTIONS.as_ptr());

/// Hands every arena's free pages back to the system now (after a burst that freed a lot,
/// e.g. the kernel loader's BTF parse), instead of waiting for the decay.
pub fn release_free_memory() {
    // This thread's cached free objects first (else they keep their pages dirty), then every
    // arena (MALLCTL_ARENAS_ALL, 4096).
    let _ = void_ctl(c"thread.tcache.flush");
    let _ = void_ctl(c"arena.4096.purge");
}

/// What the heap holds, in bytes, from jemalloc's statistics: `/metrics` exports it as
/// `tollgate_heap_bytes` (after a wave of connections closes, `metadata` and `retained` show
/// what the allocator keeps for the peak, `resident` what it still occupies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes the program has allocated and not freed.
    pub allocated: usize,
    /// Bytes in pages that hold allocations (`allocated` plus their pages' free space).
    pub active: usize,
    /// jemalloc's own bookkeeping (extent descriptors, radix tree, thread caches' headers).
    pub metadata: usize,
    /// Bytes in pages the process holds in memory for the heap.
    pub resident: usize,
    /// Bytes mapped for the heap.
    pub mapped: usize,
    /// Address space kept after its pages went back to the system (not resident).
    pub retained: usize,
}

impl HeapStats {
    /// The figures and their `kind` labels, in export order.
    pub fn kinds(&self) -> [(&'static str, usize); 6] {
        [
            ("allocated", self.allocated),
            ("active", self.active),
            ("metadata", self.metadata),
            ("resident", self.resident),
            ("mapped", self.mapped),
            ("retained", self.retained),
        ]
    }
}

/// Reads the heap's statistics now; `None` if jemalloc refuses (built without statistics).
/// jemalloc caches them until its epoch advances, which merges every thread's counts under its
/// control lock: a scrape's cost, not a request's.
pub fn heap_stats() -> Option<HeapStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some(HeapStats {
        allocated: stats::allocated::read().ok()?,
        active: stats::active::read().ok()?,
        metadata: stats::metadata::read().ok()?,
        resident: stats::resident::read().ok()?,
        mapped: stats::mapped::read().ok()?,
        retained: stats::retained::read().ok()?,
    })
}

/// Runs a jemalloc control that takes and returns nothing; its error number on failure.
fn void_ctl(name: &CStr) -> Result<(), i32> {
    // SAFETY: a NUL-terminated name; a void control must get null pointers and a zero length
    // (a non-null pointer to a zero-sized value is refused with EINVAL).
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(rc)
    }
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
        // What jemalloc parsed from the symbol, not the string itself.
        assert_eq!((narenas, dirty, muzzy), (1, 1000, 0), "{OPTIONS:?}");
        assert_eq!(void_ctl(c"thread.tcache.flush"), Ok(()));
        assert_eq!(void_ctl(c"arena.4096.purge"), Ok(()));
        assert!(void_ctl(c"no.such.control").is_err());
    }

    #[test]
    fn heap_statistics_follow_an_allocation() {
        // Unit tests run on the system allocator; jemalloc is called directly here.
        const SIZE: usize = 8 << 20;
        let before = heap_stats().expect("jemalloc is built with statistics");
        // SAFETY: a plain allocation, freed below.
        let p = unsafe { tikv_jemalloc_sys::malloc(SIZE) };
        assert!(!p.is_null());
        let during = heap_stats().unwrap();
        // SAFETY: allocated above by the same allocator, freed once.
        unsafe { tikv_jemalloc_sys::free(p) };
        let after = heap_stats().unwrap();
        assert!(
            during.allocated >= before.allocated + SIZE,
            "{before:?} {during:?}"
        );
        assert!(
            after.allocated + SIZE <= during.allocated,
            "{during:?} {after:?}"
        );
        assert!(during.active >= during.allocated && during.mapped >= during.active);
        assert!(during.metadata > 0, "{during:?}");
        let kinds = during.kinds();
        assert_eq!(kinds[0], ("allocated", during.allocated));
        assert_eq!(kinds.len(), 6);
    }
}
