//! A `kill -9` under load loses no response: every 200 a client received in full has its ledger
//! row after the restart. The record is journalled before the response's last byte is written,
//! so no client can hold a complete response whose record is not in the journal. (Journalling
//! after the write lost a few rows per kill.) The ledger writer is held back (a 10-minute flush
//! interval) so that every row must come from the journal.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::http::request_bytes;
use crate::harness::{chat_body, ledger, Client, Sim, Stack};

/// The 200 after which a client thread SIGKILLs the agent.
const KILL_AFTER: usize = 600;

#[test]
fn every_200_has_a_row_after_sigkill_under_load() {
    let mut stack = Stack::custom(Sim::start(&[]), |c| c.ledger_flush_interval_ms = 600_000);
    let addr = stack.agent.addr;
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let pid = stack.agent.proc.pid() as libc::pid_t;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (received, count, stop) = (received.clone(), count.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                client.set_read_timeout(Duration::from_secs(5));
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let body =
                        chat_body("smol", &format!("load {t} {i}"), 3, i % 2 == 0).to_string();
                    let req = request_bytes("POST", "/v1/chat/completions", &[], body.as_bytes());
                    // Any failure means the agent is gone: stop counting.
                    if client.send(&req).is_err() {
                        return;
                    }
                    let Ok(r) = client.read_response() else {
                        return;
                    };
                    if r.status == 200 {
                        received
                            .lock()
                            .expect("lock")
                            .push(r.request_id().to_string());
                        // The kill lands right after a response was written, while the other
                        // connections are mid-request: the moment a late journal write loses.
                        if count.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                            // SAFETY: kill(2) on the agent's pid: our child, not yet reaped.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(
            Instant::now() < deadline,
            "only {} responses",
            count.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // The agent is dead (or dying): reap it and start it again on the same data dir.
    stack.agent.crash_and_restart(1);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let ids = received.lock().expect("lock").clone();
    assert!(ids.len() >= KILL_AFTER);
    let rows = ledger::all(&stack.agent.data_dir);
    let missing = ledger::ids_without_rows(&stack.agent.data_dir, &ids);
    assert!(
        missing.is_empty(),
        "{} of {} received 200s have no row after the restart, e.g. {:?}",
        missing.len(),
        ids.len(),
        &missing[..missing.len().min(5)]
    );
    for row in rows.iter().filter(|r| ids.contains(&r.id)) {
        assert_eq!(row.status, 200, "{row:#?}");
        assert!(row.output_tokens > 0, "{row:#?}");
    }
}
