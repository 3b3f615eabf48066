//! A model served by several deployments (`targets:`): requests go to the first target that
//! speaks their API and whose provider is up; a provider that refuses connections is avoided
//! (per worker, for a few seconds) while the model has another target. The ledger names the
//! target that served.

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
    // The first target refuses: this request fails (routing retries are the routing issue's),
    // and the provider is marked down.
    let r = post_json(stack.agent.addr, "/v1/chat/completions", &body);
    assert_openai_error(&r, 502, "api_error", "upstream_unreachable");
    // Now the next target that speaks OpenAI serves (the Anthropic one is skipped).
    for _ in 0..3 {
        let r = post_json(stack.agent.addr, "/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        let row = stack.agent.row_of(&r);
        assert_eq!(row.provider.as_deref(), Some("sim"), "{row:#?}");
        assert_eq!(row.served_model.as_deref(), Some(SIM_MODEL));
        assert_eq!(row.requested_model.as_deref(), Some("chat"));
    }
    let last = stack.sim.last_request();
    assert!(last["body"].as_str().is_some_and(|b| b.contains(SIM_MODEL)));
}
