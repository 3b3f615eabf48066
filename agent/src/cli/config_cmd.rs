//! `tollgate config history | diff A B | rollback [N] --config FILE`: the versions a running (or
//! stopped) agent recorded in `data_dir/config-history/`, what changed between two, and putting
//! an earlier one back. A rollback writes that version's bytes to the config file (atomically:
//! a temporary file and a rename), which the running agent's file watch applies; the command
//! waits until the agent has recorded it, so one command restores and confirms.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;

use crate::reload::{history, watch};

#[derive(Subcommand)]
pub enum Command {
    /// List the applied configurations, oldest first.
    History {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show what changed from version A to version B.
    Diff {
        a: u64,
        b: u64,
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Restore version N (default: the one before the latest) and wait for the agent to apply it.
    Rollback {
        n: Option<u64>,
        #[arg(long, short)]
        config: PathBuf,
        /// How long to wait for a running agent to apply it (0: do not wait).
        #[arg(long, default_value_t = 5)]
        wait_s: u64,
    },
}

/// `data_dir` as the agent reads it from the file (without validating the rest: provider keys
/// need not be in this shell's environment).
pub fn data_dir(config: &Path) -> anyhow::Result<PathBuf> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let v: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
    Ok(PathBuf::from(
        v.get("data_dir")
            .and_then(serde_yaml_ng::Value::as_str)
            .unwrap_or("./tollgate-data"),
    ))
}

fn utc(ms: i64) -> String {
    crate::governance::window::rfc3339(ms).replace('T', " ")
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::History { config } => {
            let dir = data_dir(&config)?;
            let list = history::list(&dir)?;
            if list.is_empty() {
                println!(
                    "no configuration history in {}",
                    history::dir(&dir).display()
                );
                return Ok(());
            }
            println!(
                "{:>7}  {:<20}  {:<10}  {:>10}  sha256",
                "version", "applied (UTC)", "trigger", "generation"
            );
            let last = list.len() - 1;
            for (i, v) in list.iter().enumerate() {
                println!(
                    "{:>7}  {:<20}  {:<10}  {:>10}  {}{}",
                    v.number,
                    utc(v.applied_ms),
                    v.trigger,
                    v.generation,
                    &v.sha256[..12],
                    if i == last { "  (latest)" } else { "" }
                );
            }
            Ok(())
        }
        Command::Diff { a, b, config } => {
            let dir = data_dir(&config)?;
            let read =
                |n: u64| history::content(&dir, n).with_context(|| format!("reading version {n}"));
            print!(
                "{}",
                history::diff(
                    &read(a)?,
                    &read(b)?,
                    &format!("version {a}"),
                    &format!("version {b}")
                )
            );
            Ok(())
        }
        Command::Rollback { n, config, wait_s } => {
            rollback(&config, n, Duration::from_secs(wait_s))
        }
    }
}

fn rollback(config: &Path, n: Option<u64>, wait: Duration) -> anyhow::Result<()> {
    let dir = data_dir(config)?;
    let list = history::list(&dir)?;
    let target = match n {
        Some(n) => n,
        None => match list.len() {
            0 | 1 => bail!("there is no earlier version to roll back to"),
            len => list[len - 2].number,
        },
    };
    let text =
        history::content(&dir, target).with_context(|| format!("reading version {target}"))?;
    let sha = history::sha256(&text);
    let latest = list.last().map_or(0, |v| v.number);
    // Atomic replace, next to the file so the rename stays on one filesystem.
    let tmp = config.with_extension("rollback.tmp");
    std::fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, config).with_context(|| format!("replacing {}", config.display()))?;
    println!("{} now holds version {target}", config.display());
    if wait.is_zero() {
        return Ok(());
    }
    let deadline = Instant::now() + wait + watch::INTERVAL;
    while Instant::now() < deadline {
        if let Some(v) = history::list(&dir)?
            .into_iter()
            .find(|v| v.number > latest && v.sha256 == sha)
        {
            println!(
                "applied by the running agent as version {} (generation {})",
                v.number, v.generation
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("no running agent applied it within {wait:?}; an agent started on this file uses it");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00Z");
        // Checked against Python's datetime.utcfromtimestamp.
        assert_eq!(super::utc(1_795_000_000_000), "2026-11-18 11:06:40Z");
        assert_eq!(
            super::utc(1_000 * (951_782_400 + 86_399)),
            "2000-02-29 23:59:59Z"
        );
    }
}
