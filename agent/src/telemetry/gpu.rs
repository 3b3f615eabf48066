//! GPU utilisation and memory, read through NVML.
//!
//! Why: node schedulers read per-GPU figures from the pinned `tg_gpu` map next to the replica
//! load, and dashboards read them from the agent's `/metrics`, without a separate exporter.
//!
//! What: a [`GpuSource`] yields one [`GpuSample`] per device. [`Nvml`] is the real source: it
//! loads `libnvidia-ml.so.1` at runtime with `dlopen` (libloading) and resolves the six symbols it
//! needs, so the agent builds and runs on machines without a driver; there [`Nvml::open`] returns
//! [`GpuError::LibraryNotFound`], the agent logs once that GPU counters are off and why, and
//! `/readyz` says so (`gpu: {active: false, reason}`). The control-plane telemetry thread samples
//! the source about once a second ([`GpuBoard`] holds the latest samples for `/metrics`; the
//! kernel map gets them through `CounterWriter::set_gpu_stats`).
//!
//! Never: on a worker or the request path (NVML calls take microseconds to milliseconds and
//! may block on the driver).

use std::ffi::{c_int, c_uint, c_void};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// The NVML library's soname, as the NVIDIA driver installs it.
pub const NVML_LIBRARY: &str = "libnvidia-ml.so.1";

/// One GPU's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuSample {
    /// NVML's device index.
    pub index: u32,
    /// Percent of the sample period during which a kernel ran (0..=100).
    pub utilization_pct: u32,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
}

impl GpuSample {
    /// The `tg_gpu` value (`updated_unix_ms` is stamped by the writer).
    pub fn to_map_value(self) -> tollgate_common::GpuStats {
        tollgate_common::GpuStats {
            util_pct: self.utilization_pct.min(100),
            _pad: 0,
            mem_used_bytes: self.memory_used_bytes,
            mem_total_bytes: self.memory_total_bytes,
            updated_unix_ms: 0,
        }
    }
}

/// Why GPU figures cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("{library} not found (no NVIDIA driver on this host?): {reason}")]
    LibraryNotFound { library: String, reason: String },
    #[error("{library} lacks {symbol}: {reason}")]
    MissingSymbol {
        library: String,
        symbol: &'static str,
        reason: String,
    },
    #[error("{call} failed with NVML error {code}")]
    Call { call: &'static str, code: i32 },
}

/// A libloading error with its cause (`dlopen failed: libnvidia-ml.so.1: cannot open ...`).
fn describe(e: &libloading::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Where GPU samples come from (NVML in production; the vendor-library boundary in tests).
pub trait GpuSource: Send {
    /// The current figures of every device.
    fn devices(&mut self) -> Result<Vec<GpuSample>, GpuError>;
}

#[repr(C)]
#[derive(Default)]
struct NvmlUtilization {
    gpu: c_uint,
    memory: c_uint,
}

#[repr(C)]
#[derive(Default)]
struct NvmlMemory {
    total: u64,
    free: u64,
    used: u64,
}

type NvmlDevice = *mut c_void;
type FnVoid = unsafe extern "C" fn() -> c_int;
type FnCount = unsafe extern "C" fn(*mut c_uint) -> c_int;
type FnHandle = unsafe extern "C" fn(c_uint, *mut NvmlDevice) -> c_int;
type FnUtil = unsafe extern "C" fn(NvmlDevice, *mut NvmlUtilization) -> c_int;
type FnMem = unsafe extern "C" fn(NvmlDevice, *mut NvmlMemory) -> c_int;

/// NVML, loaded at runtime. Initialised on open, shut down on drop.
pub struct Nvml {
    shutdown: FnVoid,
    count: FnCount,
    handle: FnHandle,
    util: FnUtil,
    mem: FnMem,
    /// Keeps the function pointers above valid; dropped last.
    _lib: libloading::Library,
}

// SAFETY: NVML is thread-safe (documented: "all NVML calls are thread safe"); the struct holds
// only function pointers into the library it owns.
unsafe impl Send for Nvml {}

fn check(call: &'static str, code: c_int) -> Result<(), GpuError> {
    if code == 0 {
        Ok(())
    } else {
        Err(GpuError::Call { call, code })
    }
}

impl Nvml {
    /// Loads [`NVML_LIBRARY`] and initialises NVML.
    pub fn open() -> Result<Nvml, GpuError> {
        Self::open_library(NVML_LIBRARY)
    }

    /// Loads NVML from `library` (a soname or path) and initialises it.
    pub fn open_library(library: &str) -> Result<Nvml, GpuError> {
        // SAFETY: loading NVML runs its initialisers, which have no preconditions; the library
        // is the NVIDIA driver's own.
        let lib = unsafe { libloading::Library::new(library) }.map_err(|e| {
            GpuError::LibraryNotFound {
                library: library.to_string(),
                reason: describe(&e),
            }
        })?;
        macro_rules! sym {
            ($name:literal, $ty:ty) => {{
                // SAFETY: the symbol's C signature is NVML's documented one, which `$ty` mirrors.
                let s =
                    unsafe { lib.get::<$ty>(concat!($name, "\0").as_bytes()) }.map_err(|e| {
                        GpuError::MissingSymbol {
                            library: library.to_string(),
                            symbol: $name,
                            reason: describe(&e),
                        }
                    })?;
                *s
            }};
        }
        let init = sym!("nvmlInit_v2", FnVoid);
        let shutdown = sym!("nvmlShutdown", FnVoid);
        let count = sym!("nvmlDeviceGetCount_v2", FnCount);
        let handle = sym!("nvmlDeviceGetHandleByIndex_v2", FnHandle);
        let util = sym!("nvmlDeviceGetUtilizationRates", FnUtil);
        let mem = sym!("nvmlDeviceGetMemoryInfo", FnMem);
        // SAFETY: nvmlInit_v2 takes no arguments; it is reference-counted with nvmlShutdown.
        // It runs before `Nvml` exists, so a failed init is never balanced by a shutdown.
        check("nvmlInit_v2", unsafe { init() })?;
        Ok(Nvml {
            shutdown,
            count,
            handle,
            util,
            mem,
            _lib: lib,
        })
    }
}

impl GpuSource for Nvml {
    fn devices(&mut self) -> Result<Vec<GpuSample>, GpuError> {
        let mut count: c_uint = 0;
        // SAFETY: `count` is a valid out pointer; NVML is initialised.
        check("nvmlDeviceGetCount_v2", unsafe { (self.count)(&mut count) })?;
        let mut out = Vec::with_capacity(count as usize);
        for index in 0..count {
            let mut dev: NvmlDevice = std::ptr::null_mut();
            // SAFETY: `dev` is a valid out pointer and `index` is below the device count.
            check("nvmlDeviceGetHandleByIndex_v2", unsafe {
                (self.handle)(index, &mut dev)
            })?;
            let mut util = NvmlUtilization::default();
            let mut mem = NvmlMemory::default();
            // SAFETY: `dev` came from NVML; the out pointers are valid `#[repr(C)]` structs of
            // NVML's layout.
            check("nvmlDeviceGetUtilizationRates", unsafe {
                (self.util)(dev, &mut util)
            })?;
            // SAFETY: as above.
            check("nvmlDeviceGetMemoryInfo", unsafe {
                (self.mem)(dev, &mut mem)
            })?;
            out.push(GpuSample {
                index,
                utilization_pct: util.gpu,
                memory_used_bytes: mem.used,
                memory_total_bytes: mem.total,
            });
        }
        Ok(out)
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: balances the successful nvmlInit_v2 of `open_library`; the library is still
        // loaded (`_lib` is dropped after this).
        unsafe { (self.shutdown)() };
    }
}

/// Whether GPU figures are being read, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuStatus {
    Active { devices: usize },
    Inactive { reason: String },
}

impl GpuStatus {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            GpuStatus::Active { devices } => {
                serde_json::json!({ "active": true, "devices": devices })
            }
            GpuStatus::Inactive { reason } => {
                serde_json::json!({ "active": false, "reason": reason })
            }
        }
    }
}

/// The latest GPU samples and status, published by the telemetry thread, read lock-free by
/// `/metrics` and `/readyz`.
pub struct GpuBoard {
    samples: ArcSwap<Vec<GpuSample>>,
    status: ArcSwap<GpuStatus>,
}

impl Default for GpuBoard {
    fn default() -> Self {
        Self {
            samples: ArcSwap::from_pointee(Vec::new()),
            status: ArcSwap::from_pointee(GpuStatus::Inactive {
                reason: "not probed yet".into(),
            }),
        }
    }
}

impl GpuBoard {
    pub fn samples(&self) -> Arc<Vec<GpuSample>> {
        self.samples.load_full()
    }

    pub fn status(&self) -> Arc<GpuStatus> {
        self.status.load_full()
    }

    pub(crate) fn publish(&self, samples: Vec<GpuSample>) {
        self.samples.store(Arc::new(samples));
    }

    pub(crate) fn set_status(&self, status: GpuStatus) {
        self.status.store(Arc::new(status));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_a_clean_error() {
        let e = Nvml::open_library("libnvidia-ml-tollgate-test-absent.so.1")
            .err()
            .expect("no such library");
        assert!(matches!(e, GpuError::LibraryNotFound { .. }), "{e}");
        assert!(e.to_string().contains("not found"), "{e}");
    }

    #[test]
    fn nvml_on_this_host() {
        match Nvml::open() {
            Ok(mut nvml) => {
                let devices = nvml
                    .devices()
                    .expect("NVML loaded, so devices can be listed");
                eprintln!("NVML present: {devices:?}");
                for d in devices {
                    assert!(
                        d.utilization_pct <= 100 && d.memory_used_bytes <= d.memory_total_bytes
                    );
                }
            }
            Err(e) => {
                eprintln!("NVML absent here: {e}");
                assert!(matches!(e, GpuError::LibraryNotFound { .. }), "{e}");
            }
        }
    }

    #[test]
    fn map_value_clamps_utilisation() {
        let s = GpuSample {
            index: 0,
            utilization_pct: 140,
            memory_used_bytes: 1,
            memory_total_bytes: 2,
        };
        let v = s.to_map_value();
        assert_eq!(
            (v.util_pct, v.mem_used_bytes, v.mem_total_bytes),
            (100, 1, 2)
        );
    }
}
