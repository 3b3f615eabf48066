//! OTLP export (`otlp:`): a span per request, following the OpenTelemetry GenAI semantic
//! conventions, sent in batches to a collector over OTLP/HTTP (protobuf).
//!
//! - **Off the request path.** Spans are built from the usage records on the ledger writer's
//!   thread, after usage is final (estimates included). They are handed to this exporter's
//!   thread through a bounded queue: a worker never sees the exporter.
//! - **Bounded.** When the queue is full (a slow or absent collector), new spans are dropped
//!   and counted (`tollgate_otlp_spans_dropped_total`). A batch the collector refuses is retried
//!   twice (after 0.5 s and 1 s), then dropped and counted.
//! - **Trace ids.** A request that sent a W3C `traceparent` gets a span in that trace, as a child
//!   of the client's span. Otherwise the trace id is the first 16 bytes of SHA-256(request id),
//!   so a ledger row can be joined to its trace. The span id is always bytes 16..24 of that hash.

mod proto;
mod span;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;

use crate::config::otlp::OtlpSettings;
use crate::ledger::UsageRecord;

pub use span::{parse_traceparent, span_of, trace_id_of};

/// What the exporter has done, for `/metrics`.
#[derive(Default)]
pub struct OtlpStats {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub failures: AtomicU64,
}

enum Msg {
    Span(Box<proto::Span>),
    Stop,
}

/// The exporter thread and its queue.
pub struct Exporter {
    tx: SyncSender<Msg>,
    pub stats: Arc<OtlpStats>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Exporter {
    pub fn start(settings: OtlpSettings) -> std::io::Result<Exporter> {
        let (tx, rx) = sync_channel(settings.queue);
        let stats = Arc::new(OtlpStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("tollgate-otlp".into())
            .spawn(move || run(&settings, &rx, &thread_stats))?;
        Ok(Exporter {
            tx,
            stats,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues the record's span; dropped (and counted) when the queue is full.
    pub fn offer(&self, record: &UsageRecord) {
        match self.tx.try_send(Msg::Span(Box::new(span_of(record)))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Sends what is queued (one attempt per batch) and stops the thread.
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        for (name, help, v) in [
            (
                "tollgate_otlp_spans_exported_total",
                "Request spans the OTLP collector accepted.",
                &self.stats.exported,
            ),
            (
                "tollgate_otlp_spans_dropped_total",
                "Request spans dropped: the export queue was full, or the collector refused them three times.",
                &self.stats.dropped,
            ),
            (
                "tollgate_otlp_export_failures_total",
                "OTLP export attempts that failed (connection, timeout or non-2xx answer).",
                &self.stats.failures,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
    }
}

fn run(settings: &OtlpSettings, rx: &Receiver<Msg>, stats: &OtlpStats) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(settings.timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent("tollgate")
        .build()
        .into();
    let resource = resource(settings);
    let mut batch: Vec<proto::Span> = Vec::with_capacity(settings.batch);
    let mut deadline: Option<Instant> = None;
    loop {
        let msg = match deadline {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        };
        let stopping = match msg {
            Ok(Msg::Span(s)) => {
                batch.push(*s);
                deadline.get_or_insert_with(|| Instant::now() + settings.flush);
                false
            }
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => true,
            Err(RecvTimeoutError::Timeout) => false,
        };
        let due = deadline.is_some_and(|d| Instant::now() >= d);
        if !batch.is_empty() && (stopping || due || batch.len() >= settings.batch) {
            let req = request(&resource, std::mem::take(&mut batch));
            export(&agent, settings, req, stats, stopping);
            deadline = None;
        }
        if stopping {
            return;
        }
    }
}

/// Posts one batch; retried twice unless stopping.
fn export(
    agent: &ureq::Agent,
    settings: &OtlpSettings,
    req: proto::ExportTraceServiceRequest,
    stats: &OtlpStats,
    stopping: bool,
) {
    let n = req
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len() as u64)
        .sum::<u64>();
    let body = req.encode_to_vec();
    let attempts = if stopping { 1 } else { 3 };
    for attempt in 0..attempts {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(500 << (attempt - 1)));
        }
        let mut req = agent
            .post(&settings.endpoint)
            .header("content-type", "application/x-protobuf");
        for (k, v) in &settings.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        match req.send(&body[..]) {
            Ok(r) if r.status().is_success() => {
                stats.exported.fetch_add(n, Relaxed);
                return;
            }
            Ok(r) => {
                stats.failures.fetch_add(1, Relaxed);
                tracing::debug!(status = %r.status(), "OTLP export refused");
            }
            Err(e) => {
                stats.failures.fetch_add(1, Relaxed);
                tracing::debug!(error = %e, "OTLP export failed");
            }
        }
    }
    tracing::warn!(spans = n, endpoint = %settings.endpoint, "OTLP export failed; spans dropped");
    stats.dropped.fetch_add(n, Relaxed);
}

/// Who sends the spans: the same for every batch, built once.
fn resource(settings: &OtlpSettings) -> proto::Resource {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    proto::Resource {
        attributes: vec![
            proto::kv(
                "service.name",
                proto::Value::String(settings.service_name.clone()),
            ),
            proto::kv(
                "service.version",
                proto::Value::String(env!("CARGO_PKG_VERSION").into()),
            ),
            proto::kv("host.name", proto::Value::String(host.trim().to_string())),
        ],
    }
}

fn request(
    resource: &proto::Resource,
    spans: Vec<proto::Span>,
) -> proto::ExportTraceServiceRequest {
    proto::ExportTraceServiceRequest {
        resource_spans: vec![proto::ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![proto::ScopeSpans {
                scope: Some(proto::InstrumentationScope {
                    name: "tollgate".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                spans,
            }],
        }],
    }
}
