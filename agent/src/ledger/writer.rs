//! The ledger writer, running on the control thread: receives records, hands those whose
//! usage must be estimated to the estimator thread (`estimator.rs`) and takes them back when
//! counted, enriches each with kernel facts (cgroup path, container, pod, attribution rules)
//! and adds it to the node counters (`enrich.rs`), commits them in batches, and flushes
//! everything when told to stop. If a commit fails the batch is kept and retried, so spend is
//! not dropped on a transient error (e.g. a locked database). A journal segment is deleted
//! once its records are committed, including those it sent to be estimated: the estimator
//! answers in order, so a segment retired after the n-th hand-over waits for n answers
//! (steady estimate traffic never holds older segments back).
//!
//! Nobody waits on this thread (records are journalled, usage settled before they get here),
//! so it runs in the idle CPU class while it keeps up, watched from the telemetry thread
//! (`priority.rs`).

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::enrich::Enricher;
use super::estimator::{Estimator, Job};
use super::priority::WriterClass;
use super::{insert_batch, UsageRecord};
use crate::config::LedgerSettings;
use crate::governance::Governor;
use crate::metering::estimate::{estimate, EstimateInput};
use crate::telemetry::metrics::{Metrics, SeriesKey};

/// What workers send to the control thread.
pub enum LedgerMsg {
    /// A finished record with the provider's own usage.
    Record(Box<UsageRecord>),
    /// A record with the provider's usage that is estimated as well, to measure the estimator
    /// (`ledger/accuracy.rs`); written as it is.
    Sampled {
        record: Box<UsageRecord>,
        input: Box<EstimateInput>,
    },
    /// A record whose usage must be estimated before it is written.
    Estimate {
        record: Box<UsageRecord>,
        input: Box<EstimateInput>,
        series: SeriesKey,
    },
}

/// What arrives on the writer's channel.
pub enum ToWriter {
    /// Records gathered by one worker.
    Batch(Vec<LedgerMsg>),
    /// A journal segment whose records have all been sent: delete it after the next commit.
    Retire(std::path::PathBuf),
    /// A record the estimator thread counted, back for settling and commit.
    Estimated {
        record: Box<UsageRecord>,
        series: SeriesKey,
    },
    /// Sent by the server once every worker has stopped and flushed: commit and return.
    /// (Waiting for the senders to drop is not enough: a task left on a stopped worker's
    /// runtime may still own one.)
    Stop,
}

/// Longest the writer waits, when stopping, for estimates still being counted.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// What the writer thread is started with.
pub struct Parts {
    pub conn: Connection,
    /// The writer's channel, both ends: the estimator thread answers on its sender.
    pub channel: (Receiver<ToWriter>, std::sync::mpsc::Sender<ToWriter>),
    pub settings: LedgerSettings,
    pub metrics: Arc<Metrics>,
    pub enricher: Enricher,
    pub governor: Arc<Governor>,
    /// Where each final record also goes, as a span (`otlp:`).
    pub otlp: Option<Arc<crate::telemetry::otlp::Exporter>>,
    /// The thread's CPU class, shared with its watchdog (`priority.rs`).
    pub class: Arc<WriterClass>,
}

/// Runs until told to stop, then flushes and returns.
pub fn run(parts: Parts) {
    let Parts {
        mut conn,
        channel: (rx, own),
        settings,
        metrics,
        enricher,
        governor,
        otlp,
        class,
    } = parts;
    // A new thread takes its creator's CPU class. The estimator settles the budget holds of
    // estimated responses, which admission reads: it starts before the writer enters the idle
    // class, and stays in the normal one.
    let estimator = Estimator::start(
        own,
        metrics.clone(),
        governor.clone(),
        crate::worker::STACK_BYTES,
    )
    .map_err(|e| tracing::warn!(error = %e, "no estimator thread; estimating on the writer"))
    .ok();
    class.enter();
    // The accuracy sampler is an optional measurement whose full queue drops a sample: it
    // takes the idle class with it.
    let sampler = conn
        .path()
        .map(std::path::PathBuf::from)
        .and_then(|db| super::accuracy::Sampler::start(db, metrics.clone()).ok());
    let mut ctl = Control {
        shard: metrics.shards.len() - 1,
        metrics: metrics.clone(),
        enricher,
        governor,
        otlp,
        sampler,
        estimator,
        outstanding: 0,
        handed: 0,
        returned: 0,
    };
    let mut batch: Vec<UsageRecord> = Vec::with_capacity(settings.batch_max);
    let mut deadline: Option<Instant> = None;
    // Journal segments whose records are all in `batch` or committed; deleted once `batch` is empty.
    // Each with the hand-overs made before it was retired.
    let mut retired: Vec<(std::path::PathBuf, u64)> = Vec::new();
    loop {
        let msg = match rx.try_recv() {
            Ok(m) => Ok(m),
            Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) => {
                // Drained: tell the watchdog, which measures how far behind the writer is from
                // the last time it got here.
                class.drained(deadline.is_some());
                match deadline {
                    None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
                }
            }
        };
        match msg {
            Ok(ToWriter::Stop) | Err(RecvTimeoutError::Disconnected) => {
                class.normal();
                // Whatever is still queued was sent before the stop; estimates still being
                // counted come back on the same channel.
                let until = Instant::now() + STOP_WAIT;
                loop {
                    let m = if ctl.outstanding > 0 {
                        rx.recv_timeout(until.saturating_duration_since(Instant::now()))
                            .map_err(|_| ())
                    } else {
                        rx.try_recv().map_err(|_| ())
                    };
                    match m {
                        Ok(ToWriter::Batch(msgs)) => absorb(&mut ctl, msgs, &mut batch),
                        Ok(ToWriter::Retire(path)) => retired.push((path, ctl.handed)),
                        Ok(ToWriter::Estimated { record, series }) => {
                            estimated(&mut ctl, record, series, &mut batch)
                        }
                        Ok(ToWriter::Stop) => {}
                        Err(()) => break,
                    }
                }
                if ctl.outstanding > 0 {
                    tracing::warn!(
                        records = ctl.outstanding,
                        "stopping with estimates still being counted; the journal replays them on the next start"
                    );
                }
                ctl.enricher.flush_counters();
                for _ in 0..50 {
                    flush(&mut conn, &mut batch, &metrics);
                    if batch.is_empty() {
                        remove_retired(&mut retired, ctl.returned);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                return;
            }
            Ok(ToWriter::Retire(path)) => {
                retired.push((path, ctl.handed));
                deadline.get_or_insert_with(|| Instant::now() + settings.flush_interval);
            }
            Ok(m @ (ToWriter::Batch(_) | ToWriter::Estimated { .. })) => {
                match m {
                    ToWriter::Batch(msgs) => absorb(&mut ctl, msgs, &mut batch),
                    ToWriter::Estimated { record, series } => {
                        estimated(&mut ctl, record, series, &mut batch)
                    }
                    _ => {}
                }
                deadline.get_or_insert_with(|| Instant::now() + settings.flush_interval);
                if batch.len() >= settings.batch_max {
                    ctl.enricher.flush_counters();
                    flush(&mut conn, &mut batch, &metrics);
                    if batch.is_empty() {
                        remove_retired(&mut retired, ctl.returned);
                    }
                    deadline = (!batch.is_empty() || !retired.is_empty())
                        .then(|| Instant::now() + settings.flush_interval);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                // The node counters (BPF maps, per-target totals) move with the commit, not
                // with each worker batch: one map update per model, cgroup and key per commit
                // instead of per batch (0.10 `bpf` calls per request at c=64 before).
                ctl.enricher.flush_counters();
                flush(&mut conn, &mut batch, &metrics);
                if batch.is_empty() {
                    remove_retired(&mut retired, ctl.returned);
                }
                // Segments kept for outstanding estimates are looked at again next interval.
                deadline = (!batch.is_empty() || !retired.is_empty())
                    .then(|| Instant::now() + settings.flush_interval);
            }
        }
    }
}

/// What the writer needs to prepare a record.
struct Control {
    metrics: Arc<Metrics>,
    /// The metrics shard of the control thread.
    shard: usize,
    enricher: Enricher,
    governor: Arc<Governor>,
    /// Where each final record also goes, as a span (`otlp:`).
    otlp: Option<Arc<crate::telemetry::otlp::Exporter>>,
    /// Where sampled records are estimated, off this thread (`ledger/accuracy.rs`).
    sampler: Option<super::accuracy::Sampler>,
    /// Where records without usage are counted, off this thread (`ledger/estimator.rs`).
    estimator: Option<Estimator>,
    /// Records handed to the estimator and not back yet.
    outstanding: usize,
    /// Records ever handed to the estimator, and ever back from it (it answers in order).
    handed: u64,
    returned: u64,
}

/// Takes one worker batch into the pending commit (its node-counter deltas wait for the commit).
fn absorb(ctl: &mut Control, msgs: Vec<LedgerMsg>, batch: &mut Vec<UsageRecord>) {
    ctl.metrics
        .globals
        .ledger_queue
        .fetch_sub(msgs.len() as u64, Ordering::Relaxed);
    for m in msgs {
        if let Some(record) = prepare(ctl, m) {
            admit(ctl, record, batch);
        }
    }
}

/// Takes back a record the estimator counted.
fn estimated(
    ctl: &mut Control,
    record: Box<UsageRecord>,
    series: SeriesKey,
    batch: &mut Vec<UsageRecord>,
) {
    ctl.outstanding = ctl.outstanding.saturating_sub(1);
    ctl.returned += 1;
    ctl.metrics
        .globals
        .estimator_queue
        .store(ctl.outstanding as u64, Ordering::Relaxed);
    let record = settle_estimate(ctl, *record, series);
    admit(ctl, record, batch);
}

/// A prepared record joins the pending commit (and the drift watch and span export).
fn admit(ctl: &Control, record: UsageRecord, batch: &mut Vec<UsageRecord>) {
    watch_drift(ctl, &record);
    if let Some(x) = &ctl.otlp {
        x.offer(&record);
    }
    batch.push(record);
}

/// Feeds the tokenizer-drift watch with a record the provider counted; a drift is audited.
fn watch_drift(ctl: &Control, r: &UsageRecord) {
    let (Some(version), false) = (&r.upstream_version, r.estimated) else {
        return;
    };
    let model = r
        .served_model
        .as_deref()
        .or(r.requested_model.as_deref())
        .unwrap_or("unknown");
    let seen = ctl
        .metrics
        .drift
        .observe(model, version, r.usage.input_tokens, r.prompt_bytes);
    if let Some(d) = seen {
        tracing::warn!(
            model = %d.model, from = %d.from, to = %d.to,
            change_pct = d.change() * 100.0,
            "tokenizer drift: tokens per prompt byte moved with the new model version"
        );
        ctl.governor.audit(
            "tokenizer.drift",
            &d.model,
            serde_json::json!({
                "from": d.from, "to": d.to,
                "tokens_per_byte_before": d.before, "tokens_per_byte_after": d.after,
                "change_pct": d.change() * 100.0,
            }),
        );
    }
}

/// Enriches a record and settles what it reserved; one that needs an estimate goes to the
/// estimator instead (`None`: it comes back as [`ToWriter::Estimated`]).
fn prepare(ctl: &mut Control, m: LedgerMsg) -> Option<UsageRecord> {
    let mut record = match m {
        LedgerMsg::Record(r) => *r,
        LedgerMsg::Sampled { record, input } => {
            if let Some(s) = &ctl.sampler {
                let sample = super::accuracy::Sample {
                    ts_ms: record.ts_ms,
                    model: record
                        .served_model
                        .clone()
                        .or_else(|| record.requested_model.clone())
                        .unwrap_or_else(|| "unknown".into()),
                    provider_input: record.usage.input_tokens,
                    estimated_input: 0,
                    provider_output: record.usage.output_tokens,
                    estimated_output: 0,
                };
                s.offer(sample, input);
            }
            *record
        }
        LedgerMsg::Estimate {
            record,
            input,
            series,
        } => {
            let job = Job {
                record,
                input,
                series,
            };
            let job = match &ctl.estimator {
                Some(e) => match e.submit(job) {
                    Ok(()) => {
                        ctl.outstanding += 1;
                        ctl.handed += 1;
                        ctl.metrics
                            .globals
                            .estimator_queue
                            .store(ctl.outstanding as u64, Ordering::Relaxed);
                        return None;
                    }
                    Err(job) => job,
                },
                None => job,
            };
            // No estimator thread: count here, with local tokenizers only.
            let mut record = job.record;
            super::estimator::apply(&mut record, estimate(&job.input));
            return Some(settle_estimate(ctl, *record, job.series));
        }
    };
    ctl.enricher.apply(&mut record);
    // Records with the provider's usage were settled on their worker.
    crate::governance::settle_record(&mut record, &ctl.governor);
    Some(record)
}

/// A counted estimate: into the node's usage metrics, enriched, and settled (the estimator
/// thread settled it already; one counted here, without that thread, settles now).
fn settle_estimate(ctl: &mut Control, mut record: UsageRecord, series: SeriesKey) -> UsageRecord {
    ctl.metrics.shards[ctl.shard].record_usage(series, &record.usage, record.cost_micro_usd, true);
    ctl.enricher.apply(&mut record);
    crate::governance::settle_record(&mut record, &ctl.governor);
    record
}

/// Deletes the journal segments whose every record is committed: the batch is (the caller
/// checks), and so are the estimates handed over before each was retired.
fn remove_retired(retired: &mut Vec<(std::path::PathBuf, u64)>, returned: u64) {
    retired.retain(|(path, handed)| {
        if *handed > returned {
            return true;
        }
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a committed journal segment");
        }
        false
    });
}

fn flush(conn: &mut Connection, batch: &mut Vec<UsageRecord>, metrics: &Metrics) {
    if batch.is_empty() {
        return;
    }
    match insert_batch(conn, batch) {
        Ok(()) => {
            metrics
                .globals
                .ledger_written
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            batch.clear();
        }
        Err(e) => {
            metrics
                .globals
                .ledger_errors
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, records = batch.len(), "ledger commit failed; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment retired after n hand-overs to the estimator goes once n answers are back,
    /// whatever is still outstanding after it.
    #[test]
    fn a_retired_segment_waits_only_for_the_estimates_handed_over_before_it() {
        let dir = std::env::temp_dir().join(format!("tollgate-retire-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut retired: Vec<(std::path::PathBuf, u64)> = [0, 2, 5]
            .into_iter()
            .map(|mark| {
                let p = dir.join(format!("seg-{mark}"));
                std::fs::write(&p, b"x").unwrap();
                (p, mark)
            })
            .collect();
        remove_retired(&mut retired, 2);
        assert!(!dir.join("seg-0").exists() && !dir.join("seg-2").exists());
        assert!(dir.join("seg-5").exists());
        assert_eq!(retired.len(), 1);
        remove_retired(&mut retired, 5);
        assert!(retired.is_empty() && !dir.join("seg-5").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
