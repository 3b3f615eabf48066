//! A client that drops the connection mid-stream is still billed in full: the agent keeps reading
//! the provider until usage arrives, and the ledger row says `client_disconnected` with the
//! provider's whole completion (`max_tokens`) as output, not an estimate.

use std::time::Duration;

use crate::harness::http::request_bytes;
use crate::harness::{chat_body, messages_body, prompt_tokens, Client, Sim, Stack};

/// Completion length: at 25 ms per token the stream lasts about a second, long after the client
/// has gone.
const MAX_TOKENS: u64 = 40;

/// Sends a streaming request, reads the head and two frames, and drops the connection.
/// Returns the request id.
fn read_two_frames_and_drop(stack: &Stack, path: &str, body: &serde_json::Value) -> String {
    let mut client = Client::connect(stack.agent.addr);
    client
        .send(&request_bytes(
            "POST",
            path,
            &[],
            body.to_string().as_bytes(),
        ))
        .expect("sending the request");
    let head = client.read_head().expect("response head");
    assert_eq!(head.status, 200);
    let id = head
        .header("x-tollgate-request-id")
        .expect("x-tollgate-request-id")
        .to_string();
    for n in 0..2 {
        let frame = client
            .next_frame()
            .expect("reading a frame")
            .unwrap_or_else(|| panic!("stream ended after {n} frames"));
        assert!(frame.contains("data: "), "{frame:?}");
    }
    drop(client);
    id
}

fn paced_stack() -> Stack {
    Stack::custom(Sim::start_paced(&["--itl-base-ms", "25"]), |_| {})
}

#[test]
fn chat_stream_dropped_after_two_frames_is_billed_in_full() {
    let stack = paced_stack();
    let prompt = "Tell me a long story; I will hang up early.";
    let id = read_two_frames_and_drop(
        &stack,
        "/v1/chat/completions",
        &chat_body("smol", prompt, MAX_TOKENS, true),
    );
    let row = stack.agent.ledger_row(&id);
    assert_eq!(row.outcome, "client_disconnected", "{row:#?}");
    assert_eq!(
        (row.input_tokens, row.output_tokens, row.estimated),
        (prompt_tokens(prompt), MAX_TOKENS as i64, false),
        "billed the provider's full usage: {row:#?}"
    );

    // The agent is fine afterwards.
    let mut client = Client::connect(stack.agent.addr);
    client.set_read_timeout(Duration::from_secs(20));
    let r = client.request(
        "POST",
        "/v1/chat/completions",
        &[],
        chat_body("smol", "still there?", 1, false)
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn anthropic_stream_dropped_after_two_frames_is_billed_in_full() {
    let stack = paced_stack();
    let (system, prompt) = ("Be long-winded.", "Describe the sea.");
    let id = read_two_frames_and_drop(
        &stack,
        "/v1/messages",
        &messages_body(system, prompt, MAX_TOKENS, true),
    );
    let row = stack.agent.ledger_row(&id);
    assert_eq!(row.outcome, "client_disconnected", "{row:#?}");
    assert_eq!(
        (row.input_tokens, row.output_tokens, row.estimated),
        (
            prompt_tokens(&format!("{system}{prompt}")),
            MAX_TOKENS as i64,
            false
        ),
        "{row:#?}"
    );
}
