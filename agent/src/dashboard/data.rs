//! What the dashboard shows, as JSON, read from the ledger's rollups (`ledger/rollup.rs`), the
//! live budget counters and the audit log. Every figure over a period comes from a rollup, so
//! a year of ledger costs a few thousand rollup rows, not a scan of every request; only the
//! live panel (the last five minutes) and the findings (at most [`FINDINGS_MAX_MS`]) read raw
//! rows, through the `ts_ms` index. Top sessions read at most [`SESSIONS_MAX_MS`] of their
//! daily rollup: sessions are short-lived, and a year of them is most of a year's rows.

use std::collections::HashMap;

use rusqlite::Connection;
use serde_json::{json, Value};

use crate::governance::window::{now_ms, rfc3339, Window};
use crate::ledger::findings::{findings, Thresholds};
use crate::ledger::rollup::DAY_MS;

const HOUR_MS: i64 = 3_600_000;
/// Entries of a "by" list before the rest is summed as `(other)`.
const TOP: usize = 10;
/// Findings read raw rows: never more than this much of them.
pub const FINDINGS_MAX_MS: i64 = 31 * DAY_MS;
/// The top sessions look back at most this far.
pub const SESSIONS_MAX_MS: i64 = 31 * DAY_MS;
/// The live panel: the last five minutes in ten-second buckets.
const LIVE_MS: i64 = 300_000;
const LIVE_BUCKET_MS: i64 = 10_000;

/// A period the page can show.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub name: &'static str,
    pub from_ms: i64,
    pub to_ms: i64,
    /// The rollup period the series are bucketed by.
    pub bucket_ms: i64,
}

impl Range {
    /// `24h`, `7d`, `30d`, `365d` (ending now, whole hours or days), or `month` (this UTC
    /// calendar month, as `tollgate report chargeback --month` counts it).
    pub fn parse(name: &str, now: i64) -> Option<Range> {
        let hours = |n: i64, name| Range {
            name,
            from_ms: (now.div_euclid(HOUR_MS) - (n - 1)) * HOUR_MS,
            to_ms: now + 1,
            bucket_ms: HOUR_MS,
        };
        let days = |n: i64, name| Range {
            name,
            from_ms: (now.div_euclid(DAY_MS) - (n - 1)) * DAY_MS,
            to_ms: now + 1,
            bucket_ms: DAY_MS,
        };
        Some(match name {
            "24h" => hours(24, "24h"),
            "7d" => hours(168, "7d"),
            "30d" => days(30, "30d"),
            "365d" => days(365, "365d"),
            "month" => {
                let span = Window::Month.at(now);
                Range {
                    name: "month",
                    from_ms: span.start_ms,
                    to_ms: span.end_ms,
                    bucket_ms: DAY_MS,
                }
            }
            _ => return None,
        })
    }

    fn table(&self) -> &'static str {
        if self.bucket_ms == HOUR_MS {
            "rollup_hour"
        } else {
            "rollup_day"
        }
    }

    fn buckets(&self) -> Vec<i64> {
        let end = self.to_ms.min(now_ms() + 1);
        (0..)
            .map(|i| self.from_ms + i * self.bucket_ms)
            .take_while(|b| *b < end)
            .collect()
    }
}

fn usd(micro: i64) -> f64 {
    micro as f64 / 1e6
}

/// Spend over the range: totals, per team, model and key (each with its series), and the top
/// sessions.
pub fn spend(conn: &Connection, range: Range) -> rusqlite::Result<Value> {
    let buckets = range.buckets();
    let index: HashMap<i64, usize> = buckets.iter().enumerate().map(|(i, b)| (*b, i)).collect();
    let mut by = serde_json::Map::new();
    let mut totals = [0i64; 5];
    for (label, column) in [("team", "team"), ("model", "model"), ("key", "key_id")] {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {column}, period_ms, SUM(requests), SUM(errors), SUM(input_tokens),
                    SUM(output_tokens), SUM(cost_micro_usd)
             FROM {table} WHERE period_ms >= ?1 AND period_ms < ?2
             GROUP BY 1, 2",
            table = range.table()
        ))?;
        let mut groups: HashMap<String, Group> = HashMap::new();
        let rows = stmt.query_map([range.from_ms, range.to_ms], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?],
            ))
        })?;
        for row in rows {
            let (name, period, sums): (String, i64, [i64; 5]) = row?;
            let g = groups
                .entry(name)
                .or_insert_with(|| Group::new(buckets.len()));
            g.add(&sums);
            if let Some(i) = index.get(&period) {
                g.series[*i] += sums[4];
            }
        }
        let mut list: Vec<(String, Group)> = groups.into_iter().collect();
        list.sort_by(|a, b| b.1.sums[4].cmp(&a.1.sums[4]).then(a.0.cmp(&b.0)));
        if label == "team" {
            for (_, g) in &list {
                for (t, s) in totals.iter_mut().zip(g.sums) {
                    *t += s;
                }
            }
        }
        if list.len() > TOP {
            let mut other = Group::new(buckets.len());
            for (_, g) in list.drain(TOP..) {
                other.merge(&g);
            }
            list.push(("(other)".into(), other));
        }
        let entries: Vec<Value> = list
            .into_iter()
            .map(|(name, g)| {
                let name = if name.is_empty() {
                    "(none)".to_string()
                } else {
                    name
                };
                g.json(&name)
            })
            .collect();
        by.insert(label.into(), Value::Array(entries));
    }
    let mut stmt = conn.prepare_cached(
        "SELECT session_id, team, SUM(requests), SUM(input_tokens) + SUM(output_tokens),
                SUM(cost_micro_usd)
         FROM rollup_session_day WHERE period_ms >= ?1 AND period_ms < ?2
         GROUP BY 1, 2 ORDER BY 5 DESC, 4 DESC, 1 LIMIT ?3",
    )?;
    // Sessions are bucketed by day (a shorter range counts its whole days), and they are
    // short-lived: the top of a longer range is that of its last SESSIONS_MAX_MS.
    let from_day = range
        .from_ms
        .max(range.to_ms.min(now_ms()) - SESSIONS_MAX_MS)
        .div_euclid(DAY_MS)
        * DAY_MS;
    let sessions: Vec<Value> = stmt
        .query_map(rusqlite::params![from_day, range.to_ms, TOP as i64], |r| {
            Ok(json!({
                "session": r.get::<_, String>(0)?,
                "team": r.get::<_, String>(1)?,
                "requests": r.get::<_, i64>(2)?,
                "tokens": r.get::<_, i64>(3)?,
                "cost_usd": usd(r.get(4)?),
            }))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(json!({
        "range": range.name,
        "from": rfc3339(range.from_ms),
        "to": rfc3339(range.to_ms),
        "bucket_ms": range.bucket_ms,
        "buckets": buckets,
        "totals": {
            "requests": totals[0],
            "errors": totals[1],
            "input_tokens": totals[2],
            "output_tokens": totals[3],
            "cost_usd": usd(totals[4]),
        },
        "by": by,
        "top_sessions": sessions,
        "sessions_from": rfc3339(from_day),
    }))
}

/// One entry of a "by" list: `[requests, errors, input, output, cost]` and its cost series.
struct Group {
    sums: [i64; 5],
    series: Vec<i64>,
}

impl Group {
    fn new(buckets: usize) -> Group {
        Group {
            sums: [0; 5],
            series: vec![0; buckets],
        }
    }

    fn add(&mut self, sums: &[i64; 5]) {
        for (a, b) in self.sums.iter_mut().zip(sums) {
            *a += b;
        }
    }

    fn merge(&mut self, other: &Group) {
        self.add(&other.sums);
        for (a, b) in self.series.iter_mut().zip(&other.series) {
            *a += b;
        }
    }

    fn json(&self, name: &str) -> Value {
        json!({
            "name": name,
            "requests": self.sums[0],
            "errors": self.sums[1],
            "tokens": self.sums[2] + self.sums[3],
            "cost_usd": usd(self.sums[4]),
            "series": self.series.iter().map(|m| usd(*m)).collect::<Vec<_>>(),
        })
    }
}

/// Findings over the range (at most its last [`FINDINGS_MAX_MS`]).
pub fn findings_in(conn: &Connection, range: Range) -> rusqlite::Result<Value> {
    let from = range
        .from_ms
        .max(range.to_ms.min(now_ms()) - FINDINGS_MAX_MS);
    let list = findings(conn, from, range.to_ms, Thresholds::default())?;
    Ok(json!({
        "from": rfc3339(from),
        "to": rfc3339(range.to_ms),
        "findings": list,
    }))
}

/// The last five minutes: requests, errors and mean TTFT per ten seconds.
pub fn live(conn: &Connection, now: i64) -> rusqlite::Result<Value> {
    let from = (now - LIVE_MS).div_euclid(LIVE_BUCKET_MS) * LIVE_BUCKET_MS;
    let mut stmt = conn.prepare_cached(
        "SELECT (ts_ms / ?2) * ?2, COUNT(*), SUM(status >= 400), SUM(ttft_us), COUNT(ttft_us)
         FROM usage WHERE ts_ms >= ?1 GROUP BY 1",
    )?;
    let mut by_bucket: HashMap<i64, (i64, i64, i64, i64)> = HashMap::new();
    let rows = stmt.query_map([from, LIVE_BUCKET_MS], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            (
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?.unwrap_or(0),
                r.get::<_, Option<i64>>(3)?.unwrap_or(0),
                r.get::<_, i64>(4)?,
            ),
        ))
    })?;
    for row in rows {
        let (b, v) = row?;
        by_bucket.insert(b, v);
    }
    let buckets: Vec<Value> = (0..)
        .map(|i| from + i * LIVE_BUCKET_MS)
        .take_while(|b| *b <= now)
        .map(|b| {
            let (n, errors, ttft_sum, ttft_n) = by_bucket.get(&b).copied().unwrap_or_default();
            json!({
                "ts_ms": b,
                "requests": n,
                "errors": errors,
                "rps": n as f64 / (LIVE_BUCKET_MS as f64 / 1000.0),
                "ttft_ms": (ttft_n > 0).then(|| ttft_sum as f64 / ttft_n as f64 / 1000.0),
            })
        })
        .collect();
    Ok(json!({"bucket_ms": LIVE_BUCKET_MS, "buckets": buckets}))
}

/// The configured budgets: use in the current window, and the end-of-window spend forecast at
/// the window's rate so far.
pub fn budgets(bound: &crate::governance::Bound, now: i64) -> Value {
    let list: Vec<Value> = bound
        .budgets
        .iter()
        .map(|(state, info)| {
            let span = info.window.at(now);
            let used_tokens = state.tokens.used(span.index);
            let used_micro = state.micro_usd.used(span.index);
            let elapsed = (now - span.start_ms).max(1) as f64;
            let scale = (span.end_ms - span.start_ms) as f64 / elapsed;
            json!({
                "name": info.name,
                "scope": info.scope,
                "window_start": rfc3339(span.start_ms),
                "window_end": rfc3339(span.end_ms),
                "elapsed_share": elapsed / (span.end_ms - span.start_ms) as f64,
                "used_tokens": used_tokens,
                "limit_tokens": info.limit_tokens,
                "forecast_tokens": (used_tokens as f64 * scale).round(),
                "used_usd": usd(used_micro as i64),
                "limit_usd": info.limit_micro_usd.map(|l| usd(l as i64)),
                "forecast_usd": usd(used_micro as i64) * scale,
            })
        })
        .collect();
    json!({ "budgets": list })
}
