//! Agents (and nginx) in the same run, measured in alternating windows at one load point:
//! each round runs every side once, even rounds in order and odd rounds reversed (ABBA for two
//! sides), so no side always runs right after another. Reported per window, with each side's
//! mean and its difference from the first side. Shared by the `--governance`, `--guardrails`,
//! `--cluster` and `--against-nginx` benches.

use std::fmt::Write as _;

use super::measure::{Load, Pacing, Point, PointResult};

/// One side of a comparison: its name, the load it gets, its address and server pid.
pub struct Side<'a> {
    pub name: &'a str,
    pub load: &'a Load,
    pub target: String,
    pub pid: u32,
}

/// Each side's mean over its windows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Means {
    pub rps: f64,
    /// To the last byte; for a streaming point, to the first body byte (TTFT), which is what
    /// a proxy adds to a stream.
    pub p50: f64,
    pub p99: f64,
    /// That p50 in each round's window, in round order (`None` where nothing succeeded).
    pub p50_by_round: Vec<Option<f64>>,
    /// `None` when no window could read the server's CPU.
    pub cpu_us: Option<f64>,
    /// The CPU per request of each round's window, in round order (`None` where unread).
    pub cpu_by_round: Vec<Option<f64>>,
    /// Of the CPU per request, the part tollgate's ledger writer spent (SQLite commits,
    /// enrichment, rollups: work a plain proxy does not do); `None` when unread, 0 for nginx.
    pub ledger_us: Option<f64>,
    /// The CPU per request in user space and in the kernel (tick-based, like `ledger_us`);
    /// `None` when unread.
    pub user_kernel_us: Option<(f64, f64)>,
    /// System calls, context switches (the server tree's, `perf stat`) and TCP segments (the
    /// host's) per request; `None` when unread (no `perf`, or no window read them).
    pub syscalls_per_req: Option<f64>,
    pub cswitches_per_req: Option<f64>,
    pub segments_per_req: Option<f64>,
}

/// Measures `a` and `b` for `rounds` ABBA rounds at `connections` closed-loop connections and
/// renders the table; `what` names the difference ("governance adds").
pub fn compare(
    a: &Side<'_>,
    b: &Side<'_>,
    rounds: usize,
    connections: usize,
    what: &str,
) -> anyhow::Result<String> {
    let point = Point {
        pacing: Pacing::Closed(connections),
        stream: false,
    };
    let (table, means) = windows(&[a, b], rounds, point)?;
    let mut out = table;
    if let (Some(x), Some(y)) = (means[0].cpu_us, means[1].cpu_us) {
        let _ = writeln!(
            out,
            "\nMean agent CPU per request: {x:.1} µs ({}), {y:.1} µs ({}): {what} {:.1} µs ({}).",
            a.name,
            b.name,
            y - x,
            percent(x, y)
        );
    }
    let _ = writeln!(
        out,
        "Mean req/s {:.0} against {:.0} ({}); p50 {:.0} against {:.0} µs ({}); p99 {:.0} against \
         {:.0} µs ({}).",
        means[0].rps,
        means[1].rps,
        percent(means[0].rps, means[1].rps),
        means[0].p50,
        means[1].p50,
        percent(means[0].p50, means[1].p50),
        means[0].p99,
        means[1].p99,
        percent(means[0].p99, means[1].p99),
    );
    if let Some((mean, se)) = per_round_difference(&means[0], &means[1]) {
        let _ = writeln!(
            out,
            "Per round ({} − {}): {mean:+.1} µs, standard error {se:.1} µs over {rounds} rounds \
             (a difference under about two standard errors is this host's noise).",
            b.name, a.name,
        );
    }
    Ok(out)
}

/// `to` against `from` as a signed percentage ("+6.6 %"); "-" when `from` is zero.
fn percent(from: f64, to: f64) -> String {
    if from == 0.0 {
        return "-".into();
    }
    format!("{:+.1} %", (to / from - 1.0) * 100.0)
}

/// `other`'s CPU per request minus `base`'s, round by round (drift between rounds cancels),
/// as a mean with its standard error; `None` with fewer than two rounds read.
pub fn per_round_difference(base: &Means, other: &Means) -> Option<(f64, f64)> {
    paired_difference(&base.cpu_by_round, &other.cpu_by_round)
}

/// `other`'s p50 minus `base`'s, round by round: with the same upstream behind both, the
/// difference of what each adds to it. Mean and standard error, as [`per_round_difference`].
pub fn per_round_p50_difference(base: &Means, other: &Means) -> Option<(f64, f64)> {
    paired_difference(&base.p50_by_round, &other.p50_by_round)
}

/// `other[i] - base[i]` over the rounds both read, as a mean with its standard error.
fn paired_difference(base: &[Option<f64>], other: &[Option<f64>]) -> Option<(f64, f64)> {
    let diffs: Vec<f64> = base
        .iter()
        .zip(other)
        .filter_map(|(x, y)| Some((*y)? - (*x)?))
        .collect();
    mean_and_standard_error(&diffs)
}

/// The mean of `xs` and its standard error; `None` for fewer than two values.
fn mean_and_standard_error(xs: &[f64]) -> Option<(f64, f64)> {
    if xs.len() < 2 {
        return None;
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    Some((mean, (var / n).sqrt()))
}

/// The latency a point is judged by: to the last byte, or for a stream to the first body byte.
fn headline(point: Point, r: &PointResult) -> Option<super::measure::Timing> {
    if point.stream {
        r.ttft
    } else {
        r.latency
    }
}

/// Runs `rounds` rounds over `sides` at `point` and returns the per-window table with each
/// side's means, in the order of `sides`.
pub fn windows(
    sides: &[&Side<'_>],
    rounds: usize,
    point: Point,
) -> anyhow::Result<(String, Vec<Means>)> {
    let mut rows: Vec<(usize, PointResult)> = Vec::new();
    let mut cpu_by_round = vec![Vec::with_capacity(rounds); sides.len()];
    let mut p50_by_round = vec![Vec::with_capacity(rounds); sides.len()];
    for round in 0..rounds {
        for i in round_order(sides.len(), round) {
            let side = sides[i];
            let r = side.load.measure(&side.target, point, side.pid)?;
            cpu_by_round[i].push(r.server_cpu_us);
            p50_by_round[i].push(headline(point, &r).map(|t| t.p50));
            rows.push((i, r));
        }
    }
    let latency = if point.stream { "TTFT " } else { "" };
    let mut out = format!(
        "| window | rps | {latency}p50 µs | {latency}p99 µs | agent CPU µs/req | failed |\n|---|---|---|---|---|---|\n",
    );
    for (i, r) in &rows {
        let t = headline(point, r).unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.0} | {} | {} |",
            sides[*i].name,
            r.rps,
            t.p50,
            t.p99,
            r.server_cpu_us.map_or("-".into(), |c| format!("{c:.1}")),
            r.errors
        );
    }
    let means = (0..sides.len())
        .map(|i| {
            let mine: Vec<&PointResult> = rows
                .iter()
                .filter(|(s, _)| *s == i)
                .map(|(_, r)| r)
                .collect();
            let n = mine.len().max(1) as f64;
            // The mean of a figure over the windows that read it; `None` when none did.
            let mean_of = |f: &dyn Fn(&PointResult) -> Option<f64>| {
                let read: Vec<f64> = mine.iter().filter_map(|r| f(r)).collect();
                (!read.is_empty()).then(|| read.iter().sum::<f64>() / read.len() as f64)
            };
            let split =
                |i: usize| move |r: &PointResult| r.cpu_split_us.map(|s| [s.0, s.1, s.2][i]);
            let latency = |f: fn(&super::measure::Timing) -> f64| {
                mine.iter()
                    .filter_map(|r| headline(point, r).as_ref().map(f))
                    .sum::<f64>()
                    / n
            };
            Means {
                rps: mine.iter().map(|r| r.rps).sum::<f64>() / n,
                p50: latency(|t| t.p50),
                p99: latency(|t| t.p99),
                cpu_us: mean_of(&|r| r.server_cpu_us),
                cpu_by_round: std::mem::take(&mut cpu_by_round[i]),
                p50_by_round: std::mem::take(&mut p50_by_round[i]),
                ledger_us: mean_of(&split(2)),
                user_kernel_us: mean_of(&split(0)).zip(mean_of(&split(1))),
                syscalls_per_req: mean_of(&|r| r.syscalls_per_req),
                cswitches_per_req: mean_of(&|r| r.cswitches_per_req),
                segments_per_req: mean_of(&|r| r.segments_per_req),
            }
        })
        .collect();
    Ok((out, means))
}

/// The order of the sides in round `round`: forward on even rounds, reversed on odd ones, so
/// each side's mean position is the same.
fn round_order(sides: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..sides).collect();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

#[cfg(test)]
mod tests {
    use super::{mean_and_standard_error, round_order};

    #[test]
    fn a_difference_as_a_percentage() {
        assert_eq!(super::percent(33.4, 35.7), "+6.9 %");
        assert_eq!(super::percent(100.0, 90.0), "-10.0 %");
        assert_eq!(super::percent(0.0, 5.0), "-");
    }

    #[test]
    fn a_stream_is_judged_by_its_first_byte_and_p50s_pair_by_round() {
        use super::super::measure::{Pacing, Point, PointResult, Timing};
        let at = |p50| Timing {
            p50,
            ..Timing::default()
        };
        let r = PointResult {
            latency: Some(at(900.0)),
            ttft: Some(at(150.0)),
            ..PointResult::default()
        };
        let point = |stream| Point {
            pacing: Pacing::Closed(1),
            stream,
        };
        assert_eq!(super::headline(point(true), &r).map(|t| t.p50), Some(150.0));
        assert_eq!(
            super::headline(point(false), &r).map(|t| t.p50),
            Some(900.0)
        );
        let base = super::Means {
            p50_by_round: vec![Some(100.0), Some(120.0), None],
            ..super::Means::default()
        };
        let other = super::Means {
            p50_by_round: vec![Some(110.0), Some(126.0), Some(999.0)],
            ..super::Means::default()
        };
        // The third round is unread on one side: only the first two pair up (+10, +6).
        let (mean, se) = super::per_round_p50_difference(&base, &other).unwrap_or_default();
        assert_eq!(mean, 8.0);
        assert!((se - 2.0).abs() < 1e-12, "{se}");
    }

    #[test]
    fn standard_error_of_a_mean() {
        assert_eq!(mean_and_standard_error(&[1.0]), None);
        let (mean, se) = mean_and_standard_error(&[1.0, 3.0]).unwrap_or_default();
        assert_eq!(mean, 2.0);
        // Sample variance 2, n 2: sqrt(2 / 2).
        assert!((se - 1.0).abs() < 1e-12, "{se}");
    }

    #[test]
    fn two_sides_alternate_abba_and_every_side_has_the_same_mean_position() {
        assert_eq!(
            [round_order(2, 0), round_order(2, 1)].concat(),
            vec![0, 1, 1, 0]
        );
        for sides in 1..5 {
            let mut position_sum = vec![0; sides];
            for round in 0..4 {
                for (position, side) in round_order(sides, round).into_iter().enumerate() {
                    position_sum[side] += position;
                }
            }
            assert!(
                position_sum.iter().all(|&p| p == position_sum[0]),
                "{position_sum:?}"
            );
        }
    }
}
