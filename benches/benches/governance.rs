//! Governance hot path, piece by piece: the key lookup (SHA-256 + probe + constant-time
//! compare), one GCRA rate-limit check, a budget reservation and its settlement, a whole
//! reservation as admission makes it (key rpm/tpm + a team rule's two rates + key and team
//! budgets, then the settle), and rendering the rate-limit response headers.
//! Run: `cargo bench -p tollgate-benches --bench governance`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate::api::Wire;
use tollgate::governance::budget::BudgetState;
use tollgate::governance::gcra::{now_ns, Gcra};
use tollgate::governance::hold::{BudgetInfo, HeldBudget, HeldRate, Hold};
use tollgate::governance::keys::{self, KeyRecord, KeySpec, KeyTable};
use tollgate::governance::policy::RateKind;
use tollgate::governance::window::{now_ms, Window};
use tollgate::metering::Usage;
use tollgate::phase::admit::{render_quota, Quota, Remaining};

fn table(n: usize) -> (KeyTable, String) {
    let mut rows = Vec::new();
    let mut probe = String::new();
    for i in 0..n {
        let k = keys::generate().unwrap_or_else(|e| panic!("{e}"));
        if i == n / 2 {
            probe = k.secret.clone();
        }
        rows.push((
            KeyRecord {
                id: format!("k_{i}"),
                prefix: k.prefix,
                spec: KeySpec {
                    team: Some("search".into()),
                    rpm: Some(1_000_000_000),
                    enabled: true,
                    ..KeySpec::default()
                },
                created_ms: 0,
                updated_ms: 0,
                revoked_ms: None,
            },
            k.hash,
        ));
    }
    (KeyTable::build(rows, &KeyTable::default()), probe)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("governance");
    let (t, key) = table(10_000);
    g.bench_function("key_lookup_10k_keys", |b| {
        b.iter(|| t.lookup(std::hint::black_box(&key)).is_some())
    });

    let gcra = Gcra::new(u64::MAX / 4, Duration::from_secs(60));
    g.bench_function("gcra_check_and_refund", |b| {
        b.iter(|| {
            let v = gcra.check(100, now_ns());
            gcra.refund(40);
            v
        })
    });

    let state = BudgetState::default();
    let w = Window::Month.at(now_ms()).index;
    g.bench_function("budget_reserve_and_settle", |b| {
        b.iter(|| {
            let r = state.tokens.try_reserve(w, 500, u64::MAX >> 30);
            state.tokens.settle(w, 500, 0);
            r
        })
    });

    // What admission takes for a governed request, then its settlement.
    let rates: Vec<Arc<Gcra>> = (0..4)
        .map(|_| Arc::new(Gcra::new(1 << 40, Duration::from_secs(60))))
        .collect();
    let budgets: Vec<(Arc<BudgetState>, Arc<BudgetInfo>)> = (0..2)
        .map(|i| {
            (
                Arc::new(BudgetState::default()),
                Arc::new(BudgetInfo {
                    name: format!("b{i}"),
                    scope: "team=search".into(),
                    window: Window::Month,
                    alert_at: vec![0.8, 1.0],
                    limit_tokens: None,
                    limit_micro_usd: Some(10_000_000),
                }),
            )
        })
        .collect();
    let usage = Usage {
        input_tokens: 30,
        output_tokens: 16,
        ..Usage::default()
    };
    g.bench_function("reserve_4_rates_2_budgets_then_settle", |b| {
        b.iter(|| {
            let now = now_ns();
            let span = Window::Month.at(now_ms());
            let mut hold = Hold::default();
            for (i, g) in rates.iter().enumerate() {
                let cost = if i % 2 == 0 { 1 } else { 60 };
                let _ = g.check(cost, now);
                hold.rates.push(HeldRate {
                    gcra: g.clone(),
                    kind: if i % 2 == 0 {
                        RateKind::Requests
                    } else {
                        RateKind::Tokens
                    },
                    reserved: cost,
                });
            }
            for (s, info) in &budgets {
                let _ = s.tokens.try_reserve(span.index, 60, 1 << 39);
                let _ = s.micro_usd.try_reserve(span.index, 20, 1 << 39);
                hold.budgets.push(HeldBudget {
                    state: s.clone(),
                    info: info.clone(),
                    window: span.index,
                    window_start_ms: span.start_ms,
                    window_end_ms: span.end_ms,
                    limit_tokens: Some(1 << 39),
                    limit_micro_usd: Some(1 << 39),
                    tokens: 60,
                    micro_usd: 20,
                });
            }
            hold.settle(&usage, 12)
        })
    });

    let q = Quota {
        requests: Some(Remaining {
            limit: 600,
            remaining: 599,
            reset: Duration::from_millis(100),
        }),
        tokens: Some(Remaining {
            limit: 200_000,
            remaining: 199_000,
            reset: Duration::from_millis(300),
        }),
        fallback: None,
    };
    g.bench_function("render_rate_limit_headers_openai", |b| {
        b.iter(|| render_quota(std::hint::black_box(&q), Wire::OpenAi))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
