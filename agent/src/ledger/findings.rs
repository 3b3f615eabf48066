//! `tollgate report findings`: the spend patterns users name, read from the ledger, each with
//! the figures and the requests behind it.
//!
//! - **Premium-model overuse**: a team that spends more than `premium_share` of its cost on
//!   the period's most expensive model (the highest cost per token among the models served).
//! - **Context stuffing**: a team whose average prompt is above `context_tokens`.
//! - **Token spikes**: a session whose busiest minute used more than `spike_factor` times its
//!   median minute (sessions with at least five active minutes).
//! - **Retry storms**: a minute in which more than `retry_share` of a model's requests needed
//!   another target (the ledger's `attempts` > 1), with at least ten requests.
//! - **Tokenizer drift**: a model version (`upstream_version`, as the provider reports it) whose
//!   prompt tokens per prompt byte moved more than `drift_share` from the version before it,
//!   each with at least 20 requests the provider counted.
//! - **Cache-miss waste**: a model whose engines recomputed more than `cache_waste_share` of the
//!   prompt prefixes the serving replica had already been sent (the prefix balancer's
//!   `prefix_bytes`, as tokens at the request's own tokens per byte) instead of reading them
//!   from their prefix cache (the provider's `cached_tokens`), over at least ten such
//!   requests. The usual causes: prefix caching off, a KV cache too small for the working set,
//!   or a balancer that does not route by prefix.
//!
//! Pure SQL over the ledger plus a little arithmetic; no state, nothing on the request path.

use rusqlite::Connection;
use serde::Serialize;

/// Thresholds (the CLI's flags).
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub premium_share: f64,
    pub context_tokens: f64,
    pub spike_factor: f64,
    pub retry_share: f64,
    pub drift_share: f64,
    pub cache_waste_share: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            premium_share: 0.5,
            context_tokens: 20_000.0,
            spike_factor: 5.0,
            retry_share: 0.1,
            drift_share: 0.05,
            cache_waste_share: 0.5,
        }
    }
}

/// One finding: what, who, the figure against the threshold, and sample requests.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    pub kind: &'static str,
    /// The team, session, or `model @ minute`.
    pub subject: String,
    pub detail: String,
    pub value: f64,
    pub threshold: f64,
    pub requests: u64,
    /// Up to five request ids behind it.
    pub examples: Vec<String>,
}

fn examples(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map(params, |r| r.get::<_, String>(0))?;
    rows.collect()
}

/// Every finding over requests started in `[from_ms, to_ms)`.
pub fn findings(
    conn: &Connection,
    from_ms: i64,
    to_ms: i64,
    t: Thresholds,
) -> rusqlite::Result<Vec<Finding>> {
    let mut out = Vec::new();
    premium(conn, from_ms, to_ms, t, &mut out)?;
    stuffing(conn, from_ms, to_ms, t, &mut out)?;
    spikes(conn, from_ms, to_ms, t, &mut out)?;
    retries(conn, from_ms, to_ms, t, &mut out)?;
    drift(conn, from_ms, to_ms, t, &mut out)?;
    cache_waste(conn, from_ms, to_ms, t, &mut out)?;
    Ok(out)
}

fn premium(
    conn: &Connection,
    from: i64,
    to: i64,
    t: Thresholds,
    out: &mut Vec<Finding>,
) -> rusqlite::Result<()> {
    // The most expensive model: highest cost per token among the models with a cost.
    let top: Option<(String, f64)> = conn
        .query_row(
            "SELECT requested_model, SUM(cost_micro_usd) * 1.0 / MAX(SUM(input_tokens + output_tokens), 1) AS per
             FROM usage WHERE ts_ms >= ?1 AND ts_ms < ?2 AND requested_model IS NOT NULL
             GROUP BY requested_model HAVING SUM(cost_micro_usd) > 0 ORDER BY per DESC LIMIT 1",
            [from, to],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok();
    let Some((model, _)) = top else {
        return Ok(());
    };
    let mut stmt = conn.prepare(
        "SELECT COALESCE(team, '-'), SUM(CASE WHEN requested_model = ?3 THEN cost_micro_usd ELSE 0 END),
                SUM(cost_micro_usd), SUM(CASE WHEN requested_model = ?3 THEN 1 ELSE 0 END)
         FROM usage WHERE ts_ms >= ?1 AND ts_ms < ?2 GROUP BY 1 HAVING SUM(cost_micro_usd) > 0",
    )?;
    let rows: Vec<(String, i64, i64, i64)> = stmt
        .query_map(rusqlite::params![from, to, model], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (team, on_top, all, n) in rows {
        let share = on_top as f64 / all as f64;
        if share > t.premium_share {
            out.push(Finding {
                kind: "premium_model_overuse",
                detail: format!(
                    "{:.0} % of ${:.4} on `{model}`, the most expensive model per token",
                    share * 100.0,
                    all as f64 / 1e6
                ),
                examples: examples(
                    conn,
                    "SELECT id FROM usage WHERE ts_ms >= ?1 AND ts_ms < ?2 AND COALESCE(team, '-') = ?3 AND requested_model = ?4 ORDER BY cost_micro_usd DESC LIMIT 5",
                    &[&from, &to, &team, &model],
                )?,
                subject: team,
                value: share,
                threshold: t.premium_share,
                requests: n as u64,
            });
        }
    }
    Ok(())
}

fn stuffing(
    conn: &Connection,
    from: i64,
    to: i64,
    t: Thresholds,
    out: &mut Vec<Finding>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(
        "SELECT COALESCE(team, '-'), AVG(input_tokens), COUNT(*) FROM usage
         WHERE ts_ms >= ?1 AND ts_ms < ?2 AND status < 400 GROUP BY 1 HAVING AVG(input_tokens) > ?3",
    )?;
    let rows: Vec<(String, f64, i64)> = stmt
        .query_map(rusqlite::params![from, to, t.context_tokens], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (team, avg, n) in rows {
        out.push(Finding {
            kind: "context_stuffing",
            detail: format!("average prompt {avg:.0} tokens over {n} requests"),
            examples: examples(
                conn,
                "SELECT id FROM usage WHERE ts_ms >= ?1 AND ts_ms < ?2 AND COALESCE(team, '-') = ?3 ORDER BY input_tokens DESC LIMIT 5",
                &[&from, &to, &team],
            )?,
            subject: team,
            value: avg,
            threshold: t.context_tokens,
            requests: n as u64,
        });
    }
    Ok(())
}

fn spikes(
    conn: &Connection,
    from: i64,
    to: i64,
    t: Thresholds,
    out: &mut Vec<Finding>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(
        "SELECT session_id, ts_ms / 60000, SUM(input_tokens + output_tokens), COUNT(*) FROM usage
         WHERE ts_ms >= ?1 AND ts_ms < ?2 AND session_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2",
    )?;
    let rows: Vec<(String, i64, i64, i64)> = stmt
        .query_map([from, to], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut i = 0;
    while i < rows.len() {
        let session = &rows[i].0;
        let end = rows[i..]
            .iter()
            .position(|r| &r.0 != session)
            .map_or(rows.len(), |p| i + p);
        let minutes = &rows[i..end];
        if minutes.len() >= 5 {
            let mut tokens: Vec<i64> = minutes.iter().map(|m| m.2).collect();
            tokens.sort_unstable();
            let median = tokens[tokens.len() / 2].max(1) as f64;
            let (peak_minute, peak, n) = minutes
                .iter()
                .max_by_key(|m| m.2)
                .map_or((0, 0, 0), |m| (m.1, m.2, m.3));
            let factor = peak as f64 / median;
            if factor > t.spike_factor {
                out.push(Finding {
                    kind: "token_spike",
                    subject: session.clone(),
                    detail: format!(
                        "{peak} tokens in the minute from {}, {factor:.1}× its median minute ({median:.0})",
                        crate::governance::window::rfc3339(peak_minute * 60_000)
                    ),
                    value: factor,
                    threshold: t.spike_factor,
                    requests: n as u64,
                    examples: examples(
                        conn,
                        "SELECT id FROM usage WHERE session_id = ?1 AND ts_ms / 60000 = ?2 ORDER BY input_tokens + output_tokens DESC LIMIT 5",
                        &[session, &peak_minute],
                    )?,
                });
            }
        }
        i = end;
    }
    Ok(())
}

fn retries(
    conn: &Connection,
    from: i64,
    to: i64,
    t: Thresholds,
    out: &mut Vec<Finding>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(
        "SELECT COALESCE(requested_model, '-'), ts_ms / 60000, COUNT(*),
                SUM(CASE WHEN COALESCE(attempts, 1) > 1 THEN 1 ELSE 0 END)
         FROM usage WHERE ts_ms >= ?1 AND ts_ms < ?2 GROUP BY 1, 2
         HAVING COUNT(*) >= 10 AND SUM(CASE WHEN COALESCE(attempts, 1) > 1 THEN 1 ELSE 0 END) * 1.0 / COUNT(*) > ?3",
    )?;
    let rows: Vec<(String, i64, i64, i64)> = stmt
        .query_map(rusqlite::params![from, to, t.retry_share], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (model, minute, n, retried) in rows {
        let share = retried as f64 / n as f64;
        out.push(Finding {
            kind: "retry_storm",
            subject: format!(
                "{model} @ {}",
                crate::governance::window::rfc3339(minute * 60_000)
            ),
            detail: format!("{retried} of {n} requests needed another target"),
            examples: examples(
                conn,
                "SELECT id FROM usage WHERE COALESCE(requested_model, '-') = ?1 AND ts_ms / 60000 = ?2 AND COALESCE(attempts, 1) > 1 LIMIT 5",
                &[&model, &minute],
            )?,
            value: share,
            threshold: t.retry_share,
            requests: n as u64,
        });
    }
    Ok(())
}

/// Prefix tokens a request's replica had seen: its prefix bytes at the request's own tokens
/// per prompt byte. (SQL over `usage`; provider-counted, successful requests only.)
const KNOWN_PREFIX: &str = "MIN(input_tokens, prefix_bytes * input_tokens / prompt_bytes)";
const RECOMPUTED: &str =
    "MAX(0, MIN(input_tokens, prefix_bytes * input_tokens / prompt_bytes) - cached_tokens)";
const PREFIXED: &str = "ts_ms >= ?1 AND ts_ms < ?2 AND estimated = 0 AND status < 400
    AND COALESCE(prefix_bytes, 0) > 0 AND COALESCE(prompt_bytes, 0) > 0";

fn cache_waste(
    conn: &Connection,
    from: i64,
    to: i64,
    t: Thresholds,
    out: &mut Vec<Finding>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(&format!(
        "SELECT COALESCE(served_model, requested_model, '-'), COUNT(*),
                SUM({KNOWN_PREFIX}), SUM({RECOMPUTED})
         FROM usage WHERE {PREFIXED}
         GROUP BY 1 HAVING COUNT(*) >= 10 AND SUM({RECOMPUTED}) > ?3 * SUM({KNOWN_PREFIX})
         ORDER BY 1"
    ))?;
    let rows: Vec<(String, i64, i64, i64)> = stmt
        .query_map(rusqlite::params![from, to, t.cache_waste_share], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (model, n, known, recomputed) in rows {
        let share = recomputed as f64 / known.max(1) as f64;
        out.push(Finding {
            kind: "cache_miss_waste",
            subject: model.clone(),
            detail: format!(
                "{recomputed} of {known} prompt-prefix tokens the serving replica had already been sent were computed again ({:.0} %)",
                share * 100.0
            ),
            examples: examples(
                conn,
                &format!(
                    "SELECT id FROM usage WHERE {PREFIXED}
                     AND COALESCE(served_model, requested_model, '-') = ?3
                     ORDER BY {RECOMPUTED} DESC, id LIMIT 5"
                ),
                &[&from, &to, &model],
            )?,
            value: share,
            threshold: t.cache_waste_share,
            requests: n as u64,
        });
    }
    Ok(())
}

fn drift(
    conn: &Connection,
    from: i64,
    to: i64,
    t: Thresholds,
    out: &mut Vec<Finding>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(
        "SELECT COALESCE(served_model, requested_model, '-'), upstream_version, MIN(ts_ms), COUNT(*),
                SUM(input_tokens), SUM(prompt_bytes)
         FROM usage WHERE ts_ms >= ?1 AND ts_ms < ?2 AND upstream_version IS NOT NULL
              AND estimated = 0 AND status < 400 AND COALESCE(prompt_bytes, 0) > 0
         GROUP BY 1, 2 HAVING COUNT(*) >= ?3 ORDER BY 1, 3",
    )?;
    let rows: Vec<(String, String, i64, i64, i64, i64)> = stmt
        .query_map(
            rusqlite::params![from, to, crate::ledger::drift::MIN_SAMPLES as i64],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )?
        .collect::<rusqlite::Result<_>>()?;
    for pair in rows.windows(2) {
        let ((m1, v1, _, _, t1, b1), (m2, v2, _, n2, t2, b2)) = (&pair[0], &pair[1]);
        if m1 != m2 || *b1 <= 0 || *b2 <= 0 || *t1 <= 0 {
            continue;
        }
        let (before, after) = (*t1 as f64 / *b1 as f64, *t2 as f64 / *b2 as f64);
        let change = (after - before) / before;
        if change.abs() <= t.drift_share {
            continue;
        }
        out.push(Finding {
            kind: "tokenizer_drift",
            subject: format!("{m2}: {v1} -> {v2}"),
            detail: format!(
                "prompt tokens per prompt byte {before:.4} -> {after:.4} ({:+.1} %)",
                change * 100.0
            ),
            examples: examples(
                conn,
                "SELECT id FROM usage WHERE COALESCE(served_model, requested_model, '-') = ?1 AND upstream_version = ?2 LIMIT 5",
                &[m2, v2],
            )?,
            value: change,
            threshold: t.drift_share,
            requests: *n2 as u64,
        });
    }
    Ok(())
}

/// The findings as a table, CSV or JSON.
pub fn render(list: &[Finding], format: super::query::Format) -> String {
    use super::query::Format;
    match format {
        Format::Json => serde_json::to_string_pretty(list).unwrap_or_else(|_| "[]".into()),
        Format::Csv => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|f| {
                    vec![
                        f.kind.to_string(),
                        f.subject.clone(),
                        format!("{:.4}", f.value),
                        f.threshold.to_string(),
                        f.requests.to_string(),
                        f.detail.clone(),
                        f.examples.join(" "),
                    ]
                })
                .collect();
            super::table::csv(
                &[
                    "kind",
                    "subject",
                    "value",
                    "threshold",
                    "requests",
                    "detail",
                    "examples",
                ],
                &rows,
            )
        }
        Format::Table => {
            if list.is_empty() {
                return "no findings\n".into();
            }
            let mut out = String::new();
            for f in list {
                out.push_str(&format!(
                    "{:<22} {}: {} (threshold {}); e.g. {}\n",
                    f.kind,
                    f.subject,
                    f.detail,
                    f.threshold,
                    f.examples.join(", ")
                ));
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{insert_batch, UsageRecord};
    use crate::metering::Usage;

    const T0: i64 = 1_796_000_000_000 / 60_000 * 60_000;

    #[allow(clippy::too_many_arguments)]
    fn rec(
        id: &str,
        ts_ms: i64,
        team: &str,
        session: Option<&str>,
        model: &str,
        input: u64,
        cost: u64,
        attempts: u32,
    ) -> UsageRecord {
        let mut r = UsageRecord {
            id: id.into(),
            ts_ms,
            status: 200,
            outcome: "ok".into(),
            api: "chat",
            requested_model: Some(model.into()),
            usage: Usage {
                input_tokens: input,
                output_tokens: 10,
                ..Usage::default()
            },
            cost_micro_usd: cost,
            ..UsageRecord::default()
        };
        r.identity.team = Some(team.into());
        r.identity.session = session.map(Into::into);
        r.attempts = attempts;
        r
    }

    #[test]
    fn each_pattern_is_found_with_its_requests_and_quiet_traffic_is_not() {
        let mut c = crate::ledger::open_in_memory().unwrap();
        let mut rows = vec![
            // Team "rich" spends 90 % of its cost on the dear model; "frugal" 10 %.
            rec("r1", T0, "rich", None, "dear", 100, 9_000, 1),
            rec("r2", T0, "rich", None, "cheap", 100, 1_000, 1),
            rec("f1", T0, "frugal", None, "dear", 10, 100, 1),
            rec("f2", T0, "frugal", None, "cheap", 1000, 900, 1),
            // Team "stuffer" sends 50k-token prompts.
            rec("s1", T0, "stuffer", None, "cheap", 50_000, 10, 1),
        ];
        // Session "loop": steady minutes, then one 20× minute.
        for m in 0..6 {
            rows.push(rec(
                &format!("l{m}"),
                T0 + m * 60_000,
                "agents",
                Some("loop"),
                "cheap",
                90,
                1,
                1,
            ));
        }
        for k in 0..19 {
            rows.push(rec(
                &format!("spike{k}"),
                T0 + 6 * 60_000,
                "agents",
                Some("loop"),
                "cheap",
                90,
                1,
                1,
            ));
        }
        // A minute where 5 of 12 requests of `flaky` were retried.
        for k in 0..12 {
            rows.push(rec(
                &format!("x{k}"),
                T0 + 9 * 60_000,
                "ops",
                None,
                "flaky",
                10,
                1,
                if k < 5 { 2 } else { 1 },
            ));
        }
        // Model `tok`: version v1 counts 0.25 tokens per prompt byte, v2 (a new fingerprint)
        // the same, v3 0.30: one drift, v2 -> v3.
        for (v, tokens, at) in [("tok@v1", 25, 10), ("tok@v2", 25, 20), ("tok@v3", 30, 30)] {
            for k in 0..20 {
                let mut r = rec(
                    &format!("{v}-{k}"),
                    T0 + at * 60_000,
                    "ops",
                    None,
                    "tok",
                    tokens,
                    1,
                    1,
                );
                r.upstream_version = Some(v.into());
                r.prompt_bytes = 100;
                rows.push(r);
            }
        }
        // Model `cold`: 12 requests whose 4000-byte prompt prefix (1000 tokens at 0.25 per byte)
        // their replica had seen, 200 tokens of it read from cache: 80 % recomputed. Model
        // `warm`: the same, all 1000 cached.
        for (model, cached) in [("cold", 200), ("warm", 1000)] {
            for k in 0..12 {
                let mut r = rec(
                    &format!("{model}{k}"),
                    T0 + 40 * 60_000,
                    "ops",
                    None,
                    model,
                    1200,
                    1,
                    1,
                );
                r.served_model = Some(model.into());
                r.prompt_bytes = 4800;
                r.prefix_bytes = 4000;
                r.usage.cached_tokens = cached;
                rows.push(r);
            }
        }
        insert_batch(&mut c, &rows).unwrap();
        let list = findings(&c, T0, T0 + 3_600_000, Thresholds::default()).unwrap();
        let drifts: Vec<&Finding> = list
            .iter()
            .filter(|f| f.kind == "tokenizer_drift")
            .collect();
        assert_eq!(drifts.len(), 1, "{list:#?}");
        assert_eq!(drifts[0].subject, "tok: tok@v2 -> tok@v3");
        assert!((drifts[0].value - 0.2).abs() < 1e-9);
        assert_eq!(drifts[0].examples.len(), 5);
        let of = |kind: &str| -> Vec<&Finding> { list.iter().filter(|f| f.kind == kind).collect() };
        let premium = of("premium_model_overuse");
        assert_eq!(premium.len(), 1, "{list:#?}");
        assert_eq!(premium[0].subject, "rich");
        assert!((premium[0].value - 0.9).abs() < 1e-9);
        assert_eq!(premium[0].examples, vec!["r1".to_string()]);
        let stuffing = of("context_stuffing");
        assert_eq!(stuffing.len(), 1, "{list:#?}");
        assert_eq!(stuffing[0].subject, "stuffer");
        let spikes = of("token_spike");
        assert_eq!(spikes.len(), 1, "{list:#?}");
        assert_eq!(spikes[0].subject, "loop");
        assert!(spikes[0].value > 5.0 && spikes[0].examples.len() == 5);
        let storms = of("retry_storm");
        assert_eq!(storms.len(), 1, "{list:#?}");
        assert!(storms[0].subject.starts_with("flaky @ "));
        assert_eq!(storms[0].examples.len(), 5);
        let waste = of("cache_miss_waste");
        assert_eq!(waste.len(), 1, "{list:#?}");
        assert_eq!(waste[0].subject, "cold");
        assert!((waste[0].value - 0.8).abs() < 1e-9, "{:?}", waste[0]);
        assert_eq!(waste[0].requests, 12);
        assert!(
            waste[0].detail.starts_with("9600 of 12000"),
            "{}",
            waste[0].detail
        );
        // Raised thresholds: nothing.
        let calm = Thresholds {
            premium_share: 0.95,
            context_tokens: 100_000.0,
            spike_factor: 100.0,
            retry_share: 0.5,
            drift_share: 0.5,
            cache_waste_share: 0.9,
        };
        assert!(findings(&c, T0, T0 + 3_600_000, calm).unwrap().is_empty());
        // Outside the period: nothing.
        assert!(
            findings(&c, T0 + 3_600_000, T0 + 7_200_000, Thresholds::default())
                .unwrap()
                .is_empty()
        );
        let csv = render(&list, crate::ledger::query::Format::Csv);
        assert!(csv.lines().count() == list.len() + 1, "{csv}");
    }
}
