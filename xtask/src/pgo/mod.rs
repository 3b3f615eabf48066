//! `cargo xtask pgo`: the agent built with profile-guided optimisation, at `target/pgo/tollgate`.
//!
//! Why: at one connection most of a request's user time is instruction-cache and branch misses
//! (the load generator and the simulator run between two requests and evict the agent's code).
//! A profile tells LLVM which paths are hot, so it lays them out together, inlines along them
//! and moves cold code (errors, reloads, the CLI) out of the way. Measured in ARCHITECTURE.md.
//!
//! 1. Builds the agent instrumented (`-Cprofile-generate`) for the host triple given
//!    explicitly, so build scripts and proc macros are not instrumented (cargo applies
//!    `RUSTFLAGS` to them only when no `--target` is given).
//! 2. Trains it in front of a zero-delay simulator with the bench's generator: one, 16 and 64
//!    connections, 2 KB prompts, SSE streams, the governed path (a key, rate limits, a budget
//!    with reservation) and the epoll driver (only epoll where io_uring is refused, as in a
//!    container build). Every training request must succeed: a profile of error paths would
//!    make them look hot.
//! 3. Merges the profiles with `llvm-profdata` (a version that reads rustc's LLVM format:
//!    `LLVM_PROFDATA`, rustup's `llvm-tools`, or the newest `llvm-profdata-N` on PATH; Debian
//!    12's `llvm-19` reads rustc 1.95's) and builds again with `-Cprofile-use`.
//!
//! 4. When a BOLT is found (`bolt.rs`: `apt-get install bolt-19`), that build is linked with its
//!    relocations, instrumented by BOLT, trained again the same way, and laid out by BOLT from
//!    the counts. `--no-bolt` stops at step 3.
//!
//! Two full release builds: about 20 minutes on 2 cores. Measure the result against the plain
//! build with `cargo xtask bench --against-nginx --agent target/pgo/tollgate`.

mod bolt;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::bench::agent;
use crate::bench::governance;
use crate::bench::measure::{Load, Pacing, Point};
use crate::bench::process::Server;
use crate::bench::{Layout, MODEL};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds of load per training point.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Stop after the profile-guided build, without BOLT's layout even when llvm-bolt is there.
    #[arg(long)]
    no_bolt: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let layout = Layout::discover()?;
    let host = host_triple()?;
    // Found before the builds, so a missing tool fails in seconds rather than after one build.
    let pgo = layout
        .release
        .parent()
        .context("target directory")?
        .join("pgo");
    std::fs::create_dir_all(&pgo)?;
    let profdata = find_profdata(&host, &pgo)?;
    let bolt = if args.no_bolt {
        None
    } else {
        let found = bolt::find();
        match &found {
            Some(b) => eprintln!("pgo: laying the result out with {}", b.bolt.display()),
            None => eprintln!(
                "pgo: no llvm-bolt (apt-get install bolt-19, or set LLVM_BOLT): \
                 the agent will be profile-guided only"
            ),
        }
        found
    };
    let profiles = pgo.join("profiles");
    if profiles.exists() {
        std::fs::remove_dir_all(&profiles)
            .with_context(|| format!("clearing {}", profiles.display()))?;
    }
    std::fs::create_dir_all(&profiles)?;
    let build_dir = pgo.join("build");
    let built = build_dir.join(&host).join("release").join("tollgate");

    if let Err(e) = crate::bench::build(&layout, false)? {
        bail!("{e}");
    }
    eprintln!("pgo: building the instrumented agent ({host})");
    cargo_build(
        &layout.root,
        &build_dir,
        &host,
        &format!("-Cprofile-generate={}", profiles.display()),
    )?;
    let trained = Layout {
        root: layout.root.clone(),
        release: layout.release.clone(),
        work: pgo.join("train"),
        agent: built.clone(),
    };
    train(&trained, args.seconds)?;

    let raw = profile_files(&profiles)?;
    let merged = pgo.join("tollgate.profdata");
    eprintln!(
        "pgo: merging {} profile(s) with {}",
        raw.len(),
        profdata.display()
    );
    let status = Command::new(&profdata)
        .arg("merge")
        .arg("-o")
        .arg(&merged)
        .args(&raw)
        .status()
        .with_context(|| format!("running {}", profdata.display()))?;
    if !status.success() {
        bail!(
            "{} merge failed ({status}): it may be older than rustc's LLVM (`rustc -vV`); \
             install a newer one (apt-get install llvm-19) or set LLVM_PROFDATA",
            profdata.display()
        );
    }

    eprintln!("pgo: building the agent with the profile");
    let mut use_profile = format!("-Cprofile-use={}", merged.display());
    if bolt.is_some() {
        // BOLT moves functions only in a binary that kept its relocations.
        use_profile.push_str(" -Clink-arg=-Wl,--emit-relocs");
    }
    cargo_build(&layout.root, &build_dir, &host, &use_profile)?;
    let out = pgo.join("tollgate");
    match &bolt {
        Some(b) => lay_out(&layout, b, &built, &pgo, &out, args.seconds)?,
        None => {
            std::fs::copy(&built, &out)
                .with_context(|| format!("copying {} to {}", built.display(), out.display()))?;
        }
    }
    println!("{}", out.display());
    eprintln!(
        "pgo: built {}; compare: cargo xtask bench --against-nginx --agent {}",
        out.display(),
        out.display()
    );
    Ok(())
}

/// Step 4: `built` instrumented by BOLT, trained like the compiler's profile, and laid out by the
/// counts into `out`.
fn lay_out(
    layout: &Layout,
    b: &bolt::Bolt,
    built: &Path,
    pgo: &Path,
    out: &Path,
    seconds: f64,
) -> anyhow::Result<()> {
    let dir = pgo.join("bolt");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let counts = dir.join("counts");
    std::fs::create_dir_all(&counts)?;
    let instrumented = dir.join("tollgate");
    eprintln!("pgo: instrumenting the profile-guided agent with BOLT");
    b.instrument(built, &instrumented, &counts.join("tollgate"))?;
    let trained = Layout {
        root: layout.root.clone(),
        release: layout.release.clone(),
        work: dir.join("train"),
        agent: instrumented,
    };
    train(&trained, seconds)?;
    let fdata = dir.join("tollgate.fdata");
    b.merge(&counts, &fdata)?;
    eprintln!("pgo: laying the agent out with BOLT");
    b.optimize(built, &fdata, out)
}

/// `cargo build --release -p tollgate --target HOST` into `target_dir` with `flag` added to the
/// caller's `RUSTFLAGS`.
fn cargo_build(root: &Path, target_dir: &Path, host: &str, flag: &str) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let flags = rustflags(std::env::var("RUSTFLAGS").ok().as_deref(), flag);
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "--locked", "-p", "tollgate"])
        .args(["--bin", "tollgate", "--target", host, "--target-dir"])
        .arg(target_dir)
        .env("RUSTFLAGS", flags)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build with {flag} failed ({status})");
    }
    Ok(())
}

/// The caller's `RUSTFLAGS` with `flag` appended.
fn rustflags(existing: Option<&str>, flag: &str) -> String {
    match existing.map(str::trim).filter(|f| !f.is_empty()) {
        Some(f) => format!("{f} {flag}"),
        None => flag.to_string(),
    }
}

/// The training load: each point against the open agent (io_uring), then the governed one,
/// then the open agent on epoll.
fn train(layout: &Layout, seconds: f64) -> anyhow::Result<()> {
    let sim = crate::bench::zero_delay_sim(layout, &layout.work)?;
    let load = crate::bench::plain_load(layout, seconds);

    // Where io_uring is refused (a container build under Docker's default seccomp profile),
    // the agent's `auto` driver serves on epoll: train that instead of failing.
    let driver = if io_uring_available() {
        "io_uring"
    } else {
        eprintln!("pgo: io_uring is not available here; training on epoll only");
        "epoll"
    };
    let open = start_open(layout, driver, sim.addr)?;
    train_points(&load, &open)?;
    stop_writing_profile(open)?;

    let (governed, key) =
        governance::start_governed(layout, &layout.work.join("governed"), driver, sim.addr)?;
    let keyed = Load {
        headers: vec![format!("Authorization: Bearer {key}")],
        ..load.clone()
    };
    // The same points as the open agent, so neither path is laid out from thinner counts
    // (trained at fewer, governance measured ~10 % on the BOLT build; ARCHITECTURE.md).
    train_points(&keyed, &governed)?;
    stop_writing_profile(governed)?;

    if driver != "epoll" {
        let epoll = start_open(layout, "epoll", sim.addr)?;
        let target = epoll.addr.to_string();
        for point in [unary(16), STREAM] {
            point_ok(&load, &target, point, &epoll)?;
        }
        stop_writing_profile(epoll)?;
    }
    sim.stop()
}

/// A closed-loop point of `c` connections without streaming.
fn unary(c: usize) -> Point {
    Point {
        pacing: Pacing::Closed(c),
        stream: false,
    }
}

/// The streaming point: four connections of SSE.
const STREAM: Point = Point {
    pacing: Pacing::Closed(4),
    stream: true,
};

/// The points every agent side trains at: 1, 16 and 64 connections, 16 with 2 KB prompts,
/// and streams.
fn train_points(load: &Load, server: &Server) -> anyhow::Result<()> {
    let long = Load {
        prompt_bytes: Some(2048),
        ..load.clone()
    };
    let target = server.addr.to_string();
    for (l, point) in [
        (load, unary(1)),
        (load, unary(16)),
        (load, unary(64)),
        (&long, unary(16)),
        (load, STREAM),
    ] {
        point_ok(l, &target, point, server)?;
    }
    Ok(())
}

/// Whether this process may set up an io_uring (the kernel has it and no seccomp filter or
/// `io_uring_disabled` sysctl refuses it).
fn io_uring_available() -> bool {
    // struct io_uring_params is 120 bytes; zeroed asks for nothing special.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes `params` (120 bytes, as the kernel's struct) and
    // returns a new file descriptor or -1; the descriptor is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        return false;
    }
    // SAFETY: a descriptor this function just opened and nothing else holds.
    unsafe { libc::close(fd as i32) };
    true
}

fn start_open(
    layout: &Layout,
    driver: &str,
    upstream: std::net::SocketAddr,
) -> anyhow::Result<Server> {
    let dir = layout.work.join(format!("open-{driver}"));
    agent::start(&layout.agent, &dir, driver, upstream, MODEL, false)
}

/// One training point; fails when any request failed.
fn point_ok(load: &Load, target: &str, point: Point, server: &Server) -> anyhow::Result<()> {
    let r = load.measure(target, point, server.pid())?;
    eprintln!(
        "pgo: trained {} at {target}: {:.0} req/s",
        point.label(),
        r.rps
    );
    if r.errors > 0 {
        bail!(
            "{} requests failed while training at {}; see {}",
            r.errors,
            point.label(),
            server.log.display()
        );
    }
    Ok(())
}

/// SIGTERM: the instrumented agent writes its profile as it exits.
fn stop_writing_profile(server: Server) -> anyhow::Result<()> {
    let status = server.stop_within(std::time::Duration::from_secs(30))?;
    if !status.success() {
        bail!("the instrumented agent exited with {status}: its profile may be missing");
    }
    Ok(())
}

/// The `.profraw` files in `dir`, at least one.
fn profile_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    files_ending(dir, "profraw", "profile")
}

/// The files in `dir` with extension `ext`, sorted; at least one (else the instrumented agent
/// wrote no `what`).
fn files_ending(dir: &Path, ext: &str, what: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "the instrumented agent wrote no {what} in {}",
            dir.display()
        );
    }
    Ok(files)
}

/// The host target triple, from `rustc -vV`.
fn host_triple() -> anyhow::Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    parse_host(&String::from_utf8_lossy(&out.stdout)).context("no `host:` line in `rustc -vV`")
}

fn parse_host(version: &str) -> Option<String> {
    version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_string())
}

/// `llvm-profdata` to merge with (see the module comment for the order).
fn find_profdata(host: &str, scratch: &Path) -> anyhow::Result<PathBuf> {
    let rustup = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| {
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
                .join("lib/rustlib")
                .join(host)
                .join("bin/llvm-profdata")
        });
    let explicit = std::env::var_os("LLVM_PROFDATA").map(PathBuf::from);
    let candidates = profdata_candidates(explicit.clone(), rustup, &|name| {
        crate::test::on_path(name).then(|| PathBuf::from(name))
    });
    if candidates.is_empty() {
        bail!(
            "no llvm-profdata: install llvm-19 (apt-get install llvm-19), rustup's llvm-tools, \
             or set LLVM_PROFDATA"
        );
    }
    // A tool that exists may still be too old for rustc's profile format (Debian 12's
    // llvm-profdata-14 is, for rustc 1.95): merge a tiny program's profile with each, so that
    // an unusable one fails here in a second, not after an instrumented build and training.
    let probe = probe_profile(scratch)?;
    for tool in &candidates {
        if merges(tool, &probe, scratch) {
            return Ok(tool.clone());
        }
        eprintln!(
            "pgo: {} cannot read rustc's profiles (older than rustc's LLVM, `rustc -vV`)",
            tool.display()
        );
        if explicit.is_some() {
            bail!(
                "LLVM_PROFDATA={} cannot read rustc's profiles",
                tool.display()
            );
        }
    }
    bail!(
        "no llvm-profdata here reads rustc's profiles (tried {}): install a newer one \
         (apt-get install llvm-19), rustup's llvm-tools, or set LLVM_PROFDATA",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A raw profile written by an empty program built with this rustc's `-Cprofile-generate`.
fn probe_profile(scratch: &Path) -> anyhow::Result<PathBuf> {
    let dir = scratch.join("probe");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let raw = dir.join("raw");
    std::fs::create_dir_all(&raw)?;
    let source = dir.join("probe.rs");
    std::fs::write(&source, "fn main() {}\n")?;
    let binary = dir.join("probe");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let built = Command::new(rustc)
        .arg(format!("-Cprofile-generate={}", raw.display()))
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .status()
        .context("running rustc for the profile probe")?;
    if !built.success() {
        bail!("rustc could not build an instrumented probe ({built})");
    }
    let ran = Command::new(&binary)
        .status()
        .context("running the profile probe")?;
    if !ran.success() {
        bail!("the instrumented probe failed ({ran})");
    }
    profile_files(&raw)?
        .into_iter()
        .next()
        .context("the probe wrote no profile")
}

/// Whether `tool merge` reads `raw`.
fn merges(tool: &Path, raw: &Path, scratch: &Path) -> bool {
    Command::new(tool)
        .arg("merge")
        .arg("-o")
        .arg(scratch.join("probe").join("probe.profdata"))
        .arg(raw)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The tools to try, in order: `explicit` alone when given; else `rustup`'s (made by rustc's
/// own LLVM) when it exists, the `llvm-profdata-N` that `on_path` finds, newest first, then
/// plain `llvm-profdata` (often the distribution's oldest: Debian 12's is LLVM 14).
fn profdata_candidates(
    explicit: Option<PathBuf>,
    rustup: Option<PathBuf>,
    on_path: &dyn Fn(&str) -> Option<PathBuf>,
) -> Vec<PathBuf> {
    if let Some(e) = explicit {
        return vec![e];
    }
    rustup
        .filter(|r| r.is_file())
        .into_iter()
        .chain(
            (14..=40)
                .rev()
                .filter_map(|v| on_path(&format!("llvm-profdata-{v}"))),
        )
        .chain(on_path("llvm-profdata"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On this kernel (CI runs as root on the same one) io_uring is there; the probe must say
    /// so, or training would silently skip the driver the agent serves on.
    #[test]
    fn the_io_uring_probe_matches_the_kernel() {
        let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
            .map(|s| s.trim() == "2")
            .unwrap_or(false);
        assert_eq!(io_uring_available(), !disabled);
    }

    #[test]
    fn the_host_triple_is_read_from_rustc_version_output() {
        let out = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.95.0\n";
        assert_eq!(parse_host(out).as_deref(), Some("x86_64-unknown-linux-gnu"));
        assert_eq!(parse_host("rustc 1.95.0\n"), None);
    }

    #[test]
    fn rustflags_keep_the_callers_and_add_the_profile_flag() {
        assert_eq!(rustflags(None, "-Cprofile-use=a"), "-Cprofile-use=a");
        assert_eq!(rustflags(Some("  "), "-Cprofile-use=a"), "-Cprofile-use=a");
        assert_eq!(
            rustflags(Some("-Ctarget-cpu=native"), "-Cprofile-use=a"),
            "-Ctarget-cpu=native -Cprofile-use=a"
        );
    }

    #[test]
    fn profdata_candidates_are_explicit_alone_else_rustup_then_newest_versioned_first() {
        let dir = std::env::temp_dir().join(format!("xtask-pgo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rustup = dir.join("llvm-profdata");
        let path = |names: &'static [&'static str]| {
            move |n: &str| {
                names
                    .contains(&n)
                    .then(|| PathBuf::from("/usr/bin").join(n))
            }
        };
        let usr = |n: &str| PathBuf::from("/usr/bin").join(n);
        let all = path(&["llvm-profdata", "llvm-profdata-14", "llvm-profdata-19"]);
        // rustup's tool is tried only when it is there.
        assert_eq!(
            profdata_candidates(None, Some(rustup.clone()), &all),
            vec![
                usr("llvm-profdata-19"),
                usr("llvm-profdata-14"),
                usr("llvm-profdata")
            ]
        );
        std::fs::write(&rustup, b"").unwrap();
        assert_eq!(
            profdata_candidates(None, Some(rustup.clone()), &all)[0],
            rustup
        );
        assert_eq!(
            profdata_candidates(Some("/opt/p".into()), Some(rustup), &all),
            vec![PathBuf::from("/opt/p")]
        );
        assert!(profdata_candidates(None, None, &path(&[])).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The probe is what makes a too-old tool fail fast: an instrumented empty program must
    /// leave a raw profile, and a tool that cannot merge anything must be refused.
    #[test]
    fn the_probe_profile_is_written_and_a_broken_tool_is_refused() {
        let dir = std::env::temp_dir().join(format!("xtask-pgo-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = probe_profile(&dir).unwrap();
        assert!(raw.extension().is_some_and(|x| x == "profraw"), "{raw:?}");
        assert!(std::fs::metadata(&raw).unwrap().len() > 0);
        assert!(!merges(Path::new("false"), &raw, &dir));
        assert!(!merges(Path::new("/no/such/llvm-profdata"), &raw, &dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_raw_profiles_are_merged() {
        let dir = std::env::temp_dir().join(format!("xtask-pgo-raw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(
            profile_files(&dir).is_err(),
            "an empty directory is an error"
        );
        std::fs::write(dir.join("default_1_2.profraw"), b"x").unwrap();
        std::fs::write(dir.join("merged.profdata"), b"x").unwrap();
        let files = profile_files(&dir).unwrap();
        assert_eq!(files, vec![dir.join("default_1_2.profraw")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
