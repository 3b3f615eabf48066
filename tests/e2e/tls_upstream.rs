//! An https provider, for real: the agent speaks rustls to nginx, which terminates TLS with a
//! certificate from a private CA made at test time and proxies to a `tollgate-sim` on loopback.
//!
//! ```text
//! client ──http──▶ tollgate ──https (rustls)──▶ nginx 127.0.0.1:PORT ──http──▶ tollgate-sim
//! ```
//!
//! The CA and the server certificate (SAN `DNS:localhost` and `IP:127.0.0.1`, EC P-256) come from
//! the `openssl` command line; nginx runs in the foreground as a single process with its prefix,
//! temp paths and logs in a temporary directory, `proxy_buffering off` so SSE streams through, and
//! an access log of `$connection $connection_requests $ssl_protocol $status $request_uri`, which
//! tells which TLS connection carried which request. One agent gets three providers on that one
//! nginx:
//!
//! | provider | base_url | ca_file | model |
//! |---|---|---|---|
//! | `tls` | `https://localhost:PORT` | the private CA | `smol` |
//! | `tls-ip` | `https://127.0.0.1:PORT` | the private CA | `smol-ip` |
//! | `tls-public` | `https://localhost:PORT` | none (public roots only) | `smol-public` |
//!
//! What is asserted: a plain and a streamed chat over TLS return the simulator's own text and are
//! metered with its usage; sequential requests share TLS connections (nginx's `$connection`); a
//! pooled TLS connection that died is replaced by the one stale-connection retry; without
//! `ca_file` the private CA is refused (502 `upstream_unreachable`, rustls's `unknown_ca` alert
//! seen by nginx); and an IP address `base_url` is checked against the IP SAN.
//!
//! Without `openssl` or `nginx` (`cargo xtask test` installs nginx) each test prints why and skips.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::http::frame_data;
use crate::harness::pki::{find_binary, Pki};
use crate::harness::procs::free_port;
use crate::harness::procs::{Agent, Provider, TempDir, SIM_MODEL};
use crate::harness::{
    assert_ok_row, assert_openai_error, chat_body, post_json, prompt_tokens, AgentConfig, Client,
    Sim, Tokens,
};

/// Longest wait for nginx to accept connections, and for a helper command to finish.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for nginx to write the access log lines of finished requests.
const LOG_WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// A non-streaming chat through `https://localhost`: the client gets the simulator's own answer,
/// nginx saw the request over TLS, and the ledger holds the simulator's usage.
#[test]
fn chat_over_tls_returns_the_provider_answer_and_meters_it() {
    let Some(stack) = TlsStack::start("tls-chat") else {
        return;
    };
    let prompt = "Hello over TLS, from the end-to-end tests.";
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", prompt, 7, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let direct = stack.sim_answer(prompt, 7);
    assert_eq!(
        body["choices"][0]["message"]["content"], direct["choices"][0]["message"]["content"],
        "the client gets what the simulator says for this prompt: {body}"
    );
    let reported = Tokens::from_openai(&body["usage"]);
    assert_eq!(
        reported,
        Tokens {
            input: prompt_tokens(prompt),
            output: 7,
            ..Tokens::default()
        },
        "simulator usage: {body}"
    );

    let row = stack.agent.row_of(&r);
    assert_ok_row(&row, "chat", "smol", "tls");
    assert_eq!(row.tokens(), reported, "{row:#?}");
    assert!(!row.estimated, "usage came from the provider: {row:#?}");

    let log = stack.nginx.wait_for_requests(1);
    assert_eq!(log[0].uri, "/v1/chat/completions", "{log:?}");
    assert_eq!(log[0].status, 200, "{log:?}");
    assert!(
        log[0].tls.starts_with("TLSv1."),
        "nginx saw the request over TLS: {log:?}"
    );
}

/// A streaming chat through TLS: the SSE stream arrives whole (the simulator's text, `[DONE]`,
/// no usage chunk the client did not ask for) and its usage is metered, not estimated.
#[test]
fn stream_over_tls_is_relayed_and_metered() {
    let Some(stack) = TlsStack::start("tls-stream") else {
        return;
    };
    let prompt = "Stream a few tokens back through nginx.";
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", prompt, 9, true),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream")),
        "{:?}",
        r.headers
    );
    let frames = r.frames();
    assert_eq!(
        frames.last().map(String::as_str),
        Some("data: [DONE]\n\n"),
        "{frames:?}"
    );
    let data: Vec<Value> = frames.iter().filter_map(|f| frame_data(f)).collect();
    assert!(
        data.iter().all(|v| v.get("usage").is_none()),
        "the client did not ask for usage: {frames:?}"
    );
    let streamed = streamed_text(&data);
    let direct = stack.sim_answer(prompt, 9);
    assert_eq!(
        Some(streamed.as_str()),
        direct["choices"][0]["message"]["content"].as_str(),
        "streamed text is the simulator's text: {frames:?}"
    );

    let row = stack.agent.row_of(&r);
    assert_ok_row(&row, "chat", "smol", "tls");
    assert_eq!(
        row.tokens(),
        Tokens {
            input: prompt_tokens(prompt),
            output: 9,
            ..Tokens::default()
        },
        "{row:#?}"
    );
    assert!(!row.estimated, "usage came from the provider: {row:#?}");
    assert!(row.ttft_us.is_some(), "{row:#?}");
}

/// Keep-alive over TLS: sequential requests on one client connection (so one worker), plain and
/// streamed, all succeed, and nginx saw them on fewer TLS connections than requests, at least one
/// of which carried several requests.
#[test]
fn tls_connections_are_kept_alive_and_reused() {
    let Some(stack) = TlsStack::start("tls-keepalive") else {
        return;
    };
    const REQUESTS: usize = 6;
    let mut client = Client::connect(stack.agent.addr);
    for i in 0..REQUESTS {
        let stream = i % 2 == 1;
        let prompt = format!("keep-alive request {i} over TLS");
        let body = chat_body("smol", &prompt, 3, stream).to_string();
        let r = client.request("POST", "/v1/chat/completions", &[], body.as_bytes());
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        if stream {
            assert_eq!(
                r.frames().last().map(String::as_str),
                Some("data: [DONE]\n\n"),
                "request {i}: {}",
                r.text()
            );
        } else {
            assert_eq!(
                r.json()["usage"]["completion_tokens"],
                3,
                "request {i}: {}",
                r.text()
            );
        }
        let row = stack.agent.row_of(&r);
        assert_ok_row(&row, "chat", "smol", "tls");
        assert_eq!(row.output_tokens, 3, "request {i}: {row:#?}");
    }

    let log = stack.nginx.wait_for_requests(REQUESTS);
    assert!(
        log.iter()
            .all(|l| l.tls.starts_with("TLSv1.") && l.status == 200),
        "every request went over TLS and succeeded: {log:#?}"
    );
    let mut per_connection: BTreeMap<u64, u64> = BTreeMap::new();
    for line in &log {
        let most = per_connection.entry(line.connection).or_default();
        *most = (*most).max(line.connection_requests);
    }
    eprintln!("TLS connections (nginx $connection → requests carried): {per_connection:?}");
    assert!(
        per_connection.len() < REQUESTS,
        "{REQUESTS} requests should not need {} TLS connections: {log:#?}",
        per_connection.len()
    );
    assert!(
        per_connection.values().any(|&n| n >= 2),
        "some TLS connection carried more than one request: {log:#?}"
    );
}

/// A pooled TLS connection that died while idle (nginx killed and started again on the same
/// port) is replaced transparently: the next request on the same client connection (so the same
/// worker and pool) succeeds on a fresh TLS connection, the dead one noticed before use.
#[test]
fn dead_pooled_tls_connection_is_replaced() {
    let Some(mut stack) = TlsStack::start("tls-stale") else {
        return;
    };
    let mut client = Client::connect(stack.agent.addr);
    let chat = |client: &mut Client, prompt: &str| {
        let body = chat_body("smol", prompt, 2, false).to_string();
        client.request("POST", "/v1/chat/completions", &[], body.as_bytes())
    };
    let first = chat(&mut client, "before nginx restarts");
    assert_eq!(first.status, 200, "{}", first.text());
    let retries_before = retries(&stack.agent);

    stack.nginx.restart();

    let second = chat(&mut client, "after nginx restarted");
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(
        second.json()["usage"]["completion_tokens"],
        2,
        "{}",
        second.text()
    );
    assert_ok_row(&stack.agent.row_of(&second), "chat", "smol", "tls");
    // The pool peeks at an idle connection before reusing it: the restart's FIN/RST is already
    // there, so the dead connection is dropped and no request is ever written to it (a request
    // written in full is never re-sent, because the provider may have processed it).
    assert_eq!(
        retries(&stack.agent),
        retries_before,
        "the dead pooled connection should be noticed before use, not retried"
    );
}

/// A provider without `ca_file` trusts only the public roots, so the private CA's certificate is
/// refused: 502 `upstream_unreachable` naming the TLS handshake, recorded in the ledger, and
/// nginx saw rustls refuse the certificate (`unknown ca` alert). The agent keeps serving the
/// providers that do trust the CA.
#[test]
fn private_ca_without_ca_file_is_502_upstream_unreachable() {
    let Some(stack) = TlsStack::start("tls-public-roots") else {
        return;
    };
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol-public", "is this certificate trusted?", 2, false),
    );
    let error = assert_openai_error(&r, 502, "api_error", "upstream_unreachable");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("tls-public")
            && message.contains("TLS handshake")
            && message.contains("certificate"),
        "the message names the provider, the TLS handshake and the certificate problem: {error}"
    );
    // rustls sends the `unknown_ca` alert, and nginx logs it.
    stack.nginx.wait_for_error_log("alert unknown ca");
    let row = stack.agent.row_of(&r);
    assert_eq!(
        (row.status, row.outcome.as_str(), row.provider.as_deref()),
        (502, "upstream_unreachable", Some("tls-public")),
        "{row:#?}"
    );
    assert_eq!(row.tokens(), Tokens::default(), "{row:#?}");

    let ok = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", "and with the CA?", 2, false),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
}

/// `https://127.0.0.1:PORT`: the certificate is checked against its IP address SAN.
#[test]
fn ip_address_base_url_matches_the_ip_san() {
    let Some(stack) = TlsStack::start("tls-ip") else {
        return;
    };
    let prompt = "Hello to an IP address over TLS.";
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol-ip", prompt, 5, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        stack.sim_answer(prompt, 5)["choices"][0]["message"]["content"],
        "{body}"
    );
    let row = stack.agent.row_of(&r);
    assert_ok_row(&row, "chat", "smol-ip", "tls-ip");
    assert_eq!(
        row.tokens(),
        Tokens {
            input: prompt_tokens(prompt),
            output: 5,
            ..Tokens::default()
        },
        "{row:#?}"
    );
    let log = stack.nginx.wait_for_requests(1);
    assert!(log[0].tls.starts_with("TLSv1."), "{log:?}");
}

// ---------------------------------------------------------------------------------------------
// The stack: simulator, nginx with TLS, agent
// ---------------------------------------------------------------------------------------------

/// The simulator, nginx terminating TLS in front of it, and an agent with the three providers.
struct TlsStack {
    // Field order is drop order: the agent first, the directory (kept on failure) last.
    agent: Agent,
    nginx: Nginx,
    sim: Sim,
    _dir: TempDir,
}

impl TlsStack {
    /// Starts everything, or prints why this host cannot and returns `None`.
    fn start(tag: &str) -> Option<TlsStack> {
        let tools = match Tools::find() {
            Ok(tools) => tools,
            Err(why) => {
                eprintln!("skipping: {why}");
                return None;
            }
        };
        let dir = TempDir::new(tag);
        let pki = Pki::create(&tools.openssl, &dir.path().join("pki"));
        let sim = Sim::start(&[]);
        let nginx = Nginx::start(&tools, &dir.path().join("nginx"), &pki, sim.addr);
        let port = nginx.port;

        let mut config = AgentConfig::for_sim(&sim);
        config.providers = vec![
            https_provider("tls", format!("https://localhost:{port}"), Some(&pki.ca)),
            https_provider("tls-ip", format!("https://127.0.0.1:{port}"), Some(&pki.ca)),
            https_provider("tls-public", format!("https://localhost:{port}"), None),
        ];
        config.models = [
            ("smol", "tls"),
            ("smol-ip", "tls-ip"),
            ("smol-public", "tls-public"),
        ]
        .into_iter()
        .map(|(model, provider)| (model.into(), provider.into(), SIM_MODEL.into()))
        .collect();
        let agent = Agent::start(&config);
        Some(TlsStack {
            agent,
            nginx,
            sim,
            _dir: dir,
        })
    }

    /// What the simulator answers for this prompt when asked directly (its text is deterministic
    /// in the prompt).
    fn sim_answer(&self, prompt: &str, max_tokens: u64) -> Value {
        let r = post_json(
            self.sim.addr,
            "/v1/chat/completions",
            &chat_body(SIM_MODEL, prompt, max_tokens, false),
        );
        assert_eq!(r.status, 200, "simulator: {}", r.text());
        r.json()
    }
}

/// An https provider (OpenAI kind, key from `SIM_KEY`), with `ca_file` when given.
///
/// The harness's `Provider` has no `ca_file` field; its renderer writes `base_url` verbatim as
/// `    base_url: VALUE\n`, so the extra key rides on a continuation line at the same indent. (If
/// that ever breaks, the agent refuses the config or every CA-trusting test fails, loudly.)
fn https_provider(name: &str, base_url: String, ca_file: Option<&Path>) -> Provider {
    let base_url = match ca_file {
        Some(ca) => format!("{base_url}\n    ca_file: {:?}", ca.display().to_string()),
        None => base_url,
    };
    Provider {
        name: name.into(),
        kind: "openai".into(),
        base_url,
        api_key_env: Some("SIM_KEY".into()),
    }
}

/// `tollgate_upstream_retries_total`: stale pooled connections retried on a new one.
fn retries(agent: &Agent) -> u64 {
    let metrics = agent.metrics();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_upstream_retries_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no tollgate_upstream_retries_total in:\n{metrics}")) as u64
}

/// The text of a chat stream's content deltas, in order.
fn streamed_text(data: &[Value]) -> String {
    data.iter()
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tools: openssl and nginx from the host
// ---------------------------------------------------------------------------------------------

struct Tools {
    openssl: PathBuf,
    nginx: PathBuf,
    /// Whether this nginx has `-e` (the startup error log; 1.19.5 and later).
    nginx_has_e: bool,
}

impl Tools {
    fn find() -> Result<Tools, String> {
        let openssl = find_binary("openssl").ok_or(
            "the `openssl` command line is not installed (Debian: apt-get install openssl)",
        )?;
        let nginx = find_binary("nginx").ok_or(
            "`nginx` is not on PATH (Debian: apt-get install nginx; `cargo xtask test` installs it)",
        )?;
        let version = Command::new(&nginx)
            .arg("-v")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {} -v: {e}", nginx.display()))?;
        let text = String::from_utf8_lossy(&version.stderr).into_owned()
            + &String::from_utf8_lossy(&version.stdout);
        let numbers: Vec<u32> = text
            .split_once("nginx/")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or_default()
            .split('.')
            .map(|p| p.parse().unwrap_or(0))
            .collect();
        let nginx_has_e = numbers.as_slice() >= [1, 19, 5].as_slice();
        Ok(Tools {
            openssl,
            nginx,
            nginx_has_e,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// nginx terminating TLS
// ---------------------------------------------------------------------------------------------

/// A foreground, single-process nginx, killed by pid on drop.
struct Nginx {
    child: Child,
    launch: Launch,
    port: u16,
    access_log: PathBuf,
    error_log: PathBuf,
}

/// How to start nginx on a written `prefix/nginx.conf` listening on `port`.
struct Launch {
    binary: PathBuf,
    has_e: bool,
    prefix: PathBuf,
    port: u16,
}

impl Launch {
    fn error_log(&self) -> PathBuf {
        self.prefix.join("error.log")
    }

    /// Spawns nginx and waits (bounded) until it accepts connections; a failure carries the
    /// error log.
    fn spawn(&self) -> Result<Child, String> {
        let error_log = self.error_log();
        let _ = std::fs::remove_file(&error_log);
        let logs = || {
            format!(
                "--- nginx error.log ---\n{}",
                std::fs::read_to_string(&error_log).unwrap_or_default()
            )
        };
        let mut cmd = Command::new(&self.binary);
        if self.has_e {
            cmd.arg("-e").arg(&error_log);
        }
        cmd.arg("-p")
            .arg(&self.prefix)
            .arg("-c")
            .arg(self.prefix.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(File::create(self.prefix.join("nginx.stdout")).expect("nginx stdout file"))
            .stderr(File::create(self.prefix.join("nginx.stderr")).expect("nginx stderr file"));
        let mut child = cmd.spawn().map_err(|e| format!("spawning {cmd:?}: {e}"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "nginx exited with {status} before accepting connections:\n{}",
                    logs()
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(child);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "nginx did not accept connections on {addr} within {START_TIMEOUT:?}:\n{}",
                    logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One access log line: `$connection $connection_requests $ssl_protocol $status $request_uri`.
#[derive(Debug)]
struct AccessLine {
    /// nginx's serial number of the client (agent) connection: one per TLS connection.
    connection: u64,
    /// The how-many-th request on that connection this was.
    connection_requests: u64,
    /// `TLSv1.3`, `TLSv1.2`, or `-` for plain HTTP.
    tls: String,
    status: u16,
    uri: String,
}

impl Nginx {
    /// Starts nginx on a free loopback port in front of `upstream`; a port taken between probing
    /// and binding is retried with another.
    fn start(tools: &Tools, prefix: &Path, pki: &Pki, upstream: SocketAddr) -> Nginx {
        std::fs::create_dir_all(prefix).expect("creating the nginx prefix");
        let mut last_error = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            std::fs::write(
                prefix.join("nginx.conf"),
                nginx_conf(prefix, port, pki, upstream),
            )
            .expect("writing nginx.conf");
            let launch = Launch {
                binary: tools.nginx.clone(),
                has_e: tools.nginx_has_e,
                prefix: prefix.to_path_buf(),
                port,
            };
            match launch.spawn() {
                Ok(child) => {
                    return Nginx {
                        child,
                        port,
                        access_log: prefix.join("access.log"),
                        error_log: launch.error_log(),
                        launch,
                    }
                }
                Err(e) if e.contains("Address already in use") => last_error = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("nginx could not bind a free port: {last_error}");
    }

    /// Kills nginx (every TLS connection to it dies with it) and starts it again on the same
    /// port and config.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = self.launch.spawn().expect("restarting nginx");
    }

    /// The access log so far, parsed.
    fn requests(&self) -> Vec<AccessLine> {
        let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        text.lines()
            .map(|line| {
                let parse = || -> Option<AccessLine> {
                    let mut f = line.split_whitespace();
                    Some(AccessLine {
                        connection: f.next()?.parse().ok()?,
                        connection_requests: f.next()?.parse().ok()?,
                        tls: f.next()?.to_string(),
                        status: f.next()?.parse().ok()?,
                        uri: f.next()?.to_string(),
                    })
                };
                parse().unwrap_or_else(|| panic!("unexpected nginx access log line {line:?}"))
            })
            .collect()
    }

    /// The access log once it has at least `n` lines (nginx writes a line when a request ends,
    /// which may be just after the agent saw the last byte); bounded by [`LOG_WAIT`].
    fn wait_for_requests(&self, n: usize) -> Vec<AccessLine> {
        let deadline = Instant::now() + LOG_WAIT;
        loop {
            let lines = self.requests();
            if lines.len() >= n {
                return lines;
            }
            if Instant::now() > deadline {
                panic!(
                    "nginx logged {} of {n} requests within {LOG_WAIT:?}: {lines:#?}\n{}",
                    lines.len(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (bounded by [`LOG_WAIT`]) for the error log to contain `needle`.
    fn wait_for_error_log(&self, needle: &str) {
        let deadline = Instant::now() + LOG_WAIT;
        while !std::fs::read_to_string(&self.error_log)
            .unwrap_or_default()
            .contains(needle)
        {
            if Instant::now() > deadline {
                panic!(
                    "nginx did not log {needle:?} within {LOG_WAIT:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The error log, for failure messages.
    fn logs(&self) -> String {
        format!(
            "--- nginx error.log ---\n{}",
            std::fs::read_to_string(&self.error_log).unwrap_or_default()
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        if let Ok(None) = self.child.try_wait() {
            // SIGKILL to this child's pid only; single-process nginx leaves nothing behind.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// nginx.conf: foreground, one process, every path under `prefix`, TLS on `127.0.0.1:port` with
/// the test certificate, and an unbuffered HTTP/1.1 keep-alive proxy to `upstream`.
fn nginx_conf(prefix: &Path, port: u16, pki: &Pki, upstream: SocketAddr) -> String {
    let p = prefix.display();
    let cert = pki.cert.display();
    let key = pki.key.display();
    format!(
        "# Written by tests/e2e/tls_upstream.rs.
daemon off;
master_process off;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log info;
events {{
    worker_connections 256;
}}
http {{
    log_format tollgate_e2e '$connection $connection_requests $ssl_protocol $status $request_uri';
    access_log {p}/access.log tollgate_e2e;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    keepalive_timeout 60s;
    keepalive_requests 1000;
    upstream sim {{
        server {upstream};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 30s;
        }}
    }}
}}
"
    )
}
