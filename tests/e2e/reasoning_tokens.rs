//! Reasoning tokens: when reasoning is requested the simulator reports half the completion as
//! reasoning, and the ledger's `reasoning_tokens` (a subset of `output_tokens`) matches it.

use serde_json::json;

use crate::harness::http::{frame_data, frame_event};
use crate::harness::{post_json, Stack, Tokens};

#[test]
fn chat_reasoning_effort() {
    let stack = Stack::start();
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &json!({
            "model": "smol",
            "messages": [{"role": "user", "content": "think about it"}],
            "max_completion_tokens": 10,
            "reasoning_effort": "low",
        }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let reported = Tokens::from_openai(&r.json()["usage"]);
    assert_eq!((reported.output, reported.reasoning), (10, 5));
    assert_eq!(stack.agent.row_of(&r).tokens(), reported);
}

#[test]
fn responses_reasoning_plain_and_streamed() {
    let stack = Stack::start();
    let body = |stream: bool| {
        json!({
            "model": "smol",
            "input": "reason, then answer",
            "max_output_tokens": 8,
            "reasoning": {"effort": "high"},
            "stream": stream,
        })
    };
    let plain = post_json(stack.agent.addr, "/v1/responses", &body(false));
    let reported = Tokens::from_responses(&plain.json()["usage"]);
    assert_eq!((reported.output, reported.reasoning), (8, 4));
    assert_eq!(stack.agent.row_of(&plain).tokens(), reported);

    let streamed = post_json(stack.agent.addr, "/v1/responses", &body(true));
    let completed = streamed
        .frames()
        .into_iter()
        .find(|f| frame_event(f) == Some("response.completed"))
        .and_then(|f| frame_data(&f))
        .expect("response.completed");
    let reported = Tokens::from_responses(&completed["response"]["usage"]);
    assert_eq!(reported.reasoning, 4);
    let row = stack.agent.row_of(&streamed);
    assert_eq!(row.tokens(), reported);
    assert!(!row.estimated);
}
