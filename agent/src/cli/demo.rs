//! `tollgate demo`: the product on embedded defaults, with no GPU and no network. Starts two
//! simulator replicas (`tollgate-sim`, found next to this binary), the agent in front of them,
//! sends a short mixed workload (streaming and not, OpenAI and Anthropic, several identities),
//! prints the ledger's usage table, and stays up with copy-paste examples until Ctrl-C.

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
# The demo's clients send no key; a deployment keeps the default `auth: {{ mode: keys }}`.
auth: {{ mode: open }}
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

fn workload(agent: SocketAddr) -> anyhow::Result<()> {
    let chat = |model: &str, prompt: &str, stream: bool| {
        format!(
            r#"{{"model":"{model}","stream":{stream},"max_tokens":24,"messages":[{{"role":"system","content":"You are a terse assistant."}},{{"role":"user","content":"{prompt}"}}]}}"#
        )
    };
    let jobs: Vec<Job> = vec![
        ("chat", "/v1/chat/completions", vec![("x-tollgate-team", "search"), ("x-tollgate-user", "ana")], chat("smol", "Summarise the incident report.", false)),
        ("chat stream", "/v1/chat/completions", vec![("x-tollgate-team", "search"), ("x-tollgate-user", "ana")], chat("smol", "Summarise the incident report.", true)),
        ("chat stream", "/v1/chat/completions", vec![("x-tollgate-team", "agents"), ("x-tollgate-session", "s-42")], chat("qwen", "Plan the refactor in three steps.", true)),
        ("chat", "/v1/chat/completions", vec![("x-tollgate-team", "agents"), ("x-tollgate-session", "s-42")], chat("qwen", "Plan the refactor in three steps.", false)),
        ("completion", "/v1/completions", vec![("x-tollgate-team", "batch")], r#"{"model":"qwen","prompt":"Once upon a time","max_tokens":16}"#.to_string()),
        ("embeddings", "/v1/embeddings", vec![("x-tollgate-team", "search")], r#"{"model":"smol","input":["tollgate meters tokens","per team"]}"#.to_string()),
        ("messages stream", "/v1/messages", vec![("x-tollgate-team", "agents"), ("anthropic-version", "2023-06-01")], r#"{"model":"claude-sim","max_tokens":20,"stream":true,"messages":[{"role":"user","content":"Write a haiku about budgets."}]}"#.to_string()),
        ("messages", "/v1/messages", vec![("x-tollgate-team", "agents"), ("anthropic-version", "2023-06-01")], r#"{"model":"claude-sim","max_tokens":20,"messages":[{"role":"user","content":"Write a haiku about budgets."}]}"#.to_string()),
        ("unknown model", "/v1/chat/completions", vec![("x-tollgate-team", "web")], chat("gpt-9", "hello", false)),
    ];
    for (what, path, headers, body) in &jobs {
        let (status, _) = send(agent, path, headers, body)?;
        println!("  {status}  {what:<16} {path}");
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
    let set = if args.no_wait {
        None
    } else {
        Some(crate::server::block_signals())
    };
    let running = crate::server::start(cfg, None)?;
    let agent = running.addr;
    println!("tollgate listening on {agent}\n\nworkload:");
    workload(agent)?;
    // Let the ledger writer commit (it flushes every 20 ms) and estimates finish.
    std::thread::sleep(Duration::from_millis(500));
    let conn = rusqlite::Connection::open(crate::ledger::db_path(&data_dir))?;
    for (by, name) in [(GroupBy::Model, "model"), (GroupBy::Team, "team")] {
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
  curl -s http://{agent}/v1/chat/completions -H 'content-type: application/json' \
       -H 'x-tollgate-team: me' -d '{{"model":"smol","messages":[{{"role":"user","content":"hi"}}]}}'
  curl -sN http://{agent}/v1/chat/completions -H 'content-type: application/json' \
       -d '{{"model":"qwen","stream":true,"messages":[{{"role":"user","content":"hi"}}]}}'
  curl -s http://{agent}/metrics | grep tollgate_tokens_total

  python3 -c 'from openai import OpenAI; c = OpenAI(base_url="http://{agent}/v1", api_key="unused"); r = c.chat.completions.create(model="smol", messages=[{{"role":"user","content":"hi"}}]); print(r.choices[0].message.content, r.usage)'

  tollgate usage --data-dir {data} --by team
"#,
        data = data_dir.display()
    );
    if let Some(set) = set {
        println!("Ctrl-C to stop.");
        crate::server::wait_for_signal(&set);
    }
    running.stop();
    drop((a, b));
    Ok(())
}
