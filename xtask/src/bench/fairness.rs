//! `cargo xtask bench --fairness`: two tenants against a saturated replica (issue 11). One
//! simulator replica with `--max-running N` sequence slots; one agent whose model has it as its
//! only target with `max_in_flight: N` (the fair queue on), or without a cap (the replica's own
//! FIFO queue: what a plain proxy gives). `tollgate-fairness` sends the quiet tenant's requests
//! alone (its unloaded figure), then beside a noisy tenant sending ten times as many, past what
//! the replica can serve. Reported per scenario: the quiet tenant's latency p50/p90 alone and
//! loaded, the ratio of the p90s (target: at most 1.5 with the fair queue), and what the noisy
//! tenant got. A quiet request still waits for the next slot to free: with N slots busy for
//! about 0.17 s each that is about 0.17/N s on average, so the ratio shrinks as N grows.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Command;

use anyhow::Context;

use super::process::Server;
use super::{Layout, MODEL};

const SECONDS: &str = "15";

struct Scenario {
    label: &'static str,
    /// The replica's sequence slots.
    slots: u32,
    /// The target's `max_in_flight`; 0: no cap, no queue in the agent.
    cap: u32,
    quiet_rps: &'static str,
    noisy_rps: &'static str,
    /// How far the noisy tenant's answer lengths vary around 16 tokens.
    spread: &'static str,
}

const SCENARIOS: [Scenario; 5] = [
    Scenario {
        label: "fair queue, 16 slots",
        slots: 16,
        cap: 16,
        quiet_rps: "10",
        noisy_rps: "100",
        spread: "8",
    },
    Scenario {
        label: "no cap (replica's FIFO), 16 slots",
        slots: 16,
        cap: 0,
        quiet_rps: "10",
        noisy_rps: "100",
        spread: "8",
    },
    Scenario {
        label: "fair queue, 4 slots",
        slots: 4,
        cap: 4,
        quiet_rps: "4",
        noisy_rps: "40",
        spread: "8",
    },
    Scenario {
        label: "fair queue, 4 slots, noisy answers all 16 tokens",
        slots: 4,
        cap: 4,
        quiet_rps: "4",
        noisy_rps: "40",
        spread: "0",
    },
    Scenario {
        label: "no cap (replica's FIFO), 4 slots",
        slots: 4,
        cap: 0,
        quiet_rps: "4",
        noisy_rps: "40",
        spread: "8",
    },
];

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
    s: &Scenario,
    noisy_rps: &str,
) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(layout.bin("tollgate-fairness"))
        .args(["--target", &agent.to_string(), "--model", "fair"])
        .args(["--noisy-spread", s.spread, "--quiet-rps", s.quiet_rps])
        .args(["--noisy-rps", noisy_rps, "--duration", SECONDS])
        .output()
        .context("running tollgate-fairness")?;
    anyhow::ensure!(
        out.status.success(),
        "tollgate-fairness failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("reading tollgate-fairness's JSON")
}

fn run_one(layout: &Layout, i: usize, s: &Scenario) -> anyhow::Result<[serde_json::Value; 2]> {
    let dir = layout.work.join(format!("fairness-{i}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut sim = Command::new(layout.bin("tollgate-sim"));
    sim.args(["--listen", "127.0.0.1:0", "--model", MODEL])
        .args([
            "--max-running",
            &s.slots.to_string(),
            "--itl-per-running-ms",
            "0",
        ]);
    let replica = Server::start_announced("replica", sim, &dir)?;
    let config = dir.join("tollgate.yaml");
    std::fs::write(&config, agent_config(&dir, replica.addr, s.cap))
        .context("writing the agent config")?;
    let mut cmd = Command::new(&layout.agent);
    cmd.arg("serve").arg("--config").arg(&config);
    let agent = Server::start_announced("tollgate", cmd, &dir)?;
    eprintln!(
        "bench: fairness, {}: quiet alone, then with noisy, {SECONDS} s each",
        s.label
    );
    let alone = generator(layout, agent.addr, s, "0");
    let loaded = generator(layout, agent.addr, s, s.noisy_rps);
    let _ = agent.stop();
    let _ = replica.stop();
    Ok([alone?, loaded?])
}

pub fn run(layout: &Layout) -> anyhow::Result<String> {
    let mut t = String::from(
        "| scenario | quiet / noisy req/s | quiet alone p50 / p90 ms | quiet with noisy p50 / p90 ms | quiet p90 ratio | quiet statuses | noisy statuses | noisy p90 ms |\n|---|---|---:|---:|---:|---|---|---:|\n",
    );
    for (i, s) in SCENARIOS.iter().enumerate() {
        let [alone, loaded] = run_one(layout, i, s)?;
        let f = |v: &serde_json::Value, team: &str, p: &str| {
            v[team]["ok_ms"][p].as_f64().unwrap_or(f64::NAN)
        };
        let _ = writeln!(
            t,
            "| {} | {} / {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.2} | {} | {} | {:.0} |",
            s.label,
            s.quiet_rps,
            s.noisy_rps,
            f(&alone, "quiet", "p50"),
            f(&alone, "quiet", "p90"),
            f(&loaded, "quiet", "p50"),
            f(&loaded, "quiet", "p90"),
            f(&loaded, "quiet", "p90") / f(&alone, "quiet", "p90"),
            loaded["quiet"]["statuses"],
            loaded["noisy"]["statuses"],
            f(&loaded, "noisy", "p90"),
        );
    }
    let _ = write!(
        t,
        "\nWorkload: `tollgate-fairness`, open loop (each request on its own connection, sent on \
         schedule whatever came back), {SECONDS} s per run; the quiet tenant's answers are 16 tokens, \
         the noisy tenant's 8 to 24 (uniform) unless noted. Replica: `tollgate-sim --max-running N \
         --itl-per-running-ms 0`, about 0.17 s per 16-token answer, so N slots serve about 6N req/s \
         and the offered 11 × quiet rate saturates it. Agent: 1 worker, `routing.queue: \
         {{max_waiting: 4096, max_waiting_per_tenant: 64, max_wait_ms: 60000}}`, tenant = team, \
         target `max_in_flight: N` (or none). Statuses count answers by HTTP status (429 \
         `tenant_queue_full` once the noisy tenant has 64 waiting). With answers all the same \
         length the slots start and end in step, so a quiet request arriving just after a round \
         began waits for a whole answer.\n"
    );
    Ok(t)
}
