//! Golden wire bodies: what a client receives for each API, plain and streamed, through the
//! agent, compared byte for byte with `tests/fixtures/<api>/<case>.<provider>.snap` after the
//! per-response ids and timestamps are masked. A change in what clients see (a re-serialised
//! chunk, a reordered field, a lost frame) fails here. `TOLLGATE_UPDATE_SNAPSHOTS=1` rewrites
//! the snapshots instead; review the diff before committing it.

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::harness::{chat_body, messages_body, post_json, Stack};

/// Masks what differs between two runs: response ids and Unix timestamps.
fn mask(text: &str) -> String {
    let mut out = text.to_string();
    for prefix in ["chatcmpl-", "cmpl-", "resp_", "msg_"] {
        out = mask_after(&out, prefix, |c| c.is_ascii_hexdigit(), "<id>");
    }
    for key in ["\"created\":", "\"created_at\":"] {
        out = mask_after(&out, key, |c| c.is_ascii_digit(), "0");
    }
    out
}

/// Replaces the run of `keep`-characters after each `marker` with `with`.
fn mask_after(text: &str, marker: &str, keep: impl Fn(char) -> bool, with: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(marker) {
        let after = at + marker.len();
        out.push_str(&rest[..after]);
        let run = rest[after..]
            .find(|c: char| !keep(c))
            .unwrap_or(rest.len() - after);
        if run > 0 {
            out.push_str(with);
        }
        rest = &rest[after + run..];
    }
    out.push_str(rest);
    out
}

/// Checks (or with `TOLLGATE_UPDATE_SNAPSHOTS` writes) one snapshot.
fn check(api: &str, case: &str, path: &str, body: Value) {
    let stack = Stack::start();
    let r = post_json(stack.agent.addr, path, &body);
    let actual = format!(
        "POST {path}\n{}\n\n{} {}\n\n{}",
        body,
        r.status,
        r.header("content-type").unwrap_or("-"),
        mask(&r.text())
    );
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(api)
        .join(format!("{case}.snap"));
    if std::env::var_os("TOLLGATE_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(file.parent().expect("fixture dir")).expect("fixture dir");
        std::fs::write(&file, &actual).expect("writing snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (create it with TOLLGATE_UPDATE_SNAPSHOTS=1)",
            file.display()
        )
    });
    if actual != expected {
        let line = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, e)| a != e)
            .map_or_else(|| "(length)".to_string(), |n| format!("{}", n + 1));
        panic!(
            "{} differs from the snapshot at line {line}\n--- expected\n{expected}\n--- actual\n{actual}",
            file.display()
        );
    }
}

#[test]
fn masking() {
    assert_eq!(
        mask(r#"{"id":"chatcmpl-0a1b2c","created":1795437675,"x":"msg_ff"}"#),
        r#"{"id":"chatcmpl-<id>","created":0,"x":"msg_<id>"}"#
    );
}

#[test]
fn chat() {
    check(
        "chat",
        "plain.openai",
        "/v1/chat/completions",
        chat_body("smol", "golden chat", 4, false),
    );
}

#[test]
fn chat_stream() {
    check(
        "chat",
        "stream.openai",
        "/v1/chat/completions",
        chat_body("smol", "golden chat stream", 4, true),
    );
}

#[test]
fn chat_stream_include_usage() {
    let mut body = chat_body("smol", "golden chat usage", 3, true);
    body["stream_options"] = json!({"include_usage": true});
    check(
        "chat",
        "stream_include_usage.openai",
        "/v1/chat/completions",
        body,
    );
}

#[test]
fn completions() {
    check(
        "completions",
        "plain.openai",
        "/v1/completions",
        json!({"model": "smol", "prompt": "golden completion", "max_tokens": 3}),
    );
}

#[test]
fn completions_stream() {
    check(
        "completions",
        "stream.openai",
        "/v1/completions",
        json!({"model": "smol", "prompt": "golden completion stream", "max_tokens": 3, "stream": true}),
    );
}

#[test]
fn embeddings() {
    check(
        "embeddings",
        "plain.openai",
        "/v1/embeddings",
        json!({"model": "smol", "input": ["golden", "embedding"], "dimensions": 4}),
    );
}

#[test]
fn responses() {
    check(
        "responses",
        "plain.openai",
        "/v1/responses",
        json!({"model": "smol", "input": "golden response", "max_output_tokens": 3}),
    );
}

#[test]
fn responses_stream() {
    check(
        "responses",
        "stream.openai",
        "/v1/responses",
        json!({"model": "smol", "input": "golden response stream", "max_output_tokens": 3, "stream": true}),
    );
}

#[test]
fn messages() {
    check(
        "messages",
        "plain.anthropic",
        "/v1/messages",
        messages_body("golden system", "golden message", 3, false),
    );
}

#[test]
fn messages_stream() {
    check(
        "messages",
        "stream.anthropic",
        "/v1/messages",
        messages_body("golden system", "golden message stream", 3, true),
    );
}

#[test]
fn errors() {
    check(
        "errors",
        "model_not_found.openai",
        "/v1/chat/completions",
        chat_body("no-such-model", "golden error", 1, false),
    );
    check(
        "errors",
        "unsupported_api.openai",
        "/v1/embeddings",
        json!({"model": "claude", "input": "x"}),
    );
}
