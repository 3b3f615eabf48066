//! The Grafana dashboard and the Prometheus alerting rules shipped in the chart refer only to
//! metrics the agent exports: every `tollgate_*` name in them is a family in the `/metrics` of
//! an agent configured with every feature they watch (budgets with limits, a breaker, a fair
//! queue, replica scraping, a priced request, ledger shipping). A renamed metric fails here,
//! not on a dashboard.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::json;

use crate::harness::procs::SIM_MODEL;
use crate::harness::{post_json, Sim, Stack};

/// Every `tollgate_*` identifier in `text`, histogram series reduced to their family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("tollgate_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len() - start);
        if boundary {
            let name = &text[start..end];
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(family.to_string());
        }
        i = end;
    }
    out
}

/// The families `/metrics` declares (`# TYPE name kind`).
fn exported(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_metric_the_dashboard_and_alerts_use_is_exported() {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/tollgate/files");
    let dashboard =
        std::fs::read_to_string(chart.join("grafana-dashboard.json")).expect("dashboard");
    let rules = std::fs::read_to_string(chart.join("prometheus-rules.yaml")).expect("rules");
    let used: BTreeSet<String> = metric_names(&dashboard)
        .into_iter()
        .chain(metric_names(&rules))
        .collect();
    assert!(used.len() >= 20, "{used:?}");

    let stack = Stack::custom(Sim::start(&[]), |c| {
        // Shipping to a store that is not there still exports its metrics (up 0, errors).
        c.extra_ledger =
            ", ship: { sink: postgres, url: \"postgres://tollgate@127.0.0.1:1/none\" }".into();
        c.extra_models_yaml = format!(
            "  - name: gated\n    targets:\n      - {{provider: sim, model: {SIM_MODEL}, max_in_flight: 4}}\n    breaker: {{failures: 5}}\n"
        );
        c.governance_yaml.push_str(
            "prices:\n  smol: {input: 2.0, output: 8.0}\n\
             budgets:\n  - {name: team-usd, scope: {team: a}, usd: 10, window: month}\n  \
             - {name: team-tokens, scope: {team: b}, tokens: 100000, window: day}\n\
             replicas: { scrape: true, scrape_interval_ms: 100, timeout_ms: 1000 }\n",
        );
    });
    for model in ["smol", "gated"] {
        let r = post_json(
            stack.agent.addr,
            "/v1/chat/completions",
            &json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Replica gauges appear after the first scrape.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let metrics = loop {
        let m = stack.agent.metrics();
        if m.contains("tollgate_replica_up{") || std::time::Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let have = exported(&metrics);
    let missing: Vec<&String> = used.iter().filter(|n| !have.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard or the alerting rules use metrics the agent does not export: {missing:?}"
    );
}

#[test]
fn names_are_read_as_prometheus_would() {
    let names = metric_names(
        "rate(tollgate_ttft_seconds_bucket[5m]) / x_tollgate_not tollgate_budget_used_usd>1",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["tollgate_budget_used_usd", "tollgate_ttft_seconds"]
    );
}
