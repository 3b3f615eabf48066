//! Prometheus metrics under the names vLLM uses, so the gateway's replica scraper and dashboards
//! read the simulator exactly as they read a real replica.
//!
//! Counters are atomics updated on the request path (relaxed; a scrape may see a request's
//! counters half-updated, as with any Prometheus client). Rendering happens only on `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Why a sequence finished, as vLLM labels `vllm:request_success_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model stopped on its own (the request set no limit).
    Stop,
    /// The request's token limit was reached.
    Length,
}

impl Finish {
    pub fn openai(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }

    pub fn anthropic(self) -> &'static str {
        match self {
            Finish::Stop => "end_turn",
            Finish::Length => "max_tokens",
        }
    }
}

/// vLLM's bucket bounds for `vllm:time_to_first_token_seconds`.
const TTFT_BUCKETS_S: [f64; 22] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// The plain per-model series: name, type, help, and the counter behind it.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ModelMetrics) -> &AtomicU64,
);

const PER_MODEL: [Series; 6] = [
    (
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        |m| &m.running,
    ),
    (
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        |m| &m.waiting,
    ),
    (
        "vllm:prefix_cache_queries_total",
        "counter",
        "Prefix cache queries, in terms of number of queried tokens.",
        |m| &m.prefix_queries_tokens,
    ),
    (
        "vllm:prefix_cache_hits_total",
        "counter",
        "Prefix cache hits, in terms of number of cached tokens.",
        |m| &m.prefix_hits_tokens,
    ),
    (
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        |m| &m.prompt_tokens,
    ),
    (
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        |m| &m.generation_tokens,
    ),
];

/// Counters of one served model.
#[derive(Debug, Default)]
pub struct ModelMetrics {
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queries_tokens: AtomicU64,
    /// Prompt tokens found in the prefix cache.
    pub prefix_hits_tokens: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    success_stop: AtomicU64,
    success_length: AtomicU64,
    /// Per bucket (not cumulative); the last slot is +Inf.
    ttft_buckets: [AtomicU64; TTFT_BUCKETS_S.len() + 1],
    ttft_sum_ns: AtomicU64,
}

impl ModelMetrics {
    pub fn finished(&self, finish: Finish, generated_tokens: u64) {
        self.generation_tokens.fetch_add(generated_tokens, Relaxed);
        match finish {
            Finish::Stop => &self.success_stop,
            Finish::Length => &self.success_length,
        }
        .fetch_add(1, Relaxed);
    }

    pub fn observe_ttft(&self, ttft: Duration) {
        let seconds = ttft.as_secs_f64();
        let bucket = TTFT_BUCKETS_S
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(TTFT_BUCKETS_S.len());
        self.ttft_buckets[bucket].fetch_add(1, Relaxed);
        self.ttft_sum_ns
            .fetch_add(u64::try_from(ttft.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }
}

/// All counters, one set per served model (index = position in `--model`).
#[derive(Debug)]
pub struct Metrics {
    names: Vec<String>,
    models: Vec<ModelMetrics>,
}

impl Metrics {
    pub fn new(models: &[String]) -> Self {
        Metrics {
            names: models.iter().map(|m| escape_label(m)).collect(),
            models: models.iter().map(|_| ModelMetrics::default()).collect(),
        }
    }

    /// The counters of model `index`; an index past the end (never produced by the server) maps to
    /// the first model rather than panicking.
    pub fn model(&self, index: usize) -> &ModelMetrics {
        self.models.get(index).unwrap_or(&self.models[0])
    }

    /// Prometheus text exposition. `kv_usage` is the engine-wide cache fill, 0 to 1.
    pub fn render(&self, kv_usage: f64) -> String {
        let mut out = String::with_capacity(4096);
        let rows = || self.names.iter().zip(&self.models);
        for (name, kind, help, counter) in PER_MODEL {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (label, m) in rows() {
                let value = counter(m).load(Relaxed);
                let _ = writeln!(out, "{name}{{model_name=\"{label}\"}} {value}");
            }
        }

        out.push_str(
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n",
        );
        out.push_str("# TYPE vllm:kv_cache_usage_perc gauge\n");
        for (label, _) in rows() {
            let _ = writeln!(
                out,
                "vllm:kv_cache_usage_perc{{model_name=\"{label}\"}} {kv_usage}"
            );
        }

        out.push_str(
            "# HELP vllm:request_success_total Count of successfully processed requests.\n",
        );
        out.push_str("# TYPE vllm:request_success_total counter\n");
        for (label, m) in rows() {
            for (reason, count) in [("stop", &m.success_stop), ("length", &m.success_length)] {
                let _ = writeln!(
                    out,
                    "vllm:request_success_total{{finished_reason=\"{reason}\",model_name=\"{label}\"}} {}",
                    count.load(Relaxed)
                );
            }
        }

        out.push_str("# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.\n");
        out.push_str("# TYPE vllm:time_to_first_token_seconds histogram\n");
        for (label, m) in rows() {
            let mut cumulative = 0;
            for (i, count) in m.ttft_buckets.iter().enumerate() {
                cumulative += count.load(Relaxed);
                let le = TTFT_BUCKETS_S
                    .get(i)
                    .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
                let _ = writeln!(
                    out,
                    "vllm:time_to_first_token_seconds_bucket{{le=\"{le}\",model_name=\"{label}\"}} {cumulative}"
                );
            }
            let sum_s = m.ttft_sum_ns.load(Relaxed) as f64 / 1e9;
            let _ = writeln!(
                out,
                "vllm:time_to_first_token_seconds_sum{{model_name=\"{label}\"}} {sum_s}\n\
                 vllm:time_to_first_token_seconds_count{{model_name=\"{label}\"}} {cumulative}"
            );
        }
        out
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_vllm_names_with_model_label() {
        let metrics = Metrics::new(&["m\"1".to_string()]);
        let m = metrics.model(0);
        m.prompt_tokens.fetch_add(7, Relaxed);
        m.finished(Finish::Length, 5);
        m.observe_ttft(Duration::from_millis(30));
        let text = metrics.render(0.25);
        assert!(text.contains("vllm:prompt_tokens_total{model_name=\"m\\\"1\"} 7\n"));
        assert!(text.contains("vllm:generation_tokens_total{model_name=\"m\\\"1\"} 5\n"));
        assert!(text.contains("vllm:kv_cache_usage_perc{model_name=\"m\\\"1\"} 0.25\n"));
        assert!(text.contains(
            "vllm:request_success_total{finished_reason=\"length\",model_name=\"m\\\"1\"} 1\n"
        ));
        assert!(text.contains(
            "vllm:time_to_first_token_seconds_bucket{le=\"0.02\",model_name=\"m\\\"1\"} 0\n"
        ));
        assert!(text.contains(
            "vllm:time_to_first_token_seconds_bucket{le=\"0.04\",model_name=\"m\\\"1\"} 1\n"
        ));
        assert!(text.contains("vllm:time_to_first_token_seconds_count{model_name=\"m\\\"1\"} 1\n"));
        for name in [
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:prefix_cache_queries_total",
            "vllm:prefix_cache_hits_total",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }
}
