//! Replica load scraped from the engine's `/metrics`, end to end: a paced simulator (TTFT 500 ms,
//! slow tokens) behind the agent with `replicas.scrape_interval_ms: 100`; streaming requests held
//! open from threads must show up as `tollgate_replica_requests_running{provider="sim"}` ≥ 1 on
//! the agent's `/metrics` while they run, and the gauge must return to 0 afterwards. `/readyz`
//! reports the GPU counters off on a host without NVML.
//!
//! With the kernel side available (root, cgroup v2, BPF), the agent runs with its own
//! `kernel.pin_dir` and the pinned `tg_replica` map must say the same (read with
//! `tollgate top --once`); otherwise those asserts are skipped with the reason printed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::http::{request_bytes, Client};
use crate::harness::procs::{
    bin, run_tollgate, Proc, TempDir, ANTHROPIC_PROVIDER_KEY, OPENAI_PROVIDER_KEY,
};
use crate::harness::{chat_body, get, AgentConfig, Sim};

/// Why the pinned maps cannot be checked here, if they cannot.
fn kernel_skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (loading eBPF needs CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)".into());
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
    {
        return Some("no cgroup v2 mount in /proc/mounts".into());
    }
    None
}

/// `tollgate serve` with a replicas section and, when `pin_dir` is set, its own pin directory.
struct ScrapingAgent {
    addr: SocketAddr,
    proc: Option<Proc>,
    pin_dir: Option<PathBuf>,
    _dir: TempDir,
}

impl ScrapingAgent {
    fn start(sim: &Sim, pin_dir: Option<PathBuf>) -> ScrapingAgent {
        let mut config = AgentConfig::for_sim(sim);
        config.response_timeout_ms = 10_000;
        config.read_timeout_ms = 10_000;
        let dir = TempDir::new("agent-replicas");
        let data_dir = dir.path().join("data");
        let config_path = dir.path().join("tollgate.yaml");
        let mut yaml = match &pin_dir {
            Some(pin) => {
                config.kernel_off = false;
                format!(
                    "{}kernel: {{ enabled: auto, pin_dir: {} }}\n",
                    config.render(&data_dir),
                    pin.display()
                )
            }
            None => config.render(&data_dir),
        };
        yaml.push_str("replicas: { scrape: true, scrape_interval_ms: 100, timeout_ms: 1000 }\n");
        std::fs::write(&config_path, yaml).expect("writing the agent config");
        let mut cmd = Command::new(bin("tollgate"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .args(["--listen", "127.0.0.1:0"])
            .env("SIM_KEY", OPENAI_PROVIDER_KEY)
            .env("SIM_ANTHROPIC_KEY", ANTHROPIC_PROVIDER_KEY);
        let (proc, addr) =
            Proc::spawn("tollgate", cmd, dir.path(), "tollgate").expect("starting tollgate");
        ScrapingAgent {
            addr,
            proc: Some(proc),
            pin_dir,
            _dir: dir,
        }
    }
}

impl Drop for ScrapingAgent {
    fn drop(&mut self) {
        drop(self.proc.take());
        if let Some(pin) = &self.pin_dir {
            if pin.exists() {
                let _ = Command::new(bin("tollgate"))
                    .args(["kernel", "detach", "--pin-dir"])
                    .arg(pin)
                    .output();
            }
        }
    }
}

/// The value of `name{provider="sim"}` on the agent's `/metrics`, if present.
fn replica_gauge(agent: SocketAddr, name: &str) -> Option<f64> {
    let text = get(agent, "/metrics").text();
    let prefix = format!("{name}{{provider=\"sim\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Polls `check` every 50 ms until it returns true or `limit` passes.
fn wait_for(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `sim` row of `tollgate top --once`: (running, waiting).
fn top_replica(pin_dir: &std::path::Path) -> Option<(u64, u64)> {
    let pin = pin_dir.to_string_lossy().into_owned();
    let top = run_tollgate(
        &["top", "--once", "--pin-dir", &pin],
        Duration::from_secs(20),
    );
    assert!(top.status.success(), "{top:#?}");
    let line = top
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some("sim"))?;
    let mut f = line.split_whitespace().skip(1);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

#[test]
fn running_requests_show_up_and_clear() {
    let sim = Sim::start_paced(&["--ttft-base-ms", "500", "--itl-base-ms", "40"]);
    let skip = kernel_skip_reason();
    let pin_dir = match &skip {
        None => Some(PathBuf::from(format!(
            "/sys/fs/bpf/tollgate-e2e-replicas-{}-{}",
            std::process::id(),
            {
                static SEQ: AtomicUsize = AtomicUsize::new(0);
                SEQ.fetch_add(1, Ordering::Relaxed)
            }
        ))),
        Some(why) => {
            eprintln!("skipping the tg_replica asserts: {why}");
            None
        }
    };
    let agent = ScrapingAgent::start(&sim, pin_dir.clone());

    // Kernel counters may still be refused (no BTF, a build without objects): then skip those.
    let ready = get(agent.addr, "/readyz").json();
    assert!(ready["gpu"]["active"].is_boolean(), "{ready}");
    if ready["gpu"]["active"] == false {
        assert!(
            ready["gpu"]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{ready}"
        );
    }
    let counters_on = ready["kernel"]["features"]["counters"]["active"] == true;
    if pin_dir.is_some() && !counters_on {
        eprintln!(
            "skipping the tg_replica asserts: counters are off ({})",
            ready["kernel"]["features"]["counters"]
        );
    }
    let pin_dir = pin_dir.filter(|_| counters_on);

    // Idle first: the gauge exists and reads 0.
    assert!(
        wait_for(Duration::from_secs(10), || replica_gauge(
            agent.addr,
            "tollgate_replica_requests_running"
        ) == Some(0.0)),
        "idle gauge never read 0:\n{}",
        get(agent.addr, "/metrics").text()
    );

    // Three streams, each ~0.5 s to the first token and 30 tokens at 40 ms+: about 2 s running.
    let addr = agent.addr;
    let streams: Vec<_> = (0..3)
        .map(|i| {
            std::thread::spawn(move || {
                let body = chat_body("smol", &format!("replica load {i}"), 30, true).to_string();
                let mut c = Client::connect(addr);
                c.set_read_timeout(Duration::from_secs(15));
                c.send(&request_bytes(
                    "POST",
                    "/v1/chat/completions",
                    &[("connection", "close")],
                    body.as_bytes(),
                ))
                .expect("sending the stream request");
                let r = c.read_response().expect("reading the stream");
                assert_eq!(r.status, 200, "{}", r.text());
            })
        })
        .collect();

    let mut peak = 0.0f64;
    let seen = wait_for(Duration::from_secs(10), || {
        let v = replica_gauge(addr, "tollgate_replica_requests_running").unwrap_or(0.0);
        peak = peak.max(v);
        v >= 1.0
    });
    assert!(
        seen,
        "running never reached 1:\n{}",
        get(addr, "/metrics").text()
    );
    if let Some(pin) = &pin_dir {
        let in_map = wait_for(Duration::from_secs(5), || {
            top_replica(pin).is_some_and(|(running, _)| running >= 1)
        });
        assert!(
            in_map,
            "tg_replica never showed a running request: {:?}",
            top_replica(pin)
        );
    }
    for s in streams {
        s.join().expect("a stream thread failed");
    }

    assert!(
        wait_for(Duration::from_secs(10), || replica_gauge(
            addr,
            "tollgate_replica_requests_running"
        ) == Some(0.0)),
        "running did not return to 0:\n{}",
        get(addr, "/metrics").text()
    );
    assert_eq!(
        replica_gauge(addr, "tollgate_replica_requests_waiting"),
        Some(0.0)
    );
    let kv = replica_gauge(addr, "tollgate_replica_kv_cache_usage_ratio").expect("kv gauge");
    assert!((0.0..=1.0).contains(&kv), "{kv}");
    assert_eq!(
        replica_gauge(addr, "tollgate_replica_scrape_errors_total"),
        Some(0.0)
    );
    // Only the openai-kind provider is scraped.
    assert!(!get(addr, "/metrics")
        .text()
        .contains("tollgate_replica_scrape_errors_total{provider=\"sim-anthropic\"}"));
    if let Some(pin) = &pin_dir {
        let cleared = wait_for(Duration::from_secs(5), || top_replica(pin) == Some((0, 0)));
        assert!(
            cleared,
            "tg_replica did not return to 0: {:?}",
            top_replica(pin)
        );
    }
    eprintln!("peak running seen on /metrics: {peak}");
}
