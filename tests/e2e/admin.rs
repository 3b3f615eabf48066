//! The admin listener: a port of its own for operators, behind a bearer token (missing, wrong
//! and right token), serving `/metrics` and `/readyz`; the client port stops serving `/metrics`
//! when `metrics_on_client_port` is off, and keeps proxying.

use crate::harness::procs::ADMIN_TOKEN;
use crate::harness::{assert_openai_error, chat_body, get, post_json, Client, Sim, Stack};

fn admin_get(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> crate::harness::Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    Client::connect(addr).request("GET", path, &headers, b"")
}

#[test]
fn the_admin_port_needs_the_token() {
    let stack = Stack::custom(Sim::start(&[]), |c| c.admin = Some(false));
    let admin = stack
        .agent
        .admin_addr()
        .expect("the agent announces its admin listener");
    assert_ne!(admin, stack.agent.addr);
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", "count me", 2, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    for token in [
        None,
        Some("wrong-token-of-some-length"),
        Some(&ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]),
    ] {
        let r = admin_get(admin, "/metrics", token);
        assert_openai_error(&r, 401, "invalid_request_error", "invalid_admin_token");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert!(!r.text().contains(ADMIN_TOKEN), "the token is never echoed");
    }
    // The request is counted when it settles, just after its last byte: wait (bounded) for it.
    let mut r = admin_get(admin, "/metrics", Some(ADMIN_TOKEN));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !r.text().contains("tollgate_requests_total{model=\"smol\"")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
        r = admin_get(admin, "/metrics", Some(ADMIN_TOKEN));
    }
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("tollgate_requests_total{model=\"smol\""),
        "{}",
        r.text()
    );
    let r = admin_get(admin, "/readyz", Some(ADMIN_TOKEN));
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("ready")),
        "{}",
        r.text()
    );
    // Probes (kubelet cannot send a Secret's token) get the status without the details.
    let r = admin_get(admin, "/readyz", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"status": "ready"}));
    let r = admin_get(admin, "/healthz", None);
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let r = admin_get(admin, "/readyz/x", None);
    assert_openai_error(&r, 401, "invalid_request_error", "invalid_admin_token");
    let r = admin_get(admin, "/nope", Some(ADMIN_TOKEN));
    assert_openai_error(&r, 404, "invalid_request_error", "not_found");

    // The client port no longer serves /metrics; its other local endpoints stay.
    let r = get(stack.agent.addr, "/metrics");
    assert_openai_error(&r, 404, "invalid_request_error", "not_found");
    assert_eq!(get(stack.agent.addr, "/readyz").status, 200);
    // The token is not in the agent's logs.
    assert!(!stack.agent.proc.logs_tail().contains(ADMIN_TOKEN));
}
