//! Governance end to end: virtual keys through the admin API and CLI, identity, model access,
//! rate limits and their headers, budgets (block, fallback, queue, concurrency, durability
//! across kill -9), alerts, exceptions, the loop guard and the audit log.

mod budgets;
mod keys;
mod limits;
mod policy;

use std::net::SocketAddr;

use serde_json::{json, Value};

use crate::harness::procs::ADMIN_TOKEN;
use crate::harness::{AgentConfig, Client, Response, Sim, Stack};

/// A stack with keys required, an admin listener, and `yaml` as its governance section.
pub fn governed(sim: Sim, yaml: &str) -> Stack {
    Stack::custom(sim, |c: &mut AgentConfig| {
        c.admin = Some(true);
        c.governance_yaml = format!("auth: {{ mode: keys }}\n{yaml}");
    })
}

/// One admin API call with the admin token.
pub fn admin(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Response {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let text = body.map(Value::to_string).unwrap_or_default();
    let mut headers = vec![("authorization", auth.as_str()), ("connection", "close")];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    Client::connect(addr).request(method, path, &headers, text.as_bytes())
}

/// Creates a key; returns (secret, id).
pub fn create_key(stack: &Stack, spec: Value) -> (String, String) {
    let addr = stack.agent.admin_addr().expect("an admin listener");
    let r = admin(addr, "POST", "/admin/keys", Some(&spec));
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    (
        v["key"].as_str().expect("the key").to_string(),
        v["record"]["id"].as_str().expect("the id").to_string(),
    )
}

/// POST with `Authorization: Bearer KEY` and extra headers.
pub fn post_with_key(
    addr: SocketAddr,
    path: &str,
    key: &str,
    extra: &[(&str, &str)],
    body: &Value,
) -> Response {
    let auth = format!("Bearer {key}");
    let mut headers = vec![("connection", "close"), ("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    Client::connect(addr).request("POST", path, &headers, body.to_string().as_bytes())
}

pub fn chat(model: &str, max_tokens: u64) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": max_tokens,
    })
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The actions in the audit log starting with `prefix`, oldest first.
pub fn audit_actions(stack: &Stack, prefix: &str) -> Vec<String> {
    let addr = stack.agent.admin_addr().expect("an admin listener");
    let r = admin(addr, "GET", &format!("/admin/audit?action={prefix}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["action"].as_str().unwrap_or("").to_string())
        .collect()
}

/// A chat request for `smol` with `max_tokens`, authorised by `key`.
pub fn smol_as(stack: &Stack, key: &str, max_tokens: u64) -> Response {
    post_with_key(
        stack.agent.addr,
        "/v1/chat/completions",
        key,
        &[],
        &chat("smol", max_tokens),
    )
}

/// `tollgate ARGS --data-dir <the agent's data dir>`, which must succeed; returns stdout.
pub fn cli_on_data(stack: &Stack, args: &[&str]) -> String {
    let dir = stack.agent.data_dir.to_str().expect("utf-8");
    let mut all = args.to_vec();
    all.extend(["--data-dir", dir]);
    let out = crate::harness::procs::run_tollgate(&all, std::time::Duration::from_secs(10));
    assert!(out.status.success(), "{out:#?}");
    out.stdout
}

/// Waits (up to 5 s) until the audit log holds `n` entries whose action starts with `prefix`
/// (some are written by the governance thread, shortly after the request); returns them.
pub fn wait_for_audit(stack: &Stack, prefix: &str, n: usize) -> Vec<Value> {
    let addr = stack.agent.admin_addr().expect("an admin listener");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = admin(addr, "GET", &format!("/admin/audit?action={prefix}"), None);
        let entries = r.json()["entries"].as_array().cloned().unwrap_or_default();
        if entries.len() >= n {
            return entries;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} `{prefix}` audit entries expected: {}",
            r.text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
