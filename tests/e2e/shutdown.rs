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

/// A stopping agent closes a keep-alive connection that waits between requests (its client
/// retries elsewhere), but answers a connection it accepted before the stop and has not yet
/// read a request from: that client connected to send one, and a close would fail it. The
/// answer says `Connection: close` and has its ledger row.
#[test]
fn a_connection_opened_before_the_stop_gets_its_request_answered() {
    let mut stack = Stack::custom(Sim::start(&[]), |c| {
        c.shutdown_grace_ms = Some(10_000);
    });
    let addr = stack.agent.addr;
    let mut reused = Client::connect(addr);
    let first = reused.post_chat(&chat_body("smol", "before the stop", 2, false));
    assert_eq!(first.status, 200, "{}", first.text());
    let mut fresh = Client::connect(addr);
    // Both connections accepted and waiting before the stop (the scrape's own connection is
    // the third open one).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open_connections(&stack.agent.metrics()) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not accept both connections"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = libc::pid_t::try_from(stack.agent.proc.pid()).expect("pid");
    // SAFETY: kill(2) on the agent this test spawned, which has not been reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    // The idle keep-alive connection is closed by the stop ...
    reused.set_read_timeout(Duration::from_secs(5));
    assert!(reused.closed_by_peer(), "the idle connection stayed open");
    // ... and the fresh one, still open, carries its request through the drain.
    let late = fresh.post_chat(&chat_body("smol", "during the drain", 2, false));
    assert_eq!(late.status, 200, "{}", late.text());
    assert_eq!(
        late.header("connection"),
        Some("close"),
        "{:?}",
        late.headers
    );
    let status = stack.agent.stop();
    assert!(status.success(), "tollgate exited with {status}");
    let rows = ledger::all(&stack.agent.data_dir);
    for id in [first.request_id(), late.request_id()] {
        let row = rows
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no row for {id} in {rows:#?}"));
        assert_eq!((row.status, row.outcome.as_str()), (200, "ok"), "{row:#?}");
    }
}

/// `tollgate_connections_open` in a metrics scrape.
fn open_connections(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_connections_open "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A rolling replacement on one node: the new agent starts on the same port (SO_REUSEPORT) and
/// data directory while the old one serves, then the old one gets SIGTERM and drains. Clients
/// open a connection per request, plain and streamed, throughout: none fails, every response
/// that came through an agent has its ledger row, and both agents served some.
#[test]
fn a_replacement_on_the_same_port_fails_no_request_and_loses_no_row() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    // Paced tokens: a 30-token stream is in flight for ~100 ms or more, so some straddle the stop.
    let sim = Sim::start_paced(&["--itl-base-ms", "2"]);
    let mut config = crate::harness::AgentConfig::for_sim(&sim);
    config.workers = 1;
    let port = crate::harness::procs::free_port();
    let dir = crate::harness::procs::TempDir::new("replace");
    let data_dir = dir.path().join("data");
    let config_path = dir.path().join("tollgate.yaml");
    let listen = format!("127.0.0.1:{port}");
    std::fs::write(&config_path, config.render(&data_dir)).expect("writing the config");
    let mut old = crate::harness::procs::Agent::start_file_on(&config_path, &data_dir, &listen);
    let addr = old.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let ids = Arc::new(Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (stop, ids, failures) = (stop.clone(), ids.clone(), failures.clone());
            std::thread::spawn(move || {
                let stream = i % 2 == 1;
                while !stop.load(Ordering::Relaxed) {
                    let r = post_json(
                        addr,
                        "/v1/chat/completions",
                        &chat_body("smol", "rolling", 30, stream),
                    );
                    let complete = !stream || r.text().contains("data: [DONE]");
                    match r.header("x-tollgate-request-id") {
                        Some(id) if r.status == 200 && complete => {
                            ids.lock().expect("ids").push(id.to_string())
                        }
                        _ => failures.lock().expect("failures").push(format!(
                            "{} {}",
                            r.status,
                            r.text()
                        )),
                    }
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(400));
    let before_new = ids.lock().expect("ids").len();
    // The new agent binds the same port beside the old one, then the old one drains.
    let mut new = crate::harness::procs::Agent::start_file_on(&config_path, &data_dir, &listen);
    assert_eq!(new.addr, addr);
    std::thread::sleep(Duration::from_millis(200));
    let status = old.stop();
    assert!(status.success(), "the old agent exited with {status}");
    let at_stop = ids.lock().expect("ids").len();
    std::thread::sleep(Duration::from_millis(600));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let status = new.stop();
    assert!(status.success(), "the new agent exited with {status}");

    let failures = failures.lock().expect("failures");
    assert!(failures.is_empty(), "failed requests: {failures:#?}");
    let ids = ids.lock().expect("ids");
    assert!(
        before_new > 0 && ids.len() > at_stop,
        "{before_new} / {at_stop} / {}",
        ids.len()
    );
    let missing = ledger::ids_without_rows(&data_dir, &ids);
    assert!(
        missing.is_empty(),
        "{} of {} responses have no row: {missing:?}",
        missing.len(),
        ids.len()
    );
    eprintln!(
        "rolling replacement: {} responses ({} before the new agent, {} by the old agent's stop), 0 failed, 0 rows missing",
        ids.len(),
        before_new,
        at_stop
    );
}
