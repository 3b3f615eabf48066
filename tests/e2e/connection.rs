//! HTTP/1.1 connection handling: pipelined requests (several in one write) are answered in
//! order, chunked request bodies are accepted and forwarded whole, keep-alive connections carry
//! many requests, and `connection: close` is honoured.

use serde_json::{json, Value};

use crate::harness::http::request_bytes;
use crate::harness::{chat_body, prompt_tokens, Client, Stack};

#[test]
fn pipelined_requests_are_answered_in_order() {
    let stack = Stack::start();
    let chat = chat_body("smol", "first in line", 1, false).to_string();
    let completion =
        json!({"model": "smol", "prompt": "second in line", "max_tokens": 2}).to_string();
    let mut batch = request_bytes("POST", "/v1/chat/completions", &[], chat.as_bytes());
    batch.extend(request_bytes("GET", "/healthz", &[], b""));
    batch.extend(request_bytes(
        "POST",
        "/v1/completions",
        &[],
        completion.as_bytes(),
    ));

    let mut client = Client::connect(stack.agent.addr);
    client.send(&batch).expect("one write with three requests");
    let first = client.read_response().expect("first response");
    let second = client.read_response().expect("second response");
    let third = client.read_response().expect("third response");

    assert_eq!((first.status, second.status, third.status), (200, 200, 200));
    let first_body = first.json();
    assert_eq!(first_body["object"], "chat.completion", "{first_body}");
    assert_eq!(first_body["usage"]["completion_tokens"], 1);
    assert_eq!(second.json()["status"], "ok");
    let third_body = third.json();
    assert_eq!(third_body["object"], "text_completion", "{third_body}");
    assert_eq!(third_body["usage"]["completion_tokens"], 2);
    assert_ne!(first.request_id(), third.request_id());
    assert_eq!(stack.agent.row_of(&first).api, "chat");
    assert_eq!(stack.agent.row_of(&third).api, "completions");
}

#[test]
fn chunked_request_body_is_forwarded_whole() {
    let stack = Stack::start();
    let prompt = "sent in three chunks";
    let body = chat_body("smol", prompt, 3, false).to_string();
    let (a, rest) = body.split_at(10);
    let (b, c) = rest.split_at(rest.len() / 2);
    let mut raw = String::from(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: e2e\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n",
    );
    for (i, part) in [a, b, c].into_iter().enumerate() {
        // The middle chunk carries a chunk extension, which must be ignored.
        let ext = if i == 1 { ";note=x" } else { "" };
        raw.push_str(&format!("{:x}{ext}\r\n{part}\r\n", part.len()));
    }
    raw.push_str("0\r\n\r\n");

    let mut client = Client::connect(stack.agent.addr);
    client.send(raw.as_bytes()).expect("sending");
    let r = client.read_response().expect("response");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["prompt_tokens"], prompt_tokens(prompt));

    let last = stack.sim.last_request();
    let forwarded: Value =
        serde_json::from_str(last["body"].as_str().expect("body")).expect("forwarded JSON");
    let mut expected: Value = serde_json::from_str(&body).expect("body JSON");
    expected["model"] = "smollm2".into();
    assert_eq!(forwarded, expected);

    // The connection is still usable after a chunked request.
    let r = client.request("GET", "/healthz", &[], b"");
    assert_eq!(r.status, 200);
}

#[test]
fn keep_alive_connection_carries_many_requests() {
    let stack = Stack::start();
    let mut client = Client::connect(stack.agent.addr);
    let mut ids = Vec::new();
    for i in 0..5u64 {
        let body = chat_body("smol", &format!("request number {i}"), i + 1, i % 2 == 1);
        let r = client.request(
            "POST",
            "/v1/chat/completions",
            &[],
            body.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_ne!(
            r.header("connection")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("close"),
            "request {i}"
        );
        ids.push(r.request_id().to_string());
        let r = client.request("GET", "/v1/models", &[], b"");
        assert_eq!(r.status, 200);
    }
    for (i, id) in ids.iter().enumerate() {
        let row = stack.agent.ledger_row(id);
        assert_eq!(row.output_tokens, i as i64 + 1, "{row:#?}");
    }
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "request ids are unique: {ids:?}");
}

#[test]
fn connection_close_is_honoured() {
    let stack = Stack::start();
    let mut client = Client::connect(stack.agent.addr);
    let r = client.request(
        "POST",
        "/v1/chat/completions",
        &[("connection", "close")],
        chat_body("smol", "then hang up", 1, false)
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        client.closed_by_peer(),
        "the agent closes after connection: close"
    );
}

/// A keep-alive connection quiet for longer than it keeps its read buffer (one second) waits
/// on without one, on the worker's idle clock: a request after the quiet is served, on the
/// same connection, and a connection quiet for the whole idle timeout is closed by the agent.
#[test]
fn a_quiet_keep_alive_connection_serves_on_then_idles_out() {
    let stack = Stack::custom(crate::harness::Sim::start(&[]), |c| {
        c.idle_timeout_ms = 3_000;
    });
    let mut client = Client::connect(stack.agent.addr);
    let body = chat_body("smol", "before the quiet", 2, false).to_string();
    let r = client.request("POST", "/v1/chat/completions", &[], body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    // Past the buffer's second, inside the idle timeout: the buffer went back, the wait goes on.
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    let body = chat_body("smol", "after the quiet", 3, false).to_string();
    let r = client.request("POST", "/v1/chat/completions", &[], body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(stack.agent.row_of(&r).output_tokens, 3);
    // Quiet again, now for good: the agent closes the connection when the idle timeout
    // passes (the read waits far longer than that, so a close is the agent's).
    client.set_read_timeout(std::time::Duration::from_secs(30));
    let quiet = std::time::Instant::now();
    assert!(
        client.closed_by_peer(),
        "the agent closes an idle connection"
    );
    assert!(
        quiet.elapsed() >= std::time::Duration::from_millis(2_500),
        "closed after {:?}, before the idle timeout",
        quiet.elapsed()
    );
}

/// One gauge of the agent's `/metrics`, by its whole series name.
fn gauge(stack: &Stack, series: &str) -> i64 {
    let metrics = stack.agent.metrics();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

/// The agent's allocated heap (`tollgate_heap_bytes{kind="allocated"}`).
fn heap_allocated(stack: &Stack) -> i64 {
    gauge(stack, "tollgate_heap_bytes{kind=\"allocated\"}")
}

/// Opens `n` connections and waits until the agent has accepted them all.
fn connect_all(stack: &Stack, n: i64) -> Vec<Client> {
    let clients: Vec<Client> = (0..n).map(|_| Client::connect(stack.agent.addr)).collect();
    let open = std::time::Instant::now();
    while gauge(stack, "tollgate_connections_open") < n {
        assert!(
            open.elapsed() < std::time::Duration::from_secs(5),
            "not all accepted"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    clients
}

/// Connections in the two tests below. Waits with a 14 KiB read buffer each would hold 5.7 MB
/// of the agent's heap; without, the connections hold their tasks (~0.5 KB each). The heap
/// gauge moves by a few hundred KB on its own, so the bound is 4 KiB a connection.
const WAITING: i64 = 400;

/// A fresh connection waits for its first request without a read buffer (a buffer is taken
/// once bytes are there to read), and one that never sends is closed at the idle timeout.
#[test]
fn a_fresh_connection_holds_no_read_buffer_until_it_sends() {
    let stack = Stack::custom(crate::harness::Sim::start(&[]), |c| {
        c.workers = 1;
        c.idle_timeout_ms = 2_000;
    });
    let start = heap_allocated(&stack);
    let mut clients = connect_all(&stack, WAITING);
    let fresh = heap_allocated(&stack) - start;
    assert!(
        fresh < WAITING * 4096,
        "{WAITING} fresh connections took {fresh} bytes"
    );
    let r = clients[0].request("GET", "/healthz", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let silent = &mut clients[1];
    silent.set_read_timeout(std::time::Duration::from_secs(30));
    assert!(
        silent.closed_by_peer(),
        "the agent closes an idle connection"
    );
}

/// While a worker holds more than `buffered_wait_connections_per_worker` connections, each
/// one's wait for its next request holds no read buffer either, and still serves the request.
#[test]
fn a_crowded_worker_waits_for_requests_without_read_buffers() {
    let stack = Stack::custom(crate::harness::Sim::start(&[]), |c| {
        c.workers = 1;
        c.extra_limits = vec![("buffered_wait_connections_per_worker".into(), "8".into())];
    });
    let start = heap_allocated(&stack);
    let mut clients = connect_all(&stack, WAITING);
    // Each answer is written, and the wait for the next request starts: without a buffer, where
    // an uncrowded worker would keep one for a second.
    for c in &mut clients {
        let r = c.request("GET", "/healthz", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let served = heap_allocated(&stack) - start;
    assert!(
        served < WAITING * 4096,
        "{WAITING} served connections took {served} bytes"
    );
    for c in clients.iter_mut().step_by(50) {
        let r = c.request("GET", "/healthz", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }
}
