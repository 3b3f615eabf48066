//! Exact-cache costs a cacheable request pays: its key (a SHA-256 over the canonical body), a
//! memory hit, and with `cache.exact.spill` a memory miss answered from disk (open + read +
//! CRC check of a 2 KiB entry, on io_uring and on the epoll driver, where file reads block) or
//! not found there (one failed open).
//! Run: `cargo bench -p tollgate-benches --bench cache -- --warm-up-time 1 --measurement-time 3`.

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};

use tollgate::api::Api;
use tollgate::cache::spill::{Spill, SpillSettings};
use tollgate::cache::{key_of, Entry, ExactCache, KeyParts, Stamp};
use tollgate::config::CacheScope;
use tollgate::metering::Usage;

fn chat_body() -> Vec<u8> {
    let long = "Summarise the design document in three bullet points for the leadership update. "
        .repeat(12);
    serde_json::to_vec(&serde_json::json!({
        "model": "smol",
        "temperature": 0,
        "max_tokens": 256,
        "messages": [
            {"role": "system", "content": "You are a careful assistant for a platform team."},
            {"role": "user", "content": long},
        ],
    }))
    .unwrap_or_default()
}

fn entry() -> Entry {
    Entry {
        body: Bytes::from(vec![b'x'; 2048]),
        stream: false,
        usage: Usage::default(),
        stored_at: Stamp::now(),
    }
}

fn bench(c: &mut Criterion) {
    let body = chat_body();
    let parts = KeyParts {
        scope: CacheScope::Key,
        key_id: Some("key_0123456789"),
        team: None,
        api: Api::ChatCompletions,
        model: "smol",
        stream: false,
        body: &body,
    };
    c.bench_function("cache/key_of 1 KB chat body", |b| b.iter(|| key_of(&parts)));

    let ttl = Duration::from_secs(3600);
    let memory = ExactCache::new(64 << 20);
    memory.put([1; 32], entry(), None, ttl);
    c.bench_function("cache/memory hit", |b| b.iter(|| memory.get(&[1; 32], ttl)));

    let dir = std::env::temp_dir().join(format!("tg-bench-spill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let spill = Spill::start(SpillSettings {
        dir: dir.clone(),
        max_bytes: 64 << 20,
        ttl,
        semantic: None,
    })
    .expect("the spill directory");
    // A memory of one entry's size: every lookup below misses memory.
    let disk = ExactCache::with_spill(1, spill);
    disk.put([2; 32], entry(), None, ttl);
    disk.stop();
    let uring = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().build();
    if let Ok(mut rt) = uring {
        c.bench_function("cache/spill hit 2 KiB (io_uring)", |b| {
            b.iter(|| rt.block_on(disk.lookup(&[2; 32], ttl)))
        });
        c.bench_function("cache/spill miss (io_uring)", |b| {
            b.iter(|| rt.block_on(disk.lookup(&[3; 32], ttl)))
        });
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .build()
        .expect("an epoll runtime");
    c.bench_function("cache/spill hit 2 KiB (epoll)", |b| {
        b.iter(|| rt.block_on(disk.lookup(&[2; 32], ttl)))
    });
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
