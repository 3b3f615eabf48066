//! Applying a changed configuration file to a running agent: `SIGHUP`, a change of the file
//! (polled by [`watch`]), or `POST /admin/config/reload`. Each reload reads and validates the
//! file (every problem reported, the running configuration kept on any of them), builds a new
//! snapshot (`snapshot.rs`; new providers resolved and given TLS first) and swaps it in: new
//! requests see it at once, requests in flight finish on the one they started with, and no
//! connection is dropped. The applied file is recorded as a numbered version (`history.rs`).
//!
//! Some settings belong to things built once at start (listeners, worker threads, the ledger
//! writer, the kernel programs, per-worker caps). A reload that changes them keeps their running
//! values and says which (`Applied::restart_only`); a change of `intercept` (the kernel's
//! redirect list, which routes depend on) is refused until the kernel side can follow it.
//! Control plane only: reloads are serialised by a mutex and never run on a worker.

pub mod history;
pub mod watch;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::config::{Config, ConfigProblems};
use crate::shared::Shared;
use crate::snapshot::{Registry, SnapshotError};

/// What asked for a reload (recorded in the history).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Start,
    Sighup,
    FileWatch,
    Admin,
}

impl Trigger {
    pub fn label(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Sighup => "sighup",
            Trigger::FileWatch => "file-watch",
            Trigger::Admin => "admin",
        }
    }
}

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the new configuration has {count} problem(s):\n{problems}", count = problems.0.len())]
    Invalid { problems: ConfigProblems },
    #[error("{0}")]
    Snapshot(#[from] SnapshotError),
    #[error("`{0}` changed: it needs a restart (the running agent keeps its value)")]
    NeedsRestart(&'static str),
}

/// A reload that took effect (or found nothing to do).
#[derive(Debug, Clone)]
pub struct Applied {
    /// The generation now serving.
    pub generation: u64,
    /// The history version of the file, when it was recorded.
    pub version: Option<u64>,
    /// The file was the one already running: nothing was swapped.
    pub unchanged: bool,
    /// Settings that changed but only take effect after a restart.
    pub restart_only: Vec<&'static str>,
}

struct State {
    registry: Registry,
    /// The file's own settings at start (before command-line overrides), to tell which
    /// restart-only settings a new file changes.
    boot_file: Config,
    /// SHA-256 of the file the running snapshot was built from.
    applied_sha256: String,
}

/// Applies configuration files to the running agent.
pub struct Reloader {
    path: PathBuf,
    shared: Arc<Shared>,
    /// The configuration at start, whose restart-only settings a reload keeps.
    boot: Arc<Config>,
    state: Mutex<State>,
}

impl Reloader {
    /// Takes over the registry that built the first snapshot from `text`, and records `text`
    /// as a version (unless it is the latest one already).
    pub fn new(
        path: PathBuf,
        text: &[u8],
        shared: Arc<Shared>,
        boot: Arc<Config>,
        registry: Registry,
    ) -> Reloader {
        let sha = history::sha256(text);
        let latest = history::list(&boot.data_dir)
            .ok()
            .and_then(|l| l.last().cloned());
        if latest.is_none_or(|v| v.sha256 != sha) {
            if let Err(e) = history::record(&boot.data_dir, text, Trigger::Start.label(), 1) {
                tracing::warn!(error = %e, "cannot record the configuration history");
            }
        }
        let boot_file = Config::from_yaml(&String::from_utf8_lossy(text), &|name| {
            std::env::var(name).ok()
        })
        .unwrap_or_else(|_| (*boot).clone());
        Reloader {
            path,
            shared,
            boot,
            state: Mutex::new(State {
                registry,
                boot_file,
                applied_sha256: sha,
            }),
        }
    }

    /// The configuration file being applied.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the configuration history lives.
    pub fn data_dir(&self) -> &Path {
        &self.boot.data_dir
    }

    /// Reads the file and applies it. On any error the running configuration stays; the
    /// error is logged with every problem and counted in `/metrics`.
    pub fn reload(&self, trigger: Trigger) -> Result<Applied, ReloadError> {
        let result = self.try_reload(trigger);
        let g = &self.shared.metrics.globals;
        match &result {
            Ok(a) if a.unchanged => {}
            Ok(a) => {
                g.config_reloads.fetch_add(1, Ordering::Relaxed);
                g.config_generation.store(a.generation, Ordering::Relaxed);
                tracing::info!(
                    trigger = trigger.label(),
                    generation = a.generation,
                    version = ?a.version,
                    restart_only = ?a.restart_only,
                    "configuration reloaded"
                );
            }
            Err(e) => {
                g.config_reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    trigger = trigger.label(),
                    "configuration reload refused, the running configuration stays: {e}"
                );
            }
        }
        result
    }

    fn try_reload(&self, trigger: Trigger) -> Result<Applied, ReloadError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let text = std::fs::read(&self.path).map_err(|source| ReloadError::Read {
            path: self.path.clone(),
            source,
        })?;
        let sha = history::sha256(&text);
        let current = self.shared.snapshot.load_full();
        if sha == state.applied_sha256 {
            return Ok(Applied {
                generation: current.generation,
                version: None,
                unchanged: true,
                restart_only: Vec::new(),
            });
        }
        let src = String::from_utf8_lossy(&text);
        let mut cfg = Config::from_yaml(&src, &|name| std::env::var(name).ok())
            .map_err(|problems| ReloadError::Invalid { problems })?;
        if cfg.intercept != self.boot.intercept {
            return Err(ReloadError::NeedsRestart("intercept"));
        }
        let restart_only = keep_restart_only(&mut cfg, &state.boot_file, &self.boot);
        let generation = current.generation + 1;
        let snap = state.registry.build(
            Arc::new(cfg),
            generation,
            &self.shared.metrics,
            &self.shared.governor,
        )?;
        self.shared.snapshot.store(Arc::new(snap));
        state.applied_sha256 = sha;
        let version = match history::record(&self.boot.data_dir, &text, trigger.label(), generation)
        {
            Ok(v) => Some(v.number),
            Err(e) => {
                tracing::warn!(error = %e, "cannot record the configuration history");
                None
            }
        };
        Ok(Applied {
            generation,
            version,
            unchanged: false,
            restart_only,
        })
    }
}

/// Puts the running values back into the settings a reload cannot change, and names the ones
/// the new file changed (against the file at start, so command-line overrides are not changes).
fn keep_restart_only(new: &mut Config, file: &Config, running: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($($field:ident).+, $name:literal) => {
            if format!("{:?}", new.$($field).+) != format!("{:?}", file.$($field).+) {
                changed.push($name);
            }
            new.$($field).+ = running.$($field).+.clone();
        };
    }
    keep!(listen, "listen");
    keep!(workers, "workers");
    keep!(data_dir, "data_dir");
    keep!(io_driver, "io.driver");
    keep!(uring_entries, "io.uring_entries");
    keep!(kernel, "kernel");
    keep!(attribution, "attribution");
    keep!(ledger, "ledger");
    keep!(replicas, "replicas");
    keep!(batch_jobs, "batch_jobs");
    keep!(cluster, "cluster");
    keep!(admin, "admin");
    keep!(shutdown_grace, "shutdown_grace_ms");
    keep!(
        limits.max_connections_per_worker,
        "limits.max_connections_per_worker"
    );
    keep!(
        limits.max_buffered_bytes_per_worker,
        "limits.max_buffered_bytes_per_worker"
    );
    keep!(
        limits.buffered_wait_connections_per_worker,
        "limits.buffered_wait_connections_per_worker"
    );
    keep!(
        upstream.pool_max_idle,
        "upstream.pool_max_idle_per_provider"
    );
    keep!(upstream.pool_idle_timeout, "upstream.pool_idle_timeout_ms");
    if !changed.is_empty() {
        tracing::warn!(settings = ?changed, "these settings changed but take effect only after a restart; the running values stay");
    }
    changed
}
