//! Inspection pass over a chat request: Tollgate's sonic-rs lazy pass against simd-json
//! (which parses in place, so it needs a copy) and serde_json's DOM, extracting the same fields.
//! Run: `cargo bench -p tollgate-benches --bench inspect_json`.

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use simd_json::prelude::*;
use tollgate::phase::inspect::inspect_body;

/// The fields Tollgate needs, read through simd-json's borrowed DOM.
fn simd_json_fields(body: &[u8]) -> (usize, bool, u64, usize) {
    let mut copy = body.to_vec();
    let Ok(v) = simd_json::to_borrowed_value(&mut copy) else {
        return (0, false, 0, 0);
    };
    let model = v.get_str("model").map_or(0, str::len);
    let stream = v.get_bool("stream").unwrap_or(false);
    let max = v.get_u64("max_tokens").unwrap_or(0);
    let mut text = 0;
    if let Some(msgs) = v.get_array("messages") {
        for m in msgs {
            text += m.get_str("content").map_or(0, str::len);
        }
    }
    (model, stream, max, text)
}

fn serde_json_fields(body: &[u8]) -> (usize, bool, u64, usize) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (0, false, 0, 0);
    };
    let model = v["model"].as_str().map_or(0, str::len);
    let stream = v["stream"].as_bool().unwrap_or(false);
    let max = v["max_tokens"].as_u64().unwrap_or(0);
    let text = v["messages"].as_array().map_or(0, |a| {
        a.iter()
            .map(|m| m["content"].as_str().map_or(0, str::len))
            .sum()
    });
    (model, stream, max, text)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("inspect_json");
    for size in [1024usize, 4096, 65536] {
        let body = common::chat_body(size, true);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("tollgate_sonic_rs_lazy", size),
            &body,
            |b, body| b.iter(|| inspect_body(std::hint::black_box(body)).map(|i| i.prompt_bytes)),
        );
        g.bench_with_input(
            BenchmarkId::new("simd_json_borrowed_with_copy", size),
            &body,
            |b, body| b.iter(|| simd_json_fields(std::hint::black_box(body))),
        );
        g.bench_with_input(
            BenchmarkId::new("serde_json_value", size),
            &body,
            |b, body| b.iter(|| serde_json_fields(std::hint::black_box(body))),
        );
    }
    g.finish();

    // The depth guard that runs before the pass (included in `tollgate_sonic_rs_lazy` above):
    // alone, on the same bodies, and on a 4.7 MB embeddings response (numbers, no strings to skip:
    // its worst case).
    let mut g = c.benchmark_group("json_depth_guard");
    for size in [1024usize, 4096, 65536] {
        let body = common::chat_body(size, true);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("chat_body", size), &body, |b, body| {
            b.iter(|| tollgate::json::depth_exceeds(std::hint::black_box(body), 128))
        });
    }
    let embeddings: String = {
        let items: Vec<String> = (0..20_000)
            .map(|i| format!("{{\"object\":\"embedding\",\"index\":{i},\"embedding\":[0.1234567,-0.2345678,0.3456789,-0.4567891,0.5678912,-0.6789123,0.7891234,-0.8912345,0.1234567,-0.2345678,0.3456789,-0.4567891,0.5678912,-0.6789123,0.7891234,-0.8912345]}}"))
            .collect();
        format!("{{\"object\":\"list\",\"data\":[{}]}}", items.join(","))
    };
    g.throughput(Throughput::Bytes(embeddings.len() as u64));
    g.bench_function("embeddings_response_4.7MB", |b| {
        b.iter(|| tollgate::json::depth_exceeds(std::hint::black_box(embeddings.as_bytes()), 128))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
