//! An OpenAI Chat Completions client served by an Anthropic Messages provider.
//!
//! The request goes OpenAI → Anthropic; the response, error bodies and stream events come back
//! Anthropic → OpenAI. Anthropic is the stricter side (a required `max_tokens`, one top-level
//! system prompt, tool results inside user turns, object-valued tool inputs), so the request
//! is where client mistakes are caught and reported.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::{
    copy_fields, error_type_for_status, fresh_id, into_map, invalid, openai_error,
    provider_message, sse_data, str_at, unix_now, unreadable_message, TranslateError, Usage,
    DEFAULT_MAX_TOKENS, SSE_DONE,
};

pub(super) fn request(
    body: &Map<String, Value>,
    model: &str,
) -> Result<Map<String, Value>, TranslateError> {
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(invalid("n > 1 is not supported by this provider"));
    }
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("`messages` must be an array"))?;
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let role = str_at(message, "role")
            .ok_or_else(|| invalid(format!("messages[{i}] has no `role`")))?;
        let content = message.get("content");
        match role {
            // Anthropic has a single system prompt, so instructions given mid-conversation are
            // hoisted; the model still sees all of them, in order.
            "system" | "developer" => system.extend(texts(content, i)?),
            "user" => push_user(&mut turns, user_blocks(content, i)?),
            "assistant" => {
                let blocks = assistant_blocks(message, i)?;
                // Anthropic rejects empty assistant turns that OpenAI clients sometimes keep.
                if !blocks.is_empty() {
                    turns.push(("assistant", blocks));
                }
            }
            "tool" => push_user(&mut turns, vec![tool_result(message, i)?]),
            other => {
                return Err(invalid(format!(
                    "messages[{i}] has unsupported role `{other}`"
                )))
            }
        }
    }

    let mut out = Map::new();
    out.insert("model".into(), model.into());
    if !system.is_empty() {
        out.insert("system".into(), system.join("\n\n").into());
    }
    let turns: Vec<Value> = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    out.insert("messages".into(), turns.into());
    out.insert("max_tokens".into(), max_tokens(body)?.into());
    copy_fields(body, &mut out, &["temperature", "top_p", "stream"]);
    match body.get("stop") {
        Some(Value::String(stop)) => {
            out.insert("stop_sequences".into(), json!([stop]));
        }
        Some(Value::Array(stops)) if !stops.is_empty() => {
            out.insert("stop_sequences".into(), stops.clone().into());
        }
        _ => {}
    }
    if let Some(user) = body.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    add_tools(body, &mut out)?;
    Ok(out)
}

/// Tool results arrive as separate `tool` messages but Anthropic wants them in one user turn
/// next to whatever the user says after them, and rejects two user turns in a row.
fn push_user(turns: &mut Vec<(&'static str, Vec<Value>)>, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some((role, content)) if *role == "user" => content.extend(blocks),
        _ => turns.push(("user", blocks)),
    }
}

fn max_tokens(body: &Map<String, Value>) -> Result<u64, TranslateError> {
    for key in ["max_completion_tokens", "max_tokens"] {
        if let Some(value) = body.get(key).filter(|v| !v.is_null()) {
            return value
                .as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid(format!("`{key}` must be a positive integer")));
        }
    }
    Ok(DEFAULT_MAX_TOKENS)
}

/// The texts of a string-or-parts content. Anthropic rejects empty text blocks, so empty
/// strings are left out rather than passed on.
fn texts(content: Option<&Value>, i: usize) -> Result<Vec<String>, TranslateError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => Ok([text.clone()]
            .into_iter()
            .filter(|t| !t.is_empty())
            .collect()),
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for part in parts {
                let text = match str_at(part, "type") {
                    Some("text") => str_at(part, "text"),
                    Some("refusal") => str_at(part, "refusal"),
                    other => {
                        let kind = other.unwrap_or("(none)");
                        return Err(invalid(format!(
                            "messages[{i}] has a content part of type `{kind}` where only text is supported"
                        )));
                    }
                };
                out.extend(text.filter(|t| !t.is_empty()).map(str::to_owned));
            }
            Ok(out)
        }
        Some(_) => Err(invalid(format!(
            "messages[{i}].content must be a string or an array"
        ))),
    }
}

fn text_block(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({"type": "text", "text": text}))
}

fn user_blocks(content: Option<&Value>, i: usize) -> Result<Vec<Value>, TranslateError> {
    let Some(Value::Array(parts)) = content else {
        return Ok(texts(content, i)?
            .iter()
            .filter_map(|t| text_block(t))
            .collect());
    };
    let mut blocks = Vec::new();
    for part in parts {
        match str_at(part, "type") {
            Some("text") => blocks.extend(text_block(str_at(part, "text").unwrap_or(""))),
            Some("image_url") => blocks.push(image_block(part, i)?),
            other => {
                let kind = other.unwrap_or("(none)");
                return Err(invalid(format!(
                    "messages[{i}] has a content part of type `{kind}`, which this provider does not support"
                )));
            }
        }
    }
    Ok(blocks)
}

fn image_block(part: &Value, i: usize) -> Result<Value, TranslateError> {
    // Some clients send `image_url` as a bare string instead of `{"url": ...}`.
    let url = part
        .get("image_url")
        .and_then(|u| u.get("url").or(Some(u)))
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("messages[{i}] has an image part without a url")))?;
    let Some(data_url) = url.strip_prefix("data:") else {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    };
    let (media_type, data) = data_url
        .split_once(',')
        .and_then(|(meta, data)| Some((meta.strip_suffix(";base64")?, data)))
        .ok_or_else(|| {
            invalid(format!(
                "messages[{i}] has an image data URL that is not base64"
            ))
        })?;
    Ok(
        json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}),
    )
}

fn assistant_blocks(message: &Value, i: usize) -> Result<Vec<Value>, TranslateError> {
    let text = texts(message.get("content"), i)?.concat();
    let mut blocks: Vec<Value> = text_block(&text).into_iter().collect();
    let calls = message.get("tool_calls").and_then(Value::as_array);
    for call in calls.into_iter().flatten() {
        let id = str_at(call, "id")
            .ok_or_else(|| invalid(format!("messages[{i}] has a tool call without an `id`")))?;
        let function = call.get("function");
        let name = function
            .and_then(|f| str_at(f, "name"))
            .ok_or_else(|| invalid(format!("tool call `{id}` has no function name")))?;
        let input = arguments(function.and_then(|f| f.get("arguments")), id)?;
        blocks.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
    }
    Ok(blocks)
}

/// OpenAI carries tool arguments as a JSON string; Anthropic wants the object itself, so a
/// string that is not a JSON object cannot be sent.
fn arguments(arguments: Option<&Value>, id: &str) -> Result<Value, TranslateError> {
    let parsed = match arguments {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            serde_json::from_str(s).map_err(|_| {
                invalid(format!(
                    "tool call `{id}` has arguments that are not valid JSON"
                ))
            })?
        }
        Some(Value::String(_)) | None => Value::Null,
        Some(other) => other.clone(),
    };
    match parsed {
        Value::Null => Ok(json!({})),
        Value::Object(_) => Ok(parsed),
        _ => Err(invalid(format!(
            "tool call `{id}` has arguments that are not a JSON object"
        ))),
    }
}

fn tool_result(message: &Value, i: usize) -> Result<Value, TranslateError> {
    let id = str_at(message, "tool_call_id").ok_or_else(|| {
        invalid(format!(
            "messages[{i}] is a tool message without `tool_call_id`"
        ))
    })?;
    let text = texts(message.get("content"), i)?.concat();
    let mut block = into_map(json!({"type": "tool_result", "tool_use_id": id}));
    if !text.is_empty() {
        block.insert("content".into(), text.into());
    }
    Ok(Value::Object(block))
}

fn add_tools(
    body: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), TranslateError> {
    let Some(tools) = body
        .get("tools")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
    else {
        // Anthropic rejects a tool_choice without tools, which OpenAI clients do send.
        return Ok(());
    };
    let mut translated = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let kind = str_at(tool, "type").unwrap_or("function");
        let function = tool.get("function").filter(|_| kind == "function");
        let name = function
            .and_then(|f| str_at(f, "name"))
            .ok_or_else(|| invalid(format!("tools[{i}] must be a function with a name")))?;
        let mut t = Map::new();
        t.insert("name".into(), name.into());
        if let Some(description) = function.and_then(|f| str_at(f, "description")) {
            t.insert("description".into(), description.into());
        }
        let schema = function
            .and_then(|f| f.get("parameters"))
            .filter(|p| p.is_object())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        t.insert("input_schema".into(), schema);
        translated.push(Value::Object(t));
    }
    out.insert("tools".into(), translated.into());

    let mut choice = match body.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "required" => json!({"type": "any"}),
            "none" => json!({"type": "none"}),
            other => return Err(invalid(format!("unsupported tool_choice `{other}`"))),
        }),
        Some(choice) => {
            let name = Some(choice)
                .filter(|c| str_at(c, "type") == Some("function"))
                .and_then(|c| c.get("function"))
                .and_then(|f| str_at(f, "name"))
                .ok_or_else(|| invalid("unsupported tool_choice"))?;
            Some(json!({"type": "tool", "name": name}))
        }
    }
    .map(into_map);
    if body.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        let choice = choice.get_or_insert_with(|| into_map(json!({"type": "auto"})));
        // Anthropic's `none` takes no options; with no tools called there is nothing to serialize.
        if choice.get("type").and_then(Value::as_str) != Some("none") {
            choice.insert("disable_parallel_tool_use".into(), true.into());
        }
    }
    if let Some(choice) = choice {
        out.insert("tool_choice".into(), choice.into());
    }
    Ok(())
}

pub(super) fn response(status: u16, body: &[u8], client_model: &str) -> Value {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    match parsed {
        Some(message)
            if (200..300).contains(&status)
                && message.is_object()
                && str_at(&message, "type") != Some("error")
                && message.get("error").is_none_or(Value::is_null) =>
        {
            completion(&message, client_model)
        }
        parsed => {
            let message = provider_message(parsed.as_ref())
                .unwrap_or_else(|| unreadable_message(status, body));
            let kind = parsed
                .as_ref()
                .and_then(|p| p.get("error"))
                .and_then(|e| str_at(e, "type"))
                .unwrap_or_else(|| error_type_for_status(status));
            openai_error(kind, &message)
        }
    }
}

fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        _ => "stop",
    }
}

fn completion(message: &Value, client_model: &str) -> Value {
    let mut text = String::new();
    let mut calls = Vec::new();
    let blocks = message.get("content").and_then(Value::as_array);
    for block in blocks.into_iter().flatten() {
        match str_at(block, "type") {
            Some("text") => text.push_str(str_at(block, "text").unwrap_or("")),
            Some("tool_use") => calls.push(json!({
                "id": str_at(block, "id").unwrap_or(""),
                "type": "function",
                "function": {
                    "name": str_at(block, "name").unwrap_or(""),
                    "arguments": block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            })),
            // Thinking has no place in a Chat Completions message.
            _ => {}
        }
    }
    let mut out = into_map(json!({"role": "assistant", "content": null}));
    if !text.is_empty() {
        out.insert("content".into(), text.into());
    }
    if !calls.is_empty() {
        out.insert("tool_calls".into(), calls.into());
    }
    let usage = message
        .get("usage")
        .map(Usage::from_anthropic)
        .unwrap_or_default();
    json!({
        "id": str_at(message, "id").map_or_else(|| fresh_id("chatcmpl-"), str::to_owned),
        "object": "chat.completion",
        "created": unix_now(),
        "model": client_model,
        "choices": [{
            "index": 0,
            "message": out,
            "finish_reason": finish_reason(str_at(message, "stop_reason")),
        }],
        "usage": usage.to_openai(),
    })
}

/// Anthropic events in, OpenAI chunks out. Nearly every event maps to one chunk at once; only
/// the usage waits, because OpenAI reports it after the finish chunk while Anthropic spreads
/// it over `message_start` and `message_delta`.
#[derive(Debug)]
pub(super) struct Stream {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    usage: Usage,
    /// The Anthropic block index of each tool call so far; the position is the OpenAI index.
    tool_blocks: Vec<u64>,
    finish_sent: bool,
    /// `[DONE]` went out, or an error did: nothing more may follow either.
    closed: bool,
}

impl Stream {
    pub(super) fn new(client_model: &str, include_usage: bool) -> Stream {
        Stream {
            id: fresh_id("chatcmpl-"),
            model: client_model.to_owned(),
            created: unix_now(),
            include_usage,
            usage: Usage::default(),
            tool_blocks: Vec::new(),
            finish_sent: false,
            closed: false,
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Bytes {
        sse_data(&json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }))
    }

    pub(super) fn event(&mut self, name: Option<&str>, data: &str, out: &mut Vec<Bytes>) {
        if self.closed {
            return;
        }
        let Ok(event) = serde_json::from_str::<Value>(data) else {
            return;
        };
        // The data's own `type` is authoritative; the `event:` line only repeats it.
        match str_at(&event, "type").or(name).unwrap_or("") {
            "message_start" => {
                let message = event.get("message");
                if let Some(id) = message.and_then(|m| str_at(m, "id")) {
                    self.id = id.to_owned();
                }
                if let Some(usage) = message.and_then(|m| m.get("usage")) {
                    self.usage.merge_anthropic(usage);
                }
                out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
            }
            "content_block_start" => self.block_start(&event, out),
            "content_block_delta" => self.block_delta(&event, out),
            "message_delta" => {
                if let Some(usage) = event.get("usage") {
                    self.usage.merge_anthropic(usage);
                }
                let stop = event.get("delta").and_then(|d| str_at(d, "stop_reason"));
                self.send_finish(finish_reason(stop), out);
            }
            "message_stop" => self.close(out),
            "error" => {
                let error = event.get("error");
                let kind = error.and_then(|e| str_at(e, "type")).unwrap_or("api_error");
                let message = error
                    .and_then(|e| str_at(e, "message"))
                    .unwrap_or("the provider reported an error mid-stream");
                out.push(sse_data(&openai_error(kind, message)));
                self.closed = true;
            }
            _ => {}
        }
    }

    fn block_start(&mut self, event: &Value, out: &mut Vec<Bytes>) {
        let Some(block) = event.get("content_block") else {
            return;
        };
        match str_at(block, "type") {
            Some("text") => {
                if let Some(text) = str_at(block, "text").filter(|t| !t.is_empty()) {
                    out.push(self.chunk(json!({"content": text}), None));
                }
            }
            Some("tool_use") => {
                let index = self.tool_blocks.len();
                self.tool_blocks
                    .push(event.get("index").and_then(Value::as_u64).unwrap_or(0));
                // Anthropic starts tool inputs as `{}` and streams them; anything else is whole.
                let arguments = block
                    .get("input")
                    .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                    .map_or_else(String::new, Value::to_string);
                out.push(self.chunk(
                    json!({"tool_calls": [{
                        "index": index,
                        "id": str_at(block, "id").unwrap_or(""),
                        "type": "function",
                        "function": {"name": str_at(block, "name").unwrap_or(""), "arguments": arguments},
                    }]}),
                    None,
                ));
            }
            _ => {}
        }
    }

    fn block_delta(&mut self, event: &Value, out: &mut Vec<Bytes>) {
        let Some(delta) = event.get("delta") else {
            return;
        };
        match str_at(delta, "type") {
            Some("text_delta") => {
                if let Some(text) = str_at(delta, "text").filter(|t| !t.is_empty()) {
                    out.push(self.chunk(json!({"content": text}), None));
                }
            }
            Some("input_json_delta") => {
                let block = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                let Some(index) = self.tool_blocks.iter().position(|b| *b == block) else {
                    return;
                };
                if let Some(json) = str_at(delta, "partial_json").filter(|j| !j.is_empty()) {
                    out.push(self.chunk(
                        json!({"tool_calls": [{"index": index, "function": {"arguments": json}}]}),
                        None,
                    ));
                }
            }
            _ => {}
        }
    }

    fn send_finish(&mut self, reason: &str, out: &mut Vec<Bytes>) {
        if !self.finish_sent {
            out.push(self.chunk(json!({}), Some(reason)));
            self.finish_sent = true;
        }
    }

    fn close(&mut self, out: &mut Vec<Bytes>) {
        if self.closed {
            return;
        }
        if self.include_usage {
            out.push(sse_data(&json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self.usage.to_openai(),
            })));
        }
        out.push(Bytes::from_static(SSE_DONE));
        self.closed = true;
    }

    pub(super) fn finish(&mut self, out: &mut Vec<Bytes>) {
        if self.closed {
            return;
        }
        // The caller judged the stream complete without a `message_delta`: the client still
        // needs a finish reason before `[DONE]`.
        self.send_finish("stop", out);
        self.close(out);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse_out, response as translate_response};
    use super::super::{Direction, Stream as ClientStream, TranslateError};
    use serde_json::{json, Value};

    fn req(body: Value) -> Result<Value, TranslateError> {
        super::super::test_request(Direction::ChatToMessages, &body, "claude-x")
    }

    fn resp(status: u16, body: Value) -> Value {
        super::super::test_response(Direction::ChatToMessages, status, &body, "gpt-client")
    }

    #[test]
    fn system_user_and_parameters() {
        let out = req(json!({
            "model": "gpt-4o", "temperature": 0.5, "top_p": 0.9, "stream": true, "stop": "END",
            "user": "u-1", "frequency_penalty": 1, "stream_options": {"include_usage": true},
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use English."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg", "detail": "high"}},
                ]},
            ],
        }))
        .unwrap();
        assert_eq!(
            out,
            json!({
                "model": "claude-x", "system": "Be brief.\n\nUse English.", "max_tokens": 4096,
                "temperature": 0.5, "top_p": 0.9, "stream": true, "stop_sequences": ["END"],
                "metadata": {"user_id": "u-1"},
                "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
                ]}],
            })
        );
    }

    #[test]
    fn max_tokens_and_stop_variants() {
        let base = |extra: Value| {
            let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            req(body)
        };
        assert_eq!(base(json!({})).unwrap()["max_tokens"], 4096);
        assert_eq!(base(json!({"max_tokens": 10})).unwrap()["max_tokens"], 10);
        assert_eq!(
            base(json!({"max_tokens": 10, "max_completion_tokens": 20})).unwrap()["max_tokens"],
            20
        );
        assert!(base(json!({"max_tokens": -1})).is_err());
        assert_eq!(
            base(json!({"stop": ["a", "b"]})).unwrap()["stop_sequences"],
            json!(["a", "b"])
        );
        assert_eq!(
            base(json!({"n": 2})),
            Err(TranslateError::Invalid(
                "n > 1 is not supported by this provider".into()
            ))
        );
        assert!(base(json!({"n": 1})).is_ok());
        assert!(req(json!({"messages": "hi"})).is_err());
    }

    #[test]
    fn tools_and_tool_choice() {
        let tools = json!([
            {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "now"}},
        ]);
        let with = |choice: Value, parallel: Value| {
            req(
                json!({"messages": [{"role": "user", "content": "hi"}], "tools": tools,
                "tool_choice": choice, "parallel_tool_calls": parallel}),
            )
        };
        let out = with(json!("auto"), Value::Null).unwrap();
        assert_eq!(
            out["tools"],
            json!([
                {"name": "get_weather", "description": "Weather",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                {"name": "now", "input_schema": {"type": "object", "properties": {}}},
            ])
        );
        assert_eq!(out["tool_choice"], json!({"type": "auto"}));
        assert_eq!(
            with(json!("required"), Value::Null).unwrap()["tool_choice"],
            json!({"type": "any"})
        );
        assert_eq!(
            with(json!("none"), json!(false)).unwrap()["tool_choice"],
            json!({"type": "none"})
        );
        assert_eq!(
            with(
                json!({"type": "function", "function": {"name": "now"}}),
                json!(false)
            )
            .unwrap()["tool_choice"],
            json!({"type": "tool", "name": "now", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            with(Value::Null, json!(false)).unwrap()["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        assert!(with(json!("sometimes"), Value::Null).is_err());
        let no_tools =
            req(json!({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "none"}));
        assert!(no_tools.unwrap().get("tool_choice").is_none());
    }

    #[test]
    fn tool_calls_and_results_in_history() {
        let out = req(json!({"messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": null, "tool_calls": []},
        ]}))
        .unwrap();
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "now", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "noon"},
                    {"type": "text", "text": "Thanks"},
                ]},
            ])
        );
        let bad = req(json!({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]}));
        assert!(matches!(bad, Err(TranslateError::Invalid(m)) if m.contains("`c`")));
        assert!(req(json!({"messages": [{"role": "function", "content": "x"}]})).is_err());
        assert!(
            req(json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}))
                .is_err()
        );
    }

    #[test]
    fn response_with_text_tool_call_and_usage() {
        let out = resp(
            200,
            json!({
                "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 7},
            }),
        );
        assert_eq!(out["id"], "msg_01");
        assert_eq!(out["object"], "chat.completion");
        assert_eq!(out["model"], "gpt-client");
        assert!(out["created"].as_u64().unwrap() > 1_600_000_000);
        assert_eq!(
            out["choices"],
            json!([{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Let me check.",
                "tool_calls": [{"id": "toolu_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}],
            }}])
        );
        assert_eq!(
            out["usage"],
            json!({"prompt_tokens": 117, "completion_tokens": 5, "total_tokens": 122,
            "prompt_tokens_details": {"cached_tokens": 100}})
        );
    }

    #[test]
    fn response_stop_reasons() {
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("pause_turn", "stop"),
        ] {
            let out = resp(200, json!({"id": "m", "content": [], "stop_reason": stop}));
            assert_eq!(out["choices"][0]["finish_reason"], finish, "{stop}");
            assert_eq!(
                out["choices"][0]["message"],
                json!({"role": "assistant", "content": null})
            );
        }
        let out = resp(
            200,
            json!({"id": "m", "content": [{"type": "text", "text": "x"}], "stop_reason": null}),
        );
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn error_bodies() {
        let out = resp(
            429,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}),
        );
        assert_eq!(
            out,
            json!({"error": {"message": "slow down", "type": "rate_limit_error", "code": null, "param": null}})
        );
        let out = resp(
            529,
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        );
        assert_eq!(out["error"]["type"], "overloaded_error");
        let out = resp(
            200,
            json!({"type": "error", "error": {"type": "api_error", "message": "boom"}}),
        );
        assert_eq!(out["error"]["message"], "boom");
        let raw = translate_response(Direction::ChatToMessages, 500, b"upstream exploded", "m");
        let out: Value = serde_json::from_slice(&raw).unwrap();
        assert!(out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("HTTP 500"));
    }

    fn ev(name: &str, data: Value) -> Vec<u8> {
        format!("event: {name}\ndata: {data}\n\n").into_bytes()
    }

    fn run(include_usage: bool, frames: &[Vec<u8>]) -> (ClientStream, Vec<Value>) {
        let mut stream = ClientStream::new(Direction::ChatToMessages, "gpt-client", include_usage);
        let mut out = Vec::new();
        for frame in frames {
            stream.frame(frame, &mut out);
        }
        (
            stream,
            parse_out(&out)
                .into_iter()
                .map(|(name, data)| {
                    assert_eq!(name, None);
                    data
                })
                .collect(),
        )
    }

    fn message_start() -> Vec<u8> {
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_9", "type": "message",
            "role": "assistant", "model": "claude-x", "content": [], "stop_reason": null,
            "usage": {"input_tokens": 12, "output_tokens": 1, "cache_read_input_tokens": 40, "cache_creation_input_tokens": 3}}}),
        )
    }

    fn text_delta(text: &str) -> Vec<u8> {
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": text}}),
        )
    }

    fn message_end(stop: &str) -> Vec<Vec<u8>> {
        vec![
            ev(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
                "usage": {"output_tokens": 9}}),
            ),
            ev("message_stop", json!({"type": "message_stop"})),
        ]
    }

    #[test]
    fn text_stream() {
        let mut frames = vec![
            b": hello\n\n".to_vec(),
            message_start(),
            ev("ping", json!({"type": "ping"})),
            ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ),
            text_delta("Hel"),
            b"data: {not json\n\n".to_vec(),
            text_delta("lo!"),
            ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
        ];
        frames.extend(message_end("end_turn"));
        let (mut stream, out) = run(true, &frames);
        assert_eq!(out.len(), 6);
        for chunk in &out[..5] {
            assert_eq!(chunk["id"], "msg_9");
            assert_eq!(chunk["model"], "gpt-client");
            assert_eq!(chunk["object"], "chat.completion.chunk");
        }
        assert_eq!(
            out[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        let text: String = out[1..3]
            .iter()
            .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(text, "Hello!");
        assert_eq!(
            out[3]["choices"][0],
            json!({"index": 0, "delta": {}, "finish_reason": "stop"})
        );
        assert_eq!(out[4]["choices"], json!([]));
        assert_eq!(
            out[4]["usage"],
            json!({"prompt_tokens": 55, "completion_tokens": 9, "total_tokens": 64,
            "prompt_tokens_details": {"cached_tokens": 40}})
        );
        assert_eq!(out[5], "[DONE]");
        let mut more = Vec::new();
        stream.finish(true, &mut more);
        assert!(more.is_empty());
    }

    #[test]
    fn tool_stream_with_crlf() {
        let mut frames = vec![
            message_start(),
            ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ),
            text_delta("Checking."),
            ev(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
            ),
        ];
        for part in ["", "{\"city\"", ": \"Par", "is\"}"] {
            frames.push(ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": part}}),
            ));
        }
        frames.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ));
        frames.extend(message_end("tool_use"));
        let crlf: Vec<Vec<u8>> = frames
            .iter()
            .map(|f| {
                String::from_utf8(f.clone())
                    .unwrap()
                    .replace('\n', "\r\n")
                    .into_bytes()
            })
            .collect();
        let (_, out) = run(false, &crlf);
        let deltas: Vec<&Value> = out[..out.len() - 1]
            .iter()
            .map(|c| &c["choices"][0]["delta"])
            .collect();
        assert_eq!(deltas[0]["role"], "assistant");
        assert_eq!(deltas[1]["content"], "Checking.");
        assert_eq!(
            deltas[2],
            &json!({"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}]})
        );
        let arguments: String = deltas[3..6]
            .iter()
            .map(|d| {
                assert_eq!(d["tool_calls"][0]["index"], 0);
                d["tool_calls"][0]["function"]["arguments"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(arguments, "{\"city\": \"Paris\"}");
        assert_eq!(out[6]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(out.len(), 8);
        assert_eq!(out[7], "[DONE]");
    }

    #[test]
    fn stream_error_and_incomplete_endings() {
        let error = ev(
            "error",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        );
        let (mut stream, out) = run(true, &[message_start(), text_delta("a"), error]);
        assert_eq!(
            out[2],
            json!({"error": {"message": "Overloaded", "type": "overloaded_error", "code": null, "param": null}})
        );
        let mut more = Vec::new();
        stream.finish(true, &mut more);
        assert!(more.is_empty());

        let (mut stream, _) = run(true, &[message_start(), text_delta("a")]);
        stream.finish(false, &mut more);
        assert!(more.is_empty());
        // Judged complete without message_delta/message_stop: the client still gets a proper end.
        stream.finish(true, &mut more);
        let tail: Vec<Value> = parse_out(&more).into_iter().map(|(_, d)| d).collect();
        assert_eq!(tail[0]["choices"][0]["finish_reason"], "stop");
        assert_eq!(tail[1]["usage"]["prompt_tokens"], 55);
        assert_eq!(tail[2], "[DONE]");
        more.clear();
        stream.finish(true, &mut more);
        assert!(more.is_empty());
    }
}
