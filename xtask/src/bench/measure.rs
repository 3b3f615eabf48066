//! The load points every path is measured at, and one measurement: run `tollgate-load` against a target
//! while reading the server's CPU and memory from /proc.
//!
//! Why it exists: every path must see exactly the same points in the same order so that "added latency" is
//! a like-for-like subtraction. CPU per request is the server tree's schedstat delta over the generator's
//! whole run divided by the requests it sent; RSS under load is the peak of 100 ms samples. Syscalls and
//! context switches per request come from `perf stat` on the server tree's tracepoints
//! (`raw_syscalls:sys_enter`, `context-switches`) over the same run, when `perf` is installed.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use super::procfs;

/// Output length asked of the simulator, in tokens (small: the bench measures the gateway, not generation).
pub const MAX_TOKENS: u32 = 16;
/// Connections used by the open-loop points.
const OPEN_LOOP_CONNECTIONS: usize = 64;

/// How a point loads the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// Closed loop with this many connections.
    Closed(usize),
    /// Open loop at this many requests per second.
    Open(u32),
}

/// One load point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub pacing: Pacing,
    /// `stream: true` (SSE) instead of a JSON response.
    pub stream: bool,
}

impl Point {
    /// Short label for tables: `c=64`, `5000/s`, `stream c=1`.
    pub fn label(&self) -> String {
        let base = match self.pacing {
            Pacing::Closed(c) => format!("c={c}"),
            Pacing::Open(rate) => format!("{rate}/s"),
        };
        if self.stream {
            format!("stream {base}")
        } else {
            base
        }
    }
}

/// The bench's points, in the order they run.
pub fn points() -> Vec<Point> {
    let plain = |pacing| Point {
        pacing,
        stream: false,
    };
    let stream = |pacing| Point {
        pacing,
        stream: true,
    };
    vec![
        plain(Pacing::Closed(1)),
        plain(Pacing::Closed(64)),
        plain(Pacing::Open(1000)),
        plain(Pacing::Open(2000)),
        plain(Pacing::Open(5000)),
        plain(Pacing::Open(10_000)),
        stream(Pacing::Closed(1)),
        stream(Pacing::Closed(64)),
    ]
}

/// Percentiles of one histogram, in µs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Timing {
    fn from_json(value: &Value) -> Option<Self> {
        let get = |key: &str| value.get(key).and_then(Value::as_f64);
        Some(Self {
            p50: get("p50")?,
            p99: get("p99")?,
            p999: get("p999")?,
            max: get("max")?,
        })
    }
}

/// What one point measured.
#[derive(Debug, Clone, Default)]
pub struct PointResult {
    /// Completed responses per second.
    pub rps: f64,
    /// To last byte, 2xx only; `None` if nothing succeeded.
    pub latency: Option<Timing>,
    /// To first body byte.
    pub ttft: Option<Timing>,
    /// Failed requests of every kind (status, I/O, unfinished).
    pub errors: u64,
    /// Server tree CPU per request sent, in µs.
    pub server_cpu_us: Option<f64>,
    /// Open loop: p99 of how late the generator sent, in µs.
    pub send_lag_p99: Option<f64>,
    /// The generator's own CPU per request, in µs.
    pub generator_cpu_us: Option<f64>,
    /// Peak resident memory of the server tree during the point, in KiB.
    pub rss_peak_kib: Option<u64>,
    /// System calls the server tree made per request sent (`perf stat`, when available).
    pub syscalls_per_req: Option<f64>,
    /// Context switches of the server tree per request sent.
    pub cswitches_per_req: Option<f64>,
    /// The server tree's CPU per request sent in user space and in the kernel, and the part of
    /// both spent by tollgate's ledger writer, in µs (tick-based `stat`, coarser than
    /// `server_cpu_us`).
    pub cpu_split_us: Option<(f64, f64, f64)>,
    /// TCP segments sent on the host per request sent (client, server and upstream together).
    pub segments_per_req: Option<f64>,
}

/// Runs the generator.
#[derive(Debug, Clone)]
pub struct Load {
    pub binary: PathBuf,
    /// Measured seconds per point.
    pub seconds: f64,
    /// Model name in requests.
    pub model: String,
    /// Extra request headers (`Name: value`), e.g. a virtual key.
    pub headers: Vec<String>,
    /// Prompt size in bytes (the generator's default when `None`).
    pub prompt_bytes: Option<usize>,
}

impl Load {
    /// Apply load without recording anything (connection pools, caches, page faults).
    pub fn warm_up(&self, target: &str, seconds: f64) -> anyhow::Result<()> {
        let mut cmd = self.command(
            target,
            Point {
                pacing: Pacing::Closed(64),
                stream: false,
            },
            seconds,
        );
        let out = cmd
            .stderr(Stdio::inherit())
            .output()
            .context("running tollgate-load")?;
        if !out.status.success() {
            bail!("warm-up failed ({})", out.status);
        }
        Ok(())
    }

    /// Measure one point against `target`, charging CPU and memory to the process tree under `server_pid`.
    pub fn measure(
        &self,
        target: &str,
        point: Point,
        server_pid: u32,
    ) -> anyhow::Result<PointResult> {
        let cpu_before = procfs::tree_cpu_ns(server_pid);
        let split_before = procfs::tree_cpu_split(server_pid);
        let segments_before = procfs::tcp_out_segments();
        let counting = PerfCount::start(server_pid);
        let mut child = self
            .command(target, point, self.seconds)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tollgate-load")?;
        let mut rss_peak = procfs::tree_rss_kib(server_pid);
        while child
            .try_wait()
            .context("waiting on tollgate-load")?
            .is_none()
        {
            thread::sleep(Duration::from_millis(100));
            if let Some(rss) = procfs::tree_rss_kib(server_pid) {
                rss_peak = Some(rss_peak.map_or(rss, |peak| peak.max(rss)));
            }
        }
        let cpu_after = procfs::tree_cpu_ns(server_pid);
        let split_after = procfs::tree_cpu_split(server_pid);
        let segments_after = procfs::tcp_out_segments();
        let counted = counting.and_then(PerfCount::finish);
        let out = child
            .wait_with_output()
            .context("collecting tollgate-load output")?;
        if !out.status.success() {
            bail!(
                "tollgate-load failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let json: Value =
            serde_json::from_slice(&out.stdout).context("parsing tollgate-load JSON")?;
        let mut result = parse_report(&json)?;
        let sent = json.get("sent").and_then(Value::as_u64).unwrap_or(0);
        if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
            if sent > 0 {
                result.server_cpu_us =
                    Some(after.saturating_sub(before) as f64 / 1000.0 / sent as f64);
            }
        }
        result.rss_peak_kib = rss_peak;
        if sent > 0 {
            if let (Some(before), Some(after)) = (split_before, split_after) {
                result.cpu_split_us = Some(after.per_request_us(&before, sent));
            }
            if let (Some(before), Some(after)) = (segments_before, segments_after) {
                result.segments_per_req = Some(after.saturating_sub(before) as f64 / sent as f64);
            }
        }
        if let (Some((syscalls, switches)), true) = (counted, sent > 0) {
            result.syscalls_per_req = Some(syscalls as f64 / sent as f64);
            result.cswitches_per_req = Some(switches as f64 / sent as f64);
        }
        Ok(result)
    }

    fn command(&self, target: &str, point: Point, seconds: f64) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(["--target", target, "--model", &self.model])
            .args(["--duration", &seconds.to_string(), "--drain", "3"])
            .args(["--max-tokens", &MAX_TOKENS.to_string()]);
        match point.pacing {
            Pacing::Closed(c) => cmd.args(["--connections", &c.to_string()]),
            Pacing::Open(rate) => cmd.args([
                "--connections",
                &OPEN_LOOP_CONNECTIONS.to_string(),
                "--rate",
                &rate.to_string(),
            ]),
        };
        if point.stream {
            cmd.arg("--stream");
        }
        for h in &self.headers {
            cmd.args(["--header", h]);
        }
        if let Some(n) = self.prompt_bytes {
            cmd.args(["--prompt-bytes", &n.to_string()]);
        }
        cmd.stdin(Stdio::null());
        cmd
    }
}

/// `perf stat` counting the server tree's syscalls and context switches (tracepoints: they
/// work where hardware counters do not, as in most VMs).
struct PerfCount(std::process::Child);

impl PerfCount {
    fn start(server_pid: u32) -> Option<PerfCount> {
        let pids: Vec<String> = procfs::process_tree(server_pid)
            .iter()
            .map(u32::to_string)
            .collect();
        let child = Command::new("perf")
            .args([
                "stat",
                "-x",
                ",",
                "-e",
                "raw_syscalls:sys_enter,context-switches",
                "-p",
            ])
            .arg(pids.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        // perf needs a moment to attach before the load starts.
        thread::sleep(Duration::from_millis(200));
        Some(PerfCount(child))
    }

    /// Stops counting; (syscalls, context switches).
    fn finish(self) -> Option<(u64, u64)> {
        // SAFETY: kill(2) with SIGINT on our own child, which is still ours until waited.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGINT) };
        let out = self.0.wait_with_output().ok()?;
        parse_perf_stat(&String::from_utf8_lossy(&out.stderr))
    }
}

/// `perf stat -x ,` output: `COUNT,UNIT,EVENT,...` per event.
pub fn parse_perf_stat(text: &str) -> Option<(u64, u64)> {
    let count = |event: &str| {
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.len() > 2 && f[2].starts_with(event)).then(|| f[0].trim().parse::<u64>().ok())?
        })
    };
    Some((count("raw_syscalls:sys_enter")?, count("context-switches")?))
}

/// The fields the bench uses from `tollgate-load`'s JSON.
pub fn parse_report(json: &Value) -> anyhow::Result<PointResult> {
    let errors = json.get("errors").context("no errors object")?;
    let count = |key: &str| errors.get(key).and_then(Value::as_u64).unwrap_or(0);
    Ok(PointResult {
        rps: json.get("rps").and_then(Value::as_f64).context("no rps")?,
        latency: json.get("latency_us").and_then(Timing::from_json),
        ttft: json.get("ttft_us").and_then(Timing::from_json),
        errors: count("status") + count("io") + count("unfinished"),
        send_lag_p99: json
            .get("send_lag_us")
            .and_then(|v| v.get("p99"))
            .and_then(Value::as_f64),
        generator_cpu_us: json.get("generator_cpu_us_per_req").and_then(Value::as_f64),
        ..PointResult::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let labels: Vec<String> = points().iter().map(Point::label).collect();
        assert_eq!(labels[0], "c=1");
        assert!(labels.contains(&"10000/s".to_string()));
        assert!(labels.contains(&"stream c=1".to_string()));
    }

    #[test]
    fn parses_perf_stat() {
        let text = "1234567,,raw_syscalls:sys_enter,5000123,100.00,,\n89012,,context-switches,5000123,100.00,,\n";
        assert_eq!(parse_perf_stat(text), Some((1_234_567, 89_012)));
        assert_eq!(
            parse_perf_stat("<not supported>,,context-switches,0,100.00,,\n"),
            None
        );
    }

    #[test]
    fn parses_generator_json() {
        let json: Value = serde_json::from_str(
            r#"{"rps": 1000.5, "sent": 10,
                "errors": {"status": 1, "io": 2, "connect": 5, "unfinished": 3},
                "latency_us": {"p50": 10.0, "p99": 20.0, "p999": 30.0, "max": 40.0},
                "ttft_us": null, "send_lag_us": {"p50": 1.0, "p99": 2.5, "p999": 3.0, "max": 4.0},
                "generator_cpu_us_per_req": 5.5}"#,
        )
        .expect("valid JSON");
        let r = parse_report(&json).expect("complete report");
        assert_eq!(r.rps, 1000.5);
        assert_eq!(r.errors, 6);
        assert_eq!(
            r.latency,
            Some(Timing {
                p50: 10.0,
                p99: 20.0,
                p999: 30.0,
                max: 40.0
            })
        );
        assert_eq!(r.ttft, None);
        assert_eq!(r.send_lag_p99, Some(2.5));
        assert_eq!(r.generator_cpu_us, Some(5.5));
    }
}
