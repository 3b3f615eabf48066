//! Provider failures: a provider nobody listens on (502 `upstream_unreachable`), one slower than
//! `upstream.response_timeout_ms` (504 `upstream_timeout`), and provider error statuses, which
//! reach the client as the provider sent them. Each is recorded in the ledger with no tokens.

use std::net::TcpListener;

use serde_json::json;

use crate::harness::procs::Provider;
use crate::harness::{
    assert_anthropic_error, assert_openai_error, chat_body, messages_body, post_json, post_raw,
    Sim, Stack,
};

/// A loopback port with nothing listening on it.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a probe port");
    listener.local_addr().expect("probe address").port()
}

#[test]
fn unreachable_provider_is_502() {
    let port = closed_port();
    let stack = Stack::custom(Sim::start(&[]), |c| {
        c.providers.push(Provider {
            name: "dead".into(),
            kind: "openai".into(),
            base_url: format!("http://127.0.0.1:{port}"),
            api_key_env: None,
        });
        c.models
            .push(("ghost".into(), "dead".into(), "ghost-1".into()));
    });
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("ghost", "anyone there?", 2, false),
    );
    assert_openai_error(&r, 502, "api_error", "upstream_unreachable");
    let row = stack.agent.row_of(&r);
    assert_eq!(
        (row.status, row.outcome.as_str()),
        (502, "upstream_unreachable")
    );
    assert_eq!(row.provider.as_deref(), Some("dead"));
    assert_eq!(row.tokens(), Default::default());
}

#[test]
fn slow_provider_is_504() {
    let stack = Stack::custom(Sim::start(&[]), |c| c.response_timeout_ms = 300);
    let r = post_raw(
        stack.agent.addr,
        "/v1/chat/completions",
        &[("x-sim-delay-ms", "3000")],
        chat_body("smol", "take your time", 2, false)
            .to_string()
            .as_bytes(),
    );
    assert_openai_error(&r, 504, "api_error", "upstream_timeout");
    let row = stack.agent.row_of(&r);
    assert_eq!(
        (row.status, row.outcome.as_str()),
        (504, "upstream_timeout")
    );

    let r = post_raw(
        stack.agent.addr,
        "/v1/messages",
        &[("x-sim-delay-ms", "3000")],
        messages_body("s", "take your time", 2, true)
            .to_string()
            .as_bytes(),
    );
    assert_anthropic_error(&r, 504, "timeout_error");
}

#[test]
fn provider_error_status_passes_through() {
    let stack = Stack::start();
    for status in ["402", "429", "500", "503"] {
        let r = post_raw(
            stack.agent.addr,
            "/v1/chat/completions",
            &[("x-sim-fail", status)],
            chat_body("smol", "please fail", 2, false)
                .to_string()
                .as_bytes(),
        );
        assert_eq!(r.status.to_string(), status, "{}", r.text());
        let body = r.json();
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(status)),
            "the provider's error body reaches the client: {body}"
        );
        let row = stack.agent.row_of(&r);
        assert_eq!(row.status.to_string(), status, "{row:#?}");
        assert_eq!(row.tokens(), Default::default(), "{row:#?}");
    }
    // A streaming request that fails before streaming gets the provider's error too.
    let mut body = chat_body("smol", "please fail", 2, true);
    body["stream_options"] = json!({"include_usage": true});
    let r = post_raw(
        stack.agent.addr,
        "/v1/chat/completions",
        &[("x-sim-fail", "429")],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 429, "{}", r.text());
}
