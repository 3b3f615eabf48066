//! What a self-hosted token costs (`gpu_pricing:`, `gpu_accounting:`): each replica's GPU time,
//! priced per GPU-hour, apportioned to the requests it served.
//!
//! - **Intervals.** The telemetry thread closes one interval per replica every `interval_s`,
//!   aligned to the wall clock, and writes its line to `gpu_intervals`.
//!   - Its cost is GPUs × USD/hour × length.
//!   - Its busy share is what NVML measured when the replica names its GPUs (`nvml_gpus`):
//!     their mean utilisation over the interval's samples (every 5 s). Otherwise, or when NVML
//!     gave no sample, the fraction of the interval's engine scrapes that reported requests
//!     running or waiting (`vllm:num_requests_*`; all of it when the engine was not scraped).
//!     The line says which (`busy_source`: `nvml` or `engine`).
//!   - Busy cost is cost × busy share; the rest is idle cost, its own line, in nobody's bill.
//! - **Apportioning.** A request's share of its interval's busy cost is its weight over the
//!   interval's total. The weight is `prefill_weight` × input tokens + `decode_weight` × output
//!   tokens, with the weights stored on the interval. An interval with no requests is all
//!   idle. Done at report time in SQL, so ledger rows are never rewritten.
//! - **Report.** `tollgate report gpu` gives, per team (or key, project...), self-hosted GPU cost
//!   next to cloud cost. Per replica: tokens, busy and idle cost, the effective USD per 1M
//!   tokens, and what the same tokens would have cost on the `compare_to` model.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rusqlite::Connection;
use serde::Serialize;

use super::query::{Format, GroupBy};
use crate::config::gpu::GpuAccounting;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS gpu_intervals (
    start_ms INTEGER NOT NULL,
    interval_ms INTEGER NOT NULL,
    provider TEXT NOT NULL,
    gpu TEXT NOT NULL,
    gpus INTEGER NOT NULL,
    usd_per_hour REAL NOT NULL,
    busy_share REAL NOT NULL,
    cost_micro_usd INTEGER NOT NULL,
    prefill_weight REAL NOT NULL,
    decode_weight REAL NOT NULL,
    compare_model TEXT,
    compare_input_usd_per_m REAL,
    compare_output_usd_per_m REAL,
    busy_source TEXT NOT NULL DEFAULT 'engine',
    PRIMARY KEY (provider, start_ms)
);
";

/// Adds `busy_source` to a table made before it existed.
pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('gpu_intervals') WHERE name = 'busy_source'")?
        .exists([])?;
    if !has {
        conn.execute_batch(
            "ALTER TABLE gpu_intervals ADD COLUMN busy_source TEXT NOT NULL DEFAULT 'engine'",
        )?;
    }
    Ok(())
}

/// One closed interval of one replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    pub start_ms: i64,
    pub interval_ms: i64,
    pub provider: String,
    pub gpu: String,
    pub gpus: u32,
    pub usd_per_hour: f64,
    pub busy_share: f64,
    /// `nvml` or `engine`: where the busy share came from.
    pub busy_source: &'static str,
    pub cost_micro_usd: u64,
    pub prefill_weight: f64,
    pub decode_weight: f64,
    pub compare_to: Option<(String, f64, f64)>,
}

pub fn insert(conn: &Connection, rows: &[Interval]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT OR REPLACE INTO gpu_intervals (start_ms, interval_ms, provider, gpu, gpus,
         usd_per_hour, busy_share, cost_micro_usd, prefill_weight, decode_weight, compare_model,
         compare_input_usd_per_m, compare_output_usd_per_m, busy_source)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    for r in rows {
        let c = r.compare_to.as_ref();
        stmt.execute(rusqlite::params![
            r.start_ms,
            r.interval_ms,
            r.provider,
            r.gpu,
            r.gpus,
            r.usd_per_hour,
            r.busy_share,
            r.cost_micro_usd as i64,
            r.prefill_weight,
            r.decode_weight,
            c.map(|c| c.0.as_str()),
            c.map(|c| c.1),
            c.map(|c| c.2),
            r.busy_source,
        ])?;
    }
    Ok(())
}

/// The telemetry thread's side: scrape samples per replica, closed into intervals.
pub struct Accountant {
    cfg: GpuAccounting,
    db: PathBuf,
    conn: Option<Connection>,
    start_ms: i64,
    /// Per replica: scrapes that reported work, scrapes in all.
    samples: Vec<(u64, u64)>,
    /// Per replica with `nvml_gpus`: the sum of its GPUs' mean utilisation (0..=1) per NVML
    /// sample, and the samples.
    nvml: Vec<(f64, u64)>,
}

impl Accountant {
    pub fn new(cfg: GpuAccounting, data_dir: &std::path::Path, now_ms: i64) -> Accountant {
        let interval_ms = cfg.interval.as_millis() as i64;
        Accountant {
            samples: vec![(0, 0); cfg.replicas.len()],
            nvml: vec![(0.0, 0); cfg.replicas.len()],
            start_ms: now_ms - now_ms.rem_euclid(interval_ms),
            cfg,
            db: super::db_path(data_dir),
            conn: None,
        }
    }

    fn interval_ms(&self) -> i64 {
        self.cfg.interval.as_millis() as i64
    }

    /// Counts one look at the replicas' scraped load.
    pub fn observe(&mut self, board: &crate::telemetry::replicas::ReplicaBoard) {
        for (r, s) in self.cfg.replicas.iter().zip(self.samples.iter_mut()) {
            if let Some(load) = board.get(r.provider).and_then(|st| st.load) {
                s.1 += 1;
                if load.running + load.waiting > 0.0 {
                    s.0 += 1;
                }
            }
        }
    }

    /// Counts one NVML sample of this node's GPUs, for the replicas that name theirs. A sample
    /// missing one of a replica's GPUs does not count for it.
    pub fn observe_gpus(&mut self, gpus: &[crate::telemetry::gpu::GpuSample]) {
        for (r, n) in self.cfg.replicas.iter().zip(self.nvml.iter_mut()) {
            if r.nvml_gpus.is_empty() {
                continue;
            }
            let util: Option<Vec<u32>> = r
                .nvml_gpus
                .iter()
                .map(|i| {
                    gpus.iter()
                        .find(|g| g.index == *i)
                        .map(|g| g.utilization_pct.min(100))
                })
                .collect();
            if let Some(util) = util {
                n.0 += f64::from(util.iter().sum::<u32>()) / (100.0 * util.len() as f64);
                n.1 += 1;
            }
        }
    }

    /// When the next interval closes, from `now_ms`.
    pub fn due_in(&self, now_ms: i64) -> Duration {
        let end = self.start_ms + self.interval_ms();
        Duration::from_millis(end.saturating_sub(now_ms).max(0) as u64)
    }

    /// Closes the intervals that ended by `now_ms` (or, with `last`, the running one, cut at
    /// `now_ms`), and writes them.
    pub fn close_due(&mut self, now_ms: i64, last: bool) {
        let mut rows = Vec::new();
        let interval_ms = self.interval_ms();
        while self.start_ms + interval_ms <= now_ms || (last && self.start_ms < now_ms) {
            let length_ms = interval_ms.min(now_ms - self.start_ms);
            for ((r, s), n) in self
                .cfg
                .replicas
                .iter()
                .zip(self.samples.iter_mut())
                .zip(self.nvml.iter_mut())
            {
                let (busy_share, busy_source) = if n.1 > 0 {
                    (n.0 / n.1 as f64, "nvml")
                } else if s.1 == 0 {
                    (1.0, "engine")
                } else {
                    (s.0 as f64 / s.1 as f64, "engine")
                };
                let cost = f64::from(r.count) * r.usd_per_hour * length_ms as f64 / 3_600_000.0;
                rows.push(Interval {
                    start_ms: self.start_ms,
                    interval_ms,
                    provider: r.provider_name.clone(),
                    gpu: r.gpu.clone(),
                    gpus: r.count,
                    usd_per_hour: r.usd_per_hour,
                    busy_share,
                    busy_source,
                    cost_micro_usd: (cost * 1e6).round() as u64,
                    prefill_weight: self.cfg.prefill_weight,
                    decode_weight: self.cfg.decode_weight,
                    compare_to: r.compare_to.clone(),
                });
                *s = (0, 0);
                *n = (0.0, 0);
            }
            self.start_ms += interval_ms;
            if last {
                break;
            }
        }
        if rows.is_empty() {
            return;
        }
        if self.conn.is_none() {
            self.conn = super::open(self.db.parent().unwrap_or(std::path::Path::new(".")))
                .map_err(|e| tracing::warn!(error = %e, "GPU cost: opening the ledger"))
                .ok();
        }
        if let Some(c) = &self.conn {
            if let Err(e) = insert(c, &rows) {
                tracing::warn!(error = %e, "GPU cost: writing intervals failed");
            }
        }
    }
}

/// One group's month: GPU-based cost of its self-hosted tokens next to its cloud cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupCost {
    pub key: String,
    pub self_hosted_tokens: u64,
    pub gpu_cost_usd: f64,
    pub cloud_tokens: u64,
    pub cloud_cost_usd: f64,
}

impl GroupCost {
    fn empty(key: String) -> GroupCost {
        GroupCost {
            key,
            self_hosted_tokens: 0,
            gpu_cost_usd: 0.0,
            cloud_tokens: 0,
            cloud_cost_usd: 0.0,
        }
    }
}

/// One replica's month.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaCost {
    pub provider: String,
    pub gpu: String,
    pub tokens: u64,
    pub busy_usd: f64,
    pub idle_usd: f64,
    /// Busy and idle cost per 1M tokens served.
    pub usd_per_m_tokens: Option<f64>,
    pub compare_to: Option<String>,
    /// The same tokens at the `compare_to` model's prices.
    pub compare_usd: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuReport {
    pub groups: Vec<GroupCost>,
    pub replicas: Vec<ReplicaCost>,
}

fn key_sql(by: GroupBy) -> &'static str {
    match by {
        GroupBy::Project => "COALESCE(u.project, '-')",
        GroupBy::Key => "COALESCE(u.key_id, '-')",
        GroupBy::User => "COALESCE(u.user_id, '-')",
        GroupBy::Workflow => "COALESCE(u.workflow, '-')",
        GroupBy::CostCenter => "COALESCE(u.cost_center, '-')",
        _ => "COALESCE(u.team, '-')",
    }
}

/// The report over requests and intervals in `[from_ms, to_ms)`.
pub fn report(
    conn: &Connection,
    from_ms: i64,
    to_ms: i64,
    by: GroupBy,
) -> rusqlite::Result<GpuReport> {
    // Per interval: its cost and busy share, and the weight of every group's requests in it.
    let sql = format!(
        "WITH w AS (
            SELECT g.provider, g.start_ms, {key} AS k,
                   SUM(u.input_tokens * g.prefill_weight + u.output_tokens * g.decode_weight) AS weight,
                   SUM(u.input_tokens + u.output_tokens) AS tokens,
                   SUM(u.input_tokens) AS input, SUM(u.output_tokens) AS output
            FROM gpu_intervals g JOIN usage u
              ON u.provider = g.provider AND u.ts_ms >= g.start_ms AND u.ts_ms < g.start_ms + g.interval_ms
            WHERE g.start_ms >= ?1 AND g.start_ms < ?2
            GROUP BY 1, 2, 3)
         SELECT g.provider, g.gpu, g.start_ms, g.cost_micro_usd, g.busy_share,
                w.k, COALESCE(w.weight, 0), COALESCE(w.tokens, 0), COALESCE(w.input, 0), COALESCE(w.output, 0),
                g.compare_model, g.compare_input_usd_per_m, g.compare_output_usd_per_m
         FROM gpu_intervals g LEFT JOIN w ON w.provider = g.provider AND w.start_ms = g.start_ms
         WHERE g.start_ms >= ?1 AND g.start_ms < ?2
         ORDER BY g.provider, g.start_ms",
        key = key_sql(by)
    );
    type Row = (
        String,
        String,
        i64,
        i64,
        f64,
        Option<String>,
        f64,
        i64,
        i64,
        i64,
        Option<String>,
        Option<f64>,
        Option<f64>,
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows: Vec<Row> = stmt
        .query_map([from_ms, to_ms], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
                r.get(10)?,
                r.get(11)?,
                r.get(12)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    // Interval totals first (an interval's rows are adjacent).
    let mut totals: BTreeMap<(String, i64), f64> = BTreeMap::new();
    for r in &rows {
        *totals.entry((r.0.clone(), r.2)).or_default() += r.6;
    }
    let mut groups: BTreeMap<String, GroupCost> = BTreeMap::new();
    let mut replicas: BTreeMap<String, ReplicaCost> = BTreeMap::new();
    let mut seen_interval: std::collections::HashSet<(String, i64)> = Default::default();
    for (
        provider,
        gpu,
        start,
        cost,
        busy_share,
        k,
        weight,
        tokens,
        input,
        output,
        cmp,
        cin,
        cout,
    ) in rows
    {
        let cost = cost as f64 / 1e6;
        let busy = cost * busy_share;
        let total = totals
            .get(&(provider.clone(), start))
            .copied()
            .unwrap_or(0.0);
        let rep = replicas
            .entry(provider.clone())
            .or_insert_with(|| ReplicaCost {
                provider: provider.clone(),
                gpu: gpu.clone(),
                tokens: 0,
                busy_usd: 0.0,
                idle_usd: 0.0,
                usd_per_m_tokens: None,
                compare_to: cmp.clone(),
                compare_usd: cmp.as_ref().map(|_| 0.0),
            });
        if seen_interval.insert((provider.clone(), start)) {
            if total > 0.0 {
                rep.busy_usd += busy;
                rep.idle_usd += cost - busy;
            } else {
                rep.idle_usd += cost;
            }
        }
        let Some(k) = k else { continue };
        rep.tokens += tokens.max(0) as u64;
        if let (Some(c), Some(pi), Some(po)) = (rep.compare_usd.as_mut(), cin, cout) {
            *c += (input as f64 * pi + output as f64 * po) / 1e6;
        }
        let g = groups
            .entry(k.clone())
            .or_insert_with(|| GroupCost::empty(k));
        g.self_hosted_tokens += tokens.max(0) as u64;
        if total > 0.0 {
            g.gpu_cost_usd += busy * weight / total;
        }
    }
    // Cloud: requests on providers that have no GPU intervals, at their ledger cost.
    let sql = format!(
        "SELECT {key}, SUM(u.input_tokens + u.output_tokens), SUM(COALESCE(u.cost_micro_usd, 0))
         FROM usage u WHERE u.ts_ms >= ?1 AND u.ts_ms < ?2
           AND COALESCE(u.provider, '') NOT IN (SELECT DISTINCT provider FROM gpu_intervals)
         GROUP BY 1",
        key = key_sql(by)
    );
    let mut stmt = conn.prepare(&sql)?;
    let cloud = stmt.query_map([from_ms, to_ms], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for c in cloud {
        let (k, tokens, micro) = c?;
        let g = groups
            .entry(k.clone())
            .or_insert_with(|| GroupCost::empty(k));
        g.cloud_tokens += tokens.max(0) as u64;
        g.cloud_cost_usd += micro as f64 / 1e6;
    }
    let replicas = replicas
        .into_values()
        .map(|mut r| {
            r.usd_per_m_tokens =
                (r.tokens > 0).then(|| (r.busy_usd + r.idle_usd) / r.tokens as f64 * 1e6);
            r
        })
        .collect();
    Ok(GpuReport {
        groups: groups.into_values().collect(),
        replicas,
    })
}

pub fn render(r: &GpuReport, format: Format, key_name: &str) -> String {
    if format == Format::Json {
        return serde_json::to_string_pretty(r).unwrap_or_else(|_| "{}".into());
    }
    let usd = |v: f64| format!("{v:.6}");
    let opt = |v: Option<f64>| v.map(usd).unwrap_or_default();
    let groups: Vec<Vec<String>> = r
        .groups
        .iter()
        .map(|g| {
            vec![
                g.key.clone(),
                g.self_hosted_tokens.to_string(),
                usd(g.gpu_cost_usd),
                g.cloud_tokens.to_string(),
                usd(g.cloud_cost_usd),
            ]
        })
        .collect();
    let replicas: Vec<Vec<String>> = r
        .replicas
        .iter()
        .map(|x| {
            vec![
                x.provider.clone(),
                x.gpu.clone(),
                x.tokens.to_string(),
                usd(x.busy_usd),
                usd(x.idle_usd),
                opt(x.usd_per_m_tokens),
                x.compare_to.clone().unwrap_or_default(),
                opt(x.compare_usd),
            ]
        })
        .collect();
    let gh = [
        key_name,
        "self_hosted_tokens",
        "gpu_cost_usd",
        "cloud_tokens",
        "cloud_cost_usd",
    ];
    let rh = [
        "replica",
        "gpu",
        "tokens",
        "busy_usd",
        "idle_usd",
        "usd_per_1m_tokens",
        "compare_to",
        "compare_usd",
    ];
    match format {
        Format::Csv => super::table::csv(&gh, &groups) + "\n" + &super::table::csv(&rh, &replicas),
        _ => super::table::table(&gh, &groups) + "\n" + &super::table::table(&rh, &replicas),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{insert_batch, UsageRecord};
    use crate::metering::Usage;

    fn rec(
        id: &str,
        ts: i64,
        team: &str,
        provider: &str,
        input: u64,
        output: u64,
        cost: u64,
    ) -> UsageRecord {
        let mut r = UsageRecord {
            id: id.into(),
            ts_ms: ts,
            status: 200,
            outcome: "ok".into(),
            api: "chat",
            provider: Some(provider.into()),
            usage: Usage {
                input_tokens: input,
                output_tokens: output,
                ..Usage::default()
            },
            cost_micro_usd: cost,
            ..UsageRecord::default()
        };
        r.identity.team = Some(team.into());
        r
    }

    fn interval(start: i64, busy: f64, cost: u64) -> Interval {
        Interval {
            start_ms: start,
            interval_ms: 1000,
            provider: "vllm".into(),
            gpu: "H100".into(),
            gpus: 1,
            usd_per_hour: 3.6,
            busy_share: busy,
            busy_source: "engine",
            cost_micro_usd: cost,
            prefill_weight: 1.0,
            decode_weight: 3.0,
            compare_to: Some(("gpt".into(), 1.0, 4.0)),
        }
    }

    #[test]
    fn busy_cost_follows_token_weight_and_idle_is_its_own_line() {
        let mut c = crate::ledger::open_in_memory().unwrap();
        // Interval 0: a (weight 100 + 3×100 = 400) and b (weight 100): 4/5 and 1/5 of the busy
        // 0.8 × $1. Interval 1000: nobody, all idle. Cloud: b spends $0.5.
        insert_batch(
            &mut c,
            &[
                rec("1", 10, "a", "vllm", 100, 100, 0),
                rec("2", 20, "b", "vllm", 100, 0, 0),
                rec("3", 30, "b", "openai", 1000, 10, 500_000),
            ],
        )
        .unwrap();
        insert(
            &c,
            &[interval(0, 0.8, 1_000_000), interval(1000, 0.3, 1_000_000)],
        )
        .unwrap();
        let r = report(&c, 0, 10_000, GroupBy::Team).unwrap();
        let g = |k: &str| r.groups.iter().find(|g| g.key == k).unwrap();
        assert!((g("a").gpu_cost_usd - 0.64).abs() < 1e-9, "{r:?}");
        assert!((g("b").gpu_cost_usd - 0.16).abs() < 1e-9, "{r:?}");
        assert_eq!((g("b").cloud_tokens, g("b").cloud_cost_usd), (1010, 0.5));
        let v = &r.replicas[0];
        assert!(
            (v.busy_usd - 0.8).abs() < 1e-9 && (v.idle_usd - 1.2).abs() < 1e-9,
            "{v:?}"
        );
        assert_eq!(v.tokens, 300);
        // All of the GPU cost over the tokens served: $2 / 300 tokens.
        assert!((v.usd_per_m_tokens.unwrap() - 2.0 / 300.0 * 1e6).abs() < 1e-6);
        // At the comparison model: 200 input × $1/M + 100 output × $4/M.
        assert!((v.compare_usd.unwrap() - 0.0006).abs() < 1e-12);
        // Everything is accounted for: teams' GPU cost plus idle is the GPUs' cost.
        let sum: f64 = r.groups.iter().map(|g| g.gpu_cost_usd).sum::<f64>() + v.idle_usd;
        assert!((sum - 2.0).abs() < 1e-9);
        assert!(render(&r, Format::Table, "team").contains("usd_per_1m_tokens"));
    }

    #[test]
    fn a_replica_naming_its_gpus_is_busy_as_nvml_measured_them() {
        use crate::config::gpu::{GpuAccounting, GpuReplica};
        use crate::telemetry::gpu::GpuSample;
        let dir = std::env::temp_dir().join(format!("tollgate-gpu-nvml-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let replica = |name: &str, gpus: Vec<u32>| GpuReplica {
            provider: 0,
            provider_name: name.into(),
            gpu: "H100".into(),
            count: 2,
            usd_per_hour: 2.0,
            compare_to: None,
            nvml_gpus: gpus,
        };
        let cfg = GpuAccounting {
            interval: Duration::from_secs(60),
            prefill_weight: 1.0,
            decode_weight: 3.0,
            replicas: vec![replica("nvml", vec![0, 1]), replica("scraped", vec![])],
        };
        let mut a = Accountant::new(cfg, &dir, 0);
        let gpu = |index, util| GpuSample {
            index,
            utilization_pct: util,
            memory_used_bytes: 0,
            memory_total_bytes: 1,
        };
        // Two samples: GPUs at 50 % and 100 % (0.75), then both idle (0); one that lacks GPU 1
        // does not count; a reading above 100 % counts as 100 %.
        a.observe_gpus(&[gpu(0, 50), gpu(1, 100), gpu(2, 100)]);
        a.observe_gpus(&[gpu(0, 0), gpu(1, 0)]);
        a.observe_gpus(&[gpu(0, 100)]);
        a.observe_gpus(&[gpu(0, 250), gpu(1, 100)]);
        a.close_due(60_000, false);
        let c = crate::ledger::open(&dir).unwrap();
        let rows: Vec<(String, f64, String, i64)> = c
            .prepare("SELECT provider, busy_share, busy_source, cost_micro_usd FROM gpu_intervals ORDER BY provider")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        // (0.75 + 0 + 1) / 3; the other replica was never scraped: all busy, from the engine side.
        assert_eq!(rows[0].0, "nvml");
        assert!((rows[0].1 - 1.75 / 3.0).abs() < 1e-9, "{rows:?}");
        assert_eq!(rows[0].2, "nvml");
        assert_eq!(rows[1], ("scraped".into(), 1.0, "engine".into(), 66_667));
        // 2 GPUs × $2/h × 1 minute.
        assert_eq!(rows[0].3, 66_667);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
