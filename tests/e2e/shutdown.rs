//! Shutdown loses nothing: a request still running when the shutdown grace expires is cut and
//! recorded (outcome `shutdown`, usage as far as it went, estimated), and requests that finish
//! inside the grace are recorded as usual.

use std::time::Duration;

use crate::harness::{chat_body, ledger, post_json, Client, Sim, Stack};

#[test]
fn a_stream_cut_by_shutdown_has_its_record() {
    // 400 tokens at ~20 ms each: the stream outlives a 300 ms grace by far.
    let mut stack = Stack::custom(Sim::start_paced(&["--itl-base-ms", "20"]), |c| {
        c.shutdown_grace_ms = Some(300);
    });
    let done = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", "finished before the stop", 2, false),
    );
    assert_eq!(done.status, 200, "{}", done.text());

    let (mut client, id) = Client::start_stream(
        stack.agent.addr,
        &chat_body("smol", "cut by the stop", 400, true),
    );
    for _ in 0..5 {
        client
            .next_frame()
            .expect("a frame")
            .expect("not the end yet");
    }

    let status = stack.agent.stop();
    assert!(status.success(), "tollgate exited with {status}");
    // The client's stream was cut, not ended: no [DONE].
    client.set_read_timeout(Duration::from_secs(2));
    let mut rest = String::new();
    while let Ok(Some(frame)) = client.next_frame() {
        rest.push_str(&frame);
    }
    assert!(!rest.contains("[DONE]"), "{rest}");

    let rows = ledger::all(&stack.agent.data_dir);
    let cut = rows
        .iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("no row for the cut stream in {rows:#?}"));
    assert_eq!(
        (cut.status, cut.outcome.as_str()),
        (200, "shutdown"),
        "{cut:#?}"
    );
    assert!(
        cut.estimated && cut.output_tokens >= 5,
        "billed as far as it went: {cut:#?}"
    );
    assert!(cut.input_tokens > 0, "{cut:#?}");
    let ok = rows
        .iter()
        .find(|r| r.id == done.request_id())
        .expect("the finished request's row");
    assert_eq!(ok.outcome, "ok");
}
