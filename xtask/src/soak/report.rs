//! What the soak measured, the pass/fail checks, and the markdown report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::traffic::KindStats;

/// A generation's open file descriptors may end at most this many above its second sample.
///
/// The first sample can precede warm-up (no client or pooled upstream connections yet), so the
/// baseline is the second one, 10 to 20 s into the generation, as for RSS. What may still come and
/// go after that without a leak: one client connection per client thread and one upstream
/// connection for its request (two per client), idle pooled upstream connections settling at each
/// (worker, provider) pair's peak (one more per pair: 2 workers × 4 providers), and a few for
/// replica scrapes, an abandoned stream being drained and journal segment rotation (8). A leak of
/// one descriptor per few thousand requests exceeds it within a 30-minute generation.
pub fn fd_slack(clients: usize) -> usize {
    2 * clients + super::WORKERS * super::PROVIDERS + 8
}

/// RSS may end at most this fraction above the generation's second sample.
///
/// The first sample can precede warm-up (pools, SQLite's page cache, the journal segment's pages);
/// by the second (10 to 20 s of traffic) the working set is in place and bounded: SQLite's cache
/// (2 MiB by default), one mapped 1 MiB journal segment per worker, buffers bounded by
/// concurrency. 25% of the agent's ~15-20 MiB is 4-5 MiB, above that bounded slack and below what
/// a leak of a few hundred bytes per request adds over a three-minute generation.
pub const RSS_GROWTH_MAX: f64 = 0.25;

/// Only generations with at least this many samples are judged on RSS (one minute at 10 s).
pub const RSS_MIN_SAMPLES: usize = 6;

/// One 10-second sample of the agent.
#[derive(Debug, Clone)]
pub struct Sample {
    pub t_s: f64,
    pub generation: usize,
    pub rss_kib: Option<u64>,
    pub fds: Option<usize>,
    pub sent: u64,
    pub ok: u64,
}

/// One agent process, from its start to its end.
#[derive(Debug, Clone)]
pub struct Generation {
    pub pid: u32,
    pub started_s: f64,
    pub ended_s: f64,
    /// How it ended: `SIGKILL`, `SIGTERM (exit status)`, or what went wrong.
    pub end: String,
    /// From the kill of the previous generation to this one listening, in ms.
    pub restart_ms: Option<u128>,
}

/// A generation's samples, summarised and judged.
#[derive(Debug, Clone, Default)]
pub struct GenStats {
    pub samples: usize,
    /// first, min, max, last (KiB).
    pub rss: Option<[u64; 4]>,
    /// first, max, last.
    pub fds: Option<[usize; 3]>,
    /// Why the generation fails a check; empty when it passes.
    pub problems: Vec<String>,
}

pub fn gen_stats(samples: &[Sample], generation: usize, clients: usize) -> GenStats {
    let mine: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.generation == generation)
        .collect();
    let rss: Vec<u64> = mine.iter().filter_map(|s| s.rss_kib).collect();
    let fds: Vec<usize> = mine.iter().filter_map(|s| s.fds).collect();
    let mut stats = GenStats {
        samples: mine.len(),
        ..GenStats::default()
    };
    if let (Some(&first), Some(&last)) = (rss.first(), rss.last()) {
        let (min, max) = (rss.iter().min().copied(), rss.iter().max().copied());
        stats.rss = Some([first, min.unwrap_or(first), max.unwrap_or(first), last]);
        if rss.len() >= RSS_MIN_SAMPLES {
            let base = rss[1] as f64;
            let growth = last as f64 / base - 1.0;
            if growth > RSS_GROWTH_MAX {
                stats.problems.push(format!(
                    "RSS grew {:.0}% ({} → {} KiB) after warm-up (limit {:.0}%)",
                    growth * 100.0,
                    rss[1],
                    last,
                    RSS_GROWTH_MAX * 100.0
                ));
            }
        }
    }
    if let (Some(&first), Some(&last)) = (fds.first(), fds.last()) {
        stats.fds = Some([first, fds.iter().max().copied().unwrap_or(first), last]);
        let slack = fd_slack(clients);
        if fds.len() >= 3 && last > fds[1] + slack {
            stats.problems.push(format!(
                "open fds grew {} → {last} after warm-up (slack {slack})",
                fds[1]
            ));
        }
    }
    stats
}

/// Everything the report shows.
pub struct Run<'a> {
    pub header: String,
    pub command: String,
    pub duration_s: f64,
    pub restarts: usize,
    pub crashes: usize,
    pub sent: u64,
    pub connect_failures: u64,
    pub ok: u64,
    pub checked_ids: usize,
    pub ledger_rows: Option<u64>,
    /// (request id, seconds into the run).
    pub missing: &'a [(String, f64)],
    /// Seconds into the run of every SIGKILL.
    pub kills_s: &'a [f64],
    pub kinds: &'a BTreeMap<String, KindStats>,
    pub errors: &'a BTreeMap<String, u64>,
    pub generations: &'a [Generation],
    pub stats: &'a [GenStats],
    pub samples: &'a [Sample],
    pub events: &'a [String],
    pub setup: &'a str,
    pub failures: &'a [String],
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

pub fn render(run: &Run<'_>) -> String {
    let mut md = String::new();
    let verdict = if run.failures.is_empty() {
        "**PASS**".to_string()
    } else {
        format!("**FAIL**: {}", run.failures.join("; "))
    };
    let _ = writeln!(
        md,
        "# Soak run\n\n{}\n\n`{}`\n\n{verdict}\n",
        run.header, run.command
    );
    let ledger_rows = run
        .ledger_rows
        .map_or_else(|| "unreadable".into(), |n| n.to_string());
    let _ = writeln!(
        md,
        "| | |\n|---|---:|\n\
         | duration | {:.0} s |\n\
         | agent restarts after SIGKILL | {} |\n\
         | agent exits nobody asked for | {} |\n\
         | requests sent | {} |\n\
         | connects refused while the agent was down | {} |\n\
         | 200s received in full | {} |\n\
         | of which with a request id (checked) | {} |\n\
         | **200s without a ledger row** | **{}** |\n\
         | ledger rows | {ledger_rows} |\n",
        run.duration_s,
        run.restarts,
        run.crashes,
        run.sent,
        run.connect_failures,
        run.ok,
        run.checked_ids,
        run.missing.len(),
    );
    if !run.missing.is_empty() {
        let _ = writeln!(
            md,
            "200s without a row (first 20; seconds into the run, and to the next SIGKILL):\n"
        );
        for (id, t) in run.missing.iter().take(20) {
            let next_kill = run
                .kills_s
                .iter()
                .find(|&&k| k >= *t)
                .map_or_else(|| "none".into(), |k| format!("{:.2} s later", k - t));
            let _ = writeln!(md, "- `{id}` at {t:.2} s, next kill {next_kill}");
        }
        md.push('\n');
    }

    md.push_str("## Agent generations\n\n");
    md.push_str("| gen | pid | from–to (s) | restart ms | end | samples | RSS MiB first / min / max / last | fds first / max / last | check |\n");
    md.push_str("|---:|---:|---|---:|---|---:|---|---|---|\n");
    for (i, (g, s)) in run.generations.iter().zip(run.stats).enumerate() {
        let rss = s.rss.map_or_else(
            || "—".into(),
            |[a, b, c, d]| format!("{} / {} / {} / {}", mib(a), mib(b), mib(c), mib(d)),
        );
        let fds = s
            .fds
            .map_or_else(|| "—".into(), |[a, b, c]| format!("{a} / {b} / {c}"));
        let check = if s.problems.is_empty() {
            "ok".to_string()
        } else {
            s.problems.join("; ")
        };
        let _ = writeln!(
            md,
            "| {i} | {} | {:.0}–{:.0} | {} | {} | {} | {rss} | {fds} | {check} |",
            g.pid,
            g.started_s,
            g.ended_s,
            g.restart_ms.map_or_else(|| "—".into(), |ms| ms.to_string()),
            g.end,
            s.samples,
        );
    }

    md.push_str("\n## Requests by kind\n\n");
    md.push_str("| kind | sent | 200 in full | body end wrong | 200 cut | client hung up | no response | other statuses |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---|\n");
    for (kind, k) in run.kinds {
        let statuses: Vec<String> = k.statuses.iter().map(|(s, n)| format!("{s}×{n}")).collect();
        let _ = writeln!(
            md,
            "| {kind} | {} | {} | {} | {} | {} | {} | {} |",
            k.sent,
            k.ok,
            k.ok_bad_body,
            k.ok_cut,
            k.hung_up,
            k.no_response,
            statuses.join(" ")
        );
    }
    if !run.errors.is_empty() {
        let errors: Vec<String> = run.errors.iter().map(|(e, n)| format!("{e}×{n}")).collect();
        let _ = writeln!(md, "\nNo response, by error: {}", errors.join(", "));
    }

    md.push_str("\n## Samples (every 10 s)\n\n| t (s) | gen | RSS MiB | fds | sent | 200s |\n|---:|---:|---:|---:|---:|---:|\n");
    for s in run.samples {
        let _ = writeln!(
            md,
            "| {:.0} | {} | {} | {} | {} | {} |",
            s.t_s,
            s.generation,
            s.rss_kib.map_or_else(|| "—".into(), mib),
            s.fds.map_or_else(|| "—".into(), |n| n.to_string()),
            s.sent,
            s.ok
        );
    }
    if !run.events.is_empty() {
        md.push_str("\n## Events\n\n");
        for e in run.events {
            let _ = writeln!(md, "- {e}");
        }
    }
    let _ = writeln!(md, "\n## Setup\n\n{}", run.setup);
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(generation: usize, rss: &[u64], fds: &[usize]) -> Vec<Sample> {
        rss.iter()
            .zip(fds)
            .enumerate()
            .map(|(i, (&r, &f))| Sample {
                t_s: i as f64 * 10.0,
                generation,
                rss_kib: Some(r),
                fds: Some(f),
                sent: 0,
                ok: 0,
            })
            .collect()
    }

    #[test]
    fn flat_generation_passes() {
        let s = samples(
            0,
            &[9000, 15000, 15500, 15200, 15900, 16000],
            &[12, 40, 38, 41, 39, 62],
        );
        let stats = gen_stats(&s, 0, 6);
        assert!(stats.problems.is_empty(), "{:?}", stats.problems);
        assert_eq!(stats.rss, Some([9000, 9000, 16000, 16000]));
        assert_eq!(stats.fds, Some([12, 62, 62]));
    }

    #[test]
    fn growth_fails() {
        let s = samples(
            1,
            &[9000, 15000, 16000, 17000, 18000, 19000],
            &[12, 30, 40, 50, 60, 70],
        );
        let stats = gen_stats(&s, 1, 6);
        assert_eq!(stats.problems.len(), 2, "{:?}", stats.problems);
        // Too short to judge RSS; other generations are not mixed in.
        let short = gen_stats(&s[..3], 1, 6);
        assert_eq!(short.problems.len(), 0);
        assert_eq!(gen_stats(&s, 0, 6).samples, 0);
    }
}
