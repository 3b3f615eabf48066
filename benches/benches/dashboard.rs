//! The dashboard over a year of ledger: what each of its data URLs costs the admin thread's
//! blocking pool, and what keeping the rollups adds to the ledger writer's commits.
//!
//! A year of synthetic requests (`TOLLGATE_BENCH_YEAR_ROWS`, default 1,000,000: about two a
//! minute) over 20 teams, 8 models, 100 keys and 20,000 sessions is written once through the
//! real insert path (so the rollups are built by their triggers), then each query is timed.
//! Run: `cargo bench -p tollgate-benches --bench dashboard -- --warm-up-time 1 --measurement-time 3`.

mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rusqlite::Connection;

use tollgate::dashboard::data::{findings_in, live, spend, Range};
use tollgate::governance::window::now_ms;
use tollgate::ledger::{insert_batch, UsageRecord};
use tollgate::metering::Usage;

const YEAR_MS: i64 = 365 * 86_400_000;

fn record(i: u64, ts_ms: i64) -> UsageRecord {
    let mut r = UsageRecord {
        id: format!("req-{i}"),
        ts_ms,
        latency_us: 40_000,
        ttft_us: Some(20_000 + i % 5_000),
        status: if i.is_multiple_of(97) { 429 } else { 200 },
        outcome: "ok".into(),
        api: "chat_completions",
        served_model: Some(format!("model-{}", i % 8)),
        provider: Some("openai".into()),
        usage: Usage {
            input_tokens: 500 + i % 3_000,
            output_tokens: 50 + i % 400,
            ..Usage::default()
        },
        cost_micro_usd: 100 + i % 9_000,
        key_id: Some(format!("key_{}", i % 100)),
        ..UsageRecord::default()
    };
    r.identity.team = Some(format!("team-{}", i % 20));
    r.identity.session = (!i.is_multiple_of(3)).then(|| format!("session-{}", i % 20_000));
    r
}

/// A ledger holding a year of requests ending now, in a temporary directory.
fn year_ledger() -> (common::TempDir, Connection) {
    let rows: u64 = std::env::var("TOLLGATE_BENCH_YEAR_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = common::TempDir::new("dashboard");
    let mut conn = tollgate::ledger::open(dir.path()).expect("a ledger");
    let start = now_ms() - YEAR_MS;
    let step = YEAR_MS / rows as i64;
    let began = Instant::now();
    let mut batch = Vec::with_capacity(512);
    for i in 0..rows {
        batch.push(record(i, start + i as i64 * step));
        if batch.len() == 512 {
            insert_batch(&mut conn, &batch).expect("insert");
            batch.clear();
        }
    }
    insert_batch(&mut conn, &batch).expect("insert");
    let took = began.elapsed();
    let rollup_rows: i64 = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM rollup_hour) + (SELECT COUNT(*) FROM rollup_day)
             + (SELECT COUNT(*) FROM rollup_session_day)",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0);
    eprintln!(
        "a year of {rows} requests written in {:.1} s ({:.0} rows/s, with {rollup_rows} rollup rows)",
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64()
    );
    (dir, conn)
}

fn queries(c: &mut Criterion) {
    let (_dir, conn) = year_ledger();
    let now = now_ms();
    let mut g = c.benchmark_group("dashboard_year_of_ledger");
    g.sample_size(10);
    for name in ["24h", "30d", "month", "365d"] {
        let range = Range::parse(name, now).expect("a range");
        g.bench_function(format!("spend_{name}"), |b| {
            b.iter(|| spend(&conn, range).expect("spend"))
        });
    }
    g.bench_function("findings_month", |b| {
        let range = Range::parse("month", now).expect("a range");
        b.iter(|| findings_in(&conn, range).expect("findings"))
    });
    g.bench_function("live_5min", |b| b.iter(|| live(&conn, now).expect("live")));
    g.finish();
}

/// One writer commit of 512 records, rollups included (before the rollups: 1.46 ms; with
/// per-row trigger upserts: 8.4 ms; see `ledger/rollup.rs`). `spread`: every record its own
/// team × model × key × session group (the worst case: one upsert per record and rollup);
/// `typical`: a node's batch from 5 teams, 2 models, 10 keys and 20 sessions in one hour.
fn writer_commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("ledger_commit_512");
    for typical in [false, true] {
        let dir = common::TempDir::new("dashboard");
        let mut conn = tollgate::ledger::open(dir.path()).expect("a ledger");
        let mut next = 0u64;
        let now = now_ms();
        g.bench_function(if typical { "typical" } else { "spread" }, |b| {
            b.iter(|| {
                let batch: Vec<UsageRecord> = (0..512)
                    .map(|k| {
                        let i = next + k;
                        let mut r = record(i, now - i as i64 * 1_000);
                        if typical {
                            r.ts_ms = now;
                            r.identity.team = Some(format!("team-{}", i % 5));
                            r.served_model = Some(format!("model-{}", i % 2));
                            r.key_id = Some(format!("key_{}", i % 10));
                            r.identity.session = Some(format!("session-{}", i % 20));
                        }
                        r
                    })
                    .collect();
                next += 512;
                insert_batch(&mut conn, &batch).expect("insert");
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = queries, writer_commit
}
criterion_main!(benches);
