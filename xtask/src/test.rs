//! `cargo xtask test`: the one test command (`.ci/run` runs it).
//!
//! 1. Installs what the suite needs, only when it is missing, so a second run installs nothing:
//!    Debian packages (`apt-get update` once, then `apt-get install -y`): `python3-venv` when
//!    Python cannot make a virtual environment, `clang-19 llvm-19 libbpf-dev bpftool` for the
//!    kernel programs and their tests, `redis-server` (cluster-mode tests start their own on a
//!    loopback port), `postgresql` (the ledger-shipping test runs its own server from the
//!    package's binaries, `initdb` into a temporary directory, on a loopback port), `chromium`
//!    (the dashboard test drives it with Playwright from `.venv`), `nginx` and `openssl` (the
//!    bench floor and the TLS
//!    upstream tests; optional, a failure only warns). A first install that stops on dpkg's "interrupted" error is repaired with
//!    `dpkg --configure -a` and retried. Then a Python virtual environment in `.venv` with
//!    `tests/python/requirements.txt` (reinstalled when that file changes), `.venv-focus` with
//!    the FOCUS validator (`tests/finops/requirements.txt`), and `.venv-deploy`
//!    with `tests/deploy/requirements.txt` (checkov, kubernetes-validate). Also `golang-go` and
//!    Debian's Sprig and YAML Go sources, for the Helm chart renderer (`deploy/helm/render`).
//! 2. `cargo build -p tollgate -p tollgate-sim`: the binaries the end-to-end tests spawn.
//! 3. `cargo test --workspace --no-fail-fast`: unit, simulator, kernel and end-to-end tests.
//! 4. `.venv/bin/python -m pytest tests/python`: the OpenAI and Anthropic SDK tests.
//! 5. `.venv-deploy/bin/python -m pytest tests/deploy`: the Helm chart renders, validates and
//!    passes the policy scanner; then the container image builds where a container engine runs
//!    (skipped with the reason printed where none does, as on the CI machines).
//!
//! Every step's counts are summed and the last line printed is exactly `N passed, N failed`.
//! The exit status is non-zero when anything failed, including a step that could not run (a
//! build error counts as one failure). `--no-install` skips step 1 (for machines where the
//! packages are known to be there or root is not available).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};

/// Packages the kernel build and tests need.
const KERNEL_PACKAGES: [&str; 4] = ["clang-19", "llvm-19", "libbpf-dev", "bpftool"];
/// Servers the end-to-end tests start themselves on loopback (and stop by pid).
const SERVICE_PACKAGES: [&str; 2] = ["redis-server", "postgresql"];
/// The browser the dashboard test drives (Playwright's own downloads are not reachable).
const BROWSER_PACKAGES: [&str; 1] = ["chromium"];
/// Where Debian puts it; the test finds it through `TOLLGATE_CHROMIUM`.
const CHROMIUM: &str = "/usr/bin/chromium";
/// The Helm chart renderer's toolchain: Go with Helm's template library (Sprig v3) from Debian.
const DEPLOY_PACKAGES: [&str; 3] = [
    "golang-go",
    "golang-github-masterminds-sprig-dev",
    "golang-gopkg-yaml.v3-dev",
];
/// Packages that are nice to have; failing to install them only warns.
const OPTIONAL_PACKAGES: [&str; 2] = ["nginx", "openssl"];
/// The Python SDK tests' venv and requirements, relative to the workspace root.
const SDK_VENV: (&str, &str) = (".venv", "tests/python/requirements.txt");
/// The deployment checks' venv: apart, because checkov pins an older `packaging` than pytest 9.
const DEPLOY_VENV: (&str, &str) = (".venv-deploy", "tests/deploy/requirements.txt");
/// The FinOps Foundation's FOCUS validator, for `tollgate export focus` (its own venv: it pins
/// old numpy and pandas). The end-to-end test finds it through `TOLLGATE_FOCUS_VALIDATOR`.
const FOCUS_VENV: (&str, &str) = (".venv-focus", "tests/finops/requirements.txt");
/// Written into the venv after a successful install: the requirements it was made from.
const VENV_MARKER: &str = ".tollgate-requirements";

#[derive(clap::Args)]
pub struct Args {
    /// Do not install anything (Debian packages, Python venv); run with what is there.
    #[arg(long)]
    no_install: bool,
}

/// Passed and failed counts of one step.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = crate::workspace_root()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut steps: Vec<(&str, Counts)> = Vec::new();

    let (python, deploy_python) = if args.no_install {
        (
            Ok(root.join(SDK_VENV.0).join("bin/python")),
            Ok(root.join(DEPLOY_VENV.0).join("bin/python")),
        )
    } else {
        install(&root)
    };

    section("cargo build -p tollgate -p tollgate-sim");
    // Name the compiler the install step just provided: the agent's build script reruns when
    // this variable changes, so a checkout first built before clang-19 was installed (kernel
    // programs stubbed out) gets its real programs now instead of keeping the stubs.
    if std::env::var_os("TOLLGATE_CLANG").is_none() && on_path("clang-19") {
        std::env::set_var("TOLLGATE_CLANG", "clang-19");
    }
    let built = Command::new(&cargo)
        .current_dir(&root)
        .args(["build", "-p", "tollgate", "-p", "tollgate-sim"])
        .stdin(Stdio::null())
        .status()
        .context("running cargo build")?
        .success();
    if !built {
        eprintln!("xtask test: building the binaries failed; the end-to-end tests will fail too");
        steps.push((
            "build",
            Counts {
                failed: 1,
                ..Counts::default()
            },
        ));
    }

    section("cargo test --workspace --no-fail-fast");
    steps.push(("cargo test", cargo_test(&cargo, &root)?));

    section("pytest tests/python");
    steps.push(("python SDK tests", pytest(&root, python, "tests/python")));

    section("pytest tests/deploy");
    steps.push((
        "deployment checks",
        pytest(&root, deploy_python, "tests/deploy"),
    ));

    section("container image");
    steps.push(("container image", image_step(&root)));

    let mut total = Counts::default();
    println!();
    for (name, counts) in &steps {
        println!(
            "xtask test: {name}: {} passed, {} failed, {} ignored",
            counts.passed, counts.failed, counts.ignored
        );
        total += *counts;
    }
    println!(
        "xtask test: finished in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    println!("{} passed, {} failed", total.passed, total.failed);
    if total.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn section(title: &str) {
    println!("\n==> {title}");
}

// ---------------------------------------------------------------------------------------------
// Installation

/// Installs missing Debian packages and the Python venv. Returns the venv's python, or why
/// there is none (the Python step then fails with that reason).
type Venvs = (Result<PathBuf, String>, Result<PathBuf, String>);

fn install(root: &Path) -> Venvs {
    section("installing what is missing");
    let python = find_python();
    let mut required: Vec<&str> = KERNEL_PACKAGES.to_vec();
    required.extend(SERVICE_PACKAGES);
    required.extend(BROWSER_PACKAGES);
    required.extend(DEPLOY_PACKAGES);
    if python.is_none() {
        required.insert(0, "python3-venv");
    }
    let missing_required: Vec<&str> = required.into_iter().filter(|p| !installed(p)).collect();
    let missing_optional: Vec<&str> = OPTIONAL_PACKAGES
        .into_iter()
        .filter(|p| !installed(p))
        .collect();
    if missing_required.is_empty() && missing_optional.is_empty() {
        println!("xtask test: Debian packages: all present");
    } else {
        let mut apt = Apt::new();
        if let Err(e) = apt.install(&missing_required) {
            // The kernel tests skip without clang, so the run goes on, but loudly.
            eprintln!("xtask test: WARNING: could not install {missing_required:?}: {e:#}");
        }
        if let Err(e) = apt.install(&missing_optional) {
            eprintln!("xtask test: warning: optional {missing_optional:?} not installed: {e:#}");
        }
    }
    if Path::new(CHROMIUM).exists() {
        std::env::set_var("TOLLGATE_CHROMIUM", CHROMIUM);
    } else {
        std::env::set_var(
            "TOLLGATE_CHROMIUM",
            format!("missing: no {CHROMIUM} after apt-get"),
        );
    }
    let Some(python) = python.or_else(find_python) else {
        let why = "no python3 that can create a virtual environment (python3-venv)".to_string();
        return (Err(why.clone()), Err(why));
    };
    let make = |v| venv(root, &python, v).map_err(|e| format!("{e:#}"));
    // The export test reads this: the validator's python, or why there is none (then it fails
    // with that reason instead of skipping).
    match make(FOCUS_VENV) {
        Ok(p) => std::env::set_var("TOLLGATE_FOCUS_VALIDATOR", p),
        Err(why) => std::env::set_var("TOLLGATE_FOCUS_VALIDATOR", format!("missing: {why}")),
    }
    let sdk = make(SDK_VENV);
    // The OTLP test runs its receiver with this venv's python (the official protobuf
    // definitions are installed there), or fails with why there is none.
    match &sdk {
        Ok(p) => std::env::set_var("TOLLGATE_SDK_PYTHON", p),
        Err(why) => std::env::set_var("TOLLGATE_SDK_PYTHON", format!("missing: {why}")),
    }
    (sdk, make(DEPLOY_VENV))
}

/// Whether dpkg has the package installed (false where there is no dpkg).
fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"install ok installed"))
}

/// A python3 that can make a venv with pip: the one on PATH, else Debian's.
fn find_python() -> Option<PathBuf> {
    ["python3", "/usr/bin/python3"]
        .into_iter()
        .map(PathBuf::from)
        .find(|python| {
            Command::new(python)
                .args(["-c", "import venv, ensurepip"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

/// apt-get, run as root directly or through `sudo -n`; `apt-get update` at most once.
struct Apt {
    updated: bool,
    sudo: bool,
}

impl Apt {
    fn new() -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        Apt {
            updated: false,
            sudo: !root,
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = if self.sudo {
            let mut c = Command::new("sudo");
            c.args(["-n", program]);
            c
        } else {
            Command::new(program)
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        println!("xtask test: {program} {}", args.join(" "));
        let status = self
            .command(program)
            .args(args)
            .status()
            .with_context(|| format!("running {program}"))?;
        if !status.success() {
            bail!("`{program} {}` failed ({status})", args.join(" "));
        }
        Ok(())
    }

    fn install(&mut self, packages: &[&str]) -> anyhow::Result<()> {
        if packages.is_empty() {
            return Ok(());
        }
        if !self.updated {
            self.run("apt-get", &["update"])?;
            self.updated = true;
        }
        let mut args = vec!["install", "-y"];
        args.extend_from_slice(packages);
        if let Err(first) = self.run("apt-get", &args) {
            // A first install on a fresh machine can stop with "dpkg was interrupted, you must
            // manually run 'dpkg --configure -a'": repair and try once more.
            eprintln!("xtask test: {first:#}; running `dpkg --configure -a` and retrying");
            self.run("dpkg", &["--configure", "-a"])?;
            self.run("apt-get", &args)?;
        }
        Ok(())
    }
}

/// Makes the venv `dir` with `requirements` unless it already has exactly those.
fn venv(
    root: &Path,
    python: &Path,
    (dir, requirements_file): (&str, &str),
) -> anyhow::Result<PathBuf> {
    let venv = root.join(dir);
    let venv_python = venv.join("bin/python");
    let requirements = std::fs::read_to_string(root.join(requirements_file))
        .with_context(|| format!("reading {requirements_file}"))?;
    let marker = venv.join(VENV_MARKER);
    if venv_python.exists() && std::fs::read_to_string(&marker).is_ok_and(|m| m == requirements) {
        println!("xtask test: {dir}: up to date");
        return Ok(venv_python);
    }
    if !venv_python.exists() {
        if venv.exists() {
            std::fs::remove_dir_all(&venv).context("removing a broken venv")?;
        }
        println!("xtask test: creating {dir} with {}", python.display());
        let status = Command::new(python)
            .args(["-m", "venv"])
            .arg(&venv)
            .stdin(Stdio::null())
            .status()
            .context("running python3 -m venv")?;
        if !status.success() {
            bail!("`{} -m venv {dir}` failed ({status})", python.display());
        }
    }
    println!("xtask test: installing {requirements_file} into {dir}");
    let status = Command::new(&venv_python)
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(root.join(requirements_file))
        .stdin(Stdio::null())
        .status()
        .context("running pip install")?;
    if !status.success() {
        bail!("pip install -r {requirements_file} failed ({status})");
    }
    std::fs::write(&marker, requirements).context("writing the venv marker")?;
    Ok(venv_python)
}

// ---------------------------------------------------------------------------------------------
// Running the suites

/// Builds the image where a container engine runs; elsewhere one ignored step, with the reason.
/// The plain build: the step checks that the image builds, and the profile-guided one would
/// double its time.
fn image_step(root: &Path) -> Counts {
    match crate::image::engine() {
        Ok(engine) => match crate::image::build(root, engine, "tollgate:test", false) {
            Ok(()) => Counts {
                passed: 1,
                ..Counts::default()
            },
            Err(e) => {
                eprintln!("xtask test: the container image did not build: {e:#}");
                Counts {
                    failed: 1,
                    ..Counts::default()
                }
            }
        },
        Err(why) => {
            println!("xtask test: container image step skipped: {why}");
            Counts {
                ignored: 1,
                ..Counts::default()
            }
        }
    }
}

/// Runs a command, echoing its stdout line by line, and returns (success, stdout lines).
fn run_echoing(mut cmd: Command) -> anyhow::Result<(bool, Vec<String>)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading child output")?;
        println!("{line}");
        lines.push(line);
    }
    let status = child.wait().context("waiting for the child")?;
    Ok((status.success(), lines))
}

/// Whether `name` is an executable in one of `PATH`'s directories.
pub(crate) fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

fn cargo_test(cargo: &std::ffi::OsStr, root: &Path) -> anyhow::Result<Counts> {
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["test", "--workspace", "--no-fail-fast"]);
    let (success, lines) = run_echoing(cmd)?;
    let mut counts = Counts::default();
    for line in &lines {
        if let Some(c) = parse_cargo_result(line) {
            counts += c;
        }
    }
    if !success && counts.failed == 0 {
        // A build error or a crashed test binary: nothing was counted as failed, yet it failed.
        eprintln!("xtask test: cargo test failed without a failing test (build error?)");
        counts.failed += 1;
    }
    Ok(counts)
}

/// `test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`
fn parse_cargo_result(line: &str) -> Option<Counts> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let (_, fields) = rest.split_once(". ")?;
    let mut counts = Counts::default();
    for field in fields.split(';') {
        let mut words = field.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => counts.passed = n,
            "failed" => counts.failed = n,
            "ignored" => counts.ignored = n,
            _ => {}
        }
    }
    Some(counts)
}

fn pytest(root: &Path, python: Result<PathBuf, String>, dir: &str) -> Counts {
    let failed_step = |why: &str| {
        eprintln!("xtask test: {dir} could not run: {why}");
        Counts {
            failed: 1,
            ..Counts::default()
        }
    };
    let python = match python {
        Ok(p) if p.exists() => p,
        Ok(p) => return failed_step(&format!("{} does not exist", p.display())),
        Err(why) => return failed_step(&why),
    };
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(|| root.join("target"), |t| root.join(t));
    let mut cmd = Command::new(&python);
    cmd.current_dir(root)
        .args(["-m", "pytest", dir, "-q", "-p", "no:cacheprovider"])
        .env("TOLLGATE_BIN_DIR", target.join("debug"));
    let (success, lines) = match run_echoing(cmd) {
        Ok(r) => r,
        Err(e) => return failed_step(&format!("{e:#}")),
    };
    let mut counts = lines
        .iter()
        .rev()
        .find_map(|l| parse_pytest_summary(l))
        .unwrap_or_default();
    if !success && counts.failed == 0 {
        // Exit 5 (no tests collected), a collection error, or a crash.
        eprintln!("xtask test: pytest failed without a failing test");
        counts.failed += 1;
    }
    counts
}

/// pytest's last line: `3 failed, 11 passed, 1 skipped in 2.1s` (errors count as failures).
fn parse_pytest_summary(line: &str) -> Option<Counts> {
    let line = line.trim().trim_matches('=').trim();
    let (fields, _) = line.rsplit_once(" in ")?;
    let mut counts = Counts::default();
    let mut any = false;
    for field in fields.split(", ") {
        let mut words = field.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        any = true;
        match what {
            "passed" => counts.passed += n,
            "failed" | "error" | "errors" => counts.failed += n,
            "skipped" | "xfailed" | "deselected" => counts.ignored += n,
            _ => {}
        }
    }
    any.then_some(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cargo_results() {
        let c = parse_cargo_result(
            "test result: FAILED. 56 passed; 2 failed; 7 ignored; 0 measured; 0 filtered out; finished in 7.63s",
        )
        .expect("a result line");
        assert_eq!((c.passed, c.failed, c.ignored), (56, 2, 7));
        assert!(parse_cargo_result("test foo ... ok").is_none());
    }

    #[test]
    fn parses_pytest_summaries() {
        let c = parse_pytest_summary("1 failed, 13 passed, 2 skipped in 3.87s").expect("summary");
        assert_eq!((c.passed, c.failed, c.ignored), (13, 1, 2));
        let c = parse_pytest_summary("===== 14 passed in 2.68s =====").expect("summary");
        assert_eq!((c.passed, c.failed), (14, 0));
        let c = parse_pytest_summary("2 passed, 1 error in 1.00s").expect("summary");
        assert_eq!((c.passed, c.failed), (2, 1));
        assert!(parse_pytest_summary("no tests ran in 0.01s").is_none());
    }
}
