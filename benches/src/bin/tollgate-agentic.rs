//! `tollgate-agentic`: an agentic workload for the scheduling bench (issue 11). Many sessions
//! run at once, each a conversation that grows turn by turn behind one of a few long shared
//! system prompts (coding and support agents resend all of it every turn); now and then a
//! one-off long prompt. Every request streams; the generator measures time to first body byte
//! and to the last byte, and reads the usage the engine reports (`cached_tokens` of
//! `prompt_tokens`: the prefix-cache hit rate the replicas saw). Prints JSON.
//!
//! ```text
//! tollgate-agentic --target 127.0.0.1:4000 --sessions 32 --duration 20
//! tollgate-agentic --pin 127.0.0.1:8001,127.0.0.1:8002 ...   # each session straight to one replica
//! ```
//! `--pin` sends session *i* to replica *i mod n* directly: perfect session affinity with no
//! load balancing, the upper bound the bench compares the agent's strategies with.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "tollgate-agentic",
    about = "Agentic multi-turn workload; prints JSON"
)]
struct Args {
    /// Where every session sends (the agent).
    #[arg(long, conflicts_with = "pin")]
    target: Option<SocketAddr>,
    /// Replicas, comma-separated: session i goes to replica i mod n directly.
    #[arg(long, value_delimiter = ',')]
    pin: Vec<SocketAddr>,
    #[arg(long, default_value = "smol")]
    model: String,
    /// Sessions running at once (one connection and thread each).
    #[arg(long, default_value_t = 32)]
    sessions: usize,
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Distinct shared system prompts.
    #[arg(long, default_value_t = 4)]
    system_prompts: usize,
    #[arg(long, default_value_t = 8000)]
    system_bytes: usize,
    /// Bytes each turn adds (the user message; a short assistant reply is added too).
    #[arg(long, default_value_t = 400)]
    turn_bytes: usize,
    /// Turns before a session ends and a new one starts.
    #[arg(long, default_value_t = 8)]
    turns: usize,
    /// Share of requests that are one-off long prompts.
    #[arg(long, default_value_t = 0.1)]
    oneoff: f64,
    #[arg(long, default_value_t = 6000)]
    oneoff_bytes: usize,
    #[arg(long, default_value_t = 8)]
    max_tokens: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// xorshift64*: reproducible runs for a given seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Text of `bytes` bytes, distinct per `tag` (words drawn from the tag's own generator).
fn filler(tag: u64, bytes: usize) -> String {
    const WORDS: [&str; 16] = [
        "token", "gate", "replica", "prefix", "cache", "budget", "stream", "agent", "kernel",
        "ledger", "route", "tier", "quota", "model", "batch", "probe",
    ];
    let mut rng = Rng(tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut out = String::with_capacity(bytes + 16);
    out.push_str(&format!("[{tag}] "));
    while out.len() < bytes {
        out.push_str(WORDS[(rng.next() % 16) as usize]);
        out.push(' ');
    }
    out.truncate(bytes);
    out
}

#[derive(Default)]
struct Tally {
    ttft_ms: Vec<f64>,
    e2e_ms: Vec<f64>,
    errors: u64,
    prompt_tokens: u64,
    cached_tokens: u64,
}

/// One streamed request on a keep-alive connection: (ttft, total, prompt tokens, cached tokens).
fn exchange(
    conn: &mut TcpStream,
    host: &SocketAddr,
    body: &[u8],
) -> anyhow::Result<(Duration, Duration, u64, u64)> {
    let start = Instant::now();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = conn.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    anyhow::ensure!(
        head.starts_with("http/1.1 200"),
        "status: {}",
        head.lines().next().unwrap_or("")
    );
    anyhow::ensure!(
        head.contains("transfer-encoding: chunked"),
        "expected a chunked stream"
    );
    let mut body_bytes = buf.split_off(head_end);
    let mut ttft = None;
    if !body_bytes.is_empty() {
        ttft = Some(start.elapsed());
    }
    // Read until the chunked terminator; the stream's text is small.
    while !body_bytes.ends_with(b"\r\n0\r\n\r\n") && !body_bytes.starts_with(b"0\r\n\r\n") {
        let n = conn.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "connection closed mid-stream");
        ttft.get_or_insert_with(|| start.elapsed());
        body_bytes.extend_from_slice(&chunk[..n]);
    }
    let total = start.elapsed();
    let text = String::from_utf8_lossy(&body_bytes);
    let (mut prompt, mut cached) = (0, 0);
    for line in text.lines() {
        if let Some(data) = line.strip_prefix("data: ") {
            if data.contains("\"usage\"") {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(data) {
                    let u = &v["usage"];
                    prompt = u["prompt_tokens"].as_u64().unwrap_or(prompt);
                    cached = u["prompt_tokens_details"]["cached_tokens"]
                        .as_u64()
                        .unwrap_or(cached);
                }
            }
        }
    }
    Ok((ttft.unwrap_or(total), total, prompt, cached))
}

fn session(
    args: &Args,
    index: usize,
    addr: SocketAddr,
    deadline: Instant,
    systems: &[String],
) -> Tally {
    let mut tally = Tally::default();
    let mut rng = Rng((args.seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9)) | 1);
    let mut conn: Option<TcpStream> = None;
    let mut history: Vec<serde_json::Value> = Vec::new();
    let mut system = String::new();
    let mut conversation = 0u64;
    while Instant::now() < deadline {
        let messages = if rng.unit() < args.oneoff {
            vec![
                serde_json::json!({"role": "user", "content": filler(rng.next(), args.oneoff_bytes)}),
            ]
        } else {
            if history.len() >= 2 * args.turns || system.is_empty() {
                system = systems[(rng.next() % systems.len() as u64) as usize].clone();
                history.clear();
                conversation += 1;
            }
            let tag = ((index as u64) << 40) ^ (conversation << 16) ^ history.len() as u64;
            history
                .push(serde_json::json!({"role": "user", "content": filler(tag, args.turn_bytes)}));
            let mut m = vec![serde_json::json!({"role": "system", "content": system})];
            m.extend(history.iter().cloned());
            m
        };
        let body = serde_json::json!({
            "model": args.model, "messages": messages, "max_tokens": args.max_tokens,
            "stream": true, "stream_options": {"include_usage": true},
        })
        .to_string();
        let c = match conn.take() {
            Some(c) => c,
            None => match TcpStream::connect(addr) {
                Ok(c) => {
                    let _ = c.set_nodelay(true);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
                    c
                }
                Err(_) => {
                    tally.errors += 1;
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        let mut c = c;
        match exchange(&mut c, &addr, body.as_bytes()) {
            Ok((ttft, total, prompt, cached)) => {
                tally.ttft_ms.push(ttft.as_secs_f64() * 1e3);
                tally.e2e_ms.push(total.as_secs_f64() * 1e3);
                tally.prompt_tokens += prompt;
                tally.cached_tokens += cached;
                conn = Some(c);
                if history.len() % 2 == 1 {
                    history.push(serde_json::json!({"role": "assistant", "content": format!("Done with step {}.", history.len())}));
                }
            }
            Err(_) => {
                tally.errors += 1;
                history.clear();
            }
        }
    }
    tally
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let targets: Vec<SocketAddr> = match (&args.target, args.pin.is_empty()) {
        (Some(t), _) => vec![*t],
        (None, false) => args.pin.clone(),
        (None, true) => anyhow::bail!("give --target or --pin"),
    };
    let systems: Vec<String> = (0..args.system_prompts.max(1))
        .map(|i| filler(1_000_000 + i as u64, args.system_bytes))
        .collect();
    let started = Instant::now();
    let deadline = started + Duration::try_from_secs_f64(args.duration).context("--duration")?;
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.sessions)
            .map(|i| {
                let addr = targets[i % targets.len()];
                let (args, systems) = (&args, &systems);
                s.spawn(move || session(args, i, addr, deadline, systems))
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = Tally::default();
    for t in tallies {
        all.ttft_ms.extend(t.ttft_ms);
        all.e2e_ms.extend(t.e2e_ms);
        all.errors += t.errors;
        all.prompt_tokens += t.prompt_tokens;
        all.cached_tokens += t.cached_tokens;
    }
    all.ttft_ms.sort_by(f64::total_cmp);
    all.e2e_ms.sort_by(f64::total_cmp);
    let out = serde_json::json!({
        "requests": all.e2e_ms.len(),
        "errors": all.errors,
        "duration_s": elapsed,
        "rps": all.e2e_ms.len() as f64 / elapsed,
        "ttft_ms": {"p50": percentile(&all.ttft_ms, 0.5), "p90": percentile(&all.ttft_ms, 0.9)},
        "e2e_ms": {"p50": percentile(&all.e2e_ms, 0.5), "p90": percentile(&all.e2e_ms, 0.9)},
        "prompt_tokens": all.prompt_tokens,
        "cached_tokens": all.cached_tokens,
        "hit_rate": all.cached_tokens as f64 / all.prompt_tokens.max(1) as f64,
    });
    println!("{out}");
    Ok(())
}
