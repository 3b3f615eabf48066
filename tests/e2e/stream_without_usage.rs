//! Providers that stream no usage at all (`--no-stream-usage`, `x-sim-no-usage`): the agent
//! estimates input and output tokens with the tokenizer and flags the row `estimated = 1`.

use serde_json::json;

use crate::harness::http::frame_data;
use crate::harness::{chat_body, messages_body, post_json, post_raw, Sim, Stack};

#[test]
fn chat_stream_from_a_provider_without_stream_usage() {
    let stack = Stack::custom(Sim::start(&["--no-stream-usage"]), |_| {});
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", "Estimate me: a few words of prompt text.", 8, true),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let frames = r.frames();
    assert!(frames
        .iter()
        .filter_map(|f| frame_data(f))
        .all(|v| v.get("usage").is_none()));
    assert_eq!(frames.last().map(String::as_str), Some("data: [DONE]\n\n"));
    let row = stack.agent.row_of(&r);
    assert_eq!(
        (row.outcome.as_str(), row.estimated),
        ("ok", true),
        "{row:#?}"
    );
    assert!(row.input_tokens > 0, "{row:#?}");
    assert!(
        (1..=16).contains(&row.output_tokens),
        "8 one-word tokens were delivered: {row:#?}"
    );
}

#[test]
fn anthropic_stream_without_usage_header() {
    let stack = Stack::start();
    let r = post_raw(
        stack.agent.addr,
        "/v1/messages",
        &[("x-sim-no-usage", "1")],
        messages_body("System words.", "User words here.", 6, true)
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains("\"usage\""), "{}", r.text());
    let row = stack.agent.row_of(&r);
    assert!(row.estimated, "{row:#?}");
    assert!(row.input_tokens > 0 && row.output_tokens > 0, "{row:#?}");
}

#[test]
fn completions_stream_without_usage_header() {
    let stack = Stack::start();
    let r = post_raw(
        stack.agent.addr,
        "/v1/completions",
        &[("x-sim-no-usage", "true")],
        json!({"model": "smol", "prompt": "count these words please", "max_tokens": 5, "stream": true})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let row = stack.agent.row_of(&r);
    assert!(row.estimated, "{row:#?}");
    assert!(row.input_tokens > 0 && row.output_tokens > 0, "{row:#?}");
}

/// A model with its own `tokenizer.json` is estimated with it, not o200k: a word-level
/// tokenizer (one token per whitespace-separated word) with one framing token per message and
/// none per request counts exactly the words of the prompt and of the streamed answer.
#[test]
fn a_models_own_tokenizer_counts_its_estimates() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../agent/tests/fixtures/word-tokenizer.json");
    let stack = Stack::custom(Sim::start(&["--no-stream-usage"]), |c| {
        c.extra_models_yaml = format!(
            "  - name: worded\n    provider: sim\n    model: {}\n    tokenizer: {{file: \"{}\", per_message: 1, per_request: 0}}\n",
            crate::harness::procs::SIM_MODEL,
            fixture.display()
        );
    });
    let prompt = "count exactly these seven words of prompt";
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("worded", prompt, 12, true),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let text = crate::harness::http::chat_stream_text(&r.frames());
    let row = stack.agent.row_of(&r);
    assert!(row.estimated, "{row:#?}");
    assert_eq!(
        row.input_tokens,
        7 + 1,
        "seven words and one message: {row:#?}"
    );
    assert_eq!(
        row.output_tokens,
        text.split_whitespace().count() as i64,
        "one token per generated word ({text:?}): {row:#?}"
    );
}

/// The value of an unlabelled metric line `name N`.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// `tokenizer: {engine: true}`: the prompt of a stream without usage is counted by the
/// engine's own `/tokenize` on the estimator thread, and so equals what the engine reports
/// when it does report usage; an engine without `/tokenize` falls back to the local count.
#[test]
fn the_engine_counts_the_prompt_when_the_model_asks_it_to() {
    let prompt = "Count me the way the engine does: its chat template, not a guess at framing.";
    let engine_model = |c: &mut crate::harness::procs::AgentConfig| {
        c.extra_models_yaml =
            "  - {name: counted, provider: sim, model: smollm2, tokenizer: {engine: true}}\n"
                .into();
    };
    let stack = Stack::custom(Sim::start(&["--no-stream-usage"]), engine_model);
    // Without streaming the engine reports usage: the exact prompt count.
    let exact = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("counted", prompt, 4, false),
    );
    assert_eq!(exact.status, 200, "{}", exact.text());
    let exact = stack.agent.row_of(&exact);
    assert!(!exact.estimated);
    let streamed = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("counted", prompt, 4, true),
    );
    assert_eq!(streamed.status, 200, "{}", streamed.text());
    let row = stack.agent.row_of(&streamed);
    assert!(row.estimated, "{row:#?}");
    assert_eq!(
        row.input_tokens, exact.input_tokens,
        "the engine's count: {row:#?}"
    );
    assert_eq!(row.output_tokens, 4, "output is counted locally: {row:#?}");
    let m = stack.agent.metrics();
    assert_eq!(metric(&m, "tollgate_estimator_engine_counts_total"), 1);
    assert_eq!(metric(&m, "tollgate_estimator_engine_errors_total"), 0);
    // Without the engine, o200k and OpenAI framing guess differently for this prompt.
    let local = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", prompt, 4, true),
    );
    let local = stack.agent.row_of(&local);
    eprintln!(
        "prompt tokens: engine {} (exact {}), o200k {}",
        row.input_tokens, exact.input_tokens, local.input_tokens
    );
    assert_ne!(local.input_tokens, exact.input_tokens);

    // An engine without /tokenize: counted locally, and the failure counted.
    let stack = Stack::custom(
        Sim::start(&["--no-stream-usage", "--no-tokenize"]),
        engine_model,
    );
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("counted", prompt, 4, true),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let row = stack.agent.row_of(&r);
    assert!(
        row.estimated && row.input_tokens == local.input_tokens,
        "{row:#?}"
    );
    // An engine that failed is left alone for a while: the next estimates do not ask it.
    for _ in 0..2 {
        let r = post_json(
            stack.agent.addr,
            "/v1/chat/completions",
            &chat_body("counted", prompt, 4, true),
        );
        assert!(stack.agent.row_of(&r).estimated);
    }
    let m = stack.agent.metrics();
    assert_eq!(metric(&m, "tollgate_estimator_engine_errors_total"), 1);
}
