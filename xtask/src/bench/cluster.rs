//! `cargo xtask bench --cluster`: what cluster mode costs a request. Two agents (epoll, one
//! worker each) in front of the same simulator, with the same team rate limit (requests and
//! tokens) and team budget (tokens and USD): one enforcing alone, one in cluster mode against a
//! local `redis-server` (started here, stopped by its pid). Windows alternate (ABBA) at 16
//! connections; reported per window: rps, p50/p99, the agent's CPU per request, and for the
//! cluster agent the Redis commands it sent per second, against its requests per second.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Instant;

use anyhow::Context;

use super::measure::{Load, Pacing, Point, PointResult};
use super::process::Server;
use super::{agent, Layout, MODEL};

const ROUNDS: usize = 6;

const RULES: &str = "prices:\n  {MODEL}: { input: 0.10, output: 0.40 }\n\
rate_limits:\n  - scope: { team: bench }\n    requests_per_minute: 100000000\n    tokens_per_minute: 100000000000\n\
budgets:\n  - scope: { team: bench }\n    tokens: 1000000000000\n    usd: 1000000\n    window: month\n";

fn ops(addr: std::net::SocketAddr) -> f64 {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return f64::NAN;
    };
    use std::io::{Read, Write};
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("tollgate_cluster_redis_ops_total{")
                .and_then(|rest| rest.split_once("} "))
                .and_then(|(_, v)| v.trim().parse().ok())
        })
        .unwrap_or(f64::NAN)
}

pub fn run(layout: &Layout, load: &Load, warmup: f64) -> anyhow::Result<String> {
    let work = layout.work.join("cluster");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let redis_port = super::process::free_port()?.port();
    let mut redis_cmd = Command::new("redis-server");
    redis_cmd
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"]);
    let mut redis = redis_cmd
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting redis-server (apt-get install redis-server)")?;
    let sim = super::zero_delay_sim(layout, &work)?;
    let rules = RULES.replace("{MODEL}", MODEL);
    let start = |name: &str, extra: String| -> anyhow::Result<Server> {
        let dir = work.join(name);
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        let yaml = agent::render_config(&data, "epoll", sim.addr, MODEL, false).replace(
            "auth: { mode: open }\n",
            &format!("auth: {{ mode: open }}\n{rules}{extra}"),
        );
        let config = dir.join("tollgate.yaml");
        std::fs::write(&config, yaml).context("writing a config")?;
        let mut cmd = Command::new(&layout.agent);
        cmd.arg("serve").arg("--config").arg(&config);
        Server::start_announced(name, cmd, &dir)
    };
    let local = start("tollgate-local", String::new())?;
    let cluster = start(
        "tollgate-cluster",
        format!("cluster: {{ redis: \"redis://127.0.0.1:{redis_port}/0\", node: bench }}\n"),
    )?;
    let load = Load {
        headers: vec!["x-tollgate-team: bench".into()],
        ..load.clone()
    };
    let (local_target, cluster_target) = (local.addr.to_string(), cluster.addr.to_string());
    load.warm_up(&local_target, warmup)?;
    load.warm_up(&cluster_target, warmup)?;
    let point = Point {
        pacing: Pacing::Closed(16),
        stream: false,
    };
    let mut rows: Vec<(&str, PointResult, Option<f64>)> = Vec::new();
    for round in 0..ROUNDS {
        let local_first = round % 2 == 0;
        for side in [local_first, !local_first] {
            if side {
                rows.push((
                    "local",
                    load.measure(&local_target, point, local.pid())?,
                    None,
                ));
            } else {
                let (before, t) = (ops(cluster.addr), Instant::now());
                let r = load.measure(&cluster_target, point, cluster.pid())?;
                let per_s = (ops(cluster.addr) - before) / t.elapsed().as_secs_f64();
                rows.push(("cluster (Redis leases)", r, Some(per_s)));
            }
        }
    }
    local.stop()?;
    cluster.stop()?;
    sim.stop()?;
    let _ = redis.kill();
    let _ = redis.wait();

    let mut out = String::from(
        "| window | rps | p50 µs | p99 µs | agent CPU µs/req | Redis ops/s | failed |\n|---|---|---|---|---|---|---|\n",
    );
    for (name, r, ops) in &rows {
        let t = r.latency.unwrap_or_default();
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {:.0} | {:.0} | {} | {} | {} |",
            r.rps,
            t.p50,
            t.p99,
            r.server_cpu_us.map_or("-".into(), |c| format!("{c:.1}")),
            ops.map_or("-".into(), |o| format!("{o:.1}")),
            r.errors
        );
    }
    let mean = |name: &str, f: &dyn Fn(&PointResult) -> Option<f64>| {
        let v: Vec<f64> = rows
            .iter()
            .filter(|(n, _, _)| *n == name)
            .filter_map(|(_, r, _)| f(r))
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let p50 = |r: &PointResult| r.latency.map(|l| l.p50);
    let cpu = |r: &PointResult| r.server_cpu_us;
    if let (Some(a), Some(b), Some(c), Some(d)) = (
        mean("local", &p50),
        mean("cluster (Redis leases)", &p50),
        mean("local", &cpu),
        mean("cluster (Redis leases)", &cpu),
    ) {
        let _ = writeln!(
            out,
            "\nMeans: p50 {a:.0} µs alone, {b:.0} µs in cluster mode; agent CPU {c:.1} against {d:.1} µs per request."
        );
    }
    Ok(out)
}
