//! Errors of the kernel subsystem: why eBPF could not be loaded, attached or used.
//!
//! Every variant's message says what was refused and what would fix it, because it is shown
//! once at start-up and in `tollgate status` when the agent falls back to running without its
//! kernel side. Mapped into the agent's `GateError` only at the phase boundary.

use std::io;
use std::path::PathBuf;

/// What a user needs for the kernel side, quoted in messages.
pub const INSTALL_HINT: &str = "apt-get install clang-19 libbpf-dev";

/// What the kernel refused, and why.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The binary was built without clang-19, so it holds no programs.
    #[error("kernel features are absent from this build: {reason}")]
    NotBuilt { reason: String },

    /// The process lacks the capabilities eBPF needs.
    #[error(
        "not privileged enough for eBPF: {detail}; run as root or grant CAP_BPF, CAP_NET_ADMIN \
         and CAP_PERFMON (or CAP_SYS_ADMIN) in the host's user namespace"
    )]
    Privilege { detail: String },

    /// No cgroup v2 hierarchy was found or the given path is not one.
    #[error(
        "no cgroup v2 hierarchy: {detail}; the connect and sockops hooks attach to cgroup v2 \
         (mount it with `mount -t cgroup2 none /sys/fs/cgroup`, or boot with \
         systemd.unified_cgroup_hierarchy=1)"
    )]
    NoCgroup2 { detail: String },

    /// bpffs is missing and could not be mounted, or the pin directory is not on it.
    #[error("cannot pin maps under {}: {detail}", path.display())]
    Bpffs { path: PathBuf, detail: String },

    /// Another running agent holds the pin directory's lock.
    #[error(
        "{} is in use by another running agent{}; give each agent its own kernel.pin_dir",
        path.display(),
        owner.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Busy { path: PathBuf, owner: Option<u32> },

    /// Taking over from the agent running on the same pin directory failed; it keeps its
    /// programs.
    #[error(
        "taking the kernel programs over from the running agent failed ({detail}); it keeps them"
    )]
    Handover { detail: String },

    /// The configuration cannot be expressed in the maps.
    #[error("invalid kernel configuration: {0}")]
    Config(String),

    /// An embedded object lacks a map or program this loader expects (a build mismatch).
    #[error("{object}.bpf.o is not what this agent expects: {detail}")]
    Mismatch {
        object: &'static str,
        detail: String,
    },

    /// The kernel refused an object (maps, BTF, relocations).
    #[error("loading {object}.bpf.o: {}{}", chain(.source), hint(.source))]
    Load {
        object: &'static str,
        #[source]
        source: aya::EbpfError,
    },

    /// The kernel refused to load or attach a program (the verifier log is in the source).
    #[error("{action} {program}: {}{}", chain(.source), hint(.source))]
    Program {
        action: &'static str,
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },

    /// A map operation failed.
    #[error("map {map}: {}{}", chain(.source), hint(.source))]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },

    /// A file system operation failed.
    #[error("{context}: {}", chain(.source))]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl KernelError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn map(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> Self {
        move |source| Self::Map { map, source }
    }
}

/// `err` and its sources joined with ": " (aya puts the errno and the verifier log in sources).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// Adds what to do when the underlying error is a permission error from the kernel.
fn hint(err: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return match io.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    " (the kernel said permission denied: eBPF needs CAP_BPF, CAP_NET_ADMIN and \
                     CAP_PERFMON or CAP_SYS_ADMIN; in a container, run privileged)"
                }
                _ => "",
            };
        }
        cur = e.source();
    }
    ""
}
