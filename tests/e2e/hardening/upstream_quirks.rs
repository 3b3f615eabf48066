//! What a provider can do to the agent, with a scripted upstream: odd statuses must not grow
//! `/metrics` without bound, an empty error body gets an explanation, a request the provider
//! received is never sent twice, a keep-alive the provider closed while idle is not reused, the
//! client's organization headers do not ride on the provider's key, and a request with more
//! headers than the provider takes is refused by Tollgate with a clear 431.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::harness::upstream::{chat_ok, json_response, RawUpstream, Reply};
use crate::harness::{assert_openai_error, chat_body, post_json, post_raw, Client, Sim, Stack};

const CHAT: &str = "/v1/chat/completions";

/// An agent whose `smol` model goes to `upstream` (the simulator only fills the config).
fn agent_for(upstream: &RawUpstream) -> Stack {
    let url = upstream.url();
    Stack::custom(Sim::start(&[]), move |c| c.providers[0].base_url = url)
}

#[test]
fn odd_upstream_statuses_are_bucketed_in_metrics() {
    let upstream = RawUpstream::start(|n, _| {
        // 450..=497 and 250..=297: none is a status that keeps its own label.
        let status = if n % 2 == 0 {
            450 + (n / 2) as u16
        } else {
            250 + (n / 2) as u16
        };
        Reply::Respond(json_response(status, r#"{"error":{"message":"odd"}}"#))
    });
    let stack = agent_for(&upstream);
    for _ in 0..96 {
        let r = post_json(stack.agent.addr, CHAT, &chat_body("smol", "odd", 1, false));
        assert!(r.status >= 250, "{}", r.status);
    }
    // Metrics are recorded when a request settles, just after its last byte, on whichever
    // worker served it: the last 4xx can settle after the last 2xx. Poll for both (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let m = stack.agent.metrics();
        let both = m.contains("status=\"2xx\"} 48") && m.contains("status=\"4xx\"} 48");
        if both || std::time::Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("tollgate_requests_total{"))
        .collect();
    assert!(series.len() <= 2, "{series:#?}");
    assert!(metrics.contains("status=\"4xx\"} 48"), "{series:#?}");
    assert!(metrics.contains("status=\"2xx\"} 48"), "{series:#?}");
}

#[test]
fn an_empty_provider_error_gets_a_body_that_says_so() {
    let upstream = RawUpstream::start(|_, _| {
        Reply::Respond(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nretry-after: 7\r\n\r\n".to_vec())
    });
    let stack = agent_for(&upstream);
    let r = post_json(
        stack.agent.addr,
        CHAT,
        &chat_body("smol", "empty error", 1, false),
    );
    let e = assert_openai_error(&r, 431, "invalid_request_error", "upstream_error");
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("431")),
        "{e}"
    );
    assert_eq!(
        r.header("retry-after"),
        Some("7"),
        "the provider's headers stay"
    );
    let row = stack.agent.row_of(&r);
    assert_eq!((row.status, row.outcome.as_str()), (431, "upstream_error"));
}

#[test]
fn a_request_the_provider_received_is_not_sent_again() {
    // The first request is answered (the connection goes to the pool); the second is read and
    // then the connection is closed without a response, as a provider that crashed after
    // processing it would.
    let upstream = RawUpstream::start(|n, _| match n {
        0 => Reply::Respond(chat_ok()),
        _ => Reply::Close,
    });
    let stack = Stack::custom(Sim::start(&[]), |c| {
        c.workers = 1;
        c.providers[0].base_url = upstream.url();
    });
    let mut client = Client::connect(stack.agent.addr);
    let body = chat_body("smol", "once", 1, false).to_string();
    let r = client.request("POST", CHAT, &[], body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let r = client.request("POST", CHAT, &[], body.as_bytes());
    let e = assert_openai_error(&r, 502, "api_error", "upstream_unreachable");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("not re-sent")),
        "{e}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        upstream.requests.load(Ordering::SeqCst),
        2,
        "the provider got the request twice"
    );
    let row = stack.agent.row_of(&r);
    assert_eq!(
        (row.status, row.outcome.as_str()),
        (502, "upstream_unreachable")
    );
}

#[test]
fn a_keep_alive_the_provider_closed_is_not_reused() {
    // Every response is followed by the provider closing the idle connection 50 ms later (an
    // idle timeout, like uvicorn's). The next request must go on a new connection, not fail.
    let upstream =
        RawUpstream::start(|_, _| Reply::RespondThenClose(chat_ok(), Duration::from_millis(50)));
    let stack = Stack::custom(Sim::start(&[]), |c| {
        c.workers = 1;
        c.providers[0].base_url = upstream.url();
    });
    for i in 0..5 {
        let r = post_json(
            stack.agent.addr,
            CHAT,
            &chat_body("smol", "again", 1, false),
        );
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(upstream.requests.load(Ordering::SeqCst), 5);
    // One connection per request (scrapes of /metrics may add their own).
    assert!(upstream.connections.load(Ordering::SeqCst) >= 5);
}

#[test]
fn organization_headers_do_not_ride_on_the_provider_key() {
    let stack = Stack::start();
    let r = post_raw(
        stack.agent.addr,
        CHAT,
        &[
            ("openai-organization", "org-client"),
            ("OpenAI-Project", "proj-client"),
            ("x-custom", "kept"),
        ],
        chat_body("smol", "whose org", 1, false)
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let last = stack.sim.last_request();
    let headers = last["headers"].as_object().expect("headers");
    assert!(!headers.contains_key("openai-organization"), "{headers:?}");
    assert!(!headers.contains_key("openai-project"), "{headers:?}");
    assert_eq!(
        headers.get("x-custom").and_then(|v| v.as_str()),
        Some("kept")
    );
}

#[test]
fn more_headers_than_the_provider_takes_is_a_431_from_tollgate() {
    let stack = Stack::custom(Sim::start(&[]), |c| c.max_headers = 200);
    let names: Vec<String> = (0..97).map(|i| format!("x-extra-{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let body = chat_body("smol", "many headers", 1, false).to_string();
    let r = post_raw(stack.agent.addr, CHAT, &headers, body.as_bytes());
    let e = assert_openai_error(&r, 431, "invalid_request_error", "too_many_headers");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("provider")),
        "{e}"
    );
    // 80 extra headers fit.
    let r = post_raw(stack.agent.addr, CHAT, &headers[..80], body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
}
