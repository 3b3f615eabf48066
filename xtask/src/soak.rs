//! `cargo xtask soak`: hours-of-life in minutes. Mixed traffic against the agent while it is killed
//! and restarted, checking that nothing it answered is forgotten and that it does not grow.
//!
//! 1. Builds the release binaries and starts, on loopback: two `tollgate-sim` replicas, one clean
//!    and one faulty (5% of requests fail with 503; clients ask it for resets mid-stream and slow
//!    replies), and `tollgate serve` in front of both (OpenAI and Anthropic providers on each).
//! 2. Six client threads (`traffic.rs`) drive chat, messages (plain and streaming) and embeddings
//!    for the whole run, over keep-alive and fresh connections, with slow writers and readers,
//!    clients that hang up mid-stream, and malformed or oversized requests. Every 200 received in
//!    full is remembered by its `x-tollgate-request-id`.
//! 3. Every `--kill-every-s` the agent gets SIGKILL and is restarted on the same data dir and port:
//!    its journal replay must bring back every record.
//! 4. Every 10 s: the agent's RSS (`VmRSS`), open fds (`/proc/PID/fd`), requests and 200s so far.
//! 5. At the end the agent is stopped with SIGTERM and every remembered id is looked up in
//!    `<data_dir>/ledger.sqlite`. The markdown report goes to `benches/results/soak-<date>.md`.
//!
//! Fails (exit status 1) when a 200 has no ledger row, when the agent exited without being told
//! to, when a generation's fds or RSS grew past the limits in `report.rs`, or when nothing
//! succeeded. Logs, config and data: `target/tollgate-soak/`.
//!
//! ```text
//! cargo xtask soak                               # 30 minutes, SIGKILL every 180 s
//! cargo xtask soak --minutes 3 --kill-every-s 60
//! ```

mod http;
mod report;
mod traffic;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bench::machine::Machine;
use crate::bench::process::{self, Server};
use crate::bench::{procfs, Layout};
use report::{Generation, Sample};
use traffic::Shared;

/// Models the agent serves: each API on the clean and on the faulty replica.
const MODEL: &str = "smol";
const MODEL_ANTHROPIC: &str = "claude";
const MODEL_FAULTY: &str = "smol-faulty";
const MODEL_FAULTY_ANTHROPIC: &str = "claude-faulty";
/// What the simulators serve.
const SIM_MODEL: &str = "smollm2";
/// Agent workers and providers in its config (the fd slack depends on them).
const WORKERS: usize = 2;
const PROVIDERS: usize = 4;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// The final graceful stop may drain in-flight requests for up to 30 s.
const FINAL_STOP_TIMEOUT: Duration = Duration::from_secs(40);

/// Clean replica: a light latency model so streams last tens of ms.
const SIM_CLEAN: &[&str] = &[
    "--ttft-base-ms",
    "2",
    "--ttft-per-token-us",
    "10",
    "--itl-base-ms",
    "1",
];
/// Faulty replica: slower, and 5% of inference requests fail with 503.
const SIM_FAULTY: &[&str] = &[
    "--ttft-base-ms",
    "10",
    "--itl-base-ms",
    "3",
    "--fail-rate",
    "0.05",
    "--fail-status",
    "503",
    "--seed",
    "7",
];

#[derive(clap::Args)]
pub struct Args {
    /// How long to drive traffic, in minutes.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// SIGKILL and restart the agent this often, in seconds (0: never).
    #[arg(long, default_value_t = 180)]
    kill_every_s: u64,
    /// Where to write the markdown (default: benches/results/soak-<date>.md).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use the release binaries already in target/ instead of building them.
    #[arg(long)]
    no_build: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !(args.minutes > 0.0 && args.minutes.is_finite()) {
        bail!("--minutes must be positive");
    }
    let layout = Layout::discover()?;
    if !args.no_build {
        build(&layout.root)?;
    }
    let work = layout
        .release
        .parent()
        .context("release dir has no parent")?
        .join("tollgate-soak");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    let sim = |name: &str, flags: &[&str]| {
        let mut cmd = Command::new(layout.bin("tollgate-sim"));
        cmd.args(["--listen", "127.0.0.1:0", "--model", SIM_MODEL])
            .args(flags);
        Server::start_announced(name, cmd, &work)
    };
    let clean = sim("sim-clean", SIM_CLEAN)?;
    let faulty = sim("sim-faulty", SIM_FAULTY)?;
    let listen = process::free_port()?;
    let data_dir = work.join("data");
    let config = work.join("tollgate.yaml");
    let yaml = render_config(listen, &data_dir, clean.addr, faulty.addr);
    std::fs::write(&config, &yaml).context("writing the agent config")?;
    let agent_bin = layout.agent.clone();
    let spawn_agent = |generation: usize| start_agent(&agent_bin, &config, &work, generation);

    let mut agent = spawn_agent(0)?;
    eprintln!(
        "soak: agent on {listen} (pid {}), simulators on {} and {} (faulty); {} min, SIGKILL every {} s; logs in {}",
        agent.pid(),
        clean.addr,
        faulty.addr,
        args.minutes,
        args.kill_every_s,
        work.display()
    );
    let shared = Arc::new(Shared::new());
    let clients: Vec<_> = traffic::ROLES
        .iter()
        .enumerate()
        .map(|(i, &role)| {
            let shared = Arc::clone(&shared);
            let seed = 0x5eed_u64.wrapping_mul(i as u64 + 1) ^ u64::from(std::process::id());
            thread::spawn(move || traffic::client(role, seed, listen, &shared))
        })
        .collect();

    let started = shared.started;
    let since = |t: Instant| t.duration_since(started).as_secs_f64();
    let end = started + Duration::from_secs_f64(args.minutes * 60.0);
    let kill_every = Duration::from_secs(args.kill_every_s);
    let mut next_sample = started;
    let mut next_kill = started + kill_every;
    let mut samples = Vec::new();
    let mut generations = vec![Generation {
        pid: agent.pid(),
        started_s: 0.0,
        ended_s: 0.0,
        end: String::new(),
        restart_ms: None,
    }];
    let (mut restarts, mut crashes) = (0, 0);
    let mut kills_s = Vec::new();
    let mut events = Vec::new();
    let sample = |agent: &Server, generation: usize| Sample {
        t_s: since(Instant::now()),
        generation,
        rss_kib: procfs::tree_rss_kib(agent.pid()),
        fds: procfs::fd_count(agent.pid()),
        sent: shared.sent.load(Relaxed),
        ok: shared.ok.load(Relaxed),
    };

    let mut failed = None;
    while Instant::now() < end {
        let now = Instant::now();
        let generation = generations.len() - 1;
        let crashed = agent.exited();
        let kill = !kill_every.is_zero() && now >= next_kill;
        if crashed.is_some() || kill {
            let last = generations.last_mut().expect("one generation");
            last.ended_s = since(now);
            if let Some(status) = crashed {
                crashes += 1;
                last.end = format!("exited by itself: {status}");
                events.push(format!(
                    "{:.1} s: generation {generation} (pid {}) exited by itself ({status}); log {}: {}",
                    since(now),
                    agent.pid(),
                    agent.log.display(),
                    process::tail(&agent.log_text(), 400).replace('\n', " ⏎ ")
                ));
            } else {
                last.end = "SIGKILL".into();
                kills_s.push(since(now));
                eprintln!(
                    "soak: {:>5.0} s  SIGKILL generation {generation} (pid {})",
                    since(now),
                    agent.pid()
                );
                agent.kill()?;
                restarts += 1;
                next_kill += kill_every;
            }
            let down = Instant::now();
            match spawn_agent(generation + 1) {
                Ok(next) => agent = next,
                Err(e) => {
                    events.push(format!("{:.1} s: restart failed: {e:#}", since(down)));
                    failed = Some(e);
                    break;
                }
            }
            generations.push(Generation {
                pid: agent.pid(),
                started_s: since(Instant::now()),
                ended_s: 0.0,
                end: String::new(),
                restart_ms: Some(down.elapsed().as_millis()),
            });
            continue;
        }
        if now >= next_sample {
            let s = sample(&agent, generation);
            eprintln!(
                "soak: {:>5.0} s  gen {generation}  rss {} KiB  fds {}  sent {}  200s {}",
                s.t_s,
                s.rss_kib.unwrap_or(0),
                s.fds.unwrap_or(0),
                s.sent,
                s.ok
            );
            samples.push(s);
            next_sample += SAMPLE_EVERY;
        }
        let mut wake = end.min(next_sample);
        if !kill_every.is_zero() {
            wake = wake.min(next_kill);
        }
        thread::sleep(
            wake.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(250)),
        );
    }

    shared.stop.store(true, Relaxed);
    for client in clients {
        if client.join().is_err() {
            events.push("a client thread panicked".into());
        }
    }
    let duration_s = since(Instant::now());
    let generation = generations.len() - 1;
    samples.push(sample(&agent, generation));
    let last = generations.last_mut().expect("one generation");
    last.ended_s = duration_s;
    last.end = match agent.stop_within(FINAL_STOP_TIMEOUT) {
        Ok(status) => format!("SIGTERM ({status})"),
        Err(e) => {
            events.push(format!("final stop: {e:#}"));
            "SIGTERM ignored, killed".into()
        }
    };
    drop((clean, faulty));
    if let Some(e) = failed {
        eprintln!("soak: {e:#}");
    }

    let ids = std::mem::take(&mut *shared.ids.lock().unwrap_or_else(|e| e.into_inner()));
    let (ledger_rows, missing) = match ledger_ids(&data_dir) {
        Ok(rows) => {
            let missing: Vec<(String, f64)> = ids
                .iter()
                .filter(|(id, _)| !rows.contains(id))
                .cloned()
                .collect();
            (Some(rows.len() as u64), missing)
        }
        Err(e) => {
            events.push(format!("reading the ledger: {e:#}"));
            (None, ids.clone())
        }
    };
    let kinds = shared
        .kinds
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let errors = shared
        .errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let clients = traffic::ROLES.len();
    let stats: Vec<_> = (0..generations.len())
        .map(|g| report::gen_stats(&samples, g, clients))
        .collect();
    let ok = shared.ok.load(Relaxed);
    let mut failures = Vec::new();
    if !missing.is_empty() {
        failures.push(format!("{} 200s without a ledger row", missing.len()));
    }
    if crashes > 0 {
        failures.push(format!("the agent exited by itself {crashes} time(s)"));
    }
    if ok == 0 {
        failures.push("no request succeeded".into());
    }
    if events.iter().any(|e| e.contains("restart failed")) {
        failures.push("a restart failed".into());
    }
    for (g, s) in stats.iter().enumerate() {
        failures.extend(s.problems.iter().map(|p| format!("generation {g}: {p}")));
    }

    let machine = Machine::probe(&layout.root);
    let markdown = report::render(&report::Run {
        header: format!(
            "{} · commit {} · {} ({} × {}, kernel {})",
            machine.date,
            machine.commit,
            machine.hostname,
            machine.nproc,
            machine.cpu_model,
            machine.kernel
        ),
        command: format!(
            "cargo xtask soak --minutes {} --kill-every-s {}",
            args.minutes, args.kill_every_s
        ),
        duration_s,
        restarts,
        crashes,
        sent: shared.sent.load(Relaxed),
        connect_failures: shared.connect_failures.load(Relaxed),
        ok,
        checked_ids: ids.len(),
        ledger_rows,
        missing: &missing,
        kills_s: &kills_s,
        kinds: &kinds,
        errors: &errors,
        generations: &generations,
        stats: &stats,
        samples: &samples,
        events: &events,
        setup: &setup_text(clients, &yaml),
        failures: &failures,
    });
    let out = args.out.clone().unwrap_or_else(|| {
        layout
            .root
            .join("benches/results")
            .join(format!("soak-{}.md", machine.date))
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, &markdown).with_context(|| format!("writing {}", out.display()))?;
    println!("{markdown}");
    eprintln!("soak: wrote {}", out.display());
    if !failures.is_empty() {
        bail!("soak failed: {}", failures.join("; "));
    }
    Ok(())
}

fn build(root: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", "tollgate", "-p", "tollgate-sim"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p tollgate -p tollgate-sim failed ({status})");
    }
    Ok(())
}

/// Starts `tollgate serve`; retries a few times when the port is still held by the killed one.
fn start_agent(
    binary: &Path,
    config: &Path,
    work: &Path,
    generation: usize,
) -> anyhow::Result<Server> {
    let mut attempt = 0;
    loop {
        let mut cmd = Command::new(binary);
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .env("NO_COLOR", "1");
        match Server::start_announced(&format!("tollgate-{generation}"), cmd, work) {
            Ok(server) => return Ok(server),
            Err(e) if attempt < 5 => {
                eprintln!("soak: starting the agent (attempt {attempt}): {e:#}");
                attempt += 1;
                thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The agent's config: both replicas as OpenAI and Anthropic providers, a 1 MiB body limit (the
/// abuse client sends 2 MiB), short timeouts so slow and dead connections end within the run, and
/// the kernel side off (it needs root, and it is not what this run is about).
fn render_config(
    listen: SocketAddr,
    data_dir: &Path,
    clean: SocketAddr,
    faulty: SocketAddr,
) -> String {
    format!(
        "# Written by `cargo xtask soak`.
listen: {listen}
data_dir: {data}
workers: {WORKERS}
auth: {{ mode: open }}
kernel: {{ enabled: off }}
limits: {{ max_body_bytes: 1048576, header_timeout_ms: 5000, body_timeout_ms: 5000, idle_timeout_ms: 15000 }}
upstream: {{ response_timeout_ms: 10000, read_timeout_ms: 10000, drain_timeout_ms: 5000 }}
providers:
  - {{ name: clean, kind: openai, base_url: \"http://{clean}\" }}
  - {{ name: clean-anthropic, kind: anthropic, base_url: \"http://{clean}\" }}
  - {{ name: faulty, kind: openai, base_url: \"http://{faulty}\" }}
  - {{ name: faulty-anthropic, kind: anthropic, base_url: \"http://{faulty}\" }}
models:
  - {{ name: {MODEL}, provider: clean, model: {SIM_MODEL} }}
  - {{ name: {MODEL_ANTHROPIC}, provider: clean-anthropic, model: {SIM_MODEL} }}
  - {{ name: {MODEL_FAULTY}, provider: faulty, model: {SIM_MODEL} }}
  - {{ name: {MODEL_FAULTY_ANTHROPIC}, provider: faulty-anthropic, model: {SIM_MODEL} }}
",
        data = data_dir.display(),
    )
}

/// Every request id in the ledger (opened read-only after the agent stopped).
fn ledger_ids(data_dir: &Path) -> anyhow::Result<HashSet<String>> {
    let path = data_dir.join("ledger.sqlite");
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", path.display()))?;
    let mut stmt = conn.prepare("SELECT id FROM usage")?;
    let ids = stmt
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<Result<HashSet<_>, _>>()?;
    Ok(ids)
}

fn setup_text(clients: usize, yaml: &str) -> String {
    format!(
        "- simulators: clean `tollgate-sim --model {SIM_MODEL} {}`, faulty `tollgate-sim --model {SIM_MODEL} {}`\n\
         - {clients} client threads: {:?}\n\
         - checks: every 200 received in full has a ledger row; per generation, open fds end at most \
         {} above the second sample; RSS ends at most {:.0}% above the second sample (generations of \
         at least {} samples)\n\
         - agent config:\n\n```yaml\n{yaml}```\n",
        SIM_CLEAN.join(" "),
        SIM_FAULTY.join(" "),
        traffic::ROLES,
        report::fd_slack(clients),
        report::RSS_GROWTH_MAX * 100.0,
        report::RSS_MIN_SAMPLES,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_routes_every_model() {
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        let b = SocketAddr::from(([127, 0, 0, 1], 2));
        let yaml = render_config(a, Path::new("/tmp/soak"), a, b);
        for model in [MODEL, MODEL_ANTHROPIC, MODEL_FAULTY, MODEL_FAULTY_ANTHROPIC] {
            assert!(yaml.contains(&format!("name: {model},")), "{model}");
        }
        assert!(yaml.contains("base_url: \"http://127.0.0.1:2\""));
        assert!(yaml.contains("listen: 127.0.0.1:1\n"));
    }
}
