//! A provider changes its tokenizer behind the same model name (a new `system_fingerprint`,
//! and twice the tokens per prompt byte): the agent notices on the live traffic, counts it in
//! `tollgate_tokenizer_drift_total`, audits it, and `tollgate report findings` names it with
//! the requests behind it.

use serde_json::Value;

use crate::governance::admin;
use crate::harness::procs::SIM_MODEL;
use crate::harness::{chat_body, post_json, Sim, Stack};

/// Sends `n` priced chats whose prompts differ; each must be counted by the provider.
fn traffic(stack: &Stack, n: usize, tag: &str) {
    for i in 0..n {
        let prompt = format!("{tag} request {i}: how many tokens is this sentence today?");
        let r = post_json(
            stack.agent.addr,
            "/v1/chat/completions",
            &chat_body("smol", &prompt, 2, false),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let row = stack.agent.row_of(&r);
        assert!(!row.estimated, "{row:#?}");
    }
}

#[test]
fn a_silent_tokenizer_change_is_found_counted_and_audited() {
    let mut stack = Stack::custom(Sim::start(&["--system-fingerprint", "fp_old"]), |c| {
        c.admin = Some(true);
    });
    traffic(&stack, 25, "before");
    // The same model name, now counting two bytes per token instead of four.
    stack
        .sim
        .replace(&["--system-fingerprint", "fp_new", "--bytes-per-token", "2"]);
    traffic(&stack, 25, "after");

    let metrics = stack.agent.metrics();
    let line = format!("tollgate_tokenizer_drift_total{{model=\"{SIM_MODEL}\"}} 1");
    assert!(
        metrics.lines().any(|l| l == line),
        "no `{line}` in:\n{metrics}"
    );

    let addr = stack.agent.admin_addr().expect("an admin listener");
    let audit = admin(addr, "GET", "/admin/audit?action=tokenizer.drift", None).json();
    let entries = audit["entries"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 1, "{audit}");
    let detail = &entries[0]["detail"];
    assert_eq!(detail["from"], format!("{SIM_MODEL}@fp_old"));
    assert_eq!(detail["to"], format!("{SIM_MODEL}@fp_new"));
    let change = detail["change_pct"].as_f64().unwrap_or_default();
    assert!((80.0..=120.0).contains(&change), "about +100 %: {detail}");

    let out = crate::governance::cli_on_data(&stack, &["report", "findings", "--format", "json"]);
    let list: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let drift = list
        .as_array()
        .and_then(|l| l.iter().find(|f| f["kind"] == "tokenizer_drift"))
        .unwrap_or_else(|| panic!("no tokenizer_drift in {out}"));
    assert_eq!(
        drift["subject"],
        format!("{SIM_MODEL}: {SIM_MODEL}@fp_old -> {SIM_MODEL}@fp_new")
    );
    assert_eq!(
        drift["examples"].as_array().map(Vec::len),
        Some(5),
        "{drift}"
    );
}
