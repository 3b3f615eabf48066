//! `tollgate report findings`: spend patterns in the ledger (`ledger/findings.rs`), for a UTC
//! month or the last N days, with their thresholds as flags. `tollgate report chargeback`: a
//! month's spend per group against the month before and its budget (`ledger/chargeback.rs`).

use std::path::PathBuf;

use crate::ledger::findings::{findings, render, Thresholds};
use crate::ledger::query::{self, Format, GroupBy};

#[derive(clap::Subcommand)]
pub enum ReportCommand {
    /// What each team (or project, cost center, key, user) spent in a UTC month: tokens,
    /// requests, cost, the change against the previous month, and the use of its monthly budget.
    Chargeback(ChargebackArgs),
    /// What self-hosted tokens cost in GPU time, per team (next to cloud spend) and per
    /// replica (busy and idle cost, USD per 1M tokens, against its `compare_to` model).
    Gpu {
        #[command(flatten)]
        period: Period,
        #[arg(long, value_enum, default_value = "team")]
        by: GroupBy,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// How right the token estimates are, per model: requests whose provider reported usage,
    /// sampled (`ledger.accuracy_sample_every`) and estimated too.
    Accuracy {
        #[command(flatten)]
        period: Period,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Premium-model overuse, context stuffing, token spikes, retry storms, tokenizer drift
    /// and cache-miss waste, with the requests behind each.
    Findings {
        #[command(flatten)]
        period: Period,
        /// A team spending more than this share of its cost on the most expensive model.
        #[arg(long, default_value_t = 0.5)]
        premium_share: f64,
        /// A team whose average prompt is above this many tokens.
        #[arg(long, default_value_t = 20_000.0)]
        context_tokens: f64,
        /// A session whose busiest minute is this many times its median minute.
        #[arg(long, default_value_t = 5.0)]
        spike_factor: f64,
        /// A minute in which more than this share of a model's requests were retried.
        #[arg(long, default_value_t = 0.1)]
        retry_share: f64,
        /// A new model version whose prompt tokens per byte moved more than this share.
        #[arg(long, default_value_t = 0.05)]
        drift_share: f64,
        /// A model whose engines recomputed more than this share of the prompt prefixes the
        /// serving replica had already been sent.
        #[arg(long, default_value_t = 0.5)]
        cache_waste_share: f64,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

/// Which ledger, and which requests in it.
#[derive(clap::Args)]
pub struct Period {
    #[arg(long, default_value = "./tollgate-data")]
    data_dir: PathBuf,
    /// A UTC month, `YYYY-MM` (default: the last `--days` days).
    #[arg(long)]
    month: Option<String>,
    #[arg(long, default_value_t = 30)]
    days: u32,
}

impl Period {
    /// The ledger, read-only, and the period as `[from, to)` in ms.
    fn open(&self) -> anyhow::Result<(rusqlite::Connection, i64, i64)> {
        let conn = super::open_ledger(&self.data_dir)?;
        let (from, to) = match &self.month {
            Some(m) => super::month_range(m)?,
            None => {
                let now = crate::governance::window::now_ms();
                (now - i64::from(self.days) * 86_400_000, i64::MAX)
            }
        };
        Ok((conn, from, to))
    }
}

#[derive(clap::Args)]
pub struct ChargebackArgs {
    /// The agent's data directory (default ./tollgate-data, or `data_dir` of `--config`).
    #[arg(long, conflicts_with = "config")]
    pub data_dir: Option<PathBuf>,
    /// The agent's config file: its `data_dir`, and its `budgets:` for budget use.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The month, `YYYY-MM` (default: the current one).
    #[arg(long)]
    pub month: Option<String>,
    /// Group by team (default) or cost center, project, key, user.
    #[arg(long, value_enum, default_value = "team")]
    pub by: GroupBy,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// `tollgate report chargeback` (also `tollgate chargeback`).
pub fn chargeback(a: ChargebackArgs) -> anyhow::Result<()> {
    let cfg = a.config.as_deref().map(super::load).transpose()?;
    let data_dir = match (a.data_dir, &cfg) {
        (Some(d), _) => d,
        (None, Some(c)) => c.data_dir.clone(),
        (None, None) => PathBuf::from("./tollgate-data"),
    };
    let conn = super::open_ledger(&data_dir)?;
    let now = crate::governance::window::now_ms();
    let month = a
        .month
        .unwrap_or_else(|| crate::governance::window::rfc3339(now)[..7].to_string());
    let (from, to) = super::month_range(&month)?;
    // The month before: the one containing the last millisecond before this one.
    let prev = crate::governance::window::Window::Month.at(from - 1);
    let rows = query::summarize_range(&conn, a.by, from, to)?;
    let previous = query::summarize_range(&conn, a.by, prev.start_ms, prev.end_ms)?;
    let budgets = cfg.as_ref().map_or(&[][..], |c| &c.governance.budgets[..]);
    let rows = crate::ledger::chargeback::build(rows, &previous, budgets, a.by);
    let key = format!("{:?}", a.by).to_lowercase();
    if a.format == Format::Table {
        let total: f64 = rows.iter().map(|r| r.month.cost_usd).sum();
        let before: f64 = rows.iter().map(|r| r.previous_cost_usd).sum();
        println!(
            "Chargeback for {month} (UTC), by {key}: ${total:.2} in total (${before:.2} the month before)"
        );
    }
    print!(
        "{}",
        crate::ledger::chargeback::render(&rows, a.format, &key)
    );
    Ok(())
}

pub fn run(command: ReportCommand) -> anyhow::Result<()> {
    match command {
        ReportCommand::Chargeback(a) => chargeback(a),
        ReportCommand::Gpu { period, by, format } => {
            let (conn, from, to) = period.open()?;
            let r = crate::ledger::gpu_cost::report(&conn, from, to, by)?;
            let key = format!("{by:?}").to_lowercase();
            print!("{}", crate::ledger::gpu_cost::render(&r, format, &key));
            Ok(())
        }
        ReportCommand::Accuracy { period, format } => {
            let (conn, from, to) = period.open()?;
            let rows = crate::ledger::accuracy::report(&conn, from, to)?;
            print!("{}", crate::ledger::accuracy::render(&rows, format));
            Ok(())
        }
        ReportCommand::Findings {
            period,
            premium_share,
            context_tokens,
            spike_factor,
            retry_share,
            drift_share,
            cache_waste_share,
            format,
        } => {
            let (conn, from, to) = period.open()?;
            let t = Thresholds {
                premium_share,
                context_tokens,
                spike_factor,
                retry_share,
                drift_share,
                cache_waste_share,
            };
            let list = findings(&conn, from, to, t)?;
            print!("{}", render(&list, format));
            Ok(())
        }
    }
}
