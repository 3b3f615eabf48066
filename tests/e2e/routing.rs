//! Routing and resilience with real simulators as targets: retries that bill once, circuit
//! breakers opening, probing and closing, `Retry-After`, fallback models, cost tiers, and
//! egress rules. Faults come from the simulator's own injection (`--fail-rate`), a port with
//! no listener, and a simulator started later on that port.

use crate::harness::procs::SIM_MODEL;
use crate::harness::{assert_openai_error, chat_body, get, post_json, post_raw, Row, Sim, Stack};

/// A loopback port with no listener.
fn dead_port() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], crate::harness::procs::free_port()))
}

fn chat(stack: &Stack, model: &str, prompt: &str) -> (crate::harness::Response, Row) {
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body(model, prompt, 3, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let row = stack.agent.row_of(&r);
    (r, row)
}

/// The value of one series of a metric, if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// A one-worker agent in front of the stack's simulator (provider `sim`) and one more OpenAI
/// provider `name` at `base_url`, with the models `models` (YAML items) and `extra` top-level
/// YAML.
fn two_providers(name: &str, base_url: &str, models: String, extra: &str) -> Stack {
    let provider = format!("  - {{name: {name}, kind: openai, base_url: \"{base_url}\"}}\n");
    let extra = extra.to_string();
    Stack::custom(Sim::start(&[]), move |c| {
        c.workers = 1;
        c.extra_providers_yaml = provider;
        c.extra_models_yaml = models;
        c.governance_yaml.push_str(&extra);
    })
}

#[test]
fn a_5xx_target_is_retried_elsewhere_and_only_the_answer_is_billed() {
    let bad = Sim::start(&["--fail-rate", "1", "--fail-status", "500"]);
    let bad_url = bad.url();
    let stack = two_providers("bad", &bad_url, format!(
            "  - name: smart\n    targets:\n      - {{provider: bad, model: {SIM_MODEL}, weight: 1}}\n      - {{provider: sim, model: {SIM_MODEL}, weight: 1}}\n    retry: {{attempts: 1, on: [connect, 5xx]}}\n    breaker: {{failures: 1000}}\n"
        ), "routing: {retry_budget: {min_per_second: 1000}}\n");
    let mut retried = 0;
    for i in 0..24 {
        let (r, row) = chat(&stack, "smart", &format!("retry me {i}"));
        // The client never sees the failing target: the answer is the healthy one's.
        assert_eq!(
            r.header("x-tollgate-target"),
            Some(format!("sim/{SIM_MODEL}").as_str())
        );
        assert_eq!(row.provider.as_deref(), Some("sim"), "{row:#?}");
        assert_eq!(row.requested_model.as_deref(), Some("smart"));
        // Billed once, from the usage the client received.
        let usage = &r.json()["usage"];
        assert_eq!(
            (row.input_tokens, row.output_tokens),
            (
                usage["prompt_tokens"].as_i64().unwrap_or(-1),
                usage["completion_tokens"].as_i64().unwrap_or(-1)
            )
        );
        match row.route.as_deref() {
            Some(route) => {
                assert!(
                    route.contains(&format!("bad/{SIM_MODEL} answered 500")),
                    "{route}"
                );
                assert_eq!(row.attempts, 2, "{row:#?}");
                retried += 1;
            }
            None => assert_eq!(row.attempts, 1, "{row:#?}"),
        }
    }
    // Half the first choices are the failing target (24 draws: all on one side is 2^-23).
    assert!(retried > 0, "no request was retried");
    // One row per request: failed attempts add none.
    let rows = crate::harness::ledger::at_least(&stack.agent.data_dir, 24, |_| true);
    assert_eq!(rows.len(), 24, "{rows:#?}");
    // `tollgate report findings` names the retry storm, with requests that were retried.
    let out = crate::governance::cli_on_data(&stack, &["report", "findings", "--format", "json"]);
    let list: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let storm = list
        .as_array()
        .and_then(|l| {
            l.iter().find(|f| {
                f["kind"] == "retry_storm"
                    && f["subject"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("smart @ "))
            })
        })
        .unwrap_or_else(|| panic!("no retry storm for `smart` in {out}"));
    let examples = storm["examples"].as_array().cloned().unwrap_or_default();
    assert!(!examples.is_empty(), "{storm}");
    for id in examples {
        let row = rows
            .iter()
            .find(|r| r.id == id.as_str().unwrap_or(""))
            .expect("a row");
        assert_eq!(row.attempts, 2, "{row:#?}");
    }
}

#[test]
fn retries_stop_at_the_policy_and_the_provider_error_passes_through() {
    let bad = Sim::start(&["--fail-rate", "1", "--fail-status", "502"]);
    let bad_url = bad.url();
    // 5xx is not in `on`: the 502 goes back to the client as the provider sent it.
    let stack = two_providers(
        "bad",
        &bad_url,
        format!(
            "  - name: strict\n    targets:\n      - {{provider: bad, model: {SIM_MODEL}}}\n      - {{provider: sim, model: {SIM_MODEL}, priority: 1}}\n    retry: {{on: [connect]}}\n    breaker: {{failures: 1000}}\n"
        ),
        "",
    );
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("strict", "x", 1, false),
    );
    assert_eq!(r.status, 502, "{}", r.text());
    let row = stack.agent.row_of(&r);
    assert_eq!(
        (row.provider.as_deref(), row.attempts),
        (Some("bad"), 1),
        "{row:#?}"
    );
}

#[test]
fn the_retry_budget_caps_retries_per_second() {
    let bad = Sim::start(&["--fail-rate", "1", "--fail-status", "500"]);
    let bad_url = bad.url();
    let stack = two_providers("bad", &bad_url, format!(
            "  - name: pair\n    targets:\n      - {{provider: bad, model: {SIM_MODEL}}}\n      - {{provider: sim, model: {SIM_MODEL}, priority: 1}}\n    retry: {{on: [5xx]}}\n    breaker: {{failures: 1000}}\n"
        ), "routing: {retry_budget: {ratio: 0, min_per_second: 2}}\n");
    // Two retries fit the budget; then, within the same second, the 500 is the answer.
    let mut statuses = Vec::new();
    let mut exhausted = false;
    for i in 0..6 {
        let r = post_json(
            stack.agent.addr,
            "/v1/chat/completions",
            &chat_body("pair", &format!("budget {i}"), 1, false),
        );
        statuses.push(r.status);
        let row = stack.agent.row_of(&r);
        exhausted |= row
            .route
            .as_deref()
            .is_some_and(|r| r.contains("retry budget exhausted"));
    }
    // A second boundary may fall between two of the six (milliseconds apart) and refill the
    // budget once, never twice.
    assert!(statuses.contains(&500), "{statuses:?}");
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 2,
        "{statuses:?}"
    );
    assert!(exhausted, "{statuses:?}");
}

#[test]
fn a_breaker_opens_then_probes_and_closes_when_the_target_recovers() {
    let dead = dead_port();
    let stack = two_providers(
        "flaky",
        &format!("http://{dead}"),
        format!(
            "  - name: pair\n    targets:\n      - {{provider: flaky, model: {SIM_MODEL}}}\n      - {{provider: sim, model: {SIM_MODEL}, priority: 1}}\n    breaker: {{failures: 2, window_ms: 60000, cooldown_ms: 1500}}\n"
        ),
        "",
    );
    let series = format!("tollgate_target_breaker_state{{target=\"flaky/{SIM_MODEL}\"}}");
    // Two connect failures: each request is retried on the priority-1 target.
    for i in 0..2 {
        let (_, row) = chat(&stack, "pair", &format!("refused {i}"));
        assert_eq!((row.provider.as_deref(), row.attempts), (Some("sim"), 2));
        assert!(
            row.route.as_deref().is_some_and(|r| r.contains("flaky/")),
            "{row:#?}"
        );
    }
    // Open: requests go straight to the other target, no attempt at the dead one.
    assert_eq!(metric(&stack.agent.metrics(), &series), Some(2.0));
    let ready = get(stack.agent.addr, "/readyz").json();
    assert_eq!(
        ready["breakers"][format!("flaky/{SIM_MODEL}")],
        "open",
        "{ready}"
    );
    let (_, row) = chat(&stack, "pair", "while open");
    assert_eq!(
        (row.provider.as_deref(), row.attempts, row.route.as_deref()),
        (Some("sim"), 1, None)
    );
    // The target comes back; after the cooldown one probe goes to it, succeeds, and closes it.
    let _revived = Sim::start_on(dead, &[]);
    std::thread::sleep(std::time::Duration::from_millis(1600));
    let (_, row) = chat(&stack, "pair", "probe");
    assert_eq!(
        (row.provider.as_deref(), row.attempts),
        (Some("flaky"), 1),
        "{row:#?}"
    );
    let m = stack.agent.metrics();
    assert_eq!(metric(&m, &series), Some(0.0), "closed again");
    assert_eq!(
        metric(
            &m,
            &format!("tollgate_target_breaker_trips_total{{target=\"flaky/{SIM_MODEL}\"}}")
        ),
        Some(1.0)
    );
}

#[test]
fn retry_after_holds_a_target_off() {
    let limited = Sim::start(&["--fail-rate", "1", "--fail-status", "429"]);
    let url = limited.url();
    let stack = two_providers("limited", &url, format!(
            "  - name: pair\n    targets:\n      - {{provider: limited, model: {SIM_MODEL}}}\n      - {{provider: sim, model: {SIM_MODEL}, priority: 1}}\n    retry: {{on: [connect, \"429\"]}}\n    breaker: {{failures: 1000}}\n"
        ), "");
    let (_, row) = chat(&stack, "pair", "first");
    assert_eq!((row.provider.as_deref(), row.attempts), (Some("sim"), 2));
    assert!(
        row.route
            .as_deref()
            .is_some_and(|r| r.contains("answered 429")),
        "{row:#?}"
    );
    // The simulator said `Retry-After: 1`: the target is held off without being a trip.
    let ready = get(stack.agent.addr, "/readyz").json();
    assert_eq!(
        ready["breakers"][format!("limited/{SIM_MODEL}")],
        "open",
        "{ready}"
    );
    let m = stack.agent.metrics();
    assert_eq!(
        metric(
            &m,
            &format!("tollgate_target_breaker_trips_total{{target=\"limited/{SIM_MODEL}\"}}")
        ),
        Some(0.0)
    );
}

#[test]
fn fallback_models_serve_when_every_target_failed() {
    let dead = dead_port();
    let stack = two_providers(
        "gone",
        &format!("http://{dead}"),
        "  - name: primary\n    provider: gone\n    model: big\n    fallback: [smol]\n".into(),
        "",
    );
    let (r, row) = chat(&stack, "primary", "fall back");
    assert_eq!(
        r.header("x-tollgate-target"),
        Some(format!("sim/{SIM_MODEL}").as_str())
    );
    assert_eq!(row.requested_model.as_deref(), Some("primary"));
    assert_eq!(row.served_model.as_deref(), Some(SIM_MODEL));
    let route = row.route.unwrap_or_default();
    assert!(
        route.contains("gone/big") && route.contains("fallback primary -> smol"),
        "{route}"
    );
    // The provider received the fallback's model name, not the virtual one.
    let last = stack.sim.last_request();
    assert!(last["body"]
        .as_str()
        .is_some_and(|b| b.contains(SIM_MODEL) && !b.contains("primary")));
}

#[test]
fn cost_tiers_send_each_request_to_the_first_rule_it_satisfies() {
    let stack = Stack::custom(Sim::start(&[]), |c| {
        c.extra_models_yaml = format!(
            "  - name: big\n    provider: sim\n    model: {SIM_MODEL}\n  - name: auto\n    tiers:\n      - {{model: big, when: {{keywords: [architecture]}}}}\n      - {{model: smol, when: {{max_prompt_tokens: 60, tools: false}}}}\n      - {{model: big}}\n"
        );
    });
    let tier_of = |prompt: &str| -> (String, String) {
        let (_, row) = chat(&stack, "auto", prompt);
        assert_eq!(row.requested_model.as_deref(), Some("auto"));
        let route = row.route.unwrap_or_default();
        let tier = route
            .split_once("tier ")
            .map(|(_, t)| t[..1].to_string())
            .unwrap_or_default();
        (tier, route)
    };
    assert_eq!(tier_of("what is 2+2").0, "1", "short prompt, no tools");
    let (tier, route) = tier_of(&"explain this regex please ".repeat(20));
    assert_eq!(tier, "2", "{route}");
    let (tier, route) = tier_of("Review the ARCHITECTURE of this service");
    assert_eq!(tier, "0", "{route}");
    // A request with tools skips the no-tools tier.
    let mut body = chat_body("auto", "hi", 3, false);
    body["tools"] = serde_json::json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let r = post_json(stack.agent.addr, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let row = stack.agent.row_of(&r);
    assert!(
        row.route.as_deref().is_some_and(|r| r.contains("tier 2")),
        "{row:#?}"
    );
}

#[test]
fn egress_rules_keep_callers_off_public_providers() {
    let stack = Stack::custom(Sim::start(&[]), |c| {
        let url = c.providers[0].base_url.clone();
        c.extra_providers_yaml =
            format!("  - {{name: cloud, kind: openai, base_url: \"{url}\", public: true}}\n");
        c.extra_models_yaml =
            format!("  - name: ext\n    provider: cloud\n    model: {SIM_MODEL}\n");
        c.governance_yaml
            .push_str("egress: {public: deny, allow: [{team: research}]}\n");
    });
    let body = serde_json::to_vec(&chat_body("ext", "x", 1, false)).unwrap_or_default();
    let r = post_raw(
        stack.agent.addr,
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        &body,
    );
    assert_openai_error(&r, 403, "invalid_request_error", "egress_denied");
    let r = post_raw(
        stack.agent.addr,
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("x-tollgate-team", "research"),
        ],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Private targets are not affected.
    let r = post_raw(
        stack.agent.addr,
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        &serde_json::to_vec(&chat_body("smol", "x", 1, false)).unwrap_or_default(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn weights_shift_through_the_admin_api_under_load_without_a_failed_request() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let canary = Sim::start(&[]);
    let canary_url = canary.url();
    let stack = Stack::custom(Sim::start(&[]), move |c| {
        c.admin = Some(true);
        c.extra_providers_yaml =
            format!("  - {{name: canary, kind: openai, base_url: \"{canary_url}\"}}\n");
        c.extra_models_yaml = format!(
            "  - name: split\n    targets:\n      - {{provider: sim, model: {SIM_MODEL}, weight: 100}}\n      - {{provider: canary, model: {SIM_MODEL}, weight: 1}}\n"
        );
    });
    let addr = stack.agent.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let body =
                    serde_json::to_vec(&chat_body("split", "shift", 2, false)).unwrap_or_default();
                let mut client = crate::harness::Client::connect(addr);
                let mut statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = client.request(
                        "POST",
                        "/v1/chat/completions",
                        &[("content-type", "application/json")],
                        &body,
                    );
                    statuses.push(r.status);
                }
                statuses
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let admin = stack.agent.admin_addr().expect("an admin listener");
    let change = serde_json::json!({"weights": {
        format!("sim/{SIM_MODEL}"): 1,
        format!("canary/{SIM_MODEL}"): 100,
    }});
    let put_at_ms = crate::governance::now_ms();
    let r = crate::governance::admin(admin, "PUT", "/admin/models/split/weights", Some(&change));
    assert_eq!(r.status, 200, "{}", r.text());
    let changed_ms = crate::governance::now_ms();
    std::thread::sleep(std::time::Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let statuses: Vec<u16> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap_or_default())
        .collect();
    assert!(statuses.len() > 20, "{}", statuses.len());
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // Before the change the canary got ~1 %, after it ~99 %.
    let rows = crate::harness::ledger::at_least(&stack.agent.data_dir, statuses.len(), |r| {
        r.requested_model.as_deref() == Some("split")
    });
    let share = |after: bool| {
        let picked: Vec<&Row> = rows
            .iter()
            .filter(|r| r.requested_model.as_deref() == Some("split"))
            // Requests that started while the change was being applied could see either.
            .filter(|r| {
                if after {
                    r.ts_ms > changed_ms
                } else {
                    r.ts_ms < put_at_ms
                }
            })
            .collect();
        let canary = picked
            .iter()
            .filter(|r| r.provider.as_deref() == Some("canary"))
            .count();
        (canary as f64 / picked.len().max(1) as f64, picked.len())
    };
    let (before, n_before) = share(false);
    let (after, n_after) = share(true);
    assert!(n_before > 5 && n_after > 5, "{n_before} {n_after}");
    assert!(before < 0.2 && after > 0.8, "{before} {after}");
    // The change is a configuration version like any reload, and in the file.
    let history = crate::governance::admin(admin, "GET", "/admin/config/history", None).json();
    let versions = history["versions"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        versions.last().map(|v| v["trigger"].clone()),
        Some("admin".into()),
        "{history}"
    );
    let file = std::fs::read_to_string(&stack.agent.config_path).unwrap_or_default();
    assert!(file.contains("weight: 100"), "{file}");
    let models = crate::governance::admin(admin, "GET", "/admin/models", None).json();
    let split = models["models"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "split").cloned())
        .unwrap_or_default();
    assert_eq!(split["targets"][1]["weight"], 100, "{models}");
    // A target the model does not have is refused, and nothing changes.
    let bad = serde_json::json!({"weights": {"nope/x": 5}});
    let r = crate::governance::admin(admin, "PUT", "/admin/models/split/weights", Some(&bad));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("no target nope/x"), "{}", r.text());
}

#[test]
fn an_active_health_check_takes_a_target_out_and_back() {
    let checked = Sim::start(&[]);
    let addr = checked.addr;
    let stack = Stack::custom(Sim::start(&[]), move |c| {
        c.workers = 1;
        c.extra_providers_yaml = format!(
            "  - name: checked\n    kind: openai\n    base_url: \"http://{addr}\"\n    health_check: {{path: /health, interval_ms: 100, timeout_ms: 100, failures: 1}}\n"
        );
        c.extra_models_yaml = format!(
            "  - name: pair\n    targets:\n      - {{provider: checked, model: {SIM_MODEL}}}\n      - {{provider: sim, model: {SIM_MODEL}, priority: 1}}\n"
        );
    });
    let (_, row) = chat(&stack, "pair", "healthy");
    assert_eq!(row.provider.as_deref(), Some("checked"));
    drop(checked);
    // Within a few check intervals the target is out: requests go straight to the other one,
    // without a failed attempt at the dead one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let ready = get(stack.agent.addr, "/readyz").json();
        if ready["breakers"]
            .get(format!("checked/{SIM_MODEL}"))
            .is_some()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never taken out: {ready}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (_, row) = chat(&stack, "pair", "while down");
    assert_eq!(
        (row.provider.as_deref(), row.attempts),
        (Some("sim"), 1),
        "{row:#?}"
    );
    let _back = Sim::start_on(addr, &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, row) = chat(&stack, "pair", "back?");
        if row.provider.as_deref() == Some("checked") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never back in routing"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn prefix_affinity_keeps_a_conversation_on_the_replica_that_caches_it() {
    let second = Sim::start(&[]);
    let url = second.url();
    // Equal targets: replicas of one model, `balance: prefix` by default.
    let stack = two_providers(
        "twin",
        &url,
        format!(
            "  - name: pair\n    targets:\n      - {{provider: sim, model: {SIM_MODEL}}}\n      - {{provider: twin, model: {SIM_MODEL}}}\n"
        ),
        "",
    );
    let system = "You are a meticulous coding agent; read the whole diff first. ".repeat(40);
    let mut messages = vec![serde_json::json!({"role": "system", "content": system})];
    let mut providers = Vec::new();
    for turn in 0..6 {
        messages.push(
            serde_json::json!({"role": "user", "content": format!("step {turn}: what next?")}),
        );
        let body = serde_json::json!({"model": "pair", "max_tokens": 2, "messages": messages});
        let r = post_json(stack.agent.addr, "/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        let row = stack.agent.row_of(&r);
        if turn > 0 {
            // The replica that served the previous turn holds this prefix, and says so.
            assert!(row.prefix_bytes >= 2048, "{row:#?}");
            assert!(
                r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
                    .as_i64()
                    .unwrap_or(0)
                    > 0,
                "{}",
                r.text()
            );
        }
        providers.push(row.provider.unwrap_or_default());
        messages.push(serde_json::json!({"role": "assistant", "content": "ok"}));
    }
    assert!(
        providers.windows(2).all(|w| w[0] == w[1]),
        "one conversation, one replica: {providers:?}"
    );
    let m = stack.agent.metrics();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let m2 = stack.agent.metrics();
    let hits =
        metric(&m2, "tollgate_prefix_hits_total").or(metric(&m, "tollgate_prefix_hits_total"));
    assert!(hits.is_some_and(|h| h >= 5.0), "{m2}");
    // Per replica: the one that held the conversation served all six, five of them hits.
    let target = format!("{}/{SIM_MODEL}", providers[0]);
    assert_eq!(
        metric(
            &m2,
            &format!("tollgate_target_requests_total{{target=\"{target}\"}}")
        ),
        Some(6.0),
        "{m2}"
    );
    assert_eq!(
        metric(
            &m2,
            &format!("tollgate_target_prefix_hits_total{{target=\"{target}\"}}")
        ),
        Some(5.0),
        "{m2}"
    );
}

#[test]
fn batch_requests_wait_for_a_free_replica_or_are_deferred() {
    let batch = |stack: &Stack| {
        let body =
            serde_json::to_vec(&chat_body("smol", "a batch job", 1, false)).unwrap_or_default();
        post_raw(
            stack.agent.addr,
            "/v1/chat/completions",
            &[
                ("content-type", "application/json"),
                ("x-tollgate-priority", "batch"),
            ],
            &body,
        )
    };
    // An interactive request keeps the only replica busy (the simulator answers after 800 ms).
    let busy = |stack: &Stack| {
        let addr = stack.agent.addr;
        let t = std::thread::spawn(move || {
            post_json(
                addr,
                "/v1/chat/completions",
                &chat_body("smol", "interactive", 1, false),
            )
        });
        std::thread::sleep(std::time::Duration::from_millis(150));
        t
    };
    let patient = Stack::custom(Sim::start(&["--delay-ms", "800"]), |c| {
        c.workers = 1;
        c.governance_yaml
            .push_str("routing: {batch: {max_queue: 1, max_wait_ms: 10000}}\n");
    });
    let interactive = busy(&patient);
    let r = batch(&patient);
    let first = interactive.join().map(|r| r.status).unwrap_or(0);
    assert_eq!((first, r.status), (200, 200), "{}", r.text());
    let row = patient.agent.row_of(&r);
    assert!(
        row.route
            .as_deref()
            .is_some_and(|t| t.contains("batch waited")),
        "{row:#?}"
    );
    // Interactive requests never wait, and an unknown class is refused.
    let bad = post_raw(
        patient.agent.addr,
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("x-tollgate-priority", "urgent"),
        ],
        &serde_json::to_vec(&chat_body("smol", "x", 1, false)).unwrap_or_default(),
    );
    assert_openai_error(&bad, 400, "invalid_request_error", "invalid_request");

    let hasty = Stack::custom(Sim::start(&["--delay-ms", "800"]), |c| {
        c.workers = 1;
        c.governance_yaml
            .push_str("routing: {batch: {max_queue: 1, max_wait_ms: 100}}\n");
    });
    let interactive = busy(&hasty);
    let r = batch(&hasty);
    assert_openai_error(&r, 503, "api_error", "batch_deferred");
    assert!(r.header("retry-after").is_some());
    assert_eq!(interactive.join().map(|r| r.status).unwrap_or(0), 200);
    // Workers publish these once a second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let waited = metric(&patient.agent.metrics(), "tollgate_batch_waited_total");
    assert_eq!(waited, Some(1.0));
    let m = hasty.agent.metrics();
    assert_eq!(
        metric(&m, "tollgate_batch_deferred_total"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "tollgate_batch_waiting"), Some(0.0));
}

#[test]
fn the_admin_api_predicts_which_replica_holds_a_prompts_prefix() {
    let second = Sim::start(&[]);
    let url = second.url();
    let stack = Stack::custom(Sim::start(&[]), move |c| {
        c.workers = 1;
        c.admin = Some(true);
        c.extra_providers_yaml = format!("  - {{name: twin, kind: openai, base_url: \"{url}\"}}\n");
        c.extra_models_yaml = format!(
            "  - name: pair\n    targets:\n      - {{provider: sim, model: {SIM_MODEL}}}\n      - {{provider: twin, model: {SIM_MODEL}}}\n"
        );
    });
    let admin = stack.agent.admin_addr().expect("an admin listener");
    let system = "You review pull requests for a payments service; be exact. ".repeat(40);
    let turn = |n: usize| {
        let mut messages = vec![serde_json::json!({"role": "system", "content": system})];
        for i in 0..=n {
            messages.push(serde_json::json!({"role": "user", "content": format!("step {i}")}));
        }
        serde_json::json!({"model": "pair", "max_tokens": 2, "messages": messages})
    };
    let predict = |body: &serde_json::Value| {
        crate::governance::admin(admin, "POST", "/admin/route/predict", Some(body))
    };
    // Nothing sent yet: no replica holds anything.
    let r = predict(&turn(0));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["balance"], "prefix");
    assert!(v["prompt_blocks"].as_u64().unwrap_or(0) >= 8, "{v}");
    let replicas = v["replicas"].as_array().cloned().unwrap_or_default();
    assert_eq!(replicas.len(), 2, "{v}");
    assert!(replicas.iter().all(|r| r["matched_blocks"] == 0), "{v}");
    // The first turn lands somewhere; the next turn's prefix is predicted there, and the agent
    // then sends it there.
    let first = post_json(stack.agent.addr, "/v1/chat/completions", &turn(0));
    assert_eq!(first.status, 200, "{}", first.text());
    let served = first.header("x-tollgate-target").unwrap_or("").to_string();
    let v = predict(&turn(1)).json();
    let holder = v["replicas"]
        .as_array()
        .and_then(|l| l.iter().find(|r| r["target"] == served.as_str()))
        .cloned()
        .unwrap_or_default();
    assert!(holder["matched_bytes"].as_u64().unwrap_or(0) >= 2048, "{v}");
    assert!(
        holder["matched_fraction"].as_f64().unwrap_or(0.0) > 0.5,
        "{v}"
    );
    let other = v["replicas"]
        .as_array()
        .and_then(|l| l.iter().find(|r| r["target"] != served.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(other["matched_blocks"], 0, "{v}");
    assert_eq!(v["choice"], served.as_str(), "{v}");
    let next = post_json(stack.agent.addr, "/v1/chat/completions", &turn(1));
    assert_eq!(next.header("x-tollgate-target"), Some(served.as_str()));
    // Bad requests get precise errors.
    let r = predict(&serde_json::json!({"model": "nope", "messages": []}));
    assert_openai_error(&r, 404, "invalid_request_error", "model_not_found");
    let r = predict(&serde_json::json!({"messages": []}));
    assert_openai_error(&r, 400, "invalid_request_error", "invalid_request");
}

/// A replica that keeps no prefix cache recomputes the prompt prefix the prefix balancer sent
/// it on purpose: `tollgate report findings` names the waste, with the requests behind it.
#[test]
fn a_replica_without_prefix_cache_is_found_wasting_the_prefix() {
    let cold = Sim::start(&["--prefix-cache-blocks", "1"]);
    let cold_url = cold.url();
    let stack = two_providers(
        "cold",
        &cold_url,
        format!(
            "  - name: pair\n    balance: prefix\n    targets:\n      - {{provider: cold, model: {SIM_MODEL}}}\n      - {{provider: cold, model: {SIM_MODEL}}}\n"
        ),
        "",
    );
    let shared = "You are the release assistant. Follow the checklist exactly. ".repeat(40);
    for i in 0..12 {
        let (r, _) = chat(&stack, "pair", &format!("{shared} Question {i}?"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let out = crate::governance::cli_on_data(&stack, &["report", "findings", "--format", "json"]);
    let list: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let waste = list
        .as_array()
        .and_then(|l| l.iter().find(|f| f["kind"] == "cache_miss_waste"))
        .unwrap_or_else(|| panic!("no cache_miss_waste in {out}"));
    assert_eq!(waste["subject"], SIM_MODEL);
    assert!(waste["value"].as_f64().is_some_and(|v| v > 0.9), "{waste}");
    assert!(
        waste["requests"].as_u64().is_some_and(|n| n >= 10),
        "{waste}"
    );
    assert_eq!(
        waste["examples"].as_array().map(Vec::len),
        Some(5),
        "{waste}"
    );
}
