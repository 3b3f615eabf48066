//! `cargo xtask bench --governance`: what governance costs a request. Two agents (io_uring, the
//! default driver, one worker each) in front of the same simulator, in the same run: one with
//! governance off (`auth: open`, no rules), one with it on — a virtual key with rpm/tpm and a
//! budget, a team rate limit (requests and tokens), a team budget in tokens and USD with
//! reservation, prices, metering and the ledger. Windows alternate between the two (ABBA) at 1,
//! 16 and 64 connections; reported per window: rps, p50/p99 and the agent's CPU per request,
//! and per point the difference of the means and the round-by-round difference with its
//! standard error (issue 9 asks for governed figures within 10 % of the open ones).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

use super::measure::Load;
use super::process::Server;
use super::{agent, Layout, MODEL};

const ROUNDS: usize = 6;
/// The closed-loop points measured, as `--against-nginx` does.
const CONNECTIONS: [usize; 3] = [1, 16, 64];
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

pub fn run(layout: &Layout, load: &Load, warmup: f64) -> anyhow::Result<String> {
    let work = layout.work.join("governance");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let sim = super::zero_delay_sim(layout, &work)?;

    let off_dir = work.join("off");
    std::fs::create_dir_all(&off_dir)?;
    let off = agent::start(&layout.agent, &off_dir, "io_uring", sim.addr, MODEL, false)?;

    let (on, key) = start_governed(layout, &work.join("on"), "io_uring", sim.addr)?;
    let keyed = Load {
        headers: vec![format!("Authorization: Bearer {key}")],
        ..load.clone()
    };

    let off_target = off.addr.to_string();
    let on_target = on.addr.to_string();
    load.warm_up(&off_target, warmup)?;
    keyed.warm_up(&on_target, warmup)?;
    let mut table = String::new();
    for connections in CONNECTIONS {
        let point = super::ab::compare(
            &super::ab::Side {
                name: "governance off",
                load,
                target: off_target.clone(),
                pid: off.pid(),
            },
            &super::ab::Side {
                name: "governance on",
                load: &keyed,
                target: on_target.clone(),
                pid: on.pid(),
            },
            ROUNDS,
            connections,
            "governance adds",
        )?;
        table.push_str(&format!("## {connections} connections\n\n{point}\n"));
    }
    off.stop()?;
    on.stop()?;
    sim.stop()?;

    Ok(table)
}

/// Starts a governed agent (`auth: keys`, a team rate limit and budget, prices) with `driver`
/// in `dir` in front of `upstream`, and creates its key through the admin API: the agent and
/// its bearer key. `cargo xtask bench --against-nginx` measures it too.
pub fn start_governed(
    layout: &Layout,
    dir: &Path,
    driver: &str,
    upstream: SocketAddr,
) -> anyhow::Result<(Server, String)> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let admin_port = super::process::free_port()?.port();
    let yaml = agent::render_config(&data, driver, upstream, MODEL, false).replace(
        "auth: { mode: open }\n",
        &format!(
            "auth: {{ mode: keys }}\n\
             admin: {{ listen: \"127.0.0.1:{admin_port}\", token_env: TOLLGATE_ADMIN_TOKEN }}\n\
             prices:\n  {MODEL}: {{ input: 0.10, output: 0.40 }}\n\
             rate_limits:\n  - scope: {{ team: bench }}\n    requests_per_minute: 100000000\n    tokens_per_minute: 100000000000\n\
             budgets:\n  - scope: {{ team: bench }}\n    tokens: 1000000000000\n    usd: 1000000\n    window: month\n"
        ),
    );
    let config = dir.join("tollgate.yaml");
    std::fs::write(&config, yaml).context("writing the governed config")?;
    let mut cmd = Command::new(&layout.agent);
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN);
    let on = Server::start_announced("tollgate-governed", cmd, dir)?;
    let out = Command::new(&layout.agent)
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
    Ok((on, key))
}
