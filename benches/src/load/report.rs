//! Turns a run's [`Outcome`] into the JSON document `tollgate-load` prints.
//!
//! Why it exists: `cargo xtask bench` and people read the same numbers, so the JSON shape is defined in one
//! place: latencies in µs (one decimal), rates per second, error counts by cause. Not on the hot path.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::engine::{Mode, Outcome, Plan};

/// Percentile summary of a nanosecond histogram, in µs.
pub fn summary_us(hist: &Histogram<u64>) -> Value {
    if hist.is_empty() {
        return Value::Null;
    }
    let at = |q: f64| us(hist.value_at_quantile(q));
    json!({
        "count": hist.len(),
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": us(hist.max()),
        "mean": (hist.mean() / 100.0).round() / 10.0,
    })
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

/// The whole report for one run.
pub fn to_json(plan: &Plan, out: &Outcome) -> Value {
    let secs = out.elapsed.as_secs_f64();
    let completed = out.ok + out.status_errors;
    let rate = |n: u64| {
        if secs > 0.0 {
            ((n as f64 / secs) * 10.0).round() / 10.0
        } else {
            0.0
        }
    };
    let (mode, offered) = match plan.mode {
        Mode::Closed => ("closed", Value::Null),
        Mode::Open(schedule) => ("open", json!(schedule.rate())),
    };
    let generator_cpu_us_per_req = if out.sent_total > 0 {
        json!((out.generator_cpu.as_secs_f64() * 1e7 / out.sent_total as f64).round() / 10.0)
    } else {
        Value::Null
    };
    json!({
        "target": plan.target.to_string(),
        "mode": mode,
        "connections": plan.connections,
        "offered_rps": offered,
        "duration_s": plan.duration.as_secs_f64(),
        "elapsed_s": (secs * 1000.0).round() / 1000.0,
        "requests": completed,
        "ok": out.ok,
        "sent": out.sent_total,
        "rps": rate(completed),
        "errors": {
            "status": out.status_errors,
            "io": out.io_errors,
            "connect": out.connect_errors,
            "unfinished": out.unfinished,
            "by_status": out.statuses.iter().map(|(code, n)| (code.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "first": out.first_error,
        },
        "latency_us": summary_us(&out.latency),
        "ttft_us": summary_us(&out.ttft),
        "send_lag_us": match plan.mode {
            Mode::Closed => Value::Null,
            Mode::Open(_) => summary_us(&out.send_lag),
        },
        "generator_cpu_us_per_req": generator_cpu_us_per_req,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_converts_ns_to_us() {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3).expect("bounds");
        for v in [1_000u64, 2_000, 3_000, 4_000] {
            hist.record(v).expect("in range");
        }
        let s = summary_us(&hist);
        assert_eq!(s["count"], 4);
        assert_eq!(s["p50"], 2.0);
        assert_eq!(s["max"], 4.0);
        assert_eq!(s["mean"], 2.5);
    }

    #[test]
    fn empty_histogram_is_null() {
        let hist = Histogram::<u64>::new_with_bounds(1, 1_000, 3).expect("bounds");
        assert!(summary_us(&hist).is_null());
    }
}
