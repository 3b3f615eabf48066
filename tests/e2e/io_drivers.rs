//! Both I/O drivers serve the same traffic: with `io.driver: epoll` and `io.driver: io_uring`
//! the agent reports the driver it runs on in `/readyz` and proxies plain, streamed and
//! pipelined requests with exact metering. Where the kernel (or a container's seccomp policy)
//! forbids io_uring, the io_uring case is skipped and says why.

use crate::harness::http::request_bytes;
use crate::harness::procs::Agent;
use crate::harness::{chat_body, get, post_json, prompt_tokens, AgentConfig, Client, Sim};

fn exercise(driver: &str) {
    let sim = Sim::start(&[]);
    let mut config = AgentConfig::for_sim(&sim);
    config.driver = driver.to_string();
    let agent = match Agent::try_start(&config) {
        Ok(agent) => agent,
        Err(e) if driver == "io_uring" => {
            eprintln!("skipped: the agent cannot start with io.driver io_uring here: {e:#}");
            return;
        }
        Err(e) => panic!("starting the agent with io.driver {driver}: {e:#}"),
    };
    let ready = get(agent.addr, "/readyz").json();
    if driver == "io_uring" && ready["io_driver"] != driver {
        eprintln!("skipped: io_uring is not available here, the agent runs on {ready}");
        return;
    }
    assert_eq!(ready["io_driver"], driver, "{ready}");

    let prompt = format!("driver {driver}");
    let plain = post_json(
        agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", &prompt, 3, false),
    );
    assert_eq!(plain.status, 200, "{}", plain.text());
    let streamed = post_json(
        agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", &prompt, 4, true),
    );
    assert_eq!(
        streamed.frames().last().map(String::as_str),
        Some("data: [DONE]\n\n")
    );

    let mut batch = Vec::new();
    for max_tokens in [1, 2] {
        let body = chat_body("smol", &prompt, max_tokens, false).to_string();
        batch.extend(request_bytes(
            "POST",
            "/v1/chat/completions",
            &[],
            body.as_bytes(),
        ));
    }
    let mut client = Client::connect(agent.addr);
    client.send(&batch).expect("pipelined requests");
    for max_tokens in [1, 2] {
        let r = client.read_response().expect("pipelined response");
        assert_eq!(r.json()["usage"]["completion_tokens"], max_tokens);
    }

    // A keep-alive connection quiet past the 1 s after which it gives its read buffer back
    // (the read in flight is cancelled) still serves its next request, also one whose head
    // arrives in two pieces across that moment.
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let body = chat_body("smol", &prompt, 2, false).to_string();
    let again = client.request("POST", "/v1/chat/completions", &[], body.as_bytes());
    assert_eq!(
        again.json()["usage"]["completion_tokens"],
        2,
        "{}",
        again.text()
    );
    let bytes = request_bytes("POST", "/v1/chat/completions", &[], body.as_bytes());
    std::thread::sleep(std::time::Duration::from_millis(900));
    client.send(&bytes[..10]).expect("first piece");
    std::thread::sleep(std::time::Duration::from_millis(300));
    client.send(&bytes[10..]).expect("second piece");
    let split = client
        .read_response()
        .expect("response to the split request");
    assert_eq!(
        split.json()["usage"]["completion_tokens"],
        2,
        "{}",
        split.text()
    );

    for (r, output) in [(&plain, 3), (&streamed, 4)] {
        let row = agent.row_of(r);
        assert_eq!(
            (row.input_tokens, row.output_tokens),
            (prompt_tokens(&prompt), output)
        );
    }
}

#[test]
fn epoll() {
    exercise("epoll");
}

#[test]
fn io_uring() {
    exercise("io_uring");
}
