//! GPU-priced self-hosted tokens end to end: the simulator is a self-hosted replica on two
//! (priced) H100s, accounted in one-second intervals. Two teams send requests; after the agent
//! stops, `tollgate report gpu` splits the GPUs' busy cost between them by token weight, shows
//! the idle rest on its own, and every cent of the GPUs' cost is accounted for.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::procs::run_tollgate;
use crate::harness::{Sim, Stack};

#[test]
fn self_hosted_tokens_carry_their_gpu_cost_and_idle_time_is_its_own_line() {
    let mut stack = Stack::custom(Sim::start(&[]), |c| {
        c.governance_yaml.push_str(
            // The engine is not scraped: every interval counts as busy (with a zero-delay
            // simulator, scrapes would almost never catch a request running).
            "replicas: {scrape: false}\n\
             gpu_pricing: {H100: 3.6}\n\
             gpu_accounting:\n  interval_s: 1\n  replicas:\n    - {provider: sim, gpu: H100, count: 2, compare_to: gpt-4o-mini}\n",
        );
    });
    let started = Instant::now();
    let mut tokens = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        for team in ["a", "a", "b"] {
            let body = json!({"model": "smol", "messages": [{"role": "user", "content": "what does a GPU second cost?"}], "max_tokens": 16});
            let r = crate::harness::chat_as_team(stack.agent.addr, team, &body);
            let row = stack.agent.row_of(&r);
            tokens += row.input_tokens + row.output_tokens;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // A graceful stop closes the running interval.
    assert!(stack.agent.stop().success());
    let data_dir = stack.agent.data_dir.to_string_lossy().into_owned();
    let out = run_tollgate(
        &["report", "gpu", "--data-dir", &data_dir, "--format", "json"],
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{out:#?}");
    let report: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let team = |k: &str| {
        report["groups"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["key"] == k))
            .unwrap_or_else(|| panic!("no {k}: {report}"))
            .clone()
    };
    let (a, b) = (team("a"), team("b"));
    let cost = |v: &Value| v["gpu_cost_usd"].as_f64().unwrap_or(-1.0);
    assert!(cost(&a) > 0.0 && cost(&b) > 0.0, "{report}");
    // Team a sent twice b's requests (the same prompt, simulated answers of similar length).
    assert!(cost(&a) > cost(&b), "{report}");
    let replica = &report["replicas"][0];
    assert_eq!(replica["provider"], "sim");
    assert_eq!(replica["tokens"].as_i64(), Some(tokens), "{report}");
    // 2 GPUs × $3.6/h = $0.002 per second, for about the time the agent ran; busy throughout
    // but for the intervals in which no request came.
    let busy = replica["busy_usd"].as_f64().unwrap();
    let idle = replica["idle_usd"].as_f64().unwrap();
    let total = busy + idle;
    assert!(total > 0.002 * 2.0 && total < 0.002 * 60.0, "{report}");
    // Every cent: what the teams were charged plus the idle line is what the GPUs cost.
    assert!(
        ((cost(&a) + cost(&b) + idle) - total).abs() < 1e-9,
        "{report}"
    );
    assert!(replica["usd_per_m_tokens"].as_f64().unwrap() > 0.0);
    assert!(replica["compare_usd"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(replica["compare_to"], "gpt-4o-mini");
}
