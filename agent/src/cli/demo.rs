//! `tollgate demo`: the product on embedded defaults, with no GPU and no network. Starts two
//! simulator replicas (`tollgate-sim`, found next to this binary), the agent in front of them
//! with governance on (virtual keys minted for three teams, a rate limit, a budget that falls
//! back to a cheaper model, the loop guard, prices), sends a short mixed workload (streaming and
//! not, OpenAI and Anthropic, several teams; a request without a key, a budget fallback, a loop),
//! prints the ledger's usage and cost, and stays up with copy-paste examples until Ctrl-C.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::config::Config;
use crate::ledger::query::{self, Format, GroupBy};

#[derive(clap::Args)]
pub struct Args {
    /// Where the ledger goes.
    #[arg(long, default_value = "./tollgate-demo-data")]
    pub data_dir: PathBuf,
    /// Agent address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:4000")]
    pub listen: SocketAddr,
    /// Exit after the workload instead of waiting for Ctrl-C.
    #[arg(long)]
    pub no_wait: bool,
    /// Path to tollgate-sim (default: next to this binary).
    #[arg(long)]
    pub sim: Option<PathBuf>,
}

/// A simulator replica, killed when dropped.
struct Replica {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sim_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let sibling = exe.with_file_name("tollgate-sim");
    if sibling.is_file() {
        return Ok(sibling);
    }
    bail!("tollgate-sim not found next to {} (build it with `cargo build --release -p tollgate-sim`, or run `cargo xtask demo`)", exe.display())
}

fn start_replica(bin: &PathBuf, extra: &[&str]) -> anyhow::Result<Replica> {
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("no stdout from tollgate-sim")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("unexpected first line from tollgate-sim: {line:?}"))?;
    Ok(Replica { child, addr })
}

fn demo_config(a: SocketAddr, b: SocketAddr, args: &Args) -> anyhow::Result<Config> {
    let yaml = format!(
        "listen: {listen}
data_dir: {data}
workers: 2
auth: {{ mode: keys }}
prices:
  smol: {{ input: 0.15, output: 0.60 }}
  qwen: {{ input: 0.05, output: 0.20 }}
  claude-sim: {{ input: 3.00, cached_input: 0.30, cache_write: 3.75, output: 15.00 }}
limits:
  - scope: {{ team: agents }}
    requests_per_minute: 60
    tokens_per_minute: 20000
budgets:
  - name: search-smol-daily
    scope: {{ team: search, model: smol }}
    tokens: 120
    window: day
    on_breach: fallback
    fallback_model: qwen
loop_guard: {{ identical_requests: 3, window_s: 60, cooldown_s: 30, token_rate_multiple: 0 }}
providers:
  - name: replica-a
    kind: openai
    base_url: http://{a}
  - name: replica-b
    kind: openai
    base_url: http://{b}
  - name: replica-a-anthropic
    kind: anthropic
    base_url: http://{a}
models:
  - name: smol
    provider: replica-a
    model: smollm2
  - name: qwen
    provider: replica-b
    model: qwen2.5-0.5b
  - name: claude-sim
    provider: replica-a-anthropic
    model: smollm2
",
        listen = args.listen,
        data = args.data_dir.display(),
    );
    Config::from_yaml(&yaml, &|_| None).map_err(|p| anyhow::anyhow!("embedded demo config: {p}"))
}

/// One request over a fresh connection; returns (status, body).
fn send(
    agent: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(agent)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("POST {path} HTTP/1.1\r\nhost: tollgate\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, text))
}

/// One workload request: label, path, headers, body.
type Job<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, String);

/// Mints one virtual key per demo team straight into the governance store (the agent loads
/// them at start); a deployment uses `tollgate keys create` against the admin API instead.
fn mint_keys(data_dir: &std::path::Path) -> anyhow::Result<Vec<(&'static str, String)>> {
    use crate::governance::keys::{self, KeyRecord, KeySpec};
    let store = crate::governance::store::Store::open(data_dir)?;
    let now = crate::governance::window::now_ms();
    let mut out = Vec::new();
    for team in ["search", "agents", "batch"] {
        let new = keys::generate()?;
        let rec = KeyRecord {
            id: keys::new_id()?,
            prefix: new.prefix.clone(),
            spec: KeySpec {
                name: Some(format!("demo {team}")),
                team: Some(team.to_string()),
                project: Some("demo".into()),
                enabled: true,
                ..KeySpec::default()
            },
            created_ms: now,
            updated_ms: now,
            revoked_ms: None,
        };
        store.insert_key(&rec, &new.hash)?;
        out.push((team, new.secret));
    }
    Ok(out)
}

fn workload(agent: SocketAddr, keys: &[(&'static str, String)]) -> anyhow::Result<()> {
    let key = |team: &str| {
        keys.iter()
            .find(|(t, _)| *t == team)
            .map(|(_, k)| format!("Bearer {k}"))
            .unwrap_or_default()
    };
    let (search, agents, batch) = (key("search"), key("agents"), key("batch"));
    let x_api_key = agents.trim_start_matches("Bearer ").to_string();
    let chat = |model: &str, prompt: &str, stream: bool| {
        format!(
            r#"{{"model":"{model}","stream":{stream},"max_tokens":24,"messages":[{{"role":"system","content":"You are a terse assistant."}},{{"role":"user","content":"{prompt}"}}]}}"#
        )
    };
    let jobs: Vec<Job> = vec![
        ("chat", "/v1/chat/completions", vec![("authorization", &search), ("x-tollgate-user", "ana")], chat("smol", "Summarise the incident report.", false)),
        ("chat stream", "/v1/chat/completions", vec![("authorization", &search), ("x-tollgate-user", "ana")], chat("smol", "Summarise the incident report.", true)),
        ("budget fallback", "/v1/chat/completions", vec![("authorization", &search), ("x-tollgate-user", "ana")], chat("smol", "And the follow-up actions?", false)),
        ("chat stream", "/v1/chat/completions", vec![("authorization", &agents), ("x-tollgate-session", "s-42")], chat("qwen", "Plan the refactor in three steps.", true)),
        ("chat", "/v1/chat/completions", vec![("authorization", &agents), ("x-tollgate-session", "s-42")], chat("qwen", "Plan the refactor in three steps.", false)),
        ("loop", "/v1/chat/completions", vec![("authorization", &agents), ("x-tollgate-session", "s-42")], chat("qwen", "Plan the refactor in three steps.", false)),
        ("completion", "/v1/completions", vec![("authorization", &batch)], r#"{"model":"qwen","prompt":"Once upon a time","max_tokens":16}"#.to_string()),
        ("embeddings", "/v1/embeddings", vec![("authorization", &search)], r#"{"model":"smol","input":["tollgate meters tokens","per team"]}"#.to_string()),
        ("messages stream", "/v1/messages", vec![("x-api-key", &x_api_key), ("anthropic-version", "2023-06-01")], r#"{"model":"claude-sim","max_tokens":20,"stream":true,"messages":[{"role":"user","content":"Write a haiku about budgets."}]}"#.to_string()),
        ("messages", "/v1/messages", vec![("x-api-key", &x_api_key), ("anthropic-version", "2023-06-01")], r#"{"model":"claude-sim","max_tokens":20,"messages":[{"role":"user","content":"Write a haiku about budgets."}]}"#.to_string()),
        ("no key", "/v1/chat/completions", vec![("x-tollgate-team", "web")], chat("smol", "hello", false)),
        ("unknown model", "/v1/chat/completions", vec![("authorization", &batch)], chat("gpt-9", "hello", false)),
    ];
    for (what, path, headers, body) in &jobs {
        let (status, text) = send(agent, path, headers, body)?;
        let head = text.split("\r\n\r\n").next().unwrap_or("");
        let note = head
            .lines()
            .find_map(|l| l.strip_prefix("x-tollgate-fallback: "))
            .map(|f| format!("  (x-tollgate-fallback: {f})"))
            .or_else(|| {
                (status >= 400)
                    .then(|| {
                        text.split("\"code\":\"")
                            .nth(1)
                            .and_then(|c| c.split('"').next())
                    })
                    .flatten()
                    .map(|c| format!("  ({c})"))
            })
            .unwrap_or_default();
        println!("  {status}  {what:<16} {path}{note}");
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let bin = sim_binary(args.sim.clone())?;
    let a = start_replica(&bin, &["--model", "smollm2"])?;
    let b = start_replica(&bin, &["--model", "qwen2.5-0.5b", "--no-stream-usage"])?;
    println!("simulator replicas: replica-a on {} (smollm2), replica-b on {} (qwen2.5-0.5b, streams without usage)", a.addr, b.addr);
    let cfg = demo_config(a.addr, b.addr, &args)?;
    let data_dir = cfg.data_dir.clone();
    let keys = mint_keys(&data_dir)?;
    let set = if args.no_wait {
        None
    } else {
        Some(crate::server::block_signals())
    };
    let running = crate::server::start(cfg, None)?;
    let agent = running.addr;
    println!(
        "tollgate listening on {agent}\n\nvirtual keys (stored hashed in {}):",
        crate::governance::store::db_path(&data_dir).display()
    );
    for (team, key) in &keys {
        println!("  {team:<7} {key}");
    }
    println!("\nworkload:");
    workload(agent, &keys)?;
    // Let the ledger writer commit (it flushes every 100 ms) and estimates finish.
    std::thread::sleep(Duration::from_millis(500));
    let conn = rusqlite::Connection::open(crate::ledger::db_path(&data_dir))?;
    for (by, name) in [
        (GroupBy::Model, "model"),
        (GroupBy::Team, "team"),
        (GroupBy::Key, "key"),
    ] {
        println!(
            "\nusage by {name} (ledger: {}):",
            crate::ledger::db_path(&data_dir).display()
        );
        print!(
            "{}",
            query::render(&query::summarize(&conn, by)?, Format::Table, name)
        );
    }
    drop(conn);
    println!(
        r#"
Try it:
  curl -si http://{agent}/v1/chat/completions -H 'content-type: application/json' \
       -H 'authorization: Bearer {agents_key}' -d '{{"model":"smol","messages":[{{"role":"user","content":"hi"}}]}}'
  curl -sN http://{agent}/v1/chat/completions -H 'content-type: application/json' \
       -H 'authorization: Bearer {agents_key}' -d '{{"model":"qwen","stream":true,"messages":[{{"role":"user","content":"hi"}}]}}'
  curl -s http://{agent}/metrics | grep -E 'tollgate_tokens_total|tollgate_budget'

  python3 -c 'from openai import OpenAI; c = OpenAI(base_url="http://{agent}/v1", api_key="{agents_key}"); r = c.chat.completions.create(model="smol", messages=[{{"role":"user","content":"hi"}}]); print(r.choices[0].message.content, r.usage)'

  tollgate usage --data-dir {data} --by key
  tollgate chargeback --data-dir {data}
  tollgate audit --data-dir {data}
"#,
        data = data_dir.display(),
        agents_key = keys
            .iter()
            .find(|(t, _)| *t == "agents")
            .map_or("", |(_, k)| k.as_str()),
    );
    if let Some(set) = set {
        println!("Ctrl-C to stop.");
        crate::server::wait_for_signal(&set);
    }
    running.stop();
    drop((a, b));
    Ok(())
}
