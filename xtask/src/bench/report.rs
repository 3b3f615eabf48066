//! Renders a bench run as the markdown written to `benches/results/` and printed.
//!
//! Why it exists: the numbers are only useful next to the machine they came from and to the direct run
//! they are compared with. This module owns the layout: a header naming machine and method, a summary per
//! path, then per-point latency and streaming tables with "added" columns (path minus direct at the same
//! percentile and point). Pure formatting: no I/O.

use std::fmt::Write;

use super::machine::Machine;
use super::measure::{Pacing, Point, PointResult, Timing};

/// One path's results.
#[derive(Debug)]
pub struct PathRun {
    /// `direct`, `tollgate io_uring`, `tollgate epoll`, `nginx`.
    pub name: String,
    /// What ran: simulator command, the agent's driver log line, nginx version.
    pub detail: String,
    /// Results, or why the path was not measured.
    pub outcome: Result<Measured, String>,
}

/// Results of a path that ran.
#[derive(Debug, Default)]
pub struct Measured {
    /// Resident memory of the server tree before any load, in KiB.
    pub rss_idle_kib: Option<u64>,
    pub points: Vec<(Point, Result<PointResult, String>)>,
}

impl Measured {
    fn at(&self, point: Point) -> Option<&PointResult> {
        self.points
            .iter()
            .find(|(p, _)| *p == point)
            .and_then(|(_, r)| r.as_ref().ok())
    }

    /// Peak RSS over all points, in KiB.
    fn rss_load_kib(&self) -> Option<u64> {
        self.points
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok()?.rss_peak_kib)
            .max()
    }
}

/// How the run was set up, for the header.
#[derive(Debug)]
pub struct Setup {
    pub machine: Machine,
    pub seconds_per_point: f64,
    pub warmup_seconds: f64,
    /// nginx version, or why it did not run.
    pub nginx: Result<String, String>,
    /// The command line that reproduces this run.
    pub command: String,
    /// Load averages (1/5/15 min) before and after the run.
    pub load_before: Option<String>,
    pub load_after: Option<String>,
}

const C1: Point = Point {
    pacing: Pacing::Closed(1),
    stream: false,
};
const C64: Point = Point {
    pacing: Pacing::Closed(64),
    stream: false,
};
const OPEN_5K: Point = Point {
    pacing: Pacing::Open(5000),
    stream: false,
};
const STREAM_C1: Point = Point {
    pacing: Pacing::Closed(1),
    stream: true,
};

/// The whole markdown document.
pub fn render(setup: &Setup, paths: &[PathRun], points: &[Point]) -> String {
    let mut md = String::new();
    let m = &setup.machine;
    let _ = writeln!(
        md,
        "# Tollgate end-to-end bench: {}, {}\n",
        m.date, m.hostname
    );
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(
        md,
        "| Machine | {} vCPU, {}, kernel {}, host `{}` |",
        m.nproc, m.cpu_model, m.kernel, m.hostname
    );
    let _ = writeln!(md, "| Commit | `{}` |", m.commit);
    let _ = writeln!(
        md,
        "| Run | {} s per point, {} s warm-up per path, all processes on loopback on this machine |",
        setup.seconds_per_point, setup.warmup_seconds
    );
    let _ = writeln!(
        md,
        "| Load average | {} before, {} after (1/5/15 min; other work on the machine skews the numbers) |",
        setup.load_before.as_deref().unwrap_or("n/a"),
        setup.load_after.as_deref().unwrap_or("n/a"),
    );
    let _ = writeln!(
        md,
        "| Upstream | `tollgate-sim --zero-delay` (1 worker), model `smol`, `max_tokens` {} |",
        super::measure::MAX_TOKENS
    );
    let generator_cpu = direct(paths)
        .and_then(|d| d.at(C64))
        .and_then(|r| r.generator_cpu_us)
        .map_or(String::new(), |v| {
            format!("; its own CPU: {v:.1} µs/req at c=64 direct")
        });
    let _ = writeln!(
        md,
        "| Generator | `tollgate-load`: 1 thread, epoll, keep-alive, pre-built requests; open loop measures from \
         the intended send time{generator_cpu} |"
    );
    match &setup.nginx {
        Ok(version) => {
            let _ = writeln!(
                md,
                "| nginx | {version}: 1 worker, keep-alive upstream, `proxy_buffering off` |"
            );
        }
        Err(why) => {
            let _ = writeln!(md, "| nginx | not measured: {why} |");
        }
    }
    let _ = writeln!(md, "| Reproduce | `{}` |\n", setup.command);

    render_summary(&mut md, paths);
    render_latency(&mut md, paths, points);
    render_streaming(&mut md, paths, points);
    render_syscalls(&mut md, paths, points);
    render_notes(&mut md);
    md
}

fn direct(paths: &[PathRun]) -> Option<&Measured> {
    paths.first().and_then(|p| p.outcome.as_ref().ok())
}

fn render_summary(md: &mut String, paths: &[PathRun]) {
    let base = direct(paths);
    let _ = writeln!(md, "## Summary\n");
    let _ = writeln!(
        md,
        "| path | what ran | max rps (c=64) | server CPU µs/req (c=64) | RSS idle / load MiB | +p50 c=1 µs | \
         +p99 c=1 µs | +p99 @5000/s µs | +TTFT p50 stream c=1 µs |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (i, path) in paths.iter().enumerate() {
        let measured = match &path.outcome {
            Ok(measured) => measured,
            Err(why) => {
                let _ = writeln!(
                    md,
                    "| {} | {} | not measured: {} | | | | | | |",
                    path.name,
                    path.detail,
                    cell(why)
                );
                continue;
            }
        };
        let c64 = measured.at(C64);
        let added =
            |point: Point, pick: fn(&PointResult) -> Option<Timing>, q: fn(&Timing) -> f64| {
                if i == 0 {
                    return "—".to_string();
                }
                let mine = measured.at(point).and_then(pick);
                let theirs = base.and_then(|b| b.at(point)).and_then(pick);
                match (mine, theirs) {
                    (Some(a), Some(b)) => signed(q(&a) - q(&b)),
                    _ => "n/a".into(),
                }
            };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} / {} | {} | {} | {} | {} |",
            path.name,
            path.detail,
            c64.map_or("n/a".into(), |r| format!("{:.0}", r.rps)),
            c64.and_then(|r| r.server_cpu_us)
                .map_or("n/a".into(), |v| format!("{v:.1}")),
            mib(measured.rss_idle_kib),
            mib(measured.rss_load_kib()),
            added(C1, |r| r.latency, |t| t.p50),
            added(C1, |r| r.latency, |t| t.p99),
            added(OPEN_5K, |r| r.latency, |t| t.p99),
            added(STREAM_C1, |r| r.ttft, |t| t.p50),
        );
    }
    md.push('\n');
}

fn render_latency(md: &mut String, paths: &[PathRun], points: &[Point]) {
    let _ = writeln!(
        md,
        "## Latency to last byte (µs) and added over direct at the same point\n"
    );
    let _ = writeln!(
        md,
        "| point | path | rps | p50 | p99 | p99.9 | max | +p50 | +p99 | +p99.9 | errors | server CPU µs/req | \
         gen lag p99 µs |"
    );
    let _ = writeln!(
        md,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for &point in points.iter().filter(|p| !p.stream) {
        point_rows(
            md,
            paths,
            point,
            |r| r.latency,
            |md, r, t, added| {
                let _ = write!(
                    md,
                    "{:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.rps,
                    us(t.map(|t| t.p50)),
                    us(t.map(|t| t.p99)),
                    us(t.map(|t| t.p999)),
                    us(t.map(|t| t.max)),
                    added[0],
                    added[1],
                    added[2],
                    r.errors,
                    r.server_cpu_us.map_or("n/a".into(), |v| format!("{v:.1}")),
                    r.send_lag_p99.map_or("—".into(), |v| us(Some(v))),
                );
            },
        );
    }
    md.push('\n');
}

/// What each path asks of the machine per request, side by side (issue 9: where a figure cannot
/// reach nginx's for a physical reason, show it): CPU in user space and in the kernel (and
/// tollgate's ledger writer's part), system calls, context switches, and TCP segments.
fn render_syscalls(md: &mut String, paths: &[PathRun], points: &[Point]) {
    let _ = writeln!(
        md,
        "## Per request, side by side: CPU split, syscalls, context switches, TCP segments\n\n\
         Server process tree. User and kernel CPU from `/proc/*/task/*/stat` (clock ticks); \
         *ledger* is the part of both spent by tollgate's ledger writer (SQLite commits, \
         enrichment, rollups), work nginx does not do. Syscalls and context switches from \
         `perf stat` tracepoints. Segments: TCP segments sent on the host per request (client, \
         server and upstream together: 2 direct, 4 through any proxy at best).\n"
    );
    md.push_str(PER_REQUEST_HEADER);
    for &point in points {
        for path in paths {
            let Ok(measured) = &path.outcome else {
                continue;
            };
            let Some(r) = measured.at(point) else {
                continue;
            };
            md.push_str(&PerRequest::of(r).row(&point.label(), &path.name));
        }
    }
    md.push('\n');
}

/// What a request costs one side, in the side-by-side tables of `cargo xtask bench` and
/// `--against-nginx`: CPU in user space and in the kernel, the ledger writer's part of both (µs),
/// syscalls, context switches and TCP segments; `None` where unread.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PerRequest {
    pub user_us: Option<f64>,
    pub kernel_us: Option<f64>,
    pub ledger_us: Option<f64>,
    pub syscalls: Option<f64>,
    pub switches: Option<f64>,
    pub segments: Option<f64>,
}

/// The side-by-side table's header, for [`PerRequest::row`].
pub const PER_REQUEST_HEADER: &str = "| point | side | user µs | kernel µs | of which ledger writer µs | syscalls | context switches | TCP segments |\n\
     |---|---|---:|---:|---:|---:|---:|---:|\n";

impl PerRequest {
    /// One window's figures.
    pub fn of(r: &PointResult) -> PerRequest {
        let split = |i: usize| r.cpu_split_us.map(|s| [s.0, s.1, s.2][i]);
        PerRequest {
            user_us: split(0),
            kernel_us: split(1),
            ledger_us: split(2),
            syscalls: r.syscalls_per_req,
            switches: r.cswitches_per_req,
            segments: r.segments_per_req,
        }
    }

    /// The table row for `side` at `point`; `-` for what is unread.
    pub fn row(&self, point: &str, side: &str) -> String {
        let num = |v: Option<f64>, places: usize| v.map_or("-".into(), |v| format!("{v:.places$}"));
        format!(
            "| {point} | {side} | {} | {} | {} | {} | {} | {} |\n",
            num(self.user_us, 1),
            num(self.kernel_us, 1),
            num(self.ledger_us, 1),
            num(self.syscalls, 2),
            num(self.switches, 2),
            num(self.segments, 1),
        )
    }
}

fn render_streaming(md: &mut String, paths: &[PathRun], points: &[Point]) {
    let _ = writeln!(
        md,
        "## Streaming (µs): TTFT = first body byte of the SSE response\n"
    );
    let _ = writeln!(
        md,
        "| point | path | rps | TTFT p50 | TTFT p99 | TTFT p99.9 | total p50 | total p99 | +TTFT p50 | +TTFT p99 | \
         +TTFT p99.9 | errors | server CPU µs/req |"
    );
    let _ = writeln!(
        md,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for &point in points.iter().filter(|p| p.stream) {
        point_rows(
            md,
            paths,
            point,
            |r| r.ttft,
            |md, r, t, added| {
                let _ = write!(
                    md,
                    "{:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.rps,
                    us(t.map(|t| t.p50)),
                    us(t.map(|t| t.p99)),
                    us(t.map(|t| t.p999)),
                    us(r.latency.map(|t| t.p50)),
                    us(r.latency.map(|t| t.p99)),
                    added[0],
                    added[1],
                    added[2],
                    r.errors,
                    r.server_cpu_us.map_or("n/a".into(), |v| format!("{v:.1}")),
                );
            },
        );
    }
    md.push('\n');
}

/// One row per path at `point`: `cells` writes the cells after "point | path |", given the result, the
/// chosen timing and the three added-latency cells (p50, p99, p99.9).
fn point_rows(
    md: &mut String,
    paths: &[PathRun],
    point: Point,
    pick: fn(&PointResult) -> Option<Timing>,
    cells: impl Fn(&mut String, &PointResult, Option<Timing>, [String; 3]),
) {
    let base = direct(paths).and_then(|b| b.at(point)).and_then(pick);
    for (i, path) in paths.iter().enumerate() {
        let result = match &path.outcome {
            Ok(measured) => measured
                .points
                .iter()
                .find(|(p, _)| *p == point)
                .map(|(_, r)| r),
            Err(_) => continue,
        };
        let _ = write!(md, "| {} | {} | ", point.label(), path.name);
        match result {
            Some(Ok(r)) => {
                let mine = pick(r);
                let added = match (i, mine, base) {
                    (0, _, _) => ["—".to_string(), "—".to_string(), "—".to_string()],
                    (_, Some(a), Some(b)) => [
                        signed(a.p50 - b.p50),
                        signed(a.p99 - b.p99),
                        signed(a.p999 - b.p999),
                    ],
                    _ => ["n/a".to_string(), "n/a".to_string(), "n/a".to_string()],
                };
                cells(md, r, mine, added);
            }
            Some(Err(why)) => {
                let _ = write!(md, "failed: {} | | | | | | | | | | |", cell(why));
            }
            None => {
                let _ = write!(md, "not run | | | | | | | | | | |");
            }
        }
        md.push('\n');
    }
}

fn render_notes(md: &mut String) {
    md.push_str(
        "## How to read this\n\n\
         - **added** = path minus direct at the same percentile and point, measured in the same run. Negative \
         values are noise.\n\
         - **server CPU µs/req**: CPU time of the server's process tree (first field of \
         `/proc/PID/task/*/schedstat`, all threads and child processes) over the generator's run, divided by the \
         requests sent. The direct row's server is the simulator; proxy rows count the proxy only, not the \
         simulator behind it.\n\
         - **RSS**: `VmRSS` of the server tree; idle = before any load, load = peak of 100 ms samples over all \
         points.\n\
         - **Open loop** (`N/s`): requests are due every 1/N s over 64 keep-alive connections and latency counts \
         from the due time, so queueing is included (no coordinated omission). **gen lag p99** is how late the \
         generator itself sent (timer wake-up on this machine); it is part of every path's latency and cancels \
         in the added columns.\n\
         - **c=N**: closed loop with N connections; `c=64` rps is the maximum throughput of the path here.\n\
         - On a small VM the generator, the proxy and the simulator share the same cores, so rps mostly measures \
         the machine; compare CPU per request and added latency instead.\n",
    );
}

fn us(value: Option<f64>) -> String {
    match value {
        None => "n/a".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

fn signed(value: f64) -> String {
    let text = us(Some(value.abs()));
    if value < 0.0 {
        format!("−{text}")
    } else {
        format!("+{text}")
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

/// Make free text safe inside a table cell.
fn cell(text: &str) -> String {
    text.replace('|', "/").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(p50: f64, p99: f64) -> PointResult {
        let t = Timing {
            p50,
            p99,
            p999: p99 * 2.0,
            max: p99 * 3.0,
        };
        PointResult {
            rps: 1000.0,
            latency: Some(t),
            ttft: Some(t),
            server_cpu_us: Some(5.0),
            ..Default::default()
        }
    }

    fn machine() -> Machine {
        Machine {
            hostname: "box".into(),
            nproc: 2,
            cpu_model: "Test CPU".into(),
            kernel: "6.1".into(),
            date: "2024-01-01".into(),
            commit: "abc".into(),
        }
    }

    #[test]
    fn added_latency_is_path_minus_direct() {
        let points = vec![C1, C64];
        let direct = Measured {
            rss_idle_kib: Some(2048),
            points: vec![(C1, Ok(result(50.0, 90.0)))],
        };
        let proxy = Measured {
            rss_idle_kib: Some(4096),
            points: vec![(C1, Ok(result(80.0, 85.0)))],
        };
        let paths = vec![
            PathRun {
                name: "direct".into(),
                detail: "sim".into(),
                outcome: Ok(direct),
            },
            PathRun {
                name: "proxy".into(),
                detail: "x".into(),
                outcome: Ok(proxy),
            },
            PathRun {
                name: "nginx".into(),
                detail: "-".into(),
                outcome: Err("not on PATH".into()),
            },
        ];
        let setup = Setup {
            machine: machine(),
            seconds_per_point: 5.0,
            warmup_seconds: 1.0,
            nginx: Err("not found on PATH".into()),
            command: "cargo xtask bench".into(),
            load_before: Some("0.01 0.02 0.03".into()),
            load_after: None,
        };
        let md = render(&setup, &paths, &points);
        assert!(md.contains("2 vCPU, Test CPU, kernel 6.1"), "{md}");
        assert!(md.contains("| c=1 | proxy | 1000 | 80.0 | 85.0 | 170 | 255 | +30.0 | −5.0 | −10.0 | 0 | 5.0 | — |"), "{md}");
        assert!(
            md.contains("| proxy | x | n/a | n/a | 4.0 / n/a | +30.0 | −5.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| nginx | - | not measured: not on PATH |"),
            "{md}"
        );
        assert!(md.contains("| c=64 | direct | not run |"), "{md}");
    }

    #[test]
    fn a_window_reads_into_the_side_by_side_row_column_by_column() {
        let r = PointResult {
            cpu_split_us: Some((6.25, 17.5, 2.5)),
            syscalls_per_req: Some(0.75),
            cswitches_per_req: Some(0.25),
            segments_per_req: Some(4.0),
            ..PointResult::default()
        };
        assert_eq!(
            PerRequest::of(&r).row("c=16", "tollgate"),
            "| c=16 | tollgate | 6.2 | 17.5 | 2.5 | 0.75 | 0.25 | 4.0 |\n"
        );
    }

    #[test]
    fn number_formats() {
        assert_eq!(us(Some(12.34)), "12.3");
        assert_eq!(us(Some(1234.4)), "1234");
        assert_eq!(signed(-3.0), "−3.0");
        assert_eq!(mib(Some(1536)), "1.5");
    }
}
