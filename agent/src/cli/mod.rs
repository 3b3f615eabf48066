//! Subcommands: `serve`, `validate`, `usage`, `demo`, and the node-side views of the kernel
//! part: `status` (an agent's /readyz, readably), `top` (the pinned counter maps, live) and
//! `kernel detach` (clean up after a killed agent); `import litellm` converts a LiteLLM config. The CLI edge is the only place that uses
//! `anyhow`; everything below returns typed errors.

pub mod config_cmd;
pub mod demo;
pub mod export;
pub mod kernel;
pub mod keys;
pub mod report;
pub mod status;
pub mod top;

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
        /// Default: model (team with `--cluster`, which sums by team or key only).
        #[arg(long, value_enum)]
        by: Option<GroupBy>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Only requests started in this UTC month (`2026-11`).
        #[arg(long)]
        month: Option<String>,
        /// Sum every agent of the cluster (the totals they publish to the Redis of `cluster:`
        /// in `--config`), by team (default) or key, with the number of agents.
        #[arg(long, requires = "config", conflicts_with = "month")]
        cluster: bool,
        /// The agent's config file (its `cluster:` section), with `--cluster`.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// With `--cluster`: the current UTC `day` or `month` (default).
        #[arg(long, default_value = "month", value_parser = ["day", "month"], requires = "cluster")]
        period: String,
    },
    /// What each team spent in a UTC month, against the month before and its budget (the
    /// same as `tollgate report chargeback`).
    Chargeback(report::ChargebackArgs),
    /// The ledger in formats other tools read: `focus` (FinOps FOCUS 1.0 CSV).
    Export {
        #[command(subcommand)]
        command: export::ExportCommand,
    },
    /// Reports over the ledger: `findings` (spend patterns with the requests behind them).
    Report {
        #[command(subcommand)]
        command: report::ReportCommand,
    },
    /// Start two simulator replicas and the agent, send a mixed workload, and stay up.
    Demo(demo::Args),
    /// Ask a running agent how it is doing (its /readyz, kernel features included).
    Status {
        /// The agent's listen address.
        #[arg(long, default_value = "127.0.0.1:4000")]
        addr: String,
        /// Print the raw JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Live token totals per model, cgroup and replica from the pinned kernel maps (like top).
    Top(top::Args),
    /// The kernel side of a node.
    Kernel {
        #[command(subcommand)]
        command: kernel::Command,
    },
    /// The configuration history a running agent keeps: list, compare, roll back.
    Config {
        #[command(subcommand)]
        command: config_cmd::Command,
    },
    /// Virtual keys on a running agent (through its admin API).
    Keys {
        #[command(flatten)]
        admin: keys::AdminArgs,
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Expiring exceptions: a model or extra budget for a key, team, project or user.
    Exceptions {
        #[command(flatten)]
        admin: keys::AdminArgs,
        #[command(subcommand)]
        command: keys::ExceptionsCommand,
    },
    /// The audit log: key and exception changes, breaches, alerts, loop trips.
    Audit(keys::AuditArgs),
    /// Convert another gateway's configuration: the Tollgate config goes to stdout, what could
    /// not be converted to stderr.
    Import {
        #[command(subcommand)]
        from: ImportFrom,
    },
}

#[derive(Subcommand)]
pub enum ImportFrom {
    /// A LiteLLM proxy config.yaml (`model_list`).
    Litellm {
        /// The LiteLLM config file.
        file: PathBuf,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            workers,
            data_dir,
        } => {
            let text =
                std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?;
            let mut cfg = config::Config::from_yaml(&String::from_utf8_lossy(&text), &|name| {
                std::env::var(name).ok()
            })
            .map_err(|problems| {
                anyhow::anyhow!(
                    "{} has {} problem(s):\n{problems}",
                    config.display(),
                    problems.0.len()
                )
            })?;
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
            crate::server::serve(cfg, crate::server::ConfigSource { path: config, text })
        }
        Command::Validate { config } => {
            let cfg = load(&config)?;
            println!(
                "{}: ok ({} providers, {} models, listen {}, kernel {}, {} intercepted, {} attribution rules)",
                config.display(),
                cfg.configured_providers().count(),
                cfg.models.len(),
                cfg.listen,
                cfg.kernel.enabled.as_str(),
                cfg.intercept.len(),
                cfg.attribution.rules.len(),
            );
            for w in crate::config::validate_governance::warnings(&cfg.governance) {
                eprintln!("warning: {w}");
            }
            Ok(())
        }
        Command::Usage {
            data_dir,
            by,
            format,
            month,
            cluster,
            config,
            period,
        } => {
            if cluster {
                let by = by.unwrap_or(GroupBy::Team);
                return cluster_usage(config.as_deref(), by, format, &period);
            }
            let by = by.unwrap_or(GroupBy::Model);
            let conn = open_ledger(&data_dir)?;
            let (from, to) = match month {
                Some(m) => month_range(&m)?,
                None => (i64::MIN, i64::MAX),
            };
            let rows = query::summarize_range(&conn, by, from, to)?;
            let key = format!("{by:?}").to_lowercase();
            print!("{}", query::render(&rows, format, &key));
            Ok(())
        }
        Command::Chargeback(args) => report::chargeback(args),
        Command::Export { command } => export::run(command),
        Command::Report { command } => report::run(command),
        Command::Demo(args) => demo::run(args),
        Command::Status { addr, json } => status::run(&addr, json),
        Command::Top(args) => top::run(args),
        Command::Kernel { command } => kernel::run(command),
        Command::Config { command } => config_cmd::run(command),
        Command::Keys { admin, command } => keys::keys(&admin, command),
        Command::Exceptions { admin, command } => keys::exceptions(&admin, command),
        Command::Audit(args) => keys::audit(args),
        Command::Import {
            from: ImportFrom::Litellm { file },
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let converted = crate::import::litellm::convert(&text)
                .with_context(|| format!("converting {}", file.display()))?;
            print!("{}", converted.yaml);
            for note in &converted.notes {
                eprintln!("not converted: {note}");
            }
            Ok(())
        }
    }
}

pub(crate) fn open_ledger(data_dir: &std::path::Path) -> anyhow::Result<rusqlite::Connection> {
    let db = crate::ledger::db_path(data_dir);
    anyhow::ensure!(
        db.exists(),
        "no ledger at {} (is --data-dir right?)",
        db.display()
    );
    rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", db.display()))
}

/// `tollgate usage --cluster`: every agent's published totals of the current day or month.
fn cluster_usage(
    config: Option<&std::path::Path>,
    by: GroupBy,
    format: Format,
    period: &str,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(by, GroupBy::Team | GroupBy::Key),
        "--cluster sums by team or key only"
    );
    let path = config.context("--cluster needs --config (for its `cluster:` section)")?;
    let cfg = load(path)?;
    let settings = cfg
        .cluster
        .with_context(|| format!("{} has no `cluster:` section", path.display()))?;
    let mut conn = crate::cluster::conn::connect(&settings, std::time::Duration::from_secs(2))
        .with_context(|| format!("connecting to {}", settings.describe()))?;
    let window = if period == "day" {
        crate::governance::window::Window::Day
    } else {
        crate::governance::window::Window::Month
    };
    let rows = crate::cluster::usage::collect(&mut *conn, window, by)
        .with_context(|| format!("reading usage from {}", settings.describe()))?;
    let key = format!("{by:?}").to_lowercase();
    if format == Format::Table {
        let hash = crate::cluster::usage::period_key(window, crate::governance::window::now_ms());
        let label = hash.trim_start_matches("tollgate:usage:");
        println!("Usage across the cluster ({label}, UTC), by {key}");
    }
    print!("{}", query::render(&rows, format, &key));
    Ok(())
}

fn month_range(month: &str) -> anyhow::Result<(i64, i64)> {
    let span = crate::governance::window::month_span(month)
        .with_context(|| format!("`{month}` is not a month like 2026-11"))?;
    Ok((span.start_ms, span.end_ms))
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
