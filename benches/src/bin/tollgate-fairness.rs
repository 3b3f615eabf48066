//! `tollgate-fairness`: two tenants against saturated replicas, for the fairness bench
//! (issue 11). The quiet tenant (`x-tollgate-team: quiet`) sends `--quiet-rps` requests a
//! second, the noisy one (`x-tollgate-team: noisy`) `--noisy-rps` (0: the quiet one alone, the
//! unloaded figure). Both are open loop — a request is sent on schedule whether or not earlier
//! ones came back, each on its own connection — so a slow server cannot slow the offered load
//! down and hide its queue. Prints JSON: per tenant, requests, answers by status, and latency
//! percentiles of the 200s.
//!
//! ```text
//! tollgate-fairness --target 127.0.0.1:4000 --model fair --quiet-rps 4 --noisy-rps 40 --duration 15 --noisy-spread 8
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "tollgate-fairness",
    about = "Two open-loop tenants; prints JSON"
)]
struct Args {
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, default_value = "fair")]
    model: String,
    #[arg(long, default_value_t = 4.0)]
    quiet_rps: f64,
    #[arg(long, default_value_t = 40.0)]
    noisy_rps: f64,
    #[arg(long, default_value_t = 15.0)]
    duration: f64,
    #[arg(long, default_value_t = 16)]
    max_tokens: u32,
    /// The noisy tenant's answers vary by up to this many tokens around `max_tokens` (uniform),
    /// as real traffic does; 0: all the same length, so its requests start and end in step.
    #[arg(long, default_value_t = 0)]
    noisy_spread: u32,
}

/// One request on a fresh connection: (status, latency).
fn request(target: SocketAddr, team: &str, body: &[u8]) -> anyhow::Result<(u16, Duration)> {
    let start = Instant::now();
    let mut conn = TcpStream::connect(target).context("connecting")?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {target}\r\nContent-Type: application/json\r\nx-tollgate-team: {team}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    let mut out = Vec::new();
    conn.read_to_end(&mut out)?;
    let status = std::str::from_utf8(out.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, start.elapsed()))
}

/// Sends `rps` requests a second for `duration` as `team`; results arrive on `tx`.
fn tenant(
    args: &Args,
    team: &'static str,
    rps: f64,
    tx: mpsc::Sender<(&'static str, u16, Duration)>,
) -> std::thread::JoinHandle<()> {
    let (target, duration, model, max_tokens) = (
        args.target,
        args.duration,
        args.model.clone(),
        args.max_tokens,
    );
    let spread = if team == "noisy" {
        args.noisy_spread
    } else {
        0
    };
    std::thread::spawn(move || {
        if rps <= 0.0 {
            return;
        }
        let start = Instant::now();
        let gap = Duration::from_secs_f64(1.0 / rps);
        let mut n = 0u32;
        let mut sent = Vec::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        while start.elapsed().as_secs_f64() < duration {
            let due = start + gap * n;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let tokens = if spread == 0 {
                max_tokens
            } else {
                (max_tokens + (rng % u64::from(2 * spread + 1)) as u32).saturating_sub(spread)
            };
            let body = serde_json::json!({
                "model": model,
                "max_tokens": tokens,
                "messages": [{"role": "user", "content": format!("{team} request {n}: say something")}],
            })
            .to_string();
            let tx = tx.clone();
            sent.push(std::thread::spawn(move || {
                let r = request(target, team, body.as_bytes()).unwrap_or((0, Duration::ZERO));
                let _ = tx.send((team, r.0, r.1));
            }));
            n += 1;
        }
        for t in sent {
            let _ = t.join();
        }
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (tx, rx) = mpsc::channel();
    let threads = [
        tenant(&args, "quiet", args.quiet_rps, tx.clone()),
        tenant(&args, "noisy", args.noisy_rps, tx),
    ];
    for t in threads {
        let _ = t.join();
    }
    let results: Vec<(&str, u16, Duration)> = rx.iter().collect();
    let mut out = serde_json::Map::new();
    for team in ["quiet", "noisy"] {
        let mine: Vec<&(&str, u16, Duration)> = results.iter().filter(|r| r.0 == team).collect();
        let mut ok: Vec<f64> = mine
            .iter()
            .filter(|r| r.1 == 200)
            .map(|r| r.2.as_secs_f64() * 1000.0)
            .collect();
        ok.sort_by(f64::total_cmp);
        let mut statuses = std::collections::BTreeMap::new();
        for r in &mine {
            *statuses.entry(r.1.to_string()).or_insert(0u64) += 1;
        }
        out.insert(
            team.into(),
            serde_json::json!({
                "requests": mine.len(),
                "statuses": statuses,
                "ok_ms": {"p50": percentile(&ok, 0.5), "p90": percentile(&ok, 0.9), "p99": percentile(&ok, 0.99)},
            }),
        );
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
