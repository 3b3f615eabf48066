//! Errors in what a request asks for, answered by the agent before any provider is involved:
//! malformed JSON (400 `invalid_json` with line, column and byte), a missing model (400), an
//! unknown model (404 `model_not_found`), a model whose provider does not speak the API (400
//! `unsupported_api_for_model`), in the OpenAI shape, or the Anthropic shape on `/v1/messages`.
//! Each rejected request still gets a request id and a ledger row with its error code.

use serde_json::json;

use crate::harness::{
    assert_anthropic_error, assert_openai_error, chat_body, get, messages_body, post_json,
    post_raw, Stack,
};

#[test]
fn malformed_json_names_line_column_and_byte() {
    let stack = Stack::start();
    let body = b"{\"model\": \"smol\",\n  \"messages\": [}";
    let r = post_raw(stack.agent.addr, "/v1/chat/completions", &[], body);
    let error = assert_openai_error(&r, 400, "invalid_request_error", "invalid_json");
    let message = error["message"].as_str().expect("message");
    assert!(message.contains("line 2"), "{message}");
    assert!(message.contains("column"), "{message}");
    assert!(message.contains("byte"), "{message}");
    let row = stack.agent.row_of(&r);
    assert_eq!((row.status, row.outcome.as_str()), (400, "invalid_json"));
    assert_eq!(row.tokens(), Default::default());
    assert_eq!(
        get(stack.sim.addr, "/sim/last-request").status,
        404,
        "nothing reached the provider"
    );
}

#[test]
fn missing_model_is_400() {
    let stack = Stack::start();
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "which model?"}]}),
    );
    let error = assert_openai_error(&r, 400, "invalid_request_error", "invalid_request");
    assert_eq!(error["param"], "model");
}

#[test]
fn unknown_model_is_404_model_not_found() {
    let stack = Stack::start();
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("gpt-nonexistent", "hello", 2, false),
    );
    let error = assert_openai_error(&r, 404, "invalid_request_error", "model_not_found");
    assert_eq!(error["param"], "model");
    let row = stack.agent.row_of(&r);
    assert_eq!((row.status, row.outcome.as_str()), (404, "model_not_found"));
    assert_eq!(row.requested_model.as_deref(), Some("gpt-nonexistent"));
    assert_eq!(row.provider, None);

    let mut body = messages_body("s", "hello", 2, false);
    body["model"] = "claude-nonexistent".into();
    let r = post_json(stack.agent.addr, "/v1/messages", &body);
    assert_anthropic_error(&r, 404, "not_found_error");
}

#[test]
fn api_the_provider_cannot_serve_is_400() {
    let stack = Stack::start();
    // An Anthropic-kind model on an OpenAI endpoint that has no translation (chat completions
    // and messages are translated into each other: `tests/python/test_translation_sdk.py`).
    for path in ["/v1/completions", "/v1/embeddings", "/v1/responses"] {
        let r = post_json(
            stack.agent.addr,
            path,
            &json!({"model": "claude", "messages": [], "prompt": "x", "input": "x"}),
        );
        let error = assert_openai_error(
            &r,
            400,
            "invalid_request_error",
            "unsupported_api_for_model",
        );
        assert_eq!(error["param"], "model", "{path}");
        let row = stack.agent.row_of(&r);
        assert_eq!(row.outcome, "unsupported_api_for_model");
    }
}

#[test]
fn wrong_field_type_is_400() {
    let stack = Stack::start();
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &json!({"model": 42, "messages": []}),
    );
    assert_openai_error(&r, 400, "invalid_request_error", "invalid_request");
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &json!(["not", "an", "object"]),
    );
    assert_openai_error(&r, 400, "invalid_request_error", "invalid_request");
}
