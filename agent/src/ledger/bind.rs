//! Binding ledger rows to `INSERT` statements.
//!
//! One column list ([`bind_row`]) serves two statements: rusqlite's, for single rows (the
//! remainder of a batch, and the row-by-row path after a duplicate id), and [`ManyRows`], the
//! [`ROWS_PER_STATEMENT`](super::ROWS_PER_STATEMENT)-row insert that carries almost every row.
//!
//! Why a statement of our own: rusqlite binds every text with `SQLITE_TRANSIENT`, so SQLite
//! copies each string into a buffer it allocates (and frees at the next bind). A profile of the
//! ledger writer at 64 connections put those copies and allocations (`sqlite3VdbeMemSetStr`,
//! `sqlite3VdbeMemGrow`, `dbMallocRawFinish`, `sqlite3_free`) at ~8 % of the writer for open
//! traffic and ~20 % for governed traffic, whose rows carry a key, a team and a project.
//! [`ManyRows`] binds strings borrowed from the records with `SQLITE_STATIC`: the records
//! outlive the statement's execution (its lifetime says so), so SQLite reads them in place.
//!
//! It is prepared once per batch (a 672-parameter statement: ~170–190 µs,
//! `benches/scripts/sqlite_prepare_cost.py`), where rusqlite's stays cached on the
//! connection, so it pays only in large batches: at 2,048 rows (64 connections) the governed
//! writer went 2.36 → 2.14 µs per request with the prepare included. Smaller batches, the
//! common case below saturation, keep rusqlite's statement ([`IN_PLACE_MIN_ROWS`]).

use std::ffi::{c_char, c_int, CStr};
use std::marker::PhantomData;
use std::ptr::NonNull;

use rusqlite::{ffi, Connection};

use super::{UsageRecord, COLUMN_COUNT};

/// Fewest rows in a batch for [`ManyRows`]: below it its prepare costs more than the copies
/// it saves (~0.3 µs per governed row against ~180 µs per prepare breaks even near 600 rows,
/// open rows save less).
pub(super) const IN_PLACE_MIN_ROWS: usize = 1024;

/// A multi-row `INSERT` that [`bind_row`] fills. Parameters are 1-based; a `None` is left
/// unbound (the caller started the fill with [`RowStatement::clear`], so it is NULL).
pub(super) trait RowStatement<'r> {
    /// Starts a fill: a parameter not bound between this and the next `run` is NULL in it.
    fn clear(&mut self);
    /// Runs the statement once with what is bound; the rows it inserted.
    fn run(&mut self) -> rusqlite::Result<usize>;
    fn int(&mut self, n: usize, v: i64) -> rusqlite::Result<()>;
    fn real(&mut self, n: usize, v: f64) -> rusqlite::Result<()>;
    /// A string that lives as long as the record.
    fn text(&mut self, n: usize, v: &'r str) -> rusqlite::Result<()>;
    /// A string made for this bind (SQLite keeps its own copy).
    fn owned_text(&mut self, n: usize, v: String) -> rusqlite::Result<()>;
}

impl<'r> RowStatement<'r> for rusqlite::CachedStatement<'_> {
    fn clear(&mut self) {
        self.clear_bindings();
    }
    fn run(&mut self) -> rusqlite::Result<usize> {
        self.raw_execute()
    }
    fn int(&mut self, n: usize, v: i64) -> rusqlite::Result<()> {
        self.raw_bind_parameter(n, v)
    }
    fn real(&mut self, n: usize, v: f64) -> rusqlite::Result<()> {
        self.raw_bind_parameter(n, v)
    }
    fn text(&mut self, n: usize, v: &'r str) -> rusqlite::Result<()> {
        self.raw_bind_parameter(n, v)
    }
    fn owned_text(&mut self, n: usize, v: String) -> rusqlite::Result<()> {
        self.raw_bind_parameter(n, v)
    }
}

/// Binds one record's values to parameters `first..first + COLUMN_COUNT` (1-based), each with
/// its own type (no `dyn ToSql` per value). NULLs are not bound: the caller starts the fill
/// with [`RowStatement::clear`], once for all its rows, where a `sqlite3_bind_null` per
/// absent value cost ~50 instructions each, ~20 of them per row.
pub(super) fn bind_row<'r>(
    stmt: &mut impl RowStatement<'r>,
    first: usize,
    r: &'r UsageRecord,
) -> rusqlite::Result<()> {
    let i = &r.identity;
    let k = r.conn.as_deref();
    let cg = r.cgroup.as_deref();
    let mut n = first;
    // `int`, `real`, `text`: a value of that type; `opt` leaves a `None` as the NULL the
    // clear left there.
    macro_rules! put {
        ($how:ident, $e:expr) => {{
            stmt.$how(n, $e)?;
            n += 1;
        }};
    }
    macro_rules! opt {
        ($how:ident, $e:expr) => {{
            if let Some(x) = $e {
                stmt.$how(n, x)?;
            }
            n += 1;
        }};
    }
    put!(text, r.id.as_str());
    put!(int, r.ts_ms);
    put!(int, r.latency_us as i64);
    opt!(int, r.ttft_us.map(|t| t as i64));
    put!(int, i64::from(r.status));
    put!(text, &*r.outcome);
    put!(text, r.api);
    opt!(text, i.team.as_deref());
    opt!(text, i.project.as_deref());
    opt!(text, i.user.as_deref());
    opt!(text, i.session.as_deref());
    opt!(text, i.workflow.as_deref());
    opt!(text, i.cost_center.as_deref());
    opt!(text, r.requested_model.as_deref());
    opt!(text, r.served_model.as_deref());
    opt!(text, r.provider.as_deref());
    put!(int, r.usage.input_tokens as i64);
    put!(int, r.usage.cached_tokens as i64);
    put!(int, r.usage.cache_write_tokens as i64);
    put!(int, r.usage.output_tokens as i64);
    put!(int, r.usage.reasoning_tokens as i64);
    put!(int, i64::from(r.estimated));
    opt!(int, k.map(|k| i64::from(k.tgid)));
    opt!(text, k.map(|k| k.comm.as_str()));
    opt!(int, k.map(|k| i64::from(k.uid)));
    opt!(int, k.map(|k| k.cgroup_id as i64));
    opt!(text, cg.map(|c| c.path.as_str()));
    opt!(text, cg.and_then(|c| c.identity.container_id.as_deref()));
    opt!(text, cg.and_then(|c| c.identity.pod_uid.as_deref()));
    opt!(
        owned_text,
        k.and_then(|k| k.original_dst).map(|a| a.to_string())
    );
    opt!(text, r.key_id.as_deref());
    put!(int, r.cost_micro_usd as i64);
    opt!(text, r.route.as_deref());
    put!(int, i64::from(r.attempts));
    opt!(real, r.score.map(f64::from));
    put!(int, r.prefix_bytes as i64);
    opt!(text, r.guard.as_deref());
    opt!(text, r.cache.as_deref());
    put!(int, r.saved_micro_usd as i64);
    put!(int, r.saved_tokens as i64);
    opt!(text, r.upstream_version.as_deref());
    put!(int, r.prompt_bytes as i64);
    debug_assert_eq!(n - first, COLUMN_COUNT);
    Ok(())
}

/// A prepared multi-row `INSERT` whose strings are bound in place (`SQLITE_STATIC`). Every
/// record bound to it must outlive it (`'r`); it is finalized when dropped, before the
/// connection it borrows can close.
pub(super) struct ManyRows<'c, 'r> {
    stmt: NonNull<ffi::sqlite3_stmt>,
    db: *mut ffi::sqlite3,
    /// Per parameter (index 0 unused): the fill that last bound it to a value, 0 while it is
    /// NULL. `sqlite3_clear_bindings` releases all 672 parameters per statement (~630
    /// instructions a row, callgrind); most columns of a row are NULL in every fill, so only
    /// the ones a previous fill set and this one did not are set back to NULL.
    stamps: Vec<u64>,
    /// The current fill, counted from 1.
    fill: u64,
    _conn: PhantomData<&'c Connection>,
    _records: PhantomData<&'r UsageRecord>,
}

impl<'c, 'r> ManyRows<'c, 'r> {
    /// Prepares `sql` on `conn`, inside the caller's transaction (once per batch of at least
    /// [`IN_PLACE_MIN_ROWS`]).
    pub(super) fn prepare(conn: &'c Connection, sql: &str) -> rusqlite::Result<Self> {
        // SAFETY: the handle is used only while `conn` is borrowed (`'c`), on this thread.
        let db = unsafe { conn.handle() };
        let len = c_int::try_from(sql.len()).map_err(|_| rusqlite::Error::InvalidQuery)?;
        let mut stmt = std::ptr::null_mut();
        // SAFETY: `sql` is valid for `len` bytes (no NUL needed with an explicit length);
        // `stmt` receives the statement or stays null.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(
                db,
                sql.as_ptr().cast::<c_char>(),
                len,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(error(db, rc));
        }
        let stmt = NonNull::new(stmt).ok_or(rusqlite::Error::InvalidQuery)?;
        // SAFETY: a live statement.
        let params = unsafe { ffi::sqlite3_bind_parameter_count(stmt.as_ptr()) };
        Ok(Self {
            stmt,
            db,
            stamps: vec![0; usize::try_from(params).unwrap_or(0) + 1],
            fill: 0,
            _conn: PhantomData,
            _records: PhantomData,
        })
    }

    /// Runs the statement once with what is bound, then resets it; returns the rows it
    /// inserted.
    fn execute(&mut self) -> rusqlite::Result<usize> {
        // SAFETY: a live statement on this thread; every bound string outlives `self`.
        let rc = unsafe { ffi::sqlite3_step(self.stmt.as_ptr()) };
        // SAFETY: as above; the reset keeps the bindings (cleared by the caller when needed).
        let reset = unsafe { ffi::sqlite3_reset(self.stmt.as_ptr()) };
        match rc {
            ffi::SQLITE_DONE => {
                // SAFETY: the connection is live while `self` borrows it.
                let changes = unsafe { ffi::sqlite3_changes64(self.db) };
                Ok(usize::try_from(changes).unwrap_or(0))
            }
            ffi::SQLITE_ROW => Err(rusqlite::Error::ExecuteReturnedResults),
            _ => Err(error(
                self.db,
                if reset != ffi::SQLITE_OK { reset } else { rc },
            )),
        }
    }

    fn check(&self, rc: c_int) -> rusqlite::Result<()> {
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(error(self.db, rc))
        }
    }

    fn param(n: usize) -> rusqlite::Result<c_int> {
        c_int::try_from(n).map_err(|_| rusqlite::Error::InvalidParameterCount(n, COLUMN_COUNT))
    }

    /// Records that parameter `n` holds a value bound in this fill (after SQLite accepted it).
    fn bound(&mut self, n: usize, rc: c_int) -> rusqlite::Result<()> {
        self.check(rc)?;
        if let Some(s) = self.stamps.get_mut(n) {
            *s = self.fill;
        }
        Ok(())
    }

    /// Sets back to NULL every parameter an earlier fill bound and this one did not (~6
    /// instructions a parameter, ~250 a row: against ~630 for `sqlite3_clear_bindings`).
    fn null_stale(&mut self) -> rusqlite::Result<()> {
        let (stmt, db, fill) = (self.stmt.as_ptr(), self.db, self.fill);
        for (n, s) in self.stamps.iter_mut().enumerate().skip(1) {
            if *s != 0 && *s != fill {
                *s = 0;
                // SAFETY: a live statement; `n` is one of its parameters (counted at prepare).
                let rc = unsafe { ffi::sqlite3_bind_null(stmt, n as c_int) };
                if rc != ffi::SQLITE_OK {
                    return Err(error(db, rc));
                }
            }
        }
        Ok(())
    }

    fn bind_str(
        &mut self,
        n: usize,
        v: &str,
        destructor: ffi::sqlite3_destructor_type,
    ) -> rusqlite::Result<()> {
        let p = Self::param(n)?;
        // SAFETY: `v` is valid for its length; with `SQLITE_STATIC` it outlives the statement
        // (`'r`), with `SQLITE_TRANSIENT` SQLite copies it before returning.
        let rc = unsafe {
            ffi::sqlite3_bind_text64(
                self.stmt.as_ptr(),
                p,
                v.as_ptr().cast::<c_char>(),
                v.len() as u64,
                destructor,
                ffi::SQLITE_UTF8 as u8,
            )
        };
        self.bound(n, rc)
    }
}

impl<'r> RowStatement<'r> for ManyRows<'_, 'r> {
    fn clear(&mut self) {
        self.fill += 1;
    }
    fn run(&mut self) -> rusqlite::Result<usize> {
        self.null_stale()?;
        self.execute()
    }
    fn int(&mut self, n: usize, v: i64) -> rusqlite::Result<()> {
        let p = Self::param(n)?;
        // SAFETY: a live statement; SQLite range-checks `p`.
        let rc = unsafe { ffi::sqlite3_bind_int64(self.stmt.as_ptr(), p, v) };
        self.bound(n, rc)
    }
    fn real(&mut self, n: usize, v: f64) -> rusqlite::Result<()> {
        let p = Self::param(n)?;
        // SAFETY: as for `int`.
        let rc = unsafe { ffi::sqlite3_bind_double(self.stmt.as_ptr(), p, v) };
        self.bound(n, rc)
    }
    fn text(&mut self, n: usize, v: &'r str) -> rusqlite::Result<()> {
        self.bind_str(n, v, ffi::SQLITE_STATIC())
    }
    fn owned_text(&mut self, n: usize, v: String) -> rusqlite::Result<()> {
        self.bind_str(n, &v, ffi::SQLITE_TRANSIENT())
    }
}

impl Drop for ManyRows<'_, '_> {
    fn drop(&mut self) {
        // SAFETY: the statement is live and finalized once, here.
        unsafe { ffi::sqlite3_finalize(self.stmt.as_ptr()) };
    }
}

/// rusqlite's error for `rc`, with the connection's message.
fn error(db: *mut ffi::sqlite3, rc: c_int) -> rusqlite::Error {
    // SAFETY: `db` is a live connection; the message is copied before any other call.
    let message = unsafe {
        let m = ffi::sqlite3_errmsg(db);
        (!m.is_null()).then(|| CStr::from_ptr(m).to_string_lossy().into_owned())
    };
    rusqlite::Error::SqliteFailure(ffi::Error::new(rc), message)
}
