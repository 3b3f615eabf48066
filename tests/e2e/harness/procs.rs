//! Spawning the simulator and the agent, and the guards that stop them.
//!
//! A process is started with its stdout piped: a thread copies every line to a log file and hands
//! the first `... listening on IP:PORT` line back, so a test waits for readiness, never for a
//! fixed time. stderr goes straight to another log file. On drop the process is killed by pid
//! (SIGKILL), and while a test is panicking the tail of both logs is printed so a failure says
//! what the processes said.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// Model name the simulator serves (what the provider receives).
pub const SIM_MODEL: &str = "smollm2";
/// The admin token the agents of these tests are started with.
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";
/// Key the agent sends to the OpenAI-kind provider (from `SIM_KEY`).
pub const OPENAI_PROVIDER_KEY: &str = "sk-provider-openai-e2e";
/// Key the agent sends to the Anthropic-kind provider (from `SIM_ANTHROPIC_KEY`).
pub const ANTHROPIC_PROVIDER_KEY: &str = "sk-provider-anthropic-e2e";

/// How long a process may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful stop may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A loopback port nothing listens on right now (bound, noted, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The scheduling policy (`SCHED_OTHER` 0, `SCHED_IDLE` 5, ...) of `pid`'s thread named `comm`
/// (as the kernel truncates it to 15 bytes), from field 41 of its `stat`.
pub fn thread_policy(pid: u32, comm: &str) -> Option<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .find_map(|t| {
            let dir = t.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            if name.trim_end() != comm {
                return None;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // Fields after the parenthesised name start at field 3 (state).
            stat.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(41 - 3)?
                .parse()
                .ok()
        })
}

/// Where the binaries are: `TOLLGATE_BIN_DIR`, else the profile directory that holds this test
/// binary (`target/debug/deps/e2e-*` → `target/debug`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TOLLGATE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in <target>/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary; panics with the command that builds it when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p tollgate -p tollgate-sim` (cargo xtask test does)",
        path.display()
    );
    path
}

/// A temporary directory under the cargo target's tmp dir, removed on drop unless the test failed
/// or `TOLLGATE_E2E_KEEP` is set.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("e2e")
            .join(format!("{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("TOLLGATE_E2E_KEEP").is_some() {
            eprintln!("kept for inspection: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A running child process with its logs.
pub struct Proc {
    name: String,
    child: Child,
    stdout_log: PathBuf,
    stderr_log: PathBuf,
}

impl Proc {
    /// What the process printed on stdout so far.
    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout_log).unwrap_or_default()
    }

    /// What the process wrote on stderr (its log) so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// The process id (for a test that signals it at an exact moment).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Spawns `cmd` and waits for `<announce> listening on ADDR` on its stdout.
    pub fn spawn(
        name: &str,
        mut cmd: Command,
        logs: &Path,
        announce: &str,
    ) -> anyhow::Result<(Proc, SocketAddr)> {
        let stdout_log = logs.join(format!("{name}.stdout"));
        let stderr_log = logs.join(format!("{name}.stderr"));
        let stderr = File::create(&stderr_log).context("creating stderr log")?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut copy = File::create(&stdout_log).context("creating stdout log")?;
        let prefix = format!("{announce} listening on ");
        let (tx, rx) = mpsc::channel();
        let wanted = prefix.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(copy, "{line}");
                if let Some(addr) = line.strip_prefix(&wanted) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.trim().to_string());
                    }
                }
            }
        });
        let mut proc = Proc {
            name: name.to_string(),
            child,
            stdout_log,
            stderr_log,
        };
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let status = proc.child.try_wait().ok().flatten();
                bail!(
                    "{name} did not announce `{prefix}ADDR` within {START_TIMEOUT:?} (exit: {status:?})\n{}",
                    proc.logs_tail()
                );
            }
        };
        let addr = addr
            .parse()
            .map_err(|e| anyhow!("{name} announced a bad address {addr:?}: {e}"))?;
        Ok((proc, addr))
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        anyhow::ensure!(rc == 0, "kill(SIGTERM) failed");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM\n{}",
                    self.name,
                    self.logs_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Both logs so far, the last lines of each.
    pub fn logs_tail(&self) -> String {
        let tail = |path: &Path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            tail(&self.stdout_log),
            self.name,
            tail(&self.stderr_log)
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs_tail());
        }
        if let Ok(None) = self.child.try_wait() {
            // Child::kill sends SIGKILL to this child's pid only.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `tollgate-sim` serving [`SIM_MODEL`].
pub struct Sim {
    pub addr: SocketAddr,
    _proc: Proc,
    _dir: TempDir,
}

impl Sim {
    /// `tollgate-sim --zero-delay` plus `flags`.
    pub fn start(flags: &[&str]) -> Sim {
        Sim::start_with(true, flags)
    }

    /// A simulator with its latency model on (for streams that must stay open a while).
    pub fn start_paced(flags: &[&str]) -> Sim {
        Sim::start_with(false, flags)
    }

    /// A simulator on a given address (e.g. one a test left dead until now).
    pub fn start_on(addr: SocketAddr, flags: &[&str]) -> Sim {
        Sim::start_at(&addr.to_string(), true, flags)
    }

    fn start_with(zero_delay: bool, flags: &[&str]) -> Sim {
        Sim::start_at("127.0.0.1:0", zero_delay, flags)
    }

    fn start_at(listen: &str, zero_delay: bool, flags: &[&str]) -> Sim {
        let dir = TempDir::new("sim");
        let mut cmd = Command::new(bin("tollgate-sim"));
        cmd.args(["--listen", listen, "--model", SIM_MODEL]);
        if zero_delay {
            cmd.arg("--zero-delay");
        }
        cmd.args(flags);
        let (proc, addr) = Proc::spawn("tollgate-sim", cmd, dir.path(), "tollgate-sim")
            .expect("starting tollgate-sim");
        Sim {
            addr,
            _proc: proc,
            _dir: dir,
        }
    }

    /// Stops this simulator and starts another on the same address with `flags` (an engine
    /// upgraded in place: clients keep the address).
    pub fn replace(&mut self, flags: &[&str]) {
        let _ = self._proc.terminate();
        *self = Sim::start_on(self.addr, flags);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET /sim/last-request`: the last POST as the simulator received it.
    pub fn last_request(&self) -> serde_json::Value {
        let response = super::get(self.addr, "/sim/last-request");
        assert_eq!(
            response.status,
            200,
            "/sim/last-request: {}",
            response.text()
        );
        response.json()
    }
}

/// One provider entry of the agent's config.
#[derive(Clone, Debug)]
pub struct Provider {
    pub name: String,
    pub kind: String,
    pub base_url: String,
    pub api_key_env: Option<String>,
}

/// The agent's YAML config, with the values tests change as fields.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub workers: usize,
    pub driver: String,
    pub max_body_bytes: u64,
    pub header_timeout_ms: u64,
    pub body_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub connect_timeout_ms: u64,
    pub response_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub drain_timeout_ms: u64,
    /// How long the ledger writer may hold records before committing them.
    pub ledger_flush_interval_ms: u64,
    /// More `ledger:` keys, rendered after the flush interval (`, key: value`).
    pub extra_ledger: String,
    pub providers: Vec<Provider>,
    /// (client name, provider, provider model).
    pub models: Vec<(String, String, String)>,
    /// Render an `admin:` section (listener on a free port, token from [`ADMIN_TOKEN`]), and
    /// whether the client port keeps serving `/metrics`.
    pub admin: Option<bool>,
    /// More `models:` entries, as YAML list items (for `targets:` lists).
    pub extra_models_yaml: String,
    /// `shutdown_grace_ms`, when set.
    pub shutdown_grace_ms: Option<u64>,
    /// More `limits:` entries, rendered as written (`("max_connections_per_worker", "4")`).
    pub extra_limits: Vec<(String, String)>,
    /// Render `kernel: { enabled: off }`: these tests are about the proxy, and agents started in
    /// parallel must not compete for the kernel programs (agent/tests/kernel.rs tests those).
    pub kernel_off: bool,
    /// Top-level governance YAML (`auth`, `limits` as a list, `budgets`, ...), rendered as
    /// written. Defaults to `auth: { mode: open }` (most tests are about the proxy, not keys)
    /// for agents that know governance.
    pub governance_yaml: String,
    /// More `providers:` items, as YAML (`  - name: ...`).
    pub extra_providers_yaml: String,
}

impl AgentConfig {
    /// `sim` (openai, key from `SIM_KEY`) and `sim-anthropic` (anthropic, key from
    /// `SIM_ANTHROPIC_KEY`) both on `sim`; models `smol` → sim and `claude` → sim-anthropic.
    pub fn for_sim(sim: &Sim) -> Self {
        AgentConfig {
            workers: 2,
            driver: "auto".into(),
            max_body_bytes: 1_048_576,
            header_timeout_ms: 1000,
            body_timeout_ms: 1000,
            idle_timeout_ms: 5000,
            max_head_bytes: 65_536,
            max_headers: 100,
            connect_timeout_ms: 1000,
            response_timeout_ms: 2000,
            read_timeout_ms: 2000,
            drain_timeout_ms: 5000,
            ledger_flush_interval_ms: 20,
            extra_ledger: String::new(),
            providers: vec![
                Provider {
                    name: "sim".into(),
                    kind: "openai".into(),
                    base_url: sim.url(),
                    api_key_env: Some("SIM_KEY".into()),
                },
                Provider {
                    name: "sim-anthropic".into(),
                    kind: "anthropic".into(),
                    base_url: sim.url(),
                    api_key_env: Some("SIM_ANTHROPIC_KEY".into()),
                },
            ],
            models: vec![
                ("smol".into(), "sim".into(), SIM_MODEL.into()),
                ("claude".into(), "sim-anthropic".into(), SIM_MODEL.into()),
            ],
            admin: None,
            extra_models_yaml: String::new(),
            shutdown_grace_ms: None,
            extra_limits: Vec::new(),
            kernel_off: kernel_section_supported(),
            governance_yaml: if governance_supported() {
                "auth: { mode: open }\n".into()
            } else {
                String::new()
            },
            extra_providers_yaml: String::new(),
        }
    }

    pub fn render(&self, data_dir: &Path) -> String {
        let mut y = format!(
            "listen: 127.0.0.1:0\n\
             data_dir: {}\n\
             workers: {}\n\
             io: {{ driver: {} }}\n\
             limits: {{ max_body_bytes: {}, header_timeout_ms: {}, body_timeout_ms: {}, idle_timeout_ms: {}, max_head_bytes: {}, max_headers: {}{} }}\n\
             upstream: {{ connect_timeout_ms: {}, response_timeout_ms: {}, read_timeout_ms: {}, drain_timeout_ms: {} }}\n\
             ledger: {{ flush_interval_ms: {}{} }}\n\
             providers:\n",
            data_dir.display(),
            self.workers,
            self.driver,
            self.max_body_bytes,
            self.header_timeout_ms,
            self.body_timeout_ms,
            self.idle_timeout_ms,
            self.max_head_bytes,
            self.max_headers,
            self.extra_limits
                .iter()
                .map(|(k, v)| format!(", {k}: {v}"))
                .collect::<String>(),
            self.connect_timeout_ms,
            self.response_timeout_ms,
            self.read_timeout_ms,
            self.drain_timeout_ms,
            self.ledger_flush_interval_ms,
            self.extra_ledger,
        );
        for p in &self.providers {
            y.push_str(&format!(
                "  - name: {}\n    kind: {}\n    base_url: {}\n",
                p.name, p.kind, p.base_url
            ));
            if let Some(env) = &p.api_key_env {
                y.push_str(&format!("    api_key_env: {env}\n"));
            }
        }
        y.push_str(&self.extra_providers_yaml);
        if self.kernel_off {
            y.push_str("kernel: { enabled: off }\n");
        }
        if let Some(metrics_on_client_port) = self.admin {
            y.push_str(&format!(
                "admin: {{ listen: 127.0.0.1:0, token_env: TOLLGATE_ADMIN_TOKEN, metrics_on_client_port: {metrics_on_client_port} }}\n"
            ));
        }
        if let Some(ms) = self.shutdown_grace_ms {
            y.push_str(&format!("shutdown_grace_ms: {ms}\n"));
        }
        y.push_str("models:\n");
        for (name, provider, model) in &self.models {
            y.push_str(&format!(
                "  - name: {name}\n    provider: {provider}\n    model: {model}\n"
            ));
        }
        y.push_str(&self.extra_models_yaml);
        y.push_str(&self.governance_yaml);
        y
    }
}

/// Whether this build of the agent knows governance (`auth:`), asked once like the kernel
/// section, so A/B runs against older agents keep working.
fn governance_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| validates("auth: { mode: open }\n"))
}

fn validates(yaml: &str) -> bool {
    let dir = TempDir::new("probe");
    let path = dir.path().join("probe.yaml");
    std::fs::write(&path, yaml).expect("writing the probe config");
    Command::new(bin("tollgate"))
        .arg("validate")
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether this build of the agent knows the `kernel:` section (asked once, with `validate`), so
/// the harness works with agents from before and after it.
fn kernel_section_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| validates("kernel: { enabled: off }\n"))
}

/// A running `tollgate serve`.
pub struct Agent {
    pub addr: SocketAddr,
    pub proc: Proc,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    dir: TempDir,
}

impl Agent {
    /// Writes `config` into a new temporary directory and starts the agent on it.
    pub fn start(config: &AgentConfig) -> Agent {
        Agent::try_start(config).expect("starting tollgate")
    }

    /// Like [`Agent::start`], but a failure to start is returned (with the agent's logs).
    pub fn try_start(config: &AgentConfig) -> anyhow::Result<Agent> {
        let dir = TempDir::new("agent");
        let data_dir = dir.path().join("data");
        let config_path = dir.path().join("tollgate.yaml");
        std::fs::write(&config_path, config.render(&data_dir))
            .context("writing the agent config")?;
        let (proc, addr) = spawn_agent(&config_path, dir.path(), 0)?;
        Ok(Agent {
            addr,
            proc,
            data_dir,
            config_path,
            dir,
        })
    }

    /// Starts the agent on a config file written elsewhere, whose `data_dir` is `data_dir`.
    pub fn start_file(config: &Path, data_dir: &Path) -> Agent {
        Agent::start_file_on(config, data_dir, "127.0.0.1:0")
    }

    /// Like [`Agent::start_file`], listening on `listen` (a fixed port two agents can share:
    /// the listeners are SO_REUSEPORT).
    pub fn start_file_on(config: &Path, data_dir: &Path, listen: &str) -> Agent {
        let dir = TempDir::new("agent");
        let config_path = dir.path().join("tollgate.yaml");
        std::fs::copy(config, &config_path).expect("copying the agent config");
        let (proc, addr) =
            spawn_agent_on(&config_path, dir.path(), 0, listen).expect("starting tollgate");
        Agent {
            addr,
            proc,
            data_dir: data_dir.to_path_buf(),
            config_path,
            dir,
        }
    }

    /// SIGTERM and wait: a graceful stop that flushes the ledger.
    pub fn stop(&mut self) -> ExitStatus {
        self.proc.terminate().expect("stopping tollgate")
    }

    /// Stops the agent (if running) and starts it again on the same config and data dir.
    pub fn restart(&mut self, generation: usize) {
        if let Ok(None) = self.proc.child.try_wait() {
            let status = self.stop();
            assert!(status.success(), "tollgate exited with {status} on SIGTERM");
        }
        let (proc, addr) = spawn_agent(&self.config_path, self.dir.path(), generation)
            .expect("restarting tollgate");
        self.proc = proc;
        self.addr = addr;
    }

    /// SIGKILL (no chance to flush anything), then start again on the same config and data dir.
    pub fn crash_and_restart(&mut self, generation: usize) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        let (proc, addr) = spawn_agent(&self.config_path, self.dir.path(), generation)
            .expect("restarting tollgate after a crash");
        self.proc = proc;
        self.addr = addr;
    }

    /// The admin listener's address, when the config has one (announced on stdout).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.proc
            .stdout_text()
            .lines()
            .find_map(|l| l.strip_prefix("tollgate admin listening on "))
            .and_then(|a| a.trim().parse().ok())
    }

    pub fn metrics(&self) -> String {
        let response = super::get(self.addr, "/metrics");
        assert_eq!(response.status, 200, "/metrics");
        response.text()
    }

    /// The ledger row of a proxied request (bounded wait for it to be committed).
    pub fn ledger_row(&self, id: &str) -> super::Row {
        super::ledger::row(&self.data_dir, id)
    }

    /// The ledger row of a response, by its `x-tollgate-request-id`.
    pub fn row_of(&self, response: &super::Response) -> super::Row {
        self.ledger_row(response.request_id())
    }
}

fn spawn_agent(
    config: &Path,
    logs: &Path,
    generation: usize,
) -> anyhow::Result<(Proc, SocketAddr)> {
    spawn_agent_on(config, logs, generation, "127.0.0.1:0")
}

fn spawn_agent_on(
    config: &Path,
    logs: &Path,
    generation: usize,
    listen: &str,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let mut cmd = Command::new(bin("tollgate"));
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .args(["--listen", listen])
        .env("SIM_KEY", OPENAI_PROVIDER_KEY)
        .env("SIM_ANTHROPIC_KEY", ANTHROPIC_PROVIDER_KEY)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN);
    Proc::spawn(&format!("tollgate-{generation}"), cmd, logs, "tollgate")
}

/// A simulator and an agent in front of it: what most tests need.
pub struct Stack {
    // Field order is drop order: the agent goes first.
    pub agent: Agent,
    pub sim: Sim,
}

impl Stack {
    /// Default sim (`--zero-delay`) and default config.
    pub fn start() -> Stack {
        Stack::custom(Sim::start(&[]), |_| {})
    }

    /// A given sim, and the default config changed by `edit`.
    pub fn custom(sim: Sim, edit: impl FnOnce(&mut AgentConfig)) -> Stack {
        let mut config = AgentConfig::for_sim(&sim);
        edit(&mut config);
        let agent = Agent::start(&config);
        Stack { agent, sim }
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `tollgate ARGS` to completion (killed after `timeout`), with the provider keys set.
pub fn run_tollgate(args: &[&str], timeout: Duration) -> CliOutput {
    run_tollgate_env(args, &[], timeout)
}

/// Like [`run_tollgate`], with more environment variables.
pub fn run_tollgate_env(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> CliOutput {
    let dir = TempDir::new("cli");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut cmd = Command::new(bin("tollgate"));
    cmd.args(args)
        .env("SIM_KEY", OPENAI_PROVIDER_KEY)
        .env("SIM_ANTHROPIC_KEY", ANTHROPIC_PROVIDER_KEY)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"));
    let mut child = cmd.spawn().expect("spawning tollgate");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for tollgate") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`tollgate {}` did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                args.join(" "),
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    CliOutput {
        status,
        stdout: std::fs::read_to_string(&out_path).expect("reading stdout"),
        stderr: std::fs::read_to_string(&err_path).expect("reading stderr"),
    }
}
