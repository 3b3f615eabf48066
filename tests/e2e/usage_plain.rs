//! Every POST endpoint without streaming: the client gets the simulator's answer, and the ledger
//! row holds exactly the usage the simulator reported (`ceil(bytes/4)` prompt tokens, `max_tokens`
//! completion tokens), with the requested model, served model and provider.

use serde_json::json;

use crate::harness::{
    assert_ok_row, chat_body, messages_body, post_json, prompt_tokens, Stack, Tokens,
};

#[test]
fn chat_completions() {
    let stack = Stack::start();
    let prompt = "Say hello to the end-to-end tests.";
    let r = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", prompt, 7, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .expect("choices[0].message.content");
    assert!(!content.is_empty(), "empty completion: {body}");
    let reported = Tokens::from_openai(&body["usage"]);
    let expected = Tokens {
        input: prompt_tokens(prompt),
        output: 7,
        ..Tokens::default()
    };
    assert_eq!(reported, expected, "simulator usage: {body}");
    let row = stack.agent.row_of(&r);
    assert_ok_row(&row, "chat", "smol", "sim");
    assert_eq!(row.tokens(), reported);
    assert!(!row.estimated);
}

#[test]
fn completions() {
    let stack = Stack::start();
    let prompt = "Once upon a time, in a gateway";
    let r = post_json(
        stack.agent.addr,
        "/v1/completions",
        &json!({"model": "smol", "prompt": prompt, "max_tokens": 5}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert!(!body["choices"][0]["text"]
        .as_str()
        .expect("choices[0].text")
        .is_empty());
    let reported = Tokens::from_openai(&body["usage"]);
    assert_eq!(
        reported,
        Tokens {
            input: prompt_tokens(prompt),
            output: 5,
            ..Tokens::default()
        }
    );
    let row = stack.agent.row_of(&r);
    assert_ok_row(&row, "completions", "smol", "sim");
    assert_eq!(row.tokens(), reported);
}

#[test]
fn embeddings() {
    let stack = Stack::start();
    let inputs = [
        "first input to embed",
        "second, somewhat longer, input to embed",
    ];
    let r = post_json(
        stack.agent.addr,
        "/v1/embeddings",
        &json!({"model": "smol", "input": inputs}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2), "{body}");
    let reported = Tokens::from_embeddings(&body["usage"]);
    assert_eq!(
        reported.input,
        inputs.iter().map(|i| prompt_tokens(i)).sum::<i64>()
    );
    let row = stack.agent.row_of(&r);
    assert_ok_row(&row, "embeddings", "smol", "sim");
    assert_eq!(row.tokens(), reported);
}

#[test]
fn responses() {
    let stack = Stack::start();
    let input = "Summarise the gateway's job in one line.";
    let r = post_json(
        stack.agent.addr,
        "/v1/responses",
        &json!({"model": "smol", "input": input, "max_output_tokens": 6}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["status"], "completed", "{body}");
    let text = body["output"][0]["content"][0]["text"]
        .as_str()
        .expect("output[0].content[0].text");
    assert!(!text.is_empty());
    let reported = Tokens::from_responses(&body["usage"]);
    assert_eq!(
        reported,
        Tokens {
            input: prompt_tokens(input),
            output: 6,
            ..Tokens::default()
        }
    );
    let row = stack.agent.row_of(&r);
    assert_ok_row(&row, "responses", "smol", "sim");
    assert_eq!(row.tokens(), reported);
}

#[test]
fn anthropic_messages() {
    let stack = Stack::start();
    let (system, prompt) = ("You are terse.", "Name one colour.");
    let r = post_json(
        stack.agent.addr,
        "/v1/messages",
        &messages_body(system, prompt, 4, false),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["type"], "message", "{body}");
    assert!(!body["content"][0]["text"]
        .as_str()
        .expect("content[0].text")
        .is_empty());
    let reported = Tokens::from_anthropic(&body["usage"]);
    assert_eq!(reported.input, prompt_tokens(&format!("{system}{prompt}")));
    assert_eq!(reported.output, 4);
    let row = stack.agent.row_of(&r);
    assert_ok_row(&row, "messages", "claude", "sim-anthropic");
    assert_eq!(row.tokens(), reported);
}

/// The estimator is measured against the provider's own counts: with every request sampled
/// (`ledger.accuracy_sample_every: 1`), each plain and streamed request is estimated as well,
/// its pair stored, counted in `/metrics`, and reported by `tollgate report accuracy`.
#[test]
fn sampled_requests_measure_the_estimator_against_provider_usage() {
    let stack = crate::harness::Stack::custom(crate::harness::Sim::start(&[]), |c| {
        c.extra_ledger = ", accuracy_sample_every: 1".into();
    });
    let mut ids = Vec::new();
    for stream in [false, true, false] {
        let body =
            crate::harness::chat_body("smol", "count these tokens for me, please", 16, stream);
        let r = crate::harness::post_json(stack.agent.addr, "/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        let row = stack.agent.row_of(&r);
        assert!(
            !row.estimated,
            "the provider's usage is what is billed: {row:?}"
        );
        ids.push(row);
    }
    let data_dir = stack.agent.data_dir.to_string_lossy().into_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let report = loop {
        let out = crate::harness::procs::run_tollgate(
            &[
                "report",
                "accuracy",
                "--data-dir",
                &data_dir,
                "--format",
                "json",
            ],
            std::time::Duration::from_secs(10),
        );
        assert!(out.status.success(), "{out:#?}");
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
        if v[0]["samples"] == 3 || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(report[0]["samples"], 3, "{report}");
    // The simulator counts 4 prompt bytes per token and one token per output word; the
    // estimator uses o200k: both errors are measured, and finite.
    for k in ["input_error_pct", "output_error_pct"] {
        let e = report[0][k].as_f64().unwrap_or(f64::NAN);
        assert!(e.is_finite() && e >= 0.0, "{k}: {report}");
    }
    let m = stack.agent.metrics();
    let samples: u64 = m
        .lines()
        .filter(|l| l.starts_with("tollgate_estimate_samples_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(samples, 3, "{m}");
    eprintln!("estimator against the simulator: {report}");
}

/// The model version the provider reports (`model`, and `system_fingerprint` when sent) and the
/// prompt's bytes are recorded, plain and streamed, and feed the tokens-per-byte gauge that
/// tokenizer drift is watched on.
#[test]
fn the_reported_model_version_and_prompt_bytes_are_recorded() {
    let stack = crate::harness::Stack::start();
    for stream in [false, true] {
        let body = crate::harness::chat_body("smol", "how many tokens per byte?", 8, stream);
        let r = crate::harness::post_json(stack.agent.addr, "/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        let (version, bytes) =
            crate::harness::ledger::version_of(&stack.agent.data_dir, r.request_id());
        assert_eq!(
            version.as_deref(),
            Some(crate::harness::procs::SIM_MODEL),
            "stream: {stream}"
        );
        assert!(bytes >= "how many tokens per byte?".len() as i64, "{bytes}");
    }
    let m = stack.agent.metrics();
    assert!(
        m.contains(&format!(
            "tollgate_tokens_per_prompt_byte{{model=\"{0}\",version=\"{0}\"}}",
            crate::harness::procs::SIM_MODEL
        )),
        "{m}"
    );
}
