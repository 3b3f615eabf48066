//! Fixtures shared by the criterion benches: realistic request bodies and SSE streams.
//! Each bench binary uses only some of them.
#![allow(dead_code)]

/// A chat request of roughly `target` bytes: system prompt, alternating turns, two tools.
pub fn chat_body(target: usize, stream: bool) -> Vec<u8> {
    let sentence =
        "The quick brown fox jumps over the lazy dog while the gateway meters every token. ";
    let mut messages = vec![
        serde_json::json!({"role": "system", "content": "You are a careful coding assistant. Answer briefly."}),
    ];
    let mut i = 0;
    while serde_json::to_vec(&messages).map_or(0, |v| v.len()) < target.saturating_sub(600) {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(serde_json::json!({"role": role, "content": sentence.repeat(3)}));
        i += 1;
    }
    let body = serde_json::json!({
        "model": "smol",
        "messages": messages,
        "stream": stream,
        "max_tokens": 256,
        "temperature": 0.2,
        "tools": [
            {"type": "function", "function": {"name": "read_file", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "run_tests", "parameters": {"type": "object", "properties": {}}}}
        ],
        "metadata": {"ticket": "OPS-1234", "attempt": 2}
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// An OpenAI chat stream with `tokens` content frames, a finish frame, a usage-only frame and [DONE].
pub fn chat_stream(tokens: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..tokens {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"smol\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" word{i}\"}},\"finish_reason\":null}}]}}\n\n"
        ));
    }
    s.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"smol\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n");
    s.push_str(&format!("data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"smol\",\"choices\":[],\"usage\":{{\"prompt_tokens\":900,\"completion_tokens\":{tokens},\"total_tokens\":{}}}}}\n\n", 900 + tokens));
    s.push_str("data: [DONE]\n\n");
    s.into_bytes()
}

/// A directory under the system's temp dir, removed on drop (benches that write a ledger).
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(bench: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "tollgate-bench-{bench}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("a temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
