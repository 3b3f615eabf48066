//! Describes the machine a bench ran on, so every results file names it.
//!
//! Why it exists: numbers from a two-vCPU VM and from a bare-metal box are not comparable; the results
//! file records CPU count and model, kernel, hostname, date and commit. Reads /proc and runs `git`; never
//! fails the bench (unknown fields read "unknown").

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// Facts about this machine and checkout.
#[derive(Debug, Clone)]
pub struct Machine {
    pub hostname: String,
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// UTC date, `YYYY-MM-DD`.
    pub date: String,
    /// Short commit hash, with `-dirty` when the tree has changes.
    pub commit: String,
}

impl Machine {
    pub fn probe(root: &Path) -> Self {
        let read = |path: &str| fs::read_to_string(path).map(|s| s.trim().to_string()).ok();
        let cpu_model = read("/proc/cpuinfo")
            .as_deref()
            .and_then(cpu_model)
            .unwrap_or_else(|| "unknown".into());
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self {
            hostname: read("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".into()),
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model,
            kernel: read("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into()),
            date: utc_date(secs),
            commit: git_commit(root).unwrap_or_else(|| "unknown".into()),
        }
    }

    /// A file-name-safe machine name.
    pub fn slug(&self) -> String {
        let slug: String = self
            .hostname
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if slug.is_empty() {
            "unknown".into()
        } else {
            slug
        }
    }
}

/// The 1, 5 and 15 minute load averages, e.g. `0.12 0.30 0.25`: other work on the machine skews every
/// number, so the report shows it.
pub fn load_average() -> Option<String> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// The first `model name` (x86) or `Model`/`CPU part` fallback line of /proc/cpuinfo.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    ["model name", "Model", "cpu model", "CPU part"]
        .iter()
        .find_map(|key| {
            cpuinfo.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                (name.trim() == *key && !value.trim().is_empty()).then(|| value.trim().to_string())
            })
        })
}

/// Days since 1970-01-01 → `YYYY-MM-DD` (proleptic Gregorian, H. Hinnant's civil_from_days).
pub fn utc_date(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn git_commit(root: &Path) -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root)
        .output()
        .ok()?;
    let hash = String::from_utf8(out.stdout).ok()?.trim().to_string();
    if !out.status.success() || hash.is_empty() {
        return None;
    }
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(root)
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_704_067_199), "2023-12-31");
        assert_eq!(utc_date(1_704_067_200), "2024-01-01");
    }

    #[test]
    fn cpu_model_lines() {
        let x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel\t\t: 1\nmodel name\t: AMD EPYC 9654\n";
        assert_eq!(cpu_model(x86).as_deref(), Some("AMD EPYC 9654"));
        let arm = "processor\t: 0\nCPU part\t: 0xd0c\n";
        assert_eq!(cpu_model(arm).as_deref(), Some("0xd0c"));
        assert_eq!(cpu_model(""), None);
    }
}
