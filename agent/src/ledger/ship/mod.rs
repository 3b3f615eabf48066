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

pub mod cursor;
pub mod postgres;
pub mod rows;

pub use cursor::{CursorError, CursorFile};
use rows::last_rowid;
pub use rows::{lag, read_after, Column, ColumnSpec, Kind, ShipRow, COLUMNS};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

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

    #[test]
    fn backoff_doubles_from_100_ms_to_30_s() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(12), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
