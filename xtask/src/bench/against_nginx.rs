//! `cargo xtask bench --against-nginx`: Tollgate against nginx in alternating windows of the
//! same run, the comparison issue 9 is judged by. The full bench measures its paths one after
//! another, and on a shared VM the same binary has measured 25 and 31 µs of CPU per request
//! minutes apart; windows that alternate put every side under the same drift.
//!
//! The sides, in front of one zero-delay simulator: nginx (one worker, keep-alive upstream,
//! `proxy_buffering off`), Tollgate on io_uring with metering and the ledger (`auth: open`),
//! and the same with governance on (a key, team rate limits, a budget with reservation); with
//! `--baseline`, a fourth side runs that binary open (e.g. the plain release build against
//! `--agent target/pgo/tollgate`). Each point gets `ROUNDS` rounds, the sides forward then
//! reversed: closed loop at 1, 16 and 64 connections, open loop at 2,000 req/s, and a stream
//! at one connection (judged by its time to first byte). Reported: every window, and per side
//! the means with each Tollgate side's ratio to nginx and its per-round differences from
//! nginx's CPU and p50 (the same simulator behind both, so the p50 difference is the
//! difference of what each adds).
//!
//! One more side shows what is physical: `tollgate-relay-floor`, a bare io_uring byte relay
//! with no HTTP in it, the kernel's least for one proxied request. Every side's CPU is split
//! into user space and kernel, so the report shows where Tollgate's difference from nginx lies
//! (ARCHITECTURE.md, "The kernel's floor").

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use super::ab::{self, Means, Side};
use super::measure::{Load, Pacing, Point};
use super::process::Server;
use super::report::{PerRequest, PER_REQUEST_HEADER};
use super::{agent, governance, nginx, Layout, MODEL};

const ROUNDS: usize = 4;

/// The points, in the order they run: the closed-loop, open-loop and streaming figures.
fn points() -> [Point; 5] {
    let plain = |pacing| Point {
        pacing,
        stream: false,
    };
    [
        plain(Pacing::Closed(1)),
        plain(Pacing::Closed(16)),
        plain(Pacing::Closed(64)),
        plain(Pacing::Open(2000)),
        Point {
            pacing: Pacing::Closed(1),
            stream: true,
        },
    ]
}

pub fn run(
    layout: &Layout,
    load: &Load,
    warmup: f64,
    baseline: Option<&Path>,
) -> anyhow::Result<String> {
    let found = nginx::find().context("nginx is not on PATH (apt-get install nginx-light)")?;
    let work = layout.work.join("against-nginx");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let sim = super::zero_delay_sim(layout, &work)?;
    let proxy = nginx::start(&found, &work.join("nginx"), sim.addr)?;
    let floor = {
        let mut cmd = std::process::Command::new(layout.bin("tollgate-relay-floor"));
        cmd.args(["--listen", "127.0.0.1:0", "--mode", "single", "--upstream"])
            .arg(sim.addr.to_string());
        Server::start_announced("tollgate-relay-floor", cmd, &work)?
    };
    let start_open = |binary: &Path, dir: &str| {
        agent::start(binary, &work.join(dir), "io_uring", sim.addr, MODEL, false)
    };
    let open = start_open(&layout.agent, "tollgate")?;
    let base = baseline.map(|b| start_open(b, "baseline")).transpose()?;
    let (governed, key) =
        governance::start_governed(layout, &work.join("governed"), "io_uring", sim.addr)?;
    let keyed = Load {
        headers: vec![format!("Authorization: Bearer {key}")],
        ..load.clone()
    };
    let mut sides = vec![
        Side {
            name: "nginx",
            load,
            target: proxy.addr.to_string(),
            pid: proxy.pid(),
        },
        Side {
            name: "tollgate",
            load,
            target: open.addr.to_string(),
            pid: open.pid(),
        },
    ];
    sides.push(Side {
        name: "kernel floor",
        load,
        target: floor.addr.to_string(),
        pid: floor.pid(),
    });
    if let Some(b) = &base {
        sides.push(Side {
            name: "baseline",
            load,
            target: b.addr.to_string(),
            pid: b.pid(),
        });
    }
    sides.push(Side {
        name: "tollgate governed",
        load: &keyed,
        target: governed.addr.to_string(),
        pid: governed.pid(),
    });
    for side in &sides {
        side.load.warm_up(&side.target, warmup)?;
    }
    let refs: Vec<&Side<'_>> = sides.iter().collect();
    let mut summary = String::from(
        "| point | side | req/s | p50 µs | p99 µs | CPU µs/req | user / kernel | of which ledger writer | req/s ÷ nginx | CPU ÷ nginx | CPU without the ledger ÷ nginx | CPU − nginx per round µs (± s.e.) | p50 − nginx per round µs (± s.e.) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut windows = String::new();
    let mut side_by_side = String::from(PER_REQUEST_HEADER);
    for point in points() {
        let label = point.label();
        eprintln!("bench: against nginx at {label}");
        let (table, means) = ab::windows(&refs, ROUNDS, point)?;
        let _ = write!(windows, "\n### {label}\n\n{table}");
        for (i, (side, m)) in sides.iter().zip(&means).enumerate() {
            // nginx's own row has no difference from itself.
            let paired = (i > 0).then(|| Paired {
                cpu: ab::per_round_difference(&means[0], m),
                p50: ab::per_round_p50_difference(&means[0], m),
            });
            summary.push_str(&summary_row(&label, side.name, m, &means[0], paired));
            side_by_side.push_str(&per_request(m).row(&label, side.name));
        }
    }
    governed.stop()?;
    floor.stop()?;
    if let Some(b) = base {
        b.stop()?;
    }
    open.stop()?;
    proxy.stop()?;
    sim.stop()?;
    Ok(format!(
        "nginx {}; {ROUNDS} rounds per point, sides forward then reversed; 2 KB chat body; \
         `c=N`: closed loop with N connections, `N/s`: open loop, latency from the intended send \
         time; `stream`: p50 and p99 are the time to the first body byte.\n\n{summary}\n\
         ## Per request, side by side\n\n\
         What each side costs the machine per request, the means of its windows: CPU in user \
         space and in the kernel (tick-based), the part of it Tollgate's ledger writer spent \
         (SQLite: the row nginx with `access_log off` does not write), system calls and context \
         switches of the side's process tree (`perf stat` tracepoints; `-` without `perf`), and \
         TCP segments on the host (client, proxy and upstream together). The kernel floor is a \
         bare io_uring byte relay: what any proxy's hop costs the kernel at least.\n\n\
         {side_by_side}\n## Windows\n{windows}",
        found.version
    ))
}

/// A side's means as a row of the side-by-side table.
fn per_request(m: &Means) -> PerRequest {
    let (user_us, kernel_us) = m.user_kernel_us.unzip();
    PerRequest {
        user_us,
        kernel_us,
        ledger_us: m.ledger_us,
        syscalls: m.syscalls_per_req,
        switches: m.cswitches_per_req,
        segments: m.segments_per_req,
    }
}

/// A side's per-round differences from nginx (mean, standard error), where read.
#[derive(Debug, Clone, Copy, Default)]
struct Paired {
    cpu: Option<(f64, f64)>,
    p50: Option<(f64, f64)>,
}

/// One side's row; `paired` is its per-round differences from nginx (none for nginx's row).
fn summary_row(
    point: &str,
    name: &str,
    m: &Means,
    nginx: &Means,
    paired: Option<Paired>,
) -> String {
    let cpu = |c: Option<f64>| c.map_or("-".into(), |c| format!("{c:.1}"));
    let ratio = |a: Option<f64>| match (a, nginx.cpu_us) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    let cpu_ratio = ratio(m.cpu_us);
    // The ledger writer is split from tick-based counts, coarser than the total: a share of it.
    let without_ledger = ratio(m.cpu_us.zip(m.ledger_us).map(|(c, l)| c - l));
    let rps_ratio = if nginx.rps > 0.0 {
        format!("{:.2}", m.rps / nginx.rps)
    } else {
        "-".into()
    };
    let difference = |d: Option<(f64, f64)>| {
        d.map_or("-".into(), |(mean, se)| format!("{mean:+.1} (± {se:.1})"))
    };
    let paired = paired.unwrap_or_default();
    let split = m
        .user_kernel_us
        .map_or("-".into(), |(u, k)| format!("{u:.1} / {k:.1}"));
    format!(
        "| {point} | {name} | {:.0} | {:.0} | {:.0} | {} | {split} | {} | {rps_ratio} | {cpu_ratio} | {without_ledger} | {} | {} |\n",
        m.rps,
        m.p50,
        m.p99,
        cpu(m.cpu_us),
        cpu(m.ledger_us),
        difference(paired.cpu),
        difference(paired.p50),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_shows_the_ledger_writer_and_the_ratio_without_it() {
        let nginx = Means {
            rps: 40_000.0,
            cpu_us: Some(20.0),
            ledger_us: Some(0.0),
            ..Means::default()
        };
        let tollgate = Means {
            rps: 36_000.0,
            cpu_us: Some(25.0),
            ledger_us: Some(3.0),
            user_kernel_us: Some((7.25, 17.5)),
            ..Means::default()
        };
        let paired = Paired {
            cpu: Some((5.0, 1.0)),
            p50: Some((-12.25, 3.0)),
        };
        let row = summary_row("c=64", "tollgate", &tollgate, &nginx, Some(paired));
        let cells: Vec<&str> = row
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(
            cells,
            [
                "c=64",
                "tollgate",
                "36000",
                "0",
                "0",
                "25.0",
                "7.2 / 17.5",
                "3.0",
                "0.90",
                "1.25",
                "1.10",
                "+5.0 (± 1.0)",
                "-12.2 (± 3.0)"
            ]
        );
        // Unread ledger figures leave the cells empty rather than guessing.
        let unread = Means {
            ledger_us: None,
            user_kernel_us: None,
            ..tollgate
        };
        let row = summary_row("c=64", "tollgate", &unread, &nginx, None);
        assert!(
            row.contains("| 25.0 | - | - | 0.90 | 1.25 | - | - | - |"),
            "{row}"
        );
    }

    #[test]
    fn the_side_by_side_row_shows_syscalls_switches_and_segments_and_dashes_what_is_unread() {
        let m = Means {
            user_kernel_us: Some((7.25, 17.5)),
            ledger_us: Some(2.75),
            syscalls_per_req: Some(0.823),
            cswitches_per_req: Some(0.0789),
            segments_per_req: Some(4.04),
            ..Means::default()
        };
        let row = per_request(&m).row("c=16", "tollgate");
        assert_eq!(
            row,
            "| c=16 | tollgate | 7.2 | 17.5 | 2.8 | 0.82 | 0.08 | 4.0 |\n"
        );
        // nginx without perf: no split, no counts.
        let bare = per_request(&Means::default()).row("c=1", "nginx");
        assert_eq!(bare, "| c=1 | nginx | - | - | - | - | - | - |\n");
        assert_eq!(
            PER_REQUEST_HEADER
                .lines()
                .next()
                .map(|l| l.matches('|').count()),
            row.lines().next().map(|l| l.matches('|').count()),
            "the header and the rows have as many cells"
        );
    }
}
