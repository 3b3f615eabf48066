//! An upgrade under intercepted load: a new agent starts on the same address, data and pin
//! directories while the old one serves, takes the kernel programs over, and the old one drains
//! and exits. Clients that talk to the provider's own address (intercepted, no idea an agent
//! exists) see no failure, and every one of their requests is metered: a response without the
//! agent's request id would have reached the provider directly (the interception gap).
//! Connections the kernel had queued on the old agent's listeners when it stops migrate to the
//! new agent's (`sk_reuseport/migrate`); without that, a few were reset under load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::http::post_json;
use crate::harness::{chat_body, ledger, AgentConfig, Sim};
use crate::interception::{skip_reason, KernelAgent, Launch};

#[derive(Default)]
struct Tally {
    ids: Vec<String>,
    /// Answered by the provider directly: not intercepted, not metered.
    direct: usize,
    failures: Vec<String>,
}

#[test]
fn an_upgrade_under_intercepted_load_fails_nothing_and_meters_everything() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let sim = Sim::start_paced(&["--itl-base-ms", "2"]);
    let mut config = AgentConfig::for_sim(&sim);
    config.workers = 1;
    let listen = format!("127.0.0.1:{}", crate::harness::procs::free_port());
    let extra = format!("intercept: [\"{}\"]\n", sim.addr);
    let mut old = KernelAgent::launch(config, &extra, &listen, &Launch::Plain);
    if let Some(why) = old.kernel_refused() {
        eprintln!("skipping: the host refused the kernel programs: {why}");
        return;
    }
    let old_pid = old.proc.as_ref().map(|p| p.pid());

    let dst = sim.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (stop, tally) = (stop.clone(), tally.clone());
            std::thread::spawn(move || {
                let stream = i % 2 == 1;
                while !stop.load(Ordering::Relaxed) {
                    // To the provider's address: the kernel sends it to whichever agent acts.
                    let r = post_json(
                        dst,
                        "/v1/chat/completions",
                        &chat_body("smol", "upgrade", 30, stream),
                    );
                    let complete = !stream || r.text().contains("data: [DONE]");
                    let mut t = tally.lock().expect("tally");
                    match r.header("x-tollgate-request-id") {
                        Some(id) if r.status == 200 && complete => t.ids.push(id.to_string()),
                        None if r.status == 200 && complete => t.direct += 1,
                        _ => t.failures.push(format!("{} {}", r.status, r.text())),
                    }
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(400));
    let before_new = tally.lock().expect("tally").ids.len();
    let mut new = old.successor();
    // (`/readyz` may be answered by either agent: they share the port.)
    let log = new
        .proc
        .as_ref()
        .map(|p| p.stderr_text())
        .unwrap_or_default();
    let took_over = old_pid.is_some_and(|pid| {
        log.lines().any(|l| {
            l.contains("took the kernel programs over") && l.contains(&format!("from_pid={pid}"))
        })
    });
    assert!(
        took_over,
        "the new agent did not take the programs over:\n{log}"
    );
    // Connections queued on the old agent's listeners when it stops move to these.
    assert!(
        log.contains("queued connections migrate to a successor's listener"),
        "no request migration on the listening group:\n{log}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let at_stop = tally.lock().expect("tally").ids.len();
    let stopped = Instant::now();
    let status = old
        .proc
        .as_mut()
        .expect("old agent")
        .terminate()
        .expect("SIGTERM");
    assert!(status.success(), "the old agent exited with {status}");
    let drained_in = stopped.elapsed();
    std::thread::sleep(Duration::from_millis(600));
    // The new agent owns the pins now: still there, still intercepting.
    assert!(
        old.pin_dir.join("tg_config").exists(),
        "the old agent removed the pins"
    );
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let status = new
        .proc
        .as_mut()
        .expect("new agent")
        .terminate()
        .expect("SIGTERM");
    assert!(status.success(), "the new agent exited with {status}");
    assert!(
        !new.pin_dir.exists(),
        "the new agent, as owner, removes the pins"
    );

    let t = tally.lock().expect("tally");
    assert!(t.failures.is_empty(), "failed requests: {:#?}", t.failures);
    assert_eq!(
        t.direct, 0,
        "requests that bypassed both agents (the interception gap)"
    );
    assert!(
        before_new > 0 && t.ids.len() > at_stop,
        "{before_new} / {at_stop} / {}",
        t.ids.len()
    );
    let missing = ledger::ids_without_rows(&old.data_dir, &t.ids);
    assert!(
        missing.is_empty(),
        "{} of {} responses have no row: {missing:?}",
        missing.len(),
        t.ids.len()
    );
    eprintln!(
        "upgrade under intercepted load: {} responses ({before_new} before the new agent, {at_stop} \
         when the old one was stopped, drained in {} ms), 0 failed, 0 unmetered (gap), 0 rows missing",
        t.ids.len(),
        drained_in.as_millis()
    );
}
