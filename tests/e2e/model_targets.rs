//! A model served by several deployments (`targets:`): requests go to a target that speaks
//! their API (drawn by weight); a request that could not be sent at all goes to another
//! target. The ledger names the target that served. (Breakers, retries on statuses, fallbacks
//! and tiers: `routing.rs`.)

use crate::harness::procs::{Provider, SIM_MODEL};
use crate::harness::{assert_openai_error, chat_body, post_json, Sim, Stack};

#[test]
fn a_model_with_a_dead_first_target_is_served_by_the_next() {
    // A port nobody listens on: bind, note it, release.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let stack = Stack::custom(Sim::start(&[]), move |c| {
        c.workers = 1;
        c.providers.push(Provider {
            name: "dead".into(),
            kind: "openai".into(),
            base_url: format!("http://{dead}"),
            api_key_env: None,
        });
        c.extra_models_yaml = format!(
            "  - name: chat\n    targets:\n      - {{provider: dead, model: gone}}\n      - {{provider: sim-anthropic, model: {SIM_MODEL}}}\n      - {{provider: sim, model: {SIM_MODEL}, weight: 3}}\n"
        );
    });
    let body = chat_body("chat", "which target?", 2, false);
    // Whenever the dead target is drawn, the connect fails and nothing was sent, so another
    // target serves this very request (the Anthropic one through translation).
    for _ in 0..6 {
        let r = post_json(stack.agent.addr, "/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        let row = stack.agent.row_of(&r);
        assert!(
            matches!(row.provider.as_deref(), Some("sim" | "sim-anthropic")),
            "{row:#?}"
        );
        assert_eq!(row.served_model.as_deref(), Some(SIM_MODEL));
        assert_eq!(row.requested_model.as_deref(), Some("chat"));
    }
    let last = stack.sim.last_request();
    assert!(last["body"].as_str().is_some_and(|b| b.contains(SIM_MODEL)));
}

#[test]
fn a_model_whose_only_target_is_dead_answers_502() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let stack = Stack::custom(Sim::start(&[]), move |c| {
        c.providers.push(Provider {
            name: "dead".into(),
            kind: "openai".into(),
            base_url: format!("http://{dead}"),
            api_key_env: None,
        });
        c.extra_models_yaml = "  - name: gone\n    targets:\n      - {provider: dead}\n".into();
    });
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("gone", "x", 1, false),
    );
    assert_openai_error(&r, 502, "api_error", "upstream_unreachable");
}
