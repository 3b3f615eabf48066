//! `tollgate-load`: drive an HTTP/1.1 server on loopback and print latency and throughput as JSON.
//!
//! Closed loop (default): `--connections C` connections each send the next request as soon as the previous
//! response is complete, for `--duration` seconds. Open loop (`--rate R`): requests are due every 1/R s over
//! `--connections` keep-alive connections and latency counts from the due time, so queueing is measured.
//! `--stream` asks for an SSE response; `ttft_us` is then time to the first body byte.
//!
//! ```text
//! tollgate-load --target 127.0.0.1:8080 --connections 64 --duration 5
//! tollgate-load --target 127.0.0.1:8080 --rate 5000 --duration 5
//! tollgate-load --target 127.0.0.1:8080 --connections 1 --stream --max-tokens 16
//! ```

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tollgate_benches::load::engine::{self, Mode, Plan};
use tollgate_benches::load::report;
use tollgate_benches::load::request::{self, RequestSpec};
use tollgate_benches::load::schedule::Schedule;

#[derive(Parser, Debug)]
#[command(
    name = "tollgate-load",
    about = "Lean HTTP/1.1 load generator; prints JSON"
)]
struct Args {
    /// Server address, `HOST:PORT`.
    #[arg(long)]
    target: String,
    /// Open connections (closed loop: the concurrency).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Offered load in requests per second; switches to open loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Seconds to wait for outstanding responses after the measured window.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// HTTP method; `GET` and `HEAD` send no body.
    #[arg(long, default_value = "POST")]
    method: String,
    /// Request path.
    #[arg(long, default_value = "/v1/chat/completions")]
    path: String,
    /// Extra header, `Name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Model name in the chat body.
    #[arg(long, default_value = "smol")]
    model: String,
    /// `max_tokens` in the chat body (output length).
    #[arg(long, default_value_t = 16)]
    max_tokens: u32,
    /// Approximate prompt size in bytes.
    #[arg(long, default_value_t = 64)]
    prompt_bytes: usize,
    /// Open loop: busy-poll this many µs before each due send instead of sleeping (0: never spin). Trades
    /// generator CPU for send-time precision on machines with slow timer wake-ups.
    #[arg(long, default_value_t = 0)]
    spin_us: u64,
    /// Ask for an SSE stream (`stream: true`).
    #[arg(long)]
    stream: bool,
}

fn seconds(value: f64, name: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{name} must be a non-negative number of seconds"))
}

fn resolve(target: &str) -> anyhow::Result<SocketAddr> {
    target
        .to_socket_addrs()
        .with_context(|| format!("resolving {target}"))?
        .next()
        .with_context(|| format!("{target} resolves to no address"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let target = resolve(&args.target)?;
    let method = args.method.to_ascii_uppercase();
    let body = matches!(method.as_str(), "POST" | "PUT" | "PATCH")
        .then(|| request::chat_body(&args.model, args.max_tokens, args.stream, args.prompt_bytes));
    let spec = RequestSpec {
        method: method.clone(),
        path: args.path,
        host: args.target,
        headers: args.headers,
        body,
    };
    let mode = match args.rate {
        None => Mode::Closed,
        Some(rate) => {
            Mode::Open(Schedule::new(rate).context("--rate must be at least 0.001 req/s")?)
        }
    };
    let plan = Plan {
        target,
        request: request::build(&spec),
        head_request: method == "HEAD",
        mode,
        connections: args.connections,
        warmup: seconds(args.warmup, "warmup")?,
        duration: seconds(args.duration, "duration")?,
        drain: seconds(args.drain, "drain")?,
        connect_timeout: Duration::from_secs(2),
        spin: Duration::from_micros(args.spin_us),
    };
    let outcome = engine::run(&plan)?;
    println!("{}", report::to_json(&plan, &outcome));
    Ok(())
}
