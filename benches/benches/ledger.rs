//! The ledger writer's per-request work, off the network: one commit of a full batch (2,048
//! records, the `ledger.batch_max` default) into a WAL ledger on disk, and the rollups' in-memory
//! sums alone; and on the worker's side, one journal append (`journal_append`): the record alone,
//! and with the simulator's 517-byte answer journalled for its usage to be read after the send
//! (`settle::seal_unread`). Records are shaped like the end-to-end bench's (`cargo xtask bench`): the
//! worker's id format, one model, no identity or key; `teams` adds 5 teams × 10 keys × 20
//! sessions. The records are built outside the timed part. Divide by 2,048 for µs per row.
//! Run: `cargo bench -p tollgate-benches --bench ledger`.

mod common;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

use tollgate::governance::window::now_ms;
use tollgate::ledger::{insert_batch, rollup::Pending, UsageRecord};
use tollgate::metering::Usage;

const BATCH: u64 = 2048;

/// The `i`th record a worker would send for the bench's chat request.
fn record(i: u64, teams: bool, now: i64) -> UsageRecord {
    let mut r = UsageRecord {
        id: format!("tg-{:x}-0-{i:010x}", 0x1234_5678_9abc_u64),
        ts_ms: now,
        latency_us: 180,
        ttft_us: None,
        status: 200,
        outcome: "ok".into(),
        api: "chat_completions",
        requested_model: Some("smol".into()),
        served_model: Some("smol".into()),
        provider: Some("local".into()),
        usage: Usage {
            input_tokens: 412,
            output_tokens: 16,
            ..Usage::default()
        },
        attempts: 1,
        prompt_bytes: 1_900,
        ..UsageRecord::default()
    };
    if teams {
        r.identity.team = Some(format!("team-{}", i % 5));
        r.key_id = Some(format!("key_{}", i % 10));
        r.identity.session = Some(format!("session-{}", i % 20));
    }
    r
}

fn batch(next: &mut u64, teams: bool) -> Vec<UsageRecord> {
    let now = now_ms();
    let out = (*next..*next + BATCH)
        .map(|i| record(i, teams, now))
        .collect();
    *next += BATCH;
    out
}

fn commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("ledger_commit_2048");
    for teams in [false, true] {
        let dir = common::TempDir::new("ledger");
        let mut conn = tollgate::ledger::open(dir.path()).expect("a ledger");
        let mut next = 0u64;
        g.bench_function(if teams { "teams" } else { "bench_shape" }, |b| {
            b.iter_batched(
                || batch(&mut next, teams),
                |records| insert_batch(&mut conn, &records).expect("insert"),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// The simulator's answer to the bench's chat request, as the worker journals it unread.
const ANSWER: &[u8] = br#"{"id":"chatcmpl-tg-1234","object":"chat.completion","created":1764806400,"model":"smol","choices":[{"index":0,"message":{"role":"assistant","content":"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat duis aute irure dolor in reprehenderit"},"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":412,"completion_tokens":16,"total_tokens":428,"prompt_tokens_details":{"cached_tokens":0}},"system_fingerprint":"fp_smol"}"#;

fn journal_append(c: &mut Criterion) {
    use tollgate::ledger::journal::{Journal, Pending};
    let mut g = c.benchmark_group("journal_append");
    let record = record(7, false, now_ms());
    for (name, pending) in [
        ("record", Pending::None),
        (
            "record_and_answer",
            Pending::Unread {
                api: tollgate::api::Api::ChatCompletions,
                body: ANSWER,
            },
        ),
    ] {
        let dir = common::TempDir::new("journal");
        let mut journal = Journal::open(dir.path(), 0, 1).expect("a journal");
        g.bench_function(name, |b| {
            b.iter(|| {
                journal.append(&record, pending).expect("append");
                // The writer deletes retired segments once committed; here nothing commits.
                if let Some(old) = journal.take_retired() {
                    let _ = std::fs::remove_file(old);
                }
            })
        });
    }
    g.finish();
}

fn rollup_sums(c: &mut Criterion) {
    let mut g = c.benchmark_group("rollup_sums_2048");
    for teams in [false, true] {
        let records = batch(&mut 0, teams);
        g.bench_function(if teams { "teams" } else { "bench_shape" }, |b| {
            b.iter(|| {
                let mut p = Pending::default();
                for r in &records {
                    p.add(r);
                }
                p
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = commit, rollup_sums, journal_append
}
criterion_main!(benches);
