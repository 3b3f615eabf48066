//! The rows shipped: every column of the ledger's `usage` table, read after a cursor, and
//! viewed column by column for stores that take columns.

use rusqlite::Connection;
use serde::Serialize;

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
pub(super) fn last_rowid(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COALESCE(MAX(rowid), 0) FROM usage", [], |r| {
        r.get(0)
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::ledger::{insert_batch, UsageRecord};
    use crate::metering::Usage;
    use rusqlite::OpenFlags;
    use std::path::PathBuf;

    pub(in crate::ledger::ship) fn dir(tag: &str) -> PathBuf {
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
}
