//! `cargo xtask bench`: the end-to-end load harness.
//!
//! Builds the release binaries, starts `tollgate-sim --zero-delay` on loopback, and measures each path in
//! front of it with `tollgate-load`:
//!
//! - `direct`: the generator talks to the simulator;
//! - `tollgate io_uring` and `tollgate epoll`: `tollgate serve` with `io.driver` set to each;
//! - `nginx`: a plain reverse proxy (1 worker, keep-alive upstream, `proxy_buffering off`), when `nginx` is
//!   on PATH (the bench never installs it; the report says when it is missing).
//!
//! Each path gets the same points (see `measure::points`): closed loop at 1 and 64 connections, open loop at
//! 1k/2k/5k/10k req/s, and SSE streaming at 1 and 64 connections. Reported: p50/p99/p99.9/max, latency
//! added over direct at the same point, max throughput, the server's CPU per request (schedstat), and RSS
//! idle and under load. The markdown table is printed and written to
//! `benches/results/<date>-<hostname>.md`, which names the machine.
//!
//! Reproduce:
//!
//! ```text
//! cargo xtask bench                 # full run, 5 s per point, about 3-4 minutes
//! cargo xtask bench --quick         # 1 s per point, smoke run
//! cargo xtask bench --no-nginx --out /tmp/bench.md
//! cargo xtask bench --baseline /tmp/old/target/release/tollgate   # another build, same run
//! cargo xtask bench --against-nginx  # nginx, Tollgate, Tollgate governed: alternating windows
//! cargo xtask bench --against-nginx --agent target/pgo/tollgate --baseline target/release/tollgate
//! ```
//!
//! Logs and configs of every process go to `target/tollgate-bench/`. On a 2-vCPU machine the generator,
//! proxy and simulator share the cores: compare CPU per request and added latency, not raw rps.

mod ab;
mod against_nginx;
pub(crate) mod agent;
mod cluster;
mod fairness;
pub(crate) mod governance;
mod guardrails;
pub(crate) mod machine;
pub(crate) mod measure;
mod nginx;
pub(crate) mod process;
pub(crate) mod procfs;
mod reload;
mod report;
mod scheduling;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use machine::Machine;
use measure::{Load, Point};
use process::Server;
use report::{Measured, PathRun, Setup};

/// Model the simulator serves and the agent routes.
pub(crate) const MODEL: &str = "smol";

#[derive(clap::Args)]
pub struct Args {
    /// 1 s per point instead of 5 (smoke run; numbers are noisy).
    #[arg(long)]
    quick: bool,
    /// Skip the nginx baseline even if nginx is installed.
    #[arg(long)]
    no_nginx: bool,
    /// Where to write the markdown (default: benches/results/<date>-<hostname>.md).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use the release binaries already in target/ instead of building them.
    #[arg(long)]
    no_build: bool,
    /// Also measure another agent binary (e.g. the previous commit's release build) in the
    /// same run, as `baseline io_uring` / `baseline epoll` (with `--against-nginx`, a side
    /// named `baseline`).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Measure only what hot reloads cost: windows with a reload every 100 ms against windows
    /// without, in the same run (`bench/reload.rs`).
    #[arg(long)]
    reload: bool,
    /// Measure only what governance costs: an agent with a key, rate limits and budgets
    /// against one without, in alternating windows of the same run at 1, 16 and 64
    /// connections (`bench/governance.rs`).
    #[arg(long)]
    governance: bool,
    /// Measure only replica choice on an agentic workload: round_robin, least_load and prefix
    /// against four simulator replicas, and sessions pinned to replicas as the upper bound
    /// (`bench/scheduling.rs`).
    #[arg(long)]
    scheduling: bool,
    /// Measure only fairness: a quiet tenant alone and beside a noisy one ten times its rate,
    /// against a saturated replica, with the fair queue and without (`bench/fairness.rs`).
    #[arg(long)]
    fairness: bool,
    /// Measure only what guardrails cost: an agent scanning 2 KB prompts with every detector
    /// against one without rules, in alternating windows (`bench/guardrails.rs`).
    #[arg(long)]
    guardrails: bool,
    /// Measure only Tollgate against nginx: nginx, Tollgate and Tollgate with governance in
    /// alternating windows at 1, 16 and 64 connections, 2,000 req/s open loop and a stream at one
    /// connection (`bench/against_nginx.rs`).
    #[arg(long)]
    against_nginx: bool,
    /// The agent binary to measure instead of target/release/tollgate (which is then not
    /// built), e.g. `target/pgo/tollgate` from `cargo xtask pgo`.
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Measure only what cluster mode costs: an agent enforcing alone against one leasing its
    /// budgets from a local redis-server, in alternating windows (`bench/cluster.rs`).
    #[arg(long)]
    cluster: bool,
}

/// Paths to the workspace and the binaries (`cargo xtask soak` uses them too).
pub(crate) struct Layout {
    pub(crate) root: PathBuf,
    pub(crate) release: PathBuf,
    pub(crate) work: PathBuf,
    /// The agent binary the bench runs: `target/release/tollgate`, or `--agent` (e.g. the
    /// profile-guided build of `cargo xtask pgo`).
    pub(crate) agent: PathBuf,
}

impl Layout {
    pub(crate) fn discover() -> anyhow::Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_path_buf();
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        let target = if target.is_absolute() {
            target
        } else {
            root.join(target)
        };
        Ok(Self {
            release: target.join("release"),
            work: target.join("tollgate-bench"),
            agent: target.join("release").join("tollgate"),
            root,
        })
    }

    pub(crate) fn bin(&self, name: &str) -> PathBuf {
        self.release.join(name)
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut layout = Layout::discover()?;
    if let Some(agent) = &args.agent {
        layout.agent =
            std::fs::canonicalize(agent).with_context(|| format!("--agent {}", agent.display()))?;
    }
    let agent_build = if args.no_build {
        Ok(())
    } else {
        build(&layout, args.agent.is_none())?
    };
    let seconds = if args.quick { 1.0 } else { 5.0 };
    let warmup = if args.quick { 0.5 } else { 1.0 };
    let load = plain_load(&layout, seconds);
    let points = measure::points();
    if layout.work.exists() {
        std::fs::remove_dir_all(&layout.work)
            .with_context(|| format!("clearing {}", layout.work.display()))?;
    }

    let load_before = machine::load_average();
    if let Some(busy) = load_before.as_deref().filter(|l| {
        l.split(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v > 0.5)
    }) {
        eprintln!("bench: load average is {busy}: other work is running and will skew the numbers");
    }
    if args.reload
        || args.governance
        || args.guardrails
        || args.scheduling
        || args.fairness
        || args.cluster
        || args.against_nginx
    {
        if let Err(e) = agent_build {
            bail!("building the agent failed: {e}");
        }
        let (title, flag, suffix, table) = if args.against_nginx {
            let t = against_nginx::run(&layout, &load, warmup, args.baseline.as_deref())?;
            (
                "Tollgate against nginx, alternating windows",
                "--against-nginx",
                "against-nginx",
                t,
            )
        } else if args.cluster {
            let t = cluster::run(&layout, &load, warmup)?;
            ("Cluster mode cost under load", "--cluster", "cluster", t)
        } else if args.fairness {
            let t = fairness::run(&layout)?;
            (
                "Fair share against a saturated replica",
                "--fairness",
                "fairness",
                t,
            )
        } else if args.scheduling {
            let t = scheduling::run(&layout)?;
            (
                "Replica choice on an agentic workload",
                "--scheduling",
                "scheduling",
                t,
            )
        } else if args.guardrails {
            let t = guardrails::run(&layout, &load, warmup)?;
            (
                "Guardrails cost under load",
                "--guardrails",
                "guardrails",
                t,
            )
        } else if args.governance {
            let t = governance::run(&layout, &load, warmup)?;
            (
                "Governance cost under load",
                "--governance",
                "governance",
                t,
            )
        } else {
            let t = reload::run(&layout, &load, warmup)?;
            ("Hot reload under load", "--reload", "reload", t)
        };
        let m = Machine::probe(&layout.root);
        let text = format!(
            "# {title}\n\nMachine: {} ({} × {}, kernel {}), {}, commit {}; load average before: {}.\n\
             Reproduce: `cargo xtask bench {flag}`.\n\n{table}",
            m.hostname,
            m.nproc,
            m.cpu_model,
            m.kernel,
            m.date,
            m.commit,
            load_before.as_deref().unwrap_or("unknown"),
        );
        print!("{text}");
        let out = args.out.unwrap_or_else(|| {
            layout
                .root
                .join("benches/results")
                .join(format!("{}-{suffix}.md", m.date))
        });
        std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("bench: wrote {}", out.display());
        return Ok(());
    }
    let sim = zero_delay_sim(&layout, &layout.work)?;
    eprintln!("bench: tollgate-sim on {} (pid {})", sim.addr, sim.pid());

    let mut paths = Vec::new();
    let direct = measure_path(&load, &points, warmup, &sim);
    paths.push(PathRun {
        name: "direct".into(),
        detail: "tollgate-sim".into(),
        outcome: direct,
    });

    let mut agents = vec![("tollgate", layout.agent.clone())];
    if let Some(b) = &args.baseline {
        agents.push(("baseline", b.clone()));
    }
    // The agent with each driver, and once more on io_uring with a weighted virtual model.
    let mut variants: Vec<(&str, PathBuf, &str, bool)> = Vec::new();
    for (label, binary) in &agents {
        for driver in agent::DRIVERS {
            variants.push((label, binary.clone(), driver, false));
        }
    }
    variants.push(("tollgate", layout.agent.clone(), "io_uring", true));
    for (label, binary, driver, weighted) in &variants {
        {
            let driver = *driver;
            let name = if *weighted {
                format!("{label} {driver} weighted")
            } else {
                format!("{label} {driver}")
            };
            let started = match &agent_build {
                Ok(()) => agent::start(
                    binary,
                    &layout.work.join(name.replace(' ', "-")),
                    driver,
                    sim.addr,
                    MODEL,
                    *weighted,
                ),
                Err(why) => Err(anyhow::anyhow!("{why}")),
            };
            paths.push(match started {
                Ok(server) => {
                    let outcome = measure_path(&load, &points, warmup, &server);
                    let detail = agent::driver_line(&server.log_text())
                        .unwrap_or_else(|| format!("io.driver: {driver}"));
                    stop(server);
                    PathRun {
                        name,
                        detail,
                        outcome,
                    }
                }
                Err(e) => PathRun {
                    name,
                    detail: format!("io.driver: {driver}"),
                    outcome: Err(format!("{e:#}")),
                },
            });
        }
    }

    let nginx = if args.no_nginx {
        Err("skipped (--no-nginx)".to_string())
    } else {
        nginx::find().ok_or_else(|| "nginx not found on PATH".to_string())
    };
    match &nginx {
        Ok(found) => {
            let outcome = match nginx::start(found, &layout.work.join("nginx"), sim.addr) {
                Ok(server) => {
                    let outcome = measure_path(&load, &points, warmup, &server);
                    stop(server);
                    outcome
                }
                Err(e) => Err(format!("{e:#}")),
            };
            paths.push(PathRun {
                name: "nginx".into(),
                detail: format!("nginx {}", found.version),
                outcome,
            });
        }
        Err(why) => paths.push(PathRun {
            name: "nginx".into(),
            detail: "—".into(),
            outcome: Err(why.clone()),
        }),
    }
    stop(sim);

    let setup = Setup {
        machine: Machine::probe(&layout.root),
        seconds_per_point: seconds,
        warmup_seconds: warmup,
        nginx: nginx.map(|n| format!("nginx {}", n.version)),
        command: reproduce_command(&args),
        load_before,
        load_after: machine::load_average(),
    };
    let markdown = report::render(&setup, &paths, &points);
    let out = args.out.clone().unwrap_or_else(|| {
        layout.root.join("benches/results").join(format!(
            "{}-{}.md",
            setup.machine.date,
            setup.machine.slug()
        ))
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, &markdown).with_context(|| format!("writing {}", out.display()))?;
    println!("{markdown}");
    eprintln!("bench: wrote {}", out.display());
    if paths.first().is_some_and(|p| p.outcome.is_err()) {
        bail!("the direct path failed, so nothing could be compared");
    }
    Ok(())
}

/// The generator sending [`MODEL`] chat requests with its defaults, `seconds` per point.
pub(crate) fn plain_load(layout: &Layout, seconds: f64) -> Load {
    Load {
        binary: layout.bin("tollgate-load"),
        seconds,
        model: MODEL.into(),
        headers: Vec::new(),
        prompt_bytes: None,
    }
}

/// `tollgate-sim --zero-delay` serving [`MODEL`] on a free loopback port, logging into `dir`:
/// the upstream of every bench that measures the agent's own cost.
pub(crate) fn zero_delay_sim(layout: &Layout, dir: &Path) -> anyhow::Result<Server> {
    let mut cmd = Command::new(layout.bin("tollgate-sim"));
    cmd.args(["--listen", "127.0.0.1:0", "--model", MODEL, "--zero-delay"]);
    Server::start_announced("tollgate-sim", cmd, dir)
}

/// Build the simulator and generator (required) and, with `agent`, the agent (optional: while it does not
/// build, its rows say why). Returns the agent build's outcome.
pub(crate) fn build(layout: &Layout, agent: bool) -> anyhow::Result<Result<(), String>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(&layout.root)
        .args([
            "build",
            "--release",
            "-p",
            "tollgate-sim",
            "-p",
            "tollgate-benches",
        ])
        .args([
            "--bin",
            "tollgate-sim",
            "--bin",
            "tollgate-load",
            "--bin",
            "tollgate-agentic",
            "--bin",
            "tollgate-fairness",
            "--bin",
            "tollgate-relay-floor",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building tollgate-sim and tollgate-load failed ({status})");
    }
    if !agent {
        return Ok(Ok(()));
    }
    let status = Command::new(&cargo)
        .current_dir(&layout.root)
        .args(["build", "--release", "-p", "tollgate", "--bin", "tollgate"])
        .status()
        .context("running cargo build")?;
    Ok(if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`cargo build --release -p tollgate` failed ({status})"
        ))
    })
}

/// Idle RSS, a warm-up, then every point against `server`. A failing point is recorded and the rest go on.
fn measure_path(
    load: &Load,
    points: &[Point],
    warmup: f64,
    server: &Server,
) -> Result<Measured, String> {
    let target = server.addr.to_string();
    let rss_idle_kib = procfs::tree_rss_kib(server.pid());
    eprintln!("bench: {} on {target}: warm-up", server.log.display());
    load.warm_up(&target, warmup)
        .map_err(|e| format!("{e:#}"))?;
    let mut measured = Measured {
        rss_idle_kib,
        points: Vec::new(),
    };
    for &point in points {
        let result = load
            .measure(&target, point, server.pid())
            .map_err(|e| format!("{e:#}"));
        match &result {
            Ok(r) => eprintln!(
                "bench:   {:<14} {:>9.0} rps  p50 {:>8.1} µs  p99 {:>8.1} µs  errors {}",
                point.label(),
                r.rps,
                r.latency.map_or(f64::NAN, |t| t.p50),
                r.latency.map_or(f64::NAN, |t| t.p99),
                r.errors
            ),
            Err(e) => eprintln!("bench:   {:<14} failed: {e}", point.label()),
        }
        measured.points.push((point, result));
    }
    Ok(measured)
}

fn stop(server: Server) {
    if let Err(e) = server.stop() {
        eprintln!("bench: {e:#}");
    }
}

fn reproduce_command(args: &Args) -> String {
    let mut cmd = String::from("cargo xtask bench");
    if args.quick {
        cmd.push_str(" --quick");
    }
    if args.no_nginx {
        cmd.push_str(" --no-nginx");
    }
    cmd
}
