//! Shipping the usage ledger to an organisation-wide store (`ledger.ship`): PostgreSQL first
//! (`postgres.rs`); ClickHouse or a Kafka topic implement the same [`Sink`].
//!
//! - **Source of truth.** The node's SQLite ledger stays authoritative. The store is a copy for
//!   queries across nodes, filled **at least once**: a row may be sent again (after a crash
//!   between the store's commit and the cursor's, or when the writer replaced the row), so a
//!   sink must be idempotent by request id and let the newest version win.
//! - **Thread.** One thread, `tollgate-ledger-ship`, with its own **read-only** connection to
//!   the ledger (WAL: a reader never blocks the writer, and the shipper never takes SQLite's
//!   write lock). Nothing on the request path or the writer waits for it: it only reads what
//!   the writer has committed.
//! - **Cursor.** The last shipped `rowid`, in `<data_dir>/ship/<sink>.cursor`, replaced
//!   atomically (temp file, fsync, rename, fsync of the directory) after the store committed a
//!   batch. Rows are read `rowid > cursor ORDER BY rowid LIMIT batch`. The writer is the only
//!   one that inserts and never deletes, so a committed row's rowid is above every rowid
//!   committed before it; a row the writer replaces (`INSERT OR REPLACE`) gets a new, higher
//!   rowid and is shipped again. A cursor file that does not read back (not one this code
//!   wrote) is refused with an error: shipping stays off (`tollgate_ledger_ship_up` 0) until an
//!   operator removes it (everything is then shipped again, which the store absorbs). A cursor
//!   past the ledger's last row (the ledger was replaced) starts over from 0, with a warning.
//!   (`VACUUM` may renumber the rowids of a table without an INTEGER PRIMARY KEY; Tollgate never
//!   runs it on the ledger, and an operator who does should remove the cursor file.)
//! - **Failures.** A failed batch is counted, logged (at most every 30 s), and retried from the
//!   cursor after an exponential back-off (100 ms doubling to 30 s) on a new connection; the
//!   backlog of an outage is then shipped batch after batch without waiting for the interval.
//! - **Stop.** After the writer's last commit, one last attempt ships what is committed, for at
//!   most [`FINAL_ATTEMPT`]; then the thread ends (what is left goes at the next start).
//! - **Metrics.** `tollgate_ledger_ship_{rows_total,errors_total,lag_rows,up}{sink}`.
//!
//! Not on the hot path.

pub mod postgres;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use crate::config::ship::{ShipSettings, SinkKind};

/// Longest the last attempt at shutdown may take (between batches; one batch in flight may
/// overrun it by the sink's own timeouts).
pub const FINAL_ATTEMPT: Duration = Duration::from_secs(5);
/// First pause after a failure; doubled after each failure in a row.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between two attempts while the store is away.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// At most one error line per this much time while failures go on.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// What a column holds, in a store's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Real,
    Text,
}

/// One column of the `usage` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnSpec {
    pub name: &'static str,
    pub kind: Kind,
    pub nullable: bool,
}

/// A batch's values column by column (what a columnar store takes as is; PostgreSQL takes each
/// as one array). `None` is SQL NULL.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    Int(Vec<Option<i64>>),
    Real(Vec<Option<f64>>),
    Text(Vec<Option<String>>),
}

/// A Rust field type of [`ShipRow`] and the column it makes.
trait Cell {
    const KIND: Kind;
    const NULLABLE: bool;
    fn push(&self, c: &mut Column);
}

impl Cell for i64 {
    const KIND: Kind = Kind::Int;
    const NULLABLE: bool = false;
    fn push(&self, c: &mut Column) {
        if let Column::Int(v) = c {
            v.push(Some(*self));
        }
    }
}

impl Cell for Option<i64> {
    const KIND: Kind = Kind::Int;
    const NULLABLE: bool = true;
    fn push(&self, c: &mut Column) {
        if let Column::Int(v) = c {
            v.push(*self);
        }
    }
}

impl Cell for Option<f64> {
    const KIND: Kind = Kind::Real;
    const NULLABLE: bool = true;
    fn push(&self, c: &mut Column) {
        if let Column::Real(v) = c {
            v.push(*self);
        }
    }
}

impl Cell for String {
    const KIND: Kind = Kind::Text;
    const NULLABLE: bool = false;
    fn push(&self, c: &mut Column) {
        if let Column::Text(v) = c {
            v.push(Some(self.clone()));
        }
    }
}

impl Cell for Option<String> {
    const KIND: Kind = Kind::Text;
    const NULLABLE: bool = true;
    fn push(&self, c: &mut Column) {
        if let Column::Text(v) = c {
            v.push(self.clone());
        }
    }
}

/// Declares [`ShipRow`], [`COLUMNS`] and the reader and column view that follow them, from one
/// list in the `usage` table's order (a test checks it against the ledger's schema).
macro_rules! ship_row {
    ($($name:ident: $ty:ty,)*) => {
        /// One `usage` row as read from the ledger: every column, plus its `rowid` (the cursor).
        #[derive(Debug, Clone, PartialEq, Serialize)]
        pub struct ShipRow {
            pub rowid: i64,
            $(pub $name: $ty,)*
        }

        /// The `usage` columns, in table order.
        pub const COLUMNS: &[ColumnSpec] = &[$(ColumnSpec {
            name: stringify!($name),
            kind: <$ty as Cell>::KIND,
            nullable: <$ty as Cell>::NULLABLE,
        },)*];

        impl ShipRow {
            fn from_sql(r: &rusqlite::Row<'_>) -> rusqlite::Result<ShipRow> {
                let mut i = 0;
                Ok(ShipRow {
                    rowid: r.get(0)?,
                    $($name: {
                        i += 1;
                        r.get(i)?
                    },)*
                })
            }

            /// The batch column by column, in [`COLUMNS`] order.
            pub fn columns(rows: &[ShipRow]) -> Vec<Column> {
                let mut out = Vec::with_capacity(COLUMNS.len());
                $({
                    let mut c = match <$ty as Cell>::KIND {
                        Kind::Int => Column::Int(Vec::with_capacity(rows.len())),
                        Kind::Real => Column::Real(Vec::with_capacity(rows.len())),
                        Kind::Text => Column::Text(Vec::with_capacity(rows.len())),
                    };
                    for r in rows {
                        r.$name.push(&mut c);
                    }
                    out.push(c);
                })*
                out
            }
        }
    };
}

ship_row! {
    id: String,
    ts_ms: i64,
    latency_us: i64,
    ttft_us: Option<i64>,
    status: i64,
    outcome: String,
    api: String,
    team: Option<String>,
    project: Option<String>,
    user_id: Option<String>,
    session_id: Option<String>,
    workflow: Option<String>,
    cost_center: Option<String>,
    requested_model: Option<String>,
    served_model: Option<String>,
    provider: Option<String>,
    input_tokens: i64,
    cached_tokens: i64,
    cache_write_tokens: i64,
    output_tokens: i64,
    reasoning_tokens: i64,
    estimated: i64,
    pid: Option<i64>,
    comm: Option<String>,
    uid: Option<i64>,
    cgroup_id: Option<i64>,
    cgroup_path: Option<String>,
    container_id: Option<String>,
    pod_uid: Option<String>,
    original_dst: Option<String>,
    key_id: Option<String>,
    cost_micro_usd: Option<i64>,
    route: Option<String>,
    attempts: Option<i64>,
    score: Option<f64>,
    prefix_bytes: Option<i64>,
    guard: Option<String>,
    cache: Option<String>,
    saved_micro_usd: Option<i64>,
    saved_tokens: Option<i64>,
    upstream_version: Option<String>,
    prompt_bytes: Option<i64>,
}

/// A store that takes batches of rows.
pub trait Sink: Send {
    /// Writes every row of `rows` (each with `node`) or none, and returns `Ok` only once the
    /// store has committed them. A row whose id is already there replaces it (a batch may be
    /// sent twice, and a later version of a row must win). Connects when not connected.
    fn send(&mut self, node: &str, rows: &[ShipRow]) -> Result<(), SinkError>;

    /// Drops the connection after a failure, so the next [`Sink::send`] makes a new one.
    fn reset(&mut self);
}

/// Why a batch did not reach the store.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("connecting to {what}: {source}")]
    Connect {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("preparing the table {table}: {source}")]
    Schema {
        table: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("writing {rows} rows: {source}")]
    Write {
        rows: usize,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What can stop a shipping round.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("reading the ledger: {0}")]
    Ledger(#[from] rusqlite::Error),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// Rows after `cursor` in rowid order, at most `limit`; each id once (the newest version).
pub fn read_after(conn: &Connection, cursor: i64, limit: usize) -> rusqlite::Result<Vec<ShipRow>> {
    let names: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
    let sql = format!(
        "SELECT rowid, {} FROM usage WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
        names.join(", ")
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        rusqlite::params![cursor, i64::try_from(limit).unwrap_or(i64::MAX)],
        ShipRow::from_sql,
    )?;
    rows.collect()
}

/// Rows in the ledger after `cursor`.
pub fn lag(conn: &Connection, cursor: i64) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT COUNT(*) FROM usage WHERE rowid > ?1")?
        .query_row([cursor], |r| r.get::<_, i64>(0))
        .map(|n| n.max(0) as u64)
}

/// The ledger's last rowid (0 when empty).
fn last_rowid(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COALESCE(MAX(rowid), 0) FROM usage", [], |r| {
        r.get(0)
    })
}

// ---------------------------------------------------------------------------------------------
// The cursor file

/// The last shipped rowid of one sink, kept in `<data_dir>/ship/<sink>.cursor`.
#[derive(Debug)]
pub struct CursorFile {
    path: PathBuf,
}

/// A cursor file that is there but does not read back.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("reading the ship cursor {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the ship cursor {path} is not one Tollgate wrote ({why}); shipping is off until it is \
         fixed. Remove it to ship the whole ledger again (the store keeps one row per request \
         id, so nothing is duplicated)"
    )]
    Corrupt { path: String, why: String },
}

/// The file's one line: `tollgate-ship-cursor 1 <rowid> <crc32 of the text before it, hex>`.
const CURSOR_MAGIC: &str = "tollgate-ship-cursor 1";

impl CursorFile {
    pub fn new(data_dir: &Path, sink: SinkKind) -> CursorFile {
        CursorFile {
            path: data_dir
                .join("ship")
                .join(format!("{}.cursor", sink.name())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored rowid; 0 when there is no file yet (nothing shipped).
    pub fn load(&self) -> Result<i64, CursorError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => {
                return Err(CursorError::Io {
                    path: self.path.display().to_string(),
                    source: e,
                })
            }
        };
        parse_cursor(&bytes).map_err(|why| CursorError::Corrupt {
            path: self.path.display().to_string(),
            why,
        })
    }

    /// Replaces the file with `rowid`: a temporary file, fsync, rename, fsync of the directory.
    pub fn store(&self, rowid: i64) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("cursor.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(format_cursor(rowid).as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

fn format_cursor(rowid: i64) -> String {
    let text = format!("{CURSOR_MAGIC} {rowid}");
    format!("{text} {:08x}\n", crc32fast::hash(text.as_bytes()))
}

fn parse_cursor(bytes: &[u8]) -> Result<i64, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let line = text
        .strip_suffix('\n')
        .ok_or_else(|| format!("{} bytes without the final newline", bytes.len()))?;
    let (body, crc) = line
        .rsplit_once(' ')
        .ok_or_else(|| "no checksum".to_string())?;
    let rowid = body
        .strip_prefix(CURSOR_MAGIC)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| format!("does not start with `{CURSOR_MAGIC}`"))?;
    let want = u32::from_str_radix(crc, 16).map_err(|_| format!("bad checksum `{crc}`"))?;
    if crc32fast::hash(body.as_bytes()) != want {
        return Err("checksum mismatch".into());
    }
    rowid
        .parse::<i64>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| format!("bad rowid `{rowid}`"))
}

// ---------------------------------------------------------------------------------------------
// The thread

/// What the shipper has done, for `/metrics`.
#[derive(Default)]
pub struct ShipStats {
    /// Rows the store committed (a row sent twice counts twice).
    pub rows: AtomicU64,
    /// Failed rounds: the ledger could not be read, the store refused or was away.
    pub errors: AtomicU64,
    /// Rows in the ledger after the cursor, as of the last count.
    pub lag: AtomicU64,
    /// 1 while the last round succeeded.
    pub up: AtomicU64,
}

/// The shipping thread.
pub struct Shipper {
    sink: SinkKind,
    pub stats: Arc<ShipStats>,
    stop: Mutex<Option<Sender<()>>>,
    /// Closed when the thread ends.
    done: Mutex<Option<Receiver<()>>>,
}

impl Shipper {
    /// Starts shipping the ledger in `data_dir` (already created by `ledger::open`).
    pub fn start(data_dir: &Path, settings: ShipSettings) -> std::io::Result<Shipper> {
        let sink: Box<dyn Sink> = match settings.sink {
            SinkKind::Postgres => Box::new(postgres::PostgresSink::new(&settings)),
        };
        Shipper::start_with(data_dir, settings, sink)
    }

    /// Starts shipping to a given sink.
    pub fn start_with(
        data_dir: &Path,
        settings: ShipSettings,
        sink: Box<dyn Sink>,
    ) -> std::io::Result<Shipper> {
        let (stop_tx, stop_rx) = channel();
        let (done_tx, done_rx) = channel::<()>();
        let stats = Arc::new(ShipStats::default());
        let mut ship = Loop {
            db: super::db_path(data_dir),
            ledger: None,
            cursor_file: CursorFile::new(data_dir, settings.sink),
            cursor: 0,
            settings: settings.clone(),
            sink,
            stats: stats.clone(),
            failures: 0,
            last_log: None,
            suppressed: 0,
        };
        std::thread::Builder::new()
            .name("tollgate-ledger-ship".into())
            .spawn(move || {
                ship.run(&stop_rx);
                drop(done_tx);
            })?;
        Ok(Shipper {
            sink: settings.sink,
            stats,
            stop: Mutex::new(Some(stop_tx)),
            done: Mutex::new(Some(done_rx)),
        })
    }

    /// Makes the last attempt (after the writer's last commit) and waits for the thread, at
    /// most [`FINAL_ATTEMPT`] and a little more.
    pub fn stop(&self) {
        let tx = self.stop.lock().ok().and_then(|mut t| t.take());
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
        let done = self.done.lock().ok().and_then(|mut d| d.take());
        if let Some(done) = done {
            // Disconnected when the thread has ended; a timeout leaves it behind (the process is
            // exiting and the next start ships the rest).
            if let Err(RecvTimeoutError::Timeout) =
                done.recv_timeout(FINAL_ATTEMPT + Duration::from_secs(2))
            {
                tracing::warn!("ledger shipping did not finish its last attempt in time");
            }
        }
    }

    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let sink = self.sink.name();
        for (name, kind, help, v) in [
            (
                "tollgate_ledger_ship_rows_total",
                "counter",
                "Ledger rows the organisation-wide store committed (at least once: a row sent again counts again).",
                &self.stats.rows,
            ),
            (
                "tollgate_ledger_ship_errors_total",
                "counter",
                "Shipping rounds that failed (store away or refusing, ledger unreadable, bad cursor file).",
                &self.stats.errors,
            ),
            (
                "tollgate_ledger_ship_lag_rows",
                "gauge",
                "Rows in the local ledger not shipped yet.",
                &self.stats.lag,
            ),
            (
                "tollgate_ledger_ship_up",
                "gauge",
                "1 when the last shipping round reached the store, else 0.",
                &self.stats.up,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{sink=\"{sink}\"}} {}",
                v.load(Relaxed)
            );
        }
    }
}

/// The thread's state.
struct Loop {
    db: PathBuf,
    ledger: Option<Connection>,
    cursor_file: CursorFile,
    /// The last rowid the store committed.
    cursor: i64,
    settings: ShipSettings,
    sink: Box<dyn Sink>,
    stats: Arc<ShipStats>,
    /// Failed rounds in a row.
    failures: u32,
    last_log: Option<Instant>,
    /// Errors not logged since the last line.
    suppressed: u64,
}

/// How a round ended.
#[derive(Debug, PartialEq, Eq)]
enum Round {
    /// Everything committed when it started is shipped.
    CaughtUp,
    /// Stopped between batches: the stop signal came, or the deadline passed.
    Interrupted,
}

impl Loop {
    fn run(&mut self, stop: &Receiver<()>) {
        match self.cursor_file.load() {
            Ok(c) => self.cursor = c,
            Err(e) => {
                tracing::error!(error = %e, "ledger shipping is off");
                self.stats.errors.fetch_add(1, Relaxed);
                // Nothing is known to be shipped: the lag is the whole ledger.
                self.count_lag();
                let _ = stop.recv();
                return;
            }
        }
        tracing::info!(
            sink = self.settings.sink.name(),
            table = %self.settings.table,
            node = %self.settings.node,
            cursor = self.cursor,
            "shipping the ledger"
        );
        loop {
            let wait = match self.round(Some(stop), None) {
                Ok(Round::Interrupted) => break,
                Ok(Round::CaughtUp) => self.settings.interval,
                Err(e) => self.failed(&e),
            };
            self.count_lag();
            match stop.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // The writer has committed its last records: one bounded attempt at them.
        let deadline = Instant::now() + FINAL_ATTEMPT;
        match self.round(None, Some(deadline)) {
            Ok(Round::CaughtUp) => {}
            Ok(Round::Interrupted) => {
                tracing::warn!("ledger shipping stopped before the end of the ledger (time)")
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "ledger shipping: the last attempt failed; the next start ships the rest");
            }
        }
        self.count_lag();
        self.stats.up.store(0, Relaxed);
    }

    /// Ships batches until the ledger is caught up, a stop is asked for, or `deadline` passes.
    fn round(
        &mut self,
        stop: Option<&Receiver<()>>,
        deadline: Option<Instant>,
    ) -> Result<Round, ShipError> {
        loop {
            let (cursor, batch) = (self.cursor, self.settings.batch);
            let rows = read_after(self.ledger()?, cursor, batch)?;
            if rows.is_empty() {
                self.recovered();
                return Ok(Round::CaughtUp);
            }
            let full = rows.len() == self.settings.batch;
            self.sink.send(&self.settings.node, &rows)?;
            let last = rows.last().map_or(self.cursor, |r| r.rowid);
            self.cursor = last;
            self.stats.rows.fetch_add(rows.len() as u64, Relaxed);
            let lag = self.stats.lag.load(Relaxed);
            self.stats
                .lag
                .store(lag.saturating_sub(rows.len() as u64), Relaxed);
            if let Err(e) = self.cursor_file.store(last) {
                // The rows are in the store; a cursor that is not saved only means they may be
                // sent again after a restart.
                self.stats.errors.fetch_add(1, Relaxed);
                tracing::warn!(path = %self.cursor_file.path().display(), error = %e, "saving the ship cursor failed");
            }
            self.recovered();
            if !full {
                return Ok(Round::CaughtUp);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Round::Interrupted);
            }
            if let Some(rx) = stop {
                match rx.try_recv() {
                    Err(TryRecvError::Empty) => {}
                    Ok(()) | Err(TryRecvError::Disconnected) => return Ok(Round::Interrupted),
                }
            }
        }
    }

    fn ledger(&mut self) -> rusqlite::Result<&Connection> {
        if self.ledger.is_none() {
            let conn = Connection::open_with_flags(
                &self.db,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(Duration::from_secs(5))?;
            // A cursor past the ledger's end means the ledger was replaced: start over.
            let last = last_rowid(&conn)?;
            if self.cursor > last {
                tracing::warn!(
                    cursor = self.cursor,
                    last_rowid = last,
                    "the ship cursor is past the end of the ledger (a new ledger?); shipping it from the start"
                );
                self.cursor = 0;
            }
            self.ledger = Some(conn);
        }
        Ok(self.ledger.as_ref().expect("opened above"))
    }

    fn count_lag(&mut self) {
        let cursor = self.cursor;
        if let Ok(n) = self.ledger().and_then(|c| lag(c, cursor)) {
            self.stats.lag.store(n, Relaxed);
        }
    }

    /// A round succeeded: up, and say so if it had been failing.
    fn recovered(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                failures = self.failures,
                cursor = self.cursor,
                "ledger shipping resumed"
            );
        }
        self.failures = 0;
        self.last_log = None;
        self.suppressed = 0;
        self.stats.up.store(1, Relaxed);
    }

    /// Counts and (rate-limited) logs a failed round; returns the back-off before the next.
    fn failed(&mut self, e: &ShipError) -> Duration {
        self.stats.errors.fetch_add(1, Relaxed);
        self.stats.up.store(0, Relaxed);
        self.sink.reset();
        if matches!(e, ShipError::Ledger(_)) {
            self.ledger = None;
        }
        self.failures = self.failures.saturating_add(1);
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY)
        {
            tracing::warn!(
                error = %e,
                failures = self.failures,
                not_logged = self.suppressed,
                cursor = self.cursor,
                "ledger shipping failed; retrying from the cursor"
            );
            self.last_log = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        backoff(self.failures)
    }
}

/// The pause after `failures` failed rounds in a row: 100 ms doubling, at most 30 s.
fn backoff(failures: u32) -> Duration {
    let doubling = failures.saturating_sub(1).min(16);
    (BACKOFF_MIN * 2u32.pow(doubling)).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{insert_batch, UsageRecord};
    use crate::metering::Usage;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tollgate-ship-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn record(id: &str, output: u64, team: &str) -> UsageRecord {
        let mut r = UsageRecord {
            id: id.into(),
            ts_ms: 1_700_000_000_000,
            status: 200,
            outcome: "ok".into(),
            api: "chat",
            usage: Usage {
                input_tokens: 7,
                output_tokens: output,
                ..Usage::default()
            },
            cost_micro_usd: 42,
            ..UsageRecord::default()
        };
        r.identity.team = Some(team.into());
        r
    }

    #[test]
    fn the_column_list_is_the_ledger_schema() {
        let d = dir("schema");
        let conn = crate::ledger::open(&d).unwrap();
        let mut stmt = conn.prepare("PRAGMA table_info(usage)").unwrap();
        let have: Vec<(String, String, bool)> = stmt
            .query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? == 0)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let want: Vec<(String, String, bool)> = COLUMNS
            .iter()
            .map(|c| {
                let ty = match c.kind {
                    Kind::Int => "INTEGER",
                    Kind::Real => "REAL",
                    Kind::Text => "TEXT",
                };
                // `id` is the primary key: NULL is refused by the key, not by a NOT NULL.
                let nullable = c.nullable || c.name == "id";
                (c.name.to_string(), ty.to_string(), nullable)
            })
            .collect();
        assert_eq!(
            have, want,
            "ledger/ship COLUMNS must follow the usage table"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn rows_are_read_after_the_cursor_in_rowid_order_and_a_replaced_row_comes_again() {
        let d = dir("reader");
        let mut conn = crate::ledger::open(&d).unwrap();
        insert_batch(
            &mut conn,
            &[
                record("a", 1, "t1"),
                record("b", 2, "t2"),
                record("c", 3, "t1"),
            ],
        )
        .unwrap();
        let ro = Connection::open_with_flags(
            crate::ledger::db_path(&d),
            OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let first = read_after(&ro, 0, 2).unwrap();
        let ids: Vec<&str> = first.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(first[1].output_tokens, 2);
        assert_eq!(first[1].team.as_deref(), Some("t2"));
        assert_eq!(first[1].cost_micro_usd, Some(42));
        assert_eq!(first[1].api, "chat");
        assert_eq!(first[1].pid, None);
        let rest = read_after(&ro, first[1].rowid, 10).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].id, "c");
        assert_eq!(lag(&ro, first[1].rowid).unwrap(), 1);
        // The writer replaces `a` (INSERT OR REPLACE): it comes again, after `c`, newest values.
        insert_batch(&mut conn, &[record("a", 9, "t3")]).unwrap();
        let again = read_after(&ro, rest[0].rowid, 10).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].id.as_str(), again[0].output_tokens), ("a", 9));
        assert!(again[0].rowid > rest[0].rowid);
        assert_eq!(lag(&ro, 0).unwrap(), 3, "three rows, each id once");
        let cols = ShipRow::columns(&first);
        assert_eq!(cols.len(), COLUMNS.len());
        assert_eq!(
            cols[0],
            Column::Text(vec![Some("a".into()), Some("b".into())])
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_cursor_round_trips_and_a_bad_file_is_refused() {
        let d = dir("cursor");
        let c = CursorFile::new(&d, SinkKind::Postgres);
        assert_eq!(c.path(), d.join("ship").join("postgres.cursor"));
        assert_eq!(c.load().unwrap(), 0, "no file: nothing shipped yet");
        c.store(12345).unwrap();
        assert_eq!(c.load().unwrap(), 12345);
        c.store(7).unwrap();
        assert_eq!(c.load().unwrap(), 7);
        assert!(!d.join("ship").join("postgres.cursor.tmp").exists());
        let good = std::fs::read(c.path()).unwrap();
        for (bytes, why) in [
            (good[..good.len() - 1].to_vec(), "final newline"),
            (good[..good.len() / 2].to_vec(), "final newline"),
            (b"12345\n".to_vec(), "no checksum"),
            (b"\x00\x00\x00\x00".to_vec(), "final newline"),
            (Vec::new(), "final newline"),
            (
                String::from_utf8(good.clone())
                    .unwrap()
                    .replace(" 7 ", " 8 ")
                    .into_bytes(),
                "checksum mismatch",
            ),
        ] {
            std::fs::write(c.path(), &bytes).unwrap();
            let e = c.load().unwrap_err().to_string();
            assert!(e.contains(why), "{why:?} missing from {e}");
            assert!(e.contains("Remove it"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn backoff_doubles_from_100_ms_to_30_s() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(12), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
