//! `cargo xtask bench --governance`: what governance costs a request. Two agents (epoll, one
//! worker each) in front of the same simulator, in the same run: one with governance off
//! (`auth: open`, no rules), one with it on — a virtual key with rpm/tpm and a budget, a team
//! rate limit (requests and tokens), a team budget in tokens and USD with reservation, prices,
//! metering and the ledger. Windows alternate between the two (ABBA) at 16 connections; reported per
//! window: rps, p50/p99 and the agent's CPU per request, and the difference of the means.

use std::fmt::Write as _;
use std::process::Command;

use anyhow::{bail, Context};

use super::measure::{Load, Pacing, Point, PointResult};
use super::process::Server;
use super::{agent, Layout, MODEL};

const ROUNDS: usize = 6;
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

pub fn run(layout: &Layout, load: &Load, warmup: f64) -> anyhow::Result<String> {
    let work = layout.work.join("governance");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut sim_cmd = Command::new(layout.bin("tollgate-sim"));
    sim_cmd.args(["--listen", "127.0.0.1:0", "--model", MODEL, "--zero-delay"]);
    let sim = Server::start_announced("tollgate-sim", sim_cmd, &work)?;

    let off_dir = work.join("off");
    std::fs::create_dir_all(&off_dir)?;
    let off = agent::start(
        &layout.bin("tollgate"),
        &off_dir,
        "epoll",
        sim.addr,
        MODEL,
        false,
    )?;

    let on_dir = work.join("on");
    let data = on_dir.join("data");
    std::fs::create_dir_all(&data)?;
    let admin_port = super::process::free_port()?.port();
    let yaml = agent::render_config(&data, "epoll", sim.addr, MODEL, false).replace(
        "auth: { mode: open }\n",
        &format!(
            "auth: {{ mode: keys }}\n\
             admin: {{ listen: \"127.0.0.1:{admin_port}\", token_env: TOLLGATE_ADMIN_TOKEN }}\n\
             prices:\n  {MODEL}: {{ input: 0.10, output: 0.40 }}\n\
             rate_limits:\n  - scope: {{ team: bench }}\n    requests_per_minute: 100000000\n    tokens_per_minute: 100000000000\n\
             budgets:\n  - scope: {{ team: bench }}\n    tokens: 1000000000000\n    usd: 1000000\n    window: month\n"
        ),
    );
    let config = on_dir.join("tollgate.yaml");
    std::fs::write(&config, yaml).context("writing the governed config")?;
    let mut cmd = Command::new(layout.bin("tollgate"));
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN);
    let on = Server::start_announced("tollgate-governed", cmd, &on_dir)?;
    let out = Command::new(layout.bin("tollgate"))
        .args([
            "keys",
            "create",
            "--admin",
            &format!("http://127.0.0.1:{admin_port}"),
        ])
        .args(["--team", "bench", "--project", "load", "--rpm", "100000000"])
        .args([
            "--tpm",
            "100000000000",
            "--budget-tokens",
            "1000000000000",
            "--budget-usd",
            "100000",
        ])
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .context("creating the bench key")?;
    if !out.status.success() {
        bail!(
            "tollgate keys create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let keyed = Load {
        headers: vec![format!("Authorization: Bearer {key}")],
        ..load.clone()
    };

    let off_target = off.addr.to_string();
    let on_target = on.addr.to_string();
    load.warm_up(&off_target, warmup)?;
    keyed.warm_up(&on_target, warmup)?;
    let point = Point {
        pacing: Pacing::Closed(16),
        stream: false,
    };
    let mut rows: Vec<(&str, PointResult)> = Vec::new();
    // ABBA order, so neither side always runs right after the other.
    for round in 0..ROUNDS {
        let off_first = round % 2 == 0;
        for side in [off_first, !off_first] {
            if side {
                rows.push((
                    "governance off",
                    load.measure(&off_target, point, off.pid())?,
                ));
            } else {
                rows.push(("governance on", keyed.measure(&on_target, point, on.pid())?));
            }
        }
    }
    off.stop()?;
    on.stop()?;
    sim.stop()?;

    let mut out = String::from(
        "| window | rps | p50 µs | p99 µs | agent CPU µs/req | failed |\n|---|---|---|---|---|---|\n",
    );
    for (name, r) in &rows {
        let t = r.latency.unwrap_or_default();
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {:.0} | {:.0} | {} | {} |",
            r.rps,
            t.p50,
            t.p99,
            r.server_cpu_us.map_or("-".into(), |c| format!("{c:.1}")),
            r.errors
        );
    }
    let mean = |name: &str| {
        let v: Vec<f64> = rows
            .iter()
            .filter(|(n, _)| *n == name)
            .filter_map(|(_, r)| r.server_cpu_us)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    if let (Some(a), Some(b)) = (mean("governance off"), mean("governance on")) {
        let _ = writeln!(
            out,
            "\nMean agent CPU per request: {a:.1} µs off, {b:.1} µs on: governance adds {:.1} µs.",
            b - a
        );
    }
    Ok(out)
}
