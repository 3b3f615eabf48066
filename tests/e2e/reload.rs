//! Hot reload: SIGHUP, a change of the file (watched) and `POST /admin/config/reload` apply a new
//! configuration without a restart. New requests see it at once, a stream that started before
//! finishes on the old target, an invalid file is refused with every problem (the running
//! configuration keeps serving), every applied file becomes a numbered version, and
//! `tollgate config rollback` restores an earlier one byte for byte. Under load, reloading every
//! 50 ms fails no request.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::procs::{run_tollgate, ADMIN_TOKEN};
use crate::harness::{chat_body, get, post_json, Client, Sim, Stack};

const CLI_TIMEOUT: Duration = Duration::from_secs(30);

fn sighup(stack: &Stack) {
    // SAFETY: kill(2) on the agent's pid: our child, alive.
    unsafe { libc::kill(stack.agent.proc.pid() as libc::pid_t, libc::SIGHUP) };
}

/// Waits (bounded) until `/metrics` shows `generation`.
fn wait_generation(stack: &Stack, generation: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let want = format!("tollgate_config_generation {generation}\n");
    loop {
        let m = stack.agent.metrics();
        if m.contains(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "generation {generation} never served:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn model_ids(stack: &Stack) -> Vec<String> {
    get(stack.agent.addr, "/v1/models").json()["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn config_text(stack: &Stack) -> String {
    std::fs::read_to_string(&stack.agent.config_path).expect("reading the agent config")
}

/// Replaces the file's content the way editors and ConfigMaps do: a new file renamed over it.
fn write_config(stack: &Stack, text: &str) {
    let tmp = stack.agent.config_path.with_extension("new");
    std::fs::write(&tmp, text).expect("writing the new config");
    std::fs::rename(&tmp, &stack.agent.config_path).expect("replacing the config");
}

#[test]
fn sighup_moves_new_requests_while_a_stream_finishes_on_the_old_target() {
    let old = Sim::start_paced(&["--itl-base-ms", "10"]);
    let new = Sim::start(&[]);
    let mut stack = Stack::custom(old, |_| {});
    // A stream that starts on the old target and outlives the reload.
    let (mut streaming, stream_id) = Client::start_stream(
        stack.agent.addr,
        &chat_body("smol", "started before the reload", 60, true),
    );

    let text = config_text(&stack).replace(&stack.sim.url(), &new.url());
    write_config(&stack, &text);
    sighup(&stack);
    wait_generation(&stack, 2);
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", "after the reload", 2, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        new.last_request()["body"]
            .as_str()
            .is_some_and(|b| b.contains("after the reload")),
        "the new request did not reach the new target"
    );
    let rest = String::from_utf8_lossy(&streaming.read_body().expect("the rest of the stream"))
        .to_string();
    assert!(rest.contains("[DONE]"), "the old stream was cut: {rest}");
    let row = stack.agent.ledger_row(&stream_id);
    assert_eq!((row.status, row.outcome.as_str()), (200, "ok"));
    assert!(stack.sim.last_request()["body"]
        .as_str()
        .is_some_and(|b| b.contains("started before")));
    let m = stack.agent.metrics();
    assert!(m.contains("tollgate_config_reloads_total 1"), "{m}");
    // Keep the old simulator alive until here.
    drop(new);
    let _ = stack.agent.stop();
}

#[test]
fn an_invalid_file_is_refused_and_the_old_config_keeps_serving() {
    let stack = Stack::custom(Sim::start(&[]), |c| c.admin = Some(true));
    let admin = stack.agent.admin_addr().expect("admin listener");
    let good = config_text(&stack);
    write_config(
        &stack,
        &good
            .replace("    provider: sim\n", "    provider: nowhere\n")
            .replace("max_headers: 100", "max_headers: 0"),
    );
    let r = Client::connect(admin).request(
        "POST",
        "/admin/config/reload",
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        b"",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "config_rejected", "{v}");
    let problems = v["problems"].as_array().expect("problems");
    assert!(problems.len() >= 2, "every problem is reported: {v}");
    assert!(
        problems.iter().any(
            |p| p["path"].as_str().is_some_and(|p| p.contains("provider"))
                && p["line"].as_u64().is_some()
        ),
        "{v}"
    );
    // SIGHUP with the same file: refused too. The old configuration serves throughout.
    sighup(&stack);
    std::thread::sleep(Duration::from_millis(300));
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", "still served", 2, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let m = stack.agent.metrics();
    assert!(m.contains("tollgate_config_generation 1\n"), "{m}");
    let failures: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_config_reload_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(failures >= 2, "{m}");
}

#[test]
fn the_file_watch_applies_an_edit_and_history_and_rollback_work() {
    let stack = Stack::custom(Sim::start(&[]), |c| c.admin = Some(true));
    let v1 = config_text(&stack);
    assert!(model_ids(&stack).contains(&"smol".to_string()));
    // An edit: one more model, and a restart-only change (workers), which is reported, not applied.
    let v2 = v1
        .replace(
            "models:\n",
            "models:\n  - name: smol-alias\n    provider: sim\n    model: smollm2\n",
        )
        .replace("workers: 2", "workers: 3");
    write_config(&stack, &v2);
    wait_generation(&stack, 2);
    assert!(model_ids(&stack).contains(&"smol-alias".to_string()));
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol-alias", "new name", 2, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        get(stack.agent.addr, "/readyz").json()["workers"],
        2,
        "workers needs a restart"
    );

    let cfg = stack.agent.config_path.to_str().expect("utf-8").to_string();
    let out = run_tollgate(&["config", "history", "--config", &cfg], CLI_TIMEOUT);
    assert!(out.status.success(), "{out:#?}");
    assert!(
        out.stdout.contains("start") && out.stdout.contains("file-watch"),
        "{}",
        out.stdout
    );
    let out = run_tollgate(&["config", "diff", "1", "2", "--config", &cfg], CLI_TIMEOUT);
    assert!(
        out.stdout.contains("+  - name: smol-alias") && out.stdout.contains("-workers: 2"),
        "{}",
        out.stdout
    );

    // Roll back to version 1: the file holds it byte for byte, and the agent applies it.
    let out = run_tollgate(&["config", "rollback", "--config", &cfg], CLI_TIMEOUT);
    assert!(out.status.success(), "{out:#?}");
    assert!(
        out.stdout
            .contains("applied by the running agent as version 3"),
        "{}",
        out.stdout
    );
    assert_eq!(
        config_text(&stack),
        v1,
        "rollback restores the file byte for byte"
    );
    wait_generation(&stack, 3);
    assert!(!model_ids(&stack).contains(&"smol-alias".to_string()));
    // The admin API lists the same history and serves each version's file.
    let admin = stack.agent.admin_addr().expect("admin");
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let h = Client::connect(admin).request(
        "GET",
        "/admin/config/history",
        &[("authorization", &auth)],
        b"",
    );
    assert_eq!(
        h.json()["versions"].as_array().map(Vec::len),
        Some(3),
        "{}",
        h.text()
    );
    let v = Client::connect(admin).request(
        "GET",
        "/admin/config/versions/2",
        &[("authorization", &auth)],
        b"",
    );
    assert_eq!(v.text(), v2);
}

#[test]
fn reloading_every_50_ms_under_load_fails_no_request() {
    let stack = Stack::custom(Sim::start(&[]), |_| {});
    let a = config_text(&stack);
    let b = a.replace(
        "models:\n",
        "models:\n  - name: other\n    provider: sim\n    model: smollm2\n",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let addr = stack.agent.addr;
    let clients: Vec<_> = (0..4)
        .map(|t| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body =
                        chat_body("smol", &format!("load {t} {i}"), 2, i % 2 == 0).to_string();
                    let r = client.request("POST", "/v1/chat/completions", &[], body.as_bytes());
                    if r.status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for i in 0..40 {
        write_config(&stack, if i % 2 == 0 { &b } else { &a });
        sighup(&stack);
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let m = stack.agent.metrics();
    let reloads: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_config_reloads_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(reloads >= 20, "only {reloads} reloads applied");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
}
