//! Guardrail scan throughput (request path: every prompt byte when a guard policy is on):
//! `scan_json` over a chat request's `messages` value with every built-in detector on, for a
//! ~4 KB and a ~64 KB prompt of English prose, a code snippet (so `\n` and `\"` escapes) and a
//! few numbers, with no match; plus the same prose through `scan_text`. And the response side:
//! a 4 KB answer streamed in 4-byte deltas through a `StreamScanner` (what relay does per
//! choice), for the `pii` classes (264-byte hold) and for every class (1 KiB hold).
//! Run: `cargo bench -p tollgate-benches --bench guard -- --warm-up-time 1 --measurement-time 3`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::Arc;

use tollgate::guard::{Action, Class, DetectorConfig, Detectors, ResponseRule, StreamScanner};

const PROSE: [&str; 8] = [
    "We are migrating the billing service from the old cron-based batch jobs to an event-driven design. The main concern is idempotency: a retried message must never charge a customer twice, so every handler records the event id before it acts.",
    "Could you review the following function and tell me whether the error handling is correct? I am especially unsure about what happens when the upstream returns a partial response and the connection is closed before the final chunk arrives.",
    "The tokenizer splits the prompt into pieces before the model sees it, and the gateway estimates the count when the provider does not report usage. Last week we processed about 42 thousand requests per hour at peak, with a median latency of 180 ms.",
    "Please summarise the design document in three bullet points for the leadership update on Thursday. Keep it short, avoid jargon, and mention that the rollout is planned for version 2.3 after the security review has been signed off.",
    "In the meeting on 2024-03-12 the team agreed to deprecate the legacy endpoint. Clients still calling it get a warning header for one release and an error afterwards; the migration guide explains how to switch to the new path.",
    "Our retrieval step fetches the ten most similar passages from the vector index, ranks them again with a cross-encoder and keeps the best four. Recall improved noticeably, but latency went up, so we are looking at caching the embeddings of frequent queries.",
    "Explain like I am new to the codebase why the worker threads do not share a connection pool, and what would break if they did. A short answer with one concrete example is enough; I will read the architecture notes afterwards.",
    "The failing test is flaky on the CI machines but passes locally. It seems related to timing: the assertion runs before the background thread has flushed its buffer. Suggest a fix that does not rely on sleeping for an arbitrary amount of time.",
];

const CODE: &str = r#"fn settle(ledger: &mut Ledger, rec: &Record) -> Result<(), Error> {
    let hold = ledger.holds.remove(&rec.id).ok_or(Error::Missing(rec.id))?;
    if rec.tokens > hold.tokens {
        tracing::warn!(id = %rec.id, "usage above reservation");
    }
    ledger.spent += rec.cost_usd;
    for (i, line) in rec.lines.iter().enumerate() {
        println!("{i}: {}", line.trim());
    }
    Ok(())
}
"#;

/// A prompt of about `target` bytes: prose paragraphs with a code block every few paragraphs.
fn prompt(target: usize) -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < target {
        s.push_str(PROSE[i % PROSE.len()]);
        s.push_str("\n\n");
        if i % 5 == 4 {
            s.push_str("```rust\n");
            s.push_str(CODE);
            s.push_str("```\n\n");
        }
        i += 1;
    }
    s
}

/// The raw `messages` value of a chat request carrying `prompt` as the user turn.
fn messages(prompt: &str) -> Vec<u8> {
    let m = serde_json::json!([
        {"role": "system", "content": "You are a careful assistant for a platform team."},
        {"role": "user", "content": prompt},
    ]);
    serde_json::to_vec(&m).unwrap_or_default()
}

fn bench(c: &mut Criterion) {
    let det = Detectors::all();
    let mut g = c.benchmark_group("guard");
    for size in [4096usize, 65536] {
        let text = prompt(size);
        let value = messages(&text);
        assert!(
            det.scan_json(&value).is_empty(),
            "the bench prompt must not match"
        );
        g.throughput(Throughput::Bytes(value.len() as u64));
        g.bench_with_input(BenchmarkId::new("scan_json", size), &value, |b, v| {
            b.iter(|| det.scan_json(std::hint::black_box(v)))
        });
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_with_input(BenchmarkId::new("scan_text", size), &text, |b, t| {
            b.iter(|| det.scan_text(std::hint::black_box(t)))
        });
    }
    // One \u escape anywhere forces the decoded copy: its cost, on the 64 KB prompt.
    let mut text = prompt(65536);
    text.push_str(" caf\u{e9}");
    let value = messages(&text);
    let escaped = String::from_utf8_lossy(&value)
        .replace('\u{e9}', "\\u00e9")
        .into_bytes();
    g.throughput(Throughput::Bytes(escaped.len() as u64));
    g.bench_function("scan_json_u_escape/65536", |b| {
        b.iter(|| det.scan_json(std::hint::black_box(&escaped)))
    });
    // Response side: 4-character deltas, as models stream, each the raw JSON string body it
    // is in an event (quotes and newlines escaped).
    let answer = prompt(4096);
    let chars: Vec<char> = answer.chars().collect();
    let deltas: Vec<Vec<u8>> = chars
        .chunks(4)
        .map(|c| {
            let json = serde_json::to_string(&c.iter().collect::<String>()).expect("string");
            json.as_bytes()[1..json.len() - 1].to_vec()
        })
        .collect();
    g.throughput(Throughput::Bytes(answer.len() as u64));
    for (name, classes) in [("pii", "pii"), ("all", "all")] {
        let det = Detectors::new(&DetectorConfig {
            classes: Class::parse(classes).expect("group"),
            ..DetectorConfig::default()
        })
        .expect("detectors");
        let rules: Arc<[ResponseRule]> = Arc::from(vec![ResponseRule {
            detectors: Arc::new(det),
            action: Action::Redact,
            rule: 0,
        }]);
        g.bench_function(BenchmarkId::new("stream_4b_deltas", name), |b| {
            b.iter(|| {
                let mut s = StreamScanner::new(rules.clone());
                let (mut out, mut found) = (Vec::with_capacity(4200), Vec::new());
                for piece in &deltas {
                    s.push(piece, false, &mut out, &mut found);
                }
                s.push(b"", true, &mut out, &mut found);
                assert!(found.is_empty());
                out.len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
