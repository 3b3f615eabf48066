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
//! Checked with the FinOps Foundation's validator (`focus-validator`, FOCUS 1.0) in
//! `tests/e2e/cli_export.rs`.

use std::io::{self, Write};

use rusqlite::Connection;

use crate::governance::window::{rfc3339, Window};

/// The FOCUS 1.0 columns, then Tollgate's.
pub const COLUMNS: &[&str] = &[
    "AvailabilityZone",
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "CommitmentDiscountCategory",
    "CommitmentDiscountId",
    "CommitmentDiscountName",
    "CommitmentDiscountStatus",
    "CommitmentDiscountType",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceIssuer",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingQuantity",
    "PricingUnit",
    "Provider",
    "Publisher",
    "RegionId",
    "RegionName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "SkuId",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "Tags",
    "x_Requests",
    "x_InputTokens",
    "x_CachedInputTokens",
    "x_OutputTokens",
    "x_ReasoningTokens",
    "x_EstimatedRequests",
    "x_SavedCost",
];

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

/// Micro-USD as a decimal number of USD (always with a fraction: FOCUS decimals).
fn usd(micro: i64) -> String {
    let sign = if micro < 0 { "-" } else { "" };
    let m = micro.unsigned_abs();
    format!("{sign}{}.{:06}", m / 1_000_000, m % 1_000_000)
}

/// A CSV field, quoted when it must be.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The row's cells, in [`COLUMNS`] order. `account` names the billing account (the node).
pub fn cells(c: &Charge, account: &str) -> Vec<String> {
    let tokens = c.input_tokens + c.output_tokens;
    let cost = usd(c.cost_micro_usd);
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
    // Per 1M tokens; the blended price of the mix (cost / quantity), empty without tokens.
    let pricing_quantity = tokens as f64 / 1e6;
    let unit_price = if tokens > 0 {
        format!("{:.6}", c.cost_micro_usd as f64 / tokens as f64)
    } else {
        String::new()
    };
    let description = format!(
        "{} {} request(s) to {} on {}: {} input and {} output tokens",
        c.requests, c.api, c.model, c.provider, c.input_tokens, c.output_tokens
    );
    let team = c.team.clone().unwrap_or_default();
    vec![
        String::new(),
        cost.clone(),
        account.to_string(),
        account.to_string(),
        "USD".into(),
        rfc3339(month.end_ms),
        rfc3339(month.start_ms),
        "Usage".into(),
        String::new(),
        description,
        "Usage-Based".into(),
        rfc3339(c.day_ms + DAY_MS),
        rfc3339(c.day_ms),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        format!("{tokens}.0"),
        "Tokens".into(),
        cost.clone(),
        unit_price.clone(),
        cost.clone(),
        c.provider.clone(),
        cost,
        unit_price,
        "Standard".into(),
        format!("{pricing_quantity:.6}"),
        "1M Tokens".into(),
        c.provider.clone(),
        c.provider.clone(),
        String::new(),
        String::new(),
        format!("{}/{}", c.provider, c.model),
        c.model.clone(),
        "LLM".into(),
        "AI and Machine Learning".into(),
        c.api.clone(),
        format!("{}/{}", c.provider, c.model),
        String::new(),
        team.clone(),
        team,
        serde_json::Value::Object(tags).to_string(),
        c.requests.to_string(),
        c.input_tokens.to_string(),
        c.cached_tokens.to_string(),
        c.output_tokens.to_string(),
        c.reasoning_tokens.to_string(),
        c.estimated.to_string(),
        usd(c.saved_micro_usd),
    ]
}

/// Writes `charges` as FOCUS CSV (header first).
pub fn write_csv(charges: &[Charge], account: &str, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "{}", COLUMNS.join(","))?;
    for c in charges {
        let row: Vec<String> = cells(c, account).iter().map(|s| field(s)).collect();
        writeln!(out, "{}", row.join(","))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{insert_batch, UsageRecord, SCHEMA};
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
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch(SCHEMA).unwrap();
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
        let col = |name: &str| &cells[COLUMNS.iter().position(|c| *c == name).unwrap()];
        assert_eq!(cells.len(), COLUMNS.len());
        assert_eq!(col("BilledCost"), "0.006000");
        assert_eq!(col("ConsumedQuantity"), "5000.0");
        assert_eq!(col("PricingQuantity"), "0.005000");
        // Blended: $0.006 for 5000 tokens is $1.20 per million.
        assert_eq!(col("ListUnitPrice"), "1.200000");
        assert_eq!(col("ChargePeriodStart"), &rfc3339(day));
        assert_eq!(col("ChargePeriodEnd"), &rfc3339(day + DAY_MS));
        assert_eq!(col("SubAccountId"), "search");
        let tags: serde_json::Value = serde_json::from_str(col("Tags")).unwrap();
        assert_eq!(tags["team"], "search");
        assert_eq!(tags["key"], "key_1");

        let mut out = Vec::new();
        write_csv(&all, "node, \"a\"", &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 4);
        assert!(text.contains("\"node, \"\"a\"\"\""), "{text}");
        assert_eq!(usd(-1_234_567), "-1.234567");
    }
}
