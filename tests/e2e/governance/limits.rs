//! Rate limits: requests and tokens per scope and per key, 429 with `Retry-After` and the
//! providers' rate-limit headers (OpenAI's `x-ratelimit-*`, Anthropic's
//! `anthropic-ratelimit-*` on `/v1/messages`) naming the limit, and the remaining quota on
//! successful responses too.

use serde_json::json;

use super::{create_key, governed, post_with_key, smol_as};
use crate::harness::{assert_anthropic_error, assert_openai_error, messages_body, Sim};

#[test]
fn a_team_request_limit_answers_429_with_headers() {
    let stack = governed(
        Sim::start(&[]),
        // The harness writes transport `limits:`; rate limits then go in `rate_limits:` (a
        // config with only rate limits may list them under `limits:`, see config tests).
        "rate_limits:\n  - scope: {team: search}\n    requests_per_minute: 3\n    tokens_per_minute: 200000\n",
    );
    let (key, _) = create_key(&stack, json!({"team": "search"}));
    let (other, _) = create_key(&stack, json!({"team": "ads"}));
    for left in [2, 1, 0] {
        let r = smol_as(&stack, &key, 5);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("3"));
        assert_eq!(
            r.header("x-ratelimit-remaining-requests"),
            Some(left.to_string().as_str())
        );
        assert!(r.header("x-ratelimit-reset-requests").is_some());
        assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("200000"));
    }
    let r = smol_as(&stack, &key, 5);
    let e = assert_openai_error(&r, 429, "requests", "rate_limit_exceeded");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("team=search/requests_per_minute")),
        "the error names the limit: {e}"
    );
    assert_eq!(e["limit"], "team=search/requests_per_minute");
    let wait: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("retry-after");
    assert!((1..=20).contains(&wait), "{wait}");
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    // Another team is not limited by this rule.
    let r = smol_as(&stack, &other, 5);
    assert_eq!(r.status, 200);
    assert!(r.header("x-ratelimit-limit-requests").is_none());
    assert!(stack
        .agent
        .metrics()
        .contains("tollgate_rate_limited_total 1"));
}

#[test]
fn key_token_limits_count_the_reservation_and_anthropic_gets_its_headers() {
    let stack = governed(Sim::start(&[]), "");
    // Each request reserves its prompt estimate (~20) plus max_tokens (100).
    let (key, _) = create_key(&stack, json!({"tpm": 300}));
    let body = messages_body("s", "hi", 100, false);
    let r = post_with_key(stack.agent.addr, "/v1/messages", &key, &[], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("anthropic-ratelimit-tokens-limit"), Some("300"));
    let remaining: u64 = r
        .header("anthropic-ratelimit-tokens-remaining")
        .and_then(|v| v.parse().ok())
        .expect("remaining tokens");
    assert!(remaining < 200, "the reservation counts: {remaining}");
    assert!(r
        .header("anthropic-ratelimit-tokens-reset")
        .is_some_and(|v| v.ends_with('Z')));
    // After settling, the unused part of the reservation is given back: the simulator used
    // far fewer than 100 output tokens? It may use all of them; either way two more fit at most.
    let mut refused = None;
    for _ in 0..4 {
        let r = post_with_key(stack.agent.addr, "/v1/messages", &key, &[], &body);
        if r.status == 429 {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("a token limit of 300 cannot admit five 120-token requests in a minute");
    assert_anthropic_error(&r, 429, "rate_limit_error");
    assert!(r.header("retry-after").is_some());

    // A request larger than the whole limit is told so.
    let r = smol_as(&stack, &key, 1000);
    let e = assert_openai_error(&r, 429, "tokens", "rate_limit_exceeded");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("more than the whole limit")),
        "{e}"
    );
}
