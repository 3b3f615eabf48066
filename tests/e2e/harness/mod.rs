//! Shared test machinery: real `tollgate` and `tollgate-sim` processes on loopback (`procs`), a raw
//! HTTP/1.1 client over `std::net::TcpStream` (`http`), a ledger reader with bounded polling
//! (`ledger`), the provider usage shapes normalised to ledger columns (`usage`), and a private
//! PostgreSQL server (`postgres`).
//!
//! The binaries come from the cargo target directory next to this test binary; `cargo xtask test`
//! builds them first (`cargo build -p tollgate -p tollgate-sim`). Every process and temporary
//! directory is owned by a guard that kills (by pid) and removes it on drop.

pub mod http;
pub mod ledger;
pub mod pki;
pub mod postgres;
pub mod procs;
pub mod upstream;
pub mod usage;
pub mod venv;

pub use http::{chat_as_team, get, post_json, post_raw, Client, Response};
pub use ledger::Row;
pub use procs::{AgentConfig, Sim, Stack};
pub use usage::Tokens;

/// Tokens the simulator counts for a prompt of `bytes` bytes: `ceil(bytes / 4)`.
pub fn prompt_tokens(text: &str) -> i64 {
    text.len().div_ceil(4) as i64
}

/// A prompt of at least 64 bytes, so the simulator's prefix cache (16 tokens per block) can hit
/// when it is sent twice. `tag` keeps prompts of different tests apart.
pub fn long_prompt(tag: &str) -> String {
    format!(
        "{tag}: a prompt long enough to fill several prefix cache blocks of the simulator, \
         so that a repeated request reports cached tokens."
    )
}

/// Asserts the identity columns of a successful proxied request's row.
pub fn assert_ok_row(row: &Row, api: &str, requested_model: &str, provider: &str) {
    assert_eq!(row.status, 200, "status of {row:#?}");
    assert_eq!(row.outcome, "ok", "outcome of {row:#?}");
    assert_eq!(row.api, api, "api of {row:#?}");
    assert_eq!(
        row.requested_model.as_deref(),
        Some(requested_model),
        "requested_model of {row:#?}"
    );
    assert_eq!(
        row.served_model.as_deref(),
        Some(procs::SIM_MODEL),
        "served_model of {row:#?}"
    );
    assert_eq!(
        row.provider.as_deref(),
        Some(provider),
        "provider of {row:#?}"
    );
}

/// A chat completions body with one user message.
pub fn chat_body(model: &str, prompt: &str, max_tokens: u64, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
}

/// An Anthropic messages body with a system prompt and one user message.
pub fn messages_body(
    system: &str,
    prompt: &str,
    max_tokens: u64,
    stream: bool,
) -> serde_json::Value {
    serde_json::json!({
        "model": "claude",
        "system": system,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
}

/// Asserts an OpenAI-shaped error: `{"error":{"message","type","code","param"}}`. Returns the
/// error object.
pub fn assert_openai_error(r: &Response, status: u16, kind: &str, code: &str) -> serde_json::Value {
    assert_eq!(r.status, status, "status of {}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "content-type of {:?}",
        r.headers
    );
    let body = r.json();
    let error = body["error"].clone();
    assert_eq!(error["type"], kind, "type in {body}");
    assert_eq!(error["code"], code, "code in {body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message in {body}"
    );
    assert!(error.get("param").is_some(), "param key in {body}");
    error
}

/// Asserts an Anthropic-shaped error: `{"type":"error","error":{"type","message"}}`.
pub fn assert_anthropic_error(r: &Response, status: u16, kind: &str) {
    assert_eq!(r.status, status, "status of {}", r.text());
    let body = r.json();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}
