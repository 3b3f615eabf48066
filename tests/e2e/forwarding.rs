//! What reaches the provider, read back from the simulator's `/sim/last-request`: the model name
//! rewritten to the provider's, the client's credentials replaced by the configured key, identity
//! headers recorded in the ledger and never forwarded, other headers and the body passed as sent.

use serde_json::{json, Value};

use crate::harness::procs::{ANTHROPIC_PROVIDER_KEY, OPENAI_PROVIDER_KEY};
use crate::harness::{post_raw, Sim, Stack};

const IDENTITY: [(&str, &str); 6] = [
    ("x-tollgate-team", "search"),
    ("x-tollgate-project", "ranker"),
    ("x-tollgate-user", "ada"),
    ("x-tollgate-session", "s-42"),
    ("x-tollgate-workflow", "nightly"),
    ("x-tollgate-cost-center", "cc-7"),
];

fn headers_of(last: &Value) -> &serde_json::Map<String, Value> {
    last["headers"].as_object().expect("last-request headers")
}

#[test]
fn openai_model_rewrite_and_key_replacement() {
    let stack = Stack::start();
    let body = json!({
        "model": "smol",
        "messages": [{"role": "user", "content": "where do my headers go?"}],
        "max_tokens": 2,
        "temperature": 0.25,
    });
    let mut headers = vec![
        ("authorization", "Bearer sk-client-secret"),
        ("x-api-key", "sk-client-other"),
        ("x-custom-trace", "trace-123"),
    ];
    headers.extend_from_slice(&IDENTITY);
    let r = post_raw(
        stack.agent.addr,
        "/v1/chat/completions",
        &headers,
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let last = stack.sim.last_request();
    assert_eq!(last["path"], "/v1/chat/completions");
    let forwarded: Value =
        serde_json::from_str(last["body"].as_str().expect("body")).expect("forwarded JSON");
    let mut expected = body.clone();
    expected["model"] = "smollm2".into();
    assert_eq!(forwarded, expected, "only the model changes");

    let sent = headers_of(&last);
    assert_eq!(
        sent.get("authorization").and_then(Value::as_str),
        Some(format!("Bearer {OPENAI_PROVIDER_KEY}").as_str()),
        "provider key replaces the client's: {sent:?}"
    );
    assert!(!sent.contains_key("x-api-key"), "{sent:?}");
    assert!(
        !last.to_string().contains("sk-client"),
        "client credentials leaked to the provider: {last}"
    );
    for (name, _) in IDENTITY {
        assert!(!sent.contains_key(name), "{name} was forwarded: {sent:?}");
    }
    assert_eq!(
        sent.get("x-custom-trace").and_then(Value::as_str),
        Some("trace-123")
    );

    assert!(
        !format!("{:?}{}", r.headers, r.text()).contains(OPENAI_PROVIDER_KEY),
        "provider key leaked to the client"
    );
    let row = stack.agent.row_of(&r);
    assert_eq!(
        [
            row.team.as_deref(),
            row.project.as_deref(),
            row.user_id.as_deref(),
            row.session_id.as_deref(),
            row.workflow.as_deref(),
            row.cost_center.as_deref(),
        ],
        IDENTITY.map(|(_, v)| Some(v)),
        "identity envelope recorded: {row:#?}"
    );
    assert_eq!(row.requested_model.as_deref(), Some("smol"));
    assert_eq!(row.served_model.as_deref(), Some("smollm2"));
}

#[test]
fn anthropic_key_replacement() {
    let stack = Stack::start();
    let body = json!({
        "model": "claude",
        "max_tokens": 2,
        "messages": [{"role": "user", "content": "hello"}],
    });
    let r = post_raw(
        stack.agent.addr,
        "/v1/messages",
        &[
            ("x-api-key", "sk-client-anthropic"),
            ("authorization", "Bearer sk-client-bearer"),
            ("anthropic-version", "2023-06-01"),
        ],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let last = stack.sim.last_request();
    assert_eq!(last["path"], "/v1/messages");
    let sent = headers_of(&last);
    assert_eq!(
        sent.get("x-api-key").and_then(Value::as_str),
        Some(ANTHROPIC_PROVIDER_KEY),
        "{sent:?}"
    );
    assert!(!sent.contains_key("authorization"), "{sent:?}");
    assert!(!last.to_string().contains("sk-client"), "{last}");
    assert_eq!(
        sent.get("anthropic-version").and_then(Value::as_str),
        Some("2023-06-01"),
        "{sent:?}"
    );
    let forwarded: Value =
        serde_json::from_str(last["body"].as_str().expect("body")).expect("forwarded JSON");
    assert_eq!(forwarded["model"], "smollm2");
}

#[test]
fn provider_without_key_gets_no_client_credentials() {
    let stack = Stack::custom(Sim::start(&[]), |config| {
        for provider in &mut config.providers {
            provider.api_key_env = None;
        }
    });
    let r = post_raw(
        stack.agent.addr,
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-client-secret")],
        json!({"model": "smol", "messages": [{"role": "user", "content": "hi"}]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let last = stack.sim.last_request();
    assert!(!last.to_string().contains("sk-client"), "{last}");
}
