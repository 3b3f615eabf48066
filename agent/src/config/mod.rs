//! Configuration: parse the YAML file (`file.rs`), validate it into runtime types
//! (`validate.rs`, with the kernel, intercept and attribution types in `kernel.rs`), and report
//! every problem with its field path and line (`lines.rs`).
//! Runtime config is immutable and shared by all workers as an `Arc<Config>`.

pub mod admin;
pub mod cluster;
mod file;
pub mod gpu;
pub mod kernel;
mod lines;
pub mod otlp;
pub mod routing;
pub mod ship;
mod validate;
pub mod validate_governance;
mod validate_guard;
mod validate_kernel;

pub use kernel::{
    Anonymous, AttributionRule, AttributionSettings, Glob, InterceptRoute, KernelFacts, KernelMode,
    KernelSettings,
};
pub use validate::{
    BatchJobsSettings, Config, ConfigProblem, ConfigProblems, IoDriver, LedgerSettings, Limits,
    Model, ModelTarget, Provider, ProviderKind, ReplicaSettings, UpstreamSettings, INTERCEPTED,
};
pub use validate_guard::{CacheScope, CacheSettings, ExactCacheSettings, SemanticCacheSettings};

/// Reads, parses and validates a configuration file.
pub fn load(path: &std::path::Path) -> Result<Config, ConfigProblems> {
    let src = std::fs::read_to_string(path).map_err(|e| {
        ConfigProblems(vec![ConfigProblem {
            path: String::new(),
            line: None,
            message: format!("cannot read {}: {e}", path.display()),
        }])
    })?;
    Config::from_yaml(&src, &|name| std::env::var(name).ok())
}
