//! Reading the agent's usage ledger (`DATA_DIR/ledger.sqlite`) the way an operator would, with
//! a bounded wait: records are committed within a flush interval of the response, so a reader
//! polls for the row by request id for up to [`WAIT`] and fails with what it saw otherwise.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::Tokens;

/// Longest wait for a record to be committed.
pub const WAIT: Duration = Duration::from_secs(5);

/// One `usage` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: String,
    pub ts_ms: i64,
    pub latency_us: i64,
    pub ttft_us: Option<i64>,
    pub status: i64,
    pub outcome: String,
    pub api: String,
    pub team: Option<String>,
    pub project: Option<String>,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub workflow: Option<String>,
    pub cost_center: Option<String>,
    pub requested_model: Option<String>,
    pub served_model: Option<String>,
    pub provider: Option<String>,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub cache_write_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    pub estimated: bool,
    pub key_id: Option<String>,
    pub cost_micro_usd: i64,
    /// Tier, fallback and failed attempts (`None` when the first choice served).
    pub route: Option<String>,
    pub attempts: i64,
    /// Leading prompt bytes the serving replica had been sent recently (`prefix` balancing).
    pub prefix_bytes: i64,
    /// Guardrail findings, `class:count:action,...`.
    pub guard: Option<String>,
    /// `exact` / `semantic` (a cache answered) or `miss`.
    pub cache: Option<String>,
    pub saved_micro_usd: i64,
}

impl Row {
    /// The token columns.
    pub fn tokens(&self) -> Tokens {
        Tokens {
            input: self.input_tokens,
            cached: self.cached_tokens,
            cache_write: self.cache_write_tokens,
            output: self.output_tokens,
            reasoning: self.reasoning_tokens,
        }
    }
}

const COLUMNS: &str =
    "id, ts_ms, latency_us, ttft_us, status, outcome, api, team, project, user_id, \
     session_id, workflow, cost_center, requested_model, served_model, provider, input_tokens, \
     cached_tokens, cache_write_tokens, output_tokens, reasoning_tokens, estimated, key_id, \
     COALESCE(cost_micro_usd, 0), route, COALESCE(attempts, 0), COALESCE(prefix_bytes, 0), \
     guard, cache, COALESCE(saved_micro_usd, 0)";

fn from_sql(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(0)?,
        ts_ms: r.get(1)?,
        latency_us: r.get(2)?,
        ttft_us: r.get(3)?,
        status: r.get(4)?,
        outcome: r.get(5)?,
        api: r.get(6)?,
        team: r.get(7)?,
        project: r.get(8)?,
        user_id: r.get(9)?,
        session_id: r.get(10)?,
        workflow: r.get(11)?,
        cost_center: r.get(12)?,
        requested_model: r.get(13)?,
        served_model: r.get(14)?,
        provider: r.get(15)?,
        input_tokens: r.get(16)?,
        cached_tokens: r.get(17)?,
        cache_write_tokens: r.get(18)?,
        output_tokens: r.get(19)?,
        reasoning_tokens: r.get(20)?,
        estimated: r.get::<_, i64>(21)? != 0,
        key_id: r.get(22)?,
        cost_micro_usd: r.get(23)?,
        route: r.get(24)?,
        attempts: r.get(25)?,
        prefix_bytes: r.get(26)?,
        guard: r.get(27)?,
        cache: r.get(28)?,
        saved_micro_usd: r.get(29)?,
    })
}

/// The model version the provider reported and the prompt bytes of the row `id` (committed).
pub fn version_of(data_dir: &Path, id: &str) -> (Option<String>, i64) {
    let _ = row(data_dir, id);
    let conn = open(data_dir).expect("the ledger");
    conn.query_row(
        "SELECT upstream_version, COALESCE(prompt_bytes, 0) FROM usage WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .expect("the row")
}

fn open(data_dir: &Path) -> Option<Connection> {
    let path = data_dir.join("ledger.sqlite");
    if !path.exists() {
        return None;
    }
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    conn.busy_timeout(Duration::from_secs(2)).ok()?;
    Some(conn)
}

/// The row with this id, waiting up to [`WAIT`] for it to be committed.
pub fn row(data_dir: &Path, id: &str) -> Row {
    let deadline = Instant::now() + WAIT;
    let mut last_error = String::from("ledger.sqlite does not exist yet");
    loop {
        if let Some(conn) = open(data_dir) {
            let sql = format!("SELECT {COLUMNS} FROM usage WHERE id = ?1");
            match conn.query_row(&sql, [id], from_sql).optional() {
                Ok(Some(row)) => return row,
                Ok(None) => last_error = "no such row yet".into(),
                Err(e) => last_error = e.to_string(),
            }
        }
        if Instant::now() > deadline {
            panic!(
                "ledger row {id} not committed within {WAIT:?} ({last_error}); rows: {:#?}",
                all(data_dir)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every row, oldest first (empty when there is no ledger yet).
pub fn all(data_dir: &Path) -> Vec<Row> {
    let Some(conn) = open(data_dir) else {
        return Vec::new();
    };
    let sql = format!("SELECT {COLUMNS} FROM usage ORDER BY ts_ms, id");
    let Ok(mut stmt) = conn.prepare(&sql) else {
        return Vec::new();
    };
    stmt.query_map([], from_sql)
        .and_then(|rows| rows.collect())
        .unwrap_or_default()
}

/// Every row once at least `n` rows match `count`, waiting up to [`WAIT`] for the commits (a
/// caller that knows how many responses it received asks for that many rows, then asserts on
/// what it gets: fewer after the wait fails there, with the rows in hand).
pub fn at_least(data_dir: &Path, n: usize, count: impl Fn(&Row) -> bool) -> Vec<Row> {
    let deadline = Instant::now() + WAIT;
    loop {
        let rows = all(data_dir);
        if rows.iter().filter(|r| count(r)).count() >= n || Instant::now() > deadline {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Which of `ids` (request ids of responses a client received) have no ledger row.
pub fn ids_without_rows<'a>(data_dir: &Path, ids: &'a [String]) -> Vec<&'a String> {
    let rows = all(data_dir);
    let have: std::collections::HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    ids.iter()
        .filter(|id| !have.contains(id.as_str()))
        .collect()
}
