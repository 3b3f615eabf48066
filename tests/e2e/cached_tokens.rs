//! Prompt caching: a repeated prompt of 64 bytes or more hits the simulator's prefix cache, and
//! the ledger records the cached tokens it reported (OpenAI `cached_tokens`, Responses
//! `input_tokens_details`, Anthropic `cache_read`/`cache_creation` with input = all three).

use serde_json::json;

use crate::harness::http::{frame_data, frame_event};
use crate::harness::{
    chat_body, long_prompt, messages_body, post_json, prompt_tokens, Stack, Tokens,
};

#[test]
fn repeated_chat_prompt_reports_cached_tokens() {
    let stack = Stack::start();
    let prompt = long_prompt("chat cache");
    assert!(prompt.len() >= 64);
    let body = chat_body("smol", &prompt, 3, false);
    let first = post_json(stack.agent.addr, "/v1/chat/completions", &body);
    let second = post_json(stack.agent.addr, "/v1/chat/completions", &body);
    assert_eq!(
        (first.status, second.status),
        (200, 200),
        "{}",
        second.text()
    );

    let first_usage = Tokens::from_openai(&first.json()["usage"]);
    let second_usage = Tokens::from_openai(&second.json()["usage"]);
    assert_eq!(
        first_usage.cached, 0,
        "a fresh simulator has an empty cache"
    );
    assert!(
        second_usage.cached > 0 && second_usage.cached <= second_usage.input,
        "repeat should hit the cache: {second_usage:?}"
    );
    assert_eq!(second_usage.input, prompt_tokens(&prompt));
    assert_eq!(stack.agent.row_of(&first).tokens(), first_usage);
    assert_eq!(stack.agent.row_of(&second).tokens(), second_usage);
}

#[test]
fn repeated_streamed_chat_prompt_reports_cached_tokens() {
    let stack = Stack::start();
    let prompt = long_prompt("stream cache");
    let body = chat_body("smol", &prompt, 3, true);
    let first = post_json(stack.agent.addr, "/v1/chat/completions", &body);
    let second = post_json(stack.agent.addr, "/v1/chat/completions", &body);
    assert_eq!((first.status, second.status), (200, 200));
    let first_row = stack.agent.row_of(&first);
    let second_row = stack.agent.row_of(&second);
    assert_eq!(first_row.cached_tokens, 0, "{first_row:#?}");
    assert!(second_row.cached_tokens > 0, "{second_row:#?}");
    assert_eq!(second_row.input_tokens, prompt_tokens(&prompt));
    // The direct answer for the same (now fully cached) prompt reports the same cached count.
    let direct = post_json(
        stack.sim.addr,
        "/v1/chat/completions",
        &chat_body("smollm2", &prompt, 3, false),
    );
    assert_eq!(
        Tokens::from_openai(&direct.json()["usage"]).cached,
        second_row.cached_tokens
    );
}

#[test]
fn repeated_responses_input_reports_cached_tokens() {
    let stack = Stack::start();
    let input = long_prompt("responses cache");
    let body = json!({"model": "smol", "input": input, "max_output_tokens": 2});
    let first = post_json(stack.agent.addr, "/v1/responses", &body);
    let second = post_json(stack.agent.addr, "/v1/responses", &body);
    let reported = Tokens::from_responses(&second.json()["usage"]);
    assert!(reported.cached > 0, "{reported:?}");
    assert_eq!(stack.agent.row_of(&first).cached_tokens, 0);
    assert_eq!(stack.agent.row_of(&second).tokens(), reported);
}

#[test]
fn anthropic_cache_creation_then_read() {
    let stack = Stack::start();
    let system = long_prompt("anthropic cache");
    let body = messages_body(&system, "And one more thing.", 3, false);
    let first = post_json(stack.agent.addr, "/v1/messages", &body);
    let second = post_json(stack.agent.addr, "/v1/messages", &body);
    assert_eq!(
        (first.status, second.status),
        (200, 200),
        "{}",
        second.text()
    );
    let first_usage = first.json()["usage"].clone();
    let second_usage = second.json()["usage"].clone();
    let created = first_usage["cache_creation_input_tokens"]
        .as_i64()
        .expect("cache_creation_input_tokens");
    let read = second_usage["cache_read_input_tokens"]
        .as_i64()
        .expect("cache_read_input_tokens");
    assert!(created > 0, "first request writes the cache: {first_usage}");
    assert!(read > 0, "second request reads it: {second_usage}");

    let first_row = stack.agent.row_of(&first);
    let second_row = stack.agent.row_of(&second);
    let total = prompt_tokens(&format!("{system}And one more thing."));
    assert_eq!(first_row.tokens(), Tokens::from_anthropic(&first_usage));
    assert_eq!(second_row.tokens(), Tokens::from_anthropic(&second_usage));
    assert_eq!(
        (
            first_row.input_tokens,
            first_row.cache_write_tokens,
            first_row.cached_tokens
        ),
        (total, created, 0),
        "input includes cache creation"
    );
    assert_eq!(
        (second_row.input_tokens, second_row.cached_tokens),
        (total, read),
        "input includes cache reads"
    );
}

#[test]
fn anthropic_stream_cache_read() {
    let stack = Stack::start();
    let system = long_prompt("anthropic stream cache");
    let plain = messages_body(&system, "hi", 2, false);
    let warm = post_json(stack.agent.addr, "/v1/messages", &plain);
    assert_eq!(warm.status, 200, "{}", warm.text());
    let r = post_json(
        stack.agent.addr,
        "/v1/messages",
        &messages_body(&system, "hi", 2, true),
    );
    let frames = r.frames();
    let start = frames
        .iter()
        .find(|f| frame_event(f) == Some("message_start"))
        .and_then(|f| frame_data(f))
        .expect("message_start");
    let mut usage = start["message"]["usage"].clone();
    usage["output_tokens"] = 2.into();
    let reported = Tokens::from_anthropic(&usage);
    assert!(reported.cached > 0, "{usage}");
    assert_eq!(stack.agent.row_of(&r).tokens(), reported);
}
