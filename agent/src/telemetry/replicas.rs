//! Replica load, read from the inference engines' own `/metrics`.
//!
//! Why: schedulers on the node (through the pinned `tg_replica` map), dashboards (the agent's
//! `/metrics`) and, later, load-aware routing want to know how busy each replica is: requests
//! running, requests queued, KV cache in use. The engines already publish these; the agent reads
//! them so every consumer gets one consistent view under the configured provider names.
//!
//! What: every `replicas.scrape_interval_ms` the control-plane telemetry thread
//! (`telemetry::control`) GETs `<base_url>/metrics` of each configured plain-http `kind: openai`
//! provider ([`targets`]), with ureq ([`http_get`]) bounded by
//! `replicas.timeout_ms`, and reads vLLM, SGLang and llama.cpp gauge names ([`EngineLoad::parse`]),
//! summed over label sets. The result is published in a [`ReplicaBoard`] (lock-free reads through
//! `ArcSwap`), rendered as `tollgate_replica_*` gauges, and written to `tg_replica` when the
//! kernel counters are active.
//!
//! Never: on a worker or the request path; https providers (their engines' metrics are rarely
//! exposed through the same TLS endpoint, and a TLS client here would duplicate the data plane's)
//! and implicit intercept providers (not ours to poll) are not scraped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::prom;
use crate::config::{Config, Provider, ProviderKind};

/// Largest `/metrics` body read; an engine's is tens of KiB.
const MAX_BODY: usize = 8 * 1024 * 1024;

/// Why one scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("no address resolved for {host}")]
    NoAddress { host: String },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed HTTP response: {0}")]
    Http(String),
    #[error("GET {path} answered {status}")]
    Status { path: String, status: u16 },
    #[error("the response is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("no known load metric (vllm:num_requests_running, sglang:num_running_reqs, ...)")]
    NoLoadMetrics,
}

/// What an engine reports about its load, summed over label sets (e.g. one per model).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EngineLoad {
    /// Requests being decoded.
    pub running: f64,
    /// Requests queued.
    pub waiting: f64,
    /// KV cache in use, 0..=1, when the engine reports it (the largest over label sets: a ratio
    /// does not add up).
    pub kv_cache_ratio: Option<f64>,
}

/// Names that carry each figure, across engines and versions.
const RUNNING: &[&str] = &[
    "vllm:num_requests_running",
    "sglang:num_running_reqs",
    "llamacpp:requests_processing",
];
const WAITING: &[&str] = &[
    "vllm:num_requests_waiting",
    "sglang:num_queue_reqs",
    "llamacpp:requests_deferred",
];
const KV_RATIO: &[&str] = &[
    "vllm:kv_cache_usage_perc",
    // vLLM before 0.10 (V0 engine).
    "vllm:gpu_cache_usage_perc",
    "sglang:token_usage",
    "llamacpp:kv_cache_usage_ratio",
];

impl EngineLoad {
    /// Reads the load figures from a Prometheus text body. NaN samples are ignored; an error when
    /// no running or waiting metric is present at all (not an inference engine we know).
    pub fn parse(text: &str) -> Result<EngineLoad, ScrapeError> {
        let mut load = EngineLoad::default();
        let mut seen = false;
        for s in prom::samples(text) {
            if s.value.is_nan() {
                continue;
            }
            if RUNNING.contains(&s.name) {
                load.running += s.value.max(0.0);
                seen = true;
            } else if WAITING.contains(&s.name) {
                load.waiting += s.value.max(0.0);
                seen = true;
            } else if KV_RATIO.contains(&s.name) {
                let v = s.value.clamp(0.0, 1.0);
                load.kv_cache_ratio = Some(load.kv_cache_ratio.map_or(v, |cur: f64| cur.max(v)));
            }
        }
        if seen {
            Ok(load)
        } else {
            Err(ScrapeError::NoLoadMetrics)
        }
    }

    /// The `tg_replica` value (saturating; `updated_unix_ms` is stamped by the writer).
    pub fn to_map_value(self) -> tollgate_common::ReplicaLoad {
        let count = |v: f64| v.round().clamp(0.0, f64::from(u32::MAX)) as u32;
        tollgate_common::ReplicaLoad {
            running: count(self.running),
            waiting: count(self.waiting),
            kv_cache_permille: self
                .kv_cache_ratio
                .map_or(0, |r| (r * 1000.0).round().clamp(0.0, 1000.0) as u32),
            _pad: 0,
            updated_unix_ms: 0,
        }
    }
}

/// One scraped replica as the latest round saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaState {
    /// The provider's configured name.
    pub provider: String,
    /// Index into `Config::providers`.
    pub provider_index: usize,
    /// The latest load; `None` until a scrape succeeded, and after a failed one (stale load must
    /// not steer anything).
    pub load: Option<EngineLoad>,
    /// When `load` was read.
    pub updated: Option<Instant>,
    /// Failed scrapes since the agent started.
    pub errors_total: u64,
    /// Why the latest scrape failed, if it did.
    pub last_error: Option<String>,
}

/// The latest state of every scraped replica, published by the telemetry thread and read
/// lock-free by `/metrics` and (later) routing.
#[derive(Default)]
pub struct ReplicaBoard {
    snapshot: ArcSwap<Vec<ReplicaState>>,
}

impl ReplicaBoard {
    /// The current snapshot (one atomic load; never blocks the publisher).
    pub fn load(&self) -> Arc<Vec<ReplicaState>> {
        self.snapshot.load_full()
    }

    /// The state of provider `index`, if it is scraped.
    pub fn get(&self, provider_index: usize) -> Option<ReplicaState> {
        self.snapshot
            .load()
            .iter()
            .find(|r| r.provider_index == provider_index)
            .cloned()
    }

    pub(crate) fn publish(&self, states: Vec<ReplicaState>) {
        self.snapshot.store(Arc::new(states));
    }
}

/// The providers that are scraped, as `(index into Config::providers, provider)`.
pub fn targets(cfg: &Config) -> Vec<(usize, &Provider)> {
    if !cfg.replicas.scrape {
        return Vec::new();
    }
    cfg.providers
        .iter()
        .enumerate()
        .filter(|(_, p)| p.kind == ProviderKind::OpenAi && !p.tls && !p.implicit)
        .collect()
}

/// GETs `path` from the first of `addrs` that accepts a connection, with `Host: host`, within
/// `timeout` in all (connect to last byte), through ureq. Only a 200 with a body under
/// [`MAX_BODY`] is an answer.
pub fn http_get(
    addrs: &[SocketAddr],
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<Vec<u8>, ScrapeError> {
    let deadline = Instant::now() + timeout;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent("tollgate")
        .build()
        .into();
    let mut last = ScrapeError::NoAddress {
        host: host.to_string(),
    };
    for addr in addrs {
        if Instant::now() >= deadline {
            return Err(ScrapeError::Timeout(timeout));
        }
        // The address the agent resolved, with the provider's own Host header.
        let response = agent
            .get(format!("http://{addr}{path}"))
            .header("host", host)
            .header("accept", "text/plain")
            .header("accept-encoding", "identity")
            .call();
        let mut response = match response {
            Ok(r) => r,
            Err(ureq::Error::Timeout(_)) => return Err(ScrapeError::Timeout(timeout)),
            Err(e) => {
                last = match e {
                    ureq::Error::Io(source) => ScrapeError::Connect {
                        addr: *addr,
                        source,
                    },
                    ureq::Error::ConnectionFailed => ScrapeError::Connect {
                        addr: *addr,
                        source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                    },
                    other => return Err(ScrapeError::Http(other.to_string())),
                };
                continue;
            }
        };
        let status = response.status().as_u16();
        if status != 200 {
            return Err(ScrapeError::Status {
                path: path.to_string(),
                status,
            });
        }
        return response
            .body_mut()
            .with_config()
            .limit(MAX_BODY as u64)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => ScrapeError::TooLarge,
                ureq::Error::Timeout(_) => ScrapeError::Timeout(timeout),
                other => ScrapeError::Http(other.to_string()),
            });
    }
    Err(last)
}

/// Scrapes one provider's `/metrics` and reads its load.
pub fn scrape(
    provider: &Provider,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<EngineLoad, ScrapeError> {
    let path = format!("{}/metrics", provider.base_path);
    let body = http_get(addrs, &provider.host_header, &path, timeout)?;
    EngineLoad::parse(&String::from_utf8_lossy(&body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// What vLLM 0.10 (V1 engine) serves, trimmed: two models, histograms, a NaN, and label
    /// values with quotes and escapes.
    const VLLM: &str = r#"# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12345.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="say \"hi\" {to} me\\you"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.0
vllm:num_requests_waiting{engine="1",model_name="say \"hi\" {to} me\\you"} NaN
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.4213
vllm:kv_cache_usage_perc{engine="1",model_name="say \"hi\" {to} me\\you"} 0.1
# HELP vllm:num_requests_running_created Not the gauge (a prefix of another name).
vllm:num_requests_running_created{engine="0"} 1.7e9
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="m"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 42.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 3.25
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 42.0
"#;

    /// vLLM before 0.10 (V0 engine): `gpu_cache_usage_perc`.
    const VLLM_V0: &str =
        "# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name=\"facebook/opt-125m\"} 1.0
# HELP vllm:num_requests_swapped Number of requests swapped to CPU.
# TYPE vllm:num_requests_swapped gauge
vllm:num_requests_swapped{model_name=\"facebook/opt-125m\"} 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name=\"facebook/opt-125m\"} 0.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name=\"facebook/opt-125m\"} 0.015625
";

    /// SGLang 0.4 (`--enable-metrics`).
    const SGLANG: &str = "# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name=\"Qwen/Qwen2.5-7B-Instruct\",tp_rank=\"0\"} 5.0
sglang:num_running_reqs{model_name=\"Qwen/Qwen2.5-7B-Instruct\",tp_rank=\"1\"} 4.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name=\"Qwen/Qwen2.5-7B-Instruct\",tp_rank=\"0\"} 11.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name=\"Qwen/Qwen2.5-7B-Instruct\",tp_rank=\"0\"} 0.87
# HELP sglang:gen_throughput The generation throughput (token/s).
# TYPE sglang:gen_throughput gauge
sglang:gen_throughput{model_name=\"Qwen/Qwen2.5-7B-Instruct\",tp_rank=\"0\"} 1234.5
";

    #[test]
    fn vllm_v1_sums_label_sets_and_skips_nan() {
        let l = EngineLoad::parse(VLLM).unwrap();
        assert_eq!(l.running, 5.0);
        assert_eq!(l.waiting, 7.0);
        assert_eq!(l.kv_cache_ratio, Some(0.4213));
        let v = l.to_map_value();
        assert_eq!((v.running, v.waiting, v.kv_cache_permille), (5, 7, 421));
    }

    #[test]
    fn vllm_v0_gpu_cache_name() {
        let l = EngineLoad::parse(VLLM_V0).unwrap();
        assert_eq!((l.running, l.waiting), (1.0, 0.0));
        assert_eq!(l.kv_cache_ratio, Some(0.015625));
        assert_eq!(l.to_map_value().kv_cache_permille, 16);
    }

    #[test]
    fn sglang_names() {
        let l = EngineLoad::parse(SGLANG).unwrap();
        assert_eq!((l.running, l.waiting), (9.0, 11.0));
        assert_eq!(l.kv_cache_ratio, Some(0.87));
    }

    #[test]
    fn unknown_engine_is_an_error() {
        let text = "# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\"} 3\n";
        assert!(matches!(
            EngineLoad::parse(text),
            Err(ScrapeError::NoLoadMetrics)
        ));
        assert!(matches!(
            EngineLoad::parse(""),
            Err(ScrapeError::NoLoadMetrics)
        ));
    }

    #[test]
    fn out_of_range_values_are_clamped() {
        let text = "vllm:num_requests_running -3\nvllm:kv_cache_usage_perc 1.7\nvllm:num_requests_waiting +Inf\n";
        let l = EngineLoad::parse(text).unwrap();
        assert_eq!(l.running, 0.0);
        assert_eq!(l.kv_cache_ratio, Some(1.0));
        let v = l.to_map_value();
        assert_eq!(
            (v.running, v.waiting, v.kv_cache_permille),
            (0, u32::MAX, 1000)
        );
    }

    /// A one-shot HTTP server on loopback answering `response` to the first request.
    fn serve_once(response: Vec<u8>) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut b).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&b[..n]);
            }
            s.write_all(&response).unwrap();
            String::from_utf8(req).unwrap()
        });
        (addr, h)
    }

    #[test]
    fn http_get_content_length_and_chunked() {
        let body = SGLANG.as_bytes();
        let mut resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        resp.extend_from_slice(body);
        let (addr, h) = serve_once(resp);
        let got = http_get(
            &[addr],
            "replica:8000",
            "/v/metrics",
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(got, body);
        let req = h.join().unwrap();
        assert!(req.starts_with("GET /v/metrics HTTP/1.1\r\n"), "{req}");
        assert!(
            req.to_ascii_lowercase()
                .contains("\r\nhost: replica:8000\r\n"),
            "the provider's Host, not the address: {req}"
        );

        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\n\r\n".to_vec();
        let (addr, _h) = serve_once(resp);
        let got = http_get(&[addr], "h", "/metrics", Duration::from_secs(2)).unwrap();
        assert_eq!(got, b"hello world");
    }

    #[test]
    fn http_get_errors() {
        let (addr, _h) =
            serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec());
        let e = http_get(&[addr], "h", "/metrics", Duration::from_secs(2)).unwrap_err();
        assert!(matches!(e, ScrapeError::Status { status: 404, .. }), "{e}");

        // Accepts and never answers: the deadline holds.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let started = Instant::now();
        let e = http_get(&[addr], "h", "/metrics", Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, ScrapeError::Timeout(_)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);

        // Nothing listens.
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = http_get(&[free], "h", "/metrics", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ScrapeError::Connect { .. }), "{e}");
        let e = http_get(&[], "h", "/metrics", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ScrapeError::NoAddress { .. }), "{e}");
    }
}
