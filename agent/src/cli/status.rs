//! `tollgate status --addr HOST:PORT`: GETs a running agent's `/readyz` and prints it for
//! people: readiness, workers and I/O driver, and which kernel features are active and why the
//! others are not. Not on any hot path; a plain blocking HTTP/1.1 GET with a timeout.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(addr: &str, json: bool) -> anyhow::Result<()> {
    let (status, body) = get(addr, "/readyz")?;
    let v: Value = serde_json::from_slice(&body)
        .with_context(|| format!("{addr}/readyz did not answer JSON (status {status})"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render(addr, status, &v));
    }
    Ok(())
}

/// A blocking GET of `path` with `Connection: close`; returns the status and the body.
pub fn get(addr: &str, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let sock = addr
        .to_socket_addrs()
        .with_context(|| format!("`{addr}` is not HOST:PORT"))?
        .next()
        .with_context(|| format!("`{addr}` resolves to no address"))?;
    let mut s = TcpStream::connect_timeout(&sock, TIMEOUT)
        .with_context(|| format!("connecting to the agent at {addr} (is it running?)"))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\naccept: application/json\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading the answer from {addr}"))?;
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("{addr} sent no complete HTTP response");
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("{addr} sent a bad status line: {head}"))?;
    let mut body = raw[end + 4..].to_vec();
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    if chunked {
        body = dechunk(&body).with_context(|| format!("{addr} sent a bad chunked body"))?;
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// The human-readable report.
pub fn render(addr: &str, http_status: u16, v: &Value) -> String {
    let mut out = String::new();
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let _ = writeln!(
        out,
        "tollgate at {addr}: {} (HTTP {http_status})",
        s(&v["status"])
    );
    let _ = writeln!(
        out,
        "  workers   {} ({})",
        s(&v["workers"]),
        s(&v["io_driver"])
    );
    let _ = writeln!(out, "  models    {}", s(&v["models"]));
    let k = &v["kernel"];
    if let Some(summary) = k.as_str() {
        // An agent from before kernel features were reported as an object.
        let _ = writeln!(out, "  kernel    {summary}");
        return out;
    }
    let loaded = if k["loaded"].as_bool() == Some(true) {
        format!("loaded, maps pinned under {}", s(&k["pin_dir"]))
    } else {
        "not loaded".to_string()
    };
    let _ = writeln!(
        out,
        "  kernel    {loaded} (kernel.enabled: {})",
        s(&k["enabled"])
    );
    if let Some(features) = k["features"].as_object() {
        for (name, f) in features {
            let state = if f["active"].as_bool() == Some(true) {
                "active".to_string()
            } else {
                format!("off: {}", s(&f["reason"]))
            };
            let _ = writeln!(out, "    {name:<16} {state}");
        }
    }
    if let Some(list) = k["intercept"].as_array().filter(|l| !l.is_empty()) {
        let list: Vec<String> = list.iter().map(s).collect();
        let _ = writeln!(out, "  intercept {}", list.join(", "));
    }
    if let Some(progs) = k["programs"].as_array().filter(|l| !l.is_empty()) {
        let list: Vec<String> = progs
            .iter()
            .map(|p| format!("{} (id {})", s(&p["name"]), s(&p["id"])))
            .collect();
        let _ = writeln!(out, "  programs  {}", list.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_features_with_reasons() {
        let v = serde_json::json!({
            "status": "ready", "workers": 2, "io_driver": "epoll", "models": 3,
            "kernel": {
                "enabled": "auto", "loaded": true, "pin_dir": "/sys/fs/bpf/tollgate",
                "features": {
                    "interception": {"active": true},
                    "interception_v6": {"active": false, "reason": "no IPv6 listen address"}
                },
                "intercept": ["127.0.0.1:8000"],
                "programs": [{"name": "tg_connect4", "id": 7}]
            }
        });
        let text = render("127.0.0.1:4000", 200, &v);
        assert!(text.contains("ready (HTTP 200)"), "{text}");
        assert!(text.contains("2 (epoll)"), "{text}");
        assert!(
            text.contains("loaded, maps pinned under /sys/fs/bpf/tollgate"),
            "{text}"
        );
        assert!(text.contains("interception     active"), "{text}");
        assert!(
            text.contains("interception_v6  off: no IPv6 listen address"),
            "{text}"
        );
        assert!(text.contains("intercept 127.0.0.1:8000"), "{text}");
        assert!(text.contains("tg_connect4 (id 7)"), "{text}");
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").as_deref(),
            Some(&b"abcde"[..])
        );
        assert_eq!(dechunk(b"5\r\nab"), None);
    }
}
