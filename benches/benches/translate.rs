//! What translation costs (`agent/src/translate`): a ~2 KB chat request with tools rebuilt as
//! an Anthropic request and back, a complete response each way, and one stream frame each way
//! (the per-chunk cost of a translated stream).
//! Run: `cargo bench -p tollgate-benches --bench translate`.

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate::translate::{request, response, Direction, Stream};

fn chat_request() -> Vec<u8> {
    let history: Vec<serde_json::Value> = (0..8)
        .map(|i| {
            serde_json::json!({
                "role": if i % 2 == 0 { "user" } else { "assistant" },
                "content": format!("message {i}: {}", "some prompt text ".repeat(10)),
            })
        })
        .collect();
    let mut messages = vec![serde_json::json!({"role": "system", "content": "You are terse."})];
    messages.extend(history);
    serde_json::to_vec(&serde_json::json!({
        "model": "smart",
        "max_tokens": 256,
        "stream": true,
        "messages": messages,
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
    }))
    .unwrap_or_default()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("translate");
    let chat = chat_request();
    g.bench_function("request_chat_to_messages_2kb", |b| {
        b.iter(|| request(Direction::ChatToMessages, &chat, "claude-x").map(|v| v.len()))
    });
    let messages = request(Direction::ChatToMessages, &chat, "claude-x").unwrap_or_default();
    g.bench_function("request_messages_to_chat_2kb", |b| {
        b.iter(|| request(Direction::MessagesToChat, &messages, "qwen").map(|v| v.len()))
    });
    let anthropic_reply = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"It is sunny in Paris today, 21 degrees."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":512,"output_tokens":12,"cache_read_input_tokens":128}}"#;
    g.bench_function("response_messages_to_chat_client", |b| {
        b.iter(|| response(Direction::ChatToMessages, 200, anthropic_reply, "smart").len())
    });
    let openai_reply = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"qwen","choices":[{"index":0,"message":{"role":"assistant","content":"It is sunny in Paris today, 21 degrees."},"finish_reason":"stop"}],"usage":{"prompt_tokens":640,"completion_tokens":12,"total_tokens":652}}"#;
    g.bench_function("response_chat_to_messages_client", |b| {
        b.iter(|| response(Direction::MessagesToChat, 200, openai_reply, "smart").len())
    });
    let anthropic_delta: &[u8] = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" sunny\"}}\n\n";
    let mut to_openai = Stream::new(Direction::ChatToMessages, "smart", true);
    let mut warm = Vec::new();
    to_openai.frame(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n", &mut warm);
    to_openai.frame(b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n", &mut warm);
    let mut out = Vec::with_capacity(4);
    g.bench_function("stream_frame_anthropic_to_openai_client", |b| {
        b.iter(|| {
            out.clear();
            to_openai.frame(anthropic_delta, &mut out);
            out.len()
        })
    });
    let openai_chunk: &[u8] = b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"qwen\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" sunny\"},\"finish_reason\":null}]}\n\n";
    let mut to_anthropic = Stream::new(Direction::MessagesToChat, "smart", false);
    to_anthropic.frame(openai_chunk, &mut warm);
    g.bench_function("stream_frame_openai_to_anthropic_client", |b| {
        b.iter(|| {
            out.clear();
            to_anthropic.frame(openai_chunk, &mut out);
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
