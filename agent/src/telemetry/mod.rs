//! Telemetry: Prometheus metrics (`metrics.rs`), logging setup, and the control-plane telemetry
//! thread (`control.rs`) that reads replica load (`replicas.rs`, from the engines' Prometheus
//! text, `prom.rs`) and GPU figures (`gpu.rs`, NVML) off the request path.

pub mod control;
pub mod gpu;
pub mod metrics;
pub mod otlp;
pub mod prom;
pub mod replicas;
pub mod sched;

/// Installs the log subscriber (RUST_LOG, default info) once per process.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
