//! Every streaming endpoint: the client gets a complete SSE stream (ending as its API ends), and
//! the ledger row holds the usage the simulator reported for it, not an estimate.

use serde_json::json;

use crate::harness::http::{frame_data, frame_event};
use crate::harness::{
    assert_ok_row, chat_body, messages_body, post_json, prompt_tokens, Stack, Tokens,
};

#[test]
fn chat_completions_stream() {
    let stack = Stack::start();
    let prompt = "Stream me a few tokens, please.";
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", prompt, 9, true),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/event-stream")));
    let frames = r.frames();
    assert_eq!(frames.last().map(String::as_str), Some("data: [DONE]\n\n"));
    let text = crate::harness::http::chat_stream_text(&frames);
    assert!(!text.is_empty(), "no content in {frames:?}");
    let row = stack.agent.row_of(&r);
    assert_ok_row(&row, "chat", "smol", "sim");
    assert_eq!(
        row.tokens(),
        Tokens {
            input: prompt_tokens(prompt),
            output: 9,
            ..Tokens::default()
        }
    );
    assert!(!row.estimated, "usage came from the provider: {row:#?}");
    assert!(row.ttft_us.is_some());
}

#[test]
fn completions_stream() {
    let stack = Stack::start();
    let prompt = "A streamed text completion";
    let r = post_json(
        stack.agent.addr,
        "/v1/completions",
        &json!({"model": "smol", "prompt": prompt, "max_tokens": 4, "stream": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let frames = r.frames();
    assert_eq!(frames.last().map(String::as_str), Some("data: [DONE]\n\n"));
    assert!(
        frames
            .iter()
            .filter_map(|f| frame_data(f))
            .all(|v| v.get("usage").is_none()),
        "the client did not ask for usage: {frames:?}"
    );
    let row = stack.agent.row_of(&r);
    assert_ok_row(&row, "completions", "smol", "sim");
    assert_eq!(
        row.tokens(),
        Tokens {
            input: prompt_tokens(prompt),
            output: 4,
            ..Tokens::default()
        }
    );
    assert!(!row.estimated, "{row:#?}");
}

#[test]
fn responses_stream() {
    let stack = Stack::start();
    let input = "Stream a response";
    let r = post_json(
        stack.agent.addr,
        "/v1/responses",
        &json!({"model": "smol", "input": input, "max_output_tokens": 5, "stream": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let frames = r.frames();
    let completed = frames
        .iter()
        .find(|f| frame_event(f) == Some("response.completed"))
        .unwrap_or_else(|| panic!("no response.completed in {frames:?}"));
    let completed = frame_data(completed).expect("response.completed data");
    let reported = Tokens::from_responses(&completed["response"]["usage"]);
    assert_eq!(
        reported,
        Tokens {
            input: prompt_tokens(input),
            output: 5,
            ..Tokens::default()
        }
    );
    let row = stack.agent.row_of(&r);
    assert_ok_row(&row, "responses", "smol", "sim");
    assert_eq!(row.tokens(), reported);
    assert!(!row.estimated);
}

#[test]
fn anthropic_messages_stream() {
    let stack = Stack::start();
    let (system, prompt) = ("Stream politely.", "Count to three.");
    let r = post_json(
        stack.agent.addr,
        "/v1/messages",
        &messages_body(system, prompt, 6, true),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let frames = r.frames();
    let events: Vec<&str> = frames.iter().filter_map(|f| frame_event(f)).collect();
    assert_eq!(events.first(), Some(&"message_start"), "{events:?}");
    assert_eq!(events.last(), Some(&"message_stop"), "{events:?}");
    let start = frame_data(&frames[0]).expect("message_start data");
    let delta = frames
        .iter()
        .find(|f| frame_event(f) == Some("message_delta"))
        .and_then(|f| frame_data(f))
        .expect("message_delta data");
    let mut usage = start["message"]["usage"].clone();
    usage["output_tokens"] = delta["usage"]["output_tokens"].clone();
    let reported = Tokens::from_anthropic(&usage);
    assert_eq!(reported.input, prompt_tokens(&format!("{system}{prompt}")));
    assert_eq!(reported.output, 6);
    let row = stack.agent.row_of(&r);
    assert_ok_row(&row, "messages", "claude", "sim-anthropic");
    assert_eq!(row.tokens(), reported);
    assert!(!row.estimated);
}
