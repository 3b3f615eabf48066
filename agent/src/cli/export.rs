//! `tollgate export focus`: the ledger as FOCUS 1.0 CSV or Parquet (see `ledger/focus/`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Subcommand)]
pub enum ExportCommand {
    /// The ledger as FinOps FOCUS 1.0 cost and usage rows (one per day, provider, model, API,
    /// key and identity), for finance tools.
    Focus {
        /// The agent's data directory (default ./tollgate-data, or `data_dir` of `--config`).
        #[arg(long, conflicts_with = "config")]
        data_dir: Option<PathBuf>,
        /// The agent's config file: its `data_dir` is read.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// First UTC day included, `YYYY-MM-DD` (default: the ledger's first).
        #[arg(long)]
        from: Option<String>,
        /// First UTC day not included, `YYYY-MM-DD` (default: after the ledger's last).
        #[arg(long)]
        to: Option<String>,
        /// `csv`, or `parquet` (typed columns; needs `--out`).
        #[arg(long, value_parser = ["csv", "parquet"], default_value = "csv")]
        format: String,
        /// Where to write (default: standard output, for CSV).
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// The billing account the rows name (default: the host name).
        #[arg(long)]
        account: Option<String>,
    },
}

pub fn run(command: ExportCommand) -> anyhow::Result<()> {
    let ExportCommand::Focus {
        data_dir,
        config,
        from,
        to,
        format,
        out,
        account,
    } = command;
    let data_dir = match (data_dir, config) {
        (Some(d), _) => d,
        (None, Some(c)) => super::load(&c)?.data_dir,
        (None, None) => PathBuf::from("./tollgate-data"),
    };
    let conn = super::open_ledger(&data_dir)?;
    let from = from.as_deref().map(day_ms).transpose()?;
    let to = to.as_deref().map(day_ms).transpose()?;
    let charges = crate::ledger::focus::charges(&conn, from, to)?;
    let account = account.unwrap_or_else(host_name);
    if format == "parquet" {
        let path = out.context("--format parquet needs --out FILE (Parquet is not streamed)")?;
        let f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        crate::ledger::focus::parquet::write(&charges, &account, std::io::BufWriter::new(f))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "{} charge rows written to {}",
            charges.len(),
            path.display()
        );
        return Ok(());
    }
    match out {
        Some(path) => {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?,
            );
            crate::ledger::focus::write_csv(&charges, &account, &mut f)?;
            f.flush()?;
            eprintln!(
                "{} charge rows written to {}",
                charges.len(),
                path.display()
            );
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            crate::ledger::focus::write_csv(&charges, &account, &mut stdout)?;
        }
    }
    Ok(())
}

/// The start of a UTC day `YYYY-MM-DD`, in ms.
fn day_ms(text: &str) -> anyhow::Result<i64> {
    let bad = || anyhow::anyhow!("`{text}` is not a day like 2026-11-30");
    let mut parts = text.splitn(3, '-');
    let mut next = || parts.next().ok_or_else(bad);
    let (y, m, d): (i64, u32, u32) = (
        next()?.parse().map_err(|_| bad())?,
        next()?.parse().map_err(|_| bad())?,
        next()?.parse().map_err(|_| bad())?,
    );
    anyhow::ensure!((1..=12).contains(&m) && (1..=31).contains(&d), bad());
    Ok(crate::governance::window::days_from_civil(y, m, d) * 86_400_000)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tollgate".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_parse_or_say_why() {
        assert_eq!(day_ms("1970-01-02").unwrap(), 86_400_000);
        for bad in ["2026-13-01", "2026-11", "yesterday", "2026-11-32"] {
            assert!(day_ms(bad).is_err(), "{bad}");
        }
    }
}
