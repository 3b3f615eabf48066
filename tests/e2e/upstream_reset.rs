//! A provider that resets the connection mid-stream (`x-sim-reset-after: N`): the client gets an
//! error event in its API's shape and then a cut connection (no final chunk); the ledger says
//! `upstream_reset` and bills an estimate of what was delivered (`estimated = 1`).

use serde_json::Value;

use crate::harness::http::{frame_data, frame_event, request_bytes};
use crate::harness::{chat_body, messages_body, prompt_tokens, Client, Stack};

/// Reads frames until the body ends; returns them and whether it ended cleanly.
fn read_until_cut(
    stack: &Stack,
    path: &str,
    body: &Value,
    reset_after: &str,
) -> (String, Vec<String>, bool) {
    let mut client = Client::connect(stack.agent.addr);
    client
        .send(&request_bytes(
            "POST",
            path,
            &[("x-sim-reset-after", reset_after)],
            body.to_string().as_bytes(),
        ))
        .expect("sending");
    let head = client.read_head().expect("head");
    assert_eq!(head.status, 200, "the stream had started");
    let id = head
        .header("x-tollgate-request-id")
        .expect("request id")
        .to_string();
    let mut frames = Vec::new();
    let clean = loop {
        match client.next_frame() {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => break true,
            Err(_) => break false,
        }
    };
    (id, frames, clean)
}

#[test]
fn chat_stream_reset_after_three_frames() {
    let stack = Stack::start();
    let prompt = "This stream will break.";
    let (id, frames, clean) = read_until_cut(
        &stack,
        "/v1/chat/completions",
        &chat_body("smol", prompt, 20, true),
        "3",
    );
    assert!(
        !clean,
        "the body must not end cleanly after a reset: {frames:#?}"
    );
    let last = frames.last().expect("some frames");
    let error = frame_data(last).unwrap_or_else(|| panic!("last frame is not JSON: {last:?}"));
    assert_eq!(error["error"]["type"], "api_error", "{last}");
    assert!(error["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(!frames.iter().any(|f| f == "data: [DONE]\n\n"));
    let tokens_seen = frames
        .iter()
        .filter_map(|f| frame_data(f))
        .filter(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        })
        .count();
    assert!(tokens_seen >= 1, "{frames:#?}");

    let row = stack.agent.ledger_row(&id);
    assert_eq!(row.outcome, "upstream_reset", "{row:#?}");
    assert!(row.estimated, "{row:#?}");
    assert!(
        row.output_tokens > 0,
        "delivered tokens are billed: {row:#?}"
    );
    assert!(row.output_tokens < 20, "only what was delivered: {row:#?}");
    assert!(row.input_tokens > 0, "{row:#?}");
}

#[test]
fn anthropic_stream_reset_sends_an_error_event() {
    let stack = Stack::start();
    let (system, prompt) = ("Break", "this stream");
    let (id, frames, clean) = read_until_cut(
        &stack,
        "/v1/messages",
        &messages_body(system, prompt, 20, true),
        "5",
    );
    assert!(!clean, "{frames:#?}");
    let last = frames.last().expect("frames");
    assert_eq!(frame_event(last), Some("error"), "{last}");
    let error = frame_data(last).expect("error data");
    assert_eq!(error["type"], "error", "{error}");
    assert!(error["error"]["type"].is_string(), "{error}");

    let row = stack.agent.ledger_row(&id);
    assert_eq!(row.outcome, "upstream_reset", "{row:#?}");
    assert!(row.estimated);
    assert_eq!(
        row.input_tokens,
        prompt_tokens(&format!("{system}{prompt}")),
        "input from message_start: {row:#?}"
    );
    assert!(row.output_tokens > 0, "{row:#?}");
}
