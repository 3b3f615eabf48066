//! `tollgate-connect-bench`: what the kernel programs cost a client, measured in one run.
//!
//! Starts `tollgate-sim` and then, alternately, the agent with `kernel.enabled: off` and with
//! `kernel.enabled: auto` (intercepting the simulator's address), `--rounds` times each, so slow
//! drift of the machine hits both sides alike. In each phase, from this (single-threaded,
//! blocking) client:
//!
//! - `connect`: `connect()` to the agent and close. With the programs attached, `connect4` and
//!   `sockops` run inside that call (they are attached at the cgroup root: every connect on the
//!   host pays them).
//! - `request, new connection`: connect, POST a small chat completion, read the response. Adds
//!   the agent's per-connection attribution lookup at accept.
//! - `request, keep-alive`: the same POST repeated on one connection (nothing kernel-related
//!   runs per request, so this should not move).
//! - `to the simulator's address`: connect to the simulator's own address and POST. With the
//!   kernel off that is the simulator directly; with it on, the connect is redirected to the
//!   agent, which forwards to the simulator under metering: the cost of transparent
//!   interception end to end.
//!
//! Needs root for the `auto` phases (else they report why the kernel was refused and only the
//! `off` phases are measured). Binaries come from `--bin-dir` (default: next to this one).
//!
//! ```text
//! cargo build --release -p tollgate -p tollgate-sim -p tollgate-benches
//! sudo target/release/tollgate-connect-bench --iterations 3000 --rounds 2
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;

#[derive(Parser, Debug)]
#[command(
    name = "tollgate-connect-bench",
    about = "Connect and request latency with and without Tollgate's eBPF programs"
)]
struct Args {
    /// Samples per measurement per phase.
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
    /// Off/on phase pairs.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Where `tollgate` and `tollgate-sim` are (default: this binary's directory).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Agent worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// A child process killed (by its pid) when dropped.
struct Guard {
    child: Child,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Guard {
    /// SIGTERM and wait up to 15 s (the agent detaches its programs on SIGTERM).
    fn stop(mut self) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid")?;
        // SAFETY: kill(2) on a child we spawned and have not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the process did not stop within 15 s of SIGTERM")
    }
}

/// Spawns `cmd` and waits for `<announce> listening on ADDR` on its stdout.
fn spawn(mut cmd: Command, announce: &str) -> anyhow::Result<(Guard, SocketAddr)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env("RUST_LOG", "warn");
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let guard = Guard { child };
    let prefix = format!("{announce} listening on ");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let (Some(addr), Some(t)) = (line.strip_prefix(&prefix), tx.take()) {
                let _ = t.send(addr.trim().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .with_context(|| format!("{announce} did not start"))?;
    Ok((guard, addr.parse().context("announced address")?))
}

const BODY: &str = r#"{"model":"smol","messages":[{"role":"user","content":"how much does a connect cost?"}],"max_tokens":4}"#;
const SIM_BODY: &str = r#"{"model":"smollm2","messages":[{"role":"user","content":"how much does a connect cost?"}],"max_tokens":4}"#;

fn request(body: &str, close: bool) -> Vec<u8> {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n{}\r\n{body}",
        body.len(),
        if close { "connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

/// Reads one response (content-length or chunked); returns its status.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("closed before the response head");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("status")?;
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let body = &buf[head_end..];
        let done = match length {
            Some(n) => body.len() >= n,
            None if chunked => body.ends_with(b"0\r\n\r\n"),
            None => false,
        };
        if done {
            return Ok(status);
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            if length.is_none() && !chunked {
                return Ok(status);
            }
            bail!("closed mid-body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

type Samples = BTreeMap<&'static str, Histogram<u64>>;

fn record(samples: &mut Samples, name: &'static str, d: Duration) -> anyhow::Result<()> {
    let h = match samples.get_mut(name) {
        Some(h) => h,
        None => samples
            .entry(name)
            .or_insert(Histogram::new_with_bounds(1, 60_000_000, 3)?),
    };
    h.record(d.as_nanos().max(1000) as u64 / 1000)?;
    Ok(())
}

const CONNECT: &str = "connect";
const NEW_CONN: &str = "request, new connection";
const KEEP_ALIVE: &str = "request, keep-alive";
const TO_SIM: &str = "to the simulator's address (off: direct; on: intercepted)";

/// One phase's measurements against an agent at `agent` and the simulator at `sim`.
fn measure(agent: SocketAddr, sim: SocketAddr, n: usize, out: &mut Samples) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(16 * 1024);
    let close = request(BODY, true);
    let keep = request(BODY, false);
    let to_sim = request(SIM_BODY, true);
    // Warm up pools and caches.
    for _ in 0..50 {
        let mut s = TcpStream::connect(agent)?;
        s.write_all(&close)?;
        read_response(&mut s, &mut buf)?;
    }
    for _ in 0..n {
        let t = Instant::now();
        let s = TcpStream::connect(agent)?;
        record(out, CONNECT, t.elapsed())?;
        drop(s);
    }
    for _ in 0..n {
        let t = Instant::now();
        let mut s = TcpStream::connect(agent)?;
        s.set_nodelay(true)?;
        s.write_all(&close)?;
        let status = read_response(&mut s, &mut buf)?;
        record(out, NEW_CONN, t.elapsed())?;
        anyhow::ensure!(status == 200, "agent answered {status}");
    }
    let mut s = TcpStream::connect(agent)?;
    s.set_nodelay(true)?;
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&keep)?;
        let status = read_response(&mut s, &mut buf)?;
        record(out, KEEP_ALIVE, t.elapsed())?;
        anyhow::ensure!(status == 200, "agent answered {status}");
    }
    drop(s);
    for _ in 0..n {
        let t = Instant::now();
        let mut s = TcpStream::connect(sim)?;
        s.set_nodelay(true)?;
        s.write_all(&to_sim)?;
        let status = read_response(&mut s, &mut buf)?;
        record(out, TO_SIM, t.elapsed())?;
        anyhow::ensure!(status == 200, "{sim} answered {status}");
    }
    Ok(())
}

fn config(dir: &Path, sim: SocketAddr, kernel: &str, pin_dir: &Path, workers: usize) -> String {
    format!(
        "listen: 127.0.0.1:0\ndata_dir: {}\nworkers: {workers}\nledger: {{ flush_interval_ms: 20 }}\nauth: {{ mode: open }}\n\
         providers:\n  - name: sim\n    kind: openai\n    base_url: http://{sim}\n\
         models:\n  - name: smol\n    provider: sim\n    model: smollm2\n\
         kernel: {{ enabled: {kernel}, pin_dir: {} }}\nintercept: [\"{sim}\"]\n",
        dir.join(format!("data-{kernel}")).display(),
        pin_dir.display(),
    )
}

/// `/readyz`'s kernel object.
fn kernel_state(agent: SocketAddr) -> anyhow::Result<serde_json::Value> {
    let mut s = TcpStream::connect(agent)?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let start = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("readyz head")?
        + 4;
    let v: serde_json::Value = serde_json::from_slice(&raw[start..])?;
    Ok(v["kernel"].clone())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .to_path_buf(),
    };
    let work = std::env::temp_dir().join(format!("tollgate-connect-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/tollgate-bench-{}", std::process::id()));

    let mut sim_cmd = Command::new(bin_dir.join("tollgate-sim"));
    sim_cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--model",
        "smollm2",
        "--zero-delay",
    ]);
    let (_sim, sim) = spawn(sim_cmd, "tollgate-sim")?;

    let mut samples: BTreeMap<&'static str, Samples> = BTreeMap::new();
    let mut refused: Option<String> = None;
    for round in 0..args.rounds {
        for kernel in ["off", "auto"] {
            if kernel == "auto" && refused.is_some() {
                continue;
            }
            let cfg = work.join(format!("tollgate-{kernel}.yaml"));
            std::fs::write(&cfg, config(&work, sim, kernel, &pin_dir, args.workers))?;
            let mut cmd = Command::new(bin_dir.join("tollgate"));
            cmd.arg("serve").arg("--config").arg(&cfg);
            let (agent_proc, agent) = spawn(cmd, "tollgate")?;
            let state = kernel_state(agent)?;
            let label = if kernel == "off" { "off" } else { "on" };
            if kernel == "auto" && state["features"]["interception"]["active"] != true {
                refused = Some(state["summary"].as_str().unwrap_or("unknown").to_string());
                agent_proc.stop()?;
                continue;
            }
            eprintln!(
                "round {round}: kernel {label} ({} samples each)",
                args.iterations
            );
            let out = samples.entry(label).or_default();
            measure(agent, sim, args.iterations, out)?;
            agent_proc.stop()?;
        }
    }
    let _ = std::fs::remove_dir_all(&work);

    let pct = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q);
    if args.json {
        let mut json = serde_json::Map::new();
        for (mode, by_metric) in &samples {
            let mut m = serde_json::Map::new();
            for (name, h) in by_metric {
                m.insert(
                    name.to_string(),
                    serde_json::json!({
                        "count": h.len(), "mean_us": h.mean(), "p50_us": pct(h, 0.5),
                        "p99_us": pct(h, 0.99), "max_us": h.max(),
                    }),
                );
            }
            json.insert(mode.to_string(), m.into());
        }
        json.insert("kernel_refused".into(), refused.clone().into());
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    println!(
        "| measurement | kernel off p50 / p99 (µs) | kernel on p50 / p99 (µs) | Δ p50 |\n|---|---|---|---|"
    );
    let empty = Samples::new();
    let off = samples.get("off").unwrap_or(&empty);
    let on = samples.get("on").unwrap_or(&empty);
    for name in [CONNECT, NEW_CONN, KEEP_ALIVE, TO_SIM] {
        let cell = |h: Option<&Histogram<u64>>| {
            h.map_or("-".to_string(), |h| {
                format!("{} / {}", pct(h, 0.5), pct(h, 0.99))
            })
        };
        let delta = match (off.get(name), on.get(name)) {
            (Some(a), Some(b)) => format!("{:+} µs", pct(b, 0.5) as i64 - pct(a, 0.5) as i64),
            _ => "-".to_string(),
        };
        println!(
            "| {name} | {} | {} | {delta} |",
            cell(off.get(name)),
            cell(on.get(name))
        );
    }
    if let Some(why) = refused {
        println!("\nThe kernel programs were refused, so only `off` was measured: {why}");
    }
    Ok(())
}
