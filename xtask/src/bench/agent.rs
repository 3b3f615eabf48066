//! The Tollgate agent as a bench path: one config per I/O driver, in front of the simulator.
//!
//! Why it exists: the point of the bench is the agent's cost (latency added over direct, CPU per request,
//! memory) with each data-plane driver, since DESIGN.md keeps io_uring vs epoll a measured choice. Writes
//! the YAML config into the bench's work directory and starts `tollgate serve`; never edits user configs.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::Context;

use super::process::Server;

/// `io.driver` values the bench compares.
pub const DRIVERS: [&str; 2] = ["io_uring", "epoll"];

/// Agent config with one worker, `driver`, and the simulator as its only provider serving model
/// `model`; `weighted`: the model is a virtual model of two weighted targets (3:1, two provider
/// entries for the same simulator), so the routing policy's draw runs on every request.
pub fn render_config(
    data_dir: &Path,
    driver: &str,
    upstream: SocketAddr,
    model: &str,
    weighted: bool,
) -> String {
    if weighted {
        return format!(
            "# Written by `cargo xtask bench`.
listen: 127.0.0.1:0
data_dir: {data}
workers: 1
auth: {{ mode: open }}
io: {{ driver: {driver} }}
providers:
  - {{name: local-a, kind: openai, base_url: \"http://{upstream}\"}}
  - {{name: local-b, kind: openai, base_url: \"http://{upstream}\"}}
models:
  - name: {model}
    targets:
      - {{provider: local-a, model: {model}, weight: 3}}
      - {{provider: local-b, model: {model}, weight: 1}}
",
            data = data_dir.display(),
        );
    }
    format!(
        "# Written by `cargo xtask bench`.
listen: 127.0.0.1:0
data_dir: {data}
workers: 1
auth: {{ mode: open }}
io: {{ driver: {driver} }}
providers:
  - name: local
    kind: openai
    base_url: http://{upstream}
models:
  - name: {model}
    provider: local
    model: {model}
",
        data = data_dir.display(),
    )
}

/// Start `tollgate serve` with `driver` in `dir` (config, data and log live there).
pub fn start(
    binary: &Path,
    dir: &Path,
    driver: &str,
    upstream: SocketAddr,
    model: &str,
    weighted: bool,
) -> anyhow::Result<Server> {
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let config = dir.join("tollgate.yaml");
    std::fs::write(
        &config,
        render_config(&data_dir, driver, upstream, model, weighted),
    )
    .context("writing the agent config")?;
    let mut cmd = Command::new(binary);
    cmd.arg("serve").arg("--config").arg(&config);
    Server::start_announced(&format!("tollgate-{driver}"), cmd, dir)
}

/// What the agent's log says about the I/O driver, so the report shows what actually ran (the agent falls
/// back to epoll where io_uring is forbidden): `driver=io_uring` from a structured field when there is one,
/// else the first line naming a driver, without its timestamp.
pub fn driver_line(log: &str) -> Option<String> {
    let lines: Vec<String> = log.lines().map(strip_ansi).collect();
    // The structured field first: other lines may mention a driver in passing (e.g. "no NVIDIA driver").
    let line = lines
        .iter()
        .find(|line| line.contains("driver="))
        .or_else(|| {
            lines.iter().find(|line| {
                let lower = line.to_ascii_lowercase();
                lower.contains("io_uring") || lower.contains("epoll")
            })
        })?;
    if let Some((_, rest)) = line.split_once("driver=") {
        let value: String = rest
            .trim_start_matches('"')
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !value.is_empty() {
            return Some(format!("driver={value}"));
        }
    }
    let mut words = line.split_whitespace().peekable();
    // tracing's default format starts with an RFC 3339 timestamp.
    if words
        .peek()
        .is_some_and(|w| w.len() > 18 && w.ends_with('Z') && w.contains('T'))
    {
        words.next();
    }
    Some(
        words
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(120)
            .collect(),
    )
}

/// Remove ANSI colour escapes that tracing may write.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_driver_and_upstream() {
        let yaml = render_config(
            Path::new("/tmp/d"),
            "epoll",
            SocketAddr::from(([127, 0, 0, 1], 9)),
            "smol",
            false,
        );
        assert!(yaml.contains("io: { driver: epoll }"));
        assert!(yaml.contains("base_url: http://127.0.0.1:9"));
        assert!(yaml.contains("data_dir: /tmp/d"));
        assert!(yaml.contains("  - name: smol\n    provider: local\n    model: smol"));
        let weighted = render_config(
            Path::new("/tmp/d"),
            "io_uring",
            SocketAddr::from(([127, 0, 0, 1], 9)),
            "smol",
            true,
        );
        assert!(weighted.contains("{provider: local-b, model: smol, weight: 1}"));
    }

    #[test]
    fn finds_driver_line() {
        let log = "tollgate listening on 127.0.0.1:1\n\u{1b}[32m INFO\u{1b}[0m worker 0: io driver io_uring\n";
        assert_eq!(
            driver_line(log).as_deref(),
            Some("INFO worker 0: io driver io_uring")
        );
        let structured =
            "2026-01-01T00:00:00.000001Z  INFO worker started worker=0 driver=\"epoll\"";
        assert_eq!(driver_line(structured).as_deref(), Some("driver=epoll"));
        let gpu_first =
            "2026-01-01T00:00:00Z  INFO GPU counters are off: no NVIDIA driver on this host\n\
                         2026-01-01T00:00:00Z  INFO worker started worker=0 driver=\"io_uring\"";
        assert_eq!(driver_line(gpu_first).as_deref(), Some("driver=io_uring"));
        let fallback = "2026-01-01T00:00:00.000001Z  WARN io_uring unavailable, using epoll";
        assert_eq!(
            driver_line(fallback).as_deref(),
            Some("WARN io_uring unavailable, using epoll")
        );
        assert_eq!(driver_line("nothing here"), None);
    }
}
