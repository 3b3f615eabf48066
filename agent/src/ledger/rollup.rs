//! Rollups of the ledger for the dashboard: what a year of requests sums to, per hour and per
//! day, without scanning the raw rows.
//!
//! - `rollup_hour` and `rollup_day`: requests, errors, tokens, cost and TTFT per period ×
//!   team × model × key.
//! - `rollup_session_day`: the same per day × session (requests that named one), for the top
//!   sessions.
//!
//! - **Adding.** Every insert into `usage` goes through `ledger::insert`, which sums the
//!   records it inserted into a [`Pending`] (in memory, by group) and writes it in the same
//!   transaction: one upsert per group, a few dozen for a typical batch of 512. Measured
//!   (`benches/benches/dashboard.rs`, a commit of 512 records; 1.46 ms without rollups):
//!   per-row `AFTER INSERT` triggers 8.4 ms; one grouped `INSERT ... SELECT` per rollup over
//!   the batch's rowids 6.3 ms spread / 3.3 ms typical (it re-reads every row three times);
//!   summing in memory, as now, 7.1 / 2.8 ms (`benches/results/2026-12-01-dashboard.md`).
//! - **Subtracting.** A delete fires an `AFTER DELETE` trigger. The writer's `INSERT OR
//!   REPLACE` deletes the old row first, and with `recursive_triggers` on (set by
//!   [`super::open`]) that delete fires it, so a replaced record is counted once. Deletes are
//!   rare; a per-row trigger is fine there.
//! - **Consistency.** Both run inside the writer's transaction: a rollup is never ahead of or
//!   behind the rows it sums. A ledger made before the rollups existed is summed once, when
//!   [`install`] first runs on it.
//!
//! Dimensions that are NULL in the ledger are `''` here (a primary key column cannot be NULL
//! and still group).

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension};

/// Bumped when the rollups' shape changes: [`install`] then rebuilds them from the ledger.
const VERSION: i64 = 2;

const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

/// The measures every rollup carries, as `(column, expression over a usage row named R)`.
const MEASURES: &[(&str, &str)] = &[
    ("requests", "1"),
    ("errors", "(R.status >= 400)"),
    ("input_tokens", "R.input_tokens"),
    ("output_tokens", "R.output_tokens"),
    ("cost_micro_usd", "COALESCE(R.cost_micro_usd, 0)"),
    ("ttft_us_sum", "COALESCE(R.ttft_us, 0)"),
    ("ttft_n", "(R.ttft_us IS NOT NULL)"),
];

/// One rollup: its table, its period, and its dimensions as `(column, expression)`.
#[derive(Clone, Copy)]
struct Rollup {
    table: &'static str,
    period_ms: i64,
    dims: &'static [(&'static str, &'static str)],
    /// Only rows matching this (over `R`) are summed.
    filter: &'static str,
}

const MODEL: &str = "COALESCE(R.served_model, R.requested_model, '')";
/// Team × model × key: the hour and day rollups' dimensions.
const BY_KEY: &[(&str, &str)] = &[
    ("team", "COALESCE(R.team, '')"),
    ("model", MODEL),
    ("key_id", "COALESCE(R.key_id, '')"),
];

const ROLLUPS: &[Rollup] = &[
    Rollup {
        table: "rollup_hour",
        period_ms: HOUR_MS,
        dims: BY_KEY,
        filter: "1",
    },
    Rollup {
        table: "rollup_day",
        period_ms: DAY_MS,
        dims: BY_KEY,
        filter: "1",
    },
    Rollup {
        table: "rollup_session_day",
        period_ms: DAY_MS,
        dims: &[
            ("session_id", "R.session_id"),
            ("team", "COALESCE(R.team, '')"),
        ],
        filter: "R.session_id IS NOT NULL",
    },
];

impl Rollup {
    fn dim_names(&self) -> String {
        self.dims.iter().map(|d| d.0).collect::<Vec<_>>().join(", ")
    }

    fn create(&self) -> String {
        let dims: String = self
            .dims
            .iter()
            .map(|d| format!("{} TEXT NOT NULL, ", d.0))
            .collect();
        let measures: String = MEASURES
            .iter()
            .map(|m| format!("{} INTEGER NOT NULL, ", m.0))
            .collect();
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (period_ms INTEGER NOT NULL, {dims}{measures}
             PRIMARY KEY (period_ms, {keys})) WITHOUT ROWID;",
            t = self.table,
            keys = self.dim_names()
        )
    }

    /// The `AFTER DELETE` trigger on `usage`.
    fn trigger(&self) -> String {
        let t = self.table;
        let sub = |e: &str| e.replace("R.", "OLD.");
        let period = format!("(OLD.ts_ms / {p}) * {p}", p = self.period_ms);
        format!(
            "CREATE TRIGGER IF NOT EXISTS {t}_sub AFTER DELETE ON usage WHEN {filter} BEGIN
               UPDATE {t} SET {set} WHERE period_ms = {period} AND {matches};
             END;",
            filter = sub(self.filter),
            set = MEASURES
                .iter()
                .map(|m| format!("{0} = {0} - {1}", m.0, sub(m.1)))
                .collect::<Vec<_>>()
                .join(", "),
            matches = self
                .dims
                .iter()
                .map(|d| format!("{} = {}", d.0, sub(d.1)))
                .collect::<Vec<_>>()
                .join(" AND "),
        )
    }

    /// Adds one group's sums: `(period, dims..., measures...)` as parameters.
    fn upsert(&self) -> String {
        let n = 1 + self.dims.len() + MEASURES.len();
        format!(
            "INSERT INTO {t} (period_ms, {names}, {mnames}) VALUES ({params})
             ON CONFLICT DO UPDATE SET {set}",
            t = self.table,
            names = self.dim_names(),
            mnames = measure_names(),
            params = (1..=n)
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", "),
            set = add_excluded(),
        )
    }

    /// Sums the `usage` rows matching `condition` into the rollup (upserting).
    fn sum_into(&self, condition: &str) -> String {
        let sub = |e: &str| e.replace("R.", "usage.");
        format!(
            "INSERT INTO {t} (period_ms, {names}, {mnames})
             SELECT (ts_ms / {p}) * {p}, {dims}, {sums} FROM usage WHERE {condition} AND {filter}
             GROUP BY 1, {groups}
             ON CONFLICT DO UPDATE SET {set};",
            t = self.table,
            p = self.period_ms,
            names = self.dim_names(),
            mnames = measure_names(),
            dims = self
                .dims
                .iter()
                .map(|d| sub(d.1))
                .collect::<Vec<_>>()
                .join(", "),
            sums = MEASURES
                .iter()
                .map(|m| format!("SUM({})", sub(m.1)))
                .collect::<Vec<_>>()
                .join(", "),
            filter = sub(self.filter),
            groups = (2..2 + self.dims.len())
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            set = add_excluded(),
        )
    }
}

/// The measures' column names, comma-separated.
fn measure_names() -> String {
    MEASURES.iter().map(|m| m.0).collect::<Vec<_>>().join(", ")
}

/// An upsert's `SET`: each measure plus the row that conflicted.
fn add_excluded() -> String {
    MEASURES
        .iter()
        .map(|m| format!("{0} = {0} + excluded.{0}", m.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rollup deltas of records being inserted, summed by group; [`Pending::write`] upserts them.
/// Keys borrow the records' strings: summing allocates nothing but the map.
#[derive(Default)]
pub struct Pending<'a> {
    /// (rollup index, period, dimensions) → measures in [`MEASURES`] order.
    /// foldhash: SipHash was ~3 % of the writer (perf). A batch holds at most `batch_max`
    /// records, so even keys chosen to collide cost a bounded amount of work.
    groups: HashMap<(usize, i64, [Dim<'a>; 3]), [i64; 7], foldhash::fast::RandomState>,
}

/// A dimension's value; `None` for the `''` of a NULL or empty one. Two empty `&str`s are
/// never compared: Rust compares them with `memcmp(p, q, 0)`, and glibc 2.36's AVX-512
/// `memcmp` on AMD EPYC takes ~165 ns for that when `p` is the dangling pointer of an empty
/// string (a masked load whose fault it must suppress), against ~2 ns otherwise. That was two
/// to four calls per record: 0.35 to 0.75 µs of the writer's ~4.5 µs per request.
type Dim<'a> = Option<&'a str>;

fn dim(value: Option<&str>) -> Dim<'_> {
    value.filter(|v| !v.is_empty())
}

impl<'a> Pending<'a> {
    /// Adds one inserted record, computing what the SQL expressions of [`ROLLUPS`] compute
    /// over its stored row (the delete trigger subtracts exactly that).
    pub fn add(&mut self, r: &'a super::UsageRecord) {
        let team = dim(r.identity.team.as_deref());
        let model = dim(r.served_model.as_deref().or(r.requested_model.as_deref()));
        let measures = [
            1,
            i64::from(r.status >= 400),
            r.usage.input_tokens as i64,
            r.usage.output_tokens as i64,
            r.cost_micro_usd as i64,
            r.ttft_us.map_or(0, |t| t as i64),
            i64::from(r.ttft_us.is_some()),
        ];
        let mut add = |rollup: usize, dims: [Dim<'a>; 3]| {
            let period = (r.ts_ms / ROLLUPS[rollup].period_ms) * ROLLUPS[rollup].period_ms;
            let sums = self.groups.entry((rollup, period, dims)).or_default();
            for (s, m) in sums.iter_mut().zip(measures) {
                *s += m;
            }
        };
        let by_key = [team, model, dim(r.key_id.as_deref())];
        add(0, by_key);
        add(1, by_key);
        // Every record that names a session, even an empty one (`session_id IS NOT NULL`).
        if let Some(session) = r.identity.session.as_deref() {
            add(2, [dim(Some(session)), team, None]);
        }
    }

    /// Upserts the sums (call in the inserting transaction).
    pub fn write(self, conn: &Connection) -> rusqlite::Result<()> {
        // Each rollup's upsert, built once per process.
        static UPSERTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        let upserts = UPSERTS.get_or_init(|| ROLLUPS.iter().map(Rollup::upsert).collect());
        for ((rollup, period, dims), sums) in self.groups {
            let r = &ROLLUPS[rollup];
            let mut stmt = conn.prepare_cached(&upserts[rollup])?;
            let dims = dims.map(|d| d.unwrap_or(""));
            let mut values: Vec<&dyn rusqlite::ToSql> = vec![&period];
            values.extend(
                dims.iter()
                    .take(r.dims.len())
                    .map(|d| d as &dyn rusqlite::ToSql),
            );
            values.extend(sums.iter().map(|s| s as &dyn rusqlite::ToSql));
            stmt.execute(values.as_slice())?;
        }
        Ok(())
    }
}

/// Creates the rollups and their delete triggers; sums the existing ledger into them the first time
/// (or when [`VERSION`] changed). Call with `recursive_triggers` on.
pub fn install(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS ledger_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);",
    )?;
    let have: Option<i64> = tx
        .query_row(
            "SELECT value FROM ledger_meta WHERE key = 'rollup_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if have != Some(VERSION) {
        for r in ROLLUPS {
            tx.execute_batch(&format!(
                "DROP TRIGGER IF EXISTS {t}_add; DROP TRIGGER IF EXISTS {t}_sub;
                 DROP TABLE IF EXISTS {t};",
                t = r.table
            ))?;
            tx.execute_batch(&r.create())?;
            tx.execute_batch(&r.sum_into("1"))?;
            tx.execute_batch(&r.trigger())?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO ledger_meta (key, value) VALUES ('rollup_version', ?1)",
            [VERSION],
        )?;
        tracing::info!(version = VERSION, "ledger rollups built");
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{insert_batch, UsageRecord};
    use crate::metering::Usage;

    fn record(
        id: &str,
        ts_ms: i64,
        team: Option<&str>,
        session: Option<&str>,
        input: u64,
        cost: u64,
    ) -> UsageRecord {
        let mut r = UsageRecord {
            id: id.into(),
            ts_ms,
            status: if cost == 0 { 429 } else { 200 },
            outcome: "ok".into(),
            api: "chat_completions",
            served_model: Some("smol".into()),
            usage: Usage {
                input_tokens: input,
                output_tokens: 10,
                ..Usage::default()
            },
            cost_micro_usd: cost,
            ttft_us: Some(1_000),
            key_id: Some("key_1".into()),
            ..UsageRecord::default()
        };
        r.identity.team = team.map(String::from);
        r.identity.session = session.map(String::from);
        r
    }

    fn ledger() -> Connection {
        crate::ledger::open_in_memory().unwrap()
    }

    /// Each rollup, row by row and measure by measure, equals the same rollup summed afresh
    /// from the raw rows by SQL.
    fn assert_rollups_are_exact(c: &Connection) {
        for r in ROLLUPS {
            let fresh = Rollup {
                table: "temp.fresh",
                ..*r
            };
            c.execute_batch(&format!(
                "DROP TABLE IF EXISTS temp.fresh; CREATE TEMP TABLE fresh AS SELECT * FROM {t} WHERE 0;
                 CREATE UNIQUE INDEX temp.fresh_key ON fresh (period_ms, {keys});",
                t = r.table,
                keys = r.dim_names()
            ))
            .unwrap();
            c.execute_batch(&fresh.sum_into("1")).unwrap();
            let diff = |a: &str, b: &str| -> i64 {
                c.query_row(
                    &format!("SELECT COUNT(*) FROM (SELECT * FROM {a} WHERE requests != 0 EXCEPT SELECT * FROM {b})"),
                    [],
                    |x| x.get(0),
                )
                .unwrap()
            };
            assert_eq!(
                diff(r.table, "temp.fresh"),
                0,
                "{} has rows the ledger does not",
                r.table
            );
            assert_eq!(
                diff("temp.fresh", r.table),
                0,
                "{} lacks rows of the ledger",
                r.table
            );
        }
    }

    /// Each rollup's sums, compared against the same sums over the raw rows.
    fn assert_rollups_match_the_ledger(c: &Connection) {
        assert_rollups_are_exact(c);
        for r in ROLLUPS {
            let from_rollup: Vec<(i64, i64, i64, i64)> = c
                .prepare(&format!(
                    "SELECT SUM(requests), SUM(errors), SUM(input_tokens), SUM(cost_micro_usd) FROM {} GROUP BY period_ms ORDER BY period_ms",
                    r.table
                ))
                .unwrap()
                .query_map([], |x| Ok((x.get(0)?, x.get(1)?, x.get(2)?, x.get(3)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let filter = r.filter.replace("R.", "");
            let raw: Vec<(i64, i64, i64, i64)> = c
                .prepare(&format!(
                    "SELECT COUNT(*), SUM(status >= 400), SUM(input_tokens), SUM(cost_micro_usd) FROM usage WHERE {filter}
                     GROUP BY ts_ms / {p} ORDER BY ts_ms / {p}",
                    p = r.period_ms
                ))
                .unwrap()
                .query_map([], |x| Ok((x.get(0)?, x.get(1)?, x.get(2)?, x.get(3)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let from_rollup: Vec<_> = from_rollup.into_iter().filter(|x| x.0 != 0).collect();
            assert_eq!(from_rollup, raw, "{}", r.table);
        }
    }

    #[test]
    fn inserts_replacements_and_deletes_keep_every_rollup_equal_to_the_ledger() {
        let mut c = ledger();
        let t0 = 20_000 * DAY_MS;
        insert_batch(
            &mut c,
            &[
                record("a", t0 + 1, Some("search"), Some("s1"), 100, 5),
                record("b", t0 + HOUR_MS, Some("search"), None, 200, 7),
                record("c", t0 + DAY_MS, None, Some("s1"), 300, 0),
            ],
        )
        .unwrap();
        assert_rollups_match_the_ledger(&c);
        // The writer's INSERT OR REPLACE: the record is counted once, with its new values.
        insert_batch(
            &mut c,
            &[record("a", t0 + 1, Some("ads"), Some("s2"), 1_000, 50)],
        )
        .unwrap();
        assert_rollups_match_the_ledger(&c);
        let teams: Vec<(String, i64)> = c
            .prepare("SELECT team, SUM(requests) FROM rollup_day GROUP BY team HAVING SUM(requests) > 0 ORDER BY team")
            .unwrap()
            .query_map([], |x| Ok((x.get(0)?, x.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            teams,
            [("".into(), 1), ("ads".into(), 1), ("search".into(), 1)]
        );
        c.execute("DELETE FROM usage WHERE id = 'b'", []).unwrap();
        assert_rollups_match_the_ledger(&c);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Any mix of batches, replacements (the writer) and kept rows (journal replay) leaves
        /// every rollup equal to the ledger it sums.
        #[test]
        fn rollups_stay_exact_under_any_batches(
            batches in proptest::collection::vec(
                (proptest::bool::ANY, proptest::collection::vec(
                    // Up to 40 distinct ids a batch: past the 16 rows of one multi-row statement.
                    (0u8..40, 0i64..(3 * DAY_MS), 0u8..5, 0u8..4, 0u8..4, proptest::bool::ANY, 0u64..5_000, proptest::option::of(0u64..90_000)),
                    0..48)),
                1..6)
        ) {
            let mut c = ledger();
            for (keep_existing, rows) in batches {
                let records: Vec<UsageRecord> = rows
                    .into_iter()
                    .map(|(id, ts, team, model, session, error, cost, ttft)| {
                        // Empty strings meet NULLs in every dimension: both are `''` in a rollup.
                        let teams = [None, Some(""), Some("a"), Some("b"), Some("c")];
                        let mut r = record(&format!("r{id}"), 20_000 * DAY_MS + ts, teams[team as usize], [None, Some(""), Some("s1"), Some("s2")][session as usize], cost * 3, cost);
                        r.status = if error { 500 } else { 200 };
                        r.ttft_us = ttft;
                        r.served_model = [None, Some(""), Some("m1"), Some("m2")][model as usize].map(String::from);
                        r.requested_model = Some("asked".into());
                        r.key_id = [None, Some(""), Some("k")][id as usize % 3].map(String::from);
                        r
                    })
                    .collect();
                if keep_existing {
                    crate::ledger::insert_batch_keep_existing(&mut c, &records).unwrap();
                } else {
                    insert_batch(&mut c, &records).unwrap();
                }
            }
            assert_rollups_are_exact(&c);
        }
    }

    #[test]
    fn a_ledger_from_before_the_rollups_is_summed_once_when_they_are_installed() {
        let mut c = ledger();
        let t0 = 20_000 * DAY_MS;
        insert_batch(
            &mut c,
            &(0..50)
                .map(|i| {
                    record(
                        &format!("r{i}"),
                        t0 + i * 600_000,
                        Some("search"),
                        Some("s"),
                        10,
                        1,
                    )
                })
                .collect::<Vec<_>>(),
        )
        .unwrap();
        // As a ledger from before the rollups: rows, no rollups, no version.
        c.execute_batch(
            "DELETE FROM rollup_hour; DELETE FROM rollup_day; DELETE FROM rollup_session_day;
             DELETE FROM ledger_meta;",
        )
        .unwrap();
        install(&mut c).unwrap();
        assert_rollups_match_the_ledger(&c);
        // A second start neither rebuilds nor double counts; new rows are added by trigger.
        install(&mut c).unwrap();
        insert_batch(&mut c, &[record("new", t0, Some("search"), None, 10, 1)]).unwrap();
        assert_rollups_match_the_ledger(&c);
        let n: i64 = c
            .query_row("SELECT SUM(requests) FROM rollup_hour", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 51);
    }
}
