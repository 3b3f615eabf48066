//! A crash never forgets spend: with the ledger writer holding records uncommitted (a 10-minute
//! flush interval), requests are journalled; after SIGKILL, the next agent on the same data dir
//! commits every journalled record with the provider's numbers, and removes the old journals.

use std::time::{Duration, Instant};

use crate::harness::ledger;
use crate::harness::{chat_body, messages_body, post_json, Stack};

/// Every `.log` file under the journal dir, with its contents.
fn journals(data_dir: &std::path::Path) -> Vec<(std::path::PathBuf, String)> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("journal")) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .map(|p| {
            // Records are postcard-encoded; their strings (request ids) are stored as UTF-8.
            let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).into_owned();
            (p, text)
        })
        .collect()
}

#[test]
fn records_survive_sigkill_before_commit() {
    let mut stack = Stack::custom(crate::harness::procs::Sim::start(&[]), |c| {
        c.ledger_flush_interval_ms = 600_000;
    });
    let bodies = [
        (
            "/v1/chat/completions",
            chat_body("smol", "crash me softly", 4, false),
        ),
        (
            "/v1/chat/completions",
            chat_body("smol", "streamed before the crash", 5, true),
        ),
        (
            "/v1/messages",
            messages_body("sys", "anthropic before the crash", 3, false),
        ),
    ];
    let mut expected = Vec::new();
    let mut plain_ids = Vec::new();
    for (path, body) in &bodies {
        let r = post_json(stack.agent.addr, path, body);
        assert_eq!(r.status, 200, "{}", r.text());
        expected.push(r.request_id().to_string());
        if !body["stream"].as_bool().unwrap_or(false) {
            plain_ids.push(r.json()["id"].as_str().expect("response id").to_string());
        }
    }

    // Settle journals each record right after its response; wait (bounded) until all three are.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all: String = journals(&stack.agent.data_dir)
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        if expected.iter().all(|id| all.contains(id.as_str())) {
            break;
        }
        assert!(Instant::now() < deadline, "records not journalled: {all}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // One request at a time: each plain response was journalled with its body, its usage read
    // only after the client had it (`settle::seal_unread`), so replay reads the usage below.
    let all: String = journals(&stack.agent.data_dir)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(plain_ids.len(), 2);
    for id in &plain_ids {
        assert!(all.contains(id.as_str()), "body of {id} not journalled");
    }
    // The writer is holding them: nothing is in SQLite yet.
    let before = ledger::all(&stack.agent.data_dir);
    assert!(
        expected.iter().all(|id| before.iter().all(|r| &r.id != id)),
        "the long flush interval should keep rows uncommitted: {before:#?}"
    );
    let old_journals: Vec<_> = journals(&stack.agent.data_dir)
        .into_iter()
        .map(|(p, _)| p)
        .collect();

    stack.agent.crash_and_restart(1);

    let rows = ledger::all(&stack.agent.data_dir);
    for id in &expected {
        let row = rows
            .iter()
            .find(|r| &r.id == id)
            .unwrap_or_else(|| panic!("{id} lost: {rows:#?}"));
        assert_eq!(row.status, 200, "{row:#?}");
        assert!(row.input_tokens > 0 && row.output_tokens > 0, "{row:#?}");
        assert!(!row.estimated, "the provider reported usage: {row:#?}");
    }
    let chat = rows.iter().find(|r| r.id == expected[0]).expect("chat row");
    assert_eq!(
        chat.output_tokens, 4,
        "the sim generates max_tokens: {chat:#?}"
    );
    let anthropic = rows
        .iter()
        .find(|r| r.id == expected[2])
        .expect("messages row");
    assert_eq!(
        (anthropic.api.as_str(), anthropic.output_tokens),
        ("messages", 3)
    );
    for p in &old_journals {
        assert!(!p.exists(), "replayed journal {} is removed", p.display());
    }

    // The recovered agent serves and journals as usual; a graceful stop leaves no journal.
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", "after", 2, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let status = stack.agent.stop();
    assert!(status.success(), "{status}");
    assert_eq!(
        ledger::row(&stack.agent.data_dir, r.request_id()).output_tokens,
        2
    );
    assert!(
        journals(&stack.agent.data_dir).is_empty(),
        "a clean stop commits and removes its journals"
    );
}
