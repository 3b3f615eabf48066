//! The estimator thread (`tollgate-estimator`): usage for responses that reported none, off
//! both the workers and the ledger writer.
//!
//! Counting can be slow: the first o200k count loads the tokenizer (about a second), a long
//! prompt takes milliseconds, and `tokenizer: {engine: true}` is an HTTP call to the engine's
//! `/tokenize`. On the writer that stalled every commit behind it (and budgets settled late);
//! here only the estimated records wait.
//!
//! - **Flow.** The writer hands each `LedgerMsg::Estimate` over and counts it outstanding.
//!   Once counted, the record's budget and token-limit holds are settled here (the writer
//!   runs in the idle CPU class, where a busy node may keep it waiting up to a second); the
//!   finished record comes back on the writer's own channel as [`ToWriter::Estimated`], and the
//!   writer enriches and commits it like any other.
//! - **Crash safety.** A record is journalled by its worker before it reaches the writer, and
//!   the writer deletes journal segments only when no estimate is outstanding, so a crash
//!   while one is here replays it on the next start.
//! - **Engine errors** fall back to the local count (the family's `tokenizer.json`, else o200k)
//!   and are counted (`tollgate_estimator_engine_errors_total`), logged at most every 30 s.
//!   An engine that failed is not asked again for [`ENGINE_REST`]: one that hangs would
//!   otherwise cost [`ENGINE_TIMEOUT`] per record and let the queue grow without bound.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::writer::ToWriter;
use super::UsageRecord;
use crate::governance::Governor;
use crate::metering::estimate::{estimate_with_engine, EstimateInput};
use crate::telemetry::metrics::{Metrics, SeriesKey};

/// How long one `/tokenize` call may take.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(2);
const LOG_EVERY: Duration = Duration::from_secs(30);
/// How long an engine that failed is left alone.
const ENGINE_REST: Duration = Duration::from_secs(30);

/// A record whose usage must be estimated.
pub struct Job {
    pub record: Box<UsageRecord>,
    pub input: Box<EstimateInput>,
    pub series: SeriesKey,
}

/// The running thread; dropping it ends the thread once its queue is empty.
pub struct Estimator {
    tx: Sender<Job>,
}

impl Estimator {
    /// Starts the thread; finished records go to `writer`.
    pub fn start(
        writer: Sender<ToWriter>,
        metrics: Arc<Metrics>,
        governor: Arc<Governor>,
        stack_bytes: usize,
    ) -> std::io::Result<Estimator> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("tollgate-estimator".into())
            // Prompt JSON is parsed recursively (depth-checked), as on the workers.
            .stack_size(stack_bytes)
            .spawn(move || run(&rx, &writer, &metrics, &governor))?;
        Ok(Estimator { tx })
    }

    /// Queues a job; gives it back if the thread is gone.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        self.tx.send(job).map_err(|e| e.0)
    }
}

fn run(rx: &Receiver<Job>, writer: &Sender<ToWriter>, metrics: &Metrics, governor: &Governor) {
    let agent = crate::metering::engine_tokenize::client(ENGINE_TIMEOUT);
    let mut last_log: Option<Instant> = None;
    // Engines (by `/tokenize` URL) that failed, and until when they are left alone.
    let mut resting: std::collections::HashMap<String, Instant> = Default::default();
    while let Ok(mut job) = rx.recv() {
        let url = job.input.engine.as_ref().map(|e| e.url.clone());
        if let Some(u) = &url {
            if resting.get(u).is_some_and(|until| Instant::now() < *until) {
                job.input.engine = None;
            }
        }
        let (mut record, engine_ok) = finish(job, &agent, metrics, &mut last_log);
        if let ToWriter::Estimated { record, .. } = &mut record {
            crate::governance::settle_record(record, governor);
        }
        match (engine_ok, url) {
            (Some(false), Some(u)) => {
                resting.insert(u, Instant::now() + ENGINE_REST);
            }
            (Some(true), Some(u)) => {
                resting.remove(&u);
            }
            _ => {}
        }
        if writer.send(record).is_err() {
            return;
        }
    }
}

/// Estimates one job's usage and cost: the answer for the writer, and whether the engine
/// counted the prompt (`None`: it was not asked).
fn finish(
    job: Job,
    agent: &ureq::Agent,
    metrics: &Metrics,
    last_log: &mut Option<Instant>,
) -> (ToWriter, Option<bool>) {
    let Job {
        mut record,
        input,
        series,
    } = job;
    let (usage, engine) = estimate_with_engine(&input, agent);
    let engine_ok = engine.as_ref().map(Result::is_ok);
    match engine {
        Some(Ok(_)) => {
            metrics
                .globals
                .estimator_engine_counts
                .fetch_add(1, Ordering::Relaxed);
        }
        Some(Err(e)) => {
            metrics
                .globals
                .estimator_engine_errors
                .fetch_add(1, Ordering::Relaxed);
            if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                *last_log = Some(Instant::now());
                tracing::warn!(error = %e, "the engine could not count a prompt; counted locally");
            }
        }
        None => {}
    }
    apply(&mut record, usage);
    (ToWriter::Estimated { record, series }, engine_ok)
}

/// Gives a record its estimated usage and that usage's cost.
pub fn apply(record: &mut UsageRecord, usage: crate::metering::Usage) {
    record.usage = usage;
    record.estimated = true;
    if let Some(p) = record.price {
        record.cost_micro_usd = p.micro_usd(&record.usage);
    }
}
