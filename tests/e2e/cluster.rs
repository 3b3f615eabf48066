//! Cluster mode: several agents, one real `redis-server` (the Debian package, started here on a
//! free loopback port and stopped by its pid), one budget. Uneven load across the agents spends
//! it to the end and never past it; an agent killed mid-run takes back its own leases; Redis
//! killed and restarted leaves the agents enforcing, then resynchronised.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::procs::free_port;
use crate::harness::{chat_body, post_raw, Sim, Stack};

/// A redis-server on a loopback port, without persistence; killed on drop.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start_on(port: u16) -> Redis {
        Redis::start_with(port, &[])
    }

    /// A redis-server with `extra` arguments (a config file first, for a Sentinel).
    fn start_with(port: u16, extra: &[&str]) -> Redis {
        let child = Command::new("redis-server")
            .args(extra)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server; `cargo xtask test` installs it)");
        let r = Redis { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.cli(&["PING"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn start() -> Redis {
        Redis::start_on(free_port())
    }

    fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// The lease hash of the tokens of the one shared budget (`None` before any lease).
    fn lease_key(&self) -> Option<String> {
        let keys = self.cli(&["--scan", "--pattern", "tollgate:lease:*:tokens:*"]);
        keys.lines().next().map(str::to_string)
    }

    fn field(&self, field: &str) -> u64 {
        self.lease_key()
            .map(|k| self.cli(&["HGET", &k, field]))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

const BUDGET: u64 = 24_000;
/// `lease_fraction` × budget: the most one agent holds at once.
const MAX_LEASE: u64 = 480;

fn agent(redis: u16, node: &str, budget: u64) -> Stack {
    agent_with(
        redis,
        node,
        &format!("budgets:\n  - name: team-day\n    scope: {{team: t}}\n    tokens: {budget}\n    window: day\n"),
    )
}

fn agent_with(redis: u16, node: &str, rules: &str) -> Stack {
    agent_on(
        &format!("redis: \"redis://127.0.0.1:{redis}/0\""),
        node,
        rules,
    )
}

/// An agent whose `cluster:` finds Redis by `target` (`redis: ...`, `redis_cluster: [...]` or
/// `sentinel: {...}`).
fn agent_on(target: &str, node: &str, rules: &str) -> Stack {
    let yaml = format!(
        "cluster: {{{target}, node: {node}, lease_fraction: 0.02, idle_return_ms: 1000}}\n{rules}"
    );
    Stack::custom(Sim::start(&[]), move |c| {
        c.workers = 1;
        c.governance_yaml.push_str(&yaml);
    })
}

fn post_as_team_t(addr: SocketAddr, body: &str) -> crate::harness::Response {
    post_raw(
        addr,
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("x-tollgate-team", "t"),
        ],
        body.as_bytes(),
    )
}

/// Sends as team `t` until `stop`; returns (200s, 429 budget_exceeded) counts. Adds each
/// answered request's tokens to `tokens`.
fn hammer(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    until_exhausted: bool,
    tokens: Arc<AtomicU64>,
) -> (u64, u64) {
    let body = chat_body("smol", "spend a little", 20, false).to_string();
    let (mut ok, mut refused, mut refused_in_a_row) = (0, 0, 0);
    while !stop.load(Ordering::Relaxed) {
        let r = post_as_team_t(addr, &body);
        match r.status {
            200 => {
                ok += 1;
                refused_in_a_row = 0;
                let used = r.json()["usage"]["total_tokens"].as_u64().unwrap_or(0);
                tokens.fetch_add(used, Ordering::Relaxed);
            }
            429 => {
                assert_eq!(r.json()["error"]["code"], "budget_exceeded", "{}", r.text());
                refused += 1;
                refused_in_a_row += 1;
                if until_exhausted && refused_in_a_row >= 5 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            other => panic!("status {other}: {}", r.text()),
        }
    }
    (ok, refused)
}

/// Tokens team `t` spent according to an agent's ledger (what is committed now).
fn spent(data_dir: &Path) -> u64 {
    spent_in(&crate::harness::ledger::all(data_dir))
}

fn spent_in(rows: &[crate::harness::Row]) -> u64 {
    rows.iter()
        .filter(|r| r.status == 200)
        .map(|r| (r.input_tokens + r.output_tokens) as u64)
        .sum()
}

/// Tokens team `t` spent according to an agent's ledger once it holds a row for each of the
/// `served` responses (commits trail responses; the journal has them all along).
fn spent_once_committed(data_dir: &Path, served: u64) -> u64 {
    let rows = crate::harness::ledger::at_least(data_dir, served as usize, |r| r.status == 200);
    let committed = rows.iter().filter(|r| r.status == 200).count() as u64;
    assert!(
        committed >= served,
        "{served} responses served, {committed} rows committed"
    );
    spent_in(&rows)
}

fn readyz(stack: &Stack) -> serde_json::Value {
    crate::harness::get(stack.agent.addr, "/readyz").json()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn three_agents_spend_one_budget_to_the_end_and_never_past_it() {
    let redis = Redis::start();
    let mut agents: Vec<Stack> = ["a", "b", "c"]
        .iter()
        .map(|n| agent(redis.port, n, BUDGET))
        .collect();
    for a in &agents {
        wait_for("cluster mode", || readyz(a)["cluster"]["redis"] == "up");
    }
    // Uneven load: four clients on a, two on b, one on c.
    let served_tokens = Arc::new(AtomicU64::new(0));
    let load = |agents: &[Stack], until_exhausted: bool, stop: &Arc<AtomicBool>| {
        let counts = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = [(0usize, 4), (1, 2), (2, 1)]
            .iter()
            .flat_map(|&(i, n)| {
                let addr = agents[i].agent.addr;
                (0..n).map(move |_| (i, addr))
            })
            .map(|(i, addr)| {
                let (stop, counts, tokens) = (stop.clone(), counts.clone(), served_tokens.clone());
                std::thread::spawn(move || {
                    let c = hammer(addr, stop, until_exhausted, tokens);
                    counts.lock().unwrap().push((i, c));
                })
            })
            .collect();
        (threads, counts)
    };
    // A first stretch, then agent b is killed mid-load and restarted on its data dir.
    let stop = Arc::new(AtomicBool::new(false));
    let (threads, first_counts) = load(&agents, false, &stop);
    // Until about 40 % of the budget is spent, not for a fixed time: on a fast machine a fixed
    // stretch spent nearly all of it and left the last stretch too little to reach every
    // agent. Counted from the answers the clients got, not from the ledgers: their commits
    // trail the answers (the writer runs in the idle CPU class), and on a loaded machine the
    // stretch ran on until nearly all of the budget was gone.
    let started = Instant::now();
    while served_tokens.load(Ordering::Relaxed) < BUDGET * 2 / 5
        && started.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client");
    }
    let b_spent = spent(&agents[1].agent.data_dir);
    let b_held = redis.field("node:b");
    assert!(b_spent > 0, "b served nothing");
    agents[1].agent.crash_and_restart(1);
    wait_for("b back in cluster mode", || {
        readyz(&agents[1])["cluster"]["redis"] == "up"
    });
    // Its leases are its own again, not lost and not taken twice.
    std::thread::sleep(Duration::from_millis(200));
    let b_after = redis.field("node:b");
    assert!(
        b_after >= b_spent && b_after <= b_held.max(b_spent) + MAX_LEASE,
        "b spent {b_spent}, held {b_held} before the crash, {b_after} after"
    );
    // Then everyone spends until the budget is gone.
    let stop = Arc::new(AtomicBool::new(false));
    let (threads, counts) = load(&agents, true, &stop);
    for t in threads {
        t.join().expect("client");
    }
    let ok_of = |counts: &Mutex<Vec<(usize, (u64, u64))>>, i: usize| -> u64 {
        counts
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| *n == i)
            .map(|(_, (ok, _))| *ok)
            .sum()
    };
    let served: Vec<u64> = (0..3).map(|i| ok_of(&counts, i)).collect();
    // Every response of both stretches has its row (b's first-stretch rows by journal replay).
    let per_agent: Vec<u64> = agents
        .iter()
        .enumerate()
        .map(|(i, a)| spent_once_committed(&a.agent.data_dir, ok_of(&first_counts, i) + served[i]))
        .collect();
    let total: u64 = per_agent.iter().sum();
    eprintln!("served in the last stretch {served:?}; spent per agent {per_agent:?}; total {total} of {BUDGET}; redis total {}", redis.field("total"));
    assert!(
        total <= BUDGET,
        "overspent: {total} of {BUDGET} ({per_agent:?})"
    );
    assert!(
        total + 3 * MAX_LEASE >= BUDGET,
        "budget stranded in leases: {total} of {BUDGET} spent ({per_agent:?})"
    );
    assert!(
        served.iter().all(|n| *n > 0),
        "an agent got none of the budget left: {served:?}"
    );
    assert!(redis.field("total") <= BUDGET);
    // Every agent's budget view shows the cluster's spend, not only its own. Each agent
    // reports its spend and reads the sum once a second, so the views converge within about
    // two seconds of the last request.
    for a in &agents {
        let seen = || -> f64 {
            a.agent
                .metrics()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("tollgate_budget_cluster_used_tokens{budget=\"team-day\"} ")
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        let close = |v: f64| (v - total as f64).abs() <= total as f64 * 0.01;
        let deadline = Instant::now() + Duration::from_secs(4);
        while !close(seen()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let v = seen();
        assert!(close(v), "cluster view {v}, spent {total}");
    }
    // Redis operations follow lease refills, not requests.
    let m = agents[0].agent.metrics();
    let ops: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_cluster_redis_ops_total{node=\"a\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    assert!(ops > 0.0, "{m}");
}

#[test]
fn losing_redis_keeps_enforcing_then_resynchronises() {
    let mut redis = Redis::start();
    let port = redis.port;
    let agents: Vec<Stack> = ["x", "y"]
        .iter()
        .map(|n| agent(port, n, 1_000_000))
        .collect();
    for a in &agents {
        wait_for("cluster mode", || readyz(a)["cluster"]["redis"] == "up");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = agents
        .iter()
        .map(|a| {
            let (addr, stop) = (a.agent.addr, stop.clone());
            std::thread::spawn(move || hammer(addr, stop, false, Arc::default()))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    redis.kill();
    for (a, node) in agents.iter().zip(["x", "y"]) {
        wait_for("redis down", || readyz(a)["cluster"]["redis"] == "down");
        let r = readyz(a);
        assert_eq!(r["status"], "ready", "{r}");
        assert_eq!(r["cluster"]["mode"], "local share", "{r}");
        let m = a.agent.metrics();
        assert!(
            m.contains(&format!("tollgate_cluster_redis_up{{node=\"{node}\"}} 0")),
            "{m}"
        );
    }
    // Requests keep being served from the leases and the local share.
    std::thread::sleep(Duration::from_millis(800));
    let during: Vec<u64> = agents.iter().map(|a| spent(&a.agent.data_dir)).collect();
    let redis = Redis::start_on(port);
    for a in &agents {
        wait_for("redis back", || readyz(a)["cluster"]["redis"] == "up");
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for t in threads {
        let (ok, refused) = t.join().expect("client");
        assert_eq!(refused, 0, "a budget of a million tokens refused requests");
        served += ok;
    }
    std::thread::sleep(Duration::from_millis(300));
    // The new Redis knows every agent's spend, counted once: what each holds covers what it
    // spent, plus at most a lease of headroom (and what the last requests reserved beyond
    // what they used, given back to the lease as they settled).
    for (a, node) in agents.iter().zip(["x", "y"]) {
        let spent = spent(&a.agent.data_dir);
        let held = redis.field(&format!("node:{node}"));
        assert!(
            held >= spent && held <= spent + 1_000_000 / 50 + 2_000,
            "{node}: spent {spent}, Redis holds {held}"
        );
        let m = a.agent.metrics();
        assert!(
            m.contains(&format!("tollgate_cluster_redis_up{{node=\"{node}\"}} 1")),
            "{m}"
        );
    }
    assert!(
        during.iter().all(|s| *s > 0) && served > 0,
        "{during:?} {served}"
    );
    let total = redis.field("total");
    let sum: u64 = ["x", "y"]
        .iter()
        .map(|n| redis.field(&format!("node:{n}")))
        .sum();
    assert_eq!(total, sum, "the total is the sum of the agents' shares");
}

/// Sends as team `t` for `run`; returns (200s, 429s).
fn for_a_while(addr: SocketAddr, run: Duration) -> (u64, u64) {
    let body = chat_body("smol", "rate me", 2, false).to_string();
    let (mut ok, mut limited) = (0, 0);
    let end = Instant::now() + run;
    while Instant::now() < end {
        let r = post_as_team_t(addr, &body);
        match r.status {
            200 => ok += 1,
            429 => {
                limited += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            other => panic!("status {other}: {}", r.text()),
        }
    }
    (ok, limited)
}

#[test]
fn a_rate_limit_holds_across_agents_and_shares_follow_demand() {
    let redis = Redis::start();
    // 120 requests a minute for the team, cluster-wide: a burst of 120, then 2 a second.
    let rules = "rate_limits:\n  - scope: {team: t}\n    requests_per_minute: 120\n";
    let agents: Vec<Stack> = ["r1", "r2"]
        .iter()
        .map(|n| agent_with(redis.port, n, rules))
        .collect();
    for a in &agents {
        wait_for("cluster mode", || readyz(a)["cluster"]["redis"] == "up");
    }
    // Both have reported their (zero) demand; after the next sync each holds half the limit.
    wait_for("both agents' demand in Redis", || {
        let key = redis.cli(&["--scan", "--pattern", "tollgate:rate:*"]);
        key.lines()
            .next()
            .is_some_and(|k| redis.cli(&["HLEN", k]) == "2")
    });
    std::thread::sleep(Duration::from_millis(2200));
    let run = Duration::from_secs(3);
    let threads: Vec<_> = [(0usize, 3), (1, 1)]
        .iter()
        .flat_map(|&(i, n)| {
            let addr = agents[i].agent.addr;
            (0..n).map(move |_| (i, addr))
        })
        .map(|(i, addr)| std::thread::spawn(move || (i, for_a_while(addr, run))))
        .collect();
    let mut ok = [0u64; 2];
    for t in threads {
        let (i, (served, _)) = t.join().expect("client");
        ok[i] += served;
    }
    let total = ok[0] + ok[1];
    eprintln!("admitted per agent {ok:?}, total {total}");
    // Alone, each agent would admit its own 120 + 6: 252 in all. Together: the burst of 120
    // plus 2 a second, and what a share change lets through.
    assert!(
        total <= 120 + 6 + 20,
        "the agents together admitted {total} ({ok:?})"
    );
    assert!(total >= 100, "the limit was not used: {total} ({ok:?})");
    assert!(ok[1] > 0, "the quieter agent got nothing: {ok:?}");
}

/// An agent that requires keys, with an admin listener, in a cluster on `redis`.
fn keyed_agent(redis: u16, node: &str) -> Stack {
    let yaml = format!(
        "auth: {{ mode: keys }}\ncluster: {{redis: \"redis://127.0.0.1:{redis}/0\", node: {node}}}\n"
    );
    Stack::custom(Sim::start(&[]), move |c| {
        c.workers = 1;
        c.admin = Some(true);
        c.governance_yaml = yaml;
    })
}

/// The status of one chat request with `key`.
fn status_with(stack: &Stack, key: &str) -> u16 {
    crate::governance::smol_as(stack, key, 8).status
}

fn wait_status(what: &str, stack: &Stack, key: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = status_with(stack, key);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: status {got}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_key_made_on_one_agent_works_on_every_agent_and_its_revocation_too() {
    let redis = Redis::start();
    let a = keyed_agent(redis.port, "ka");
    let b = keyed_agent(redis.port, "kb");
    let (key, id) =
        crate::governance::create_key(&a, serde_json::json!({"name": "shared", "team": "search"}));
    assert_eq!(status_with(&a, &key), 200, "on the agent that made it");
    let made = Instant::now();
    wait_status("the key on b", &b, &key, 200);
    assert!(
        made.elapsed() < Duration::from_secs(5),
        "{:?}",
        made.elapsed()
    );
    // Served by b under the key's identity.
    let r = crate::governance::smol_as(&b, &key, 8);
    assert_eq!(r.status, 200, "{}", r.text());
    let row = b.agent.row_of(&r);
    assert_eq!(row.key_id.as_deref(), Some(id.as_str()));
    assert_eq!(row.team.as_deref(), Some("search"));
    // Redis holds the hash, never the secret.
    let stored = redis.cli(&["HGET", "tollgate:{keys}", &id]);
    assert!(
        stored.contains("\"hash\":\"") && !stored.contains(&key),
        "{stored}"
    );
    // b's store keeps it: a restart without Redis still knows it (checked below for c).
    // An agent started afterwards learns it at start.
    let c = keyed_agent(redis.port, "kc");
    wait_status("the key on a late agent", &c, &key, 200);
    // Revoked on b: refused by a and c within seconds.
    let addr = b.agent.admin_addr().expect("b's admin listener");
    let r = crate::governance::admin(addr, "POST", &format!("/admin/keys/{id}/revoke"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(status_with(&b, &key), 401);
    let revoked = Instant::now();
    wait_status("the revocation on a", &a, &key, 401);
    wait_status("the revocation on c", &c, &key, 401);
    assert!(
        revoked.elapsed() < Duration::from_secs(5),
        "{:?}",
        revoked.elapsed()
    );
    // An update made on a reaches b too (a fresh key, since revocation is final).
    let (key2, id2) = crate::governance::create_key(&a, serde_json::json!({"team": "ads"}));
    wait_status("the second key on b", &b, &key2, 200);
    let r = crate::governance::admin(
        a.agent.admin_addr().expect("a's admin"),
        "PATCH",
        &format!("/admin/keys/{id2}"),
        Some(&serde_json::json!({"enabled": false})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = crate::governance::admin(
            b.agent.admin_addr().expect("b's admin"),
            "GET",
            &format!("/admin/keys/{id2}"),
            None,
        );
        if r.json()["enabled"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the update never reached b: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // An exception granted on a is in force on b; withdrawn on b, it is gone from a and c.
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        + 3_600_000;
    let r = crate::governance::admin(
        a.agent.admin_addr().expect("a's admin"),
        "POST",
        "/admin/exceptions",
        Some(
            &serde_json::json!({"subject_kind": "team", "subject": "search", "extra_tokens": 1000,
            "justification": "launch", "approver": "cto", "expires_ms": expires}),
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let uid = r.json()["exception"]["uid"]
        .as_str()
        .expect("a uid")
        .to_string();
    let exceptions = |s: &Stack| -> Vec<serde_json::Value> {
        let r = crate::governance::admin(
            s.agent.admin_addr().expect("admin"),
            "GET",
            "/admin/exceptions",
            None,
        );
        r.json()["exceptions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    wait_for("the exception on b", || {
        exceptions(&b).iter().any(|x| x["uid"] == uid.as_str())
    });
    wait_for("the exception on c", || {
        exceptions(&c).iter().any(|x| x["uid"] == uid.as_str())
    });
    let on_b = exceptions(&b);
    assert_eq!(on_b.len(), 1, "{on_b:?}");
    assert_eq!(on_b[0]["extra_tokens"], 1000);
    let id_on_b = on_b[0]["id"].as_i64().expect("b's id");
    let r = crate::governance::admin(
        b.agent.admin_addr().expect("b's admin"),
        "DELETE",
        &format!("/admin/exceptions/{id_on_b}"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for("the withdrawal on a", || exceptions(&a).is_empty());
    wait_for("the withdrawal on c", || exceptions(&c).is_empty());
}

#[test]
fn keys_made_while_redis_is_away_work_locally_and_spread_when_it_returns() {
    let mut redis = Redis::start();
    let port = redis.port;
    let a = keyed_agent(port, "da");
    let mut b = keyed_agent(port, "db");
    let (before, _) = crate::governance::create_key(&a, serde_json::json!({"team": "t"}));
    wait_status("the first key on b", &b, &before, 200);
    redis.kill();
    // The admin API answers and the key works where it was made.
    let (key, id) = crate::governance::create_key(&a, serde_json::json!({"team": "t"}));
    assert_eq!(status_with(&a, &key), 200);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(status_with(&b, &key), 401, "b cannot know it yet");
    // b restarted without Redis still knows the key it learnt before.
    b.agent.restart(1);
    assert_eq!(status_with(&b, &before), 200);
    // Redis comes back empty: a pushes what it has, b pulls it.
    let redis = Redis::start_on(port);
    wait_status("the key on b after Redis returned", &b, &key, 200);
    let stored = redis.cli(&["HGET", "tollgate:{keys}", &id]);
    assert!(stored.contains(&id), "{stored}");
}

#[test]
fn usage_cluster_sums_every_agents_ledger_per_team() {
    let redis = Redis::start();
    let agents: Vec<Stack> = ["ua", "ub"]
        .iter()
        .map(|n| agent(redis.port, n, 1_000_000))
        .collect();
    let body = chat_body("smol", "count me", 20, false).to_string();
    let mut sent = 0u64;
    for (i, a) in agents.iter().enumerate() {
        for team in std::iter::repeat_n("t", 3 + i).chain(["other"]) {
            let r = post_raw(
                a.agent.addr,
                "/v1/chat/completions",
                &[
                    ("content-type", "application/json"),
                    ("x-tollgate-team", team),
                ],
                body.as_bytes(),
            );
            assert_eq!(r.status, 200, "{}", r.text());
            sent += u64::from(team == "t");
        }
    }
    let team_rows = || -> Vec<Vec<crate::harness::Row>> {
        agents
            .iter()
            .map(|a| {
                crate::harness::ledger::all(&a.agent.data_dir)
                    .into_iter()
                    .filter(|r| r.team.as_deref() == Some("t"))
                    .collect()
            })
            .collect()
    };
    wait_for("the ledgers", || {
        team_rows().iter().map(Vec::len).sum::<usize>() as u64 >= sent
    });
    let ledgers = team_rows();
    assert_eq!(ledgers.iter().map(Vec::len).sum::<usize>() as u64, sent);
    let tokens: i64 = ledgers
        .iter()
        .flatten()
        .map(|r| r.input_tokens + r.output_tokens)
        .sum();
    assert!(tokens > 0, "the sim reported no tokens");
    let cost: i64 = ledgers.iter().flatten().map(|r| r.cost_micro_usd).sum();
    let config = agents[0]
        .agent
        .config_path
        .to_str()
        .expect("utf-8")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let team = loop {
        let out = crate::harness::procs::run_tollgate(
            &[
                "usage",
                "--cluster",
                "--config",
                &config,
                "--period",
                "day",
                "--format",
                "json",
            ],
            Duration::from_secs(10),
        );
        assert!(out.status.success(), "{out:#?}");
        let rows: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON rows");
        let t = rows
            .as_array()
            .and_then(|a| a.iter().find(|r| r["key"] == "t"))
            .cloned();
        if let Some(t) = t.filter(|t| t["requests"] == sent) {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "never summed both agents: {}",
            out.stdout
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(team["nodes"], 2, "{team}");
    let summed =
        team["input_tokens"].as_i64().unwrap_or(-1) + team["output_tokens"].as_i64().unwrap_or(-1);
    assert_eq!(summed, tokens, "{team}");
    let usd = team["cost_usd"].as_f64().unwrap_or(-1.0);
    assert!(
        (usd - cost as f64 / 1e6).abs() < 1e-6,
        "{team} vs {cost} micro-USD"
    );
    // The table: one row per team with the node count last.
    let out = crate::harness::procs::run_tollgate(
        &["usage", "--cluster", "--config", &config, "--period", "day"],
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{out:#?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("t "))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(line.trim_end().ends_with(" 2"), "{}", out.stdout);
    assert!(out.stdout.contains("other"), "{}", out.stdout);
}

const SMALL_BUDGET: &str =
    "budgets:\n  - name: team-day\n    scope: {team: t}\n    tokens: 6000\n    window: day\n";

/// Spends team `t`'s 6,000-token budget through `agents` to the end; returns what each spent.
fn spend_to_the_end(agents: &[Stack]) -> Vec<u64> {
    for a in agents {
        wait_for("cluster mode", || readyz(a)["cluster"]["redis"] == "up");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = agents
        .iter()
        .map(|a| {
            let (addr, stop) = (a.agent.addr, stop.clone());
            std::thread::spawn(move || hammer(addr, stop, true, Arc::default()))
        })
        .collect();
    let served: Vec<u64> = threads
        .into_iter()
        .map(|t| t.join().expect("client").0)
        .collect();
    agents
        .iter()
        .zip(served)
        .map(|(a, n)| spent_once_committed(&a.agent.data_dir, n))
        .collect()
}

#[test]
fn a_redis_cluster_holds_the_budget() {
    let dir = crate::harness::procs::TempDir::new("redis-cluster");
    let nodes: Vec<Redis> = (0..3)
        .map(|i| {
            let port = free_port();
            // Its own bus port: by default it is port + 10,000, which a free port above 55,535
            // pushes past 65,535, and redis-server then refuses to start.
            let bus = free_port().to_string();
            let conf = dir.path().join(format!("nodes-{i}.conf"));
            Redis::start_with(
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    "--cluster-config-file",
                    &conf.to_string_lossy(),
                ],
            )
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli --cluster create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Node 0 reports `ok` as soon as it has all slots assigned, while the others may still be
    // learning the layout by gossip and answer CLUSTERDOWN; on a loaded 2-core CI machine the
    // agents got there first once. Wait until every node serves and all agree on the slot map.
    wait_for("the cluster to form", || {
        nodes.iter().all(|n| {
            let info = n.cli(&["CLUSTER", "INFO"]);
            info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
        }) && Command::new("redis-cli")
            .args(["--cluster", "check", &addrs[0]])
            .output()
            .is_ok_and(|o| {
                let text = String::from_utf8_lossy(&o.stdout);
                o.status.success() && text.contains("All nodes agree about slots configuration")
            })
    });
    let target = format!(
        "redis_cluster: [\"redis://{}\", \"redis://{}\"]",
        addrs[0], addrs[1]
    );
    let agents: Vec<Stack> = ["k1", "k2"]
        .iter()
        .map(|n| agent_on(&target, n, SMALL_BUDGET))
        .collect();
    let spent = spend_to_the_end(&agents);
    let total: u64 = spent.iter().sum();
    assert!(total <= 6000, "overspent: {spent:?}");
    assert!(total + 2 * 120 >= 6000, "stranded: {spent:?}");
    // Redis Cluster stayed usable throughout: no agent fell back to its local share, and the
    // key sync (keys, usage) ran without errors.
    for (a, n) in agents.iter().zip(["k1", "k2"]) {
        let m = a.agent.metrics();
        assert!(
            m.contains(&format!(
                "tollgate_cluster_fallback_grants_total{{node=\"{n}\"}} 0"
            )),
            "{m}"
        );
        assert_eq!(readyz(a)["cluster"]["redis"], "up");
        let log = a.agent.proc.logs_tail();
        assert!(!log.contains("cluster: Redis call failed"), "{log}");
        assert!(!log.contains("key sync failed"), "{log}");
    }
    // The lease hash lives on whichever node owns its slot; one of them has it.
    let held: Vec<String> = nodes
        .iter()
        .map(|n| n.cli(&["--scan", "--pattern", "tollgate:lease:*:tokens:*"]))
        .filter(|k| !k.is_empty())
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");
}

#[test]
fn sentinels_lead_the_agents_to_the_master() {
    let master = Redis::start();
    let dir = crate::harness::procs::TempDir::new("redis-sentinel");
    let sentinel_port = free_port();
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "sentinel monitor tg 127.0.0.1 {} 1\nsentinel resolve-hostnames no\n",
            master.port
        ),
    )
    .expect("writing sentinel.conf");
    let sentinel = Command::new("redis-server")
        .arg(&conf)
        .args([
            "--sentinel",
            "--port",
            &sentinel_port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server --sentinel");
    let mut sentinel = Redis {
        port: sentinel_port,
        child: sentinel,
    };
    wait_for("the sentinel", || {
        sentinel
            .cli(&["SENTINEL", "get-master-addr-by-name", "tg"])
            .contains(&master.port.to_string())
    });
    let target =
        format!("sentinel: {{master: tg, nodes: [\"redis://127.0.0.1:{sentinel_port}\"]}}");
    let agents: Vec<Stack> = ["s1", "s2"]
        .iter()
        .map(|n| agent_on(&target, n, SMALL_BUDGET))
        .collect();
    let spent = spend_to_the_end(&agents);
    let total: u64 = spent.iter().sum();
    assert!(total <= 6000 && total + 2 * 120 >= 6000, "{spent:?}");
    // The leases are in the master the sentinel named.
    let leased = master.field("total");
    assert!(
        leased >= total && leased <= 6000,
        "{leased} leased, {spent:?} spent"
    );
    sentinel.kill();
}
