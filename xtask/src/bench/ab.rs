//! Two agents in the same run, measured in alternating windows (ABBA, so neither side always
//! runs right after the other) at one load point; reported per window with the difference of
//! the means. Shared by the `--governance` and `--guardrails` benches.

use std::fmt::Write as _;

use super::measure::{Load, Pacing, Point, PointResult};

/// One side of a comparison: its name, the load it gets, its address and server pid.
pub struct Side<'a> {
    pub name: &'a str,
    pub load: &'a Load,
    pub target: String,
    pub pid: u32,
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
    let mut rows: Vec<(&str, PointResult)> = Vec::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 { [a, b] } else { [b, a] };
        for side in order {
            rows.push((side.name, side.load.measure(&side.target, point, side.pid)?));
        }
    }
    let mut out = String::from(
        "| window | rps | p50 µs | p99 µs | agent CPU µs/req | failed |\n|---|---|---|---|---|---|\n",
    );
    for (name, r) in &rows {
        let t = r.latency.unwrap_or_default();
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {:.0} | {:.0} | {} | {} |",
            r.rps,
            t.p50,
            t.p99,
            r.server_cpu_us.map_or("-".into(), |c| format!("{c:.1}")),
            r.errors
        );
    }
    let mean = |name: &str| {
        let v: Vec<f64> = rows
            .iter()
            .filter(|(n, _)| *n == name)
            .filter_map(|(_, r)| r.server_cpu_us)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    if let (Some(x), Some(y)) = (mean(a.name), mean(b.name)) {
        let _ = writeln!(
            out,
            "\nMean agent CPU per request: {x:.1} µs ({}), {y:.1} µs ({}): {what} {:.1} µs.",
            a.name,
            b.name,
            y - x
        );
    }
    Ok(out)
}
