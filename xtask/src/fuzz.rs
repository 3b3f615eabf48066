//! `cargo xtask fuzz`: coverage-guided fuzzing of the agent's parsers with cargo-fuzz (libFuzzer).
//!
//! The targets are thin wrappers (`fuzz/fuzz_targets/<target>.rs`) over the entry points in
//! `tollgate::fuzzing`, which assert the invariants. Each target runs on its own, under
//! `nice -n 19`, until `--time` seconds or `--runs` executions, whichever comes first:
//!
//! ```text
//! cargo +nightly fuzz run <target> fuzz/scratch/<target>/corpus fuzz/corpus/<target> -- \
//!     -max_total_time=<time> -runs=<runs> -max_len=<per target> -rss_limit_mb=... -timeout=...
//! ```
//!
//! The corpus a run grows goes to `fuzz/scratch/` (ignored); the committed seeds in
//! `fuzz/corpus/` are only read. A crash is minimized (`cargo fuzz tmin`) and saved under
//! `fuzz/crashers/<target>/`, where `agent/tests/fuzz_crashers.rs` replays it as an ordinary
//! test. The last status line and final stats of libFuzzer become a row of
//! `benches/results/fuzz-<date>.md`; rows for targets not run this time are kept from an
//! existing file, so one target can be rerun alone. Not in CI.
//!
//! ```text
//! cargo xtask fuzz                                   # every target, 60 s or 10M runs each
//! cargo xtask fuzz --time 900                        # the recorded run: 15 min or 10M runs
//! cargo xtask fuzz --target chunked --runs 100000    # one target
//! ```
//!
//! Installs cargo-fuzz (`cargo install cargo-fuzz --locked`) and the nightly toolchain when
//! missing. The full log of each target is `fuzz/scratch/<target>/fuzz.log`.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::bench::machine::{load_average, Machine};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds per target (libFuzzer's -max_total_time).
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// Executions per target (libFuzzer's -runs); the run stops at whichever limit comes first.
    #[arg(long, default_value_t = 10_000_000)]
    runs: u64,
    /// Run only this target (repeatable); default: all of them.
    #[arg(long = "target", value_name = "NAME")]
    targets: Vec<String>,
    /// Where to write the markdown (default: benches/results/fuzz-<date>.md).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Save crashes as they are, without `cargo fuzz tmin`.
    #[arg(long)]
    no_minimize: bool,
}

/// libFuzzer settings for one target.
struct Target {
    name: &'static str,
    /// Largest input tried (-max_len): long enough for real heads, bodies and streams, short
    /// enough to keep thousands of executions a second. `chunked` goes past the decoder's
    /// 4096-byte line limit, so lines on either side of it are tried.
    max_len: usize,
    rss_limit_mb: u64,
    /// Seconds one input may take before it counts as a hang.
    timeout_s: u64,
    /// Dictionary under fuzz/dicts/.
    dict: &'static str,
}

const TARGETS: [Target; 9] = [
    Target {
        name: "request_head",
        max_len: 4096,
        rss_limit_mb: 2048,
        timeout_s: 10,
        dict: "http.dict",
    },
    Target {
        name: "chunked",
        max_len: 8192,
        rss_limit_mb: 2048,
        timeout_s: 10,
        dict: "http.dict",
    },
    Target {
        name: "inspect_rewrite",
        max_len: 4096,
        rss_limit_mb: 2048,
        timeout_s: 10,
        dict: "json.dict",
    },
    Target {
        name: "sse_usage",
        max_len: 4096,
        rss_limit_mb: 2048,
        timeout_s: 10,
        dict: "sse.dict",
    },
    Target {
        name: "response_head",
        max_len: 4096,
        rss_limit_mb: 2048,
        timeout_s: 10,
        dict: "http.dict",
    },
    Target {
        name: "config",
        max_len: 4096,
        rss_limit_mb: 2048,
        timeout_s: 10,
        dict: "yaml.dict",
    },
    Target {
        name: "batch_upload",
        max_len: 4096,
        rss_limit_mb: 2048,
        timeout_s: 10,
        dict: "json.dict",
    },
    Target {
        name: "guard_scan",
        max_len: 4096,
        rss_limit_mb: 2048,
        timeout_s: 10,
        dict: "guard.dict",
    },
    Target {
        name: "cache_spill",
        max_len: 4096,
        rss_limit_mb: 2048,
        timeout_s: 10,
        dict: "spill.dict",
    },
];

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = crate::workspace_root()?;
    let targets: Vec<&Target> = if args.targets.is_empty() {
        TARGETS.iter().collect()
    } else {
        args.targets
            .iter()
            .map(|n| {
                TARGETS.iter().find(|t| t.name == n).with_context(|| {
                    let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
                    format!("no fuzz target `{n}` (targets: {})", names.join(", "))
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    ensure_tools()?;
    let machine = Machine::probe(&root);
    println!("xtask fuzz: building the fuzz targets (nightly, ASan, debug assertions)");
    let built = cargo_fuzz(&root, "build")
        .status()
        .context("running cargo fuzz build")?;
    if !built.success() {
        bail!("cargo fuzz build failed");
    }
    let load_before = load_average().unwrap_or_else(|| "unknown".into());
    let mut rows = Vec::new();
    for t in targets {
        let row = fuzz_one(&root, t, &args, &machine)?;
        println!(
            "xtask fuzz: {}: {} executions, {} exec/s, cov {}, ft {}, {} crash(es), stopped by {}",
            t.name, row.execs, row.exec_per_s, row.cov, row.ft, row.crashes, row.stopped_by
        );
        rows.push(row);
    }
    let out = args.out.clone().unwrap_or_else(|| {
        root.join("benches/results")
            .join(format!("fuzz-{}.md", machine.date))
    });
    let old = fs::read_to_string(&out).unwrap_or_default();
    let load = format!(
        "{load_before} before, {} after",
        load_average().unwrap_or_else(|| "unknown".into())
    );
    let text = report(&machine, &args, &rows, &old, &tool_versions(), &load);
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
    println!("\n{text}\nxtask fuzz: wrote {}", out.display());
    let crashes: u64 = rows.iter().map(|r| r.crashes).sum();
    if crashes > 0 {
        bail!(
            "{crashes} crash(es); minimized inputs are under fuzz/crashers/ and \
             `cargo test -p tollgate --test fuzz_crashers` replays them"
        );
    }
    Ok(())
}

/// What one target's run measured.
#[derive(Debug, Default, Clone, PartialEq)]
struct Row {
    target: String,
    execs: u64,
    exec_per_s: u64,
    cov: u64,
    ft: u64,
    corpus: u64,
    crashes: u64,
    wall_s: u64,
    stopped_by: String,
    machine: String,
    commit: String,
    notes: String,
}

/// Figures read from libFuzzer's output.
#[derive(Debug, Default, PartialEq)]
struct Stats {
    /// From the last status line (`#N ... cov: C ft: F corp: U/...`).
    execs: u64,
    cov: u64,
    ft: u64,
    corpus: u64,
    /// From `-print_final_stats=1`.
    final_execs: Option<u64>,
    final_rate: Option<u64>,
    /// The first panic: `location: message`.
    panic: Option<String>,
    /// libFuzzer's SUMMARY line (deadly signal, timeout, out-of-memory).
    summary: Option<String>,
}

impl Stats {
    fn line(&mut self, line: &str) {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix('#') {
            if let (Some(n), Some(cov)) = (leading_number(rest), field(line, "cov:")) {
                self.execs = n;
                self.cov = cov;
                self.ft = field(line, "ft:").unwrap_or(self.ft);
                self.corpus = field(line, "corp:").unwrap_or(self.corpus);
            }
        } else if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            self.final_execs = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            self.final_rate = v.trim().parse().ok();
        } else if line.starts_with("thread '") && line.contains("panicked at ") {
            if self.panic.is_none() {
                let at = line.split("panicked at ").nth(1).unwrap_or("");
                self.panic = Some(at.trim_end_matches(':').to_string());
            }
        } else if let Some(p) = self.panic.as_mut().filter(|p| !p.contains(": ")) {
            // The line after `panicked at file:line:col:` is the message.
            p.push_str(": ");
            p.push_str(line);
        } else if line.starts_with("SUMMARY: ") && self.summary.is_none() {
            self.summary = Some(line.trim_start_matches("SUMMARY: ").to_string());
        }
    }
}

/// The digits at the start of `s`.
fn leading_number(s: &str) -> Option<u64> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

/// The number after `name` in a status line (`cov: 123`, `corp: 45/6789b`).
fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(name)? + name.len();
    leading_number(line[at..].trim_start())
}

fn fuzz_one(root: &Path, t: &Target, args: &Args, machine: &Machine) -> anyhow::Result<Row> {
    let fuzz_dir = root.join("fuzz");
    let scratch = fuzz_dir.join("scratch").join(t.name);
    let corpus = scratch.join("corpus");
    let artifacts = fuzz_dir.join("artifacts").join(t.name);
    let crashers = fuzz_dir.join("crashers").join(t.name);
    for d in [&corpus, &artifacts, &crashers] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let before = artifact_files(&artifacts);
    let log_path = scratch.join("fuzz.log");
    let mut log = fs::File::create(&log_path)?;
    println!(
        "\n==> fuzz {}: up to {} s or {} runs (log: {})",
        t.name,
        args.time,
        args.runs,
        log_path.display()
    );
    let mut cmd = cargo_fuzz(root, "run");
    cmd.arg(t.name)
        .arg(&corpus)
        .arg(fuzz_dir.join("corpus").join(t.name))
        .arg("--")
        .arg(format!("-max_total_time={}", args.time))
        .arg(format!("-max_len={}", t.max_len))
        .arg(format!("-rss_limit_mb={}", t.rss_limit_mb))
        .arg(format!("-timeout={}", t.timeout_s))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(format!("-runs={}", args.runs));
    let dict = fuzz_dir.join("dicts").join(t.dict);
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting cargo fuzz run")?;
    let mut stats = Stats::default();
    let mut last_echo = Instant::now();
    let stderr = child.stderr.take().context("no stderr from cargo fuzz")?;
    for line in BufReader::new(stderr).split(b'\n') {
        let line = String::from_utf8_lossy(&line?).into_owned();
        use std::io::Write;
        writeln!(log, "{line}")?;
        stats.line(&line);
        // libFuzzer prints a line per new input; echo a status line every 30 s, and crashes.
        let status = line.starts_with('#') && line.contains("cov:");
        if (status && last_echo.elapsed().as_secs() >= 30)
            || line.contains("panicked at")
            || line.starts_with("SUMMARY:")
            || line.starts_with("==")
        {
            println!("  {}: {line}", t.name);
            last_echo = Instant::now();
        }
    }
    let status = child.wait()?;
    let wall_s = started.elapsed().as_secs();
    let new: Vec<PathBuf> = artifact_files(&artifacts)
        .into_iter()
        .filter(|p| !before.contains(p))
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned());
            n.is_some_and(|n| {
                ["crash-", "oom-", "timeout-", "leak-"]
                    .iter()
                    .any(|k| n.starts_with(k))
            })
        })
        .collect();
    for a in &new {
        let saved = save_crasher(root, t.name, a, &crashers, !args.no_minimize)?;
        println!("  {}: crash saved as {}", t.name, saved.display());
    }
    if !status.success() && new.is_empty() {
        bail!(
            "cargo fuzz run {} failed ({status}) without a crash artifact; see {}",
            t.name,
            log_path.display()
        );
    }
    let execs = stats.final_execs.unwrap_or(stats.execs).max(stats.execs);
    let exec_per_s = stats
        .final_rate
        .filter(|r| *r > 0)
        .unwrap_or_else(|| execs / wall_s.max(1));
    let stopped_by = if !new.is_empty() {
        "crash".to_string()
    } else if execs >= args.runs {
        "runs".to_string()
    } else {
        "time".to_string()
    };
    let mut notes = Vec::new();
    if stopped_by == "time" {
        let minutes = args.runs as f64 / exec_per_s.max(1) as f64 / 60.0;
        notes.push(format!(
            "time limit ({} s) before {} runs: at {exec_per_s} exec/s they would take {minutes:.0} min",
            args.time, args.runs
        ));
    }
    if let Some(p) = &stats.panic {
        notes.push(format!("panic at {p}"));
    } else if let Some(s) = &stats.summary {
        notes.push(s.clone());
    }
    Ok(Row {
        target: t.name.to_string(),
        execs,
        exec_per_s,
        cov: stats.cov,
        ft: stats.ft,
        corpus: stats.corpus,
        crashes: new.len() as u64,
        wall_s,
        stopped_by,
        machine: format!("{} vCPU, {}", machine.nproc, machine.cpu_model),
        commit: machine.commit.clone(),
        notes: notes.join("; "),
    })
}

/// Crash artifacts currently in `dir`.
fn artifact_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Minimizes `artifact` (when asked) and copies the result to `crashers/` under the artifact's
/// name, so the replay test picks it up.
fn save_crasher(
    root: &Path,
    target: &str,
    artifact: &Path,
    crashers: &Path,
    minimize: bool,
) -> anyhow::Result<PathBuf> {
    let name = artifact.file_name().context("artifact without a name")?;
    let dest = crashers.join(name);
    let mut source = artifact.to_path_buf();
    if minimize {
        let out_dir = artifact.parent().context("artifact without a directory")?;
        let before = artifact_files(out_dir);
        let tmin = cargo_fuzz(root, "tmin")
            .args(["-r", "10000", target])
            .arg(artifact)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let minimized = artifact_files(out_dir)
            .into_iter()
            .filter(|p| !before.contains(p))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("minimized-from-"))
            });
        match (tmin, minimized) {
            (_, Some(m)) => source = m,
            (r, None) => {
                eprintln!("  {target}: tmin left no minimized input ({r:?}); saving the original")
            }
        }
    }
    fs::copy(&source, &dest)
        .with_context(|| format!("copying {} to {}", source.display(), dest.display()))?;
    Ok(dest)
}

/// `cargo +nightly fuzz <sub> --fuzz-dir fuzz`, niced. The fuzz project always builds into
/// `fuzz/target` (its own nightly, sanitizer-instrumented artifacts), whatever
/// `CARGO_TARGET_DIR` says for the main workspace.
fn cargo_fuzz(root: &Path, sub: &str) -> Command {
    let mut c = niced("cargo");
    c.args(["+nightly", "fuzz", sub, "--fuzz-dir"])
        .arg(root.join("fuzz"))
        .env_remove("CARGO_TARGET_DIR")
        .current_dir(root);
    c
}

/// A command run at the lowest CPU priority when `nice` exists (fuzzing is a background job).
fn niced(program: &str) -> Command {
    let has_nice = Command::new("nice")
        .arg("true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_nice {
        let mut c = Command::new("nice");
        c.args(["-n", "19", program]);
        c
    } else {
        Command::new(program)
    }
}

fn ensure_tools() -> anyhow::Result<()> {
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !nightly {
        println!("xtask fuzz: installing the nightly toolchain");
        let ok = Command::new("rustup")
            .args(["toolchain", "install", "nightly", "--profile", "minimal"])
            .status()
            .context("running rustup")?;
        if !ok.success() {
            bail!("could not install the nightly toolchain (cargo-fuzz needs it)");
        }
    }
    let has_fuzz = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_fuzz {
        println!("xtask fuzz: installing cargo-fuzz");
        let ok = Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .status()
            .context("running cargo install")?;
        if !ok.success() {
            bail!("cargo install cargo-fuzz failed");
        }
    }
    Ok(())
}

/// `cargo-fuzz x.y.z, rustc nightly ...` for the report.
fn tool_versions() -> String {
    let out = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into())
    };
    format!(
        "{}, {}",
        out(&["cargo", "+nightly", "fuzz", "--version"]),
        out(&["rustc", "+nightly", "--version"])
    )
}

const TABLE_HEAD: &str = "| target | executions | exec/s | coverage (cov) | features (ft) | corpus | crashes | wall s | stopped by | machine | commit | notes |\n|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|\n";

/// Heading of the hand-written part of a results file, kept as it is by later runs.
const NOTES: &str = "\n## Notes";

/// The markdown report: this run's rows, plus the rows of other targets from `old`, plus the
/// hand-written notes of `old` (from [`NOTES`] to the end).
fn report(
    machine: &Machine,
    args: &Args,
    rows: &[Row],
    old: &str,
    tools: &str,
    load: &str,
) -> String {
    let mut table: Vec<(String, String)> = old
        .lines()
        .filter_map(|l| {
            let name = l.strip_prefix("| `")?.split('`').next()?;
            TARGETS
                .iter()
                .any(|t| t.name == name)
                .then(|| (name.to_string(), l.to_string()))
        })
        .filter(|(name, _)| !rows.iter().any(|r| &r.target == name))
        .collect();
    for r in rows {
        table.push((
            r.target.clone(),
            format!(
                "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} | `{}` | {} |",
                r.target,
                r.execs,
                r.exec_per_s,
                r.cov,
                r.ft,
                r.corpus,
                r.crashes,
                r.wall_s,
                r.stopped_by,
                r.machine,
                r.commit,
                r.notes.replace('|', "\\|"),
            ),
        ));
    }
    table.sort_by_key(|(name, _)| TARGETS.iter().position(|t| t.name == name));
    let limits: Vec<String> = TARGETS
        .iter()
        .map(|t| format!("`{}` {}", t.name, t.max_len))
        .collect();
    let mut s = format!(
        "# Tollgate fuzzing: {date}, {host}\n\n\
         | | |\n|---|---|\n\
         | Machine | {nproc} vCPU, {cpu}, kernel {kernel}, host `{host}` |\n\
         | Commit (last run) | `{commit}` |\n\
         | Last run | up to {time} s or {runs} executions per target, one target at a time under `nice -n 19` |\n\
         | Load average (last run) | {load} (1/5/15 min; other work on the machine lowers exec/s) |\n\
         | Fuzzer | {tools}; libFuzzer with AddressSanitizer, debug assertions and overflow checks |\n\
         | Limits | -max_len per target: {limits}; -rss_limit_mb 2048; -timeout 10 s |\n\
         | Reproduce | `cargo xtask fuzz --time {time} --runs {runs}` |\n\n\
         `cov` is libFuzzer's count of covered code edges, `ft` its count of features (edges with \
         hit counts, compared values); both come from the last status line. Crashes are minimized \
         into `fuzz/crashers/<target>/` and replayed by `cargo test -p tollgate --test fuzz_crashers`.\n\n",
        date = machine.date,
        host = machine.hostname,
        nproc = machine.nproc,
        cpu = machine.cpu_model,
        kernel = machine.kernel,
        commit = machine.commit,
        time = args.time,
        runs = args.runs,
        tools = tools,
        load = load,
        limits = limits.join(", "),
    );
    s.push_str(TABLE_HEAD);
    for (_, line) in table {
        s.push_str(&line);
        s.push('\n');
    }
    if let Some(at) = old.find(NOTES) {
        s.push_str(&old[at..]);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libfuzzer_output() {
        let mut st = Stats::default();
        for l in [
            "#2\tINITED cov: 10 ft: 11 corp: 3/120b exec/s: 0 rss: 40Mb",
            "#1048576\tpulse  cov: 812 ft: 3190 corp: 410/52Kb lim: 4096 exec/s: 34952 rss: 512Mb",
            "#2000000\tDONE   cov: 815 ft: 3201 corp: 412/53Kb lim: 4096 exec/s: 33333 rss: 530Mb",
            "Done 2000000 runs in 60 second(s)",
            "stat::number_of_executed_units: 2000000",
            "stat::average_exec_per_sec:     33333",
        ] {
            st.line(l);
        }
        assert_eq!(
            (st.execs, st.cov, st.ft, st.corpus),
            (2_000_000, 815, 3201, 412)
        );
        assert_eq!(
            (st.final_execs, st.final_rate),
            (Some(2_000_000), Some(33_333))
        );
        assert_eq!(st.panic, None);
    }

    #[test]
    fn parses_a_panic() {
        let mut st = Stats::default();
        st.line("thread '<unnamed>' panicked at agent/src/fuzzing.rs:10:5:");
        st.line("assertion `left == right` failed");
        st.line("==1234== ERROR: libFuzzer: deadly signal");
        st.line("SUMMARY: libFuzzer: deadly signal");
        assert_eq!(
            st.panic.as_deref(),
            Some("agent/src/fuzzing.rs:10:5: assertion `left == right` failed")
        );
        assert_eq!(st.summary.as_deref(), Some("libFuzzer: deadly signal"));
    }

    #[test]
    fn report_keeps_rows_of_other_targets() {
        let machine = Machine {
            hostname: "vm".into(),
            nproc: 2,
            cpu_model: "cpu".into(),
            kernel: "6".into(),
            date: "2024-01-01".into(),
            commit: "abc".into(),
        };
        let args = Args {
            time: 5,
            runs: 10,
            targets: vec!["chunked".into()],
            out: None,
            no_minimize: false,
        };
        let row = |t: &str, execs| Row {
            target: t.into(),
            execs,
            stopped_by: "runs".into(),
            ..Row::default()
        };
        let first = report(
            &machine,
            &args,
            &[row("config", 1), row("chunked", 2)],
            "",
            "t",
            "l",
        );
        let first = format!("{first}\n## Notes\n\nhand-written\n");
        let second = report(&machine, &args, &[row("chunked", 3)], &first, "t", "l");
        assert!(
            second.ends_with("\n\n## Notes\n\nhand-written\n"),
            "{second}"
        );
        let rows: Vec<&str> = second.lines().filter(|l| l.starts_with("| `")).collect();
        assert_eq!(rows.len(), 2, "{second}");
        assert!(rows[0].starts_with("| `chunked` | 3 |"), "{second}");
        assert!(rows[1].starts_with("| `config` | 1 |"), "{second}");
    }
}
