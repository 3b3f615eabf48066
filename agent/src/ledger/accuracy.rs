//! How right the usage estimates are, measured continuously: one request in
//! `ledger.accuracy_sample_every` whose provider reported usage is estimated as well, and the
//! pair is kept here.
//!
//! - **Thread.** The estimate runs on a thread of its own ([`Sampler`]), fed through a bounded
//!   queue by the ledger writer. The writer never waits on it: a tokenizer's first load takes
//!   a second or more, and the ledger and the budgets must not stall behind an optional
//!   measurement. A full queue drops the sample.
//!
//! - **Table.** `estimate_samples`: one row per sample. Never billed.
//! - **Metrics.** Per served model (at most [`MAX_MODELS`] labels, the rest as `other`):
//!   samples, and the sums of absolute and signed relative errors for input and output
//!   tokens. The mean error is `sum / samples` in PromQL.
//! - **Report.** `tollgate report accuracy` gives, per model, the mean absolute error, the bias,
//!   and the share of samples within 2 %.

use std::collections::BTreeMap;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Mutex;

use rusqlite::Connection;
use serde::Serialize;

use super::query::Format;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS estimate_samples (
    ts_ms INTEGER NOT NULL,
    model TEXT NOT NULL,
    provider_input INTEGER NOT NULL,
    estimated_input INTEGER NOT NULL,
    provider_output INTEGER NOT NULL,
    estimated_output INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS estimate_samples_ts ON estimate_samples(ts_ms);
";

/// Distinct model labels the metrics keep (served model names can come from clients).
pub const MAX_MODELS: usize = 64;

/// One request measured both ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub ts_ms: i64,
    pub model: String,
    pub provider_input: u64,
    pub estimated_input: u64,
    pub provider_output: u64,
    pub estimated_output: u64,
}

/// `(estimated - reported) / reported`; `None` when nothing was reported.
fn relative(estimated: u64, reported: u64) -> Option<f64> {
    (reported > 0).then(|| (estimated as f64 - reported as f64) / reported as f64)
}

pub fn insert(conn: &mut Connection, samples: &[Sample]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO estimate_samples (ts_ms, model, provider_input, estimated_input,
             provider_output, estimated_output) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for s in samples {
            stmt.execute(rusqlite::params![
                s.ts_ms,
                s.model,
                s.provider_input as i64,
                s.estimated_input as i64,
                s.provider_output as i64,
                s.estimated_output as i64,
            ])?;
        }
    }
    tx.commit()
}

/// How often the sampling thread commits the samples it has: one transaction a second, not
/// one per sample, so the samples cost the ledger's WAL a commit a second at most.
const WRITE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Commits `pending` over the thread's own connection, opened on first use with the ledger's
/// settings (WAL, `synchronous = NORMAL`: the default, FULL, would fsync every commit), and
/// empties it. Samples are measurements, not spend: a failed write is logged and dropped.
fn write(conn: &mut Option<Connection>, db: &std::path::Path, pending: &mut Vec<Sample>) {
    if conn.is_none() {
        *conn = Connection::open(db)
            .and_then(|c| {
                c.busy_timeout(std::time::Duration::from_secs(5))?;
                c.pragma_update(None, "synchronous", "NORMAL")?;
                Ok(c)
            })
            .map_err(|e| tracing::warn!(error = %e, "accuracy samples: opening the ledger"))
            .ok();
    }
    if let Some(c) = conn.as_mut() {
        if let Err(e) = insert(c, pending) {
            tracing::warn!(error = %e, samples = pending.len(), "writing estimate samples failed");
        }
    }
    pending.clear();
}

/// The sampling thread and its queue.
pub struct Sampler {
    tx: std::sync::mpsc::SyncSender<(Sample, Box<crate::metering::estimate::EstimateInput>)>,
}

impl Sampler {
    /// Starts the thread; it writes to the ledger database at `db` over its own connection.
    pub fn start(
        db: std::path::PathBuf,
        metrics: std::sync::Arc<crate::telemetry::metrics::Metrics>,
    ) -> std::io::Result<Sampler> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(
            Sample,
            Box<crate::metering::estimate::EstimateInput>,
        )>(64);
        std::thread::Builder::new()
            .name("tollgate-accuracy".into())
            .spawn(move || {
                let mut conn: Option<Connection> = None;
                let agent =
                    crate::metering::engine_tokenize::client(std::time::Duration::from_secs(2));
                let mut pending: Vec<Sample> = Vec::new();
                let mut last_write = std::time::Instant::now();
                loop {
                    let next = if pending.is_empty() {
                        rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
                    } else {
                        rx.recv_timeout(WRITE_EVERY.saturating_sub(last_write.elapsed()))
                    };
                    let stopping = match next {
                        Ok((mut sample, input)) => {
                            // As a record without usage would be counted (the engine's /tokenize
                            // where the model asks for it), so the error measured is the
                            // estimates' own.
                            let (est, _) =
                                crate::metering::estimate::estimate_with_engine(&input, &agent);
                            sample.estimated_input = est.input_tokens;
                            sample.estimated_output = est.output_tokens;
                            metrics.accuracy.observe(&sample);
                            pending.push(sample);
                            false
                        }
                        Err(RecvTimeoutError::Timeout) => false,
                        Err(RecvTimeoutError::Disconnected) => true,
                    };
                    if !pending.is_empty() && (stopping || last_write.elapsed() >= WRITE_EVERY) {
                        write(&mut conn, &db, &mut pending);
                        last_write = std::time::Instant::now();
                    }
                    if stopping {
                        return;
                    }
                }
            })?;
        Ok(Sampler { tx })
    }

    /// Queues a record's sample (its provider numbers) with what to estimate; dropped when the
    /// thread is behind.
    pub fn offer(&self, sample: Sample, input: Box<crate::metering::estimate::EstimateInput>) {
        let _ = self.tx.try_send((sample, input));
    }
}

/// Running sums per model, for `/metrics`.
#[derive(Default)]
pub struct AccuracyMetrics {
    by_model: Mutex<BTreeMap<String, Sums>>,
}

#[derive(Default, Clone, Copy)]
struct Sums {
    samples: u64,
    /// input, output: sums of |relative error| and of relative error.
    abs: [f64; 2],
    signed: [f64; 2],
}

impl AccuracyMetrics {
    pub fn observe(&self, s: &Sample) {
        let mut map = self.by_model.lock().unwrap_or_else(|e| e.into_inner());
        let key = if map.contains_key(&s.model) || map.len() < MAX_MODELS {
            s.model.clone()
        } else {
            "other".to_string()
        };
        let e = map.entry(key).or_default();
        e.samples += 1;
        for (i, (est, rep)) in [
            (s.estimated_input, s.provider_input),
            (s.estimated_output, s.provider_output),
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(r) = relative(est, rep) {
                e.abs[i] += r.abs();
                e.signed[i] += r;
            }
        }
    }

    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let map = self.by_model.lock().unwrap_or_else(|e| e.into_inner());
        let esc = crate::telemetry::metrics::escape;
        out.push_str("# HELP tollgate_estimate_samples_total Requests with provider usage that were also estimated, to measure the estimator.\n# TYPE tollgate_estimate_samples_total counter\n");
        for (m, s) in map.iter() {
            let _ = writeln!(
                out,
                "tollgate_estimate_samples_total{{model=\"{}\"}} {}",
                esc(m),
                s.samples
            );
        }
        for (name, help, pick) in [
            (
                "tollgate_estimate_abs_error_ratio_sum",
                "Sum over samples of |estimate - reported| / reported (divide by the samples for the mean).",
                0,
            ),
            (
                "tollgate_estimate_error_ratio_sum",
                "Sum over samples of (estimate - reported) / reported: the estimator's bias.",
                1,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (m, s) in map.iter() {
                let v = if pick == 0 { s.abs } else { s.signed };
                for (dir, x) in ["input", "output"].iter().zip(v) {
                    let _ = writeln!(out, "{name}{{model=\"{}\",direction=\"{dir}\"}} {x}", esc(m));
                }
            }
        }
    }
}

/// One model's estimates over a period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccuracyRow {
    pub model: String,
    pub samples: u64,
    /// Mean |relative error| of input and output token estimates, in percent.
    pub input_error_pct: f64,
    pub output_error_pct: f64,
    /// Mean signed relative error (positive: the estimate runs high), in percent.
    pub input_bias_pct: f64,
    pub output_bias_pct: f64,
    /// Samples whose input and output estimates were both within 2 %.
    pub within_2pct: f64,
}

/// Per model, the samples taken in `[from_ms, to_ms)`.
pub fn report(conn: &Connection, from_ms: i64, to_ms: i64) -> rusqlite::Result<Vec<AccuracyRow>> {
    let mut stmt = conn.prepare(
        "SELECT model, provider_input, estimated_input, provider_output, estimated_output
         FROM estimate_samples WHERE ts_ms >= ?1 AND ts_ms < ?2 ORDER BY model",
    )?;
    let rows = stmt.query_map([from_ms, to_ms], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?.max(0) as u64,
            r.get::<_, i64>(2)?.max(0) as u64,
            r.get::<_, i64>(3)?.max(0) as u64,
            r.get::<_, i64>(4)?.max(0) as u64,
        ))
    })?;
    #[derive(Default)]
    struct Acc {
        n: u64,
        abs: [f64; 2],
        signed: [f64; 2],
        counted: [u64; 2],
        within: u64,
    }
    let mut by: BTreeMap<String, Acc> = BTreeMap::new();
    for row in rows {
        let (model, pi, ei, po, eo) = row?;
        let a = by.entry(model).or_default();
        a.n += 1;
        let mut ok = true;
        for (i, (est, rep)) in [(ei, pi), (eo, po)].into_iter().enumerate() {
            if let Some(r) = relative(est, rep) {
                a.abs[i] += r.abs();
                a.signed[i] += r;
                a.counted[i] += 1;
                ok &= r.abs() <= 0.02;
            }
        }
        a.within += u64::from(ok);
    }
    let mean = |sum: f64, n: u64| if n == 0 { 0.0 } else { sum / n as f64 * 100.0 };
    Ok(by
        .into_iter()
        .map(|(model, a)| AccuracyRow {
            model,
            samples: a.n,
            input_error_pct: mean(a.abs[0], a.counted[0]),
            output_error_pct: mean(a.abs[1], a.counted[1]),
            input_bias_pct: mean(a.signed[0], a.counted[0]),
            output_bias_pct: mean(a.signed[1], a.counted[1]),
            within_2pct: if a.n == 0 {
                0.0
            } else {
                a.within as f64 / a.n as f64 * 100.0
            },
        })
        .collect())
}

pub fn render(rows: &[AccuracyRow], format: Format) -> String {
    let headers = [
        "model",
        "samples",
        "input_error_pct",
        "output_error_pct",
        "input_bias_pct",
        "output_bias_pct",
        "within_2pct",
    ];
    let cells = |r: &AccuracyRow| {
        vec![
            r.model.clone(),
            r.samples.to_string(),
            format!("{:.2}", r.input_error_pct),
            format!("{:.2}", r.output_error_pct),
            format!("{:+.2}", r.input_bias_pct),
            format!("{:+.2}", r.output_bias_pct),
            format!("{:.1}", r.within_2pct),
        ]
    };
    let all: Vec<Vec<String>> = rows.iter().map(cells).collect();
    super::table::render(format, rows, &headers, &all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_become_errors_bias_and_a_within_2pct_share() {
        let mut c = crate::ledger::open_in_memory().unwrap();
        let s = |model: &str, pi, ei, po, eo| Sample {
            ts_ms: 1000,
            model: model.into(),
            provider_input: pi,
            estimated_input: ei,
            provider_output: po,
            estimated_output: eo,
        };
        insert(
            &mut c,
            &[
                s("llama", 100, 110, 50, 50),
                s("llama", 100, 90, 50, 51),
                s("gpt", 1000, 1001, 10, 10),
                s("gpt", 0, 5, 0, 0),
            ],
        )
        .unwrap();
        let rows = report(&c, 0, 2000).unwrap();
        let llama = rows.iter().find(|r| r.model == "llama").unwrap();
        assert_eq!(llama.samples, 2);
        assert!((llama.input_error_pct - 10.0).abs() < 1e-9);
        assert!(llama.input_bias_pct.abs() < 1e-9, "+10 % and -10 % cancel");
        assert!((llama.output_error_pct - 1.0).abs() < 1e-9);
        assert_eq!(llama.within_2pct, 0.0);
        let gpt = rows.iter().find(|r| r.model == "gpt").unwrap();
        // Nothing reported means nothing to compare: that sample is within by default.
        assert_eq!(gpt.within_2pct, 100.0);
        assert!(render(&rows, Format::Csv).starts_with("model,samples,"));
        assert!(report(&c, 2000, 3000).unwrap().is_empty());

        let m = AccuracyMetrics::default();
        m.observe(&s("llama", 100, 110, 50, 50));
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("tollgate_estimate_samples_total{model=\"llama\"} 1"),
            "{out}"
        );
        assert!(
            out.contains(
                "tollgate_estimate_abs_error_ratio_sum{model=\"llama\",direction=\"input\"} 0.1"
            ),
            "{out}"
        );
    }

    /// The sampling thread's writes are batched and do not fsync each commit: its connection
    /// runs with `synchronous = NORMAL` like the ledger's own, and one call commits every
    /// pending sample.
    #[test]
    fn sample_writes_commit_in_one_batch_without_a_sync_per_commit() {
        let dir = std::env::temp_dir().join(format!("tg-accuracy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        drop(crate::ledger::open(&dir).unwrap());
        let db = crate::ledger::db_path(&dir);
        let mut conn = None;
        let mut pending: Vec<Sample> = (0..3)
            .map(|i| Sample {
                ts_ms: 1000 + i,
                model: "m".into(),
                provider_input: 10,
                estimated_input: 11,
                provider_output: 5,
                estimated_output: 5,
            })
            .collect();
        write(&mut conn, &db, &mut pending);
        assert!(pending.is_empty());
        let c = conn.expect("the connection stays open for the next write");
        let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(sync, 1, "NORMAL; FULL (2) fsyncs the WAL on every commit");
        let n: i64 = c
            .query_row("SELECT count(*) FROM estimate_samples", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
        drop(c);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
