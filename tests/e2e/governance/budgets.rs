//! Budgets: reservation before forwarding and settlement after, `block` / `fallback` /
//! `queue` on breach, the overshoot bound under 64 concurrent streams, costs from the price
//! catalog, alerts (audit, metric, webhook), chargeback, and durability across kill -9.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{admin, cli_on_data, create_key, governed, smol_as};
use crate::harness::{assert_openai_error, ledger, Client, Sim, Stack};

fn team_rows(stack: &Stack, team: &str) -> Vec<ledger::Row> {
    ledger::all(&stack.agent.data_dir)
        .into_iter()
        .filter(|r| r.team.as_deref() == Some(team))
        .collect()
}

fn tokens(rows: &[ledger::Row]) -> i64 {
    rows.iter().map(|r| r.input_tokens + r.output_tokens).sum()
}

/// Waits until every request in `ids` has its row.
fn rows_of(stack: &Stack, ids: &[String]) -> Vec<ledger::Row> {
    ids.iter().map(|id| stack.agent.ledger_row(id)).collect()
}

#[test]
fn block_reports_the_reset_and_costs_come_from_the_catalog() {
    let stack = governed(
        Sim::start(&[]),
        "prices:\n  smol: {input: 1.0, output: 2.0}\n\
         budgets:\n  - name: search-daily\n    scope: {team: search}\n    tokens: 300\n    window: day\n",
    );
    let (key, _) = create_key(&stack, json!({"team": "search"}));
    let mut ok = Vec::new();
    let refused = loop {
        let r = smol_as(&stack, &key, 50);
        if r.status != 200 {
            break r;
        }
        ok.push(r.request_id().to_string());
        assert!(
            ok.len() < 10,
            "a 300-token budget cannot take ten 60-token requests"
        );
    };
    let e = assert_openai_error(&refused, 429, "insufficient_quota", "budget_exceeded");
    assert_eq!(e["limit"], "search-daily");
    let reset = e["resets_at_ms"].as_i64().expect("reset time");
    let day = 86_400_000;
    assert_eq!(reset % day, 0, "a day window resets at midnight UTC");
    assert!(reset > super::now_ms() && reset <= super::now_ms() + day);
    assert!(refused.header("retry-after").is_some());
    let rows = rows_of(&stack, &ok);
    assert!(
        tokens(&rows) <= 300,
        "block never lets spend pass the budget: {rows:#?}"
    );
    for r in &rows {
        assert_eq!(
            r.cost_micro_usd,
            r.input_tokens + 2 * r.output_tokens,
            "{r:#?}"
        );
    }
    let chargeback = cli_on_data(&stack, &["chargeback", "--format", "csv"]);
    let want_cost: i64 = rows.iter().map(|r| r.cost_micro_usd).sum();
    let header: Vec<&str> = chargeback
        .lines()
        .next()
        .expect("a header")
        .split(',')
        .collect();
    let line: Vec<&str> = chargeback
        .lines()
        .find(|l| l.starts_with("search,"))
        .expect("a row for search")
        .split(',')
        .collect();
    let cost = header
        .iter()
        .position(|h| *h == "cost_usd")
        .expect("cost_usd");
    assert_eq!(
        line[cost],
        format!("{:.6}", want_cost as f64 / 1e6),
        "{chargeback}"
    );
    assert!(cli_on_data(&stack, &["usage", "--by", "key"]).contains("k_"));
}

#[test]
fn chargeback_reports_monthly_budget_use_from_the_config() {
    let stack = governed(
        Sim::start(&[]),
        "prices:\n  smol: {input: 1.0, output: 2.0}\n\
         budgets:\n  - name: search-month\n    scope: {team: search}\n    tokens: 100000\n    window: month\n",
    );
    let (key, _) = create_key(&stack, json!({"team": "search"}));
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let r = smol_as(&stack, &key, 20);
            assert_eq!(r.status, 200, "{}", r.text());
            r.request_id().to_string()
        })
        .collect();
    let rows = rows_of(&stack, &ids);
    let config = stack.agent.config_path.to_string_lossy().into_owned();
    // Run where the agent runs: its config names the admin token's variable.
    let out = crate::harness::procs::run_tollgate_env(
        &[
            "report",
            "chargeback",
            "--config",
            &config,
            "--format",
            "json",
        ],
        &[("TOLLGATE_ADMIN_TOKEN", super::ADMIN_TOKEN)],
        std::time::Duration::from_secs(10),
    );
    assert!(out.status.success(), "{out:#?}");
    let report: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let search = report
        .as_array()
        .and_then(|a| a.iter().find(|r| r["key"] == "search"))
        .unwrap_or_else(|| panic!("no row for search: {report}"));
    assert_eq!(search["requests"], 2);
    let cost: i64 = rows.iter().map(|r| r.cost_micro_usd).sum();
    assert!((search["cost_usd"].as_f64().unwrap_or(-1.0) - cost as f64 / 1e6).abs() < 1e-9);
    // Nothing last month (a fresh ledger): no percentage, zero before.
    assert_eq!(search["previous_cost_usd"], 0.0);
    assert!(search["change_pct"].is_null(), "{search}");
    assert_eq!(search["budget"]["name"], "search-month");
    let want = tokens(&rows) as f64 / 100_000.0 * 100.0;
    let used = search["budget"]["used_pct"].as_f64().unwrap_or(-1.0);
    assert!((used - want).abs() < 1e-9, "{used} vs {want}");
}

#[test]
fn fallback_serves_a_cheaper_model_and_says_so() {
    let stack = Stack::custom(Sim::start(&["--model", "cheap-model"]), |c| {
        c.admin = Some(true);
        c.extra_models_yaml = "  - name: cheap\n    provider: sim\n    model: cheap-model\n".into();
        c.governance_yaml = "auth: { mode: keys }\n\
             budgets:\n  - name: premium\n    scope: {team: search, model: smol}\n    tokens: 100\n    on_breach: fallback\n    fallback_model: cheap\n"
            .into();
    });
    let (key, _) = create_key(&stack, json!({"team": "search"}));
    let r = smol_as(&stack, &key, 60);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-tollgate-fallback").is_none());
    let r = smol_as(&stack, &key, 60);
    assert_eq!(r.status, 200, "{}", r.text());
    let header = r
        .header("x-tollgate-fallback")
        .expect("the fallback is announced");
    assert!(
        header.contains("smol -> cheap") && header.contains("premium"),
        "{header}"
    );
    assert!(
        stack.sim.last_request()["body"]
            .as_str()
            .is_some_and(|b| b.contains("\"model\":\"cheap-model\"")),
        "the provider was asked for the fallback model"
    );
    let row = stack.agent.row_of(&r);
    assert_eq!(row.requested_model.as_deref(), Some("smol"));
    assert_eq!(row.served_model.as_deref(), Some("cheap-model"));
}

#[test]
fn queue_waits_for_headroom_then_gives_up() {
    let stack = governed(
        Sim::start(&[]),
        "budgets:\n  - name: q\n    scope: {team: q}\n    tokens: 200\n    on_breach: queue\n    queue_timeout_ms: 3000\n",
    );
    let admin_addr = stack.agent.admin_addr().expect("admin");
    let (key, _) = create_key(&stack, json!({"team": "q"}));
    let r = smol_as(&stack, &key, 150);
    assert_eq!(r.status, 200, "{}", r.text());
    // No room: it waits the whole timeout, then 429.
    let t = Instant::now();
    let r = smol_as(&stack, &key, 150);
    assert_openai_error(&r, 429, "insufficient_quota", "budget_exceeded");
    assert!(
        t.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        t.elapsed()
    );
    // Headroom arrives while it waits (an exception adds budget): it is served.
    let granter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        admin(
            admin_addr,
            "POST",
            "/admin/exceptions",
            Some(&json!({
                "subject_kind": "team", "subject": "q", "extra_tokens": 1000,
                "justification": "launch week", "approver": "finance",
                "expires_ms": super::now_ms() + 600_000,
            })),
        )
        .status
    });
    let t = Instant::now();
    let r = smol_as(&stack, &key, 150);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "it waited: {:?}",
        t.elapsed()
    );
    assert_eq!(granter.join().unwrap_or(0), 201);
    assert!(stack
        .agent
        .metrics()
        .contains("tollgate_budget_queued_total 2"));
}

#[test]
fn sixty_four_concurrent_streams_overshoot_by_at_most_one_reservation() {
    const BUDGET: i64 = 2000;
    let stack = governed(
        Sim::start_paced(&["--max-running", "128"]),
        &format!("budgets:\n  - name: c\n    scope: {{team: c}}\n    tokens: {BUDGET}\n"),
    );
    let (key, _) = create_key(&stack, json!({"team": "c"}));
    let addr = stack.agent.addr;
    let start = Arc::new(std::sync::Barrier::new(64));
    let results: Arc<Mutex<Vec<(u16, String)>>> = Arc::default();
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let (key, start, results) = (key.clone(), start.clone(), results.clone());
            std::thread::spawn(move || {
                let body = json!({
                    "model": "smol",
                    "messages": [{"role": "user", "content": format!("stream number {i}")}],
                    "max_tokens": 40 + i % 20,
                    "stream": true,
                });
                let auth = format!("Bearer {key}");
                let mut c = Client::connect(addr);
                start.wait();
                let r = c.request(
                    "POST",
                    "/v1/chat/completions",
                    &[("authorization", auth.as_str()), ("connection", "close")],
                    body.to_string().as_bytes(),
                );
                let id = r.header("x-tollgate-request-id").unwrap_or("").to_string();
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((r.status, id));
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let results = results.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let served: Vec<String> = results
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, id)| id.clone())
        .collect();
    let refused = results.iter().filter(|(s, _)| *s == 429).count();
    assert_eq!(served.len() + refused, 64, "{results:?}");
    assert!(refused > 0 && !served.is_empty(), "{results:?}");
    let rows = rows_of(&stack, &served);
    // The largest single reservation: the longest prompt's estimate plus the largest max_tokens.
    let largest = ("stream number 63".len() as i64) / 3 + 16 + 59;
    let spent = tokens(&rows);
    assert!(
        spent <= BUDGET + largest,
        "spent {spent} against a budget of {BUDGET} (largest reservation {largest})"
    );
}

#[test]
fn alerts_reach_the_audit_log_metrics_and_the_webhook() {
    let hook = TcpListener::bind("127.0.0.1:0").expect("binding the webhook");
    let hook_addr = hook.local_addr().expect("addr");
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = received.clone();
    std::thread::spawn(move || {
        for stream in hook.incoming().flatten() {
            let mut s = stream;
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = s.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        if let Ok(v) = serde_json::from_str(body) {
                            sink.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                        }
                        let _ =
                            s.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
                        break;
                    }
                }
            }
        }
    });
    let stack = governed(
        Sim::start(&[]),
        &format!(
            "alerts: {{ webhook: \"http://{hook_addr}/hook\" }}\n\
             budgets:\n  - name: alerting\n    scope: {{team: a}}\n    tokens: 200\n    alert_at: [0.5, 1.0]\n"
        ),
    );
    let (key, _) = create_key(&stack, json!({"team": "a"}));
    let r = smol_as(&stack, &key, 100);
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(5);
    while received
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no webhook call");
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = received.lock().unwrap_or_else(|e| e.into_inner())[0].clone();
    assert_eq!(first["budget"], "alerting");
    assert_eq!(first["threshold"], 0.5);
    assert!(
        first["used_tokens"].as_u64().is_some_and(|u| u >= 100),
        "{first}"
    );
    let admin_addr = stack.agent.admin_addr().expect("admin");
    let r = admin(admin_addr, "GET", "/admin/audit?action=budget.alert", None);
    assert_eq!(
        r.json()["entries"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r.text()
    );
    assert!(stack
        .agent
        .metrics()
        .contains("tollgate_budget_alerts_total 1"));
    // `tollgate audit` reads the same log.
    assert!(cli_on_data(&stack, &["audit", "--action", "budget."]).contains("budget.alert"));
}

#[test]
fn kill_9_forgets_no_spend_and_no_window_resets_early() {
    let mut stack = governed(
        Sim::start(&[]),
        "budgets:\n  - name: durable\n    scope: {team: d}\n    tokens: 400\n    window: month\n",
    );
    let (key, _) = create_key(&stack, json!({"team": "d"}));
    let mut served = Vec::new();
    loop {
        let r = smol_as(&stack, &key, 40);
        if r.status == 429 {
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        served.push(r.request_id().to_string());
    }
    // Killed right after the last response: rows may still be only in the journal.
    stack.agent.crash_and_restart(1);
    let rows = rows_of(&stack, &served);
    let spent = tokens(&rows);
    let metrics = stack.agent.metrics();
    let gauge = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_budget_used_tokens{budget=\"durable\"} "))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .expect("the budget gauge");
    assert_eq!(
        gauge, spent,
        "every completed request is counted after the restart"
    );
    // The window goes on where it was: what is left is what the first run left (reservations
    // of the first run that were still unsettled may have refused early), never a new budget.
    let mut after = 0;
    loop {
        let r = smol_as(&stack, &key, 40);
        if r.status != 200 {
            assert_openai_error(&r, 429, "insufficient_quota", "budget_exceeded");
            break;
        }
        after += 1;
        assert!(after <= 2, "a restart gave the budget new room");
    }
    let all = team_rows(&stack, "d");
    assert!(tokens(&all) <= 400, "{all:#?}");
}
