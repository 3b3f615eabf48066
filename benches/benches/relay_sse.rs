//! Stream relay hot path: SSE frame splitting (as the provider's reads arrive) plus the per-frame
//! usage check, and non-streaming usage extraction.
//! Run: `cargo bench -p tollgate-benches --bench relay_sse`.

mod common;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tollgate::api::Api;
use tollgate::metering::sse::{frame_data, FrameSplitter};
use tollgate::metering::usage::{extract_usage, plain_response_facts};
use tollgate::metering::UsageAccumulator;

/// Splits `stream` (delivered in reads of `read_size` bytes) into frames and meters each.
fn relay(stream: &Bytes, read_size: usize) -> (usize, u64) {
    let mut splitter = FrameSplitter::default();
    let mut acc = UsageAccumulator::default();
    let mut frames = 0;
    let mut at = 0;
    while at < stream.len() {
        let end = (at + read_size).min(stream.len());
        splitter.push(stream.slice(at..end), |f| {
            frames += 1;
            if let Some(d) = frame_data(&f) {
                acc.observe_frame(Api::ChatCompletions, &d);
            }
        });
        at = end;
    }
    (frames, acc.finish().map_or(0, |u| u.output_tokens))
}

fn bench(c: &mut Criterion) {
    let stream = Bytes::from(common::chat_stream(256));
    let mut g = c.benchmark_group("relay_sse");
    g.throughput(Throughput::Bytes(stream.len() as u64));
    // 200: one frame per read (the usual provider write pattern); 4096/16384: many frames per read.
    for read in [200usize, 4096, 16384] {
        g.bench_with_input(
            BenchmarkId::new("split_and_meter_256_tokens", read),
            &read,
            |b, read| b.iter(|| relay(std::hint::black_box(&stream), *read)),
        );
    }
    g.finish();

    let body = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"smol","choices":[{"index":0,"message":{"role":"assistant","content":"A reasonably long answer that goes on for a while so the usage object is not at the start."},"finish_reason":"stop"}],"usage":{"prompt_tokens":900,"completion_tokens":40,"total_tokens":940,"prompt_tokens_details":{"cached_tokens":512},"completion_tokens_details":{"reasoning_tokens":0}}}"#;
    c.bench_function("usage_extract_chat_body", |b| {
        b.iter(|| extract_usage(Api::ChatCompletions, std::hint::black_box(body)))
    });
    // What the relay reads of every plain response (usage, model, fingerprint): OpenAI's
    // shape with the details objects, and a vLLM-shaped one without them.
    let vllm = br#"{"id":"cmpl-1","object":"chat.completion","created":1,"model":"smol","choices":[{"index":0,"message":{"role":"assistant","content":"A reasonably long answer that goes on for a while."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":900,"total_tokens":940,"completion_tokens":40}}"#;
    for (name, body) in [("openai", &body[..]), ("vllm", &vllm[..])] {
        c.bench_function(&format!("usage_plain_response_facts_{name}"), |b| {
            b.iter(|| plain_response_facts(Api::ChatCompletions, std::hint::black_box(body)))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
