//! The ledger as FOCUS 1.0 cost and usage rows (`tollgate export focus`): the FinOps
//! Foundation's open billing format, so finance tools read Tollgate's spend like a cloud bill.
//!
//! One row is one usage charge: a UTC day × provider × served model × API × virtual key ×
//! team, project, workflow and cost center.
//! - The consumed quantity is its tokens (input + output, `Tokens`), priced per `1M Tokens`.
//!   `ListUnitPrice` is the blended price of that mix: input and output tokens have different
//!   prices, and the ledger keeps the cost, not the split.
//! - Billed, effective, list and contracted cost are all the ledger's cost. Tollgate applies
//!   list prices, with no discounts or commitments.
//! - Identity goes in `Tags` (a JSON object), and the team is the sub-account.
//! - Tollgate's own columns carry the `x_` prefix the specification reserves: requests, the
//!   token kinds, estimated requests, and what cache hits saved.
//! - Rows with no provider (refused before routing, cache hits) carry the provider `tollgate`:
//!   the column may not be empty, and their cost is zero.
//!
//! - Cells are typed ([`Cell`]): CSV writes them as the specification's text forms, Parquet
//!   (`focus/parquet.rs`) as typed columns: decimals as DOUBLE, date-times as UTC millisecond
//!   timestamps, counts as INT64, text and `Tags` as UTF-8, an empty cell as null.
//!
//! Checked with the FinOps Foundation's validator (`focus-validator`, FOCUS 1.0), in both
//! formats, in `tests/e2e/cli_export.rs`.

pub mod parquet;

use std::io::{self, Write};

use rusqlite::Connection;

use crate::governance::window::{rfc3339, Window};

/// The FOCUS 1.0 columns, then Tollgate's, with their types.
pub const COLUMNS: &[(&str, Kind)] = &[
    ("AvailabilityZone", Kind::Text),
    ("BilledCost", Kind::Decimal),
    ("BillingAccountId", Kind::Text),
    ("BillingAccountName", Kind::Text),
    ("BillingCurrency", Kind::Text),
    ("BillingPeriodEnd", Kind::DateTime),
    ("BillingPeriodStart", Kind::DateTime),
    ("ChargeCategory", Kind::Text),
    ("ChargeClass", Kind::Text),
    ("ChargeDescription", Kind::Text),
    ("ChargeFrequency", Kind::Text),
    ("ChargePeriodEnd", Kind::DateTime),
    ("ChargePeriodStart", Kind::DateTime),
    ("CommitmentDiscountCategory", Kind::Text),
    ("CommitmentDiscountId", Kind::Text),
    ("CommitmentDiscountName", Kind::Text),
    ("CommitmentDiscountStatus", Kind::Text),
    ("CommitmentDiscountType", Kind::Text),
    ("ConsumedQuantity", Kind::Decimal),
    ("ConsumedUnit", Kind::Text),
    ("ContractedCost", Kind::Decimal),
    ("ContractedUnitPrice", Kind::Decimal),
    ("EffectiveCost", Kind::Decimal),
    ("InvoiceIssuer", Kind::Text),
    ("ListCost", Kind::Decimal),
    ("ListUnitPrice", Kind::Decimal),
    ("PricingCategory", Kind::Text),
    ("PricingQuantity", Kind::Decimal),
    ("PricingUnit", Kind::Text),
    ("Provider", Kind::Text),
    ("Publisher", Kind::Text),
    ("RegionId", Kind::Text),
    ("RegionName", Kind::Text),
    ("ResourceId", Kind::Text),
    ("ResourceName", Kind::Text),
    ("ResourceType", Kind::Text),
    ("ServiceCategory", Kind::Text),
    ("ServiceName", Kind::Text),
    ("SkuId", Kind::Text),
    ("SkuPriceId", Kind::Text),
    ("SubAccountId", Kind::Text),
    ("SubAccountName", Kind::Text),
    ("Tags", Kind::Text),
    ("x_Requests", Kind::Count),
    ("x_InputTokens", Kind::Count),
    ("x_CachedInputTokens", Kind::Count),
    ("x_OutputTokens", Kind::Count),
    ("x_ReasoningTokens", Kind::Count),
    ("x_EstimatedRequests", Kind::Count),
    ("x_SavedCost", Kind::Decimal),
];

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Decimal,
    DateTime,
    Count,
}

/// One typed cell of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// No value (an empty CSV field, a Parquet null).
    Null,
    Text(String),
    /// `units / 10^scale`, exact (costs are micro-USD, scale 6).
    Decimal {
        units: i64,
        scale: u32,
    },
    /// Milliseconds since the Unix epoch, UTC.
    DateTime(i64),
    Count(u64),
}

impl Cell {
    fn usd(micro: i64) -> Cell {
        Cell::Decimal {
            units: micro,
            scale: 6,
        }
    }

    /// The specification's text form (CSV).
    pub fn text(&self) -> String {
        match self {
            Cell::Null => String::new(),
            Cell::Text(s) => s.clone(),
            Cell::Decimal { units, scale: 0 } => format!("{units}.0"),
            Cell::Decimal { units, scale } => {
                let sign = if *units < 0 { "-" } else { "" };
                let m = units.unsigned_abs();
                let p = 10u64.pow(*scale);
                format!("{sign}{}.{:0w$}", m / p, m % p, w = *scale as usize)
            }
            Cell::DateTime(ms) => rfc3339(*ms),
            Cell::Count(n) => n.to_string(),
        }
    }

    /// The value as a floating-point number (Parquet DOUBLE), for decimals.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Cell::Decimal { units, scale } => Some(*units as f64 / 10f64.powi(*scale as i32)),
            _ => None,
        }
    }
}

/// One charge: the ledger's rows of one day and one group, summed.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub day_ms: i64,
    pub provider: String,
    pub model: String,
    pub api: String,
    pub key_id: Option<String>,
    pub team: Option<String>,
    pub project: Option<String>,
    pub workflow: Option<String>,
    pub cost_center: Option<String>,
    pub requests: u64,
    pub input_tokens: u64,
    pub cached_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub estimated: u64,
    pub cost_micro_usd: i64,
    pub saved_micro_usd: i64,
}

const DAY_MS: i64 = 86_400_000;

/// The charges of requests started in `[from_ms, to_ms)` (the whole ledger by default), by day.
pub fn charges(
    conn: &Connection,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
) -> rusqlite::Result<Vec<Charge>> {
    let mut stmt = conn.prepare(
        "SELECT (ts_ms / ?3) * ?3 AS day, COALESCE(provider, 'tollgate'),
                COALESCE(served_model, requested_model, 'none'), api, key_id,
                team, project, workflow, cost_center,
                COUNT(*), SUM(input_tokens), SUM(cached_tokens), SUM(output_tokens),
                SUM(reasoning_tokens), SUM(estimated),
                SUM(COALESCE(cost_micro_usd, 0)), SUM(COALESCE(saved_micro_usd, 0))
         FROM usage
         WHERE ts_ms >= ?1 AND ts_ms < ?2
         GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
         ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9",
    )?;
    let rows = stmt.query_map(
        rusqlite::params![
            from_ms.unwrap_or(i64::MIN),
            to_ms.unwrap_or(i64::MAX),
            DAY_MS
        ],
        |r| {
            Ok(Charge {
                day_ms: r.get(0)?,
                provider: r.get(1)?,
                model: r.get(2)?,
                api: r.get(3)?,
                key_id: r.get(4)?,
                team: r.get(5)?,
                project: r.get(6)?,
                workflow: r.get(7)?,
                cost_center: r.get(8)?,
                requests: r.get::<_, i64>(9)?.max(0) as u64,
                input_tokens: r.get::<_, i64>(10)?.max(0) as u64,
                cached_tokens: r.get::<_, i64>(11)?.max(0) as u64,
                output_tokens: r.get::<_, i64>(12)?.max(0) as u64,
                reasoning_tokens: r.get::<_, i64>(13)?.max(0) as u64,
                estimated: r.get::<_, i64>(14)?.max(0) as u64,
                cost_micro_usd: r.get(15)?,
                saved_micro_usd: r.get(16)?,
            })
        },
    )?;
    rows.collect()
}

/// The row's cells, in [`COLUMNS`] order. `account` names the billing account (the node).
pub fn cells(c: &Charge, account: &str) -> Vec<Cell> {
    let tokens = c.input_tokens + c.output_tokens;
    let cost = Cell::usd(c.cost_micro_usd);
    let month = Window::Month.at(c.day_ms);
    let mut tags = serde_json::Map::new();
    for (k, v) in [
        ("team", &c.team),
        ("project", &c.project),
        ("workflow", &c.workflow),
        ("cost_center", &c.cost_center),
        ("key", &c.key_id),
    ] {
        if let Some(v) = v {
            tags.insert(k.into(), v.clone().into());
        }
    }
    tags.insert("api".into(), c.api.clone().into());
    // Per 1M tokens: micro-USD per token is USD per million. The blended price of the mix
    // (cost / quantity), rounded to the micro-USD; none without tokens.
    let unit_price = if tokens > 0 {
        let t = i128::from(tokens);
        let units = (i128::from(c.cost_micro_usd) * 1_000_000 + t / 2).div_euclid(t);
        Cell::Decimal {
            units: i64::try_from(units).unwrap_or(i64::MAX),
            scale: 6,
        }
    } else {
        Cell::Null
    };
    let tokens_i = i64::try_from(tokens).unwrap_or(i64::MAX);
    let description = format!(
        "{} {} request(s) to {} on {}: {} input and {} output tokens",
        c.requests, c.api, c.model, c.provider, c.input_tokens, c.output_tokens
    );
    let text = |s: &str| Cell::Text(s.to_string());
    let team = c.team.as_deref().map_or(Cell::Null, text);
    let resource = text(&format!("{}/{}", c.provider, c.model));
    vec![
        Cell::Null,
        cost.clone(),
        text(account),
        text(account),
        text("USD"),
        Cell::DateTime(month.end_ms),
        Cell::DateTime(month.start_ms),
        text("Usage"),
        Cell::Null,
        Cell::Text(description),
        text("Usage-Based"),
        Cell::DateTime(c.day_ms + DAY_MS),
        Cell::DateTime(c.day_ms),
        Cell::Null,
        Cell::Null,
        Cell::Null,
        Cell::Null,
        Cell::Null,
        Cell::Decimal {
            units: tokens_i,
            scale: 0,
        },
        text("Tokens"),
        cost.clone(),
        unit_price.clone(),
        cost.clone(),
        text(&c.provider),
        cost,
        unit_price,
        text("Standard"),
        // Millions of tokens, exactly.
        Cell::Decimal {
            units: tokens_i,
            scale: 6,
        },
        text("1M Tokens"),
        text(&c.provider),
        text(&c.provider),
        Cell::Null,
        Cell::Null,
        resource.clone(),
        text(&c.model),
        text("LLM"),
        text("AI and Machine Learning"),
        text(&c.api),
        resource,
        Cell::Null,
        team.clone(),
        team,
        Cell::Text(serde_json::Value::Object(tags).to_string()),
        Cell::Count(c.requests),
        Cell::Count(c.input_tokens),
        Cell::Count(c.cached_tokens),
        Cell::Count(c.output_tokens),
        Cell::Count(c.reasoning_tokens),
        Cell::Count(c.estimated),
        Cell::usd(c.saved_micro_usd),
    ]
}

/// Writes `charges` as FOCUS CSV (header first).
pub fn write_csv(charges: &[Charge], account: &str, out: &mut impl Write) -> io::Result<()> {
    let header: Vec<&str> = COLUMNS.iter().map(|(name, _)| *name).collect();
    writeln!(out, "{}", header.join(","))?;
    for c in charges {
        let row: Vec<String> = cells(c, account)
            .iter()
            .map(|s| crate::ledger::table::field(&s.text()))
            .collect();
        writeln!(out, "{}", row.join(","))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{insert_batch, UsageRecord};
    use crate::metering::Usage;

    fn record(id: &str, ts_ms: i64, team: &str, input: u64, output: u64, cost: u64) -> UsageRecord {
        let mut r = UsageRecord {
            id: id.into(),
            ts_ms,
            status: 200,
            outcome: "ok".into(),
            api: "chat_completions",
            provider: Some("openai".into()),
            served_model: Some("gpt-4o-mini".into()),
            usage: Usage {
                input_tokens: input,
                output_tokens: output,
                ..Usage::default()
            },
            cost_micro_usd: cost,
            key_id: Some("key_1".into()),
            ..UsageRecord::default()
        };
        r.identity.team = Some(team.into());
        r
    }

    #[test]
    fn a_day_and_group_is_one_charge_with_exact_sums() {
        let mut c = crate::ledger::open_in_memory().unwrap();
        let day = 20_000 * DAY_MS;
        insert_batch(
            &mut c,
            &[
                record("a", day + 1, "search", 1000, 200, 1_500),
                record("b", day + 5_000, "search", 3000, 800, 4_500),
                record("c", day + 7_000, "ads", 10, 1, 7),
                record("d", day + DAY_MS + 1, "search", 1, 1, 1),
            ],
        )
        .unwrap();
        let all = charges(&c, None, None).unwrap();
        assert_eq!(all.len(), 3);
        let search = all
            .iter()
            .find(|x| x.team.as_deref() == Some("search"))
            .unwrap();
        assert_eq!(
            (
                search.requests,
                search.input_tokens,
                search.output_tokens,
                search.cost_micro_usd
            ),
            (2, 4000, 1000, 6_000)
        );
        assert_eq!(search.day_ms, day);
        // The range is half-open, by start time.
        assert_eq!(charges(&c, Some(day + DAY_MS), None).unwrap().len(), 1);
        assert_eq!(charges(&c, None, Some(day + 5_000)).unwrap().len(), 1);

        let cells = cells(search, "node-a");
        let col = |name: &str| cells[COLUMNS.iter().position(|c| c.0 == name).unwrap()].text();
        assert_eq!(cells.len(), COLUMNS.len());
        // Every cell has its column's type (or is empty).
        for (cell, (name, kind)) in cells.iter().zip(COLUMNS) {
            let fits = match cell {
                Cell::Null => true,
                Cell::Text(_) => *kind == Kind::Text,
                Cell::Decimal { .. } => *kind == Kind::Decimal,
                Cell::DateTime(_) => *kind == Kind::DateTime,
                Cell::Count(_) => *kind == Kind::Count,
            };
            assert!(fits, "{name}: {cell:?} in a {kind:?} column");
        }
        assert_eq!(col("BilledCost"), "0.006000");
        assert_eq!(col("ConsumedQuantity"), "5000.0");
        assert_eq!(col("PricingQuantity"), "0.005000");
        // Blended: $0.006 for 5000 tokens is $1.20 per million.
        assert_eq!(col("ListUnitPrice"), "1.200000");
        assert_eq!(col("ChargePeriodStart"), rfc3339(day));
        assert_eq!(col("ChargePeriodEnd"), rfc3339(day + DAY_MS));
        assert_eq!(col("SubAccountId"), "search");
        let tags: serde_json::Value = serde_json::from_str(&col("Tags")).unwrap();
        assert_eq!(tags["team"], "search");
        assert_eq!(tags["key"], "key_1");

        let mut out = Vec::new();
        write_csv(&all, "node, \"a\"", &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 4);
        assert!(text.contains("\"node, \"\"a\"\"\""), "{text}");
        assert_eq!(Cell::usd(-1_234_567).text(), "-1.234567");
        assert_eq!(Cell::usd(-1_234_567).as_f64(), Some(-1.234567));
    }
}
