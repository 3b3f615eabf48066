//! The agent's own endpoints: `/v1/models` and `/v1/models/NAME` list the configured models,
//! `/healthz` and `/readyz` answer, and `/metrics` counters (requests, tokens by kind, duration
//! and TTFT histograms) grow by exactly what each request used.

use std::time::{Duration, Instant};

use crate::harness::{assert_openai_error, chat_body, get, post_json, prompt_tokens, Stack};

/// The value of the sample `name{labels}` (labels written exactly as the agent renders them),
/// or 0 when it is not there yet.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("numeric sample"))
}

/// Sum of every `name{...}` sample whose labels contain all of `labels`.
fn sum_matching(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[test]
fn models_health_and_readiness() {
    let stack = Stack::start();
    let models = get(stack.agent.addr, "/v1/models");
    assert_eq!(models.status, 200);
    let body = models.json();
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["smol", "claude"], "{body}");
    assert_eq!(body["data"][0]["object"], "model");
    assert_eq!(body["data"][0]["owned_by"], "sim");

    let one = get(stack.agent.addr, "/v1/models/claude");
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["id"], "claude");
    let missing = get(stack.agent.addr, "/v1/models/nope");
    assert_openai_error(&missing, 404, "invalid_request_error", "model_not_found");

    assert_eq!(get(stack.agent.addr, "/healthz").status, 200);
    let ready = get(stack.agent.addr, "/readyz");
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready", "{}", ready.text());
}

/// The ledger writer runs in the background CPU class (`SCHED_IDLE`, 5), so the threads a
/// response waits on preempt it; as root its watchdog can move it back when it falls behind,
/// so it enters the class. (`privileges.rs` holds the other case: without `CAP_SYS_NICE` it
/// stays at the normal policy.)
#[test]
fn the_ledger_writer_runs_in_the_background_cpu_class() {
    let stack = Stack::start();
    let pid = stack.agent.proc.pid();
    // SAFETY: no arguments.
    let root = unsafe { libc::geteuid() } == 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let of = |comm| crate::harness::procs::thread_policy(pid, comm);
    // The writer enters its class, then starts the sampler.
    let policy = loop {
        let p = of("tollgate-contro");
        if (p == Some(5) && of("tollgate-accura").is_some()) || Instant::now() > deadline {
            break p;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(policy, Some(if root { 5 } else { 0 }), "root: {root}");
    // Threads take their creator's class: the estimator, which settles budget holds, is
    // started in the normal one; the optional accuracy sampler goes idle with the writer.
    assert_eq!(of("tollgate-estima"), Some(0));
    assert_eq!(of("tollgate-accura"), policy);
    // And it commits: a request's row reaches the ledger.
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", "background commit", 2, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(stack.agent.row_of(&r).output_tokens, 2);
}

/// A node whose every core is busy at the normal policy leaves an idle-class writer no time;
/// the records of responses served meanwhile are still committed within the harness's wait
/// (its watchdog moves it back to the normal policy past a second behind, when it needs to).
#[test]
fn the_ledger_keeps_committing_while_every_core_is_busy() {
    let stack = Stack::start();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hogs: Vec<_> = (0..cores * 2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let ids: Vec<String> = (0..20)
        .map(|i| {
            let r = post_json(
                stack.agent.addr,
                "/v1/chat/completions",
                &chat_body("smol", &format!("busy node {i}"), 2, false),
            );
            assert_eq!(r.status, 200, "{}", r.text());
            r.request_id().to_string()
        })
        .collect();
    // Every row, committed while the hogs still run.
    for id in &ids {
        assert_eq!(stack.agent.ledger_row(id).output_tokens, 2);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in hogs {
        let _ = h.join();
    }
    let moved = stack
        .agent
        .proc
        .logs_tail()
        .contains("fell behind in the idle CPU class");
    eprintln!("the watchdog moved the writer: {moved}");
}

#[test]
fn metrics_count_requests_and_tokens() {
    let stack = Stack::start();
    let labels = r#"{model="smol",provider="sim",api="chat",status="200"}"#;
    let requests = format!("tollgate_requests_total{labels}");
    let tokens = |kind: &str| {
        format!(
            "tollgate_tokens_total{{model=\"smol\",provider=\"sim\",api=\"chat\",status=\"200\",kind=\"{kind}\"}}"
        )
    };
    let durations = format!("tollgate_request_duration_seconds_count{labels}");
    let ttft = format!("tollgate_ttft_seconds_count{labels}");

    let mut expected_requests = sample(&stack.agent.metrics(), &requests);
    let mut expected_input = sample(&stack.agent.metrics(), &tokens("input"));
    let mut expected_output = sample(&stack.agent.metrics(), &tokens("output"));
    for (i, prompt) in ["count me", "and count me too, please"]
        .into_iter()
        .enumerate()
    {
        let max_tokens = 3 + i as u64;
        let r = post_json(
            stack.agent.addr,
            "/v1/chat/completions",
            &chat_body("smol", prompt, max_tokens, i == 1),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        expected_requests += 1.0;
        expected_input += prompt_tokens(prompt) as f64;
        expected_output += max_tokens as f64;

        // Metrics are recorded when the request settles, just after the response, one series
        // after another: a scrape served by the other worker can fall between the request's
        // count and its tokens (seen once under a loaded CI run). Bounded wait for all of them.
        let deadline = Instant::now() + Duration::from_secs(5);
        let metrics = loop {
            let metrics = stack.agent.metrics();
            let settled = sample(&metrics, &requests) >= expected_requests
                && sample(&metrics, &tokens("input")) >= expected_input
                && sample(&metrics, &tokens("output")) >= expected_output
                && sample(&metrics, &durations) >= expected_requests
                && sample(&metrics, &ttft) >= expected_requests;
            if settled || Instant::now() > deadline {
                break metrics;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(sample(&metrics, &requests), expected_requests, "{metrics}");
        assert_eq!(
            sample(&metrics, &tokens("input")),
            expected_input,
            "{metrics}"
        );
        assert_eq!(
            sample(&metrics, &tokens("output")),
            expected_output,
            "{metrics}"
        );
        assert_eq!(sample(&metrics, &durations), expected_requests, "{metrics}");
        assert_eq!(sample(&metrics, &ttft), expected_requests, "{metrics}");
    }

    let before = sum_matching(
        &stack.agent.metrics(),
        "tollgate_requests_total",
        &[r#"status="404""#],
    );
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("no-such-model", "x", 1, false),
    );
    assert_eq!(r.status, 404);
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let after = sum_matching(
            &stack.agent.metrics(),
            "tollgate_requests_total",
            &[r#"status="404""#],
        );
        if after > before || Instant::now() > deadline {
            break after;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        after,
        before + 1.0,
        "rejected requests are counted by status"
    );
}
