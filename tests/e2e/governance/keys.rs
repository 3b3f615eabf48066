//! Virtual keys: both SDK header styles, 401s in each wire format, identity from the key,
//! revocation and rotation taking effect at once, expiry, IP allowlists, model globs, keys
//! surviving a restart, and the `tollgate keys` CLI over the admin API.

use std::time::Duration;

use serde_json::json;

use super::{admin, chat, create_key, governed, post_with_key, smol_as};
use crate::harness::procs::{run_tollgate, ADMIN_TOKEN};
use crate::harness::{
    assert_anthropic_error, assert_openai_error, messages_body, post_json, post_raw, Sim,
};

#[test]
fn keys_admit_both_sdk_styles_and_set_identity() {
    let stack = governed(Sim::start(&[]), "");
    let (key, id) = create_key(
        &stack,
        json!({"team": "search", "project": "ranker", "user": "ana"}),
    );
    assert!(key.starts_with("tg-") && key.len() == 46, "{key}");

    // OpenAI style, with headers that try to charge another team.
    let r = post_with_key(
        stack.agent.addr,
        "/v1/chat/completions",
        &key,
        &[
            ("x-tollgate-team", "billing"),
            ("x-tollgate-session", "s-1"),
        ],
        &chat("smol", 3),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let row = stack.agent.row_of(&r);
    assert_eq!(row.key_id.as_deref(), Some(id.as_str()));
    assert_eq!(row.team.as_deref(), Some("search"), "the key's team wins");
    assert_eq!(row.project.as_deref(), Some("ranker"));
    assert_eq!(row.user_id.as_deref(), Some("ana"));
    assert_eq!(row.session_id.as_deref(), Some("s-1"), "other headers stay");
    assert!(
        stack.sim.last_request()["headers"]["authorization"]
            .as_str()
            .is_some_and(|a| !a.contains(&key)),
        "the virtual key never reaches the provider"
    );

    // Anthropic style: x-api-key, and Bearer as newer SDKs send it.
    let body = messages_body("be brief", "hi", 3, false);
    let r = post_raw(
        stack.agent.addr,
        "/v1/messages",
        &[
            ("x-api-key", key.as_str()),
            ("anthropic-version", "2023-06-01"),
        ],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_with_key(stack.agent.addr, "/v1/messages", &key, &[], &body);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn requests_without_a_valid_key_get_401_in_their_wire_format() {
    let stack = governed(Sim::start(&[]), "");
    let mut refused = Vec::new();
    let r = post_json(stack.agent.addr, "/v1/chat/completions", &chat("smol", 2));
    let e = assert_openai_error(&r, 401, "invalid_request_error", "missing_api_key");
    refused.push(r.request_id().to_string());
    assert!(e["message"].as_str().is_some_and(|m| m.contains("Bearer")));
    let r = post_with_key(
        stack.agent.addr,
        "/v1/chat/completions",
        "tg-notarealkey0000000000000000000000000000000",
        &[],
        &chat("smol", 2),
    );
    assert_openai_error(&r, 401, "invalid_request_error", "invalid_api_key");
    refused.push(r.request_id().to_string());
    let r = post_with_key(
        stack.agent.addr,
        "/v1/chat/completions",
        "sk-proj-a-provider-key-1234",
        &[],
        &chat("smol", 2),
    );
    let e = assert_openai_error(&r, 401, "invalid_request_error", "invalid_api_key");
    assert!(
        !e["message"].as_str().unwrap_or("").contains("provider-key"),
        "a rejected credential is redacted: {e}"
    );
    refused.push(r.request_id().to_string());
    let r = post_json(
        stack.agent.addr,
        "/v1/messages",
        &messages_body("s", "hi", 2, false),
    );
    assert_anthropic_error(&r, 401, "authentication_error");
    refused.push(r.request_id().to_string());
    // Nothing reached the provider, and each refusal has its ledger row.
    for id in &refused {
        let row = stack.agent.ledger_row(id);
        assert_eq!(
            (row.status, row.input_tokens, row.provider.as_deref()),
            (401, 0, None),
            "{row:#?}"
        );
    }
    assert!(stack
        .agent
        .metrics()
        .contains("tollgate_auth_failures_total 4"));
}

#[test]
fn revoke_rotate_expiry_and_allowlists_take_effect_at_once() {
    let stack = governed(Sim::start(&[]), "");
    let admin_addr = stack.agent.admin_addr().expect("admin");
    let (key, id) = create_key(&stack, json!({"team": "t"}));
    let ok = |k: &str| {
        post_with_key(
            stack.agent.addr,
            "/v1/chat/completions",
            k,
            &[],
            &chat("smol", 2),
        )
        .status
    };
    assert_eq!(ok(&key), 200);

    let r = admin(
        admin_addr,
        "POST",
        &format!("/admin/keys/{id}/rotate"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let rotated = r.json()["key"].as_str().expect("new key").to_string();
    assert_eq!(ok(&key), 401, "the old secret stops at once");
    assert_eq!(ok(&rotated), 200);

    let r = admin(
        admin_addr,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(&json!({"enabled": false})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = smol_as(&stack, &rotated, 2);
    assert_openai_error(&r, 401, "invalid_request_error", "key_disabled");

    let r = admin(
        admin_addr,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(&json!({"enabled": true, "allowed_ips": ["10.0.0.0/8"]})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = smol_as(&stack, &rotated, 2);
    assert_openai_error(&r, 403, "invalid_request_error", "ip_not_allowed");
    admin(
        admin_addr,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(&json!({"allowed_ips": ["127.0.0.0/8"]})),
    );
    assert_eq!(ok(&rotated), 200);

    let r = admin(
        admin_addr,
        "POST",
        &format!("/admin/keys/{id}/revoke"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(ok(&rotated), 401);

    let (short, _) = create_key(&stack, json!({"expires_at_ms": super::now_ms() + 300}));
    assert_eq!(ok(&short), 200);
    std::thread::sleep(Duration::from_millis(400));
    let r = smol_as(&stack, &short, 2);
    assert_openai_error(&r, 401, "invalid_request_error", "key_expired");

    // Every change is in the audit log.
    let actions = super::audit_actions(&stack, "key.");
    for want in ["key.create", "key.rotate", "key.update", "key.revoke"] {
        assert!(actions.iter().any(|a| a == want), "{want} in {actions:?}");
    }
}

#[test]
fn model_globs_on_a_key() {
    let stack = governed(Sim::start(&[]), "");
    let (key, _) = create_key(&stack, json!({"models": ["sm*"]}));
    let r = smol_as(&stack, &key, 2);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_with_key(
        stack.agent.addr,
        "/v1/messages",
        &key,
        &[],
        &messages_body("s", "hi", 2, false),
    );
    assert_anthropic_error(&r, 403, "permission_error");

    // The model list needs a key too, and shows what the key may use.
    let r = crate::harness::get(stack.agent.addr, "/v1/models");
    assert_openai_error(&r, 401, "invalid_request_error", "missing_api_key");
    let auth = format!("Bearer {key}");
    let r = crate::harness::Client::connect(stack.agent.addr).request(
        "GET",
        "/v1/models",
        &[("authorization", auth.as_str()), ("connection", "close")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(ids, ["smol"]);
}

#[test]
fn keys_survive_a_restart_and_the_cli_manages_them() {
    let mut stack = governed(Sim::start(&[]), "");
    let url = format!("http://{}", stack.agent.admin_addr().expect("admin"));
    let env_token = [("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)];
    let out = crate::harness::procs::run_tollgate_env(
        &[
            "keys",
            "create",
            "--admin",
            &url,
            "--team",
            "search",
            "--project",
            "p",
            "--models",
            "smol,claude",
            "--rpm",
            "100",
            "--budget-usd",
            "5",
            "--expires",
            "30d",
        ],
        &env_token,
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{out:#?}");
    let key = out.stdout.trim().to_string();
    assert!(key.starts_with("tg-"), "{out:#?}");
    let list = crate::harness::procs::run_tollgate_env(
        &["keys", "list", "--admin", &url],
        &env_token,
        Duration::from_secs(10),
    );
    assert!(
        list.status.success() && list.stdout.contains("search") && !list.stdout.contains(&key),
        "{list:#?}"
    );

    stack.agent.restart(1);
    let r = smol_as(&stack, &key, 2);
    assert_eq!(r.status, 200, "a key outlives the process: {}", r.text());
    let r = post_with_key(
        stack.agent.addr,
        "/v1/chat/completions",
        &key,
        &[("x-tollgate-team", "x")],
        &chat("smol", 2),
    );
    assert_eq!(stack.agent.row_of(&r).team.as_deref(), Some("search"));

    // Without the admin token the CLI fails with a clear message.
    let out = run_tollgate(&["keys", "list", "--admin", &url], Duration::from_secs(10));
    assert!(!out.status.success());
    assert!(out.stderr.contains("TOLLGATE_ADMIN_TOKEN"), "{out:#?}");
}

#[test]
fn a_keys_default_priority_class_applies_unless_the_request_names_one() {
    // One worker: the busy request's in-flight count is the one the batch request reads (with
    // several, a worker sees the others' load only through the replica's scraped figures).
    let stack = crate::harness::Stack::custom(Sim::start(&["--delay-ms", "800"]), |c| {
        c.workers = 1;
        c.admin = Some(true);
        c.governance_yaml =
            "auth: { mode: keys }\nrouting: {batch: {max_queue: 1, max_wait_ms: 100}}\n".into();
    });
    let admin_addr = stack.agent.admin_addr().expect("an admin listener");
    let bad = admin(
        admin_addr,
        "POST",
        "/admin/keys",
        Some(&json!({"team": "jobs", "priority": "urgent"})),
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    let (batch_key, _) = create_key(&stack, json!({"team": "jobs", "priority": "batch"}));
    let (interactive_key, _) = create_key(&stack, json!({"team": "app"}));
    // The only replica is busy with an interactive request for 800 ms...
    let addr = stack.agent.addr;
    let busy = std::thread::spawn(move || {
        post_with_key(
            addr,
            "/v1/chat/completions",
            &interactive_key,
            &[],
            &chat("smol", 1),
        )
    });
    std::thread::sleep(std::time::Duration::from_millis(150));
    // ... so the batch key's request is deferred, while the same key naming `interactive` runs.
    let r = post_with_key(
        addr,
        "/v1/chat/completions",
        &batch_key,
        &[],
        &chat("smol", 1),
    );
    assert_openai_error(&r, 503, "api_error", "batch_deferred");
    let r = post_with_key(
        addr,
        "/v1/chat/completions",
        &batch_key,
        &[("x-tollgate-priority", "interactive")],
        &chat("smol", 1),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(busy.join().map(|r| r.status).unwrap_or(0), 200);
}
