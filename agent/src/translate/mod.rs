//! Translation between the OpenAI Chat Completions and Anthropic Messages wire formats.
//!
//! Tollgate can put a client that speaks one format in front of a provider that speaks the
//! other. This module is the whole of that translation, bytes in and bytes out, so the data path
//! never has to know either schema: request bodies, complete responses, error bodies and SSE
//! streams, in both directions.
//!
//! What the client sends is checked: anything that cannot be expressed for the provider is a
//! [`TranslateError`] the client sees as a 400, because silently dropping a message part or a
//! tool call would change what the model is asked. What the provider sends back is never an
//! error: a body that cannot be translated becomes a well-formed error body of the client's
//! format, and stream frames that cannot be read are skipped.
//!
//! `chat_to_messages` holds the OpenAI-client/Anthropic-provider side, `messages_to_chat` the
//! reverse, `responses_to_chat` the Responses API in front of a chat-completions-only provider;
//! this file holds what they share: token accounting, error bodies and SSE framing.

use bytes::Bytes;
use serde_json::{json, Map, Value};

mod chat_to_messages;
mod messages_to_chat;
pub mod responses_to_chat;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// An OpenAI Chat Completions client (`/v1/chat/completions`) served by an Anthropic Messages provider.
    ChatToMessages,
    /// An Anthropic Messages client (`/v1/messages`) served by an OpenAI Chat Completions provider (vLLM, llama.cpp, OpenAI).
    MessagesToChat,
    /// An OpenAI Responses client (`/v1/responses`) served by a provider that speaks chat
    /// completions only (`responses_api: chat`).
    ResponsesToChat,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranslateError {
    /// The client's body cannot be expressed in the provider's format (or is not the JSON object it should be). The message goes to the client in a 400.
    #[error("{0}")]
    Invalid(String),
}

/// The provider's request body for the client's `body`. `model` is the model name the provider must receive (replaces the client's `model`). For MessagesToChat with `"stream": true`, the output sets `"stream_options": {"include_usage": true}` so the usage arrives in the stream.
pub fn request(dir: Direction, body: &[u8], model: &str) -> Result<Vec<u8>, TranslateError> {
    if dir == Direction::ResponsesToChat {
        return responses_to_chat::request(body, model);
    }
    let parsed: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("request body is not valid JSON: {e}")))?;
    let Value::Object(body) = parsed else {
        return Err(invalid("request body must be a JSON object"));
    };
    let out = if dir == Direction::ChatToMessages {
        chat_to_messages::request(&body, model)?
    } else {
        messages_to_chat::request(&body, model)?
    };
    Ok(to_json(&Value::Object(out)))
}

/// A complete (non-streamed) provider response body → the client's body. `status` is the provider's HTTP status: for 2xx translate the response; for other statuses translate the error body (OpenAI `{"error":{"message","type","code","param"}}` ⇄ Anthropic `{"type":"error","error":{"type","message"}}`); a body that does not parse becomes a well-formed error body of the client's format whose message names the status. `client_model` is the model name the client asked for (put it in the translated response's `model`).
pub fn response(dir: Direction, status: u16, body: &[u8], client_model: &str) -> Vec<u8> {
    let out = match dir {
        Direction::ChatToMessages => chat_to_messages::response(status, body, client_model),
        Direction::MessagesToChat => messages_to_chat::response(status, body, client_model),
        Direction::ResponsesToChat => {
            return responses_to_chat::response(status, body, client_model)
        }
    };
    to_json(&out)
}

/// Translates a provider's SSE stream into the client's, frame by frame.
#[derive(Debug)]
pub struct Stream {
    inner: StreamInner,
}

#[derive(Debug)]
enum StreamInner {
    ChatToMessages(chat_to_messages::Stream),
    MessagesToChat(messages_to_chat::Stream),
    ResponsesToChat(responses_to_chat::Stream),
}

impl Stream {
    /// `include_usage`: (ChatToMessages only) the OpenAI client asked for `stream_options.include_usage`, so a final usage chunk (`"choices": []`, `usage`) is sent before `data: [DONE]`.
    pub fn new(dir: Direction, client_model: &str, include_usage: bool) -> Stream {
        let inner = match dir {
            Direction::ChatToMessages => StreamInner::ChatToMessages(
                chat_to_messages::Stream::new(client_model, include_usage),
            ),
            Direction::MessagesToChat => {
                StreamInner::MessagesToChat(messages_to_chat::Stream::new(client_model))
            }
            Direction::ResponsesToChat => {
                StreamInner::ResponsesToChat(responses_to_chat::Stream::new(client_model))
            }
        };
        Stream { inner }
    }

    /// One whole SSE frame of the provider, exactly as received, including its terminating blank line (e.g. `b"event: content_block_delta\ndata: {...}\n\n"` or `b"data: {...}\n\n"` or `b"data: [DONE]\n\n"`; lines may end in `\r\n`; comment lines start with `:`). Pushes zero or more whole client frames onto `out` (each a complete SSE frame ending in a blank line).
    pub fn frame(&mut self, frame: &[u8], out: &mut Vec<Bytes>) {
        if let StreamInner::ResponsesToChat(s) = &mut self.inner {
            s.frame(frame, out);
            return;
        }
        for event in sse_events(frame) {
            let name = event.name.as_deref();
            match &mut self.inner {
                StreamInner::ChatToMessages(s) => s.event(name, &event.data, out),
                StreamInner::MessagesToChat(s) => s.event(&event.data, out),
                StreamInner::ResponsesToChat(_) => {}
            }
        }
    }

    /// The provider's stream ended. `complete`: it ended properly (Anthropic `message_stop` seen, or OpenAI `[DONE]`/final chunk seen by the caller). Push whatever closing frames the client is still owed (e.g. Anthropic `message_delta` + `message_stop` if the OpenAI side ended without them having been emitted; OpenAI `data: [DONE]`). When `complete` is false push nothing (the caller cuts the connection).
    pub fn finish(&mut self, complete: bool, out: &mut Vec<Bytes>) {
        // A truncated stream must look truncated to the client: closing frames would tell it
        // the answer was whole.
        if !complete {
            return;
        }
        match &mut self.inner {
            StreamInner::ChatToMessages(s) => s.finish(out),
            StreamInner::MessagesToChat(s) => s.finish(out),
            StreamInner::ResponsesToChat(s) => s.finish(true, out),
        }
    }
}

/// Anthropic requires `max_tokens`; OpenAI clients usually leave it out.
const DEFAULT_MAX_TOKENS: u64 = 4096;

fn invalid(message: impl Into<String>) -> TranslateError {
    TranslateError::Invalid(message.into())
}

fn to_json(value: &Value) -> Vec<u8> {
    // Serializing a `Value` cannot fail (its keys are strings); the fallback only avoids a panic path.
    serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec())
}

fn str_at<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

fn into_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Copies the fields both formats spell and mean the same way; `null` means "unset" in both.
fn copy_fields(from: &Map<String, Value>, to: &mut Map<String, Value>, keys: &[&str]) {
    for key in keys {
        if let Some(value) = from.get(*key).filter(|v| !v.is_null()) {
            to.insert((*key).to_owned(), value.clone());
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An id for a response whose provider gave none; clients key on ids, so they must not repeat.
fn fresh_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{nanos:x}{n:x}")
}

/// Token counts in Anthropic's shape. Anthropic's `input_tokens` excludes cache reads and writes
/// while OpenAI's `prompt_tokens` includes them, so every conversion goes through this one type
/// and each token is counted exactly once whichever way it travels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Usage {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_creation: u64,
}

impl Usage {
    fn from_anthropic(usage: &Value) -> Usage {
        let mut out = Usage::default();
        out.merge_anthropic(usage);
        out
    }

    /// Anthropic streams usage in pieces (`message_start`, then `message_delta`); a field that is
    /// present replaces the earlier value because Anthropic's counts are cumulative, not deltas.
    fn merge_anthropic(&mut self, usage: &Value) {
        let fields = [
            (&mut self.input, "input_tokens"),
            (&mut self.output, "output_tokens"),
            (&mut self.cache_read, "cache_read_input_tokens"),
            (&mut self.cache_creation, "cache_creation_input_tokens"),
        ];
        for (field, key) in fields {
            if let Some(n) = usage.get(key).and_then(Value::as_u64) {
                *field = n;
            }
        }
    }

    /// OpenAI has no notion of cache writes, so they stay inside `input`.
    fn from_openai(usage: &Value) -> Usage {
        let count = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
        let prompt = count(usage.get("prompt_tokens"));
        let details = usage.get("prompt_tokens_details");
        // A provider claiming more cached tokens than prompt tokens would otherwise inflate the total.
        let cached = count(details.and_then(|d| d.get("cached_tokens"))).min(prompt);
        Usage {
            input: prompt - cached,
            output: count(usage.get("completion_tokens")),
            cache_read: cached,
            cache_creation: 0,
        }
    }

    fn to_openai(self) -> Value {
        let prompt = self
            .input
            .saturating_add(self.cache_read)
            .saturating_add(self.cache_creation);
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": self.output,
            "total_tokens": prompt.saturating_add(self.output),
            "prompt_tokens_details": {"cached_tokens": self.cache_read},
        })
    }

    fn to_anthropic(self) -> Value {
        json!({
            "input_tokens": self.input,
            "output_tokens": self.output,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation_input_tokens": self.cache_creation,
        })
    }
}

/// Anthropic's error types double as OpenAI `type`s: OpenAI clients branch on the HTTP status,
/// and the type is only shown to people, for whom these names are clear.
fn error_type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// The human-readable message of a provider error body, whichever of the shapes seen in the
/// wild it uses (OpenAI, Anthropic, llama.cpp's plain `error` string, FastAPI's `detail`).
fn provider_message(body: Option<&Value>) -> Option<String> {
    let body = body?;
    let error = body.get("error");
    [
        error.and_then(|e| e.get("message")),
        error,
        body.get("message"),
        body.get("detail"),
    ]
    .into_iter()
    .flatten()
    .find_map(Value::as_str)
    .map(str::to_owned)
}

/// The message for a provider body that could not be translated: the status, and the start of
/// the body when it is text, since a proxy's HTML or plain-text error is often the only clue.
fn unreadable_message(status: u16, body: &[u8]) -> String {
    let text = std::str::from_utf8(body).map(str::trim).unwrap_or("");
    if text.is_empty() {
        return format!("provider returned HTTP {status} with no readable body");
    }
    let snippet: String = text.chars().take(200).collect();
    format!("provider returned HTTP {status} with a body that could not be translated: {snippet}")
}

fn openai_error(kind: &str, message: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "code": null, "param": null}})
}

fn anthropic_error(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// One event of an SSE frame: its `event:` name, if any, and its `data:` lines joined by `\n`.
struct SseEvent {
    name: Option<String>,
    data: String,
}

/// Parses a frame per the SSE rules rather than by prefix matching, so `\r\n` endings, comment
/// lines, `data:` without a space and several events delivered in one frame all work.
fn sse_events(frame: &[u8]) -> Vec<SseEvent> {
    let Ok(text) = std::str::from_utf8(frame) else {
        return Vec::new();
    };
    let mut events = Vec::new();
    let mut name: Option<String> = None;
    let mut data: Option<String> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            if let Some(data) = data.take() {
                events.push(SseEvent {
                    name: name.take(),
                    data,
                });
            }
            name = None;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match (field, &mut data) {
            ("event", _) => name = Some(value.to_owned()),
            ("data", Some(data)) => {
                data.push('\n');
                data.push_str(value);
            }
            ("data", None) => data = Some(value.to_owned()),
            _ => {}
        }
    }
    // Tolerates a caller that hands over a frame without its final blank line.
    if let Some(data) = data {
        events.push(SseEvent { name, data });
    }
    events
}

fn sse_data(value: &Value) -> Bytes {
    let mut frame = b"data: ".to_vec();
    frame.extend_from_slice(&to_json(value));
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

fn sse_event(name: &str, value: &Value) -> Bytes {
    let mut frame = format!("event: {name}\ndata: ").into_bytes();
    frame.extend_from_slice(&to_json(value));
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

/// A translated request as JSON, for the direction modules' tests.
#[cfg(test)]
fn test_request(dir: Direction, body: &Value, model: &str) -> Result<Value, TranslateError> {
    let out = request(dir, body.to_string().as_bytes(), model)?;
    serde_json::from_slice(&out).map_err(|e| invalid(e.to_string()))
}

/// A translated complete response as JSON, for the direction modules' tests.
#[cfg(test)]
fn test_response(dir: Direction, status: u16, body: &Value, client_model: &str) -> Value {
    let out = response(dir, status, body.to_string().as_bytes(), client_model);
    serde_json::from_slice(&out).unwrap_or(Value::Null)
}

/// Splits client frames back into `(event name, JSON data)` for assertions; `[DONE]` becomes a
/// `"[DONE]"` string so sequences can be compared in one go.
#[cfg(test)]
fn parse_out(out: &[Bytes]) -> Vec<(Option<String>, Value)> {
    out.iter()
        .map(|frame| {
            assert!(frame.ends_with(b"\n\n"), "frame not terminated: {frame:?}");
            let events = sse_events(frame);
            assert_eq!(events.len(), 1, "one event per frame: {frame:?}");
            let event = &events[0];
            let data = if event.data == "[DONE]" {
                Value::from("[DONE]")
            } else {
                serde_json::from_str(&event.data).unwrap()
            };
            (event.name.clone(), data)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_round_trip_from_anthropic_counts_every_token_once() {
        let anthropic = json!({"input_tokens": 100, "output_tokens": 50,
            "cache_read_input_tokens": 30, "cache_creation_input_tokens": 20});
        let openai = Usage::from_anthropic(&anthropic).to_openai();
        assert_eq!(openai["prompt_tokens"], 150);
        assert_eq!(openai["completion_tokens"], 50);
        assert_eq!(openai["total_tokens"], 200);
        assert_eq!(openai["prompt_tokens_details"]["cached_tokens"], 30);
        let back = Usage::from_openai(&openai);
        // OpenAI cannot say "cache write", so those tokens come back as plain input: same total.
        assert_eq!(
            back,
            Usage {
                input: 120,
                output: 50,
                cache_read: 30,
                cache_creation: 0
            }
        );
        let sum = |u: Usage| u.input + u.output + u.cache_read + u.cache_creation;
        assert_eq!(sum(back), 200);
        assert_eq!(back.to_openai(), openai);
    }

    #[test]
    fn usage_round_trip_from_openai_is_exact() {
        let openai = json!({"prompt_tokens": 150, "completion_tokens": 50, "total_tokens": 200,
            "prompt_tokens_details": {"cached_tokens": 30}});
        let anthropic = Usage::from_openai(&openai).to_anthropic();
        assert_eq!(
            anthropic,
            json!({"input_tokens": 120, "output_tokens": 50,
                "cache_read_input_tokens": 30, "cache_creation_input_tokens": 0})
        );
        assert_eq!(Usage::from_anthropic(&anthropic).to_openai(), openai);
    }

    #[test]
    fn usage_tolerates_missing_and_inconsistent_counts() {
        assert_eq!(Usage::from_openai(&json!({})), Usage::default());
        let odd = Usage::from_openai(&json!({"prompt_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 9}}));
        assert_eq!(odd.input + odd.cache_read, 5);
        let mut merged = Usage::from_anthropic(&json!({"input_tokens": 7, "output_tokens": 1}));
        merged.merge_anthropic(&json!({"output_tokens": 42}));
        assert_eq!(
            merged,
            Usage {
                input: 7,
                output: 42,
                cache_read: 0,
                cache_creation: 0
            }
        );
    }

    #[test]
    fn sse_parsing_handles_crlf_comments_and_multiline_data() {
        let events = sse_events(b": keep-alive\r\nevent: ping\r\ndata: {\"a\":\r\ndata:1}\r\n\r\n");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].name.as_deref(), Some("ping"));
        assert_eq!(events[0].data, "{\"a\":\n1}");
        assert!(sse_events(b": comment only\n\n").is_empty());
        assert!(sse_events(b"\xff\xfe\n\n").is_empty());
        assert_eq!(sse_events(b"data: a\n\ndata: b\n\n").len(), 2);
    }

    #[test]
    fn request_rejects_non_objects() {
        for dir in [Direction::ChatToMessages, Direction::MessagesToChat] {
            assert!(matches!(
                request(dir, b"[1]", "m"),
                Err(TranslateError::Invalid(_))
            ));
            assert!(matches!(
                request(dir, b"{", "m"),
                Err(TranslateError::Invalid(_))
            ));
        }
    }

    #[test]
    fn unparseable_bodies_become_client_errors_naming_the_status() {
        let openai: Value =
            serde_json::from_slice(&response(Direction::ChatToMessages, 502, b"<html>", "m"))
                .unwrap();
        let message = openai["error"]["message"].as_str().unwrap();
        assert!(message.contains("502"), "{message}");
        assert_eq!(openai["error"]["type"], "api_error");
        let anthropic: Value =
            serde_json::from_slice(&response(Direction::MessagesToChat, 429, b"", "m")).unwrap();
        assert_eq!(anthropic["type"], "error");
        assert_eq!(anthropic["error"]["type"], "rate_limit_error");
        assert!(anthropic["error"]["message"]
            .as_str()
            .unwrap()
            .contains("429"));
    }

    #[test]
    fn finish_on_incomplete_stream_emits_nothing() {
        for dir in [Direction::ChatToMessages, Direction::MessagesToChat] {
            let mut stream = Stream::new(dir, "m", true);
            let mut out = Vec::new();
            stream.finish(false, &mut out);
            assert!(out.is_empty());
        }
    }

    #[test]
    fn hostile_input_never_panics() {
        let odd = [
            "{}",
            "[]",
            "null",
            "1",
            "\"x\"",
            r#"{"choices":5}"#,
            r#"{"choices":[null]}"#,
            r#"{"choices":[{"delta":null,"finish_reason":7}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":-1,"function":null}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[5,{"id":null}]}}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":-3,"prompt_tokens_details":null}}"#,
            r#"{"type":"content_block_delta","index":"x","delta":null}"#,
            r#"{"type":"content_block_start","content_block":{"type":"tool_use","input":[1]}}"#,
            r#"{"type":"message_start","message":[]}"#,
            r#"{"type":"error"}"#,
            r#"{"error":null}"#,
        ];
        for dir in [Direction::MessagesToChat, Direction::ChatToMessages] {
            for status in [200, 400, 503] {
                for body in odd {
                    let _ = response(dir, status, body.as_bytes(), "m");
                    let _ = request(dir, body.as_bytes(), "m");
                    let wrapped = format!(
                        r#"{{"messages":[{body}],"tools":[{body}],"system":{body},"tool_choice":{body},"stop":{body}}}"#
                    );
                    let _ = request(dir, wrapped.as_bytes(), "m");
                }
            }
            let mut stream = Stream::new(dir, "m", true);
            let mut out = Vec::new();
            for body in odd {
                let frame = format!("event: x\r\ndata: {body}\r\n\r\n");
                for cut in 0..=frame.len() {
                    stream.frame(&frame.as_bytes()[..cut], &mut out);
                }
            }
            stream.finish(true, &mut out);
            assert!(out.iter().all(|f| f.ends_with(b"\n\n")));
        }
    }
}
