//! The kernel side on this host, end to end.
//!
//! - `layout`: every `tollgate-common` struct matches the BTF of the built objects (size, field
//!   names and offsets), like cilium's alignchecker. Needs the objects and bpftool only.
//! - `privileged`: loads the programs at the cgroup v2 root and drives real connections from a
//!   child process in its own cgroup. Needs root, cgroup v2 and the objects; each test prints why
//!   it skipped otherwise. These tests attach machine-wide, so they run one at a time and use
//!   their own pin directory and unused loopback ports.

use std::path::{Path, PathBuf};
use std::process::Command;

use tollgate::kernel::objects;

/// Why the objects cannot be tested, if they cannot.
fn objects_missing() -> Option<String> {
    (!objects::built()).then(|| format!("kernel objects not built: {}", objects::BUILD_MISSING))
}

fn bpftool() -> Option<PathBuf> {
    ["/usr/sbin/bpftool", "/usr/bin/bpftool", "/sbin/bpftool"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

#[test]
fn without_objects_load_says_how_to_get_them() {
    if objects::built() {
        eprintln!("skipping: the objects are built, so there is no fallback to check");
        return;
    }
    let cfg = tollgate::kernel::KernelConfig::new(Vec::new(), Vec::new());
    let err = tollgate::kernel::Kernel::load(&cfg)
        .err()
        .unwrap_or_else(|| panic!("loading stub objects succeeded"));
    let msg = err.to_string();
    assert!(msg.contains("kernel features are absent"), "{msg}");
    assert!(msg.contains("apt-get install clang-19 libbpf-dev"), "{msg}");
}

mod layout {
    use super::*;
    use std::collections::HashMap;
    use tollgate_common::layout::ALL;

    /// One BTF struct: size and (member name, byte offset).
    #[derive(Debug, PartialEq, Eq)]
    struct BtfStruct {
        size: usize,
        members: Vec<(String, usize)>,
    }

    /// Parses `bpftool btf dump file X format raw` into its STRUCTs by name.
    fn parse_raw(text: &str) -> HashMap<String, BtfStruct> {
        let mut out = HashMap::new();
        let mut current: Option<(String, BtfStruct)> = None;
        for line in text.lines() {
            if line.starts_with('[') {
                if let Some((name, s)) = current.take() {
                    out.insert(name, s);
                }
                let Some(rest) = line.split_once("] STRUCT '").map(|(_, r)| r) else {
                    continue;
                };
                let Some((name, attrs)) = rest.split_once('\'') else {
                    continue;
                };
                let size = attrs
                    .split_whitespace()
                    .find_map(|a| a.strip_prefix("size="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(usize::MAX);
                current = Some((
                    name.to_owned(),
                    BtfStruct {
                        size,
                        members: Vec::new(),
                    },
                ));
            } else if let (Some((_, s)), Some(member)) = (current.as_mut(), line.strip_prefix('\t'))
            {
                let name = member.split('\'').nth(1).unwrap_or_default().to_owned();
                let bits = member
                    .split_whitespace()
                    .find_map(|a| a.strip_prefix("bits_offset="))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(usize::MAX);
                s.members.push((name, bits / 8));
            }
        }
        if let Some((name, s)) = current {
            out.insert(name, s);
        }
        out
    }

    #[test]
    fn common_structs_match_the_objects_btf() {
        if let Some(why) = objects_missing() {
            eprintln!("skipping: {why}");
            return;
        }
        let Some(bpftool) = bpftool() else {
            eprintln!("skipping: bpftool not installed (apt-get install bpftool)");
            return;
        };
        let dir = std::env::temp_dir().join(format!("tg-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let mut checked = HashMap::<&str, usize>::new();
        for (stem, bytes) in objects::ALL {
            let path = dir.join(format!("{stem}.bpf.o"));
            std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{e}"));
            let out = Command::new(&bpftool)
                .args(["btf", "dump", "file"])
                .arg(&path)
                .args(["format", "raw"])
                .output()
                .unwrap_or_else(|e| panic!("running bpftool: {e}"));
            assert!(
                out.status.success(),
                "bpftool on {stem}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let structs = parse_raw(&String::from_utf8_lossy(&out.stdout));
            // Every shared struct in types.h must be in the table (cilium's alignchecker list).
            for name in structs.keys().filter(|n| n.starts_with("tg_")) {
                assert!(
                    ALL.iter().any(|l| l.c_name == name),
                    "struct {name} in {stem}.bpf.o is missing from tollgate_common::layout::ALL"
                );
            }
            for l in ALL {
                let Some(btf) = structs.get(l.c_name) else {
                    continue;
                };
                let want = BtfStruct {
                    size: l.size,
                    members: l
                        .fields
                        .iter()
                        .map(|f| (f.name.to_owned(), f.offset))
                        .collect(),
                };
                assert_eq!(
                    btf, &want,
                    "struct {} in {stem}.bpf.o differs from tollgate-common",
                    l.c_name
                );
                *checked.entry(l.c_name).or_default() += 1;
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        for l in ALL {
            assert!(
                checked.contains_key(l.c_name),
                "struct {} is in no object's BTF",
                l.c_name
            );
        }
    }
}

mod privileged {
    use super::*;
    use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::process::{Child, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Mutex, PoisonError};
    use std::time::{Duration, Instant};
    use tollgate::kernel::cgroup::{cgroup_id_of, CgroupResolver};
    use tollgate::kernel::{detect_cgroup2_mount, Kernel, KernelConfig, KernelError};
    use tollgate_common::Usage;

    /// Attaching at the cgroup root is machine-wide: one test at a time.
    static SERIAL: Mutex<()> = Mutex::new(());
    static SEQ: AtomicU32 = AtomicU32::new(0);

    fn skip_reason() -> Option<String> {
        if let Some(why) = objects_missing() {
            return Some(why);
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Some(
                "not root (loading eBPF needs CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)".into(),
            );
        }
        if detect_cgroup2_mount().is_none() {
            return Some("no cgroup v2 mount in /proc/mounts".into());
        }
        None
    }

    macro_rules! require_privilege {
        () => {
            if let Some(why) = skip_reason() {
                eprintln!("skipping: {why}");
                return;
            }
        };
    }

    fn unique(prefix: &str) -> String {
        format!(
            "{prefix}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A loopback port nobody listens on (bound then released; good enough on a test host).
    fn unused_port(ip: &str) -> u16 {
        let l = TcpListener::bind(format!("{ip}:0")).unwrap_or_else(|e| panic!("bind {ip}: {e}"));
        l.local_addr().unwrap_or_else(|e| panic!("{e}")).port()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn config(listen: Vec<SocketAddr>, intercept: Vec<SocketAddr>) -> KernelConfig {
        let mut cfg = KernelConfig::new(listen, intercept);
        cfg.pin_dir = PathBuf::from(format!("/sys/fs/bpf/{}", unique("tollgate-test")));
        cfg
    }

    /// A child cgroup under the v2 root, removed on drop.
    struct ChildCgroup {
        dir: PathBuf,
    }

    impl ChildCgroup {
        fn new() -> Self {
            let root = detect_cgroup2_mount().unwrap_or_else(|| panic!("no cgroup2"));
            let dir = root.join(unique("tollgate-test"));
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            Self { dir }
        }

        fn id(&self) -> u64 {
            cgroup_id_of(&self.dir).unwrap_or_else(|e| panic!("{e}"))
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

    fn python() -> &'static str {
        if Path::new("/usr/bin/python3").is_file() {
            "/usr/bin/python3"
        } else {
            "python3"
        }
    }

    /// Starts a client inside `cg` that connects to `dst`, prints its pid, sends "ping" and waits
    /// for the server to close.
    fn spawn_client(cg: &ChildCgroup, dst: SocketAddr) -> Child {
        const SCRIPT: &str = "import os, socket, sys\n\
            host, port = sys.argv[1], int(sys.argv[2])\n\
            fam = socket.AF_INET6 if ':' in host else socket.AF_INET\n\
            s = socket.socket(fam, socket.SOCK_STREAM)\n\
            s.connect((host, port))\n\
            print(os.getpid(), flush=True)\n\
            s.sendall(b'ping')\n\
            s.recv(16)\n";
        let procs = cg.dir.join("cgroup.procs");
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > '{}' && exec {} -c \"$0\" \"$1\" \"$2\"",
                procs.display(),
                python()
            ))
            .arg(SCRIPT)
            .arg(dst.ip().to_string())
            .arg(dst.port().to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning the client: {e}"))
    }

    fn accept_within(listener: &TcpListener, limit: Duration) -> Option<(TcpStream, SocketAddr)> {
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{e}"));
        let deadline = Instant::now() + limit;
        loop {
            match listener.accept() {
                Ok((s, peer)) => {
                    s.set_nonblocking(false).unwrap_or_else(|e| panic!("{e}"));
                    return Some((s, peer));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return None,
            }
        }
    }

    /// Runs one redirected connection from a child cgroup and checks what the agent learns.
    fn redirect_case(kernel: &Kernel, listener: &TcpListener, intercepted: SocketAddr) {
        let cg = ChildCgroup::new();
        let mut child = spawn_client(&cg, intercepted);
        let (mut conn, peer) =
            accept_within(listener, Duration::from_secs(10)).unwrap_or_else(|| {
                panic!("the connection to {intercepted} never reached the listener")
            });
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("{e}"));
        let pid: u32 = line
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("child said {line:?}: {e}"));
        let mut ping = [0u8; 4];
        conn.read_exact(&mut ping).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&ping, b"ping");
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();

        let reader = kernel.attribution_reader();
        let a = reader
            .lookup(peer)
            .unwrap_or_else(|| panic!("no attribution for peer {peer}"));
        assert_eq!(a.tgid, pid, "{a:?}");
        assert_eq!(a.pid, pid, "single-threaded client: {a:?}");
        assert_eq!(a.comm, comm.trim(), "{a:?}");
        assert_eq!(a.cgroup_id, cg.id(), "{a:?}");
        assert_eq!(a.original_dst, Some(intercepted), "{a:?}");
        // SAFETY: getuid has no preconditions and cannot fail.
        assert_eq!(a.uid, unsafe { libc::getuid() });

        // The cgroup id resolves to the child's directory.
        let resolver = CgroupResolver::new(kernel.cgroup_root());
        let info = resolver
            .resolve(a.cgroup_id)
            .unwrap_or_else(|| panic!("cgroup {} not found", a.cgroup_id));
        assert_eq!(
            resolver.dir_of(a.cgroup_id).as_deref(),
            Some(cg.dir.as_path()),
            "{info:?}"
        );

        // A reader on another thread sees the same record.
        let r2 = reader.clone();
        let other = std::thread::spawn(move || r2.lookup(peer))
            .join()
            .unwrap_or_else(|_| panic!("thread"));
        assert_eq!(other.as_ref(), Some(&a));

        conn.write_all(b"pong").unwrap_or_else(|e| panic!("{e}"));
        drop(conn);
        let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
        assert!(status.success(), "client exited with {status}");

        if kernel.features().close_cleanup.is_active() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while reader.lookup(peer).is_some() {
                assert!(
                    Instant::now() < deadline,
                    "the entry for {peer} outlived its connection"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn bpftool_or_skip() -> Option<PathBuf> {
        let t = bpftool();
        if t.is_none() {
            eprintln!("bpftool not installed; skipping its checks");
        }
        t
    }

    fn bpftool_out(tool: &Path, args: &[&str]) -> String {
        let out = Command::new(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("bpftool: {e}"));
        assert!(
            out.status.success(),
            "bpftool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn redirects_and_attributes_ipv4_and_ipv6_then_detaches_cleanly() {
        require_privilege!();
        let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);

        let l4 = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let l6 = TcpListener::bind("[::1]:0").ok();
        let mut listen = vec![l4.local_addr().unwrap_or_else(|e| panic!("{e}"))];
        let icpt4 = addr(&format!("127.0.0.1:{}", unused_port("127.0.0.1")));
        let mut intercept = vec![icpt4];
        let icpt6 = l6.as_ref().map(|l| {
            listen.push(l.local_addr().unwrap_or_else(|e| panic!("{e}")));
            addr(&format!("[::1]:{}", unused_port("[::1]")))
        });
        intercept.extend(icpt6);
        let cfg = config(listen, intercept.clone());
        let kernel = Kernel::load(&cfg).unwrap_or_else(|e| panic!("load: {e}"));
        eprintln!("features: {}", kernel.features());
        let f = kernel.features();
        assert!(
            f.interception.is_active() && f.attribution.is_active() && f.counters.is_active(),
            "{f}"
        );
        assert!(cfg.pin_dir.join("tg_attr").exists());

        // IPv4: a client in its own cgroup is redirected and attributed.
        redirect_case(&kernel, &l4, icpt4);
        // IPv6 over ::1.
        match (&l6, icpt6) {
            (Some(l6), Some(icpt6)) => {
                assert!(f.interception_v6.is_active(), "{f}");
                redirect_case(&kernel, l6, icpt6);
            }
            _ => eprintln!("no IPv6 loopback here; skipping the IPv6 case"),
        }

        // The agent itself (this process) is exempt: its connect goes where it asked, and
        // nobody listens there.
        match TcpStream::connect_timeout(&icpt4, Duration::from_secs(2)) {
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
            Ok(s) => panic!(
                "the agent's own connect was redirected to {:?}",
                s.peer_addr()
            ),
        }
        assert!(
            accept_within(&l4, Duration::from_millis(200)).is_none(),
            "the exempt connect reached the listener"
        );

        // A direct connect to the listener is attributed too, without an original destination.
        let direct = TcpStream::connect(l4.local_addr().unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
        let (_srv, peer) =
            accept_within(&l4, Duration::from_secs(2)).unwrap_or_else(|| panic!("no accept"));
        let a = kernel
            .attribution_reader()
            .lookup(peer)
            .unwrap_or_else(|| panic!("direct connect not attributed"));
        assert_eq!((a.tgid, a.original_dst), (std::process::id(), None));
        drop(direct);

        let hits: u64 = kernel
            .intercepts()
            .iter()
            .filter(|(a, _)| *a == icpt4)
            .map(|(_, h)| *h)
            .sum();
        assert_eq!(hits, 1, "{:?}", kernel.intercepts());
        let stats = kernel.stats().unwrap_or_else(|e| panic!("{e}"));
        eprintln!("stats: {stats:?}");
        assert!(stats.redirects >= 1 && stats.established >= 2, "{stats:?}");
        if kernel.features().close_cleanup.is_active() {
            assert!(stats.closes >= 1, "{stats:?}");
        }

        // Counters: written by the agent, readable by node tools as JSON through the pin.
        let w = kernel.counter_writer();
        let delta = Usage {
            input_tokens: 1200,
            cached_tokens: 800,
            output_tokens: 300,
            requests: 1,
            cost_micro_usd: 4_500,
        };
        w.add_model_usage("gpt-4o-mini", &delta)
            .unwrap_or_else(|e| panic!("{e}"));
        w.add_model_usage("gpt-4o-mini", &delta)
            .unwrap_or_else(|e| panic!("{e}"));
        w.add_cgroup_usage(42, &delta)
            .unwrap_or_else(|e| panic!("{e}"));
        w.add_key_usage(0xfeed, &delta)
            .unwrap_or_else(|e| panic!("{e}"));
        w.set_replica_load(
            "vllm-a",
            tollgate_common::ReplicaLoad {
                running: 3,
                waiting: 1,
                kv_cache_permille: 420,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        w.set_gpu_stats(
            0,
            tollgate_common::GpuStats {
                util_pct: 87,
                mem_used_bytes: 1 << 30,
                mem_total_bytes: 80 << 30,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // Scheduler figures: totals added as requests settle, gauges set each second, both
        // kept in one entry; a tenant's place in a fair queue.
        w.add_target_routing("r0/qwen", 3, 2, 4096)
            .unwrap_or_else(|e| panic!("{e}"));
        w.set_target_gauges(
            "r0/qwen",
            tollgate::kernel::counters::SchedGauges {
                in_flight: 4,
                max_in_flight: 8,
                waiting: 2,
                index_blocks: 900,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        w.add_target_routing("r0/qwen", 1, 0, 0)
            .unwrap_or_else(|e| panic!("{e}"));
        let s = w
            .target_sched("r0/qwen")
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_default();
        assert_eq!(
            (
                s.routed,
                s.prefix_hits,
                s.prefix_bytes,
                s.in_flight,
                s.max_in_flight
            ),
            (4, 2, 4096, 4, 8),
            "{s:?}"
        );
        assert!(s.updated_unix_ms > 0);
        w.set_queue(
            "qwen",
            "team:search",
            tollgate_common::QueueStats {
                waiting_interactive: 5,
                waiting_batch: 1,
                served_tokens: 12_000,
                updated_unix_ms: 0,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            w.queue("qwen", "team:search")
                .ok()
                .flatten()
                .map(|q| (q.waiting_interactive, q.served_tokens)),
            Some((5, 12_000))
        );
        if let Some(tool) = bpftool_or_skip() {
            let pin = cfg.pin_dir.join("tg_queue");
            let text = bpftool_out(&tool, &["map", "dump", "pinned", &pin.to_string_lossy()]);
            let json: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("bpftool did not print JSON ({e}):\n{text}"));
            let entry = json
                .as_array()
                .and_then(|l| l.iter().find(|e| e["key"]["tenant"] == "team:search"))
                .unwrap_or_else(|| panic!("no team:search entry in {text}"));
            assert_eq!(entry["key"]["model"], "qwen", "{text}");
            assert_eq!(entry["value"]["waiting_batch"], 1, "{text}");
            let pin = cfg.pin_dir.join("tg_sched");
            let text = bpftool_out(&tool, &["map", "dump", "pinned", &pin.to_string_lossy()]);
            assert!(text.contains("\"prefix_hits\": 2"), "{text}");
        }
        w.remove_queue("qwen", "team:search")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w.queue("qwen", "team:search").ok().flatten(), None);
        assert_eq!(
            w.model_usage("gpt-4o-mini")
                .ok()
                .flatten()
                .map(|u| u.input_tokens),
            Some(2400)
        );
        if let Some(tool) = bpftool_or_skip() {
            let pin = cfg.pin_dir.join("tg_model_usage");
            let text = bpftool_out(&tool, &["map", "dump", "pinned", &pin.to_string_lossy()]);
            eprintln!("bpftool map dump pinned {}:\n{text}", pin.display());
            let json: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("bpftool did not print JSON ({e}):\n{text}"));
            let entries = json
                .as_array()
                .unwrap_or_else(|| panic!("not a list: {text}"));
            let entry = entries
                .iter()
                .find(|e| e["key"]["name"] == "gpt-4o-mini")
                .unwrap_or_else(|| panic!("no gpt-4o-mini entry in {text}"));
            assert_eq!(entry["value"]["input_tokens"], 2400, "{text}");
            assert_eq!(entry["value"]["cost_micro_usd"], 9000, "{text}");
        }

        // Detach: no program left loaded or attached, no pins, no pin directory.
        let ids: Vec<u32> = kernel.program_ids().iter().map(|(_, id)| *id).collect();
        assert!(ids.len() >= 3, "{ids:?}");
        let root = kernel.cgroup_root().to_owned();
        kernel.detach().unwrap_or_else(|e| panic!("detach: {e}"));
        assert!(
            !cfg.pin_dir.exists(),
            "{} still exists",
            cfg.pin_dir.display()
        );
        if let Some(tool) = bpftool_or_skip() {
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                let progs = bpftool_out(&tool, &["-j", "prog", "show"]);
                let tree = bpftool_out(&tool, &["-j", "cgroup", "tree", &root.to_string_lossy()]);
                let ours = |text: &str| {
                    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
                    let mut found = Vec::new();
                    collect_ids(&v, &ids, &mut found);
                    found
                };
                let (p, t) = (ours(&progs), ours(&tree));
                if p.is_empty() && t.is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "still loaded: {p:?}, still attached: {t:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Every `"id"` in `v` that is one of `ids`.
    fn collect_ids(v: &serde_json::Value, ids: &[u32], found: &mut Vec<u64>) {
        match v {
            serde_json::Value::Array(items) => {
                items.iter().for_each(|i| collect_ids(i, ids, found))
            }
            serde_json::Value::Object(map) => {
                for (k, val) in map {
                    if k == "id" {
                        if let Some(id) = val
                            .as_u64()
                            .filter(|id| ids.iter().any(|x| u64::from(*x) == *id))
                        {
                            found.push(id);
                        }
                    }
                    collect_ids(val, ids, found);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn an_exempt_cgroup_is_not_redirected() {
        require_privilege!();
        let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let l4 = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let icpt = addr(&format!("127.0.0.1:{}", unused_port("127.0.0.1")));
        let cg = ChildCgroup::new();
        let mut cfg = config(
            vec![l4.local_addr().unwrap_or_else(|e| panic!("{e}"))],
            vec![icpt],
        );
        cfg.exempt_cgroup_id = Some(cg.id());
        let kernel = Kernel::load(&cfg).unwrap_or_else(|e| panic!("load: {e}"));
        const SCRIPT: &str = "import socket, sys\n\
            try:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)\n    print('connected')\n\
            except ConnectionRefusedError:\n    print('refused')\n";
        let procs = cg.dir.join("cgroup.procs");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > '{}' && exec {} -c \"$0\" \"$1\" \"$2\"",
                procs.display(),
                python()
            ))
            .arg(SCRIPT)
            .arg(icpt.ip().to_string())
            .arg(icpt.port().to_string())
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "refused",
            "{out:?}"
        );
        assert!(accept_within(&l4, Duration::from_millis(200)).is_none());
        assert_eq!(kernel.intercepts(), vec![(icpt, 0)]);
    }

    #[test]
    fn a_bogus_cgroup_path_is_a_clear_error_and_leaves_nothing() {
        require_privilege!();
        let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let mut cfg = config(vec![addr("127.0.0.1:18080")], Vec::new());
        cfg.cgroup_root = Some(std::env::temp_dir());
        let err = Kernel::load(&cfg)
            .err()
            .unwrap_or_else(|| panic!("loading with a bogus cgroup succeeded"));
        let msg = err.to_string();
        assert!(matches!(err, KernelError::NoCgroup2 { .. }), "{msg}");
        assert!(msg.contains("is not a cgroup v2 mount"), "{msg}");
        assert!(!cfg.pin_dir.exists());
    }

    #[test]
    fn intercepting_the_agents_own_address_is_refused_and_cleans_up() {
        require_privilege!();
        let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let own = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let cfg = config(vec![own], vec![own]);
        let err = Kernel::load(&cfg)
            .err()
            .unwrap_or_else(|| panic!("a looping intercept was accepted"));
        assert!(err.to_string().contains("would loop"), "{err}");
        assert!(
            !cfg.pin_dir.exists(),
            "a failed load left {}",
            cfg.pin_dir.display()
        );
    }

    /// A listener, an intercepted address nobody listens on, and a config redirecting it there.
    fn one_intercept() -> (TcpListener, SocketAddr, KernelConfig) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let icpt = addr(&format!("127.0.0.1:{}", unused_port("127.0.0.1")));
        let cfg = config(
            vec![l.local_addr().unwrap_or_else(|e| panic!("{e}"))],
            vec![icpt],
        );
        (l, icpt, cfg)
    }

    #[test]
    fn a_second_agent_takes_over_without_a_gap_and_owns_the_pins_once_the_first_exits() {
        require_privilege!();
        let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let (l, icpt, cfg) = one_intercept();
        let old = Kernel::load(&cfg).unwrap_or_else(|e| panic!("load: {e}"));
        assert!(old.owns_pin_dir() && old.is_current());
        redirect_case(&old, &l, icpt);

        // The upgrade's new agent, on the same pin directory while the old one runs.
        let new = Kernel::load(&cfg).unwrap_or_else(|e| panic!("take-over: {e}"));
        assert!(new.is_current() && !old.is_current());
        assert!(
            !new.owns_pin_dir(),
            "the old agent still holds the directory"
        );
        assert!(
            new.features().interception.is_active(),
            "{}",
            new.features()
        );
        // The new programs redirect; both agents read the same attribution map.
        redirect_case(&new, &l, icpt);
        redirect_case(&old, &l, icpt);
        // One hand-over at a time.
        match Kernel::load(&cfg) {
            Err(KernelError::Busy { .. }) => {}
            other => panic!("a third agent during a hand-over: {other:?}"),
        }

        // The old agent stops: it leaves the maps to the new one, which becomes the owner.
        let old_ids: Vec<u32> = old.program_ids().iter().map(|(_, id)| *id).collect();
        drop(old);
        assert!(
            cfg.pin_dir.join("tg_attr").exists(),
            "the old agent removed the pins"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !new.owns_pin_dir() {
            assert!(
                Instant::now() < deadline,
                "the new agent never took the directory"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(new.is_current());
        redirect_case(&new, &l, icpt);
        if let Some(tool) = bpftool_or_skip() {
            let v: serde_json::Value =
                serde_json::from_str(&bpftool_out(&tool, &["-j", "prog", "show"]))
                    .unwrap_or_default();
            let mut found = Vec::new();
            collect_ids(&v, &old_ids, &mut found);
            assert!(
                found.is_empty(),
                "the old agent's programs are still loaded: {found:?}"
            );
        }
        new.detach().unwrap_or_else(|e| panic!("detach: {e}"));
        assert!(!cfg.pin_dir.exists());
    }

    #[test]
    fn a_successor_that_stops_first_gives_the_programs_back() {
        require_privilege!();
        let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let (l, icpt, cfg) = one_intercept();
        let old = Kernel::load(&cfg).unwrap_or_else(|e| panic!("load: {e}"));
        let new = Kernel::load(&cfg).unwrap_or_else(|e| panic!("take-over: {e}"));
        assert!(!old.is_current());
        drop(new);
        assert!(old.is_current(), "the running agent acts again");
        redirect_case(&old, &l, icpt);
        // And a later upgrade can take over again.
        let again = Kernel::load(&cfg).unwrap_or_else(|e| panic!("second take-over: {e}"));
        assert!(again.is_current());
        drop(again);
        old.detach().unwrap_or_else(|e| panic!("detach: {e}"));
        assert!(!cfg.pin_dir.exists());
    }

    #[test]
    fn dropping_without_detach_also_cleans_up() {
        require_privilege!();
        let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let cfg = config(
            vec![l.local_addr().unwrap_or_else(|e| panic!("{e}"))],
            Vec::new(),
        );
        let kernel = Kernel::load(&cfg).unwrap_or_else(|e| panic!("load: {e}"));
        let ids: Vec<u32> = kernel.program_ids().iter().map(|(_, id)| *id).collect();
        drop(kernel);
        assert!(!cfg.pin_dir.exists());
        if let Some(tool) = bpftool_or_skip() {
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                let v: serde_json::Value =
                    serde_json::from_str(&bpftool_out(&tool, &["-j", "prog", "show"]))
                        .unwrap_or_default();
                let mut found = Vec::new();
                collect_ids(&v, &ids, &mut found);
                if found.is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "still loaded after drop: {found:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The vendor-library boundary for GPU figures: yields fixed samples.
    struct FakeGpus(Vec<tollgate::telemetry::gpu::GpuSample>);

    impl tollgate::telemetry::gpu::GpuSource for FakeGpus {
        fn devices(
            &mut self,
        ) -> Result<Vec<tollgate::telemetry::gpu::GpuSample>, tollgate::telemetry::gpu::GpuError>
        {
            Ok(self.0.clone())
        }
    }

    #[test]
    fn gpu_samples_reach_the_pinned_tg_gpu_map() {
        use std::sync::Arc;
        use tollgate::telemetry::control::GpuSampler;
        use tollgate::telemetry::gpu::{GpuBoard, GpuSample};
        require_privilege!();
        let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let cfg = config(
            vec![l.local_addr().unwrap_or_else(|e| panic!("{e}"))],
            Vec::new(),
        );
        let kernel = Kernel::load(&cfg).unwrap_or_else(|e| panic!("load: {e}"));
        assert!(
            kernel.features().counters.is_active(),
            "{}",
            kernel.features()
        );
        let samples = vec![
            GpuSample {
                index: 0,
                utilization_pct: 87,
                memory_used_bytes: 1 << 30,
                memory_total_bytes: 80 << 30,
            },
            GpuSample {
                index: 3,
                utilization_pct: 12,
                memory_used_bytes: 5 << 30,
                memory_total_bytes: 80 << 30,
            },
        ];
        let board = Arc::new(GpuBoard::default());
        let mut sampler = GpuSampler::new(
            Box::new(FakeGpus(samples)),
            board.clone(),
            Some(kernel.counter_writer()),
        );
        assert_eq!(sampler.sample_once().unwrap_or_else(|e| panic!("{e}")), 2);
        assert_eq!(board.samples().len(), 2);

        let Some(tool) = bpftool_or_skip() else {
            return;
        };
        let pin = cfg.pin_dir.join("tg_gpu");
        let text = bpftool_out(&tool, &["map", "dump", "pinned", &pin.to_string_lossy()]);
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("bpftool did not print JSON ({e}):\n{text}"));
        let entries = v.as_array().unwrap_or_else(|| panic!("{text}"));
        let slot = |i: u64| {
            entries
                .iter()
                .find(|e| e["key"] == i)
                .map(|e| e["value"].clone())
                .unwrap_or_else(|| panic!("no slot {i}:\n{text}"))
        };
        let g0 = slot(0);
        assert_eq!(g0["util_pct"], 87, "{g0}");
        assert_eq!(g0["mem_used_bytes"], 1u64 << 30, "{g0}");
        assert_eq!(g0["mem_total_bytes"], 80u64 << 30, "{g0}");
        assert!(
            g0["updated_unix_ms"].as_u64().is_some_and(|t| t > 0),
            "{g0}"
        );
        assert_eq!(slot(3)["util_pct"], 12);
        assert_eq!(slot(1)["updated_unix_ms"], 0, "slot 1 is no GPU");
        kernel.detach().unwrap_or_else(|e| panic!("detach: {e}"));
    }

    /// A listener in an `SO_REUSEPORT` group on `port` (0: a new one), with a deep backlog.
    fn reuseport_listener(port: u16) -> TcpListener {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap_or_else(|e| panic!("{e}"));
        s.set_reuse_port(true).unwrap_or_else(|e| panic!("{e}"));
        let at: SocketAddr = format!("127.0.0.1:{port}")
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        s.bind(&at.into()).unwrap_or_else(|e| panic!("{e}"));
        s.listen(1024).unwrap_or_else(|e| panic!("{e}"));
        s.into()
    }

    /// Connects `n` clients to a two-listener group, closes the first listener while its
    /// queue is full, and returns how many the second one accepts with their byte intact.
    fn survivors(migrate: bool, n: usize) -> usize {
        let first = reuseport_listener(0);
        let port = first.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
        let second = reuseport_listener(port);
        if migrate {
            tollgate::kernel::reuseport::enable_migration(&first)
                .unwrap_or_else(|e| panic!("attaching tg_reuseport: {e}"));
        }
        let clients: Vec<TcpStream> = (0..n)
            .map(|i| {
                let mut c =
                    TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{e}"));
                c.write_all(&[i as u8]).unwrap_or_else(|e| panic!("{e}"));
                c
            })
            .collect();
        // Every handshake is complete (connect returned); the kernel spread them over both.
        drop(first);
        let mut seen = Vec::new();
        while let Some((mut s, _)) = accept_within(&second, Duration::from_millis(300)) {
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap_or_else(|e| panic!("{e}"));
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                seen.push(b[0]);
            }
        }
        drop(clients);
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }

    #[test]
    fn connections_queued_on_a_closing_listener_move_to_the_one_that_stays() {
        if let Some(why) = objects_missing() {
            eprintln!("skipping: {why}");
            return;
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: not root (attaching sk_reuseport needs CAP_BPF, CAP_NET_ADMIN)");
            return;
        }
        assert_eq!(
            survivors(true, 64),
            64,
            "every queued connection reaches the listener that stays"
        );
        // Without the program (and with the host-wide switch off) the closed listener's queue is
        // reset: the test above could fail. (64 connections all hashed to one listener: 2^-63.)
        let host_wide = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
            .is_ok_and(|v| v.trim() == "1");
        if !host_wide {
            assert!(
                survivors(false, 64) < 64,
                "without migration some are reset"
            );
        }
    }
}
