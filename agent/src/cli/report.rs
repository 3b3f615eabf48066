//! `tollgate report findings`: spend patterns in the ledger (`ledger/findings.rs`), for a UTC
//! month or the last N days, with their thresholds as flags.

use std::path::PathBuf;

use crate::ledger::findings::{findings, render, Thresholds};
use crate::ledger::query::Format;

#[derive(clap::Subcommand)]
pub enum ReportCommand {
    /// Premium-model overuse, context stuffing, token spikes and retry storms, with the
    /// requests behind each.
    Findings {
        #[arg(long, default_value = "./tollgate-data")]
        data_dir: PathBuf,
        /// A UTC month, `YYYY-MM` (default: the last `--days` days).
        #[arg(long)]
        month: Option<String>,
        #[arg(long, default_value_t = 30)]
        days: u32,
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
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

pub fn run(command: ReportCommand) -> anyhow::Result<()> {
    match command {
        ReportCommand::Findings {
            data_dir,
            month,
            days,
            premium_share,
            context_tokens,
            spike_factor,
            retry_share,
            format,
        } => {
            let conn = super::open_ledger(&data_dir)?;
            let (from, to) = match month {
                Some(m) => super::month_range(&m)?,
                None => {
                    let now = crate::governance::window::now_ms();
                    (now - i64::from(days) * 86_400_000, i64::MAX)
                }
            };
            let t = Thresholds {
                premium_share,
                context_tokens,
                spike_factor,
                retry_share,
            };
            let list = findings(&conn, from, to, t)?;
            print!("{}", render(&list, format));
            Ok(())
        }
    }
}
