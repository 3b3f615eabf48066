//! Ledger summaries for `tollgate usage` and `tollgate chargeback`: totals (tokens and cost)
//! grouped by model, provider, day, key, team, project, user, workflow or cost center,
//! optionally within a time range, rendered as a table, CSV or JSON.

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    Model,
    Provider,
    Day,
    Team,
    Project,
    Key,
    User,
    Workflow,
    CostCenter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SummaryRow {
    pub key: String,
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub cached_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub estimated: u64,
    pub cost_usd: f64,
    /// How many agents' totals were summed (`tollgate usage --cluster`); absent for one ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u64>,
}

impl SummaryRow {
    /// A group with nothing summed yet.
    pub fn empty(key: String) -> SummaryRow {
        SummaryRow {
            key,
            requests: 0,
            errors: 0,
            input_tokens: 0,
            cached_tokens: 0,
            output_tokens: 0,
            reasoning_tokens: 0,
            estimated: 0,
            cost_usd: 0.0,
            nodes: None,
        }
    }
}

/// Sums the ledger grouped by `by`.
pub fn summarize(conn: &Connection, by: GroupBy) -> rusqlite::Result<Vec<SummaryRow>> {
    summarize_range(conn, by, i64::MIN, i64::MAX)
}

/// Sums the requests that started in `[from_ms, to_ms)`, grouped by `by`.
/// The summed columns every summary selects after its key, in `summary_row`'s order.
const SUMS: &str = "COUNT(*), SUM(CASE WHEN status >= 400 OR outcome != 'ok' THEN 1 ELSE 0 END),
                SUM(input_tokens), SUM(cached_tokens), SUM(output_tokens), SUM(reasoning_tokens), SUM(estimated),
                COALESCE(SUM(cost_micro_usd), 0)";

fn summary_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SummaryRow> {
    Ok(SummaryRow {
        key: r.get(0)?,
        requests: r.get::<_, i64>(1)? as u64,
        errors: r.get::<_, i64>(2)? as u64,
        input_tokens: r.get::<_, i64>(3)? as u64,
        cached_tokens: r.get::<_, i64>(4)? as u64,
        output_tokens: r.get::<_, i64>(5)? as u64,
        reasoning_tokens: r.get::<_, i64>(6)? as u64,
        estimated: r.get::<_, i64>(7)? as u64,
        cost_usd: r.get::<_, i64>(8)? as f64 / 1e6,
        nodes: None,
    })
}

pub fn summarize_range(
    conn: &Connection,
    by: GroupBy,
    from_ms: i64,
    to_ms: i64,
) -> rusqlite::Result<Vec<SummaryRow>> {
    let key = match by {
        GroupBy::Model => "COALESCE(requested_model, '-')",
        GroupBy::Provider => "COALESCE(provider, '-')",
        GroupBy::Day => "strftime('%Y-%m-%d', ts_ms / 1000, 'unixepoch')",
        GroupBy::Team => "COALESCE(team, '-')",
        GroupBy::Project => "COALESCE(project, '-')",
        GroupBy::Key => "COALESCE(key_id, '-')",
        GroupBy::User => "COALESCE(user_id, '-')",
        GroupBy::Workflow => "COALESCE(workflow, '-')",
        GroupBy::CostCenter => "COALESCE(cost_center, '-')",
    };
    let sql = format!(
        "SELECT {key} AS k, {SUMS}
         FROM usage WHERE ts_ms >= ?1 AND ts_ms < ?2 GROUP BY k ORDER BY k"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([from_ms, to_ms], summary_row)?;
    rows.collect()
}

/// Like [`summarize_range`] (by team or key) over the rows in `(after_rowid, upto_rowid]` only:
/// the ledger only grows, so an incremental total reads each row once.
pub fn summarize_new(
    conn: &Connection,
    by: GroupBy,
    from_ms: i64,
    after_rowid: i64,
    upto_rowid: i64,
) -> rusqlite::Result<Vec<SummaryRow>> {
    let key = match by {
        GroupBy::Key => "COALESCE(key_id, '-')",
        _ => "COALESCE(team, '-')",
    };
    let sql = format!(
        "SELECT {key} AS k, {SUMS}
         FROM usage WHERE rowid > ?1 AND rowid <= ?2 AND ts_ms >= ?3 GROUP BY k ORDER BY k"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([after_rowid, upto_rowid, from_ms], summary_row)?;
    rows.collect()
}

const HEADERS: [&str; 9] = [
    "key",
    "requests",
    "errors",
    "input",
    "cached",
    "output",
    "reasoning",
    "estimated",
    "cost_usd",
];

/// The row's cells; with `nodes`, the node count comes last.
fn cells(r: &SummaryRow, nodes: bool) -> Vec<String> {
    let mut c = vec![
        r.key.clone(),
        r.requests.to_string(),
        r.errors.to_string(),
        r.input_tokens.to_string(),
        r.cached_tokens.to_string(),
        r.output_tokens.to_string(),
        r.reasoning_tokens.to_string(),
        r.estimated.to_string(),
        format!("{:.6}", r.cost_usd),
    ];
    if nodes {
        c.push(r.nodes.unwrap_or(0).to_string());
    }
    c
}

/// Renders rows in the chosen format. `key_name` titles the first column; rows summed across
/// agents (`nodes` set) get a `nodes` column last.
pub fn render(rows: &[SummaryRow], format: Format, key_name: &str) -> String {
    let nodes = rows.iter().any(|r| r.nodes.is_some());
    let mut headers: Vec<String> = HEADERS.iter().map(|h| h.to_string()).collect();
    headers[0] = key_name.to_string();
    if nodes {
        headers.push("nodes".into());
    }
    let all: Vec<Vec<String>> = rows.iter().map(|r| cells(r, nodes)).collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    super::table::render(format, rows, &headers, &all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{insert_batch, UsageRecord};
    use crate::metering::Usage;

    #[test]
    fn groups_and_renders() {
        let mut c = crate::ledger::open_in_memory().unwrap();
        let mk = |id: &str, model: &str, out: u64, status: u16| UsageRecord {
            id: id.into(),
            ts_ms: 1_700_000_000_000,
            status,
            outcome: "ok".into(),
            api: "chat",
            requested_model: Some(model.into()),
            usage: Usage {
                input_tokens: 10,
                output_tokens: out,
                ..Usage::default()
            },
            ..UsageRecord::default()
        };
        insert_batch(
            &mut c,
            &[
                mk("a", "m1", 1, 200),
                mk("b", "m1", 2, 500),
                mk("c", "m2", 4, 200),
            ],
        )
        .unwrap();
        let rows = summarize(&c, GroupBy::Model).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[0].key.as_str(),
                rows[0].requests,
                rows[0].errors,
                rows[0].output_tokens
            ),
            ("m1", 2, 1, 3)
        );
        let days = summarize(&c, GroupBy::Day).unwrap();
        assert_eq!(days[0].key, "2023-11-14");
        let csv = render(&rows, Format::Csv, "model");
        assert!(csv.starts_with("model,requests,errors,input,cached,output,reasoning,estimated,cost_usd\nm1,2,1,20,0,3,0,0,0.000000\n"), "{csv}");
        let table = render(&rows, Format::Table, "model");
        assert!(table.lines().nth(2).unwrap().starts_with("m1"));
        let json: serde_json::Value =
            serde_json::from_str(&render(&rows, Format::Json, "model")).unwrap();
        assert_eq!(json[1]["output_tokens"], 4);
    }
}
