//! Large provider responses pass through intact: a 150 KB JSON body and a 4000-token stream reach
//! the client exactly as the simulator sends them directly, and are metered in full.

use serde_json::json;

use crate::harness::{chat_body, post_json, Stack};

#[test]
fn large_json_response_is_identical_to_the_direct_one() {
    let stack = Stack::start();
    let body = |model: &str| {
        json!({
            "model": model,
            "messages": [{"role": "user", "content": "write a lot"}],
            "max_tokens": 4000,
            "n": 7,
        })
    };
    let via_agent = post_json(stack.agent.addr, "/v1/chat/completions", &body("smol"));
    let direct = post_json(stack.sim.addr, "/v1/chat/completions", &body("smollm2"));
    assert_eq!(via_agent.status, 200, "{}", via_agent.text());
    assert!(
        via_agent.body.len() > 100_000,
        "{} bytes",
        via_agent.body.len()
    );
    let (a, d) = (via_agent.json(), direct.json());
    assert!(
        a["choices"] == d["choices"],
        "choices differ from the direct response"
    );
    assert_eq!(a["usage"]["completion_tokens"], 28_000);
    let row = stack.agent.row_of(&via_agent);
    assert_eq!(row.output_tokens, 28_000);
}

#[test]
fn long_stream_is_identical_to_the_direct_one() {
    let stack = Stack::start();
    let via_agent = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", "stream a lot", 4000, true),
    );
    let direct = post_json(
        stack.sim.addr,
        "/v1/chat/completions",
        &chat_body("smollm2", "stream a lot", 4000, true),
    );
    let (a, d) = (via_agent.frames(), direct.frames());
    assert_eq!(a.len(), d.len());
    let content = crate::harness::http::chat_stream_text;
    assert!(
        content(&a) == content(&d),
        "streamed text differs from the direct stream"
    );
    let row = stack.agent.row_of(&via_agent);
    assert_eq!((row.output_tokens, row.estimated), (4000, false));
}
