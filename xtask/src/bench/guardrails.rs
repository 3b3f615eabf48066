//! `cargo xtask bench --guardrails`: what guardrails cost a request. Two agents (epoll, one
//! worker each) in front of the same simulator, in the same run: one without rules, one with a
//! rule covering every destination that scans with every built-in detector (`detect: [all]`)
//! and pseudonymizes what it finds, plus a word list. Requests carry 2 KB prompts (the
//! generator's filler text, so nothing matches: this is the scan's cost on clean traffic, the
//! common case). Windows alternate (ABBA) at 16 connections.

use std::process::Command;

use anyhow::Context;

use super::ab::{compare, Side};
use super::measure::Load;
use super::process::Server;
use super::{agent, Layout, MODEL};

const ROUNDS: usize = 6;
const PROMPT_BYTES: usize = 2048;

pub fn run(layout: &Layout, load: &Load, warmup: f64) -> anyhow::Result<String> {
    let work = layout.work.join("guardrails");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let sim = super::zero_delay_sim(layout, &work)?;

    let start = |name: &str, extra: &str| -> anyhow::Result<Server> {
        let dir = work.join(name);
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        let yaml = agent::render_config(&data, "epoll", sim.addr, MODEL, false) + extra;
        let config = dir.join("tollgate.yaml");
        std::fs::write(&config, yaml).context("writing the bench config")?;
        let mut cmd = Command::new(&layout.agent);
        cmd.arg("serve").arg("--config").arg(&config);
        Server::start_announced(name, cmd, &dir)
    };
    let off = start("tollgate-no-guardrails", "")?;
    let on = start(
        "tollgate-guardrails",
        "guardrails:\n  - name: everything\n    scope: {egress: any}\n    detect: [all, custom:codename]\n    \
         words: {codename: [bluebird, kestrel]}\n    action: pseudonymize\n",
    )?;
    let load = Load {
        prompt_bytes: Some(PROMPT_BYTES),
        ..load.clone()
    };
    let (a, b) = (off.addr.to_string(), on.addr.to_string());
    load.warm_up(&a, warmup)?;
    load.warm_up(&b, warmup)?;
    let table = compare(
        &Side {
            name: "no guardrails",
            load: &load,
            target: a,
            pid: off.pid(),
        },
        &Side {
            name: "every detector",
            load: &load,
            target: b,
            pid: on.pid(),
        },
        ROUNDS,
        16,
        "guardrails add",
    )?;
    off.stop()?;
    on.stop()?;
    sim.stop()?;
    Ok(format!(
        "Prompts of {PROMPT_BYTES} bytes, no match; 16 connections, {ROUNDS} rounds.\n\n{table}"
    ))
}
