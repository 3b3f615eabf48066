//! Protocol-level errors, each with its status and OpenAI error body: head too large and too
//! many headers (431), body too large (413 `request_too_large`), a client too slow with its head
//! or body (408 `request_timeout`), bytes that are not HTTP (400 `malformed_http`), unknown paths
//! (404) and wrong methods (405).

use std::time::Duration;

use crate::harness::{assert_openai_error, get, Client, Sim, Stack};

const CHAT: &str = "/v1/chat/completions";
const SMALL_BODY: &str = r#"{"model":"smol","messages":[{"role":"user","content":"hi"}]}"#;

/// Sends a request with one header of `filler` bytes; returns the response.
fn request_with_header_of(stack: &Stack, filler: usize) -> crate::harness::Response {
    let big = "x".repeat(filler);
    let mut client = Client::connect(stack.agent.addr);
    client.request("POST", CHAT, &[("x-filler", &big)], SMALL_BODY.as_bytes())
}

#[test]
fn head_far_over_the_limit_is_431() {
    let stack = Stack::start();
    let r = request_with_header_of(&stack, 256 * 1024);
    assert_openai_error(&r, 431, "invalid_request_error", "request_header_too_large");
}

#[test]
fn head_just_over_the_limit_is_431() {
    let stack = Stack::start();
    let r = request_with_header_of(&stack, 70_000);
    assert_openai_error(&r, 431, "invalid_request_error", "request_header_too_large");
}

#[test]
fn too_many_headers_is_431() {
    let stack = Stack::start();
    let names: Vec<String> = (0..120).map(|i| format!("x-extra-{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let mut client = Client::connect(stack.agent.addr);
    let r = client.request("POST", CHAT, &headers, SMALL_BODY.as_bytes());
    assert_openai_error(&r, 431, "invalid_request_error", "too_many_headers");
}

#[test]
fn declared_body_too_large_is_413() {
    let stack = Stack::start();
    let mut client = Client::connect(stack.agent.addr);
    // Announce 2 MiB (the limit is 1 MiB) and send only the start: the head is enough to refuse.
    client
        .send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: e2e\r\ncontent-type: application/json\r\ncontent-length: 2097152\r\n\r\n{\"model\":")
        .expect("sending");
    let r = client.read_response().expect("413 response");
    assert_openai_error(&r, 413, "invalid_request_error", "request_too_large");
}

#[test]
fn chunked_body_over_the_limit_is_413() {
    let stack = Stack::custom(Sim::start(&[]), |c| c.max_body_bytes = 1024);
    let mut client = Client::connect(stack.agent.addr);
    let chunk = "a".repeat(800);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: e2e\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n"
    );
    client.send(request.as_bytes()).expect("sending");
    let r = client.read_response().expect("413 response");
    assert_openai_error(&r, 413, "invalid_request_error", "request_too_large");
}

#[test]
fn half_a_head_times_out_with_408() {
    let stack = Stack::custom(Sim::start(&[]), |c| c.header_timeout_ms = 300);
    let mut client = Client::connect(stack.agent.addr);
    client
        .send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: e2e\r\ncontent-le")
        .expect("sending half a head");
    let r = client.read_response().expect("408 response");
    assert_openai_error(&r, 408, "invalid_request_error", "request_timeout");
    assert!(
        client.closed_by_peer(),
        "the connection is closed after a 408"
    );
}

#[test]
fn half_a_body_times_out_with_408() {
    let stack = Stack::custom(Sim::start(&[]), |c| c.body_timeout_ms = 300);
    let mut client = Client::connect(stack.agent.addr);
    client
        .send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: e2e\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\":\"smol\"")
        .expect("sending half a body");
    let r = client.read_response().expect("408 response");
    assert_openai_error(&r, 408, "invalid_request_error", "request_timeout");
}

#[test]
fn garbage_is_400_malformed_http() {
    let stack = Stack::start();
    for garbage in [
        &b"this is not http at all\r\n\r\n"[..],
        b"POST /v1/chat/completions HTTP/1.1\r\nbad header line\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let mut client = Client::connect(stack.agent.addr);
        client.send(garbage).expect("sending");
        let r = client.read_response().expect("400 response");
        let text = String::from_utf8_lossy(garbage);
        assert_eq!(r.status, 400, "{text:?} → {}", r.text());
        assert_openai_error(&r, 400, "invalid_request_error", "malformed_http");
    }
}

#[test]
fn unknown_path_is_404_and_wrong_method_is_405() {
    let stack = Stack::start();
    let r = get(stack.agent.addr, "/v2/nothing/here");
    assert_openai_error(&r, 404, "invalid_request_error", "not_found");
    let mut client = Client::connect(stack.agent.addr);
    let r = client.request("POST", "/v1/unknown", &[], SMALL_BODY.as_bytes());
    assert_openai_error(&r, 404, "invalid_request_error", "not_found");

    let r = get(stack.agent.addr, CHAT);
    assert_openai_error(&r, 405, "invalid_request_error", "method_not_allowed");
    let mut client = Client::connect(stack.agent.addr);
    let r = client.request("POST", "/v1/models", &[], SMALL_BODY.as_bytes());
    assert_openai_error(&r, 405, "invalid_request_error", "method_not_allowed");
    let mut client = Client::connect(stack.agent.addr);
    let r = client.request("DELETE", "/v1/messages", &[], b"");
    assert_eq!(r.status, 405, "{}", r.text());
}

#[test]
fn connection_survives_a_client_error() {
    let stack = Stack::start();
    let mut client = Client::connect(stack.agent.addr);
    client.set_read_timeout(Duration::from_secs(10));
    let r = client.request("GET", "/v1/nothing", &[], b"");
    assert_eq!(r.status, 404);
    let r = client.request("POST", CHAT, &[], SMALL_BODY.as_bytes());
    assert_eq!(r.status, 200, "keep-alive after a 404: {}", r.text());
}
