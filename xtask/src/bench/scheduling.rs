//! `cargo xtask bench --scheduling`: replica choice on an agentic workload (issue 11). Four
//! simulator replicas with their prefix cache on, a TTFT that grows with the uncached prompt
//! and a limited number of running sequences, behind one agent whose model has the four as
//! equal targets; `tollgate-agentic` (many sessions, long shared system prompts, conversations
//! that grow, some one-off long prompts) runs against the agent with `balance: round_robin`,
//! `least_load` and `prefix`, and once with each session pinned straight to one replica
//! (perfect affinity, no balancing: the upper bound). Replicas are restarted between runs so
//! every strategy starts with cold caches. Reported per strategy: the cache hit rate the
//! replicas reported (cached / prompt tokens), TTFT p50/p90, end-to-end p90, throughput.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Command;

use anyhow::Context;

use super::process::Server;
use super::{Layout, MODEL};

const REPLICAS: usize = 4;
/// More sessions than the replicas' caches hold at once when every replica sees all of them
/// (round robin), few enough that they fit when each replica keeps its own.
const WORKLOAD: [&str; 4] = ["--sessions", "48", "--oneoff", "0.05"];
const SECONDS: f64 = 20.0;

/// What a replica is: a small GPU's worth of KV cache and batch slots.
const SIM_FLAGS: [&str; 14] = [
    "--ttft-base-ms",
    "5",
    "--ttft-per-token-us",
    "40",
    "--itl-base-ms",
    "2",
    "--itl-per-running-ms",
    "0.1",
    "--max-running",
    "8",
    "--prefix-cache-blocks",
    "700",
    "--block-tokens",
    "16",
];

fn start_replicas(layout: &Layout, dir: &std::path::Path) -> anyhow::Result<Vec<Server>> {
    (0..REPLICAS)
        .map(|i| {
            let mut cmd = Command::new(layout.bin("tollgate-sim"));
            cmd.args(["--listen", "127.0.0.1:0", "--model", MODEL])
                .args(SIM_FLAGS);
            Server::start_announced(&format!("replica-{i}"), cmd, dir)
        })
        .collect()
}

fn agent_config(dir: &std::path::Path, replicas: &[SocketAddr], balance: &str) -> String {
    let mut y = format!(
        "listen: 127.0.0.1:0\ndata_dir: {}\nworkers: 1\nauth: {{ mode: open }}\nreplicas: {{ scrape_interval_ms: 250 }}\nproviders:\n",
        dir.join("data").display()
    );
    for (i, a) in replicas.iter().enumerate() {
        let _ = writeln!(
            y,
            "  - {{name: r{i}, kind: openai, base_url: \"http://{a}\"}}"
        );
    }
    let _ = writeln!(
        y,
        "models:\n  - name: {MODEL}\n    balance: {balance}\n    targets:"
    );
    for i in 0..replicas.len() {
        let _ = writeln!(y, "      - {{provider: r{i}, model: {MODEL}}}");
    }
    y
}

fn generator(layout: &Layout, target: &[String]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(layout.bin("tollgate-agentic"))
        .args(target)
        .args(["--model", MODEL, "--duration", &SECONDS.to_string()])
        .args(WORKLOAD)
        .output()
        .context("running tollgate-agentic")?;
    anyhow::ensure!(
        out.status.success(),
        "tollgate-agentic failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("reading tollgate-agentic's JSON")
}

pub fn run(layout: &Layout) -> anyhow::Result<String> {
    let mut rows = Vec::new();
    for strategy in ["round_robin", "least_load", "prefix", "pinned"] {
        let dir = layout.work.join(format!("scheduling-{strategy}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let replicas = start_replicas(layout, &dir)?;
        let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
        eprintln!("bench: scheduling `{strategy}`, {SECONDS} s");
        let result = if strategy == "pinned" {
            let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            generator(layout, &["--pin".into(), list.join(",")])
        } else {
            let config = dir.join("tollgate.yaml");
            std::fs::write(&config, agent_config(&dir, &addrs, strategy))
                .context("writing the agent config")?;
            let mut cmd = Command::new(&layout.agent);
            cmd.arg("serve").arg("--config").arg(&config);
            let agent = Server::start_announced("tollgate", cmd, &dir)?;
            let r = generator(layout, &["--target".into(), agent.addr.to_string()]);
            let _ = agent.stop();
            r
        };
        for r in replicas {
            let _ = r.stop();
        }
        rows.push((strategy, result?));
    }
    let mut t = String::from(
        "| strategy | hit rate | TTFT p50 ms | TTFT p90 ms | e2e p90 ms | req/s | requests | errors |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, v) in &rows {
        let f = |p: &[&str]| p.iter().fold(v, |v, k| &v[*k]).as_f64().unwrap_or(f64::NAN);
        let _ = writeln!(
            t,
            "| {} | {:.1} % | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
            if *name == "pinned" {
                "sessions pinned to replicas (upper bound, no agent)"
            } else {
                name
            },
            f(&["hit_rate"]) * 100.0,
            f(&["ttft_ms", "p50"]),
            f(&["ttft_ms", "p90"]),
            f(&["e2e_ms", "p90"]),
            f(&["rps"]),
            v["requests"],
            v["errors"],
        );
    }
    let _ = write!(
        t,
        "\nWorkload: `tollgate-agentic {}` (48 sessions, 4 shared system prompts of 8,000 bytes, \
         400 bytes per turn, 8 turns per conversation, 5 % one-off prompts of 6,000 bytes, \
         8 output tokens, streaming), {SECONDS} s per strategy. Replicas: `tollgate-sim {}` ×{REPLICAS}, \
         restarted (cold caches) for every strategy. Agent: 1 worker, `replicas.scrape_interval_ms: 250`.\n",
        WORKLOAD.join(" "),
        SIM_FLAGS.join(" ")
    );
    Ok(t)
}
