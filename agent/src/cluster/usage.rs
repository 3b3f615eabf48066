//! Cluster mode, usage across nodes: every few seconds each agent publishes its ledger's totals
//! for the current UTC day and month, per team and per key, and `tollgate usage --cluster` sums
//! them, one row per team (or key) with the number of agents that served it.
//!
//! **Layout.** One hash per period, `tollgate:usage:day:2026-12-01` and
//! `tollgate:usage:month:2026-12`; field `<node>|team|<team>` or `<node>|key|<key id>` → the
//! JSON of a [`SummaryRow`] (requests, errors, tokens, cost) of that agent's whole period so
//! far. Each agent overwrites only its own fields, so summing the fields is summing the ledgers
//! without counting anything twice. A period's hash expires a week after the period ends.
//! Published by the sync thread (`keys.rs`) every three seconds when the ledger has new rows
//! (and after every reconnect), never on the request path; an agent that cannot read its
//! ledger publishes nothing. Totals are kept in memory and each publish adds only the rows
//! written since the last one (by rowid), so it costs what the last seconds' traffic costs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::governance::window::{now_ms, rfc3339, Window};
use crate::ledger::query::{summarize_new, GroupBy, SummaryRow};

/// Periods are kept this long after they end.
const KEEP_MS: i64 = 7 * 86_400_000;

/// The Redis hash of a period: `day` or `month` at `ms`, as `tollgate:usage:day:2026-12-01`.
pub fn period_key(window: Window, ms: i64) -> String {
    let start = window.at(ms).start_ms;
    let date = rfc3339(start);
    match window {
        Window::Month => format!("tollgate:usage:month:{}", &date[..7]),
        _ => format!("tollgate:usage:day:{}", &date[..10]),
    }
}

/// The field of one agent's totals for one team or key.
pub fn field(node: &str, by: GroupBy, key: &str) -> String {
    format!("{node}|{}|{key}", by_name(by))
}

fn by_name(by: GroupBy) -> &'static str {
    match by {
        GroupBy::Key => "key",
        _ => "team",
    }
}

/// This agent's totals of the current day and month, kept up to date from its ledger
/// incrementally: each publish reads only the rows added since the last one, so its cost
/// follows the traffic of the last few seconds, not the month's volume.
#[derive(Debug, Default)]
pub struct UsageState {
    /// The last ledger row counted in `totals`.
    last_rowid: i64,
    /// Period hash → field → totals.
    totals: BTreeMap<String, BTreeMap<String, SummaryRow>>,
    /// Write everything at the next turn even without new rows (after a reconnect: Redis may
    /// have restarted empty).
    pub dirty: bool,
}

fn add(acc: &mut SummaryRow, r: &SummaryRow) {
    acc.requests += r.requests;
    acc.errors += r.errors;
    acc.input_tokens += r.input_tokens;
    acc.cached_tokens += r.cached_tokens;
    acc.output_tokens += r.output_tokens;
    acc.reasoning_tokens += r.reasoning_tokens;
    acc.estimated += r.estimated;
    acc.cost_usd += r.cost_usd;
}

/// Adds the ledger's new rows to this agent's totals and writes them, unless nothing changed.
/// Ledger problems are logged and publish nothing; Redis errors are returned.
pub fn publish(
    conn: &mut dyn redis::ConnectionLike,
    node: &str,
    data_dir: &Path,
    state: &mut UsageState,
) -> redis::RedisResult<()> {
    let path = crate::ledger::db_path(data_dir);
    if !path.exists() {
        return Ok(());
    }
    let now = now_ms();
    let ledger = match rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cluster: the ledger could not be read; usage not published");
            return Ok(());
        }
    };
    let _ = ledger.busy_timeout(std::time::Duration::from_secs(1));
    let upto: i64 = ledger
        .query_row("SELECT MAX(rowid) FROM usage", [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .ok()
        .flatten()
        .unwrap_or(0);
    if upto <= state.last_rowid && !state.dirty {
        return Ok(());
    }
    let periods: Vec<(Window, String)> = [Window::Day, Window::Month]
        .into_iter()
        .map(|w| (w, period_key(w, now)))
        .collect();
    // A period that ended is complete in Redis; its totals are dropped here.
    state
        .totals
        .retain(|k, _| periods.iter().any(|(_, p)| p == k));
    for (window, key) in &periods {
        let span = window.at(now);
        let fields = state.totals.entry(key.clone()).or_default();
        for by in [GroupBy::Team, GroupBy::Key] {
            let rows = match summarize_new(&ledger, by, span.start_ms, state.last_rowid, upto) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: summing the ledger failed; usage not published");
                    return Ok(());
                }
            };
            for r in rows {
                let f = field(node, by, &r.key);
                match fields.get_mut(&f) {
                    Some(acc) => add(acc, &r),
                    None => {
                        fields.insert(f, r);
                    }
                }
            }
        }
    }
    state.last_rowid = upto;
    for (window, key) in &periods {
        let Some(fields) = state.totals.get(key).filter(|f| !f.is_empty()) else {
            continue;
        };
        // One HSET with every field, then the expiry: single-key commands, which a Redis
        // Cluster routes (it refuses pipelines).
        let mut hset = redis::cmd("HSET");
        hset.arg(key);
        for (f, r) in fields {
            hset.arg(f)
                .arg(serde_json::to_string(r).unwrap_or_default());
        }
        hset.query::<()>(conn)?;
        redis::cmd("PEXPIREAT")
            .arg(key)
            .arg(window.at(now).end_ms + KEEP_MS)
            .query::<()>(conn)?;
    }
    state.dirty = false;
    Ok(())
}

/// Sums every agent's fields of one period hash for `by` (team or key).
pub fn sum(fields: Vec<(String, String)>, by: GroupBy) -> Vec<SummaryRow> {
    let want = by_name(by);
    let mut rows: BTreeMap<String, (SummaryRow, BTreeSet<String>)> = BTreeMap::new();
    for (f, json) in fields {
        let mut parts = f.splitn(3, '|');
        let (Some(node), Some(kind), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if kind != want {
            continue;
        }
        let Ok(r) = serde_json::from_str::<SummaryRow>(&json) else {
            continue;
        };
        let (acc, nodes) = rows.entry(key.to_string()).or_insert_with(|| {
            (
                SummaryRow {
                    nodes: Some(0),
                    ..SummaryRow::empty(key.to_string())
                },
                BTreeSet::new(),
            )
        });
        add(acc, &r);
        nodes.insert(node.to_string());
    }
    rows.into_values()
        .map(|(mut r, nodes)| {
            r.nodes = Some(nodes.len() as u64);
            r
        })
        .collect()
}

/// Every agent's totals of the period `window` is in now, summed by `by` (team or key).
pub fn collect(
    conn: &mut dyn redis::ConnectionLike,
    window: Window,
    by: GroupBy,
) -> redis::RedisResult<Vec<SummaryRow>> {
    let fields: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(period_key(window, now_ms()))
        .query(conn)?;
    Ok(sum(fields, by))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, requests: u64, input: u64, output: u64, cost: f64) -> String {
        serde_json::to_string(&SummaryRow {
            key: key.into(),
            requests,
            errors: 0,
            input_tokens: input,
            cached_tokens: 0,
            output_tokens: output,
            reasoning_tokens: 0,
            estimated: 0,
            cost_usd: cost,
            nodes: None,
        })
        .unwrap()
    }

    #[test]
    fn totals_are_summed_per_team_across_nodes_with_a_node_count() {
        let fields = vec![
            (
                field("a", GroupBy::Team, "search"),
                row("search", 2, 10, 5, 0.5),
            ),
            (
                field("b", GroupBy::Team, "search"),
                row("search", 3, 20, 7, 0.25),
            ),
            (
                field("b", GroupBy::Team, "ads|x"),
                row("ads|x", 1, 1, 1, 0.0),
            ),
            (field("a", GroupBy::Key, "k_1"), row("k_1", 9, 9, 9, 9.0)),
            ("garbage".into(), "{}".into()),
            (field("c", GroupBy::Team, "bad"), "not json".into()),
        ];
        let teams = sum(fields.clone(), GroupBy::Team);
        assert_eq!(teams.len(), 2, "{teams:?}");
        assert_eq!(teams[0].key, "ads|x");
        let s = &teams[1];
        assert_eq!(
            (
                s.key.as_str(),
                s.requests,
                s.input_tokens,
                s.output_tokens,
                s.nodes
            ),
            ("search", 5, 30, 12, Some(2))
        );
        assert!((s.cost_usd - 0.75).abs() < 1e-9);
        let keys = sum(fields, GroupBy::Key);
        assert_eq!(
            (keys.len(), keys[0].requests, keys[0].nodes),
            (1, 9, Some(1))
        );
        let table =
            crate::ledger::query::render(&teams, crate::ledger::query::Format::Table, "team");
        assert!(table.lines().next().unwrap().ends_with("nodes"), "{table}");
    }

    #[test]
    fn period_keys_name_the_utc_day_and_month() {
        // 2023-11-14T22:13:20Z
        let ms = 1_700_000_000_000;
        assert_eq!(period_key(Window::Day, ms), "tollgate:usage:day:2023-11-14");
        assert_eq!(
            period_key(Window::Month, ms),
            "tollgate:usage:month:2023-11"
        );
    }
}
