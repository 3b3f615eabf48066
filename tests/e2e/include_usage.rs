//! `stream_options.include_usage`: for streams the agent asks the provider for usage when the
//! client did not, and removes the extra usage-only chunk, so the client's frames are the ones the
//! provider sends without it (same count, byte for byte but for the per-response id and
//! timestamp, no usage chunk, `data: [DONE]` last). A client that asks gets the usage chunk.

use serde_json::{json, Value};

use crate::harness::http::frame_data;
use crate::harness::{chat_body, post_json, prompt_tokens, Stack, Tokens};

/// Rewrites the response id and `created` of `frames` to those of `like`, so that two streams of
/// the same prompt compare byte for byte.
fn align_ids(frames: &[String], like: &[String]) -> Vec<String> {
    let ids = |frames: &[String]| {
        let first = frames
            .iter()
            .find_map(|f| frame_data(f))
            .expect("a data frame");
        (
            first["id"].as_str().expect("id").to_string(),
            first["created"].as_u64().expect("created"),
        )
    };
    let (id, created) = ids(frames);
    let (like_id, like_created) = ids(like);
    frames
        .iter()
        .map(|f| {
            f.replace(&id, &like_id).replace(
                &format!("\"created\":{created}"),
                &format!("\"created\":{like_created}"),
            )
        })
        .collect()
}

fn usage_chunks(frames: &[String]) -> Vec<Value> {
    frames
        .iter()
        .filter_map(|f| frame_data(f))
        .filter(|v| v.get("usage").is_some_and(|u| !u.is_null()))
        .collect()
}

/// The request the simulator received last, body parsed.
fn forwarded_body(stack: &Stack) -> Value {
    let last = stack.sim.last_request();
    serde_json::from_str(last["body"].as_str().expect("last-request body"))
        .expect("forwarded body is JSON")
}

#[test]
fn injected_for_chat_and_hidden_from_the_client() {
    let stack = Stack::start();
    let prompt = "Frames must match the provider's.";
    let via_agent = post_json(
        stack.agent.addr,
        "/v1/chat/completions",
        &chat_body("smol", prompt, 6, true),
    );
    assert_eq!(via_agent.status, 200, "{}", via_agent.text());
    let forwarded = forwarded_body(&stack);
    assert_eq!(
        forwarded["stream_options"]["include_usage"], true,
        "the agent asks the provider for usage: {forwarded}"
    );

    let direct = post_json(
        stack.sim.addr,
        "/v1/chat/completions",
        &chat_body("smollm2", prompt, 6, true),
    );
    let direct_frames = direct.frames();
    let agent_frames = via_agent.frames();
    assert_eq!(agent_frames.len(), direct_frames.len(), "{agent_frames:#?}");
    assert!(usage_chunks(&agent_frames).is_empty(), "{agent_frames:#?}");
    assert_eq!(
        agent_frames.last().map(String::as_str),
        Some("data: [DONE]\n\n")
    );
    assert_eq!(align_ids(&agent_frames, &direct_frames), direct_frames);

    let row = stack.agent.row_of(&via_agent);
    assert_eq!(
        row.tokens(),
        Tokens {
            input: prompt_tokens(prompt),
            output: 6,
            ..Tokens::default()
        }
    );
    assert!(!row.estimated, "usage came from the hidden chunk: {row:#?}");
}

#[test]
fn injected_for_completions_and_hidden_from_the_client() {
    let stack = Stack::start();
    let prompt = "Completion frames must match too.";
    let body =
        |model: &str| json!({"model": model, "prompt": prompt, "max_tokens": 4, "stream": true});
    let via_agent = post_json(stack.agent.addr, "/v1/completions", &body("smol"));
    assert_eq!(via_agent.status, 200, "{}", via_agent.text());
    assert_eq!(
        forwarded_body(&stack)["stream_options"]["include_usage"],
        true
    );
    let direct = post_json(stack.sim.addr, "/v1/completions", &body("smollm2"));
    let direct_frames = direct.frames();
    let agent_frames = via_agent.frames();
    assert_eq!(align_ids(&agent_frames, &direct_frames), direct_frames);
    let row = stack.agent.row_of(&via_agent);
    assert_eq!((row.output_tokens, row.estimated), (4, false), "{row:#?}");
}

#[test]
fn client_that_asks_gets_the_usage_chunk() {
    let stack = Stack::start();
    let prompt = "I want usage in my stream.";
    let mut body = chat_body("smol", prompt, 5, true);
    body["stream_options"] = json!({"include_usage": true});
    let via_agent = post_json(stack.agent.addr, "/v1/chat/completions", &body);
    assert_eq!(via_agent.status, 200, "{}", via_agent.text());
    let agent_frames = via_agent.frames();

    body["model"] = "smollm2".into();
    let direct = post_json(stack.sim.addr, "/v1/chat/completions", &body);
    let direct_frames = direct.frames();
    assert_eq!(agent_frames.len(), direct_frames.len());

    let usage = usage_chunks(&agent_frames);
    assert_eq!(usage.len(), 1, "exactly one usage chunk: {agent_frames:#?}");
    assert_eq!(usage[0]["choices"], json!([]), "usage-only chunk");
    let usage_at = agent_frames.len() - 2;
    assert!(
        agent_frames[usage_at].contains("\"usage\""),
        "the usage chunk comes just before [DONE]: {agent_frames:#?}"
    );
    // Every other frame is the provider's, byte for byte (the usage chunk differs only in the
    // cached tokens of this second, now cached, request).
    let aligned = align_ids(&agent_frames, &direct_frames);
    for (i, (a, d)) in aligned.iter().zip(&direct_frames).enumerate() {
        if i != usage_at {
            assert_eq!(a, d, "frame {i}");
        }
    }
    assert_eq!(
        agent_frames.last().map(String::as_str),
        Some("data: [DONE]\n\n")
    );
    let reported = Tokens::from_openai(&usage[0]["usage"]);
    assert_eq!(
        (reported.input, reported.output),
        (prompt_tokens(prompt), 5)
    );
    assert_eq!(stack.agent.row_of(&via_agent).tokens(), reported);
}

#[test]
fn client_that_declines_still_gets_metered() {
    let stack = Stack::start();
    let prompt = "No usage for me, thanks.";
    let mut body = chat_body("smol", prompt, 3, true);
    body["stream_options"] = json!({"include_usage": false});
    let r = post_json(stack.agent.addr, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let frames = r.frames();
    assert!(usage_chunks(&frames).is_empty(), "{frames:#?}");
    assert_eq!(frames.last().map(String::as_str), Some("data: [DONE]\n\n"));
    let row = stack.agent.row_of(&r);
    assert_eq!(
        (row.input_tokens, row.output_tokens, row.estimated),
        (prompt_tokens(prompt), 3, false),
        "{row:#?}"
    );
}
