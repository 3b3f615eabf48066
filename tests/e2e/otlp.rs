//! OTLP export end to end: request spans reach a receiver built on the official OpenTelemetry
//! protobuf definitions (`tests/python/otlp_receiver.py`), with the GenAI attributes and
//! Tollgate's; a collector that is down costs requests nothing, and every lost span is counted.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::procs::{Proc, TempDir};
use crate::harness::{post_raw, Response, Sim, Stack};

/// The SDK venv's python (opentelemetry-proto is installed there), or `None` to skip.
fn python() -> Option<PathBuf> {
    crate::harness::venv::python("TOLLGATE_SDK_PYTHON", ".venv", "opentelemetry.proto")
}

/// The receiver, and the file it appends spans to.
fn receiver(dir: &TempDir) -> Option<(Proc, std::net::SocketAddr, PathBuf)> {
    let python = python()?;
    let out = dir.path().join("spans.jsonl");
    let mut cmd = Command::new(python);
    cmd.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/otlp_receiver.py"))
        .arg(&out);
    let (proc, addr) =
        Proc::spawn("otlp-receiver", cmd, dir.path(), "otlp-receiver").expect("the receiver");
    Some((proc, addr, out))
}

fn ask(stack: &Stack, team: &str, stream: bool) -> Response {
    let body = json!({"model": "smol", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "stream": stream});
    crate::harness::chat_as_team(stack.agent.addr, team, &body)
}

fn spans(path: &PathBuf, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let spans: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if spans.len() >= n || Instant::now() > deadline {
            return spans;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

#[test]
fn request_spans_follow_the_genai_conventions_and_join_their_ledger_rows() {
    let dir = TempDir::new("otlp");
    let Some((_receiver, addr, out)) = receiver(&dir) else {
        return;
    };
    let stack = Stack::custom(Sim::start(&[]), |c| {
        c.governance_yaml.push_str(&format!(
            "prices:\n  smol: {{input: 2.0, output: 8.0}}\n\
             otlp: {{endpoint: \"http://{addr}/v1/traces\", flush_ms: 100, service_name: tollgate-test}}\n"
        ));
    });
    let plain = ask(&stack, "search", false);
    let streamed = ask(&stack, "ads", true);
    // A client that started a trace: the request's span joins it, under the client's span.
    let traced = post_raw(
        stack.agent.addr,
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ],
        json!({"model": "smol", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(traced.status, 200);
    let forwarded = crate::harness::get(stack.sim.addr, "/sim/last-request").json();
    assert_eq!(
        forwarded["headers"]["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "the provider gets the client's trace context"
    );
    let got = spans(&out, 3);
    assert_eq!(got.len(), 3, "{got:#?}");
    let child = got
        .iter()
        .find(|s| {
            attr(s, "tollgate.request_id").and_then(|v| v["stringValue"].as_str())
                == Some(traced.request_id())
        })
        .expect("the traced request's span");
    assert_eq!(child["traceIdHex"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(child["parentSpanIdHex"], "00f067aa0ba902b7");
    for (r, team) in [(&plain, "search"), (&streamed, "ads")] {
        let id = r.request_id();
        let row = stack.agent.row_of(r);
        let span = got
            .iter()
            .find(|s| {
                attr(s, "tollgate.request_id").and_then(|v| v["stringValue"].as_str()) == Some(id)
            })
            .unwrap_or_else(|| panic!("no span for {id}: {got:#?}"));
        assert_eq!(span["name"], "chat smol");
        assert_eq!(span["kind"], "SPAN_KIND_CLIENT");
        assert_eq!(span["scope"], "tollgate");
        assert_eq!(
            attr(span, "gen_ai.operation.name").unwrap()["stringValue"],
            "chat"
        );
        assert_eq!(
            attr(span, "gen_ai.request.model").unwrap()["stringValue"],
            "smol"
        );
        assert!(attr(span, "gen_ai.response.model").is_some(), "{span}");
        assert!(attr(span, "gen_ai.provider.name").is_some(), "{span}");
        // int64 values are strings in the protobuf JSON mapping.
        assert_eq!(
            attr(span, "gen_ai.usage.input_tokens").unwrap()["intValue"],
            row.input_tokens.to_string()
        );
        assert_eq!(
            attr(span, "gen_ai.usage.output_tokens").unwrap()["intValue"],
            row.output_tokens.to_string()
        );
        assert_eq!(attr(span, "tollgate.team").unwrap()["stringValue"], team);
        let cost = attr(span, "tollgate.cost_usd").unwrap()["doubleValue"]
            .as_f64()
            .unwrap();
        assert!(
            (cost - row.cost_micro_usd as f64 / 1e6).abs() < 1e-9,
            "{cost} vs {row:?}"
        );
        // The trace id is derived from the request id: a row joins its trace.
        let trace = sha2_hex16(id);
        assert_eq!(span["traceIdHex"], trace);
        assert_eq!(
            span["parentSpanIdHex"], "",
            "a root span without a client trace"
        );
        let resource = &span["resource"]["attributes"];
        assert!(resource.to_string().contains("tollgate-test"), "{resource}");
        let (start, end) = (
            span["startTimeUnixNano"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap(),
            span["endTimeUnixNano"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
        assert_eq!(end - start, row.latency_us as u64 * 1000);
    }
    // The stream's time to first token is an event.
    let stream_span = got
        .iter()
        .find(|s| attr(s, "tollgate.team").is_some_and(|v| v["stringValue"] == "ads"))
        .unwrap();
    assert_eq!(
        stream_span["events"][0]["name"], "gen_ai.first_token",
        "{stream_span}"
    );
    let m = stack.agent.metrics();
    assert!(m.contains("tollgate_otlp_spans_exported_total 3"), "{m}");
}

/// Hex of the first 16 bytes of SHA-256(s), computed by the receiver's python (no extra crate).
fn sha2_hex16(s: &str) -> String {
    let py = python().expect("the receiver's python ran already");
    let out = Command::new(py)
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest()[:32])",
            s,
        ])
        .output()
        .expect("python");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_collector_that_is_down_costs_requests_nothing_and_every_lost_span_is_counted() {
    // Nothing listens on this port: every export fails (and is retried twice).
    let dead = crate::harness::procs::free_port();
    let stack = Stack::custom(Sim::start(&[]), |c| {
        c.governance_yaml.push_str(&format!(
            "otlp: {{endpoint: \"http://127.0.0.1:{dead}/v1/traces\", batch: 2, queue: 4, flush_ms: 50, timeout_ms: 200}}\n"
        ));
    });
    let n = 12;
    for i in 0..n {
        ask(&stack, if i % 2 == 0 { "a" } else { "b" }, false);
    }
    let metric = |m: &str, name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    };
    // Each span is either refused by the full queue or dropped after three failed exports.
    let deadline = Instant::now() + Duration::from_secs(15);
    let m = loop {
        let m = stack.agent.metrics();
        if metric(&m, "tollgate_otlp_spans_dropped_total") >= n || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(metric(&m, "tollgate_otlp_spans_dropped_total"), n, "{m}");
    assert_eq!(metric(&m, "tollgate_otlp_spans_exported_total"), 0, "{m}");
    assert!(
        metric(&m, "tollgate_otlp_export_failures_total") >= 3,
        "{m}"
    );
}
