//! `cargo xtask bench --reload`: what hot reloads cost requests. One agent (epoll, one worker)
//! in front of the simulator, closed loop at 16 connections; windows without reloads alternate
//! with windows where the config file is rewritten and `SIGHUP` sent every 100 ms, in the same
//! run, so the two are compared under the same machine conditions. Reported: rps, p50/p99/p99.9
//! and failed requests per window, and how many reloads were sent.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::measure::{Load, Pacing, Point, PointResult};
use super::{agent, Layout, MODEL};

/// Interval between reloads in the reloading windows.
const EVERY: Duration = Duration::from_millis(100);
/// Windows of each kind.
const ROUNDS: usize = 3;

pub fn run(layout: &Layout, load: &Load, warmup: f64) -> anyhow::Result<String> {
    let work = layout.work.join("reload");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let sim = super::zero_delay_sim(layout, &work)?;
    let server = agent::start(&layout.agent, &work, "epoll", sim.addr, MODEL, false)?;
    let target = server.addr.to_string();
    load.warm_up(&target, warmup)?;
    let config = work.join("tollgate.yaml");
    let a = std::fs::read_to_string(&config).context("reading the bench config")?;
    // Two valid files that differ (an extra model), so every reload builds a new snapshot.
    let b = a.replace(
        "models:\n",
        &format!("models:\n  - name: alias\n    provider: local\n    model: {MODEL}\n"),
    );
    let point = Point {
        pacing: Pacing::Closed(16),
        stream: false,
    };
    let mut rows: Vec<(&str, PointResult, u64)> = Vec::new();
    for _ in 0..ROUNDS {
        rows.push(("no reloads", load.measure(&target, point, server.pid())?, 0));
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let reloader = {
            let (stop, sent, config, a, b) = (
                stop.clone(),
                sent.clone(),
                config.clone(),
                a.clone(),
                b.clone(),
            );
            let pid = server.pid() as libc::pid_t;
            std::thread::spawn(move || {
                let mut flip = false;
                while !stop.load(Ordering::Relaxed) {
                    flip = !flip;
                    let tmp = config.with_extension("new");
                    if std::fs::write(&tmp, if flip { &b } else { &a }).is_ok()
                        && std::fs::rename(&tmp, &config).is_ok()
                    {
                        // SAFETY: kill(2) on the agent's pid: our child, alive for this window.
                        unsafe { libc::kill(pid, libc::SIGHUP) };
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(EVERY);
                }
            })
        };
        let measured = load.measure(&target, point, server.pid());
        stop.store(true, Ordering::Relaxed);
        let _ = reloader.join();
        rows.push((
            "reload every 100 ms",
            measured?,
            sent.load(Ordering::Relaxed),
        ));
    }
    let log = server.log_text();
    let applied = log.matches("configuration reloaded").count();
    server.stop()?;
    sim.stop()?;

    let mut out = String::from(
        "| window | rps | p50 µs | p99 µs | p99.9 µs | failed | reloads sent |\n|---|---|---|---|---|---|---|\n",
    );
    for (name, r, sent) in &rows {
        let t = r.latency.unwrap_or_default();
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {sent} |",
            r.rps, t.p50, t.p99, t.p999, r.errors
        );
    }
    let _ = writeln!(out, "\nReloads the agent applied over the run: {applied}.");
    Ok(out)
}
