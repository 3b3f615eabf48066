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
