//! The ledger is durable: SIGTERM stops the agent gracefully (exit 0, everything flushed), a new
//! agent on the same data dir keeps the old rows and adds to them, and `tollgate usage` sums
//! them (json, csv and table).

use std::time::Duration;

use serde_json::Value;

use crate::harness::ledger;
use crate::harness::procs::run_tollgate;
use crate::harness::{chat_body, messages_body, post_json, prompt_tokens, Stack};

#[test]
fn rows_survive_a_restart_and_usage_sums_them() {
    let mut stack = Stack::start();
    let prompts = ["before the restart", "also before the restart"];
    let mut ids = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let r = post_json(
            stack.agent.addr,
            "/v1/chat/completions",
            &chat_body("smol", prompt, 2 + i as u64, false),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        ids.push(r.request_id().to_string());
    }
    let r = post_json(
        stack.agent.addr,
        "/v1/messages",
        &messages_body("sys", "anthropic row", 3, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    ids.push(r.request_id().to_string());

    let status = stack.agent.stop();
    assert!(status.success(), "graceful stop exits 0, got {status}");
    // Flushed at shutdown, not only eventually.
    let rows = ledger::all(&stack.agent.data_dir);
    assert_eq!(rows.len(), 3, "{rows:#?}");

    stack.agent.restart(1);
    let after = "after the restart";
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", after, 5, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let new_row = stack.agent.row_of(&r);
    assert!(!ids.contains(&new_row.id), "a new agent issues new ids");
    for id in &ids {
        assert_eq!(&stack.agent.ledger_row(id).id, id);
    }
    let status = stack.agent.stop();
    assert!(status.success());

    let data_dir = stack
        .agent
        .data_dir
        .to_str()
        .expect("utf-8 path")
        .to_string();
    let usage = |by: &str, format: &str| {
        let out = run_tollgate(
            &[
                "usage",
                "--data-dir",
                &data_dir,
                "--by",
                by,
                "--format",
                format,
            ],
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "{out:#?}");
        out.stdout
    };
    let json: Value = serde_json::from_str(&usage("model", "json")).expect("usage json");
    let by_key = |key: &str| {
        json.as_array()
            .expect("a list")
            .iter()
            .find(|e| e["key"] == key)
            .unwrap_or_else(|| panic!("no {key} in {json}"))
            .clone()
    };
    let smol = by_key("smol");
    assert_eq!(smol["requests"], 3, "{json}");
    assert_eq!(smol["errors"], 0, "{json}");
    assert_eq!(
        smol["input_tokens"],
        prompts.iter().map(|p| prompt_tokens(p)).sum::<i64>() + prompt_tokens(after),
        "{json}"
    );
    assert_eq!(smol["output_tokens"], 2 + 3 + 5, "{json}");
    let claude = by_key("claude");
    assert_eq!(
        (claude["requests"].clone(), claude["output_tokens"].clone()),
        (1.into(), 3.into())
    );

    let csv = usage("provider", "csv");
    let mut lines = csv.lines();
    let header = lines.next().expect("csv header");
    assert!(header.starts_with("provider,requests"), "{csv}");
    let sim_line = lines
        .find(|l| l.starts_with("sim,"))
        .unwrap_or_else(|| panic!("no sim row in {csv}"));
    assert_eq!(sim_line.split(',').nth(1), Some("3"), "{csv}");

    let table = usage("model", "table");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("smol") && l.split_whitespace().nth(1) == Some("3")),
        "{table}"
    );
}
