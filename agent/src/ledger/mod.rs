//! The usage ledger: one row per request in an embedded SQLite database (WAL mode).
//!
//! Workers never touch SQLite. They send finished records over a channel to the control
//! thread's writer (`writer.rs`), which commits them in batches (default: every 100 ms or
//! 2,048 records, whichever comes first), 16 rows to an `INSERT` statement. Each record is journalled first (`journal.rs`), so a crash
//! before the commit loses nothing: the next start replays the journal. `query.rs` summarises
//! the ledger for the CLI.
//!
//! Kernel attribution (who connected: pid, comm, uid, cgroup, and the original destination of
//! an intercepted connection) travels with a record as the connection's shared
//! `ConnAttribution`; the control thread adds the cgroup path, container and pod (`enrich.rs`)
//! before the row is written. Ledgers created before those columns existed are migrated in
//! place by [`open`] (`ALTER TABLE ... ADD COLUMN`), so old rows keep working with NULLs.
//!
//! With `ledger.ship`, a thread of its own copies committed rows to an organisation-wide store
//! (`ship/`: PostgreSQL), reading the ledger over a read-only connection after a cursor.

pub mod accuracy;
mod bind;
pub mod chargeback;
pub mod drift;
pub mod enrich;
pub mod estimator;
pub mod findings;
pub mod focus;
pub mod gpu_cost;
pub mod journal;
pub mod local;
pub mod priority;
pub mod query;
pub mod rollup;
mod segments;
pub mod ship;
pub mod table;
pub mod writer;

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::Connection;

use crate::identity::Identity;
use crate::kernel::cgroup::CgroupInfo;
use crate::kernel::ConnAttribution;
use crate::metering::Usage;

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
    /// Borrowed from the labels on the hot path (three allocations a request as a `String`);
    /// owned when read back from a journal or another source.
    pub outcome: Cow<'static, str>,
    pub api: &'static str,
    pub identity: Identity,
    pub requested_model: Option<String>,
    pub served_model: Option<String>,
    pub provider: Option<String>,
    pub usage: Usage,
    pub estimated: bool,
    /// What the kernel recorded about the client's connection (shared by its requests).
    pub conn: Option<Arc<ConnAttribution>>,
    /// The client's cgroup, resolved on the control thread.
    pub cgroup: Option<Arc<CgroupInfo>>,
    /// The virtual key that authorised the request.
    pub key_id: Option<String>,
    /// What the usage cost at the served model's price, in micro-USD (0 without a price).
    pub cost_micro_usd: u64,
    /// The served model's price, for a cost computed once usage is final (estimates).
    pub price: Option<crate::metering::prices::Price>,
    /// The request's budget and token-limit reservations, settled to the actual usage when the
    /// record reaches the writer (`governance::hold`).
    pub hold: crate::governance::hold::Hold,
    /// What routing went through: the tier, a fallback, failed attempts (`None`: the first
    /// choice served).
    pub route: Option<String>,
    /// Attempts sent to providers (0 when none was: a refusal of Tollgate's own).
    pub attempts: u32,
    /// The balancer's score of the replica that served (`prefix`, `least_load`).
    pub score: Option<f32>,
    /// Leading prompt bytes that replica had recently been sent (`prefix` affinity).
    pub prefix_bytes: u64,
    /// Guardrail findings: `class:count:action,...` (never the matched text).
    pub guard: Option<String>,
    /// `hit` (`exact` or `semantic`) when a cache answered, `miss` when it was asked and could
    /// not; `None` when no cache applied.
    pub cache: Option<String>,
    /// What a cache hit would have cost at the model's price, in micro-USD (its own cost is 0).
    pub saved_micro_usd: u64,
    /// Input plus output tokens a cache hit did not spend.
    pub saved_tokens: u64,
    /// The model version the provider reported serving (`model`, with `@system_fingerprint`
    /// when it sends one), for tokenizer drift.
    pub upstream_version: Option<String>,
    /// Bytes of the prompt values (messages, input), for tokens-per-byte.
    pub prompt_bytes: u64,
    /// The client's W3C `traceparent` (trace id, parent span id), for the request's span.
    /// Not stored in the ledger.
    pub trace_parent: Option<([u8; 16], [u8; 8])>,
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
    estimated INTEGER NOT NULL,
    pid INTEGER, comm TEXT, uid INTEGER, cgroup_id INTEGER, cgroup_path TEXT,
    container_id TEXT, pod_uid TEXT, original_dst TEXT,
    key_id TEXT, cost_micro_usd INTEGER,
    route TEXT, attempts INTEGER, score REAL, prefix_bytes INTEGER,
    guard TEXT, cache TEXT, saved_micro_usd INTEGER, saved_tokens INTEGER,
    upstream_version TEXT, prompt_bytes INTEGER
);
CREATE INDEX IF NOT EXISTS usage_ts ON usage(ts_ms);
";

/// Columns added after the first schema, with their types: [`migrate`] adds the ones an
/// existing ledger lacks.
const ADDED_COLUMNS: &[(&str, &str)] = &[
    ("pid", "INTEGER"),
    ("comm", "TEXT"),
    ("uid", "INTEGER"),
    ("cgroup_id", "INTEGER"),
    ("cgroup_path", "TEXT"),
    ("container_id", "TEXT"),
    ("pod_uid", "TEXT"),
    ("original_dst", "TEXT"),
    ("key_id", "TEXT"),
    ("cost_micro_usd", "INTEGER"),
    ("route", "TEXT"),
    ("attempts", "INTEGER"),
    ("score", "REAL"),
    ("prefix_bytes", "INTEGER"),
    ("guard", "TEXT"),
    ("cache", "TEXT"),
    ("saved_micro_usd", "INTEGER"),
    ("saved_tokens", "INTEGER"),
    ("upstream_version", "TEXT"),
    ("prompt_bytes", "INTEGER"),
];

/// Adds the columns of [`ADDED_COLUMNS`] that the `usage` table lacks.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let have: HashSet<String> = {
        let mut stmt = conn.prepare("PRAGMA table_info(usage)")?;
        let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
        names.collect::<rusqlite::Result<_>>()?
    };
    for (name, ty) in ADDED_COLUMNS {
        if !have.contains(*name) {
            conn.execute_batch(&format!("ALTER TABLE usage ADD COLUMN {name} {ty}"))?;
            tracing::info!(column = name, "ledger migrated: added a column");
        }
    }
    Ok(())
}

/// Path of the ledger database inside a data directory.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("ledger.sqlite")
}

/// Page size of a new ledger. Rows are appended, so a commit writes mostly new pages: SQLite
/// writes each WAL frame and, at a checkpoint, each page with its own `pwrite`, and 4 KiB pages
/// made ~0.16 `pwrite`s per request on the writer at c=64.
const LEDGER_PAGE_SIZE: i64 = 16384;

/// Opens (creating if needed) the ledger with WAL and the schema applied.
pub fn open(data_dir: &Path) -> rusqlite::Result<Connection> {
    if let Err(e) = std::fs::create_dir_all(data_dir) {
        return Err(rusqlite::Error::InvalidPath(PathBuf::from(format!(
            "{}: {e}",
            data_dir.display()
        ))));
    }
    let mut conn = Connection::open(db_path(data_dir))?;
    // Only a new ledger takes it (an existing one keeps its size): see `LEDGER_PAGE_SIZE`.
    conn.pragma_update(None, "page_size", LEDGER_PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode survives a process crash; only an OS crash can lose the last commit.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    prepare(&mut conn)?;
    Ok(conn)
}

/// A ledger in memory with everything [`open`] sets up (tests, benches).
pub fn open_in_memory() -> rusqlite::Result<Connection> {
    let mut conn = Connection::open_in_memory()?;
    prepare(&mut conn)?;
    Ok(conn)
}

/// The schema, migrations, indexes and rollups.
fn prepare(conn: &mut Connection) -> rusqlite::Result<()> {
    // The rollups' delete triggers must fire on the writer's INSERT OR REPLACE (`rollup.rs`).
    conn.pragma_update(None, "recursive_triggers", "ON")?;
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(accuracy::SCHEMA)?;
    conn.execute_batch(gpu_cost::SCHEMA)?;
    gpu_cost::migrate(conn)?;
    migrate(conn)?;
    // `usage_key (key_id, ts_ms)` served no query (per-key figures come from the rollups and
    // time-range scans) and cost every insert a fourth B-tree: ledgers that have it lose it.
    conn.execute_batch("DROP INDEX IF EXISTS usage_key;")?;
    rollup::install(conn)
}

/// Inserts records in one transaction (a record with an id already present replaces it).
pub fn insert_batch(conn: &mut Connection, records: &[UsageRecord]) -> rusqlite::Result<()> {
    insert(conn, records, true)
}

/// Inserts records whose id is not in the ledger yet (journal replay: a committed row, enriched
/// on the control thread, wins over its journalled copy).
pub fn insert_batch_keep_existing(
    conn: &mut Connection,
    records: &[UsageRecord],
) -> rusqlite::Result<()> {
    insert(conn, records, false)
}

/// `records` with each id once: its last occurrence when a later row replaces an earlier one,
/// else its first. The table ends the same, and the rollups' in-memory sums never miss a
/// replacement of a row they have not written yet.
fn distinct(records: &[UsageRecord], last_wins: bool) -> Vec<&UsageRecord> {
    // foldhash, not SipHash: the ids are ours, and SipHash was 3 % of the writer (perf).
    let mut seen: HashSet<&str, foldhash::fast::RandomState> =
        HashSet::with_capacity_and_hasher(records.len(), Default::default());
    let mut out: Vec<&UsageRecord> = if last_wins {
        records
            .iter()
            .rev()
            .filter(|r| seen.insert(r.id.as_str()))
            .collect()
    } else {
        records
            .iter()
            .filter(|r| seen.insert(r.id.as_str()))
            .collect()
    };
    if last_wins {
        out.reverse();
    }
    out
}

/// The ledger's columns, in the order [`bind_row`] binds them.
const COLUMNS: &str = "id, ts_ms, latency_us, ttft_us, status, outcome, api,
    team, project, user_id, session_id, workflow, cost_center,
    requested_model, served_model, provider,
    input_tokens, cached_tokens, cache_write_tokens, output_tokens, reasoning_tokens, estimated,
    pid, comm, uid, cgroup_id, cgroup_path, container_id, pod_uid, original_dst,
    key_id, cost_micro_usd, route, attempts, score, prefix_bytes, guard, cache, saved_micro_usd, saved_tokens,
    upstream_version, prompt_bytes";

/// How many values [`bind_row`] binds.
const COLUMN_COUNT: usize = 42;

/// Rows one `INSERT OR IGNORE` statement of the common path carries. A statement's fixed cost
/// (step, halt, reset: ~0.5 µs a row when each row is its own statement) is paid once per
/// chunk. 16 rows (672 parameters, SQLite allows 32,766) counted fewest instructions per row
/// (callgrind: 1 row 24.4k, 8 18.1k, 12 17.8k, 16 17.7k, 32 18.5k, with the record building).
const ROWS_PER_STATEMENT: usize = 16;

/// `{verb} INTO usage (...) VALUES (?, ...), ...` with `rows` rows of placeholders.
fn insert_sql(verb: &str, rows: usize) -> String {
    let row = format!("({})", vec!["?"; COLUMN_COUNT].join(", "));
    format!(
        "{verb} INTO usage ({COLUMNS}) VALUES {}",
        vec![row; rows].join(", ")
    )
}

/// The statements, built once: one row ignoring a present id, one row replacing it, and
/// [`ROWS_PER_STATEMENT`] rows ignoring present ids.
fn statements() -> &'static [String; 3] {
    static SQL: std::sync::OnceLock<[String; 3]> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        [
            insert_sql("INSERT OR IGNORE", 1),
            insert_sql("INSERT OR REPLACE", 1),
            insert_sql("INSERT OR IGNORE", ROWS_PER_STATEMENT),
        ]
    })
}

/// Binds one record to a one-row insert statement and runs it; returns the rows it inserted.
fn insert_one(
    stmt: &mut rusqlite::CachedStatement<'_>,
    r: &UsageRecord,
) -> rusqlite::Result<usize> {
    stmt.clear_bindings();
    bind::bind_row(stmt, 1, r)?;
    stmt.raw_execute()
}

/// Inserts `records` in one transaction; `replace`: a record whose id is already in the ledger
/// replaces that row (else the row already there is kept).
fn insert(conn: &mut Connection, records: &[UsageRecord], replace: bool) -> rusqlite::Result<()> {
    // Ids are unique as the workers make them. A batch that repeats one (journal replay, a
    // record sent twice) has a statement insert fewer rows than it carried, so the fast path
    // rolls back and the rows go one by one below, each id once: no set of ids on the way in.
    let all: Vec<&UsageRecord> = records.iter().collect();
    if insert_new(conn, &all)? {
        return Ok(());
    }
    let records = distinct(records, replace);
    let tx = conn.transaction()?;
    let mut rollups = rollup::Pending::default();
    {
        // Every row goes in with `INSERT OR IGNORE`; only one whose id is already there is
        // then replaced. A REPLACE may delete a row, which fires the rollups' delete triggers,
        // so SQLite gives each REPLACE a statement journal and copies every page it touches
        // into it: ~0.4 µs per row measured (2.75 against 2.38 µs with the trigger present),
        // ~10 % of the writer at c=64. Rows almost never exist already.
        let [keep, swap, _] = statements();
        let mut keep = tx.prepare_cached(keep)?;
        for r in records {
            // 0 when the id is already in the ledger: `INSERT OR IGNORE` kept that row.
            let mut inserted = insert_one(&mut keep, r)?;
            if inserted == 0 && replace {
                inserted = insert_one(&mut tx.prepare_cached(swap)?, r)?;
            }
            if inserted > 0 {
                rollups.add(r);
            }
        }
    }
    // The rollups, in the same transaction: never ahead of or behind the rows.
    rollups.write(&tx)?;
    tx.commit()
}

/// The common case, every id new: the rows go in [`ROWS_PER_STATEMENT`] at a time, with the
/// rollups, in one transaction. Returns false, having rolled everything back, as soon as a
/// statement inserts fewer rows than it carried (an id was already there: journal replay, a
/// record sent twice); the caller then goes row by row, which says which rows were new.
fn insert_new(conn: &mut Connection, records: &[&UsageRecord]) -> rusqlite::Result<bool> {
    let tx = conn.transaction()?;
    let [one, _, many] = statements();
    let mut chunks = records.chunks_exact(ROWS_PER_STATEMENT);
    {
        // Our statement saves SQLite's copy of every string but is prepared per batch
        // (`bind.rs`); rusqlite's stays cached on the connection.
        let all_new = if records.len() >= bind::IN_PLACE_MIN_ROWS {
            insert_chunks(&mut bind::ManyRows::prepare(&tx, many)?, &mut chunks)?
        } else {
            insert_chunks(&mut tx.prepare_cached(many)?, &mut chunks)?
        };
        if !all_new {
            return Ok(false); // dropping `tx` rolls back
        }
        let mut one = tx.prepare_cached(one)?;
        for r in chunks.remainder() {
            if insert_one(&mut one, r)? == 0 {
                return Ok(false);
            }
        }
    }
    let mut rollups = rollup::Pending::default();
    for r in records {
        rollups.add(r);
    }
    rollups.write(&tx)?;
    tx.commit()?;
    Ok(true)
}

/// Statements between two yields of the CPU: 64 rows, ~0.1 ms of the writer's time.
///
/// The writer runs in the idle CPU class, yet the kernel's fair scheduler (EEVDF) still picks
/// it now and then while a worker is runnable: when the writer has waited long enough to be
/// owed time, the worker, which got all the time, is briefly not eligible. A task picked that
/// way runs until the next scheduler tick (4 ms at 250 Hz) unless it gives the CPU up; a
/// worker is not woken meanwhile (it is runnable, not waiting), so nothing preempts the
/// writer. `perf sched` at 16 connections counted 46 such takeovers in 3 s, up to 4.0 ms each,
/// every request in flight on the worker waiting for it. A yield every ~0.1 ms hands the CPU
/// back to a runnable worker at once; with no one waiting it returns at once (one syscall per
/// 64 rows). `benches/results/2026-12-03-writer-yield.md`.
const STATEMENTS_PER_YIELD: usize = 4;

/// Runs `stmt` (a [`ROWS_PER_STATEMENT`]-row insert) over every full chunk; false as soon as
/// one inserts fewer rows than it carried. Yields the CPU every [`STATEMENTS_PER_YIELD`].
fn insert_chunks<'r>(
    stmt: &mut impl bind::RowStatement<'r>,
    chunks: &mut std::slice::ChunksExact<'_, &'r UsageRecord>,
) -> rusqlite::Result<bool> {
    for (n, chunk) in chunks.enumerate() {
        if n % STATEMENTS_PER_YIELD == STATEMENTS_PER_YIELD - 1 {
            std::thread::yield_now();
        }
        stmt.clear();
        for (row, r) in chunk.iter().enumerate() {
            bind::bind_row(stmt, 1 + row * COLUMN_COUNT, r)?;
        }
        if stmt.run()? != chunk.len() {
            return Ok(false);
        }
    }
    Ok(true)
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

    #[test]
    fn a_new_ledger_gets_large_pages_and_an_old_one_keeps_its_own() {
        let base =
            std::env::temp_dir().join(format!("tollgate-ledger-pages-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let page_size =
            |c: &Connection| -> i64 { c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap() };
        let fresh = base.join("fresh");
        assert_eq!(page_size(&open(&fresh).unwrap()), LEDGER_PAGE_SIZE);

        // A ledger made before (4 KiB pages, WAL, a row) opens with its size and its rows.
        let old = base.join("old");
        std::fs::create_dir_all(&old).unwrap();
        {
            let c = Connection::open(db_path(&old)).unwrap();
            c.pragma_update(None, "page_size", 4096).unwrap();
            c.pragma_update(None, "journal_mode", "WAL").unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.execute(
                "INSERT INTO usage (id, ts_ms, latency_us, status, outcome, api, input_tokens, \
                 cached_tokens, cache_write_tokens, output_tokens, reasoning_tokens, estimated) \
                 VALUES ('old', 1, 1, 200, 'ok', 'chat', 1, 0, 0, 2, 0, 0)",
                [],
            )
            .unwrap();
        }
        let mut c = open(&old).unwrap();
        assert_eq!(page_size(&c), 4096);
        insert_batch(&mut c, &[varied(1, "new")]).unwrap();
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM usage", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        drop(c);
        let _ = std::fs::remove_dir_all(&base);
    }

    /// A record whose optional columns are set or not by `i`, and whose values all differ by
    /// `i`: a value bound to the wrong row or column reads back wrong.
    fn varied(i: u64, tag: &str) -> UsageRecord {
        let some = |on: bool, s: String| on.then_some(s);
        UsageRecord {
            id: format!("row-{i:05}"),
            ts_ms: 1_000 + i as i64,
            latency_us: 10 * i,
            ttft_us: i.is_multiple_of(2).then_some(7 * i),
            status: 200,
            outcome: format!("ok-{tag}").into(),
            api: "chat_completions",
            identity: crate::identity::Identity {
                team: some(i.is_multiple_of(3), format!("team-{i}")),
                session: some(i % 4 == 1, format!("s-{i}")),
                ..Default::default()
            },
            served_model: some(!i.is_multiple_of(5), format!("m-{i}")),
            usage: Usage {
                input_tokens: 100 + i,
                output_tokens: i,
                ..Usage::default()
            },
            key_id: some(i % 2 == 1, format!("k-{i}")),
            score: (i % 3 == 1).then_some(i as f32 / 2.0),
            prompt_bytes: 3 * i,
            upstream_version: some(i.is_multiple_of(7), format!("v-{tag}")),
            ..UsageRecord::default()
        }
    }

    type Row = (
        String,
        i64,
        Option<i64>,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        i64,
        Option<String>,
        Option<f64>,
        i64,
        Option<String>,
    );

    fn stored(c: &Connection) -> Vec<Row> {
        c.prepare(
            "SELECT id, latency_us, ttft_us, outcome, team, session_id, served_model,
                    output_tokens, key_id, score, prompt_bytes, upstream_version
             FROM usage ORDER BY id",
        )
        .unwrap()
        .query_map([], |r| Row::try_from(r))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    fn expected(r: &UsageRecord) -> Row {
        (
            r.id.clone(),
            r.latency_us as i64,
            r.ttft_us.map(|t| t as i64),
            r.outcome.to_string(),
            r.identity.team.clone(),
            r.identity.session.clone(),
            r.served_model.clone(),
            r.usage.output_tokens as i64,
            r.key_id.clone(),
            r.score.map(f64::from),
            r.prompt_bytes as i64,
            r.upstream_version.clone(),
        )
    }

    /// Rows go in 16 to a statement: a batch of 37 (two full statements and five single rows)
    /// reads back value for value, and an id already present in the middle of a statement
    /// sends the batch row by row: the writer's copy replaces the row, replay's keeps it.
    #[test]
    fn multi_row_statements_bind_every_row_and_fall_back_on_a_present_id() {
        // A small batch (rusqlite's cached statement) and a large one (`bind::ManyRows`).
        for size in [37, bind::IN_PLACE_MIN_ROWS as u64 + 37] {
            multi_row_batch(size);
        }
    }

    fn multi_row_batch(size: u64) {
        let batch: Vec<UsageRecord> = (0..size).map(|i| varied(i, "new")).collect();
        let mut c = open_in_memory().unwrap();
        insert_batch(&mut c, &batch).unwrap();
        assert_eq!(stored(&c), batch.iter().map(expected).collect::<Vec<_>>());

        for replace in [true, false] {
            let mut c = open_in_memory().unwrap();
            let old = varied(20, "old");
            insert_batch(&mut c, std::slice::from_ref(&old)).unwrap();
            insert_as(&mut c, &batch, replace);
            let want: Vec<Row> = batch
                .iter()
                .map(|r| expected(if r.id == old.id && !replace { &old } else { r }))
                .collect();
            assert_eq!(stored(&c), want, "replace: {replace}");
            assert_eq!(rollup_requests(&c), size as i64, "replace: {replace}");
        }
    }

    /// An id twice in one batch: the writer's copy keeps the later record, replay's the
    /// earlier, and the rollups count it once. The fast path's statements see the repeat and
    /// the batch goes row by row.
    #[test]
    fn an_id_twice_in_one_batch_is_one_row_with_the_right_copy() {
        for size in [40, bind::IN_PLACE_MIN_ROWS as u64 + 40] {
            let mut batch: Vec<UsageRecord> = (0..size).map(|i| varied(i, "new")).collect();
            let mut again = varied(3, "again");
            again.latency_us = 999_999;
            batch.insert(30, again.clone());
            for replace in [true, false] {
                let mut c = open_in_memory().unwrap();
                insert_as(&mut c, &batch, replace);
                let want: Vec<Row> = (0..size)
                    .map(|i| match i {
                        3 if replace => expected(&again),
                        _ => expected(&varied(i, "new")),
                    })
                    .collect();
                assert_eq!(stored(&c), want, "size {size}, replace: {replace}");
                assert_eq!(
                    rollup_requests(&c),
                    size as i64,
                    "size {size}, replace: {replace}"
                );
            }
        }
    }

    /// The writer's insert (`replace`) or replay's.
    fn insert_as(c: &mut Connection, batch: &[UsageRecord], replace: bool) {
        if replace {
            insert_batch(c, batch).unwrap();
        } else {
            insert_batch_keep_existing(c, batch).unwrap();
        }
    }

    /// Requests the day rollup counts.
    fn rollup_requests(c: &Connection) -> i64 {
        c.query_row("SELECT SUM(requests) FROM rollup_day", [], |r| r.get(0))
            .unwrap()
    }

    /// The kernel columns through the multi-row statement: strings borrowed from the records
    /// (`comm`, the cgroup path) and one made for the bind (`original_dst`) read back per row.
    #[test]
    fn multi_row_statements_bind_kernel_attribution_per_row() {
        // Above the size that takes `bind::ManyRows`, which borrows these strings.
        let n = bind::IN_PLACE_MIN_ROWS as u32 + 20;
        let dst = |i: u32| std::net::SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 8000));
        let batch: Vec<UsageRecord> = (0..n)
            .map(|i| UsageRecord {
                id: format!("k-{i:05}"),
                conn: Some(Arc::new(ConnAttribution {
                    pid: 1000 + i,
                    tgid: 2000 + i,
                    uid: i,
                    gid: 0,
                    comm: format!("proc-{i}"),
                    cgroup_id: 3000 + u64::from(i),
                    original_dst: Some(dst(i)),
                    connect_ns: 1,
                })),
                cgroup: Some(Arc::new(CgroupInfo {
                    id: 3000 + u64::from(i),
                    path: format!("/pods/p{i}"),
                    identity: crate::kernel::cgroup::parse_cgroup_path(&format!("/pods/p{i}")),
                })),
                ..varied(u64::from(i), "kernel")
            })
            .collect();
        let mut c = open_in_memory().unwrap();
        insert_batch(&mut c, &batch).unwrap();
        type KernelRow = (String, i64, String, i64, String, String);
        let rows: Vec<KernelRow> = c
            .prepare(
                "SELECT id, pid, comm, cgroup_id, cgroup_path, original_dst FROM usage ORDER BY id",
            )
            .unwrap()
            .query_map([], |r| KernelRow::try_from(r))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want: Vec<_> = (0..n)
            .map(|i| {
                (
                    format!("k-{i:05}"),
                    2000 + i64::from(i),
                    format!("proc-{i}"),
                    3000 + i64::from(i),
                    format!("/pods/p{i}"),
                    dst(i).to_string(),
                )
            })
            .collect();
        assert_eq!(rows, want);
    }

    /// The schema before kernel attribution, as the first release created it.
    const OLD_SCHEMA: &str = "
CREATE TABLE usage (
    id TEXT PRIMARY KEY, ts_ms INTEGER NOT NULL, latency_us INTEGER NOT NULL, ttft_us INTEGER,
    status INTEGER NOT NULL, outcome TEXT NOT NULL, api TEXT NOT NULL,
    team TEXT, project TEXT, user_id TEXT, session_id TEXT, workflow TEXT, cost_center TEXT,
    requested_model TEXT, served_model TEXT, provider TEXT,
    input_tokens INTEGER NOT NULL, cached_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL, estimated INTEGER NOT NULL
);
INSERT INTO usage VALUES ('old', 1, 2, NULL, 200, 'ok', 'chat', 'team-a', NULL, NULL, NULL,
    NULL, NULL, 'm', 'm', 'p', 10, 0, 0, 5, 0, 0);
";

    #[test]
    fn old_ledgers_are_migrated_in_place() {
        let dir =
            std::env::temp_dir().join(format!("tollgate-ledger-migrate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Connection::open(db_path(&dir))
            .unwrap()
            .execute_batch(OLD_SCHEMA)
            .unwrap();
        let mut c = open(&dir).unwrap();
        let attribution = ConnAttribution {
            pid: 41,
            tgid: 42,
            uid: 1000,
            gid: 1000,
            comm: "python3".into(),
            cgroup_id: 777,
            original_dst: Some("127.0.0.1:8000".parse().unwrap()),
            connect_ns: 1,
        };
        let r = UsageRecord {
            id: "new".into(),
            status: 200,
            outcome: "ok".into(),
            api: "chat",
            conn: Some(Arc::new(attribution)),
            cgroup: Some(Arc::new(CgroupInfo {
                id: 777,
                path: "/batch/job".into(),
                identity: crate::kernel::cgroup::parse_cgroup_path("/batch/job"),
            })),
            ..UsageRecord::default()
        };
        insert_batch(&mut c, &[r]).unwrap();
        drop(c);
        // A second open finds nothing to add.
        let c = open(&dir).unwrap();
        let row = |id: &str| {
            c.query_row(
                "SELECT team, output_tokens, pid, comm, uid, cgroup_id, cgroup_path, original_dst
                 FROM usage WHERE id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                        r.get::<_, Option<String>>(6)?,
                        r.get::<_, Option<String>>(7)?,
                    ))
                },
            )
            .unwrap()
        };
        assert_eq!(
            row("old"),
            (Some("team-a".into()), 5, None, None, None, None, None, None)
        );
        assert_eq!(
            row("new"),
            (
                None,
                0,
                Some(42),
                Some("python3".into()),
                Some(1000),
                Some(777),
                Some("/batch/job".into()),
                Some("127.0.0.1:8000".into())
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
