//! Guardrails end to end: what the provider actually received (read back from the simulator's
//! `/sim/last-request`) holds none of the planted values for any action, pseudonymized values
//! come back in plain and streamed responses (the simulator echoes the prompt in 3-byte tokens,
//! so placeholders arrive split across events), blocks are precise and never echo the match,
//! and traffic to a private replica passes unchanged. Every finding is on the ledger row, in
//! `/metrics` and in the audit log, without the matched text.

use serde_json::{json, Value};

use crate::governance::wait_for_audit;
use crate::harness::http::frame_data;
use crate::harness::{post_raw, Response, Sim, Stack};

const EMAIL: &str = "ada.lovelace@example.com";
const CARD: &str = "4111 1111 1111 1111";
const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
const IP: &str = "10.20.30.40";

const GUARDRAILS: &str = "auth: { mode: open }
guardrails:
  - name: no-keys-to-cloud
    scope: {egress: public}
    detect: [secrets]
    action: block
  - name: no-pii-to-cloud
    scope: {egress: public}
    detect: [email, credit_card, phone]
    action: pseudonymize
  - name: no-hosts
    scope: {egress: public}
    detect: [ip]
    action: redact
  - name: codenames
    scope: {egress: any}
    detect: [custom:codename]
    words: {codename: [bluebird]}
    action: log
";

/// Models `cloud` (OpenAI wire) and `cloud-claude` (Anthropic wire) on public providers, and
/// `smol` on the local replica; all served by one simulator.
fn stack() -> Stack {
    Stack::custom(Sim::start(&[]), |c| {
        c.admin = Some(true);
        let url = c.providers[0].base_url.clone();
        c.extra_providers_yaml = format!(
            "  - {{name: cloud, kind: openai, base_url: \"{url}\", api_key_env: SIM_KEY, public: true}}\n\
             \x20 - {{name: cloud-anthropic, kind: anthropic, base_url: \"{url}\", api_key_env: SIM_ANTHROPIC_KEY, public: true}}\n"
        );
        c.extra_models_yaml = "  - {name: cloud, provider: cloud, model: smollm2}\n  \
             - {name: cloud-claude, provider: cloud-anthropic, model: smollm2}\n"
            .into();
        c.governance_yaml = GUARDRAILS.into();
    })
}

fn echo(stack: &Stack, path: &str, body: &Value) -> Response {
    post_raw(
        stack.agent.addr,
        path,
        &[("x-sim-echo", "1")],
        body.to_string().as_bytes(),
    )
}

fn chat(model: &str, prompt: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 200,
        "stream": stream,
    })
}

/// The body the provider received.
fn received(stack: &Stack) -> String {
    stack.sim.last_request()["body"]
        .as_str()
        .expect("last-request body")
        .to_string()
}

/// The text deltas a client reads from a stream, one per event, in order.
fn deltas(r: &Response) -> Vec<String> {
    let mut out = Vec::new();
    for frame in r.frames() {
        let Some(v) = frame_data(&frame) else {
            continue;
        };
        let mut d = String::new();
        for s in [
            &v["choices"][0]["delta"]["content"],
            &v["choices"][0]["text"],
            &v["delta"]["text"],
        ] {
            d.push_str(s.as_str().unwrap_or(""));
        }
        if v["type"] == "response.output_text.delta" {
            d.push_str(v["delta"].as_str().unwrap_or(""));
        }
        out.push(d);
    }
    out
}

fn streamed_text(r: &Response) -> String {
    deltas(r).concat()
}

#[test]
fn pseudonymized_values_never_reach_the_provider_and_come_back_to_the_client() {
    let stack = stack();
    let prompt = format!("Mail {EMAIL} about card {CARD}, then mail {EMAIL} again.");
    let r = echo(
        &stack,
        "/v1/chat/completions",
        &chat("cloud", &prompt, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let sent = received(&stack);
    assert!(!sent.contains(EMAIL) && !sent.contains(CARD), "{sent}");
    let sent_prompt: Value = serde_json::from_str(&sent).unwrap();
    let sent_prompt = sent_prompt["messages"][0]["content"].as_str().unwrap();
    assert_eq!(
        sent_prompt,
        "Mail <EMAIL_1> about card <CREDIT_CARD_1>, then mail <EMAIL_1> again."
    );

    let answer = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(answer.starts_with(&prompt), "{answer}");
    assert!(!answer.contains("<EMAIL_1>"), "{answer}");

    let row = stack.agent.row_of(&r);
    assert_eq!(
        row.guard.as_deref(),
        Some("email:2:pseudonymize,credit_card:1:pseudonymize"),
        "{row:#?}"
    );
    let m = stack.agent.metrics();
    assert!(
        m.contains("tollgate_guard_findings_total{class=\"email\",action=\"pseudonymize\",side=\"request\"} 2"),
        "{m}"
    );
    let audit = wait_for_audit(&stack, "guard.", 1);
    let entry = audit[0].to_string();
    assert!(entry.contains("guard.pseudonymize") && entry.contains("no-pii-to-cloud"));
    assert!(!entry.contains(EMAIL) && !entry.contains("4111"), "{entry}");
}

#[test]
fn streamed_placeholders_split_across_events_are_restored_for_every_api() {
    let stack = stack();
    let prompt = format!("write to {EMAIL} or {EMAIL}; card {CARD}.");
    let cases = [
        ("/v1/chat/completions", chat("cloud", &prompt, true)),
        (
            "/v1/completions",
            json!({"model": "cloud", "prompt": prompt, "max_tokens": 200, "stream": true}),
        ),
        (
            "/v1/responses",
            json!({"model": "cloud", "input": prompt, "max_output_tokens": 200, "stream": true}),
        ),
        ("/v1/messages", {
            let mut b = chat("cloud-claude", &prompt, true);
            b["max_tokens"] = 200.into();
            b
        }),
    ];
    for (path, body) in cases {
        let r = echo(&stack, path, &body);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let sent = received(&stack);
        assert!(
            !sent.contains(EMAIL) && !sent.contains(CARD) && sent.contains("<EMAIL_1>"),
            "{path}: {sent}"
        );
        let text = streamed_text(&r);
        assert!(text.starts_with(&prompt), "{path}: {text:?}");
        assert!(!r.text().contains("<EMAIL_1>"), "{path}: {}", r.text());
        // The echo came in 3-byte tokens, so each 9-byte placeholder reached Tollgate split
        // across events; each value leaves in the event that completed its placeholder.
        assert!(r.frames().len() > prompt.len() / 3, "{path}: {}", r.text());
        let whole = deltas(&r).iter().filter(|d| d.contains(EMAIL)).count();
        assert_eq!(whole, 2, "{path}: {}", r.text());
        let row = stack.agent.row_of(&r);
        assert_eq!(row.status, 200);
        assert!(row.output_tokens > 0, "{path}: {row:#?}");
    }
}

#[test]
fn block_redact_and_log_each_do_what_they_say() {
    let stack = stack();

    // block: 400 content_blocked, naming the class and never the value; nothing is sent.
    let r = echo(
        &stack,
        "/v1/chat/completions",
        &chat("cloud", "hello", false),
    );
    assert_eq!(r.status, 200);
    let before = stack.sim.last_request();
    let r = echo(
        &stack,
        "/v1/chat/completions",
        &chat("cloud", &format!("deploy with {AWS_KEY} please"), false),
    );
    let e =
        crate::harness::assert_openai_error(&r, 400, "invalid_request_error", "content_blocked");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("aws_key") && msg.contains("no-keys-to-cloud"),
        "{msg}"
    );
    assert!(!r.text().contains(AWS_KEY), "{}", r.text());
    assert_eq!(
        stack.sim.last_request(),
        before,
        "a blocked request reached the provider"
    );
    let row = stack.agent.row_of(&r);
    assert_eq!(row.outcome, "content_blocked");
    assert_eq!(row.guard.as_deref(), Some("aws_key:1:block"));

    // redact: the provider and the client both see the marker.
    let r = echo(
        &stack,
        "/v1/chat/completions",
        &chat("cloud", &format!("ssh to {IP} now"), false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = received(&stack);
    assert!(
        !sent.contains(IP) && sent.contains("[REDACTED_IP]"),
        "{sent}"
    );
    assert!(r.text().contains("[REDACTED_IP]"), "{}", r.text());
    assert_eq!(stack.agent.row_of(&r).guard.as_deref(), Some("ip:1:redact"));

    // log: forwarded as sent, counted and audited.
    let r = echo(
        &stack,
        "/v1/chat/completions",
        &chat("cloud", "status of Bluebird?", false),
    );
    assert_eq!(r.status, 200);
    assert!(received(&stack).contains("Bluebird"));
    assert_eq!(
        stack.agent.row_of(&r).guard.as_deref(),
        Some("custom:codename:1:log")
    );
    let m = stack.agent.metrics();
    for want in [
        "tollgate_guard_findings_total{class=\"aws_key\",action=\"block\",side=\"request\"} 1",
        "tollgate_guard_findings_total{class=\"ip\",action=\"redact\",side=\"request\"} 1",
        "tollgate_guard_findings_total{class=\"custom:codename\",action=\"log\",side=\"request\"} 1",
    ] {
        assert!(m.contains(want), "{want} missing:\n{m}");
    }
    let actions: Vec<String> = wait_for_audit(&stack, "guard.", 3)
        .iter()
        .map(|e| e["action"].as_str().unwrap_or("").to_string())
        .collect();
    for want in ["guard.block", "guard.redact", "guard.log"] {
        assert!(actions.iter().any(|a| a == want), "{actions:?}");
    }
}

#[test]
fn traffic_to_a_private_replica_passes_unchanged() {
    let stack = stack();
    let prompt = format!("Mail {EMAIL} from {IP}");
    let r = echo(
        &stack,
        "/v1/chat/completions",
        &chat("smol", &prompt, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = received(&stack);
    assert!(sent.contains(EMAIL) && sent.contains(IP), "{sent}");
    assert_eq!(stack.agent.row_of(&r).guard, None);
    // The same key to the local replica is not blocked either.
    let r = echo(
        &stack,
        "/v1/chat/completions",
        &chat("smol", &format!("key {AWS_KEY}"), false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Rules on what the local replica answers (it echoes the prompt, so a value planted in the
/// prompt comes back in 3-byte pieces).
const RESPONSE_RULES: &str = "auth: { mode: open }
guardrails:
  - name: no-mail-out
    on: response
    scope: {egress: any}
    detect: [email]
    action: redact
  - name: no-keys-out
    on: response
    scope: {egress: any}
    detect: [aws_key]
    action: block
";

fn response_stack() -> Stack {
    Stack::custom(Sim::start(&[]), |c| {
        c.admin = Some(true);
        c.governance_yaml = RESPONSE_RULES.into();
    })
}

#[test]
fn values_in_responses_are_redacted_across_events_for_every_api() {
    let stack = response_stack();
    let prompt = format!("Reply to {EMAIL} today.");
    let cases = [
        ("/v1/chat/completions", chat("smol", &prompt, true)),
        ("/v1/chat/completions", chat("smol", &prompt, false)),
        (
            "/v1/completions",
            json!({"model": "smol", "prompt": prompt, "max_tokens": 60, "stream": true}),
        ),
        // Translated to chat for the replica and back: scanned in the replica's shape.
        ("/v1/messages", chat("smol", &prompt, true)),
        (
            "/v1/responses",
            json!({"model": "smol", "input": prompt, "max_output_tokens": 60}),
        ),
    ];
    for (path, body) in cases {
        let r = echo(&stack, path, &body);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        // The rule covers responses only: the replica read the prompt as sent.
        assert!(received(&stack).contains(EMAIL), "{path}");
        assert!(!r.text().contains(EMAIL), "{path}: {}", r.text());
        let text = if body["stream"] == true {
            streamed_text(&r)
        } else {
            let v = r.json();
            [
                &v["choices"][0]["message"]["content"],
                &v["output"][0]["content"][0]["text"],
            ]
            .iter()
            .map(|s| s.as_str().unwrap_or("").to_string())
            .collect()
        };
        assert!(
            text.starts_with("Reply to [REDACTED_EMAIL] today."),
            "{path}: {text:?}"
        );
        let row = stack.agent.row_of(&r);
        assert_eq!(
            row.guard.as_deref(),
            Some("response:email:1:redact"),
            "{path}"
        );
        assert!(row.output_tokens > 0, "{path}: {row:#?}");
    }
    let m = stack.agent.metrics();
    let want =
        "tollgate_guard_findings_total{class=\"email\",action=\"redact\",side=\"response\"} 5";
    assert!(m.contains(want), "{m}");
}

#[test]
fn a_blocked_response_ends_with_a_precise_error_and_is_billed() {
    let stack = response_stack();
    let prompt = format!("The key is {AWS_KEY} and more words follow here.");

    // Streamed: the client has had the head and some text; it gets an error event, a clean
    // end, and never the key.
    let r = echo(&stack, "/v1/chat/completions", &chat("smol", &prompt, true));
    assert_eq!(r.status, 200);
    assert!(!r.text().contains(AWS_KEY), "{}", r.text());
    let last = r.frames().last().cloned().expect("events");
    let e = frame_data(&last).expect("error event");
    assert_eq!(e["error"]["code"], "content_blocked", "{}", r.text());
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("no-keys-out") && msg.contains("aws_key"),
        "{msg}"
    );
    let row = stack.agent.row_of(&r);
    assert_eq!(row.outcome, "content_blocked");
    assert_eq!(row.guard.as_deref(), Some("response:aws_key:1:block"));
    // The provider was drained for its own usage: the whole answer is billed.
    assert!(row.output_tokens >= 10, "{row:#?}");

    // Plain: the body was held, so the client gets a 400 instead.
    let r = echo(
        &stack,
        "/v1/chat/completions",
        &chat("smol", &prompt, false),
    );
    crate::harness::assert_openai_error(&r, 400, "invalid_request_error", "content_blocked");
    assert!(!r.text().contains(AWS_KEY));
    let row = stack.agent.row_of(&r);
    assert_eq!(row.outcome, "content_blocked");
    assert!(row.output_tokens > 0, "{row:#?}");
}

/// `smol` checked by the simulator's Llama-Guard emulation (`guard`, which answers `unsafe`
/// when the prompt says "forbidden"); `smol-closed` by a guard model nothing listens for.
fn guard_model_stack() -> Stack {
    Stack::custom(
        Sim::start(&[
            "--model",
            "guard",
            "--guard-model",
            "guard",
            "--guard-flag",
            "forbidden",
        ]),
        |c| {
            c.admin = Some(true);
            c.extra_providers_yaml =
                "  - {name: gone, kind: openai, base_url: \"http://127.0.0.1:9\"}\n".into();
            c.extra_models_yaml = "  - {name: guard, provider: sim, model: guard}\n  \
                 - {name: dead-guard, provider: gone, model: guard}\n  \
                 - {name: smol-closed, provider: sim, model: smollm2}\n  \
                 - {name: smol-open, provider: sim, model: smollm2}\n"
                .into();
            c.governance_yaml = "auth: { mode: open }
guardrails:
  - name: llama-guard
    scope: {egress: any, model: smol}
    guard_model: {model: guard, timeout_ms: 2000}
    action: block
  - name: closed
    scope: {egress: any, model: smol-closed}
    guard_model: {model: dead-guard, timeout_ms: 300, fail: closed}
    action: block
  - name: open
    scope: {egress: any, model: smol-open}
    guard_model: {model: dead-guard, timeout_ms: 300}
    action: block
"
            .into();
        },
    )
}

#[test]
fn a_guard_model_judges_the_prompt_and_its_tokens_are_billed_to_the_caller() {
    let stack = guard_model_stack();
    let team = [("x-tollgate-team", "support")];
    let send = |model: &str, prompt: &str| {
        post_raw(
            stack.agent.addr,
            "/v1/chat/completions",
            &team,
            chat(model, prompt, false).to_string().as_bytes(),
        )
    };

    // Safe: forwarded; the check has a row of its own, attributed to the same team.
    let r = send("smol", "summarise the meeting notes");
    assert_eq!(r.status, 200, "{}", r.text());
    let row = stack.agent.row_of(&r);
    assert_eq!(row.guard, None);
    let check = stack
        .agent
        .ledger_row(&format!("{}.guard0", r.request_id()));
    assert_eq!(check.served_model.as_deref(), Some("guard"));
    assert_eq!(check.team.as_deref(), Some("support"));
    assert_eq!(check.route.as_deref(), Some("guard:llama-guard"));
    assert!(
        check.input_tokens > 0 && check.output_tokens > 0,
        "{check:#?}"
    );

    // Unsafe: refused before the provider sees it, naming the rule and category.
    let before = stack.sim.last_request();
    let r = send("smol", "explain the forbidden recipe");
    let e =
        crate::harness::assert_openai_error(&r, 400, "invalid_request_error", "content_blocked");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("llama-guard") && msg.contains("S1"), "{msg}");
    // The last thing the replica read was the check, not the request.
    let last = stack.sim.last_request();
    assert_ne!(last, before);
    assert!(last["body"].as_str().unwrap().contains("\"max_tokens\":32"));
    let row = stack.agent.row_of(&r);
    assert_eq!(row.guard.as_deref(), Some("guard_model:1:block"));
    assert_eq!(row.outcome, "content_blocked");
    let check = stack
        .agent
        .ledger_row(&format!("{}.guard0", r.request_id()));
    assert!(check.output_tokens > 0);

    // A guard model that cannot answer: fail closed refuses, fail open lets it through.
    let r = send("smol-closed", "hello");
    crate::harness::assert_openai_error(&r, 503, "api_error", "guardrail_unavailable");
    let r = send("smol-open", "hello");
    assert_eq!(r.status, 200, "{}", r.text());
    let audit = wait_for_audit(&stack, "guard.model_unavailable", 2);
    assert!(audit.iter().any(|e| e.to_string().contains("\"closed\"")));
}
