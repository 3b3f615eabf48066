//! The routing decision (`phase/route`) for a model with 2, 16 and 128 targets: conditions,
//! breaker state and the weighted draw within the lowest priority group, as one request's
//! `route::run` makes it. Half the targets sit in priority 1, so the scan passes over them.
//! Run: `cargo bench -p tollgate-benches --bench routing`.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tollgate::api::Api;
use tollgate::config::Config;
use tollgate::http::request::RequestHead;
use tollgate::phase::read::{Request, Reservation};
use tollgate::phase::route::{self, RouteLocal};
use tollgate::pipeline::RequestCtx;
use tollgate::snapshot::{Registry, Snapshot};
use tollgate::telemetry::metrics::Metrics;

fn snapshot(targets: usize, dir: &std::path::Path) -> Arc<Snapshot> {
    snapshot_with(targets, dir, false)
}

fn snapshot_with(targets: usize, dir: &std::path::Path, replicas: bool) -> Arc<Snapshot> {
    let mut y = String::from("providers:\n");
    for i in 0..targets {
        let _ = writeln!(
            y,
            "  - {{name: p{i}, kind: openai, base_url: http://127.0.0.1:{}}}",
            9000 + i
        );
    }
    y.push_str("models:\n  - name: m\n    targets:\n");
    for i in 0..targets {
        if replicas {
            let _ = writeln!(y, "      - {{provider: p{i}, model: m}}");
            continue;
        }
        let _ = writeln!(
            y,
            "      - {{provider: p{i}, model: m{i}, weight: {}, priority: {}, context_window: 128000}}",
            1 + i % 7,
            (i >= targets / 2) as u8
        );
    }
    let cfg = Config::from_yaml(&y, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let (gov, _rx) = tollgate::governance::Governor::open(dir).unwrap_or_else(|e| panic!("{e}"));
    let metrics = Metrics::new(1, vec![], vec![]);
    Arc::new(
        Registry::default()
            .build(Arc::new(cfg), 1, &metrics, &gov)
            .unwrap_or_else(|e| panic!("{e}")),
    )
}

fn ctx(snap: &Arc<Snapshot>) -> RequestCtx {
    let raw = bytes::Bytes::from_static(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n\r\n");
    let head = RequestHead::parse(raw, 16).unwrap_or_else(|e| panic!("{e:?}"));
    let body = bytes::Bytes::from_static(
        br#"{"model":"m","messages":[{"role":"user","content":"route me somewhere"}]}"#,
    );
    let mut c = RequestCtx::new(
        "bench".into(),
        Instant::now(),
        Api::ChatCompletions,
        Request {
            head,
            body,
            snap: snap.clone(),
            reservation: Reservation::none(),
        },
    );
    c.inspection.model = "m".into();
    c.inspection.prompt_bytes = 60;
    c.route.public_ok = true;
    c
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("tollgate-bench-routing-{}", std::process::id()));
    let mut g = c.benchmark_group("routing");
    for n in [2usize, 16, 128] {
        let snap = snapshot(n, &dir.join(n.to_string()));
        let local = RouteLocal::new(7, std::sync::Arc::default());
        let mut request = ctx(&snap);
        g.bench_with_input(BenchmarkId::new("route_run", n), &n, |b, _| {
            b.iter(|| {
                request.target = None;
                request.route.tried.clear();
                route::run(&snap, &local, &mut request, None).is_ok()
            })
        });
    }
    // The prefix balancer: an 8 KB conversation, a full index.
    let conversation: Vec<serde_json::Value> = std::iter::once(serde_json::json!({
        "role": "system", "content": "You are a careful coding agent. ".repeat(150)
    }))
    .chain((0..6).map(|i| {
        serde_json::json!({"role": if i % 2 == 0 { "user" } else { "assistant" },
                           "content": format!("turn {i}: {}", "look at this diff ".repeat(20))})
    }))
    .collect();
    let body = bytes::Bytes::from(
        serde_json::to_vec(&serde_json::json!({"model": "m", "messages": conversation}))
            .unwrap_or_default(),
    );
    for n in [4usize, 64] {
        let snap = snapshot_with(n, &dir.join(format!("prefix-{n}")), true);
        let local = RouteLocal::new(7, std::sync::Arc::default());
        {
            let mut index = local.balance.index();
            let filler: Vec<u64> = (0..200_000u64)
                .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .collect();
            for chunk in filler.chunks(1000) {
                index.record(chunk, (chunk[0] % n as u64) as usize, 200_000);
            }
        }
        let mut request = ctx(&snap);
        request.body = body.clone();
        request.inspection.prompt_bytes = body.len();
        g.bench_with_input(BenchmarkId::new("prefix_route_run", n), &n, |b, _| {
            b.iter(|| {
                request.target = None;
                request.route.tried.clear();
                route::run(&snap, &local, &mut request, None).is_ok()
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
