//! The web dashboard in a real headless Chromium (Debian's, driven by Playwright from the
//! SDK venv): the page is served by the binary itself and loads nothing from elsewhere, the
//! data needs the admin token, and the numbers the page shows equal `tollgate report
//! chargeback` and `tollgate report findings` for the same month, the live budget counters,
//! and the audit log. Screenshots are left in `target/e2e-artifacts/dashboard/`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::governance::{admin, create_key, governed, post_with_key};
use crate::harness::procs::{run_tollgate, ADMIN_TOKEN, SIM_MODEL};
use crate::harness::{Client, Sim};

/// Debian's Chromium, or `None` to skip (a missing one fails under `cargo xtask test`).
fn chromium() -> Option<PathBuf> {
    match std::env::var("TOLLGATE_CHROMIUM") {
        Ok(v) => match v.strip_prefix("missing: ") {
            Some(why) => panic!("cargo xtask test could not install chromium: {why}"),
            None => Some(PathBuf::from(v)),
        },
        Err(_) => {
            let local = PathBuf::from("/usr/bin/chromium");
            if !local.exists() {
                eprintln!("skipping: no /usr/bin/chromium (run `cargo xtask test`)");
            }
            local.exists().then_some(local)
        }
    }
}

fn micro(usd: &Value) -> i64 {
    (usd.as_f64().expect("a USD number") * 1e6).round() as i64
}

fn get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> crate::harness::Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("connection", "close")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    Client::connect(addr).request("GET", path, &headers, b"")
}

#[test]
fn the_dashboard_shows_what_the_reports_say_in_a_real_browser() {
    let stack = governed(
        Sim::start(&[]),
        "prices:\n  smol: {input: 2.0, output: 8.0}\n\
         budgets:\n  - {name: search-month, scope: {team: search}, usd: 5, window: month}\n",
    );
    let admin_addr = stack.agent.admin_addr().expect("an admin listener");

    // The page needs no token and loads only from this origin; the data needs the token.
    let page = get(admin_addr, "/dashboard/", None);
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(
        get(admin_addr, "/dashboard", None).header("location"),
        Some("/dashboard/")
    );
    let refused = get(admin_addr, "/admin/dashboard/spend", None);
    assert_eq!(refused.status, 401, "{}", refused.text());
    let bad = get(
        admin_addr,
        "/admin/dashboard/spend?range=fortnight",
        Some(ADMIN_TOKEN),
    );
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["code"], "invalid_range");

    // Traffic: two teams through two keys, a named session, a refusal; an audited key.
    let (search_key, _) = create_key(&stack, json!({"team": "search"}));
    let (ads_key, _) = create_key(&stack, json!({"team": "ads"}));
    let chat = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 6});
    let mut last = None;
    for (key, n, session) in [(&search_key, 3, Some("sess-a")), (&ads_key, 2, None)] {
        for _ in 0..n {
            let extra: Vec<(&str, &str)> =
                session.iter().map(|s| ("x-tollgate-session", *s)).collect();
            let r = post_with_key(
                stack.agent.addr,
                "/v1/chat/completions",
                key,
                &extra,
                &chat("smol"),
            );
            assert_eq!(r.status, 200, "{}", r.text());
            last = Some(r);
        }
    }
    let r = post_with_key(
        stack.agent.addr,
        "/v1/chat/completions",
        &ads_key,
        &[],
        &chat("no-such-model"),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    // Every row is committed before the reports and the page read the ledger.
    stack.agent.row_of(&last.expect("a response"));
    stack.agent.row_of(&r);

    // What the reports say about this month.
    let month = {
        let spend = get(
            admin_addr,
            "/admin/dashboard/spend?range=month",
            Some(ADMIN_TOKEN),
        )
        .json();
        spend["from"].as_str().expect("from")[..7].to_string()
    };
    let data_dir = stack.agent.data_dir.to_string_lossy().into_owned();
    let report = |args: &[&str]| -> Value {
        let mut all = vec!["report"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[
            "--data-dir",
            &data_dir,
            "--month",
            &month,
            "--format",
            "json",
        ]);
        let run = run_tollgate(&all, Duration::from_secs(30));
        assert!(run.status.success(), "{}", run.stderr);
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
    };
    let chargeback = report(&["chargeback", "--by", "team"]);
    let findings = report(&["findings"]);

    let Some(chromium) = chromium() else { return };
    let Some(python) = crate::harness::venv::python("TOLLGATE_SDK_PYTHON", ".venv", "playwright")
    else {
        return;
    };
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-artifacts/dashboard");
    std::fs::create_dir_all(&shots).expect("the screenshot directory");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser/dashboard.py");
    let run = Command::new(python)
        .arg(script)
        .arg(format!("http://{admin_addr}"))
        .arg(ADMIN_TOKEN)
        .arg(&shots)
        .arg(chromium)
        .output()
        .expect("running the browser script");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let shown: Value = serde_json::from_str(stdout.trim()).expect("the page's numbers as JSON");
    eprintln!(
        "dashboard: first load took {:.3} s",
        shown["first_load_s"].as_f64().unwrap_or(-1.0)
    );

    assert_eq!(shown["problems"], json!([]), "the page ran cleanly");
    assert_eq!(
        shown["outside_requests"],
        json!([]),
        "nothing loaded from elsewhere"
    );
    assert!(
        shown["refused_message"]
            .as_str()
            .is_some_and(|m| m.contains("refused")),
        "{shown}"
    );
    assert_eq!(shown["new_tab_asks_again"], true);
    assert_eq!(
        shown["login_hidden"], true,
        "the token form goes once the data shows"
    );

    // Per team: requests and cost equal the chargeback report's; so do the totals.
    let rows = chargeback.as_array().expect("chargeback rows");
    let teams = shown["teams"].as_array().expect("team rows");
    assert_eq!(teams.len(), rows.len(), "{teams:?} vs {rows:?}");
    let mut total = 0;
    for row in rows {
        let name = row["key"].as_str().expect("a team");
        let name = if name.is_empty() || name == "(none)" {
            "(none)"
        } else {
            name
        };
        let on_page = teams
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not on the page: {teams:?}"));
        assert_eq!(
            on_page["requests"].as_str().map(|s| s.replace(',', "")),
            Some(row["requests"].to_string()),
            "{name}"
        );
        assert_eq!(
            micro(&on_page["cost_usd"]),
            micro(&row["cost_usd"]),
            "{name}"
        );
        total += micro(&row["cost_usd"]);
    }
    assert!(total > 0);
    assert_eq!(micro(&shown["total_cost_usd"]), total);
    assert_eq!(shown["total_requests"], "6");
    assert!(
        shown["chart_bars"].as_u64().is_some_and(|n| n >= 2),
        "{shown}"
    );
    let models: Vec<&str> = shown["models"]
        .as_array()
        .expect("models")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    // Served models, and the requested one where nothing served.
    assert!(
        models.contains(&SIM_MODEL) && models.contains(&"no-such-model"),
        "{models:?}"
    );
    assert_eq!(shown["keys"].as_array().map(Vec::len), Some(2), "{shown}");
    assert_eq!(shown["sessions"][0]["name"], "sess-a");
    assert_eq!(
        shown["sessions"][0]["requests"],
        Value::Null,
        "sessions show no requests column class"
    );

    // Findings: the same (kind, subject) pairs as the report over the same month.
    let mut expected: Vec<(String, String)> = findings
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or("").into(),
                f["subject"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    let mut on_page: Vec<(String, String)> = shown["findings"]
        .as_array()
        .expect("findings on the page")
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap_or("").into(),
                f["subject"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    expected.sort();
    on_page.sort();
    assert_eq!(on_page, expected);

    // The budget: what the live counter says, with its forecast.
    let metrics = admin(admin_addr, "GET", "/metrics", None).text();
    let used: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_budget_used_usd{budget=\"search-month\"} "))
        .and_then(|v| v.parse().ok())
        .expect("the budget's gauge");
    let budget = &shown["budgets"][0];
    assert_eq!(budget["name"], "search-month");
    assert_eq!(micro(&budget["used"]), (used * 1e6).round() as i64);
    assert_eq!(budget["limit"], 5.0);
    assert!(
        budget["forecast"].as_f64().is_some_and(|f| f >= used),
        "{budget}"
    );
    assert_eq!(
        micro(&budget["used"]),
        micro(
            &teams
                .iter()
                .find(|t| t["name"] == "search")
                .expect("search")["cost_usd"]
        )
    );

    // The audit log, newest first: the two keys made above.
    let audit: Vec<&str> = shown["audit"]
        .as_array()
        .expect("audit")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        audit.iter().filter(|a| **a == "key.create").count(),
        2,
        "{audit:?}"
    );

    for name in ["login.png", "month-by-team.png", "month-by-model.png"] {
        let png = std::fs::read(shots.join(name)).expect("a screenshot");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 5_000,
            "{name}: {} bytes",
            png.len()
        );
    }
}
