//! The fair queue in front of saturated replicas (`routing.queue`): a bursting tenant waits
//! behind itself, a quiet one goes next; the caps answer 429/503 with `Retry-After` and every
//! refused request has its ledger row. The simulator's `--delay-ms` holds each request long
//! enough that the order of grants, not timing, decides what the tests see.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::procs::SIM_MODEL;
use crate::harness::{assert_openai_error, chat_body, post_raw, Response, Sim, Stack};

/// One worker in front of a simulator that takes `delay_ms` per request, model `fair` on it
/// with `max_in_flight: cap`, and `queue` as the rest of `routing.queue`.
fn gated(delay_ms: &str, cap: u32, queue: &str) -> Stack {
    let models = format!(
        "  - name: fair\n    targets:\n      - {{provider: sim, model: {SIM_MODEL}, max_in_flight: {cap}}}\n"
    );
    let routing = format!("routing: {{queue: {{{queue}}}}}\n");
    Stack::custom(Sim::start(&["--delay-ms", delay_ms]), move |c| {
        c.workers = 1;
        c.extra_models_yaml = models;
        c.governance_yaml.push_str(&routing);
    })
}

fn ask(addr: std::net::SocketAddr, team: &str, tag: &str) -> Response {
    let body = chat_body("fair", &format!("{team} {tag}"), 2, false).to_string();
    post_raw(
        addr,
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("x-tollgate-team", team),
        ],
        body.as_bytes(),
    )
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn a_bursting_tenant_queues_behind_itself_and_a_quiet_one_goes_next() {
    let stack = gated("400", 2, "max_waiting: 64, max_waiting_per_tenant: 32");
    let addr = stack.agent.addr;
    let done: Arc<Mutex<Vec<(String, Response)>>> = Arc::default();
    let spawn = |team: &'static str, i: usize| {
        let done = done.clone();
        std::thread::spawn(move || {
            let r = ask(addr, team, &i.to_string());
            assert_eq!(r.status, 200, "{}", r.text());
            done.lock().unwrap().push((format!("{team}{i}"), r));
        })
    };
    // Team a sends twelve at once: two run, ten wait.
    let mut threads: Vec<_> = (0..12).map(|i| spawn("a", i)).collect();
    std::thread::sleep(Duration::from_millis(150));
    let m = stack.agent.metrics();
    assert_eq!(
        metric(&m, "tollgate_queue_slots{model=\"fair\",state=\"in_use\"}"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "tollgate_queue_waiting{model=\"fair\",tenant=\"team:a\",class=\"interactive\"}"
        ),
        Some(10.0),
        "{m}"
    );
    // Team b sends two: with first-come-first-served they would finish thirteenth and
    // fourteenth; by tokens served they are let through among the next slots.
    threads.extend((0..2).map(|i| spawn("b", i)));
    for t in threads {
        t.join().expect("request thread");
    }
    let done = std::mem::take(&mut *done.lock().unwrap());
    // The ledger says how long each request waited for its slot.
    let (_, b0) = done
        .iter()
        .find(|(n, _)| n.starts_with('b'))
        .expect("b done");
    let route = stack.agent.row_of(b0).route.unwrap_or_default();
    assert!(route.starts_with("queued "), "{route}");
    let order: Vec<String> = done.into_iter().map(|(n, _)| n).collect();
    let last_b = order
        .iter()
        .rposition(|n| n.starts_with('b'))
        .expect("b finished");
    assert!(last_b <= 6, "b waited behind a's burst: {order:?}");
    let m = stack.agent.metrics();
    assert_eq!(
        metric(&m, "tollgate_queue_waited_total{model=\"fair\"}"),
        Some(12.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!("tollgate_target_in_flight{{target=\"sim/{SIM_MODEL}\"}}")
        ),
        Some(0.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "tollgate_queue_tenant_tokens{model=\"fair\",tenant=\"team:b\"}"
        )
        .is_some_and(|v| v > 0.0),
        "{m}"
    );
}

#[test]
fn full_queues_and_long_waits_are_refused_with_retry_after_and_recorded() {
    let stack = gated(
        "1500",
        1,
        "max_waiting: 4, max_waiting_per_tenant: 3, max_wait_ms: 400",
    );
    let addr = stack.agent.addr;
    let running = std::thread::spawn(move || ask(addr, "a", "runs"));
    std::thread::sleep(Duration::from_millis(150));
    let waiting: Vec<_> = (0..3)
        .map(|i| std::thread::spawn(move || ask(addr, "a", &format!("waits {i}"))))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    // The tenant has its three waiting: its fourth is refused at once.
    let r = ask(addr, "a", "one too many");
    assert_openai_error(&r, 429, "requests", "tenant_queue_full");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Another tenant fills the model's queue; the next request finds it full.
    let b = std::thread::spawn(move || ask(addr, "b", "waits"));
    std::thread::sleep(Duration::from_millis(50));
    let r = ask(addr, "c", "queue is full");
    assert_openai_error(&r, 503, "api_error", "queue_full");
    assert_eq!(r.header("retry-after"), Some("1"));
    // The waiters give up after max_wait_ms, long before the running request ends.
    for t in waiting.into_iter().chain([b]) {
        let r = t.join().expect("waiting request");
        assert_openai_error(&r, 503, "api_error", "queue_timeout");
        assert_eq!(r.header("retry-after"), Some("1"));
        let row = stack.agent.row_of(&r);
        assert_eq!((row.status, row.input_tokens), (503, 0), "{row:#?}");
    }
    let r = running.join().expect("running request");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(stack.agent.row_of(&r).status, 200);
    let m = stack.agent.metrics();
    for (reason, n) in [
        ("tenant_queue_full", 1.0),
        ("queue_full", 1.0),
        ("queue_timeout", 4.0),
    ] {
        assert_eq!(
            metric(
                &m,
                &format!("tollgate_queue_refused_total{{model=\"fair\",reason=\"{reason}\"}}")
            ),
            Some(n),
            "{reason}: {m}"
        );
    }
    // Nothing is left waiting or holding a slot.
    assert_eq!(
        metric(&m, "tollgate_queue_slots{model=\"fair\",state=\"in_use\"}"),
        Some(0.0)
    );
    // Seven requests, seven rows.
    assert_eq!(
        crate::harness::ledger::at_least(&stack.agent.data_dir, 7, |_| true).len(),
        7
    );
}
