//! `tollgate keys ...`, `tollgate exceptions ...` and `tollgate audit`: governance from the
//! command line. Key and exception commands go through the running agent's admin API (so they
//! take effect at once); the admin listener and its token come from `--config FILE`
//! (`admin.listen`, `admin.token_env`) or from `--admin URL` with the token in
//! `TOLLGATE_ADMIN_TOKEN`. `audit` reads the audit log from `data_dir` directly, so it works
//! whether the agent runs or not.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::governance::keys::parse_duration;
use crate::governance::store::{AuditQuery, Store};
use crate::governance::window::{now_ms, rfc3339};

/// Where the admin API is.
#[derive(Args, Clone)]
pub struct AdminArgs {
    /// The agent's config file (its `admin.listen` and `admin.token_env`).
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// The admin listener's URL (`http://127.0.0.1:9090`); the token is read from
    /// `TOLLGATE_ADMIN_TOKEN`.
    #[arg(long, global = true)]
    pub admin: Option<String>,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed once and never again.
    Create(CreateArgs),
    /// List keys (never the keys themselves: id, prefix, owner, limits).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one key, with its budget use in the current window.
    Show { id: String },
    /// Change a key's limits or owner (only the given flags change).
    Update {
        id: String,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Replace a key's secret; limits and spend stay.
    Rotate { id: String },
    /// Revoke a key; it stops working at once.
    Revoke { id: String },
}

#[derive(Args)]
pub struct CreateArgs {
    /// A name to recognise the key by.
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub spec: SpecArgs,
}

#[derive(Args, Default)]
pub struct SpecArgs {
    #[arg(long)]
    pub team: Option<String>,
    #[arg(long)]
    pub project: Option<String>,
    #[arg(long)]
    pub user: Option<String>,
    /// Comma-separated globs of the models the key may use (`'gpt-4o*,smol'`).
    #[arg(long)]
    pub models: Option<String>,
    /// Requests per minute.
    #[arg(long)]
    pub rpm: Option<u64>,
    /// Tokens (input + output) per minute.
    #[arg(long)]
    pub tpm: Option<u64>,
    #[arg(long)]
    pub budget_tokens: Option<u64>,
    #[arg(long)]
    pub budget_usd: Option<f64>,
    /// The budget's calendar window: hour, day, week, month (default month).
    #[arg(long)]
    pub window: Option<String>,
    /// When the key stops working, from now: `30d`, `12h`, `90m`.
    #[arg(long)]
    pub expires: Option<String>,
    /// Comma-separated CIDRs the key may be used from.
    #[arg(long)]
    pub allowed_ips: Option<String>,
    /// Disable (`false`) or enable (`true`) the key.
    #[arg(long)]
    pub enabled: Option<bool>,
    /// The key's default priority class: `interactive` or `batch` (a request's
    /// `x-tollgate-priority` wins).
    #[arg(long)]
    pub priority: Option<String>,
}

impl SpecArgs {
    fn to_json(&self, name: Option<&str>) -> anyhow::Result<Value> {
        let mut v = serde_json::Map::new();
        let list = |s: &str| -> Vec<String> {
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()
        };
        let mut put = |k: &str, val: Value| {
            v.insert(k.to_string(), val);
        };
        if let Some(n) = name {
            put("name", json!(n));
        }
        if let Some(t) = &self.team {
            put("team", json!(t));
        }
        if let Some(t) = &self.project {
            put("project", json!(t));
        }
        if let Some(t) = &self.user {
            put("user", json!(t));
        }
        if let Some(m) = &self.models {
            put("models", json!(list(m)));
        }
        if let Some(n) = self.rpm {
            put("rpm", json!(n));
        }
        if let Some(p) = &self.priority {
            put("priority", json!(p));
        }
        if let Some(n) = self.tpm {
            put("tpm", json!(n));
        }
        if let Some(n) = self.budget_tokens {
            put("budget_tokens", json!(n));
        }
        if let Some(n) = self.budget_usd {
            put("budget_usd", json!(n));
        }
        if let Some(w) = &self.window {
            if crate::governance::window::Window::parse(w).is_none() {
                bail!("--window `{w}` is not one of hour, day, week, month");
            }
            put("window", json!(w));
        }
        if let Some(e) = &self.expires {
            let d = parse_duration(e)
                .with_context(|| format!("--expires `{e}`: use 30d, 12h, 90m or seconds"))?;
            put("expires_at_ms", json!(now_ms() + d.as_millis() as i64));
        }
        if let Some(ips) = &self.allowed_ips {
            put("allowed_ips", json!(list(ips)));
        }
        if let Some(e) = self.enabled {
            put("enabled", json!(e));
        }
        Ok(Value::Object(v))
    }
}

#[derive(Subcommand)]
pub enum ExceptionsCommand {
    /// Grant a model or extra budget until it expires (audited; removed automatically).
    Grant {
        /// Who gets it: `key:ID`, `team:NAME`, `project:NAME` or `user:NAME`.
        #[arg(long = "for")]
        subject: String,
        /// A model (glob) beyond the subject's policy.
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        extra_tokens: Option<u64>,
        #[arg(long)]
        extra_usd: Option<f64>,
        #[arg(long)]
        justification: String,
        #[arg(long)]
        approver: String,
        /// How long it lasts: `7d`, `12h`.
        #[arg(long)]
        expires: String,
    },
    /// The exceptions in force.
    List,
    /// Withdraw one before it expires.
    Revoke { id: i64 },
}

#[derive(Args)]
pub struct AuditArgs {
    /// The agent's config file (for `data_dir`).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[arg(long, default_value = "./tollgate-data")]
    pub data_dir: PathBuf,
    /// Only entries newer than this (`1h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// Only actions starting with this (`key.`, `budget.alert`, `loop.trip`).
    #[arg(long)]
    pub action: Option<String>,
    #[arg(long)]
    pub subject: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// A blocking client of the admin API.
struct AdminClient {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl AdminClient {
    fn new(a: &AdminArgs) -> anyhow::Result<AdminClient> {
        let (base, token) = match (&a.admin, &a.config) {
            (Some(url), _) => (
                url.trim_end_matches('/').to_string(),
                std::env::var("TOLLGATE_ADMIN_TOKEN")
                    .context("--admin needs the admin token in TOLLGATE_ADMIN_TOKEN")?,
            ),
            (None, Some(config)) => from_config(config)?,
            (None, None) => bail!("say where the agent is: --config FILE or --admin URL"),
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(AdminClient { base, token, agent })
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let result = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("authorization", &auth)
                .call(),
            (m, b) => {
                let text = b.map(Value::to_string).unwrap_or_else(|| "{}".into());
                let req = match m {
                    "PATCH" => self.agent.patch(&url),
                    _ => self.agent.post(&url),
                };
                req.header("authorization", &auth)
                    .header("content-type", "application/json")
                    .send(text)
            }
        };
        let mut resp = result.with_context(|| format!("calling the admin API at {url}"))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            let msg = v["error"]["message"]
                .as_str()
                .map_or_else(|| v.to_string(), String::from);
            bail!("the admin API answered {status}: {msg}");
        }
        Ok(v)
    }
}

/// The admin listener and token from a config file (without validating the rest).
fn from_config(config: &Path) -> anyhow::Result<(String, String)> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let v: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", config.display()))?;
    let admin = v
        .get("admin")
        .context("the config has no `admin:` section")?;
    let listen = admin
        .get("listen")
        .and_then(serde_yaml_ng::Value::as_str)
        .context("the config has no admin.listen")?;
    if listen.ends_with(":0") {
        bail!("admin.listen is port 0 (any free port); pass --admin URL instead");
    }
    let env = admin
        .get("token_env")
        .and_then(serde_yaml_ng::Value::as_str)
        .unwrap_or("TOLLGATE_ADMIN_TOKEN");
    let token = std::env::var(env)
        .with_context(|| format!("the admin token is read from ${env}, which is not set"))?;
    Ok((format!("http://{listen}"), token))
}

fn opt(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn keys(admin: &AdminArgs, command: KeysCommand) -> anyhow::Result<()> {
    let c = AdminClient::new(admin)?;
    match command {
        KeysCommand::Create(args) => {
            let body = args.spec.to_json(args.name.as_deref())?;
            let v = c.call("POST", "/admin/keys", Some(&body))?;
            let rec = &v["record"];
            println!("{}", opt(&v["key"]));
            eprintln!(
                "created key {} ({}) for team {} project {}; it is shown once, store it now",
                opt(&rec["id"]),
                opt(&rec["prefix"]),
                opt(&rec["team"]),
                opt(&rec["project"])
            );
        }
        KeysCommand::List { json } => {
            let v = c.call("GET", "/admin/keys", None)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!(
                "{:<16} {:<13} {:<12} {:<12} {:<10} {:>6} {:>8} {:>12} {:>9} state",
                "id", "prefix", "team", "project", "user", "rpm", "tpm", "budget_tok", "budget_$"
            );
            for k in v["keys"].as_array().into_iter().flatten() {
                let state = if !k["revoked_ms"].is_null() {
                    "revoked"
                } else if k["enabled"] == Value::Bool(false) {
                    "disabled"
                } else if k["expires_at_ms"].as_i64().is_some_and(|t| t <= now_ms()) {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{:<16} {:<13} {:<12} {:<12} {:<10} {:>6} {:>8} {:>12} {:>9} {state}",
                    opt(&k["id"]),
                    opt(&k["prefix"]),
                    opt(&k["team"]),
                    opt(&k["project"]),
                    opt(&k["user"]),
                    opt(&k["rpm"]),
                    opt(&k["tpm"]),
                    opt(&k["budget_tokens"]),
                    opt(&k["budget_usd"]),
                );
            }
        }
        KeysCommand::Show { id } => {
            let v = c.call("GET", &format!("/admin/keys/{id}"), None)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        KeysCommand::Update { id, spec } => {
            let body = spec.to_json(None)?;
            let v = c.call("PATCH", &format!("/admin/keys/{id}"), Some(&body))?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        KeysCommand::Rotate { id } => {
            let v = c.call("POST", &format!("/admin/keys/{id}/rotate"), None)?;
            println!("{}", opt(&v["key"]));
            eprintln!("rotated {id}: the old secret no longer works");
        }
        KeysCommand::Revoke { id } => {
            c.call("POST", &format!("/admin/keys/{id}/revoke"), None)?;
            eprintln!("revoked {id}");
        }
    }
    Ok(())
}

pub fn exceptions(admin: &AdminArgs, command: ExceptionsCommand) -> anyhow::Result<()> {
    let c = AdminClient::new(admin)?;
    match command {
        ExceptionsCommand::Grant {
            subject,
            model,
            extra_tokens,
            extra_usd,
            justification,
            approver,
            expires,
        } => {
            let (kind, who) = subject
                .split_once(':')
                .context("--for takes key:ID, team:NAME, project:NAME or user:NAME")?;
            let d = parse_duration(&expires)
                .with_context(|| format!("--expires `{expires}`: use 7d, 12h, 90m or seconds"))?;
            let body = json!({
                "subject_kind": kind,
                "subject": who,
                "model": model,
                "extra_tokens": extra_tokens,
                "extra_usd": extra_usd,
                "justification": justification,
                "approver": approver,
                "expires_ms": now_ms() + d.as_millis() as i64,
            });
            let v = c.call("POST", "/admin/exceptions", Some(&body))?;
            let x = &v["exception"];
            println!(
                "exception {} for {subject} until {}",
                opt(&x["id"]),
                x["expires_ms"].as_i64().map_or("-".into(), rfc3339)
            );
        }
        ExceptionsCommand::List => {
            let v = c.call("GET", "/admin/exceptions", None)?;
            for x in v["exceptions"].as_array().into_iter().flatten() {
                println!(
                    "{:>4} {}:{} model={} extra_tokens={} extra_usd={} until {} approved by {}: {}",
                    opt(&x["id"]),
                    opt(&x["subject_kind"]),
                    opt(&x["subject"]),
                    opt(&x["model"]),
                    opt(&x["extra_tokens"]),
                    opt(&x["extra_usd"]),
                    x["expires_ms"].as_i64().map_or("-".into(), rfc3339),
                    opt(&x["approver"]),
                    opt(&x["justification"]),
                );
            }
        }
        ExceptionsCommand::Revoke { id } => {
            c.call("DELETE", &format!("/admin/exceptions/{id}"), None)?;
            eprintln!("withdrew exception {id}");
        }
    }
    Ok(())
}

pub fn audit(a: AuditArgs) -> anyhow::Result<()> {
    let data_dir = match &a.config {
        Some(c) => crate::cli::config_cmd::data_dir(c)?,
        None => a.data_dir.clone(),
    };
    let Some(store) = Store::open_read_only(&data_dir)? else {
        bail!(
            "no audit log in {} (is --data-dir right?)",
            data_dir.display()
        );
    };
    let since_ms = match &a.since {
        Some(s) => Some(
            now_ms()
                - parse_duration(s)
                    .with_context(|| format!("--since `{s}`: use 1h, 7d, 90m or seconds"))?
                    .as_millis() as i64,
        ),
        None => None,
    };
    let entries = store.audit(&AuditQuery {
        since_ms,
        action: a.action.clone(),
        subject: a.subject.clone(),
        limit: None,
        newest_first: false,
    })?;
    for e in &entries {
        if a.json {
            println!("{}", serde_json::to_string(e)?);
        } else {
            println!(
                "{} {:<6} {:<18} {:<24} {}",
                rfc3339(e.ts_ms),
                e.actor,
                e.action,
                e.subject,
                e.detail
            );
        }
    }
    Ok(())
}
