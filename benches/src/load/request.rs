//! The request the generator sends, built once as raw bytes before the run.
//!
//! Why it exists: serialising a request per send would cost the generator CPU that the server under test
//! needs on a two-core machine. Every send writes the same pre-built bytes. Not on the hot path.

use serde_json::json;

/// What to send.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// `GET`, `POST`, `HEAD`, ...
    pub method: String,
    /// Request target, e.g. `/v1/chat/completions`.
    pub path: String,
    /// `Host` header value.
    pub host: String,
    /// Extra header lines, `Name: value`.
    pub headers: Vec<String>,
    /// Body bytes; sent with `content-type: application/json` when present.
    pub body: Option<Vec<u8>>,
}

/// An OpenAI chat-completions body asking `model` for `max_tokens` tokens, with a user prompt of about
/// `prompt_bytes` bytes (at least a short sentence).
pub fn chat_body(model: &str, max_tokens: u32, stream: bool, prompt_bytes: usize) -> Vec<u8> {
    const SENTENCE: &str = "Explain how a toll gate meters traffic. ";
    let mut prompt = String::with_capacity(prompt_bytes.max(SENTENCE.len()));
    while prompt.len() + SENTENCE.len() <= prompt_bytes.max(SENTENCE.len()) {
        prompt.push_str(SENTENCE);
    }
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt.trim_end()}],
        "max_tokens": max_tokens,
        "stream": stream,
    });
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    body.to_string().into_bytes()
}

/// The full HTTP/1.1 request: request line, headers, blank line, body. Keep-alive is HTTP/1.1's default.
pub fn build(spec: &RequestSpec) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + spec.body.as_ref().map_or(0, Vec::len));
    out.extend_from_slice(
        format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\n",
            spec.method, spec.path, spec.host
        )
        .as_bytes(),
    );
    for header in &spec.headers {
        out.extend_from_slice(header.trim().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(body) = &spec.body {
        out.extend_from_slice(
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(body);
    } else {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_post_with_length() {
        let spec = RequestSpec {
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            host: "127.0.0.1:1".into(),
            headers: vec!["Authorization: Bearer k".into()],
            body: Some(b"{}".to_vec()),
        };
        let bytes = build(&spec);
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:1\r\nAuthorization: Bearer k\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn chat_body_is_json_with_requested_fields() {
        let body = chat_body("smol", 8, true, 500);
        let value: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!(value["model"], "smol");
        assert_eq!(value["max_tokens"], 8);
        assert_eq!(value["stream"], true);
        let prompt = value["messages"][0]["content"].as_str().unwrap_or_default();
        assert!(
            prompt.len() > 400 && prompt.len() <= 500,
            "prompt of {} bytes",
            prompt.len()
        );
    }
}
