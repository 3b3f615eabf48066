//! `tollgate top`: the node counters an agent pins under bpffs (`tg_model_usage`,
//! `tg_cg_usage`, `tg_replica`, and the intercept hit counts), read straight from the maps every
//! second and redrawn like top until Ctrl-C; `--once` prints one snapshot and exits (scripts
//! and tests).
//!
//! Why from the maps and not the agent's API: this is the same view a scheduler or exporter
//! on the node gets (docs/kernel-maps.md), and it needs no port. The maps are opened
//! read-only; cgroup ids are shown as their paths (resolved by walking cgroup v2, cached).
//! Never on the agent's hot path: it is a separate process.

use std::collections::HashMap as StdHashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use aya::maps::{HashMap, MapData};
use tollgate_common::{cg_usage, intercept, model_usage, replica};
use tollgate_common::{AddrKey, InterceptEntry, ModelKey, ReplicaKey, ReplicaLoad, Usage};

use crate::kernel::attribution::addr_of;
use crate::kernel::cgroup::CgroupResolver;
use crate::kernel::{detect_cgroup2_mount, pins};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The agent's pin directory (`kernel.pin_dir`).
    #[arg(long, default_value = crate::kernel::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Print one snapshot and exit.
    #[arg(long)]
    pub once: bool,
    /// Redraw interval in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Most rows per table.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

/// One read of the maps.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub owner: Option<u32>,
    pub models: Vec<(String, Usage)>,
    pub cgroups: Vec<(u64, Usage)>,
    pub replicas: Vec<(String, ReplicaLoad)>,
    pub intercepts: Vec<(String, u64)>,
}

fn dump<K: aya::Pod, V: aya::Pod>(dir: &Path, name: &'static str) -> anyhow::Result<Vec<(K, V)>> {
    let map: HashMap<MapData, K, V> = pins::open_typed(&dir.join(name), name)
        .with_context(|| format!("reading {}", dir.join(name).display()))?;
    Ok(map.iter().filter_map(Result::ok).collect())
}

/// Reads every map `top` shows.
pub fn read(dir: &Path) -> anyhow::Result<Snapshot> {
    let mut s = Snapshot {
        owner: pins::owner_tgid(dir),
        ..Snapshot::default()
    };
    s.models = dump::<ModelKey, Usage>(dir, model_usage::MAP_NAME)?
        .into_iter()
        .map(|(k, v)| (k.as_str().to_string(), v))
        .collect();
    s.cgroups = dump::<u64, Usage>(dir, cg_usage::MAP_NAME)?;
    // Optional: an older agent may not pin these.
    s.replicas = dump::<ReplicaKey, ReplicaLoad>(dir, replica::MAP_NAME)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.as_str().to_string(), v))
        .collect();
    s.intercepts = dump::<AddrKey, InterceptEntry>(dir, intercept::MAP_NAME)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let a = addr_of(&k).map_or_else(|| format!("{k:?}"), |a| a.to_string());
            (a, v.hits)
        })
        .collect();
    let tokens = |u: &Usage| u.input_tokens + u.output_tokens;
    s.models
        .sort_by(|a, b| tokens(&b.1).cmp(&tokens(&a.1)).then(a.0.cmp(&b.0)));
    s.cgroups
        .sort_by(|a, b| tokens(&b.1).cmp(&tokens(&a.1)).then(a.0.cmp(&b.0)));
    s.replicas.sort_by(|a, b| a.0.cmp(&b.0));
    s.intercepts.sort();
    Ok(s)
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let tail: String = s
        .chars()
        .rev()
        .take(width.saturating_sub(1))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

/// Tokens per second of `now` over `prev` across `dt`, or `-` without a previous snapshot.
fn rate(now: &Usage, prev: Option<&Usage>, dt: Option<Duration>) -> String {
    match dt {
        Some(dt) if dt.as_secs_f64() > 0.0 => {
            let before = prev.map_or(0, |p| p.input_tokens + p.output_tokens);
            let after = now.input_tokens + now.output_tokens;
            // A restarted agent resets its totals: count from zero then.
            let delta = after.checked_sub(before).unwrap_or(after);
            format!("{:.0}", delta as f64 / dt.as_secs_f64())
        }
        _ => "-".to_string(),
    }
}

/// The text of one frame.
pub fn render(
    dir: &Path,
    s: &Snapshot,
    prev: Option<(&Snapshot, Duration)>,
    resolver: Option<&CgroupResolver>,
    limit: usize,
) -> String {
    let mut out = String::new();
    let owner = s.owner.map_or_else(
        || "no running agent".to_string(),
        |p| format!("agent pid {p}"),
    );
    let _ = writeln!(out, "tollgate top — {} — {owner}", dir.display());
    let dt = prev.map(|(_, d)| d);

    let _ = writeln!(
        out,
        "\n{:<40} {:>9} {:>12} {:>12} {:>12} {:>9}",
        "MODEL", "REQUESTS", "INPUT", "CACHED", "OUTPUT", "TOK/S"
    );
    let prev_models: StdHashMap<&str, &Usage> = prev
        .map(|(p, _)| p.models.iter().map(|(k, v)| (k.as_str(), v)).collect())
        .unwrap_or_default();
    for (name, u) in s.models.iter().take(limit) {
        let _ = writeln!(
            out,
            "{:<40} {:>9} {:>12} {:>12} {:>12} {:>9}",
            fit(name, 40),
            u.requests,
            u.input_tokens,
            u.cached_tokens,
            u.output_tokens,
            rate(u, prev_models.get(name.as_str()).copied(), dt)
        );
    }
    if s.models.is_empty() {
        let _ = writeln!(out, "(no requests settled yet)");
    }

    let _ = writeln!(
        out,
        "\n{:<40} {:>9} {:>12} {:>12} {:>12} {:>9}",
        "CGROUP", "REQUESTS", "INPUT", "CACHED", "OUTPUT", "TOK/S"
    );
    let prev_cgroups: StdHashMap<u64, &Usage> = prev
        .map(|(p, _)| p.cgroups.iter().map(|(k, v)| (*k, v)).collect())
        .unwrap_or_default();
    for (id, u) in s.cgroups.iter().take(limit) {
        let name = resolver
            .and_then(|r| r.resolve(*id))
            .map_or_else(|| format!("cgroup id {id}"), |c| c.path.clone());
        let _ = writeln!(
            out,
            "{:<40} {:>9} {:>12} {:>12} {:>12} {:>9}",
            fit(&name, 40),
            u.requests,
            u.input_tokens,
            u.cached_tokens,
            u.output_tokens,
            rate(u, prev_cgroups.get(id).copied(), dt)
        );
    }
    if s.cgroups.is_empty() {
        let _ = writeln!(out, "(no attributed local clients yet)");
    }

    if !s.replicas.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<40} {:>9} {:>9} {:>8} {:>9}",
            "REPLICA", "RUNNING", "WAITING", "KV%", "AGE"
        );
        let now = now_unix_ms();
        for (name, r) in s.replicas.iter().take(limit) {
            let age = now.saturating_sub(r.updated_unix_ms) as f64 / 1000.0;
            let _ = writeln!(
                out,
                "{:<40} {:>9} {:>9} {:>8.1} {:>8.1}s",
                fit(name, 40),
                r.running,
                r.waiting,
                f64::from(r.kv_cache_permille) / 10.0,
                age
            );
        }
    }
    if !s.intercepts.is_empty() {
        let _ = writeln!(out, "\n{:<40} {:>9}", "INTERCEPTED", "REDIRECTS");
        for (dst, hits) in s.intercepts.iter().take(limit) {
            let _ = writeln!(out, "{dst:<40} {hits:>9}");
        }
    }
    out
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let resolver = detect_cgroup2_mount().map(CgroupResolver::new);
    if args.once {
        let s = read(&args.pin_dir).with_context(|| {
            format!(
                "no Tollgate maps under {} (is the agent running with kernel.enabled: auto?)",
                args.pin_dir.display()
            )
        })?;
        print!(
            "{}",
            render(&args.pin_dir, &s, None, resolver.as_ref(), args.limit)
        );
        return Ok(());
    }
    let interval = Duration::from_millis(args.interval_ms.max(100));
    let mut prev: Option<(Snapshot, Instant)> = None;
    loop {
        let frame = match read(&args.pin_dir) {
            Ok(s) => {
                let now = Instant::now();
                let text = render(
                    &args.pin_dir,
                    &s,
                    prev.as_ref().map(|(p, t)| (p, now.duration_since(*t))),
                    resolver.as_ref(),
                    args.limit,
                );
                prev = Some((s, now));
                text
            }
            Err(e) => {
                prev = None;
                format!(
                    "tollgate top — {}\n\nwaiting for an agent to pin its maps there ({e:#})\n",
                    args.pin_dir.display()
                )
            }
        };
        // Home, clear, frame; Ctrl-C (SIGINT's default action) ends it.
        print!("\x1b[H\x1b[2J{frame}\n(refreshing every {interval:?}; Ctrl-C to quit)\n");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64, requests: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            requests,
            ..Usage::default()
        }
    }

    #[test]
    fn renders_tables_and_rates() {
        let prev = Snapshot {
            models: vec![("smollm2".into(), usage(100, 50, 1))],
            ..Snapshot::default()
        };
        let now = Snapshot {
            owner: Some(42),
            models: vec![("smollm2".into(), usage(300, 150, 3))],
            cgroups: vec![(7, usage(10, 5, 1))],
            replicas: vec![(
                "vllm-a".into(),
                ReplicaLoad {
                    running: 3,
                    waiting: 1,
                    kv_cache_permille: 420,
                    ..ReplicaLoad::default()
                },
            )],
            intercepts: vec![("127.0.0.1:8000".into(), 4)],
        };
        let text = render(
            Path::new("/sys/fs/bpf/tollgate"),
            &now,
            Some((&prev, Duration::from_secs(2))),
            None,
            10,
        );
        assert!(text.contains("agent pid 42"), "{text}");
        let model = text
            .lines()
            .find(|l| l.starts_with("smollm2"))
            .unwrap_or_default();
        // (450 - 150) tokens over 2 s.
        assert!(model.contains(" 3 ") && model.ends_with(" 150"), "{model}");
        assert!(text.contains("cgroup id 7"), "{text}");
        assert!(text.contains("42.0"), "{text}");
        assert!(text.contains("127.0.0.1:8000"), "{text}");
        let once = render(Path::new("/x"), &now, None, None, 10);
        assert!(once.contains("no running agent") || once.contains("agent pid"));
        assert!(once
            .lines()
            .find(|l| l.starts_with("smollm2"))
            .is_some_and(|l| l.ends_with('-')));
    }

    #[test]
    fn long_names_keep_their_tail() {
        assert_eq!(fit("abc", 5), "abc");
        assert_eq!(fit("/a/very/long/path", 6), "…/path");
    }
}
