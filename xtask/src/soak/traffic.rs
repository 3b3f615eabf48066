//! The soak's clients: a few blocking threads, each with a role, sending mixed traffic to the
//! agent for the whole run and remembering the request id of every 200 they received in full.
//!
//! Roles (one thread each, `mixed` twice):
//!
//! - `mixed`: keep-alive connection, every API (chat and messages, plain and streaming,
//!   embeddings) on the clean and the faulty replica; now and then a fresh connection or
//!   `connection: close`.
//! - `fresh`: the same mix, a new connection for every request.
//! - `slow`: writes the request a few bytes at a time with pauses, reads the response slowly.
//! - `disconnect`: mostly streams, hangs up after the head or part of the body, sometimes before
//!   any response; a quarter run to the end.
//! - `abuse`: malformed and oversized requests (bad JSON, both framings, a body over the limit,
//!   a huge header, an unknown model, garbage, a body cut by a half-close), each followed by a
//!   valid request.
//!
//! Requests to the faulty replica sometimes ask it (`x-sim-*` headers, forwarded by the agent)
//! to reset after a few frames or to delay its answer; it also fails 5% of requests by itself.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use super::http::{Conn, Pace, Response};

/// Client threads, one per entry.
pub const ROLES: [Role; 6] = [
    Role::Mixed,
    Role::Mixed,
    Role::Fresh,
    Role::Slow,
    Role::Disconnect,
    Role::Abuse,
];

/// What one client thread does.
#[derive(Clone, Copy, Debug)]
pub enum Role {
    Mixed,
    Fresh,
    Slow,
    Disconnect,
    Abuse,
}

/// Outcomes of one kind of request.
#[derive(Debug, Default, Clone)]
pub struct KindStats {
    pub sent: u64,
    /// 200, body received to its end: remembered for the ledger check.
    pub ok: u64,
    /// Of `ok`: the body did not end as it should (no `[DONE]`, no `message_stop`, no `}`).
    pub ok_bad_body: u64,
    /// Of `ok`: no `x-tollgate-request-id` (cannot be checked against the ledger).
    pub ok_no_id: u64,
    /// 200 whose body stopped early without the client hanging up (a reset upstream, a kill).
    pub ok_cut: u64,
    /// The client hung up on purpose before the end.
    pub hung_up: u64,
    /// No response head (connection refused mid-way, reset, EOF, timeout).
    pub no_response: u64,
    /// Every other status.
    pub statuses: BTreeMap<u16, u64>,
}

/// What the clients share with the supervisor.
pub struct Shared {
    pub started: Instant,
    pub stop: AtomicBool,
    /// Requests written to a connected socket.
    pub sent: AtomicU64,
    /// 200s received in full.
    pub ok: AtomicU64,
    /// Connects that failed (the agent was down between a kill and its restart).
    pub connect_failures: AtomicU64,
    pub kinds: Mutex<BTreeMap<String, KindStats>>,
    /// Why exchanges got no response, by error kind.
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Request id of every 200 received in full, with seconds since the start.
    pub ids: Mutex<Vec<(String, f64)>>,
}

impl Shared {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            kinds: Mutex::default(),
            errors: Mutex::default(),
            ids: Mutex::default(),
        }
    }

    fn record(&self, plan: &Plan, outcome: Outcome) {
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let stats = kinds.entry(plan.label.clone()).or_default();
        stats.sent += 1;
        match outcome {
            Outcome::Abandoned => stats.hung_up += 1,
            Outcome::Failed(e) => {
                stats.no_response += 1;
                *self
                    .errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(format!("{:?}", e.kind()))
                    .or_default() += 1;
            }
            Outcome::Response(r) if r.status != 200 => {
                *stats.statuses.entry(r.status).or_default() += 1;
            }
            Outcome::Response(r) if !r.complete => match plan.stop_after {
                Some(_) => stats.hung_up += 1,
                None => stats.ok_cut += 1,
            },
            Outcome::Response(r) => {
                stats.ok += 1;
                self.ok.fetch_add(1, Relaxed);
                if !body_ends_well(&r, plan.ends_with) {
                    stats.ok_bad_body += 1;
                }
                match r.request_id {
                    Some(id) => self
                        .ids
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((id, self.started.elapsed().as_secs_f64())),
                    None => stats.ok_no_id += 1,
                }
            }
        }
    }
}

fn body_ends_well(r: &Response, marker: &str) -> bool {
    let tail = String::from_utf8_lossy(&r.tail);
    if marker == "}" {
        tail.trim_end().ends_with('}')
    } else {
        tail.contains(marker)
    }
}

/// One client thread: runs `role` against `addr` until `shared.stop`.
pub fn client(role: Role, seed: u64, addr: SocketAddr, shared: &Shared) {
    let mut rng = Rng::new(seed);
    let mut conn: Option<Conn> = None;
    let mut n = 0u64;
    while !shared.stop.load(Relaxed) {
        let plan = role.plan(&mut rng, n);
        n += 1;
        if plan.fresh {
            conn = None;
        }
        let mut c = match conn.take().map_or_else(|| Conn::connect(addr), Ok) {
            Ok(c) => c,
            Err(_) => {
                shared.connect_failures.fetch_add(1, Relaxed);
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        shared.sent.fetch_add(1, Relaxed);
        let outcome = exchange(&mut c, &plan);
        let reusable = matches!(&outcome, Outcome::Response(r) if r.complete && r.keep_alive);
        shared.record(&plan, outcome);
        if reusable && !plan.fresh && !plan.close {
            conn = Some(c);
        }
        if let Role::Abuse = role {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

enum Outcome {
    Response(Response),
    /// The client closed before any response, on purpose.
    Abandoned,
    Failed(io::Error),
}

fn exchange(conn: &mut Conn, plan: &Plan) -> Outcome {
    let sent = conn.send(&plan.bytes, plan.send);
    if plan.abandon && sent.is_ok() {
        return Outcome::Abandoned;
    }
    if plan.half_close {
        conn.shutdown_write();
    }
    // Even when sending failed (an oversized body the agent stopped reading), a response may
    // have arrived.
    match conn.read_response(plan.read, plan.stop_after) {
        Ok(r) => Outcome::Response(r),
        Err(read_error) => Outcome::Failed(sent.err().unwrap_or(read_error)),
    }
}

/// One request and how to send and read it.
struct Plan {
    label: String,
    bytes: Vec<u8>,
    send: Pace,
    read: Pace,
    /// Hang up after this many body bytes (0: right after the head).
    stop_after: Option<usize>,
    /// Hang up right after sending, before any response.
    abandon: bool,
    /// Half-close after sending.
    half_close: bool,
    /// Send on a new connection and do not reuse it.
    fresh: bool,
    /// The request asks for `connection: close`.
    close: bool,
    /// What the end of a complete 200 body must contain.
    ends_with: &'static str,
}

impl Role {
    fn plan(self, rng: &mut Rng, n: u64) -> Plan {
        match self {
            Role::Mixed => {
                let close = rng.chance(0.05);
                let mut plan = valid(rng, 0.3, 300, close);
                plan.fresh = rng.chance(0.1);
                plan
            }
            Role::Fresh => {
                let mut plan = valid(rng, 0.3, 300, false);
                plan.fresh = true;
                plan
            }
            Role::Slow => {
                let mut plan = valid(rng, 0.2, 40, false);
                plan.label.insert_str(0, "slow ");
                plan.send = Pace::Slow {
                    chunk: rng.range(1, 16) as usize,
                    pause: Duration::from_millis(rng.range(5, 25)),
                };
                plan.read = Pace::Slow {
                    chunk: rng.range(16, 128) as usize,
                    pause: Duration::from_millis(rng.range(2, 10)),
                };
                plan
            }
            Role::Disconnect => {
                let mut plan = loop {
                    let plan = valid(rng, 0.3, 300, false);
                    if plan.label.contains("stream") || rng.chance(0.2) {
                        break plan;
                    }
                };
                let draw = rng.below(100);
                if draw < 10 {
                    plan.abandon = true;
                    plan.label.push_str(", hang up before the response");
                } else if draw < 75 {
                    plan.stop_after = Some(rng.below(400) as usize);
                    plan.label.push_str(", hang up mid-body");
                }
                plan.fresh = true;
                plan
            }
            Role::Abuse if n & 1 == 0 => malformed(rng),
            Role::Abuse => valid(rng, 0.3, 300, false),
        }
    }
}

/// A valid request: one of the five request kinds, on the clean or the faulty replica.
/// `faulty_share`: the chance that it goes to the faulty replica.
fn valid(rng: &mut Rng, faulty_share: f64, max_words: u64, close: bool) -> Plan {
    let faulty = rng.chance(faulty_share);
    let n_words = rng.range(1, max_words);
    let text = words(rng, n_words);
    let max_tokens = rng.range(4, 48);
    let kind = rng.below(5);
    let stream = kind == 1 || kind == 3;
    let (openai, anthropic) = if faulty {
        (super::MODEL_FAULTY, super::MODEL_FAULTY_ANTHROPIC)
    } else {
        (super::MODEL, super::MODEL_ANTHROPIC)
    };
    let (path, body, name, ends_with) = match kind {
        0 | 1 => {
            let usage = if stream && rng.chance(0.4) {
                r#","stream_options":{"include_usage":true}"#
            } else {
                ""
            };
            (
                "/v1/chat/completions",
                format!(
                    r#"{{"model":"{openai}","messages":[{{"role":"user","content":"{text}"}}],"max_tokens":{max_tokens},"stream":{stream}{usage}}}"#
                ),
                if stream { "chat stream" } else { "chat" },
                if stream { "[DONE]" } else { "}" },
            )
        }
        2 | 3 => (
            "/v1/messages",
            format!(
                r#"{{"model":"{anthropic}","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"{text}"}}],"stream":{stream}}}"#
            ),
            if stream {
                "messages stream"
            } else {
                "messages"
            },
            if stream { "message_stop" } else { "}" },
        ),
        _ => (
            "/v1/embeddings",
            format!(r#"{{"model":"{openai}","input":["{text}","{max_tokens}"]}}"#),
            "embeddings",
            "}",
        ),
    };
    let mut headers = String::from("x-tollgate-team: soak\r\n");
    if faulty && stream && rng.chance(0.15) {
        headers.push_str(&format!("x-sim-reset-after: {}\r\n", rng.range(1, 4)));
    }
    if faulty && rng.chance(0.1) {
        headers.push_str(&format!("x-sim-delay-ms: {}\r\n", rng.range(100, 1500)));
    }
    if close {
        headers.push_str("connection: close\r\n");
    }
    Plan {
        label: format!("{name}{}", if faulty { " (faulty)" } else { "" }),
        bytes: post(path, &headers, body.as_bytes()),
        send: Pace::Fast,
        read: Pace::Fast,
        stop_after: None,
        abandon: false,
        half_close: false,
        fresh: false,
        close,
        ends_with,
    }
}

/// A request the agent must refuse (4xx) or drop, on a connection of its own.
fn malformed(rng: &mut Rng) -> Plan {
    let chat = "/v1/chat/completions";
    let model = super::MODEL;
    let mut half_close = false;
    let (label, bytes) = match rng.below(7) {
        0 => (
            "bad JSON",
            post(chat, "", br#"{"model":"smol","messages":[{"role":"user","content":"cut"#),
        ),
        1 => (
            "content-length and chunked",
            format!(
                "POST {chat} HTTP/1.1\r\nhost: tollgate\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
            )
            .into_bytes(),
        ),
        2 => {
            // Claims 2 MiB (the limit is 1 MiB) and sends the first 64 KiB.
            let mut bytes = format!(
                "POST {chat} HTTP/1.1\r\nhost: tollgate\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                2 << 20
            )
            .into_bytes();
            bytes.resize(bytes.len() + (64 << 10), b'a');
            ("body over the limit", bytes)
        }
        3 => (
            "70 KB header",
            post(
                chat,
                &format!("x-pad: {}\r\n", "a".repeat(70_000)),
                format!(r#"{{"model":"{model}","messages":[]}}"#).as_bytes(),
            ),
        ),
        4 => (
            "unknown model",
            post(
                chat,
                "",
                br#"{"model":"no-such-model","messages":[{"role":"user","content":"hi"}]}"#,
            ),
        ),
        5 => (
            "garbage request line",
            b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n".to_vec(),
        ),
        _ => {
            half_close = true;
            let mut bytes = format!(
                "POST {chat} HTTP/1.1\r\nhost: tollgate\r\ncontent-length: 100\r\n\r\n"
            )
            .into_bytes();
            bytes.extend_from_slice(br#"{"model":"#);
            ("body cut by a half-close", bytes)
        }
    };
    Plan {
        label: format!("malformed: {label}"),
        bytes,
        send: Pace::Fast,
        read: Pace::Fast,
        stop_after: None,
        abandon: false,
        half_close,
        fresh: true,
        close: true,
        ends_with: "}",
    }
}

fn post(path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!(
        "POST {path} HTTP/1.1\r\nhost: tollgate\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// `n` words of filler text (no characters that need JSON escaping).
fn words(rng: &mut Rng, n: u64) -> String {
    const WORDS: [&str; 12] = [
        "token", "gateway", "ledger", "replica", "stream", "usage", "budget", "kernel", "batch",
        "cache", "prompt", "reply",
    ];
    let mut text = String::new();
    for i in 0..n {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    text
}

/// xorshift64*: enough randomness to mix traffic, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_well_formed_requests() {
        let mut rng = Rng::new(42);
        for role in ROLES {
            for n in 0..200 {
                let plan = role.plan(&mut rng, n);
                let head_end = plan
                    .bytes
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .expect("a head");
                if plan.label.starts_with("malformed") {
                    continue;
                }
                let body = &plan.bytes[head_end + 4..];
                let json: serde_json::Value = serde_json::from_slice(body).expect("valid JSON");
                assert!(json["model"].is_string(), "{}", plan.label);
            }
        }
    }

    #[test]
    fn body_end_markers() {
        let r = |tail: &str| Response {
            tail: tail.as_bytes().to_vec(),
            ..Response::default()
        };
        assert!(body_ends_well(&r("data: [DONE]\n\n"), "[DONE]"));
        assert!(body_ends_well(&r("{\"usage\":{}}\n"), "}"));
        assert!(!body_ends_well(&r("data: {\"error\""), "[DONE]"));
    }
}
