//! The exact response cache end to end: a repeated deterministic request is answered without
//! reaching the provider, byte for byte as the first time (plain and streamed), recorded with
//! zero cost and what it saved; tenants never share entries; non-deterministic requests and
//! `x-tollgate-cache: no-store` bypass it, `refresh` replaces the entry.

use serde_json::{json, Value};

use crate::governance::{create_key, governed, post_with_key};
use crate::harness::http::{chat_stream_text, frame_data};
use crate::harness::{get, post_raw, Response, Sim, Stack};

const CACHE: &str = "cache:\n  exact: {enabled: true, ttl_s: 600, max_mb: 8, scope: key}\n\
    prices:\n  smol: {input: 2.0, output: 8.0}\n";

fn body(prompt: &str, temperature: f64, stream: bool) -> Value {
    json!({
        "model": "smol",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 12,
        "temperature": temperature,
        "stream": stream,
    })
}

/// Requests the simulator has answered (its own counter, read from `/metrics`).
fn sim_requests(stack: &Stack) -> u64 {
    let text = get(stack.sim.addr, "/metrics").text();
    text.lines()
        .filter(|l| l.starts_with("vllm:request_success_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn post(stack: &Stack, key: &str, extra: &[(&str, &str)], b: &Value) -> Response {
    post_with_key(stack.agent.addr, "/v1/chat/completions", key, extra, b)
}

#[test]
fn a_repeat_is_served_from_cache_with_zero_cost_and_its_saving_recorded() {
    let stack = governed(Sim::start(&[]), CACHE);
    let (key, _) = create_key(&stack, json!({"team": "a"}));
    let b = body("what is a token?", 0.0, false);

    let first = post(&stack, &key, &[], &b);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-tollgate-cache"), Some("miss"));
    let served = sim_requests(&stack);
    assert!(served >= 1, "the simulator's request counter was not found");

    let second = post(&stack, &key, &[], &b);
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(second.header("x-tollgate-cache"), Some("hit"));
    assert_eq!(
        second.body, first.body,
        "a hit replays the first answer byte for byte"
    );
    assert_eq!(sim_requests(&stack), served, "the hit reached the provider");

    let r1 = stack.agent.row_of(&first);
    let r2 = stack.agent.row_of(&second);
    assert_eq!(r1.cache.as_deref(), Some("miss"));
    assert!(r1.cost_micro_usd > 0, "{r1:#?}");
    assert_eq!(r2.cache.as_deref(), Some("exact"));
    assert_eq!(
        (r2.input_tokens, r2.output_tokens, r2.cost_micro_usd),
        (0, 0, 0)
    );
    assert_eq!(r2.saved_micro_usd, r1.cost_micro_usd, "{r2:#?}");
    assert_eq!(r2.team.as_deref(), Some("a"));
    let m = stack.agent.metrics();
    assert!(m.contains("tollgate_cache_hits_total 1"), "{m}");
    assert!(
        m.contains(&format!(
            "tollgate_cache_saved_tokens_total {}",
            r1.input_tokens + r1.output_tokens
        )),
        "{m}"
    );
}

#[test]
fn keys_never_share_entries_and_bypasses_are_honoured() {
    let stack = governed(Sim::start(&[]), CACHE);
    let (alice, _) = create_key(&stack, json!({"team": "a"}));
    let (bob, _) = create_key(&stack, json!({"team": "a"}));
    let b = body("isolation please", 0.0, false);
    assert_eq!(
        post(&stack, &alice, &[], &b).header("x-tollgate-cache"),
        Some("miss")
    );
    assert_eq!(
        post(&stack, &bob, &[], &b).header("x-tollgate-cache"),
        Some("miss")
    );
    assert_eq!(
        post(&stack, &alice, &[], &b).header("x-tollgate-cache"),
        Some("hit")
    );

    // Not deterministic: never cached, no header.
    let warm = body("isolation please", 0.7, false);
    for _ in 0..2 {
        let r = post(&stack, &alice, &[], &warm);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-tollgate-cache"), None);
    }
    // A seed makes it cacheable.
    let mut seeded = warm.clone();
    seeded["seed"] = 7.into();
    assert_eq!(
        post(&stack, &alice, &[], &seeded).header("x-tollgate-cache"),
        Some("miss")
    );
    assert_eq!(
        post(&stack, &alice, &[], &seeded).header("x-tollgate-cache"),
        Some("hit")
    );

    // no-store: not looked up, and the provider is asked.
    let served = sim_requests(&stack);
    let r = post(&stack, &alice, &[("x-tollgate-cache", "no-store")], &b);
    assert_eq!((r.status, r.header("x-tollgate-cache")), (200, None));
    assert_eq!(sim_requests(&stack), served + 1);
    // refresh: asked again and stored again (a miss to the client), then hits.
    let r = post(&stack, &alice, &[("x-tollgate-cache", "refresh")], &b);
    assert_eq!(r.header("x-tollgate-cache"), Some("miss"));
    assert_eq!(stack.agent.row_of(&r).cache.as_deref(), Some("refresh"));
    assert_eq!(
        post(&stack, &alice, &[], &b).header("x-tollgate-cache"),
        Some("hit")
    );
    // A bad directive is the client's error.
    let r = post(&stack, &alice, &[("x-tollgate-cache", "forever")], &b);
    crate::harness::assert_openai_error(&r, 400, "invalid_request_error", "invalid_request");
}

#[test]
fn a_streamed_request_is_replayed_as_a_well_formed_stream() {
    let stack = Stack::custom(Sim::start(&[]), |c| {
        c.governance_yaml = format!("auth: {{ mode: open }}\n{CACHE}");
    });
    let b = body("stream me twice", 0.0, true);
    let send = || {
        post_raw(
            stack.agent.addr,
            "/v1/chat/completions",
            &[],
            b.to_string().as_bytes(),
        )
    };
    let first = send();
    assert_eq!(first.header("x-tollgate-cache"), Some("miss"));
    let second = send();
    assert_eq!(second.header("x-tollgate-cache"), Some("hit"));
    assert_eq!(second.header("content-type"), Some("text/event-stream"));
    let text = |r: &Response| chat_stream_text(&r.frames());
    assert!(!text(&first).is_empty());
    assert_eq!(text(&second), text(&first));
    let frames = second.frames();
    assert_eq!(frames.last().map(String::as_str), Some("data: [DONE]\n\n"));
    // The usage chunk Tollgate asked for is hidden in the replay too.
    assert!(frames
        .iter()
        .filter_map(|f| frame_data(f))
        .all(|v| v.get("usage").is_none_or(Value::is_null)));
}
