//! End-to-end checks of the real `tollgate-sim` binary over raw HTTP/1.1 on loopback: start it on
//! port 0, read the announced address, and talk to it with a plain `TcpStream` as a gateway would.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

const MODEL: &str = "sim-model";

/// A running simulator; killed when dropped.
struct Sim {
    child: Child,
    addr: String,
    _stdout: BufReader<ChildStdout>,
}

impl Sim {
    fn start() -> Sim {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate-sim"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--model",
                MODEL,
                "--model",
                "other-model",
            ])
            // Small but non-zero latencies, so the timed paths run too.
            .args([
                "--ttft-base-ms",
                "1",
                "--ttft-per-token-us",
                "1",
                "--itl-base-ms",
                "1",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tollgate-sim");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .trim_end()
            .strip_prefix("tollgate-sim listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        assert!(!addr.ends_with(":0"), "the real port is announced: {addr}");
        Sim {
            child,
            addr,
            _stdout: stdout,
        }
    }

    /// Sends SIGTERM and waits for the exit.
    fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        self.child.wait().unwrap()
    }

    /// One request on a fresh connection; returns what was read and how reading ended.
    fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (Vec<u8>, io::Result<()>) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        // A guard against hanging forever, not a performance threshold.
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body.as_bytes()).unwrap();
        let mut raw = Vec::new();
        let result = stream.read_to_end(&mut raw).map(drop);
        (raw, result)
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let (raw, result) = self.exchange(method, path, headers, body);
        result.expect("the response reads to the end");
        Reply::parse(&raw)
    }

    fn post(&self, path: &str, body: &Value) -> Reply {
        self.request("POST", path, &[], &body.to_string())
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn parse(raw: &[u8]) -> Reply {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete head");
        let head = std::str::from_utf8(&raw[..split]).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (name, value) = l.split_once(':').unwrap();
                (name.to_ascii_lowercase(), value.trim().to_string())
            })
            .collect();
        let payload = &raw[split + 4..];
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v == "chunked");
        let body = if chunked {
            dechunk(payload)
        } else {
            payload.to_vec()
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// SSE frames as (event name, data).
    fn events(&self) -> Vec<(Option<String>, String)> {
        sse_frames(&self.body)
    }
}

fn dechunk(mut payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = payload
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = std::str::from_utf8(&payload[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        payload = &payload[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&payload[..size]);
        assert_eq!(&payload[size..size + 2], b"\r\n");
        payload = &payload[size + 2..];
    }
}

fn sse_frames(body: &[u8]) -> Vec<(Option<String>, String)> {
    let text = std::str::from_utf8(body).unwrap();
    text.split("\n\n")
        .filter(|frame| !frame.is_empty())
        .map(|frame| {
            let mut event = None;
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (event, data)
        })
        .collect()
}

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": content}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[test]
fn chat_non_streaming_and_prefix_cache() {
    let sim = Sim::start();
    let reply = sim.request(
        "POST",
        "/v1/chat/completions",
        &[("Authorization", "Bearer sk-upstream-key")],
        &chat("Say something, simulator.", json!({"max_tokens": 5})).to_string(),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(content.split_whitespace().count(), 5);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    // "Say something, simulator." is 25 bytes: ceil(25 / 4) = 7 tokens.
    assert_eq!(v["usage"]["prompt_tokens"], 7);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(v["usage"]["total_tokens"], 12);

    let last = sim.request("GET", "/sim/last-request", &[], "").json();
    assert_eq!(last["headers"]["authorization"], "Bearer sk-upstream-key");
    assert_eq!(last["path"], "/v1/chat/completions");
    assert_eq!(
        serde_json::from_str::<Value>(last["body"].as_str().unwrap()).unwrap()["model"],
        MODEL
    );

    // 400 bytes = 100 tokens = six full 16-token blocks and a partial one.
    let long = chat(&"x".repeat(400), json!({}));
    let first = sim.post("/v1/chat/completions", &long).json();
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let second = sim.post("/v1/chat/completions", &long).json();
    assert_eq!(
        second["usage"]["prompt_tokens_details"]["cached_tokens"],
        96
    );
    assert_eq!(second["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        first["choices"][0]["message"]["content"], second["choices"][0]["message"]["content"],
        "same prompt, same output"
    );

    let metrics = String::from_utf8(sim.request("GET", "/metrics", &[], "").body).unwrap();
    for line in [
        "vllm:prefix_cache_hits_total{model_name=\"sim-model\"} 96",
        "vllm:prompt_tokens_total{model_name=\"sim-model\"} 207",
        "vllm:generation_tokens_total{model_name=\"sim-model\"} 37",
        "vllm:num_requests_running{model_name=\"sim-model\"} 0",
        "vllm:num_requests_waiting{model_name=\"sim-model\"} 0",
        "vllm:prefix_cache_queries_total{model_name=\"sim-model\"} 207",
        "vllm:prompt_tokens_total{model_name=\"other-model\"} 0",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    assert!(metrics.contains("vllm:kv_cache_usage_perc{model_name=\"sim-model\"} "));
    assert!(metrics.contains(
        "vllm:request_success_total{finished_reason=\"length\",model_name=\"sim-model\"} 1"
    ));
}

#[test]
fn chat_streaming_with_usage() {
    let sim = Sim::start();
    let body = chat(
        "stream please",
        json!({"max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let reply = sim.post("/v1/chat/completions", &body);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert_eq!(reply.header("transfer-encoding"), Some("chunked"));
    let frames = reply.events();
    // Role chunk, four tokens, finish chunk, usage chunk, [DONE].
    assert_eq!(frames.len(), 8, "{frames:?}");
    assert_eq!(frames.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = frames[..7]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    for chunk in &chunks[..6] {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert!(
            chunk.get("usage").is_none(),
            "usage only in the usage chunk: {chunk}"
        );
    }
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "length");
    let usage = &chunks[6];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 4);
    assert_eq!(usage["usage"]["completion_tokens"], 4);

    // The same stream without include_usage, or with usage suppressed, has no usage chunk.
    let body = chat("stream please", json!({"max_tokens": 4, "stream": true}));
    assert_eq!(sim.post("/v1/chat/completions", &body).events().len(), 7);
    let body = chat(
        "stream please",
        json!({"max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let reply = sim.request(
        "POST",
        "/v1/chat/completions",
        &[("x-sim-no-usage", "1")],
        &body.to_string(),
    );
    assert!(reply.events().iter().all(|(_, d)| !d.contains("usage")));
}

#[test]
fn anthropic_streaming_events() {
    let sim = Sim::start();
    let body = json!({
        "model": MODEL, "max_tokens": 3, "stream": true,
        "system": "You are a simulator.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello!"}]}],
    });
    let reply = sim.post("/v1/messages", &body);
    assert_eq!(reply.status, 200);
    let frames = reply.events();
    let names: Vec<&str> = frames.iter().map(|(e, _)| e.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let data: Vec<Value> = frames
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    for ((name, _), value) in frames.iter().zip(&data) {
        assert_eq!(value["type"], name.as_deref().unwrap());
    }
    // "You are a simulator." + "Hello!" = 26 bytes = 7 tokens, nothing cached yet.
    let usage = &data[0]["message"]["usage"];
    assert_eq!(usage["input_tokens"], 7);
    assert_eq!(usage["cache_read_input_tokens"], 0);
    assert_eq!(usage["cache_creation_input_tokens"], 0);
    assert_eq!(usage["output_tokens"], 1);
    assert_eq!(data[3]["delta"]["type"], "text_delta");
    assert_eq!(data[7]["usage"]["output_tokens"], 3);
    assert_eq!(data[7]["delta"]["stop_reason"], "max_tokens");

    let error = sim.post("/v1/messages", &json!({"model": "nope", "messages": []}));
    assert_eq!(error.status, 404);
    assert_eq!(error.json()["error"]["type"], "not_found_error");
}

#[test]
fn reset_mid_stream() {
    let sim = Sim::start();
    let body = chat("reset me", json!({"max_tokens": 50, "stream": true})).to_string();
    let (raw, result) = sim.exchange(
        "POST",
        "/v1/chat/completions",
        &[("x-sim-reset-after", "2")],
        &body,
    );
    let error = result.expect_err("the read fails mid-stream");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
    let text = String::from_utf8_lossy(&raw);
    assert!(!text.contains("[DONE]"));
    assert!(text.matches("data: ").count() <= 2, "{text}");

    // The server lives on.
    assert_eq!(sim.request("GET", "/health", &[], "").status, 200);
}

#[test]
fn errors_and_shutdown() {
    let sim = Sim::start();
    let reply = sim.post(
        "/v1/chat/completions",
        &json!({"model": "unknown", "messages": []}),
    );
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["error"]["code"], "model_not_found");

    let reply = sim.request("POST", "/v1/chat/completions", &[], "{\"model\":");
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");

    let body = chat("fail", json!({})).to_string();
    let reply = sim.request(
        "POST",
        "/v1/chat/completions",
        &[("x-sim-fail", "503")],
        &body,
    );
    assert_eq!(reply.status, 503);
    assert!(reply.json()["error"]["message"].is_string());

    let other = sim.post(
        "/v1/chat/completions",
        &json!({"model": "other-model", "messages": []}),
    );
    assert_eq!(other.json()["model"], "other-model");

    let models = sim.request("GET", "/v1/models", &[], "").json();
    assert_eq!(models["data"][0]["id"], MODEL);

    assert!(sim.terminate().success(), "SIGTERM exits cleanly");
}
