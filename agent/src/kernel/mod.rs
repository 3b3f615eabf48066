//! Kernel side: loads Tollgate's eBPF programs with aya, attaches them at the cgroup v2 root,
//! pins their maps under `/sys/fs/bpf/tollgate/`, and gives the agent typed handles to them.
//!
//! What it owns: the program objects compiled from `ebpf/` by `agent/build.rs` ([`objects`]),
//! their links and pins ([`Kernel`]), the per-connection attribution lookup used by the accept
//! phase ([`AttributionReader`], hot path: one map lookup per accepted connection), the node
//! counters written by settle through the control thread ([`CounterWriter`]), and cgroup id to
//! container/pod resolution ([`cgroup`]), and read-only access to the pins for node tools and
//! the CLI ([`pins`]: `tollgate top`, `tollgate kernel detach`).
//!
//! What it must never do: leave programs attached or pins behind after the agent exits (links
//! are fd-based, so even a killed agent detaches; [`Kernel::detach`] and `Drop` remove the
//! pins), redirect the agent's own connections (the programs exempt its tgid, calibrated at
//! load by a self-test), or make the agent fail to start: callers log the [`KernelError`] once
//! and run without kernel features ([`Features::unavailable`]).
//!
//! Self-contained on purpose: it depends only on `tollgate-common`, aya, libc, thiserror and
//! tracing, so the rest of the agent can change around it.

pub mod attribution;
pub mod cgroup;
pub mod counters;
pub mod error;
mod handover;
pub mod loader;
pub mod objects;
pub mod pins;
pub mod reuseport;
pub mod sys;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

pub use attribution::{AttributionReader, ConnAttribution};
pub use counters::CounterWriter;
pub use error::KernelError;
pub use loader::{Kernel, KernelStats};
pub use sys::detect_cgroup2_mount;

/// Loads the kernel side for the agent's start-up: on success the kernel and its features; on
/// failure no kernel, every feature inactive with the reason, and one warning in the log that
/// says what was refused and how to fix it. The agent runs either way.
pub fn start(cfg: &KernelConfig) -> (Option<Kernel>, Features) {
    match Kernel::load(cfg) {
        Ok(kernel) => {
            let features = kernel.features().clone();
            tracing::info!(%features, pin_dir = %kernel.pin_dir().display(), "kernel programs attached");
            (Some(kernel), features)
        }
        Err(e) => {
            tracing::warn!(
                "running without kernel features (no interception, no process attribution, no \
                 node counters): {e}"
            );
            (None, Features::unavailable(e.to_string()))
        }
    }
}

// The handles are shared with worker and control threads; keep them so.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<AttributionReader>();
    send_sync::<CounterWriter>();
    send_sync::<Kernel>();
};

/// Where maps are pinned unless configured otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/tollgate";

/// What [`Kernel::load`] needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelConfig {
    /// The agent's listen addresses. Connects to them are attributed; the first IPv4-capable
    /// and the first IPv6 one are the redirect targets (a wildcard becomes loopback).
    pub listen: Vec<SocketAddr>,
    /// Destinations whose TCP connects are redirected to the agent (exact address and port).
    pub intercept: Vec<SocketAddr>,
    /// Process whose connects are never redirected: the agent itself. When it is this process
    /// and the agent runs in a pid namespace, the load-time self-test finds the host's number.
    pub agent_pid: u32,
    /// Also never redirect connects from this cgroup v2 id (e.g. the agent's own container).
    pub exempt_cgroup_id: Option<u64>,
    /// The cgroup v2 mount to attach at; `None` finds it in /proc/mounts.
    pub cgroup_root: Option<PathBuf>,
    /// Where maps are pinned (must be on bpffs).
    pub pin_dir: PathBuf,
}

impl KernelConfig {
    /// A configuration for this process with the given listen and intercept addresses.
    pub fn new(listen: Vec<SocketAddr>, intercept: Vec<SocketAddr>) -> Self {
        Self {
            listen,
            intercept,
            agent_pid: std::process::id(),
            exempt_cgroup_id: None,
            cgroup_root: None,
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
        }
    }
}

/// Whether one kernel feature is working, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureState {
    Active,
    Inactive { reason: String },
}

impl FeatureState {
    pub(crate) fn off(reason: impl Into<String>) -> Self {
        Self::Inactive {
            reason: reason.into(),
        }
    }

    /// Whether the feature works.
    pub fn is_active(&self) -> bool {
        matches!(self, Self::Active)
    }
}

impl fmt::Display for FeatureState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Active => f.write_str("active"),
            Self::Inactive { reason } => write!(f, "inactive ({reason})"),
        }
    }
}

/// Which kernel features are active, for `/readyz` and `tollgate status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    /// IPv4 connects to intercepted destinations are redirected to the agent (connect4).
    pub interception: FeatureState,
    /// The same for IPv6 destinations (connect6).
    pub interception_v6: FeatureState,
    /// Local clients are attributed to pid, uid, comm and cgroup (sockops + self-test).
    pub attribution: FeatureState,
    /// Attribution entries are removed when connections close (tp_btf/inet_sock_set_state).
    pub close_cleanup: FeatureState,
    /// The node counter maps are pinned and writable.
    pub counters: FeatureState,
}

impl Features {
    /// Every feature inactive for one reason (the load failed or was not attempted).
    pub fn unavailable(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        let off = || FeatureState::off(reason.clone());
        Self {
            interception: off(),
            interception_v6: off(),
            attribution: off(),
            close_cleanup: off(),
            counters: off(),
        }
    }

    /// `(name, state)` pairs in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &FeatureState)> {
        [
            ("interception", &self.interception),
            ("interception_v6", &self.interception_v6),
            ("attribution", &self.attribution),
            ("close_cleanup", &self.close_cleanup),
            ("counters", &self.counters),
        ]
        .into_iter()
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, state)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name}: {state}")?;
        }
        Ok(())
    }
}
