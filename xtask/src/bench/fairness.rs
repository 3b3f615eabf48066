//! `cargo xtask bench --fairness`: two tenants against a saturated replica (issue 11). One
//! simulator replica with `--max-running 4`; one agent whose model has it as its only target
//! with `max_in_flight: 4` (the fair queue on), or without a cap (the replica's own FIFO queue,
//! what a plain proxy gives). `tollgate-fairness` sends the quiet tenant's requests alone (its
//! unloaded figure), then with a noisy tenant sending ten times as many, past what the replica
//! can serve. Reported: the quiet tenant's latency p50/p90 in each run, the ratio of its loaded
//! p90 to its unloaded one (target: at most 1.5 with the fair queue), and what the noisy tenant
//! got.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Command;

use anyhow::Context;

use super::process::Server;
use super::{Layout, MODEL};

const SECONDS: &str = "15";
const QUIET_RPS: &str = "4";
const NOISY_RPS: &str = "40";
/// A replica with four sequence slots, about 0.2 s per 16-token answer.
const SIM_FLAGS: [&str; 4] = ["--max-running", "4", "--itl-per-running-ms", "0"];

fn agent_config(dir: &std::path::Path, replica: SocketAddr, cap: u32) -> String {
    format!(
        "listen: 127.0.0.1:0\ndata_dir: {}\nworkers: 1\nauth: {{ mode: open }}\n\
         routing: {{queue: {{max_waiting: 4096, max_waiting_per_tenant: 64, max_wait_ms: 60000}}}}\n\
         providers:\n  - {{name: r0, kind: openai, base_url: \"http://{replica}\"}}\n\
         models:\n  - name: fair\n    targets:\n      - {{provider: r0, model: {MODEL}, max_in_flight: {cap}}}\n",
        dir.join("data").display()
    )
}

fn generator(
    layout: &Layout,
    agent: SocketAddr,
    noisy_rps: &str,
    spread: &str,
) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(layout.bin("tollgate-fairness"))
        .args(["--target", &agent.to_string(), "--model", "fair"])
        .args(["--noisy-spread", spread])
        .args([
            "--quiet-rps",
            QUIET_RPS,
            "--noisy-rps",
            noisy_rps,
            "--duration",
            SECONDS,
        ])
        .output()
        .context("running tollgate-fairness")?;
    anyhow::ensure!(
        out.status.success(),
        "tollgate-fairness failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("reading tollgate-fairness's JSON")
}

pub fn run(layout: &Layout) -> anyhow::Result<String> {
    let mut rows = Vec::new();
    for (label, cap, spread) in [
        (
            "fair queue (max_in_flight: 4), noisy answers 8-24 tokens",
            4u32,
            "8",
        ),
        (
            "fair queue (max_in_flight: 4), noisy answers all 16 tokens",
            4,
            "0",
        ),
        ("no cap (replica's FIFO), noisy answers 8-24 tokens", 0, "8"),
    ] {
        let dir = layout.work.join(format!("fairness-{cap}-{spread}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut sim = Command::new(layout.bin("tollgate-sim"));
        sim.args(["--listen", "127.0.0.1:0", "--model", MODEL])
            .args(SIM_FLAGS);
        let replica = Server::start_announced("replica", sim, &dir)?;
        let config = dir.join("tollgate.yaml");
        std::fs::write(&config, agent_config(&dir, replica.addr, cap))
            .context("writing the agent config")?;
        let mut cmd = Command::new(layout.bin("tollgate"));
        cmd.arg("serve").arg("--config").arg(&config);
        let agent = Server::start_announced("tollgate", cmd, &dir)?;
        eprintln!("bench: fairness, {label}: quiet alone, then with noisy, {SECONDS} s each");
        let alone = generator(layout, agent.addr, "0", spread);
        let loaded = generator(layout, agent.addr, NOISY_RPS, spread);
        let _ = agent.stop();
        let _ = replica.stop();
        rows.push((label, alone?, loaded?));
    }
    let mut t = String::from(
        "| agent | quiet alone p50 / p90 ms | quiet with noisy p50 / p90 ms | quiet p90 ratio | quiet statuses | noisy statuses | noisy p90 ms |\n|---|---:|---:|---:|---|---|---:|\n",
    );
    for (label, alone, loaded) in &rows {
        let f = |v: &serde_json::Value, team: &str, p: &str| {
            v[team]["ok_ms"][p].as_f64().unwrap_or(f64::NAN)
        };
        let _ = writeln!(
            t,
            "| {label} | {:.0} / {:.0} | {:.0} / {:.0} | {:.2} | {} | {} | {:.0} |",
            f(alone, "quiet", "p50"),
            f(alone, "quiet", "p90"),
            f(loaded, "quiet", "p50"),
            f(loaded, "quiet", "p90"),
            f(loaded, "quiet", "p90") / f(alone, "quiet", "p90"),
            loaded["quiet"]["statuses"],
            loaded["noisy"]["statuses"],
            f(loaded, "noisy", "p90"),
        );
    }
    let _ = write!(
        t,
        "\nWorkload: `tollgate-fairness`: quiet tenant {QUIET_RPS} req/s, noisy tenant {NOISY_RPS} req/s \
         (0 for the unloaded run), open loop, one connection per request, 16-token answers for the quiet tenant, 8 to 24 (uniform) or all 16 \
         for the noisy one, {SECONDS} s per run. With answers all the same length the four slots start \
         and end in step, so a quiet request waits for a whole answer when it arrives just after a round began. \
         Replica: `tollgate-sim {}` (about 0.2 s per answer: 4 slots serve about 20 req/s, so the \
         44 req/s offered saturate it). Agent: 1 worker, `routing.queue: {{max_waiting: 4096, \
         max_waiting_per_tenant: 64, max_wait_ms: 60000}}`, tenant = team. Statuses count answers by HTTP status \
         (429 `tenant_queue_full` once the noisy tenant has 64 waiting).\n",
        SIM_FLAGS.join(" ")
    );
    Ok(t)
}
