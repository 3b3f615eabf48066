//! Requests that do not arrive in one read: heads and bodies split over several writes (as slow
//! or ordinary clients send them), large bodies and large heads under the limit. The agent must
//! reassemble them and forward the body exactly as sent.

use std::time::Duration;

use serde_json::Value;

use crate::harness::http::request_bytes;
use crate::harness::{chat_body, prompt_tokens, Client, Sim, Stack};

/// Sends `bytes` in pieces split at `cuts`, pausing between writes so each arrives on its own.
fn send_in_pieces(client: &mut Client, bytes: &[u8], cuts: &[usize]) {
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
        client.send(&bytes[start..cut]).expect("sending a piece");
        start = cut;
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Asserts that the simulator received `body` with only the model rewritten.
fn assert_forwarded_intact(stack: &Stack, body: &Value) {
    let last = stack.sim.last_request();
    let forwarded: Value =
        serde_json::from_str(last["body"].as_str().expect("body")).expect("forwarded JSON");
    let mut expected = body.clone();
    expected["model"] = "smollm2".into();
    assert!(
        forwarded == expected,
        "the forwarded body differs from the one sent"
    );
}

/// Sends a chat request in pieces, cut at the offsets `cuts` returns for the head's length,
/// and checks it is answered and forwarded intact.
fn split_request(prompt: &str, cuts: impl Fn(usize) -> Vec<usize>) {
    let stack = Stack::start();
    let body = chat_body("smol", prompt, 2, false);
    let bytes = request_bytes(
        "POST",
        "/v1/chat/completions",
        &[],
        body.to_string().as_bytes(),
    );
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head end")
        + 4;
    let mut client = Client::connect(stack.agent.addr);
    send_in_pieces(&mut client, &bytes, &cuts(head_end));
    let r = client.read_response().expect("response");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_forwarded_intact(&stack, &body);
}

#[test]
fn head_split_over_several_writes() {
    split_request("sent in pieces", |head_end| vec![10, 30, head_end - 1]);
}

#[test]
fn body_split_over_several_writes() {
    split_request("sent in pieces", |head_end| {
        vec![head_end, head_end + 5, head_end + 20]
    });
}

#[test]
fn head_and_body_in_separate_writes() {
    split_request("head first, then body", |head_end| vec![head_end]);
}

/// A prompt of `len` bytes that never repeats a 16-byte block, so a misplaced byte shows.
fn varied_text(len: usize) -> String {
    let mut text = String::with_capacity(len + 16);
    let mut i = 0u64;
    while text.len() < len {
        text.push_str(&format!("{:x} ", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        i += 1;
    }
    text.truncate(len);
    text
}

fn large_body(len: usize) {
    // A context window large enough for the 300 KB prompt.
    let stack = Stack::custom(Sim::start(&["--max-model-len", "1000000"]), |_| {});
    let prompt = varied_text(len);
    let body = chat_body("smol", &prompt, 1, false);
    let mut client = Client::connect(stack.agent.addr);
    let r = client.request(
        "POST",
        "/v1/chat/completions",
        &[],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["prompt_tokens"], prompt_tokens(&prompt));
    assert_forwarded_intact(&stack, &body);
}

#[test]
fn body_of_8_kib() {
    large_body(8 * 1024);
}

#[test]
fn body_of_20_kb() {
    large_body(20_000);
}

#[test]
fn body_of_300_kb() {
    large_body(300_000);
}

#[test]
fn large_head_under_the_limit_is_accepted() {
    let stack = Stack::start();
    let filler = "v".repeat(60_000);
    let body = chat_body("smol", "big header", 1, false);
    let mut client = Client::connect(stack.agent.addr);
    let r = client.request(
        "POST",
        "/v1/chat/completions",
        &[("x-large-header", &filler)],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let last = stack.sim.last_request();
    assert_eq!(
        last["headers"]["x-large-header"].as_str().map(str::len),
        Some(60_000)
    );
}
