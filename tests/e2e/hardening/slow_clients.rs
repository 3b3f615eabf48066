//! Slow and greedy clients: deadlines are absolute (a byte every few hundred milliseconds does
//! not keep a head or body alive past its deadline), a worker holds at most
//! `max_connections_per_worker` connections, and buffers at most
//! `max_buffered_bytes_per_worker` of request bodies; past either cap a client gets 503 with
//! `Retry-After` instead of the agent growing without bound.

use std::time::{Duration, Instant};

use crate::harness::{assert_openai_error, chat_body, post_json, Client, Sim, Stack};

/// Sends `bytes` one at a time, `gap` apart, until the peer answers or closes; returns how long
/// that took.
fn trickle(client: &mut Client, bytes: &[u8], gap: Duration) -> Duration {
    let start = Instant::now();
    for b in bytes {
        if client.send(std::slice::from_ref(b)).is_err() {
            break;
        }
        std::thread::sleep(gap);
        if start.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    start.elapsed()
}

#[test]
fn a_trickled_head_hits_its_absolute_deadline() {
    let stack = Stack::custom(Sim::start(&[]), |c| c.header_timeout_ms = 800);
    let mut client = Client::connect(stack.agent.addr);
    client.set_read_timeout(Duration::from_secs(5));
    let head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: e2e\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    // One byte every 100 ms would take ~13 s; each byte arrives well inside the timeout.
    let spent = trickle(&mut client, head, Duration::from_millis(100));
    let r = client.read_response().expect("408 response");
    assert_openai_error(&r, 408, "invalid_request_error", "request_timeout");
    assert!(
        spent < Duration::from_secs(5),
        "the connection was held {spent:?}"
    );
}

#[test]
fn a_trickled_body_hits_its_absolute_deadline() {
    let stack = Stack::custom(Sim::start(&[]), |c| c.body_timeout_ms = 800);
    let mut client = Client::connect(stack.agent.addr);
    client.set_read_timeout(Duration::from_secs(5));
    client
        .send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: e2e\r\ncontent-length: 200\r\n\r\n")
        .expect("head");
    let spent = trickle(&mut client, &[b' '; 200], Duration::from_millis(100));
    let r = client.read_response().expect("408 response");
    assert_openai_error(&r, 408, "invalid_request_error", "request_timeout");
    assert!(
        spent < Duration::from_secs(5),
        "the connection was held {spent:?}"
    );
    // A timed-out body is a request that was answered: it has its ledger row.
    let row = stack.agent.row_of(&r);
    assert_eq!((row.status, row.outcome.as_str()), (408, "request_timeout"));
}

#[test]
fn connections_over_the_cap_get_503() {
    let stack = Stack::custom(Sim::start(&[]), |c| {
        c.workers = 1;
        c.extra_limits = vec![("max_connections_per_worker".into(), "4".into())];
    });
    let held: Vec<Client> = (0..4).map(|_| Client::connect(stack.agent.addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut over = Client::connect(stack.agent.addr);
    let r = over.read_response().expect("503 response");
    let e = assert_openai_error(&r, 503, "api_error", "overloaded");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("connections")),
        "{e}"
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    // Once held connections close, new ones are served again.
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", "room again", 1, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let metrics = stack.agent.metrics();
    assert!(
        metrics.contains("tollgate_connections_refused_total 1"),
        "{metrics}"
    );
}

#[test]
fn buffered_body_bytes_over_the_cap_get_503() {
    let stack = Stack::custom(Sim::start(&["--max-model-len", "1000000"]), |c| {
        c.workers = 1;
        c.body_timeout_ms = 10_000;
        c.max_body_bytes = 1024 * 1024;
        c.extra_limits = vec![("max_buffered_bytes_per_worker".into(), "2200000".into())];
    });
    let announce = |n: usize| {
        format!("POST /v1/chat/completions HTTP/1.1\r\nhost: e2e\r\ncontent-length: {n}\r\n\r\n{{\"model\":")
    };
    // Two bodies of 1 MiB are being received (half sent): 2 MiB of the 2.2 MB budget.
    let mut slow: Vec<Client> = (0..2)
        .map(|_| {
            let mut c = Client::connect(stack.agent.addr);
            c.send(announce(1024 * 1024).as_bytes()).expect("head");
            c.send(&vec![b' '; 512 * 1024]).expect("half a body");
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut third = Client::connect(stack.agent.addr);
    third.send(announce(512 * 1024).as_bytes()).expect("head");
    let r = third.read_response().expect("503 response");
    assert_openai_error(&r, 503, "api_error", "overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    // A small body still fits in what is left.
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", "small fits", 1, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // When the slow bodies end, their share is given back and a large body fits again.
    slow.clear();
    std::thread::sleep(Duration::from_millis(300));
    let big = "y".repeat(900 * 1024);
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", &big, 1, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}
