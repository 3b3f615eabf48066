//! Hostile request bodies: nesting deep enough to overflow a recursive parser, duplicate keys
//! that make billing and the provider read different values, `stream_options: null`, and names
//! too long to echo or store. Each gets a precise 400, and the agent keeps serving (a stream in
//! flight during the attack finishes and is billed).

use serde_json::Value;

use crate::harness::{assert_openai_error, chat_body, post_json, post_raw, Client, Sim, Stack};

const CHAT: &str = "/v1/chat/completions";

#[test]
fn deep_nesting_is_refused_and_the_agent_survives() {
    let stack = Stack::custom(Sim::start_paced(&["--itl-base-ms", "20"]), |_| {});
    // A stream in flight on the same agent while the attack runs.
    let (mut streaming, stream_id) = Client::start_stream(
        stack.agent.addr,
        &chat_body("smol", "a stream that must survive", 40, true),
    );

    let attacks = [
        format!(r#"{{"model":"smol","x":{}"#, "[".repeat(10_000)),
        format!(r#"{{"model":"smol","x":{}"#, r#"{"a":"#.repeat(10_000)),
        format!(
            r#"{{"model":"smol","x":{}1{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        ),
        format!(r#"{{"x":{},"model":"smol"}}"#, "[".repeat(100_000)),
    ];
    for attack in &attacks {
        let r = post_raw(stack.agent.addr, CHAT, &[], attack.as_bytes());
        let e = assert_openai_error(&r, 400, "invalid_request_error", "json_too_deep");
        assert!(
            e["message"].as_str().is_some_and(|m| m.contains("128")),
            "{e}"
        );
    }
    // Nesting within the limit still works (and reaches the provider intact).
    let ok = format!(
        r#"{{"model":"smol","messages":[{{"role":"user","content":"deep but fine"}}],"max_tokens":2,"metadata_x":{}1{}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    let r = post_raw(stack.agent.addr, CHAT, &[], ok.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());

    // The stream in flight completes, and its row is on the ledger.
    let rest = streaming.read_body().expect("the stream's body");
    assert!(String::from_utf8_lossy(&rest).contains("[DONE]"));
    let row = stack.agent.ledger_row(&stream_id);
    assert_eq!((row.status, row.outcome.as_str()), (200, "ok"), "{row:#?}");
    assert!(row.output_tokens > 0, "{row:#?}");
}

#[test]
fn duplicate_keys_that_tollgate_reads_are_refused() {
    let stack = Stack::start();
    for (body, param) in [
        (
            r#"{"model":"gpt-4-expensive","model":"smol","messages":[]}"#,
            "model",
        ),
        (
            r#"{"model":"smol","mod\u0065l":"smol","messages":[]}"#,
            "model",
        ),
        (
            r#"{"model":"smol","stream":false,"stream":true,"messages":[]}"#,
            "stream",
        ),
        (
            r#"{"model":"smol","max_tokens":1,"max_tokens":100000,"messages":[]}"#,
            "max_tokens",
        ),
        (
            r#"{"model":"smol","stream":true,"stream_options":{"include_usage":false,"include_usage":true},"messages":[]}"#,
            "stream_options.include_usage",
        ),
        // Read since the exact cache decides on determinism: `temperature: 1` then `0` would
        // be cached as deterministic by one reader and sampled at 1 by the other.
        (
            r#"{"model":"smol","temperature":1,"temperature":0,"messages":[]}"#,
            "temperature",
        ),
    ] {
        let r = post_raw(stack.agent.addr, CHAT, &[], body.as_bytes());
        let e = assert_openai_error(&r, 400, "invalid_request_error", "duplicate_key");
        assert_eq!(e["param"], param, "{body}: {e}");
    }
    // Duplicates in fields Tollgate neither reads nor rewrites are the provider's business.
    let r = post_raw(
        stack.agent.addr,
        CHAT,
        &[],
        br#"{"model":"smol","top_p":1,"top_p":0.5,"messages":[{"role":"user","content":"x"}],"max_tokens":1}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn stream_options_null_is_replaced_not_duplicated() {
    let stack = Stack::start();
    let body = r#"{"model":"smol","stream":true,"stream_options":null,"messages":[{"role":"user","content":"null options"}],"max_tokens":3}"#;
    let r = post_raw(stack.agent.addr, CHAT, &[], body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let last = stack.sim.last_request();
    let sent = last["body"].as_str().expect("forwarded body");
    assert_eq!(sent.matches("stream_options").count(), 1, "{sent}");
    let v: Value = serde_json::from_str(sent).expect("forwarded JSON");
    assert_eq!(v["stream_options"]["include_usage"], true, "{sent}");
    // Tollgate asked for the usage chunk, so the client does not see it, and the row has usage.
    assert!(!r.text().contains("\"choices\":[]"), "{}", r.text());
    let row = stack.agent.row_of(&r);
    assert!(!row.estimated && row.output_tokens == 3, "{row:#?}");
}

#[test]
fn overlong_names_are_neither_echoed_nor_stored() {
    let stack = Stack::start();
    let name = "m".repeat(10 * 1024 * 1024);
    let body = format!(r#"{{"model":"{name}","messages":[]}}"#);
    let stack_big = Stack::custom(Sim::start(&[]), |c| c.max_body_bytes = 16 * 1024 * 1024);
    let r = post_raw(stack_big.agent.addr, CHAT, &[], body.as_bytes());
    let e = assert_openai_error(&r, 400, "invalid_request_error", "invalid_request");
    assert_eq!(e["param"], "model");
    assert!(
        r.body.len() < 1024,
        "the error echoes {} bytes",
        r.body.len()
    );
    let row = stack_big.agent.row_of(&r);
    assert!(
        row.requested_model.is_none(),
        "{:?}",
        row.requested_model.map(|m| m.len())
    );

    // An unknown model of allowed length is echoed in the 404 (it is short).
    let r = post_json(
        stack.agent.addr,
        CHAT,
        &chat_body("no-such-model", "x", 1, false),
    );
    assert_openai_error(&r, 404, "invalid_request_error", "model_not_found");

    // Identity values are cut to 256 bytes in the ledger.
    let long_team = "t".repeat(8 * 1024);
    let r = post_raw(
        stack.agent.addr,
        CHAT,
        &[("x-tollgate-team", &long_team)],
        chat_body("smol", "who am i", 1, false)
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let row = stack.agent.row_of(&r);
    assert_eq!(
        row.team.as_deref().map(str::len),
        Some(256),
        "{:?}",
        row.team
    );
}
