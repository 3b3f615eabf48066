//! Token estimation (runs off the request path, on the control thread): exact BPE counts of a
//! prompt, to size the cost of estimating when a provider omits usage.
//! Run: `cargo bench -p tollgate-benches --bench estimate`.

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tollgate::metering::estimate::{count_tokens, estimate_input};
use tollgate::phase::inspect::inspect_body;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("estimate");
    for size in [1024usize, 4096] {
        let body = common::chat_body(size, false);
        let ins = inspect_body(&body).unwrap_or_default();
        g.throughput(Throughput::Bytes(ins.prompt_bytes as u64));
        g.bench_with_input(
            BenchmarkId::new("prompt_tokens_o200k", size),
            &body,
            |b, body| b.iter(|| estimate_input(std::hint::black_box(body), &ins.prompt_spans)),
        );
    }
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(90);
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("count_tokens_4k_text", |b| {
        b.iter(|| count_tokens(std::hint::black_box(&text)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
