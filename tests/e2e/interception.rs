//! Transparent interception with the kernel side loaded, end to end: an unmodified client
//! (Python's urllib, no Tollgate headers, no proxy settings) in its own cgroup POSTs straight to
//! a simulator's address; the kernel redirects the connect to the agent, which forwards the
//! request to that original destination under full metering and records who sent it.
//!
//! Checked: the response came through the agent (`x-tollgate-request-id`), the ledger row has
//! the client's pid, comm, uid and cgroup as `/proc` reports them, the original destination and
//! the simulator's token counts, an attribution rule filled the team; the agent's own upstream
//! connection was not redirected (it would loop; the request succeeding proves it), the
//! destination got the configured key (IPv4, a configured provider) or the client's own key
//! (IPv6, an implicit passthrough provider); non-inference requests reach the original server
//! unmetered; `tollgate status` and `tollgate top --once` report it; after a graceful stop no
//! program of the agent is loaded and its pin directory is gone; after a SIGKILL the programs
//! are gone and `tollgate kernel detach` removes the pins; with `kernel.enabled: off` the agent
//! is a plain proxy and says so in `/readyz`.
//!
//! Needs root, cgroup v2 and a build with the kernel objects; each test prints why it skipped
//! otherwise (and passes). The kernel tests use their own pin directories, cgroups and ports,
//! so they run alongside the rest of the suite.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

use crate::harness::procs::{
    bin, run_tollgate, Proc, TempDir, ANTHROPIC_PROVIDER_KEY, OPENAI_PROVIDER_KEY, SIM_MODEL,
};
use crate::harness::{get, post_raw, AgentConfig, Sim, Tokens};

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fs) = (f.next()?, f.next()?, f.next()?);
        (fs == "cgroup2").then(|| PathBuf::from(dir))
    })
}

fn python() -> &'static str {
    if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Why the kernel tests cannot run here, if they cannot.
pub(crate) fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (loading eBPF needs CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)".into());
    }
    if cgroup2_mount().is_none() {
        return Some("no cgroup v2 mount in /proc/mounts".into());
    }
    let py = Command::new(python())
        .arg("-c")
        .arg("import urllib.request")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !py.is_ok_and(|s| s.success()) {
        return Some("python3 is not installed (the unmodified client is urllib)".into());
    }
    None
}

macro_rules! require_kernel_host {
    () => {
        if let Some(why) = skip_reason() {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

/// A simulator on a given address (the harness's `Sim` binds 127.0.0.1 only).
struct SimAt {
    addr: SocketAddr,
    _proc: Proc,
    _dir: TempDir,
}

impl SimAt {
    fn start(listen: &str) -> SimAt {
        let dir = TempDir::new("sim");
        let mut cmd = Command::new(bin("tollgate-sim"));
        cmd.args(["--listen", listen, "--model", SIM_MODEL, "--zero-delay"]);
        let (proc, addr) = Proc::spawn("tollgate-sim", cmd, dir.path(), "tollgate-sim")
            .expect("starting tollgate-sim");
        SimAt {
            addr,
            _proc: proc,
            _dir: dir,
        }
    }
}

/// How the agent process is started: as the test runs (root, every capability), or through
/// `capsh` holding only the capabilities named.
pub(crate) enum Launch {
    Plain,
    /// uid 0 with every other capability dropped from the bounding set, as a container runtime
    /// starts a root container with `capabilities: {drop: [ALL], add: [...]}`.
    RootWith(&'static [&'static str]),
    /// uid `nobody`, the capabilities raised as ambient ones (a systemd unit's
    /// `AmbientCapabilities=`).
    NobodyWith(&'static [&'static str]),
}

/// Every capability Linux 6.x defines, by capsh's names.
const ALL_CAPS: [&str; 41] = [
    "cap_chown",
    "cap_dac_override",
    "cap_dac_read_search",
    "cap_fowner",
    "cap_fsetid",
    "cap_kill",
    "cap_setgid",
    "cap_setuid",
    "cap_setpcap",
    "cap_linux_immutable",
    "cap_net_bind_service",
    "cap_net_broadcast",
    "cap_net_admin",
    "cap_net_raw",
    "cap_ipc_lock",
    "cap_ipc_owner",
    "cap_sys_module",
    "cap_sys_rawio",
    "cap_sys_chroot",
    "cap_sys_ptrace",
    "cap_sys_pacct",
    "cap_sys_admin",
    "cap_sys_boot",
    "cap_sys_nice",
    "cap_sys_resource",
    "cap_sys_time",
    "cap_sys_tty_config",
    "cap_mknod",
    "cap_lease",
    "cap_audit_write",
    "cap_audit_control",
    "cap_setfcap",
    "cap_mac_override",
    "cap_mac_admin",
    "cap_syslog",
    "cap_wake_alarm",
    "cap_block_suspend",
    "cap_audit_read",
    "cap_perfmon",
    "cap_bpf",
    "cap_checkpoint_restore",
];

impl Launch {
    /// The command that runs `tollgate` this way; the caller appends tollgate's arguments.
    fn command(&self) -> Command {
        let tollgate = bin("tollgate");
        let exec = |caps_args: Vec<String>| {
            let mut cmd = Command::new("capsh");
            cmd.args(caps_args)
                .args(["--", "-c", "exec \"$0\" \"$@\""])
                .arg(&tollgate);
            cmd
        };
        match self {
            Launch::Plain => Command::new(tollgate),
            Launch::RootWith(keep) => {
                let drop: Vec<&str> = ALL_CAPS
                    .iter()
                    .copied()
                    .filter(|c| !keep.contains(c))
                    .collect();
                exec(vec![format!("--drop={}", drop.join(","))])
            }
            Launch::NobodyWith(keep) => exec(vec![
                format!(
                    "--caps={},cap_setuid,cap_setgid,cap_setpcap+eip",
                    keep.join(",")
                ),
                "--keep=1".into(),
                "--user=nobody".into(),
                format!("--addamb={}", keep.join(",")),
            ]),
        }
    }
}

/// `tollgate serve` with the kernel section the test wants, listening on `listen`.
pub(crate) struct KernelAgent {
    /// Where to reach the agent (loopback, the bound port).
    pub(crate) addr: SocketAddr,
    /// `None` once the test stopped or killed it.
    pub(crate) proc: Option<Proc>,
    pub(crate) data_dir: PathBuf,
    pub(crate) pin_dir: PathBuf,
    config_path: PathBuf,
    listen: String,
    _dir: TempDir,
}

impl KernelAgent {
    fn start(config: AgentConfig, extra_yaml: &str, listen: &str) -> KernelAgent {
        Self::launch(config, extra_yaml, listen, &Launch::Plain)
    }

    pub(crate) fn launch(
        mut config: AgentConfig,
        extra_yaml: &str,
        listen: &str,
        launch: &Launch,
    ) -> KernelAgent {
        config.kernel_off = false;
        let dir = TempDir::new("agent-kernel");
        let data_dir = dir.path().join("data");
        let config_path = dir.path().join("tollgate.yaml");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}", unique("tollgate-e2e")));
        let yaml = format!(
            "{}kernel: {{ enabled: auto, pin_dir: {} }}\n{extra_yaml}",
            config.render(&data_dir),
            pin_dir.display()
        );
        std::fs::write(&config_path, yaml).expect("writing the agent config");
        if let Launch::NobodyWith(_) = launch {
            std::fs::create_dir_all(&data_dir).expect("creating the data dir");
            std::os::unix::fs::chown(&data_dir, Some(65534), Some(65534))
                .expect("handing the data dir to nobody");
        }
        let (proc, addr) = serve(launch, &config_path, listen, &dir);
        KernelAgent {
            addr,
            proc: Some(proc),
            data_dir,
            pin_dir,
            config_path,
            listen: listen.to_string(),
            _dir: dir,
        }
    }

    /// A second agent on the same configuration, address, data and pin directories, started
    /// while this one runs: an upgrade's new agent.
    pub(crate) fn successor(&self) -> KernelAgent {
        let dir = TempDir::new("agent-kernel-next");
        let (proc, addr) = serve(&Launch::Plain, &self.config_path, &self.listen, &dir);
        KernelAgent {
            addr,
            proc: Some(proc),
            data_dir: self.data_dir.clone(),
            pin_dir: self.pin_dir.clone(),
            config_path: self.config_path.clone(),
            listen: self.listen.clone(),
            _dir: dir,
        }
    }

    pub(crate) fn readyz(&self) -> Value {
        let r = get(self.addr, "/readyz");
        assert_eq!(r.status, 200, "/readyz: {}", r.text());
        r.json()
    }

    /// Why interception or attribution is off, if it is (the host refused the programs).
    pub(crate) fn kernel_refused(&self) -> Option<String> {
        let ready = self.readyz();
        let k = &ready["kernel"];
        for f in ["interception", "attribution"] {
            if k["features"][f]["active"] != true {
                return Some(format!("{f}: {}", k["features"][f]));
            }
        }
        None
    }

    pub(crate) fn program_ids(&self) -> Vec<u64> {
        self.readyz()["kernel"]["programs"]
            .as_array()
            .map(|p| p.iter().filter_map(|p| p["id"].as_u64()).collect())
            .unwrap_or_default()
    }
}

/// `tollgate serve --config CONFIG --listen LISTEN`, its logs in `dir`; the process and the
/// loopback address it bound.
fn serve(launch: &Launch, config: &Path, listen: &str, dir: &TempDir) -> (Proc, SocketAddr) {
    let mut cmd = launch.command();
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .args(["--listen", listen])
        .env("SIM_KEY", OPENAI_PROVIDER_KEY)
        .env("SIM_ANTHROPIC_KEY", ANTHROPIC_PROVIDER_KEY);
    let (proc, bound) =
        Proc::spawn("tollgate", cmd, dir.path(), "tollgate").expect("starting tollgate");
    (proc, SocketAddr::from(([127, 0, 0, 1], bound.port())))
}

impl Drop for KernelAgent {
    fn drop(&mut self) {
        // Kill (the harness's guard) first: a failed test must not leave pins behind, and
        // the programs die with the process.
        drop(self.proc.take());
        if self.pin_dir.exists() {
            let _ = Command::new(bin("tollgate"))
                .args(["kernel", "detach", "--pin-dir"])
                .arg(&self.pin_dir)
                .output();
        }
    }
}

/// A child cgroup under the v2 root, removed on drop.
struct ChildCgroup {
    dir: PathBuf,
}

impl ChildCgroup {
    fn new() -> ChildCgroup {
        let root = cgroup2_mount().expect("cgroup2 mount");
        let dir = root.join(unique("tollgate-e2e"));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        ChildCgroup { dir }
    }

    fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.dir).expect("stat cgroup").ino()
    }

    /// The cgroup's path as `/proc/PID/cgroup` and the ledger write it.
    fn path(&self) -> String {
        let name = self.dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        format!("/{name}")
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What the unmodified client saw and what `/proc` said about it.
#[derive(Debug)]
struct ClientRun {
    pid: u32,
    comm: String,
    /// The `0::` line of /proc/self/cgroup.
    cgroup: String,
    status: u16,
    request_id: Option<String>,
    body: Value,
}

/// Runs Python's urllib in `cg`: POST `url` with a chat body, its own API key, no Tollgate
/// headers. The script reports its pid, comm and cgroup from /proc before connecting.
fn run_client(cg: &ChildCgroup, url: &str) -> ClientRun {
    const SCRIPT: &str = r#"
import json, os, sys, urllib.request
me = {"pid": os.getpid(),
      "comm": open("/proc/self/comm").read().strip(),
      "cgroup": [l[3:].strip() for l in open("/proc/self/cgroup") if l.startswith("0::")][0]}
body = json.dumps({"model": sys.argv[2], "max_tokens": 8,
                   "messages": [{"role": "user", "content": "who am I, as the kernel sees me?"}]})
req = urllib.request.Request(sys.argv[1], data=body.encode(), method="POST",
      headers={"Content-Type": "application/json", "Authorization": "Bearer sk-client-own"})
try:
    with urllib.request.urlopen(req, timeout=20) as r:
        me.update(status=r.status, request_id=r.headers.get("x-tollgate-request-id"),
                  body=json.loads(r.read()))
except urllib.error.HTTPError as e:
    me.update(status=e.code, request_id=e.headers.get("x-tollgate-request-id"),
              body={"error": e.read().decode(errors="replace")})
print(json.dumps(me), flush=True)
"#;
    let procs = cg.dir.join("cgroup.procs");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > '{}' && exec {} -c \"$0\" \"$1\" \"$2\"",
            procs.display(),
            python()
        ))
        .arg(SCRIPT)
        .arg(url)
        .arg(SIM_MODEL)
        .stdin(Stdio::null())
        .output()
        .expect("running the python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("client printed {stdout:?}: {e}"));
    ClientRun {
        pid: v["pid"].as_u64().expect("pid") as u32,
        comm: v["comm"].as_str().unwrap_or_default().to_string(),
        cgroup: v["cgroup"].as_str().unwrap_or_default().to_string(),
        status: v["status"].as_u64().unwrap_or(0) as u16,
        request_id: v["request_id"].as_str().map(str::to_string),
        body: v["body"].clone(),
    }
}

/// The kernel columns of a ledger row.
#[derive(Debug, PartialEq, Eq)]
struct KernelColumns {
    pid: Option<i64>,
    comm: Option<String>,
    uid: Option<i64>,
    cgroup_id: Option<i64>,
    cgroup_path: Option<String>,
    original_dst: Option<String>,
}

fn kernel_columns(data_dir: &Path, id: &str) -> KernelColumns {
    // Waits for the row to be committed.
    let _ = crate::harness::ledger::row(data_dir, id);
    let conn = Connection::open_with_flags(
        data_dir.join("ledger.sqlite"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("opening the ledger");
    conn.query_row(
        "SELECT pid, comm, uid, cgroup_id, cgroup_path, original_dst FROM usage WHERE id = ?1",
        [id],
        |r| {
            Ok(KernelColumns {
                pid: r.get(0)?,
                comm: r.get(1)?,
                uid: r.get(2)?,
                cgroup_id: r.get(3)?,
                cgroup_path: r.get(4)?,
                original_dst: r.get(5)?,
            })
        },
    )
    .expect("reading the kernel columns")
}

/// One intercepted request from a fresh child cgroup, checked against /proc and the ledger.
pub(crate) fn intercepted_case(agent: &KernelAgent, dst: SocketAddr, provider: &str) -> String {
    let cg = ChildCgroup::new();
    let url = format!("http://{dst}/v1/chat/completions");
    let run = run_client(&cg, &url);
    assert_eq!(run.status, 200, "{run:#?}");
    let id = run
        .request_id
        .clone()
        .unwrap_or_else(|| panic!("the response did not come through the agent: {run:#?}"));
    assert_eq!(run.cgroup, cg.path(), "{run:#?}");

    let row = crate::harness::ledger::row(&agent.data_dir, &id);
    assert_eq!(row.status, 200, "{row:#?}");
    assert_eq!(row.requested_model.as_deref(), Some(SIM_MODEL), "{row:#?}");
    assert_eq!(row.served_model.as_deref(), Some(SIM_MODEL), "{row:#?}");
    assert_eq!(row.provider.as_deref(), Some(provider), "{row:#?}");
    assert_eq!(
        row.tokens(),
        Tokens::from_openai(&run.body["usage"]),
        "{row:#?}"
    );
    assert!(!row.estimated, "{row:#?}");
    // The attribution rule matched the client's cgroup (it sent no identity headers).
    assert_eq!(row.team.as_deref(), Some("kernel-attributed"), "{row:#?}");
    assert_eq!(row.project.as_deref(), Some("interception"), "{row:#?}");

    let k = kernel_columns(&agent.data_dir, &id);
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = i64::from(unsafe { libc::getuid() });
    assert_eq!(
        k,
        KernelColumns {
            pid: Some(i64::from(run.pid)),
            comm: Some(run.comm.clone()),
            uid: Some(uid),
            cgroup_id: Some(cg.id() as i64),
            cgroup_path: Some(cg.path()),
            original_dst: Some(dst.to_string()),
        },
        "{run:#?}"
    );
    id
}

/// Ids of `ids` that `bpftool -j ARGS` still lists.
fn bpftool_lists(args: &[&str], ids: &[u64]) -> Vec<u64> {
    let Ok(out) = Command::new("bpftool").args(args).output() else {
        return Vec::new();
    };
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let mut found = Vec::new();
    collect_ids(&v, ids, &mut found);
    found
}

fn collect_ids(v: &Value, ids: &[u64], found: &mut Vec<u64>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| collect_ids(i, ids, found)),
        Value::Object(map) => {
            for (k, val) in map {
                if k == "id" {
                    if let Some(id) = val.as_u64().filter(|id| ids.contains(id)) {
                        found.push(id);
                    }
                }
                collect_ids(val, ids, found);
            }
        }
        _ => {}
    }
}

fn have_bpftool() -> bool {
    Command::new("bpftool")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits until none of `ids` is loaded or attached under the cgroup root.
pub(crate) fn assert_programs_gone(ids: &[u64]) {
    if !have_bpftool() {
        eprintln!("bpftool not installed; not checking loaded programs");
        return;
    }
    let root = cgroup2_mount().unwrap_or_default();
    let root = root.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let loaded = bpftool_lists(&["-j", "prog", "show"], ids);
        let attached = bpftool_lists(&["-j", "cgroup", "tree", &root], ids);
        if loaded.is_empty() && attached.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still loaded: {loaded:?}, still attached: {attached:?} (of {ids:?})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ipv6_loopback() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

pub(crate) const RULES: &str = "attribution:
  anonymous: attribute_by_kernel
  rules:
    - match: { cgroup: \"/tollgate-e2e-*\", comm: \"python*\" }
      team: kernel-attributed
      project: interception
";

#[test]
fn intercepted_clients_are_metered_attributed_and_detached() {
    require_kernel_host!();
    let v6 = ipv6_loopback();
    let sim4 = Sim::start(&[]);
    let sim6 = v6.then(|| SimAt::start("[::1]:0"));
    // The configured providers are on sim4 (openai and anthropic kinds); nothing is
    // configured for sim6, so it gets an implicit passthrough provider.
    let config = AgentConfig::for_sim(&sim4);
    let mut intercept = vec![format!("\"{}\"", sim4.addr)];
    intercept.extend(sim6.as_ref().map(|s| format!("\"{}\"", s.addr)));
    let extra = format!("intercept: [{}]\n{RULES}", intercept.join(", "));
    let listen = if v6 { "[::]:0" } else { "127.0.0.1:0" };
    let mut agent = KernelAgent::start(config, &extra, listen);
    if let Some(why) = agent.kernel_refused() {
        eprintln!("skipping: the host refused the kernel programs: {why}");
        return;
    }
    let ids = agent.program_ids();
    assert!(ids.len() >= 2, "programs: {ids:?}");

    // IPv4: the destination is a configured provider, which gets its configured key.
    let id4 = intercepted_case(&agent, sim4.addr, "sim");
    // The test process is redirected too: this GET reaches the simulator through the agent,
    // unmetered (not an inference call), and shows what the agent forwarded.
    let last = get(sim4.addr, "/sim/last-request");
    assert_eq!(last.status, 200, "{}", last.text());
    assert!(
        last.header("x-tollgate-request-id").is_none(),
        "passthrough is not metered"
    );
    let last = last.json();
    assert_eq!(
        last["headers"]["authorization"],
        format!("Bearer {OPENAI_PROVIDER_KEY}"),
        "{last}"
    );
    assert_eq!(last["headers"]["x-tollgate-request-id"], id4, "{last}");

    // IPv6: no provider is configured there; the client's own key goes through.
    if let Some(sim6) = &sim6 {
        let id6 = intercepted_case(&agent, sim6.addr, "intercepted");
        let last = get(sim6.addr, "/sim/last-request").json();
        assert_eq!(
            last["headers"]["authorization"], "Bearer sk-client-own",
            "{last}"
        );
        assert_eq!(last["headers"]["x-tollgate-request-id"], id6, "{last}");
    } else {
        eprintln!("no IPv6 loopback here; skipping the IPv6 case");
    }

    // A client that talks to the agent directly is attributed too, without a destination.
    let direct = post_raw(
        agent.addr,
        "/v1/chat/completions",
        &[("x-tollgate-team", "from-header")],
        br#"{"model":"smol","messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#,
    );
    assert_eq!(direct.status, 200, "{}", direct.text());
    let row = crate::harness::ledger::row(&agent.data_dir, direct.request_id());
    assert_eq!(row.team.as_deref(), Some("from-header"), "{row:#?}");
    let k = kernel_columns(&agent.data_dir, direct.request_id());
    assert_eq!(k.pid, Some(i64::from(std::process::id())), "{k:?}");
    assert_eq!(k.original_dst, None, "{k:?}");

    // The metrics label intercepted passthroughs with bounded names.
    let metrics = get(agent.addr, "/metrics").text();
    assert!(
        metrics.contains(r#"model="intercepted",provider="sim",api="chat",status="200""#),
        "{metrics}"
    );

    // `tollgate status` and `tollgate top --once`.
    let addr = agent.addr.to_string();
    let status = run_tollgate(&["status", "--addr", &addr], Duration::from_secs(20));
    assert!(status.status.success(), "{status:#?}");
    assert!(
        status.stdout.contains("interception     active"),
        "{}",
        status.stdout
    );
    let pin_dir = agent.pin_dir.to_string_lossy().into_owned();
    let top = run_tollgate(
        &["top", "--once", "--pin-dir", &pin_dir],
        Duration::from_secs(20),
    );
    assert!(top.status.success(), "{top:#?}");
    let model_line = top
        .stdout
        .lines()
        .find(|l| l.starts_with(SIM_MODEL))
        .unwrap_or_else(|| panic!("no {SIM_MODEL} row:\n{}", top.stdout));
    let requests: u64 = model_line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert_eq!(requests, 1 + u64::from(v6), "{}", top.stdout);
    assert!(top.stdout.contains("/tollgate-e2e-"), "{}", top.stdout);

    // A graceful stop detaches everything.
    let mut proc = agent.proc.take().expect("the agent is running");
    let status = proc.terminate().expect("stopping tollgate");
    assert!(status.success(), "tollgate exited with {status}");
    assert!(
        !agent.pin_dir.exists(),
        "{} outlived the agent",
        agent.pin_dir.display()
    );
    assert_programs_gone(&ids);
    // And the simulator is reached directly again.
    let after = get(sim4.addr, "/sim/last-request");
    assert_eq!(after.status, 200);
    assert!(after.header("x-tollgate-request-id").is_none());
    let _ = id4;
}

#[test]
fn a_killed_agent_leaves_only_pins_and_kernel_detach_removes_them() {
    require_kernel_host!();
    let sim = Sim::start(&[]);
    let agent = KernelAgent::start(AgentConfig::for_sim(&sim), "", "127.0.0.1:0");
    if let Some(why) = agent.kernel_refused() {
        eprintln!("skipping: the host refused the kernel programs: {why}");
        return;
    }
    let ids = agent.program_ids();
    let pin_dir = agent.pin_dir.to_string_lossy().into_owned();
    // While the agent runs, detach refuses.
    let busy = run_tollgate(
        &["kernel", "detach", "--pin-dir", &pin_dir],
        Duration::from_secs(20),
    );
    assert!(!busy.status.success(), "{busy:#?}");
    assert!(busy.stderr.contains("running agent"), "{busy:#?}");

    // The harness's guard SIGKILLs it: no chance to clean up.
    let mut agent = agent;
    drop(agent.proc.take());
    // fd-based links died with the process; the pins did not.
    assert_programs_gone(&ids);
    assert!(agent.pin_dir.join("tg_attr").exists());

    let out = run_tollgate(
        &["kernel", "detach", "--pin-dir", &pin_dir],
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "{out:#?}");
    assert!(
        out.stdout
            .contains(&format!("removed pin {pin_dir}/tg_model_usage")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!("removed {pin_dir}\n")),
        "{}",
        out.stdout
    );
    assert!(!agent.pin_dir.exists());
}

#[test]
fn kernel_off_is_a_plain_proxy_and_says_so() {
    let sim = Sim::start(&[]);
    let direct = SimAt::start("127.0.0.1:0");
    let mut config = AgentConfig::for_sim(&sim);
    config.kernel_off = true;
    // Listed but not intercepted: the kernel side is off.
    let extra = format!("intercept: [\"{}\"]\n", direct.addr);
    let dir = TempDir::new("agent-kernel-off");
    let data_dir = dir.path().join("data");
    let config_path = dir.path().join("tollgate.yaml");
    std::fs::write(&config_path, format!("{}{extra}", config.render(&data_dir)))
        .expect("writing the agent config");
    let mut cmd = Command::new(bin("tollgate"));
    cmd.arg("serve")
        .arg("--config")
        .arg(&config_path)
        .args(["--listen", "127.0.0.1:0"])
        .env("SIM_KEY", OPENAI_PROVIDER_KEY)
        .env("SIM_ANTHROPIC_KEY", ANTHROPIC_PROVIDER_KEY);
    let (_proc, addr) =
        Proc::spawn("tollgate", cmd, dir.path(), "tollgate").expect("starting tollgate");

    let ready = get(addr, "/readyz");
    assert_eq!(ready.status, 200, "{}", ready.text());
    let k = &ready.json()["kernel"];
    assert_eq!(k["enabled"], "off", "{k}");
    assert_eq!(k["loaded"], false, "{k}");
    let features = k["features"].as_object().expect("features");
    assert!(!features.is_empty(), "{k}");
    for (name, f) in features {
        assert_eq!(f["active"], false, "{name}: {k}");
        assert!(
            f["reason"].as_str().is_some_and(|r| r.contains("off")),
            "{name}: {k}"
        );
    }

    // Requests to the agent work, without kernel facts.
    let r = post_raw(
        addr,
        "/v1/chat/completions",
        &[],
        br#"{"model":"smol","messages":[{"role":"user","content":"plain"}],"max_tokens":3}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let row = crate::harness::ledger::row(&data_dir, r.request_id());
    assert_eq!(
        row.tokens(),
        Tokens::from_openai(&r.json()["usage"]),
        "{row:#?}"
    );
    let k = kernel_columns(&data_dir, r.request_id());
    assert_eq!((k.pid, k.cgroup_id, k.original_dst), (None, None, None));
    // The listed destination is reached directly: nothing redirects it.
    let d = post_raw(
        direct.addr,
        "/v1/chat/completions",
        &[],
        br#"{"model":"smollm2","messages":[{"role":"user","content":"direct"}],"max_tokens":3}"#,
    );
    assert_eq!(d.status, 200, "{}", d.text());
    assert!(
        d.header("x-tollgate-request-id").is_none(),
        "{:?}",
        d.headers
    );
}

/// An unmodified client in a team's cgroup sends no key: admission knows its team from the
/// kernel (resolved once per connection, before the first request), so the team's rate limit
/// holds for it, while a direct client without a key is refused.
#[test]
fn an_unlabelled_intercepted_client_is_held_to_its_teams_limit() {
    require_kernel_host!();
    let sim = Sim::start(&[]);
    let mut config = AgentConfig::for_sim(&sim);
    config.governance_yaml = "auth: { mode: keys }\n\
        rate_limits:\n  - scope: { team: kernel-attributed }\n    requests_per_minute: 2\n"
        .into();
    let extra = format!("intercept: [\"{}\"]\n{RULES}", sim.addr);
    let agent = KernelAgent::start(config, &extra, "127.0.0.1:0");
    if let Some(why) = agent.kernel_refused() {
        eprintln!("skipping: the host refused the kernel programs: {why}");
        return;
    }
    let cg = ChildCgroup::new();
    let url = format!("http://{}/v1/chat/completions", sim.addr);
    let runs: Vec<ClientRun> = (0..3).map(|_| run_client(&cg, &url)).collect();
    assert_eq!(
        runs.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 200, 429],
        "{runs:#?}"
    );
    assert!(
        runs[2].body["error"]
            .as_str()
            .is_some_and(|e| e.contains("team=kernel-attributed/requests_per_minute")),
        "{runs:#?}"
    );
    for run in &runs {
        let id = run.request_id.as_deref().expect("answered by the agent");
        let row = crate::harness::ledger::row(&agent.data_dir, id);
        assert_eq!(row.team.as_deref(), Some("kernel-attributed"), "{row:#?}");
    }
    // An engine's native endpoint would spend tokens outside every limit: refused.
    let native = run_client(&cg, &format!("http://{}/generate", sim.addr));
    assert_eq!(native.status, 403, "{native:#?}");
    assert!(
        native.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("unmetered_endpoint")),
        "{native:#?}"
    );
    // The same request sent to the agent directly carries no key and no kernel identity.
    let body = serde_json::json!({"model": "smol", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2});
    let r = post_raw(
        agent.addr,
        "/v1/chat/completions",
        &[],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 401, "{}", r.text());
}
