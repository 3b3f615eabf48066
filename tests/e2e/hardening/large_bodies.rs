//! Large bodies in both directions under partial writes, on both I/O drivers: a request body of
//! several MiB (more than a socket buffer takes at once) reaches the provider intact, and a
//! 4.7 MB embeddings response read by a client with a small receive buffer that pauses arrives
//! byte for byte as the provider sent it. (monoio's own vectored write loop re-sent or skipped
//! bytes after a partial write.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::procs::SIM_MODEL;

use crate::harness::http::request_bytes;
use crate::harness::procs::Agent;
use crate::harness::{get, post_raw, AgentConfig, Sim, Stack};

/// An agent on `driver` in front of a simulator; `None` (the test is skipped, and says why)
/// where io_uring is unavailable.
fn stack(driver: &str) -> Option<Stack> {
    let sim = Sim::start(&["--max-model-len", "4000000"]);
    let mut config = AgentConfig::for_sim(&sim);
    config.driver = driver.into();
    config.workers = 1;
    config.max_body_bytes = 32 * 1024 * 1024;
    config.body_timeout_ms = 20_000;
    config.read_timeout_ms = 20_000;
    config.response_timeout_ms = 20_000;
    let agent = match Agent::try_start(&config) {
        Ok(agent) => agent,
        Err(e) if driver == "io_uring" => {
            eprintln!("skipped: the agent cannot start with io.driver io_uring here: {e:#}");
            return None;
        }
        Err(e) => panic!("starting the agent with io.driver {driver}: {e:#}"),
    };
    let ready = get(agent.addr, "/readyz").json();
    if ready["io_driver"] != driver {
        eprintln!("skipped: {driver} is not available here, the agent runs on {ready}");
        return None;
    }
    Some(Stack { agent, sim })
}

fn large_request_reaches_the_provider_intact(driver: &str) {
    let Some(stack) = stack(driver) else { return };
    // 6 MiB of prompt with a pattern that shows any shifted, repeated or skipped byte.
    let prompt: String = (0..6 * 1024 * 1024 / 8)
        .map(|i| format!("{:07x} ", i % 0xfff_ffff))
        .collect();
    let body = json!({"model": "smol", "messages": [{"role": "user", "content": prompt}], "max_tokens": 1});
    let r = post_raw(
        stack.agent.addr,
        "/v1/chat/completions",
        &[],
        body.to_string().as_bytes(),
    );
    assert_eq!(
        r.status,
        200,
        "{driver}: {}",
        String::from_utf8_lossy(&r.body[..r.body.len().min(500)])
    );
    let last = stack.sim.last_request();
    let sent: Value = serde_json::from_str(last["body"].as_str().expect("body")).expect("JSON");
    assert!(
        sent["messages"][0]["content"] == prompt.as_str(),
        "{driver}: the provider received a different prompt"
    );
}

/// Reads a whole response with a 64 KiB receive buffer (a few windows of a multi-MiB body, so
/// the sender's writes are partial), pausing `pause` after the head.
fn slow_read(addr: std::net::SocketAddr, request: &[u8], pause: Duration) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    let small: libc::c_int = 64 * 1024;
    // SAFETY: setsockopt with a valid fd and a pointer to a c_int of the size given.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(request).expect("send");
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = loop {
        let n = s.read(&mut chunk).expect("read head");
        assert!(n > 0, "closed before the head");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .expect("content-length");
    std::thread::sleep(pause);
    let mut body = buf.split_off(head_end);
    while body.len() < len {
        let n = s.read(&mut chunk).expect("read body");
        assert!(n > 0, "closed at {} of {len}", body.len());
        body.extend_from_slice(&chunk[..n]);
    }
    (head, body)
}

fn large_response_survives_a_slow_reader(driver: &str) {
    let Some(stack) = stack(driver) else { return };
    let inputs: Vec<String> = (0..30_000).map(|i| format!("input number {i}")).collect();
    let request = |model: &str| {
        let body = json!({"model": model, "input": inputs}).to_string();
        request_bytes(
            "POST",
            "/v1/embeddings",
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
    };
    let (head, via_agent) = slow_read(stack.agent.addr, &request("smol"), Duration::from_secs(3));
    assert!(head.starts_with("HTTP/1.1 200"), "{driver}: {head}");
    assert!(
        via_agent.len() > 4_000_000,
        "{driver}: {} bytes",
        via_agent.len()
    );
    // The simulator's answer is deterministic: the same request sent to it directly.
    let (_, direct) = slow_read(stack.sim.addr, &request(SIM_MODEL), Duration::ZERO);
    if let Some(at) = via_agent.iter().zip(&direct).position(|(a, d)| a != d) {
        panic!("{driver}: the body through the agent differs from the provider's at byte {at}");
    }
    assert_eq!(via_agent.len(), direct.len(), "{driver}");
}

#[test]
fn large_request_body_epoll() {
    large_request_reaches_the_provider_intact("epoll");
}

#[test]
fn large_request_body_io_uring() {
    large_request_reaches_the_provider_intact("io_uring");
}

#[test]
fn large_response_slow_reader_epoll() {
    large_response_survives_a_slow_reader("epoll");
}

#[test]
fn large_response_slow_reader_io_uring() {
    large_response_survives_a_slow_reader("io_uring");
}
