//! A request hidden in the head: a bare LF before CRLF (`Host: x\n\r\n`) once ended the head
//! early for the parser but not for the reader, so the headers after it (Content-Length
//! included) were ignored and the body was served as a second request, with another team's
//! identity. Such heads are refused, and nothing reaches the provider.

use std::time::Duration;

use crate::harness::{assert_openai_error, Client, Stack};

#[test]
fn a_bare_lf_in_the_head_is_refused_and_nothing_is_smuggled() {
    let stack = Stack::start();
    let hidden_body =
        r#"{"model":"smol","messages":[{"role":"user","content":"smuggled"}],"max_tokens":1}"#;
    let hidden = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-tollgate-team: victim\r\ncontent-length: {}\r\n\r\n{hidden_body}",
        hidden_body.len()
    );
    let outer = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\n\r\nContent-Length: {}\r\n\r\n{hidden}",
        hidden.len()
    );
    let mut client = Client::connect(stack.agent.addr);
    client.send(outer.as_bytes()).expect("sending");
    client.set_read_timeout(Duration::from_secs(5));
    let r = client.read_response().expect("a 400");
    assert_openai_error(&r, 400, "invalid_request_error", "malformed_http");
    assert!(
        client.closed_by_peer(),
        "the connection must close after a malformed head"
    );
    // The simulator never saw a request.
    let last = crate::harness::get(stack.sim.addr, "/sim/last-request");
    assert_ne!(
        last.status,
        200,
        "a request reached the provider: {}",
        last.text()
    );
}
