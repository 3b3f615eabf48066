//! The usage ledger: one row per request in an embedded SQLite database (WAL mode).
//!
//! Workers never touch SQLite. They send finished records over a channel to the control
//! thread's writer (`writer.rs`), which commits them in batches (default: every 20 ms or 512
//! records, whichever comes first). A graceful stop flushes everything; a hard kill can lose at
//! most the records of the last flush interval. `query.rs` summarises the ledger for the CLI.

pub mod query;
pub mod writer;

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};

use crate::metering::Usage;
use crate::phase::identify::Identity;

/// Everything recorded about one request.
#[derive(Debug, Clone, Default)]
pub struct UsageRecord {
    pub id: String,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    pub latency_us: u64,
    pub ttft_us: Option<u64>,
    pub status: u16,
    /// `ok`, `client_disconnected`, `upstream_reset`, `upstream_error`, or an error code.
    pub outcome: String,
    pub api: &'static str,
    pub identity: Identity,
    pub requested_model: Option<String>,
    pub served_model: Option<String>,
    pub provider: Option<String>,
    pub usage: Usage,
    pub estimated: bool,
}

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage (
    id TEXT PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    latency_us INTEGER NOT NULL,
    ttft_us INTEGER,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    api TEXT NOT NULL,
    team TEXT, project TEXT, user_id TEXT, session_id TEXT, workflow TEXT, cost_center TEXT,
    requested_model TEXT, served_model TEXT, provider TEXT,
    input_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    estimated INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_ts ON usage(ts_ms);
";

/// Path of the ledger database inside a data directory.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("ledger.sqlite")
}

/// Opens (creating if needed) the ledger with WAL and the schema applied.
pub fn open(data_dir: &Path) -> rusqlite::Result<Connection> {
    if let Err(e) = std::fs::create_dir_all(data_dir) {
        return Err(rusqlite::Error::InvalidPath(PathBuf::from(format!(
            "{}: {e}",
            data_dir.display()
        ))));
    }
    let conn = Connection::open(db_path(data_dir))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode survives a process crash; only an OS crash can lose the last commit.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Inserts records in one transaction.
pub fn insert_batch(conn: &mut Connection, records: &[UsageRecord]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR REPLACE INTO usage (id, ts_ms, latency_us, ttft_us, status, outcome, api,
             team, project, user_id, session_id, workflow, cost_center,
             requested_model, served_model, provider,
             input_tokens, cached_tokens, cache_write_tokens, output_tokens, reasoning_tokens, estimated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)",
        )?;
        for r in records {
            let i = &r.identity;
            stmt.execute(params![
                r.id,
                r.ts_ms,
                r.latency_us as i64,
                r.ttft_us.map(|t| t as i64),
                r.status,
                r.outcome,
                r.api,
                i.team,
                i.project,
                i.user,
                i.session,
                i.workflow,
                i.cost_center,
                r.requested_model,
                r.served_model,
                r.provider,
                r.usage.input_tokens as i64,
                r.usage.cached_tokens as i64,
                r.usage.cache_write_tokens as i64,
                r.usage.output_tokens as i64,
                r.usage.reasoning_tokens as i64,
                r.estimated as i64,
            ])?;
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("tollgate-ledger-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut c = open(&dir).unwrap();
            let r = UsageRecord {
                id: "r1".into(),
                status: 200,
                outcome: "ok".into(),
                api: "chat",
                usage: Usage {
                    input_tokens: 5,
                    output_tokens: 3,
                    ..Usage::default()
                },
                ..UsageRecord::default()
            };
            insert_batch(&mut c, &[r]).unwrap();
        }
        let c = open(&dir).unwrap();
        let (n, out): (i64, i64) = c
            .query_row("SELECT COUNT(*), SUM(output_tokens) FROM usage", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((n, out), (1, 3));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
