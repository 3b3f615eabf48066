//! The exact response cache end to end: a repeated deterministic request is answered without
//! reaching the provider, byte for byte as the first time (plain and streamed), recorded with
//! zero cost and what it saved; tenants never share entries; non-deterministic requests and
//! `x-tollgate-cache: no-store` bypass it, `refresh` replaces the entry.

use serde_json::{json, Value};

use crate::governance::{create_key, governed, post_with_key};
use crate::harness::http::{chat_stream_text, frame_data};
use crate::harness::{get, post_raw, Response, Sim, Stack};

const CACHE: &str = "cache:\n  exact: {enabled: true, ttl_s: 600, max_mb: 8, scope: key}\n\
    prices:\n  smol: {input: 2.0, output: 8.0}\n";

fn body(prompt: &str, temperature: f64, stream: bool) -> Value {
    json!({
        "model": "smol",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 12,
        "temperature": temperature,
        "stream": stream,
    })
}

/// Requests the simulator has answered (its own counter, read from `/metrics`).
fn sim_requests(stack: &Stack) -> u64 {
    let text = get(stack.sim.addr, "/metrics").text();
    text.lines()
        .filter(|l| l.starts_with("vllm:request_success_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn post(stack: &Stack, key: &str, extra: &[(&str, &str)], b: &Value) -> Response {
    post_with_key(stack.agent.addr, "/v1/chat/completions", key, extra, b)
}

#[test]
fn a_repeat_is_served_from_cache_with_zero_cost_and_its_saving_recorded() {
    let stack = governed(Sim::start(&[]), CACHE);
    let (key, _) = create_key(&stack, json!({"team": "a"}));
    let b = body("what is a token?", 0.0, false);

    let first = post(&stack, &key, &[], &b);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-tollgate-cache"), Some("miss"));
    let served = sim_requests(&stack);
    assert!(served >= 1, "the simulator's request counter was not found");

    let second = post(&stack, &key, &[], &b);
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(second.header("x-tollgate-cache"), Some("hit"));
    assert_eq!(
        second.body, first.body,
        "a hit replays the first answer byte for byte"
    );
    assert_eq!(sim_requests(&stack), served, "the hit reached the provider");

    let r1 = stack.agent.row_of(&first);
    let r2 = stack.agent.row_of(&second);
    assert_eq!(r1.cache.as_deref(), Some("miss"));
    assert!(r1.cost_micro_usd > 0, "{r1:#?}");
    assert_eq!(r2.cache.as_deref(), Some("exact"));
    assert_eq!(
        (r2.input_tokens, r2.output_tokens, r2.cost_micro_usd),
        (0, 0, 0)
    );
    assert_eq!(r2.saved_micro_usd, r1.cost_micro_usd, "{r2:#?}");
    assert_eq!(r2.team.as_deref(), Some("a"));
    let m = stack.agent.metrics();
    assert!(m.contains("tollgate_cache_hits_total 1"), "{m}");
    assert!(
        m.contains(&format!(
            "tollgate_cache_saved_tokens_total {}",
            r1.input_tokens + r1.output_tokens
        )),
        "{m}"
    );
}

#[test]
fn keys_never_share_entries_and_bypasses_are_honoured() {
    let stack = governed(Sim::start(&[]), CACHE);
    let (alice, _) = create_key(&stack, json!({"team": "a"}));
    let (bob, _) = create_key(&stack, json!({"team": "a"}));
    let b = body("isolation please", 0.0, false);
    assert_eq!(
        post(&stack, &alice, &[], &b).header("x-tollgate-cache"),
        Some("miss")
    );
    assert_eq!(
        post(&stack, &bob, &[], &b).header("x-tollgate-cache"),
        Some("miss")
    );
    assert_eq!(
        post(&stack, &alice, &[], &b).header("x-tollgate-cache"),
        Some("hit")
    );

    // Not deterministic: never cached, no header.
    let warm = body("isolation please", 0.7, false);
    for _ in 0..2 {
        let r = post(&stack, &alice, &[], &warm);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-tollgate-cache"), None);
    }
    // A seed makes it cacheable.
    let mut seeded = warm.clone();
    seeded["seed"] = 7.into();
    assert_eq!(
        post(&stack, &alice, &[], &seeded).header("x-tollgate-cache"),
        Some("miss")
    );
    assert_eq!(
        post(&stack, &alice, &[], &seeded).header("x-tollgate-cache"),
        Some("hit")
    );

    // no-store: not looked up, and the provider is asked.
    let served = sim_requests(&stack);
    let r = post(&stack, &alice, &[("x-tollgate-cache", "no-store")], &b);
    assert_eq!((r.status, r.header("x-tollgate-cache")), (200, None));
    assert_eq!(sim_requests(&stack), served + 1);
    // refresh: asked again and stored again (a miss to the client), then hits.
    let r = post(&stack, &alice, &[("x-tollgate-cache", "refresh")], &b);
    assert_eq!(r.header("x-tollgate-cache"), Some("miss"));
    assert_eq!(stack.agent.row_of(&r).cache.as_deref(), Some("refresh"));
    assert_eq!(
        post(&stack, &alice, &[], &b).header("x-tollgate-cache"),
        Some("hit")
    );
    // A bad directive is the client's error.
    let r = post(&stack, &alice, &[("x-tollgate-cache", "forever")], &b);
    crate::harness::assert_openai_error(&r, 400, "invalid_request_error", "invalid_request");
}

#[test]
fn a_streamed_request_is_replayed_as_a_well_formed_stream() {
    let stack = Stack::custom(Sim::start(&[]), |c| {
        c.governance_yaml = format!("auth: {{ mode: open }}\n{CACHE}");
    });
    let b = body("stream me twice", 0.0, true);
    let send = || {
        post_raw(
            stack.agent.addr,
            "/v1/chat/completions",
            &[],
            b.to_string().as_bytes(),
        )
    };
    let first = send();
    assert_eq!(first.header("x-tollgate-cache"), Some("miss"));
    let second = send();
    assert_eq!(second.header("x-tollgate-cache"), Some("hit"));
    assert_eq!(second.header("content-type"), Some("text/event-stream"));
    let text = |r: &Response| chat_stream_text(&r.frames());
    assert!(!text(&first).is_empty());
    assert_eq!(text(&second), text(&first));
    let frames = second.frames();
    assert_eq!(frames.last().map(String::as_str), Some("data: [DONE]\n\n"));
    // The usage chunk Tollgate asked for is hidden in the replay too.
    assert!(frames
        .iter()
        .filter_map(|f| frame_data(f))
        .all(|v| v.get("usage").is_none_or(Value::is_null)));
}

/// The semantic cache on the simulator's lexical embeddings (`embed`, served by the same
/// simulator: a local replica).
fn semantic_stack(timeout_ms: u64) -> Stack {
    semantic_stack_at(0.8, timeout_ms)
}

fn semantic_stack_at(threshold: f64, timeout_ms: u64) -> Stack {
    semantic_stack_with(threshold, timeout_ms, "", "")
}

/// `exact_extra` goes into `cache.exact` (`, spill: {...}`), `more` after the cache block.
fn semantic_stack_with(threshold: f64, timeout_ms: u64, exact_extra: &str, more: &str) -> Stack {
    Stack::custom(Sim::start(&["--model", "embed"]), |c| {
        c.admin = Some(true);
        c.extra_models_yaml = "  - {name: embed, provider: sim, model: embed}\n".into();
        c.governance_yaml = format!(
            "auth: {{ mode: keys }}\n\
             cache:\n  exact: {{enabled: true, ttl_s: 600, max_mb: 8, scope: key{exact_extra}}}\n  \
             semantic: {{enabled: true, embedding_model: embed, threshold: {threshold}, timeout_ms: {timeout_ms}}}\n\
             prices:\n  smol: {{input: 2.0, output: 8.0}}\n{more}"
        );
    })
}

#[test]
fn a_close_question_is_answered_by_the_semantic_cache_within_its_scope() {
    let stack = semantic_stack(2000);
    let (key, _) = create_key(&stack, json!({"team": "a"}));
    let (other, _) = create_key(&stack, json!({"team": "b"}));

    let first = post(
        &stack,
        &key,
        &[],
        &body("How do I reset my password?", 0.0, false),
    );
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-tollgate-cache"), Some("miss"));
    // The embedding is a call of its own, billed to the caller.
    let embed_row = stack
        .agent
        .ledger_row(&format!("{}.embed", first.request_id()));
    assert_eq!(embed_row.route.as_deref(), Some("cache:semantic"));
    assert_eq!(embed_row.served_model.as_deref(), Some("embed"));
    assert!(embed_row.input_tokens > 0);

    let close = post(
        &stack,
        &key,
        &[],
        &body("how can I reset the password", 0.0, false),
    );
    assert_eq!(close.status, 200, "{}", close.text());
    assert_eq!(
        close.header("x-tollgate-cache"),
        Some("hit"),
        "{:?}",
        close.headers
    );
    let sim: f64 = close
        .header("x-tollgate-cache-similarity")
        .expect("similarity header")
        .parse()
        .unwrap();
    assert!((0.8..=1.0).contains(&sim), "{sim}");
    assert_eq!(close.body, first.body);
    let row = stack.agent.row_of(&close);
    assert_eq!(row.cache.as_deref(), Some("semantic"));
    assert_eq!((row.output_tokens, row.cost_micro_usd), (0, 0));
    assert!(row.saved_micro_usd > 0);

    // A different question, and the same question from another tenant, go to the provider.
    let far = post(
        &stack,
        &key,
        &[],
        &body("Plan a trip to Naples", 0.0, false),
    );
    assert_eq!(far.header("x-tollgate-cache"), Some("miss"));
    let tenant = post(
        &stack,
        &other,
        &[],
        &body("how can I reset the password", 0.0, false),
    );
    assert_eq!(tenant.header("x-tollgate-cache"), Some("miss"));
    let m = stack.agent.metrics();
    assert!(m.contains("tollgate_cache_semantic_hits_total 1"), "{m}");
}

/// The value of an unlabelled series in a `/metrics` text.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Polls the agent's `/metrics` until `name` reaches `want` (the spill's writer and start-up
/// index run on their own thread); panics with the last text after 10 s.
fn wait_metric(stack: &Stack, name: &str, want: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let m = stack.agent.metrics();
        if metric(&m, name) == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never reached {want}:\n{m}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn the_spill_keeps_both_caches_warm_across_a_crash() {
    let stack = &mut semantic_stack_with(0.8, 2000, ", spill: {max_mb: 64}", "");
    let (key, _) = create_key(stack, json!({"team": "a"}));
    let question = body("How do I reset my password?", 0.0, false);
    let first = post(stack, &key, &[], &question);
    assert_eq!(first.header("x-tollgate-cache"), Some("miss"));
    wait_metric(stack, "tollgate_cache_spill_writes_total", 1);
    let files: Vec<_> = walk(&stack.agent.data_dir.join("cache/exact"));
    assert_eq!(files.len(), 1, "{files:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "cached answers are the agent's alone");

    // SIGKILL: nothing is flushed at exit; what was written is all there is.
    stack.agent.crash_and_restart(1);
    wait_metric(stack, "tollgate_cache_spill_indexed", 1);
    assert_eq!(
        metric(&stack.agent.metrics(), "tollgate_cache_spill_entries"),
        Some(1)
    );
    let served = sim_requests(stack);
    let again = post(stack, &key, &[], &question);
    assert_eq!(
        again.header("x-tollgate-cache"),
        Some("hit"),
        "{}",
        again.text()
    );
    assert_eq!(again.body, first.body, "the disk replays the first answer");
    assert_eq!(stack.agent.row_of(&again).cache.as_deref(), Some("exact"));
    // The semantic index came back with it: a paraphrase is answered without the provider
    // (its embedding is the only call made).
    let close = post(
        stack,
        &key,
        &[],
        &body("how can I reset the password", 0.0, false),
    );
    assert_eq!(
        close.header("x-tollgate-cache"),
        Some("hit"),
        "{:?}",
        close.headers
    );
    assert_eq!(close.body, first.body);
    assert_eq!(
        sim_requests(stack),
        served + 1,
        "only the embedding reached the simulator"
    );
    let m = stack.agent.metrics();
    assert_eq!(
        metric(&m, "tollgate_cache_spill_hits_total"),
        Some(1),
        "{m}"
    );
    assert_eq!(
        metric(&m, "tollgate_cache_spill_errors_total"),
        Some(0),
        "{m}"
    );

    // A damaged file is never served: it fails its checksum and the request goes on as a miss.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&files[0], bytes).unwrap();
    stack.agent.restart(2);
    wait_metric(stack, "tollgate_cache_spill_indexed", 1);
    let after = post(stack, &key, &[], &question);
    assert_eq!(after.header("x-tollgate-cache"), Some("miss"));
    assert_eq!(after.status, 200);
    // Counted once, by the writer as it removes the file, however many lookups read it first
    // (the exact one, and the semantic one when the writer is behind).
    wait_metric(stack, "tollgate_cache_spill_errors_total", 1);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn embedding_calls_are_charged_to_the_callers_budget() {
    let stack = semantic_stack_with(
        0.8,
        2000,
        "",
        "budgets:\n  - {name: team-a, scope: {team: a}, tokens: 100000, window: day}\n",
    );
    let (key, _) = create_key(&stack, json!({"team": "a"}));
    let first = post(
        &stack,
        &key,
        &[],
        &body("How do I reset my password?", 0.0, false),
    );
    let close = post(
        &stack,
        &key,
        &[],
        &body("how can I reset the password", 0.0, false),
    );
    assert_eq!(close.header("x-tollgate-cache"), Some("hit"));
    let tokens = |id: &str| {
        let r = stack.agent.ledger_row(id);
        r.input_tokens + r.output_tokens
    };
    let embeds = tokens(&format!("{}.embed", first.request_id()))
        + tokens(&format!("{}.embed", close.request_id()));
    assert!(embeds > 0);
    let spent = tokens(first.request_id()) + tokens(close.request_id()) + embeds;
    let m = stack.agent.metrics();
    let used = m
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_budget_used_tokens{budget=\"team-a\"} "))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .expect("the budget gauge");
    assert_eq!(
        used, spent,
        "the budget counts the request and its embeddings:\n{m}"
    );
}

#[test]
fn a_slow_embedding_never_delays_the_request_beyond_its_bound() {
    // The simulator delays every request by 400 ms, the embedding's bound is 50 ms: the
    // request is a miss, answered after the simulator's own delay, not the embedding's.
    let stack = Stack::custom(
        Sim::start(&["--model", "embed", "--delay-ms", "400"]),
        |c| {
            c.admin = Some(true);
            c.extra_models_yaml = "  - {name: embed, provider: sim, model: embed}\n".into();
            c.governance_yaml = "auth: { mode: keys }\n\
             cache:\n  exact: {enabled: true, ttl_s: 600, max_mb: 8, scope: key}\n  \
             semantic: {enabled: true, embedding_model: embed, timeout_ms: 50}\n"
                .into();
        },
    );
    let (key, _) = create_key(&stack, json!({}));
    let r = post(
        &stack,
        &key,
        &[],
        &body("How do I reset my password?", 0.0, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-tollgate-cache"), Some("miss"));
    let m = stack.agent.metrics();
    assert!(
        m.contains("tollgate_cache_embedding_failures_total 1"),
        "{m}"
    );
    // The embedding was abandoned at its bound: it has no row (nothing answered).
    let rows = crate::harness::ledger::all(&stack.agent.data_dir);
    assert!(
        rows.iter().all(|row| !row.id.ends_with(".embed")),
        "{rows:#?}"
    );
    assert_eq!(stack.agent.row_of(&r).cache.as_deref(), Some("miss"));
}

/// The threshold trade-off on a paraphrase set (`tests/fixtures/semantic_paraphrases.json`),
/// through the whole request path: each group's question is answered and stored, then its
/// paraphrases (a hit with the group's answer is right) and near misses (any hit is a wrong
/// answer) are asked. Writes the table to `target/semantic-paraphrases.md`.
#[test]
fn the_threshold_trades_hit_rate_against_wrong_answers() {
    let set: Value = serde_json::from_str(include_str!("../fixtures/semantic_paraphrases.json"))
        .expect("paraphrase set");
    let groups = set["groups"].as_array().unwrap();
    let mut table = String::from(
        "| threshold | paraphrases answered right | wrong answers (of all lookups) | near misses served |\n|---|---|---|---|\n",
    );
    let mut rates = Vec::new();
    for threshold in [0.6, 0.7, 0.8, 0.9, 0.95] {
        let stack = semantic_stack_at(threshold, 5000);
        let (key, _) = create_key(&stack, json!({}));
        let ask = |q: &str| post(&stack, &key, &[], &body(q, 0.0, false));
        // What each answer served is: the group it was first given to.
        let mut answers: Vec<(Vec<u8>, usize)> = Vec::new();
        // Each group's question is answered fresh and stored (`refresh`: not looked up).
        for (g, group) in groups.iter().enumerate() {
            let b = body(group["q"].as_str().unwrap(), 0.0, false);
            let r = post(&stack, &key, &[("x-tollgate-cache", "refresh")], &b);
            assert_eq!(r.header("x-tollgate-cache"), Some("miss"));
            answers.push((r.body.clone(), g));
        }
        let (mut same, mut right, mut wrong, mut near, mut near_hit) = (0, 0, 0, 0, 0);
        for (g, group) in groups.iter().enumerate() {
            for q in group["same"].as_array().unwrap() {
                same += 1;
                let r = ask(q.as_str().unwrap());
                assert_eq!(r.status, 200);
                if r.header("x-tollgate-cache") == Some("hit") {
                    match answers.iter().find(|(b, _)| *b == r.body) {
                        Some((_, owner)) if *owner == g => right += 1,
                        _ => wrong += 1,
                    }
                } else {
                    answers.push((r.body.clone(), g));
                }
            }
            for q in group["different"].as_array().unwrap() {
                near += 1;
                let r = ask(q.as_str().unwrap());
                if r.header("x-tollgate-cache") == Some("hit") {
                    wrong += 1;
                    near_hit += 1;
                } else {
                    // Its own answer, belonging to no group.
                    answers.push((r.body.clone(), usize::MAX));
                }
            }
        }
        let pct = |a: i32, b: i32| 100.0 * f64::from(a) / f64::from(b);
        table.push_str(&format!(
            "| {threshold} | {right}/{same} ({:.0} %) | {wrong}/{} ({:.1} %) | {near_hit}/{near} |\n",
            pct(right, same),
            same + near,
            pct(wrong, same + near),
        ));
        rates.push((pct(right, same), pct(wrong, same + near)));
    }
    println!("{table}");
    let _ = std::fs::write(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/semantic-paraphrases.md"
        ),
        &table,
    );
    // A higher threshold never answers more, nor more wrongly; the loosest one answers some
    // paraphrases, and the strictest answers fewer wrongly than the loosest.
    for w in rates.windows(2) {
        assert!(w[1].0 <= w[0].0 && w[1].1 <= w[0].1, "{table}");
    }
    assert!(rates[0].0 > 0.0, "{table}");
    assert!(rates[4].1 < rates[0].1, "{table}");
}
