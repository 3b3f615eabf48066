//! The batch thread: answers the Batch API calls the workers hand it (`api.rs`), and runs the
//! jobs, one batch at a time in creation order, each line sent by one of
//! `batch_jobs.concurrency` sender threads through the agent's own client listener on loopback
//! (blocking HTTP/1.1, ureq), so it passes admit, limits, budgets, routing, metering and the
//! ledger like any request, at the `batch` priority class.
//!
//! Delivery: a line is *done* once its result line is appended to the output or error file and
//! fsynced (`store::Results`); only then are the counts in SQLite updated. At start or resume
//! the files say what is done, so a line whose result was recorded is never sent again; a line
//! that was in flight when the agent died is sent again (at least once towards the provider,
//! exactly once in the result files). Lines Tollgate itself turned away before any provider
//! saw them (`batch_deferred`, `overloaded`, a rate limit's 429, a refused connection) are sent
//! again later, not recorded. Never on a worker; blocks on disk and sockets freely.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::input::InputLine;
use super::store::{BatchRow, Results, Status, Store, StoreError};
use crate::shared::Shared;

/// A response body larger than this is recorded as a failure (`response_too_large`).
const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;
/// Attempts for a line whose connection to the listener failed, before it is recorded failed.
const MAX_TRANSPORT_ATTEMPTS: u32 = 5;
/// How often the thread looks at its job when no message arrives (retries wait on it).
const TICK: Duration = Duration::from_millis(50);
/// How often an idle thread looks for work it was not told about (a batch left by a crash is
/// found at the first look; a new batch is started right after its `POST /v1/batches`).
const IDLE_TICK: Duration = Duration::from_secs(1);

/// What reaches the batch thread.
pub enum Msg {
    /// A worker's API call and where to answer it.
    Api(super::api::Call, Sender<super::api::Reply>),
    /// A sender thread's result for one line.
    Result(Finished),
    /// The workers are gone: record what has arrived and exit.
    Stop,
}

pub struct Finished {
    batch: String,
    line: usize,
    outcome: Outcome,
}

enum Outcome {
    /// The listener answered; `retry`: Tollgate turned it away before a provider saw it.
    Response {
        status: u16,
        request_id: Option<String>,
        body: Vec<u8>,
        retry: Option<Duration>,
    },
    /// No answer from the listener (refused, reset): sent again.
    Transport(String),
    /// Recorded in the error file without a response.
    Failed { code: &'static str, message: String },
}

struct Work {
    batch: String,
    line: usize,
    url: String,
    body: Vec<u8>,
    headers: Arc<Vec<(String, String)>>,
}

struct Job {
    row: BatchRow,
    lines: Vec<InputLine>,
    headers: Arc<Vec<(String, String)>>,
    pending: VecDeque<usize>,
    delayed: Vec<(Instant, usize)>,
    attempts: HashMap<usize, u32>,
    in_flight: usize,
    results: Results,
    /// Set once the job is to end early (cancelled, expired): nothing new is sent.
    ending: Option<Status>,
}

pub struct Runner {
    pub(crate) store: Store,
    shared: Arc<Shared>,
    workers: usize,
    concurrency: usize,
    token: String,
    job: Option<Job>,
    work: Sender<Work>,
}

/// Starts the sender threads and returns the runner, to be run on the batch thread.
pub fn start(
    store: Store,
    shared: Arc<Shared>,
    settings: &crate::config::BatchJobsSettings,
    workers: usize,
    listener: SocketAddr,
    token: String,
    tx: Sender<Msg>,
) -> std::io::Result<Runner> {
    let (work_tx, work_rx) = std::sync::mpsc::channel::<Work>();
    let work_rx = Arc::new(Mutex::new(work_rx));
    let addr = loopback(listener);
    for i in 0..settings.concurrency {
        let rx = work_rx.clone();
        let tx = tx.clone();
        let timeout = settings.request_timeout;
        std::thread::Builder::new()
            .name(format!("tollgate-batch-s{i}"))
            .spawn(move || sender(addr, timeout, &rx, &tx))?;
    }
    Ok(Runner {
        store,
        shared,
        workers,
        concurrency: settings.concurrency,
        token,
        job: None,
        work: work_tx,
    })
}

/// The listener's address as a loopback peer reaches it (an unspecified bind becomes loopback).
fn loopback(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

impl Runner {
    /// The batch thread's loop, until [`Msg::Stop`].
    pub fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let wait = if self.job.is_some() { TICK } else { IDLE_TICK };
            match rx.recv_timeout(wait) {
                Ok(Msg::Api(call, reply)) => {
                    let _ = reply.send(super::api::handle(&mut self, call));
                }
                Ok(Msg::Result(f)) => self.finished(f),
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    while let Ok(m) = rx.try_recv() {
                        match m {
                            Msg::Result(f) => self.finished(f),
                            Msg::Api(call, reply) => {
                                let _ = reply.send(super::api::handle(&mut self, call));
                            }
                            Msg::Stop => {}
                        }
                    }
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if let Err(e) = self.tick() {
                tracing::warn!(error = %e, "batch runner");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }

    /// A cancel from the API: the running job stops sending and ends once nothing is in
    /// flight; a batch not started yet ends at once. Returns the batch as it is now.
    pub(crate) fn cancel(&mut self, row: &BatchRow) -> Result<Option<BatchRow>, StoreError> {
        if !matches!(row.status, Status::Validating | Status::InProgress) {
            return Ok(Some(row.clone()));
        }
        let now = self.store.set_status(&row.id, Status::Cancelling)?;
        match self.job.as_mut() {
            Some(job) if job.row.id == row.id => {
                job.ending.get_or_insert(Status::Cancelled);
                Ok(now)
            }
            _ if row.status == Status::Validating => {
                let done = self.store.set_status(&row.id, Status::Cancelled)?;
                self.count_finished(Status::Cancelled);
                self.store.release_input(&row.input_file_id)?;
                Ok(done)
            }
            _ => Ok(now),
        }
    }

    fn tick(&mut self) -> Result<(), StoreError> {
        if self.shared.shutting_down.load(Ordering::Relaxed)
            || self.shared.workers_ready.load(Ordering::Acquire) < self.workers
        {
            return Ok(());
        }
        if self.job.is_none() {
            let Some(row) = self.store.next_open()? else {
                return Ok(());
            };
            self.start_job(row)?;
        }
        let Some(job) = self.job.as_mut() else {
            return Ok(());
        };
        if job.ending.is_none() && super::now_s() >= job.row.expires_at {
            job.ending = Some(Status::Expired);
        }
        if let Some(end) = job.ending {
            if job.in_flight == 0 {
                self.finish(end)?;
            }
            return Ok(());
        }
        let now = Instant::now();
        let mut i = 0;
        while i < job.delayed.len() {
            if job.delayed[i].0 <= now {
                let (_, line) = job.delayed.swap_remove(i);
                job.pending.push_back(line);
            } else {
                i += 1;
            }
        }
        while job.in_flight < self.concurrency {
            let Some(line) = job.pending.pop_front() else {
                break;
            };
            let l = &job.lines[line];
            let work = Work {
                batch: job.row.id.clone(),
                line,
                url: l.url.clone(),
                body: l.body.clone(),
                headers: job.headers.clone(),
            };
            if self.work.send(work).is_err() {
                job.pending.push_front(line);
                break;
            }
            job.in_flight += 1;
        }
        if job.pending.is_empty() && job.delayed.is_empty() && job.in_flight == 0 {
            self.finish(Status::Completed)?;
        }
        Ok(())
    }

    /// Loads a batch to run (first start or resume after a restart).
    fn start_job(&mut self, row: BatchRow) -> Result<(), StoreError> {
        let lines = match self
            .store
            .read_file(&row.input_file_id)
            .map_err(|e| e.to_string())
            .and_then(|bytes| super::input::parse(&bytes).map_err(|e| e.message))
        {
            Ok(lines) => lines,
            Err(why) if row.status == Status::Validating => {
                self.store.set_errors(
                    &row.id,
                    &serde_json::json!([{ "code": "invalid_input_file", "message": why, "param": "input_file_id", "line": null }]),
                )?;
                self.store.set_status(&row.id, Status::Failed)?;
                self.count_finished(Status::Failed);
                return Ok(());
            }
            // A resumed batch whose input is gone: it ends with what it has.
            Err(why) => {
                tracing::warn!(batch = %row.id, %why, "batch input unreadable at resume");
                Vec::new()
            }
        };
        let results = Results::open(
            &self.store.path_of(&row.out_id),
            &self.store.path_of(&row.err_id),
        )?;
        let pending: VecDeque<usize> = (0..lines.len())
            .filter(|i| !results.done.contains(&lines[*i].custom_id))
            .collect();
        let ending = match row.status {
            Status::Cancelling => Some(Status::Cancelled),
            Status::Finalizing => Some(Status::Completed),
            _ => None,
        };
        let row = if row.status == Status::Validating {
            self.store
                .set_status(&row.id, Status::InProgress)?
                .unwrap_or(row)
        } else {
            if !pending.is_empty() && row.status == Status::InProgress {
                tracing::info!(
                    batch = %row.id,
                    done = results.done.len(),
                    left = pending.len(),
                    "resuming a batch"
                );
            }
            row
        };
        self.store.set_counts(
            &row.id,
            lines.len() as u64,
            results.completed,
            results.failed,
        )?;
        let headers = Arc::new(self.headers_for(&row));
        self.shared
            .metrics
            .globals
            .batch_running
            .store(1, Ordering::Relaxed);
        self.job = Some(Job {
            row,
            lines,
            headers,
            pending,
            delayed: Vec::new(),
            attempts: HashMap::new(),
            in_flight: 0,
            results,
            ending,
        });
        Ok(())
    }

    /// What each line of `row` is sent with: the identity headers of the request that created
    /// the batch (the key's own team, project and user win over them, as for any request), and
    /// the owner's credential when there is an owner (none in open mode).
    fn headers_for(&self, row: &BatchRow) -> Vec<(String, String)> {
        let mut headers =
            serde_json::from_str::<Vec<(String, String)>>(&row.identity).unwrap_or_default();
        if !row.owner.is_empty() {
            headers.push(("authorization".into(), format!("Bearer {}", self.token)));
            headers.push(("x-tollgate-on-behalf-of".into(), row.owner.clone()));
        }
        headers
    }

    /// Ends the running job as `end`: lines never sent are recorded as expired when it expired;
    /// its result files are published and the input released.
    fn finish(&mut self, end: Status) -> Result<(), StoreError> {
        let Some(mut job) = self.job.take() else {
            return Ok(());
        };
        if end == Status::Expired {
            let left: Vec<usize> = job
                .pending
                .iter()
                .copied()
                .chain(job.delayed.iter().map(|(_, l)| *l))
                .collect();
            let expired: Vec<(String, Vec<u8>)> = left
                .into_iter()
                .map(|line| {
                    let id = job.lines[line].custom_id.clone();
                    let text = failed_line(
                        &id,
                        "batch_expired",
                        "This request could not be executed before the completion window expired.",
                    );
                    (id, text)
                })
                .collect();
            job.results.record_all(false, &expired)?;
        }
        self.store.set_counts(
            &job.row.id,
            job.lines.len() as u64,
            job.results.completed,
            job.results.failed,
        )?;
        if end == Status::Completed {
            self.store.set_status(&job.row.id, Status::Finalizing)?;
        }
        drop(job.results);
        self.store.publish_results(&job.row)?;
        self.store.set_status(&job.row.id, end)?;
        self.store.release_input(&job.row.input_file_id)?;
        self.count_finished(end);
        self.shared
            .metrics
            .globals
            .batch_running
            .store(0, Ordering::Relaxed);
        tracing::info!(batch = %job.row.id, status = end.as_str(), "batch finished");
        Ok(())
    }

    fn count_finished(&self, end: Status) {
        let g = &self.shared.metrics.globals;
        let slot = match end {
            Status::Completed => 0,
            Status::Failed => 1,
            Status::Cancelled => 2,
            _ => 3,
        };
        g.batch_finished[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// Records a sender's result (or schedules the line again).
    fn finished(&mut self, f: Finished) {
        let stopping = self.shared.shutting_down.load(Ordering::Relaxed);
        let Some(job) = self.job.as_mut().filter(|j| j.row.id == f.batch) else {
            return;
        };
        job.in_flight = job.in_flight.saturating_sub(1);
        let Some(line) = job.lines.get(f.line) else {
            return;
        };
        let custom_id = line.custom_id.clone();
        let (ok, text) = match f.outcome {
            Outcome::Response {
                retry: Some(after), ..
            } => {
                job.delayed.push((Instant::now() + after, f.line));
                return;
            }
            Outcome::Response {
                status,
                request_id,
                body,
                retry: None,
            } => (
                (200..300).contains(&status),
                response_line(&custom_id, status, request_id.as_deref(), &body),
            ),
            Outcome::Transport(why) => {
                if stopping {
                    // The listener closed under it; the next run sends it.
                    job.pending.push_front(f.line);
                    return;
                }
                let n = job.attempts.entry(f.line).or_insert(0);
                *n += 1;
                if *n < MAX_TRANSPORT_ATTEMPTS {
                    tracing::debug!(batch = %job.row.id, line = f.line, %why, "batch line: no answer, sending again");
                    let after = Duration::from_secs(u64::from(*n));
                    job.delayed.push((Instant::now() + after, f.line));
                    return;
                }
                (false, failed_line(&custom_id, "connection_error", &why))
            }
            Outcome::Failed { code, message } => (false, failed_line(&custom_id, code, &message)),
        };
        if let Err(e) = job.results.record(ok, &custom_id, &text) {
            tracing::warn!(batch = %job.row.id, error = %e, "recording a batch result; the line will be sent again");
            job.delayed
                .push((Instant::now() + Duration::from_secs(5), f.line));
            return;
        }
        let g = &self.shared.metrics.globals;
        if ok {
            g.batch_lines_completed.fetch_add(1, Ordering::Relaxed);
        } else {
            g.batch_lines_failed.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = self.store.set_counts(
            &job.row.id,
            job.lines.len() as u64,
            job.results.completed,
            job.results.failed,
        ) {
            tracing::warn!(batch = %job.row.id, error = %e, "updating batch counts");
        }
    }
}

/// An output (or error-file) line for a response, as OpenAI writes them.
pub fn response_line(
    custom_id: &str,
    status: u16,
    request_id: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let body = if crate::json::depth_exceeds(body, crate::json::DEFAULT_MAX_DEPTH).is_some() {
        serde_json::Value::String(String::from_utf8_lossy(body).into_owned())
    } else {
        serde_json::from_slice(body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(body).into_owned())
        })
    };
    serde_json::json!({
        "id": super::random_id("batch_req_", 24).unwrap_or_else(|_| "batch_req".into()),
        "custom_id": custom_id,
        "response": { "status_code": status, "request_id": request_id, "body": body },
        "error": null,
    })
    .to_string()
    .into_bytes()
}

/// An error-file line for a request that got no response.
pub fn failed_line(custom_id: &str, code: &str, message: &str) -> Vec<u8> {
    serde_json::json!({
        "id": super::random_id("batch_req_", 24).unwrap_or_else(|_| "batch_req".into()),
        "custom_id": custom_id,
        "response": null,
        "error": { "code": code, "message": message },
    })
    .to_string()
    .into_bytes()
}

/// One sender thread: takes lines from the shared queue, sends each to the listener.
fn sender(addr: SocketAddr, timeout: Duration, work: &Mutex<Receiver<Work>>, tx: &Sender<Msg>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent("tollgate-batch")
        .build()
        .into();
    loop {
        let next = work.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(w) = next else {
            return;
        };
        let outcome = send(&agent, addr, &w);
        let done = Finished {
            batch: w.batch,
            line: w.line,
            outcome,
        };
        if tx.send(Msg::Result(done)).is_err() {
            return;
        }
    }
}

fn send(agent: &ureq::Agent, addr: SocketAddr, w: &Work) -> Outcome {
    let mut req = agent
        .post(format!("http://{addr}{}", w.url))
        .header("content-type", "application/json")
        .header("x-tollgate-priority", "batch")
        .header("x-tollgate-batch", &w.batch);
    for (k, v) in w.headers.iter() {
        req = req.header(k, v);
    }
    let mut resp = match req.send(&w.body[..]) {
        Ok(r) => r,
        Err(ureq::Error::Timeout(_)) => {
            return Outcome::Failed {
                code: "request_timeout",
                message: "The request did not complete within batch_jobs.request_timeout_ms."
                    .into(),
            }
        }
        Err(e) => return Outcome::Transport(e.to_string()),
    };
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let request_id = header("x-tollgate-request-id");
    let retry_after = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok());
    let body = match resp
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_vec()
    {
        Ok(b) => b,
        Err(ureq::Error::BodyExceedsLimit(_)) => {
            return Outcome::Failed {
                code: "response_too_large",
                message: format!("The response was larger than {MAX_RESPONSE_BYTES} bytes."),
            }
        }
        Err(ureq::Error::Timeout(_)) => {
            return Outcome::Failed {
                code: "request_timeout",
                message: "The response did not complete within batch_jobs.request_timeout_ms."
                    .into(),
            }
        }
        Err(e) => return Outcome::Transport(e.to_string()),
    };
    let retry = turned_away(status, &body)
        .then(|| Duration::from_secs(retry_after.unwrap_or(1).clamp(1, 60)));
    Outcome::Response {
        status,
        request_id,
        body,
        retry,
    }
}

/// Tollgate refused the line before any provider saw it, for now: send it again later.
fn turned_away(status: u16, body: &[u8]) -> bool {
    if status != 429 && status != 503 {
        return false;
    }
    #[derive(serde::Deserialize)]
    struct E {
        error: Option<Inner>,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        code: Option<String>,
    }
    let code = serde_json::from_slice::<E>(body)
        .ok()
        .and_then(|e| e.error)
        .and_then(|i| i.code);
    matches!(
        (status, code.as_deref()),
        (503, Some("batch_deferred" | "overloaded")) | (429, Some("rate_limit_exceeded"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tollgates_own_refusals_are_sent_again() {
        let e = |code: &str| format!(r#"{{"error":{{"code":"{code}"}}}}"#).into_bytes();
        assert!(turned_away(503, &e("batch_deferred")));
        assert!(turned_away(503, &e("overloaded")));
        assert!(turned_away(429, &e("rate_limit_exceeded")));
        assert!(!turned_away(429, &e("budget_exceeded")));
        assert!(!turned_away(500, &e("overloaded")));
        assert!(!turned_away(404, &e("model_not_found")));
        assert!(!turned_away(503, b"not json"));
    }

    #[test]
    fn result_lines_have_openais_shape() {
        let l = response_line("c1", 200, Some("req-1"), br#"{"usage":{"total_tokens":3}}"#);
        let v: serde_json::Value = serde_json::from_slice(&l).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["custom_id"], "c1");
        assert_eq!(v["response"]["status_code"], 200);
        assert_eq!(v["response"]["request_id"], "req-1");
        assert_eq!(v["response"]["body"]["usage"]["total_tokens"], 3);
        assert!(v["error"].is_null());
        assert!(v["id"]
            .as_str()
            .is_some_and(|s| s.starts_with("batch_req_")));
        let l = failed_line("c2", "batch_expired", "late");
        let v: serde_json::Value = serde_json::from_slice(&l).unwrap_or_else(|e| panic!("{e}"));
        assert!(v["response"].is_null());
        assert_eq!(v["error"]["code"], "batch_expired");
        assert_eq!(
            loopback("0.0.0.0:80".parse().unwrap_or_else(|e| panic!("{e}"))).to_string(),
            "127.0.0.1:80"
        );
    }
}
