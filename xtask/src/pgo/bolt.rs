//! The last step of `cargo xtask pgo`: BOLT, LLVM's post-link optimiser, lays the profile-guided
//! agent's machine code out again by where a trained run executed it (hot blocks of a function
//! together, hot functions next to each other, cold blocks split off into their own section).
//!
//! Why, on top of the compiler's profile: at one connection a request starts on caches that the
//! generator and the simulator evicted between two requests, so what it costs is mostly how
//! many instruction-cache lines and pages its path touches. The compiler's profile orders blocks
//! inside a function; BOLT also orders the functions across the whole binary and moves the cold
//! halves of hot functions out of the way. Measured (ARCHITECTURE.md, "BOLT after the
//! profile"): the worker's user time at one connection 17.1 → 13.7 µs per request.
//!
//! The binary must be linked with its relocations (`--emit-relocs`), which `pgo::run` adds to
//! the profile-use build when a BOLT is found. Instrumentation, not sampling: BOLT's best mode
//! reads branch records (LBR) that virtual machines rarely expose, while its instrumented binary
//! counts every branch itself and writes the counts when the process exits.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// `llvm-bolt` and the `merge-fdata` that came with it.
pub struct Bolt {
    pub bolt: PathBuf,
    merge: PathBuf,
}

/// The BOLT to use: `LLVM_BOLT` when set (its `merge-fdata` beside it), else `llvm-bolt` on
/// PATH, else the newest `/usr/lib/llvm-N/bin/llvm-bolt` (Debian's `bolt-N` packages install
/// there without a versioned name on PATH). `None` when there is none.
pub fn find() -> Option<Bolt> {
    let explicit = std::env::var_os("LLVM_BOLT").map(PathBuf::from);
    candidates(explicit, &on_path, &|p| p.is_file())
        .into_iter()
        .find_map(|bolt| {
            let beside = bolt.with_file_name("merge-fdata");
            let merge = if beside.is_file() {
                beside
            } else {
                on_path("merge-fdata")?
            };
            Some(Bolt { bolt, merge })
        })
}

/// `name` when it is on PATH (the command then finds it there).
fn on_path(name: &str) -> Option<PathBuf> {
    crate::test::on_path(name).then(|| PathBuf::from(name))
}

/// The `llvm-bolt` candidates in order: `explicit` alone when given, else the one `on_path`
/// finds, then `/usr/lib/llvm-N/bin/llvm-bolt` from the newest N down, those that `exists`.
fn candidates(
    explicit: Option<PathBuf>,
    on_path: &dyn Fn(&str) -> Option<PathBuf>,
    exists: &dyn Fn(&Path) -> bool,
) -> Vec<PathBuf> {
    if let Some(e) = explicit {
        return vec![e];
    }
    on_path("llvm-bolt")
        .into_iter()
        .chain(
            (14..=40)
                .rev()
                .map(|v| PathBuf::from(format!("/usr/lib/llvm-{v}/bin/llvm-bolt")))
                .filter(|p| exists(p)),
        )
        .collect()
}

impl Bolt {
    /// Writes `output`, `input` with BOLT's counters: each process it runs as writes
    /// `<counts>.<pid>.fdata` when it exits.
    pub fn instrument(&self, input: &Path, output: &Path, counts: &Path) -> anyhow::Result<()> {
        let status = Command::new(&self.bolt)
            .arg(input)
            .arg("-instrument")
            .arg("-o")
            .arg(output)
            .arg(format!("--instrumentation-file={}", counts.display()))
            .arg("--instrumentation-file-append-pid")
            .stdout(std::process::Stdio::null())
            .status()
            .with_context(|| format!("running {}", self.bolt.display()))?;
        if !status.success() {
            bail!(
                "{} -instrument failed ({status}); was the agent linked with --emit-relocs?",
                self.bolt.display()
            );
        }
        Ok(())
    }

    /// Merges the `.fdata` files in `dir` into `out`; fails when there are none.
    pub fn merge(&self, dir: &Path, out: &Path) -> anyhow::Result<()> {
        let files = super::files_ending(dir, "fdata", "counts")?;
        let merged = Command::new(&self.merge)
            .args(&files)
            .stderr(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.merge.display()))?;
        if !merged.status.success() {
            bail!("{} failed ({})", self.merge.display(), merged.status);
        }
        std::fs::write(out, merged.stdout)?;
        Ok(())
    }

    /// Writes `output`, `input` laid out by the counts in `fdata`.
    pub fn optimize(&self, input: &Path, fdata: &Path, output: &Path) -> anyhow::Result<()> {
        let status = Command::new(&self.bolt)
            .arg(input)
            .arg("-o")
            .arg(output)
            .arg(format!("-data={}", fdata.display()))
            // Blocks by the extended travelling-salesman layout, functions by cache-directed
            // sort, cold blocks and landing pads split off, identical functions folded. A panic
            // still unwinds through split landing pads (checked on a small program that
            // catches 200 panics, before and after BOLT): the worker's `CatchPanic` relies on it.
            .args(["-reorder-blocks=ext-tsp", "-reorder-functions=cdsort"])
            .args(["-split-functions", "-split-all-cold", "-split-eh", "-icf=1"])
            .arg("-use-gnu-stack")
            .stdout(std::process::Stdio::null())
            .status()
            .with_context(|| format!("running {}", self.bolt.display()))?;
        if !status.success() {
            bail!("{} failed to optimise ({status})", self.bolt.display());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_bolt_is_the_only_candidate() {
        let c = candidates(
            Some(PathBuf::from("/opt/llvm/bin/llvm-bolt")),
            &|n| Some(PathBuf::from(format!("/usr/bin/{n}"))),
            &|_| true,
        );
        assert_eq!(c, vec![PathBuf::from("/opt/llvm/bin/llvm-bolt")]);
    }

    #[test]
    fn path_first_then_versioned_llvm_directories_newest_first() {
        let installed = [
            "/usr/lib/llvm-17/bin/llvm-bolt",
            "/usr/lib/llvm-19/bin/llvm-bolt",
        ];
        let c = candidates(None, &|_| None, &|p| {
            installed.iter().any(|i| Path::new(i) == p)
        });
        assert_eq!(
            c,
            vec![
                PathBuf::from("/usr/lib/llvm-19/bin/llvm-bolt"),
                PathBuf::from("/usr/lib/llvm-17/bin/llvm-bolt"),
            ]
        );
        let c = candidates(None, &|n| Some(PathBuf::from(format!("/x/{n}"))), &|p| {
            installed.iter().any(|i| Path::new(i) == p)
        });
        assert_eq!(c[0], PathBuf::from("/x/llvm-bolt"));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn no_bolt_anywhere_is_no_candidate() {
        assert!(candidates(None, &|_| None, &|_| false).is_empty());
    }

    /// Merging refuses an empty directory instead of optimising with no counts.
    #[test]
    fn merging_nothing_fails() {
        let dir = std::env::temp_dir().join(format!("tollgate-bolt-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let b = Bolt {
            bolt: PathBuf::from("llvm-bolt"),
            merge: PathBuf::from("merge-fdata"),
        };
        let err = b.merge(&dir, &dir.join("out.fdata")).unwrap_err();
        assert!(err.to_string().contains("no counts"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
