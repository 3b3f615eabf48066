//! nginx as the reference reverse proxy: same simulator, same load, a well-known C proxy in between.
//!
//! Why it exists: "added latency over direct" means little without a baseline proxy. nginx runs with one
//! worker, a keep-alive upstream pool, `proxy_buffering off` (as an SSE-relaying gateway must), access logs
//! off, and a private prefix under the bench's work directory for its pid, logs and temp files, so it never
//! touches /etc/nginx or /var. The bench never installs nginx; when it is missing the report says so.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use super::process::{self, Server};

/// An nginx binary found on PATH, with its version.
#[derive(Debug, Clone)]
pub struct Nginx {
    pub binary: PathBuf,
    pub version: String,
}

/// Find `nginx` on PATH (also /usr/sbin, which non-root PATHs often lack).
pub fn find() -> Option<Nginx> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let binary = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())?;
    let out = Command::new(&binary).arg("-v").output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let version = parse_version(&text).unwrap_or_else(|| "unknown version".into());
    Some(Nginx { binary, version })
}

/// `nginx version: nginx/1.22.1` → `1.22.1`.
pub fn parse_version(text: &str) -> Option<String> {
    let (_, rest) = text.split_once("nginx/")?;
    Some(rest.split_whitespace().next()?.to_string())
}

/// Whether this version has `-e` (set the startup error log; 1.19.5 and later).
fn has_error_log_flag(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    (major, minor, patch) >= (1, 19, 5)
}

/// The whole nginx.conf for proxying `listen` → `upstream`, with every path under `prefix`.
pub fn render_config(prefix: &Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    let p = prefix.display();
    format!(
        "# Written by `cargo xtask bench`: a plain reverse proxy in front of tollgate-sim.
worker_processes 1;
daemon off;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    upstream sim {{
        server {upstream};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"
    )
}

/// Start nginx in front of `upstream` with its prefix in `prefix`.
pub fn start(nginx: &Nginx, prefix: &Path, upstream: SocketAddr) -> anyhow::Result<Server> {
    std::fs::create_dir_all(prefix).with_context(|| format!("creating {}", prefix.display()))?;
    let listen = process::free_port()?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, render_config(prefix, listen, upstream)).context("writing nginx.conf")?;
    let mut cmd = Command::new(&nginx.binary);
    if has_error_log_flag(&nginx.version) {
        cmd.arg("-e").arg(prefix.join("error.log"));
    }
    cmd.arg("-p").arg(prefix).arg("-c").arg(&conf);
    Server::start_listening("nginx", cmd, listen, prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("nginx version: nginx/1.22.1\n").as_deref(),
            Some("1.22.1")
        );
        assert_eq!(parse_version("nginx version: openresty/1.21"), None);
        assert!(has_error_log_flag("1.22.1"));
        assert!(has_error_log_flag("1.19.5"));
        assert!(!has_error_log_flag("1.18.0"));
    }

    #[test]
    fn config_proxies_without_buffering() {
        let conf = render_config(
            Path::new("/tmp/x"),
            SocketAddr::from(([127, 0, 0, 1], 1)),
            SocketAddr::from(([127, 0, 0, 1], 2)),
        );
        assert!(conf.contains("listen 127.0.0.1:1;"));
        assert!(conf.contains("server 127.0.0.1:2;"));
        assert!(conf.contains("proxy_buffering off;"));
        assert!(conf.contains("keepalive 256;"));
        assert!(conf.contains("pid /tmp/x/nginx.pid;"));
    }
}
