//! Subcommands: `serve`, `validate`, `usage`, `demo`. The CLI edge is the only place that uses
//! `anyhow`; everything below returns typed errors.

pub mod demo;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::ledger::query::{self, Format, GroupBy};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Governs LLM token traffic: an OpenAI/Anthropic-compatible metering proxy"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the agent.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
        /// Override `listen` (use port 0 for any free port; the bound address is printed).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Override `workers`.
        #[arg(long)]
        workers: Option<usize>,
        /// Override `data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Check a configuration file and report every problem with its field and line.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Summarise the usage ledger.
    Usage {
        /// Data directory holding ledger.sqlite.
        #[arg(long, default_value = "./tollgate-data")]
        data_dir: PathBuf,
        #[arg(long, value_enum, default_value = "model")]
        by: GroupBy,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Start two simulator replicas and the agent, send a mixed workload, and stay up.
    Demo(demo::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            workers,
            data_dir,
        } => {
            let mut cfg = load(&config)?;
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(w) = workers {
                anyhow::ensure!(w > 0, "--workers must be at least 1");
                cfg.workers = w;
            }
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            crate::server::serve(cfg, crate::cli::kernel_status())
        }
        Command::Validate { config } => {
            let cfg = load(&config)?;
            println!(
                "{}: ok ({} providers, {} models, listen {})",
                config.display(),
                cfg.providers.len(),
                cfg.models.len(),
                cfg.listen
            );
            Ok(())
        }
        Command::Usage {
            data_dir,
            by,
            format,
        } => {
            let db = crate::ledger::db_path(&data_dir);
            anyhow::ensure!(
                db.exists(),
                "no ledger at {} (is --data-dir right?)",
                db.display()
            );
            let conn = rusqlite::Connection::open_with_flags(
                &db,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .with_context(|| format!("opening {}", db.display()))?;
            let rows = query::summarize(&conn, by)?;
            let key = format!("{by:?}").to_lowercase();
            print!("{}", query::render(&rows, format, &key));
            Ok(())
        }
        Command::Demo(args) => demo::run(args),
    }
}

/// Loads a config file; problems become one error listing each on its own line.
pub fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    config::load(path).map_err(|problems| {
        anyhow::anyhow!(
            "{} has {} problem(s):\n{problems}",
            path.display(),
            problems.0.len()
        )
    })
}

/// What the kernel side is doing, for start-up logs and /readyz.
pub fn kernel_status() -> String {
    "not loaded (eBPF attribution is not wired into the data plane yet)".to_string()
}
