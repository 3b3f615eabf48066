//! `tollgate status --addr HOST:PORT`: GETs a running agent's `/readyz` and prints it for
//! people: readiness, workers and I/O driver, and which kernel features are active and why the
//! others are not. Not on any hot path; a blocking GET (ureq) with a timeout.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
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

/// A blocking GET of `path` (ureq); returns the status and the body.
pub fn get(addr: &str, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(format!("http://{addr}{path}"))
        .header("accept", "application/json")
        .call()
        .with_context(|| format!("asking the agent at {addr} (is it running?)"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(16 * 1024 * 1024)
        .read_to_vec()
        .with_context(|| format!("reading the answer from {addr}"))?;
    Ok((status, body))
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
    let c = &v["cluster"];
    if c.is_object() {
        let detail = if c["redis"] == "up" {
            format!(
                "Redis up, {} shared budgets leased",
                s(&c["shared_budgets"])
            )
        } else {
            format!(
                "Redis DOWN: enforcing with the leases held, then the local share ({})",
                s(&c["last_error"])
            )
        };
        let _ = writeln!(out, "  cluster   node {}: {detail}", s(&c["node"]));
    }
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
        assert!(!text.contains("cluster"), "{text}");
        let mut v = v;
        v["cluster"] = serde_json::json!({"node": "gpu-7", "redis": "down", "last_error": "connection refused", "shared_budgets": 2});
        let text = render("127.0.0.1:4000", 200, &v);
        assert!(
            text.contains("cluster   node gpu-7: Redis DOWN: enforcing with the leases held, then the local share (connection refused)"),
            "{text}"
        );
    }
}
