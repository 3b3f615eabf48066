//! An Anthropic Messages client served by an OpenAI Chat Completions provider (vLLM,
//! llama.cpp, OpenAI).
//!
//! The request goes Anthropic → OpenAI; the response, error bodies and stream chunks come back
//! OpenAI → Anthropic. The stream is the delicate part: Anthropic clients expect explicitly
//! opened and closed content blocks with their own indices, while OpenAI only sends deltas, so
//! this side keeps track of which block is open and emits the starts and stops itself.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::{
    anthropic_error, copy_fields, error_type_for_status, fresh_id, into_map, invalid,
    provider_message, sse_event, str_at, unreadable_message, TranslateError, Usage,
};

pub(super) fn request(
    body: &Map<String, Value>,
    model: &str,
) -> Result<Map<String, Value>, TranslateError> {
    let mut messages = Vec::new();
    if let Some(system) = body.get("system") {
        let text = match system {
            Value::String(s) => s.clone(),
            Value::Array(blocks) => block_texts(blocks, "system")?.join("\n\n"),
            Value::Null => String::new(),
            _ => {
                return Err(invalid(
                    "`system` must be a string or an array of text blocks",
                ))
            }
        };
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    let turns = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("`messages` must be an array"))?;
    for (i, turn) in turns.iter().enumerate() {
        match str_at(turn, "role") {
            Some("user") => user(turn.get("content"), i, &mut messages)?,
            Some("assistant") => messages.push(assistant(turn.get("content"), i)?),
            _ => {
                return Err(invalid(format!(
                    "messages[{i}].role must be `user` or `assistant`"
                )))
            }
        }
    }

    let mut out = Map::new();
    out.insert("model".into(), model.into());
    out.insert("messages".into(), messages.into());
    copy_fields(
        body,
        &mut out,
        &["max_tokens", "temperature", "top_p", "stream"],
    );
    let stops = body.get("stop_sequences").and_then(Value::as_array);
    if let Some(stops) = stops.filter(|s| !s.is_empty()) {
        out.insert("stop".into(), stops.clone().into());
    }
    if let Some(user) = body.get("metadata").and_then(|m| str_at(m, "user_id")) {
        out.insert("user".into(), user.into());
    }
    if body.get("stream") == Some(&Value::Bool(true)) {
        // Without this OpenAI-compatible servers send no usage at all in a stream.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    add_tools(body, &mut out)?;
    Ok(out)
}

/// The texts of blocks that may only be text (the system prompt, tool results).
fn block_texts(blocks: &[Value], what: &str) -> Result<Vec<String>, TranslateError> {
    blocks
        .iter()
        .map(|block| match str_at(block, "type") {
            Some("text") => Ok(str_at(block, "text").unwrap_or("").to_owned()),
            other => Err(unsupported_block(other, what)),
        })
        .collect()
}

fn unsupported_block(kind: Option<&str>, what: &str) -> TranslateError {
    let kind = kind.unwrap_or("(none)");
    invalid(format!(
        "{what} has a content block of type `{kind}`, which this provider does not support"
    ))
}

fn image_part(block: &Value, what: &str) -> Result<Value, TranslateError> {
    let source = block.get("source");
    let url = match source.and_then(|s| str_at(s, "type")) {
        Some("base64") => {
            let source = source.unwrap_or(&Value::Null);
            let media_type = str_at(source, "media_type").unwrap_or("image/png");
            format!(
                "data:{media_type};base64,{}",
                str_at(source, "data").unwrap_or("")
            )
        }
        Some("url") => source
            .and_then(|s| str_at(s, "url"))
            .ok_or_else(|| invalid(format!("{what} has an image with no url")))?
            .to_owned(),
        _ => {
            return Err(invalid(format!(
                "{what} has an image source this provider does not support"
            )))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// One Anthropic user turn becomes OpenAI `tool` messages (one per result, which OpenAI wants
/// right after the assistant's calls) followed by a user message for everything else.
fn user(
    content: Option<&Value>,
    i: usize,
    messages: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    let blocks = match content {
        Some(Value::String(text)) => {
            messages.push(json!({"role": "user", "content": text}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(invalid(format!(
                "messages[{i}].content must be a string or an array"
            )))
        }
    };
    let what = format!("messages[{i}]");
    let mut parts = Vec::new();
    for block in blocks {
        match str_at(block, "type") {
            Some("text") => {
                parts.push(json!({"type": "text", "text": str_at(block, "text").unwrap_or("")}))
            }
            Some("image") => parts.push(image_part(block, &what)?),
            Some("tool_result") => {
                let id = str_at(block, "tool_use_id").ok_or_else(|| {
                    invalid(format!("{what} has a tool_result without `tool_use_id`"))
                })?;
                let text = match block.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(inner)) => {
                        let mut texts = Vec::new();
                        for b in inner {
                            match str_at(b, "type") {
                                Some("text") => texts.push(str_at(b, "text").unwrap_or("")),
                                // OpenAI tool messages carry text only, so a screenshot or
                                // other image a tool returned rides along in the user message.
                                Some("image") => parts.push(image_part(b, &what)?),
                                other => return Err(unsupported_block(other, &what)),
                            }
                        }
                        texts.join("\n")
                    }
                    _ => String::new(),
                };
                messages.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            other => return Err(unsupported_block(other, &what)),
        }
    }
    match parts.as_slice() {
        [] => {}
        [only] if str_at(only, "type") == Some("text") => {
            messages.push(json!({"role": "user", "content": str_at(only, "text").unwrap_or("")}));
        }
        _ => messages.push(json!({"role": "user", "content": parts})),
    }
    Ok(())
}

fn assistant(content: Option<&Value>, i: usize) -> Result<Value, TranslateError> {
    let blocks = match content {
        Some(Value::String(text)) => return Ok(json!({"role": "assistant", "content": text})),
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(invalid(format!(
                "messages[{i}].content must be a string or an array"
            )))
        }
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in blocks {
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
            // Thinking is the provider's own and cannot be replayed to another model.
            Some("thinking" | "redacted_thinking") => {}
            other => return Err(unsupported_block(other, &format!("messages[{i}]"))),
        }
    }
    let mut message = into_map(json!({"role": "assistant"}));
    // OpenAI needs content unless there are tool calls, and `null` is the documented value then.
    let content = match (text.is_empty(), calls.is_empty()) {
        (true, false) => Value::Null,
        _ => text.into(),
    };
    message.insert("content".into(), content);
    if !calls.is_empty() {
        message.insert("tool_calls".into(), calls.into());
    }
    Ok(Value::Object(message))
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
        // OpenAI rejects tool_choice without tools.
        return Ok(());
    };
    let mut translated = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        // Typed tools other than `custom` are Anthropic-hosted (web search, bash, ...) and
        // cannot run on another provider.
        if let Some(kind) = str_at(tool, "type").filter(|k| *k != "custom") {
            return Err(invalid(format!(
                "tools[{i}] has type `{kind}`, which this provider does not support"
            )));
        }
        let name =
            str_at(tool, "name").ok_or_else(|| invalid(format!("tools[{i}] has no name")))?;
        let mut function = Map::new();
        function.insert("name".into(), name.into());
        if let Some(description) = str_at(tool, "description") {
            function.insert("description".into(), description.into());
        }
        let schema = tool
            .get("input_schema")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        function.insert("parameters".into(), schema);
        translated.push(json!({"type": "function", "function": function}));
    }
    out.insert("tools".into(), translated.into());

    let Some(choice) = body.get("tool_choice").filter(|c| !c.is_null()) else {
        return Ok(());
    };
    let translated = match str_at(choice, "type") {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => {
            let name =
                str_at(choice, "name").ok_or_else(|| invalid("tool_choice `tool` needs a name"))?;
            json!({"type": "function", "function": {"name": name}})
        }
        _ => return Err(invalid("unsupported tool_choice")),
    };
    out.insert("tool_choice".into(), translated);
    if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
        out.insert("parallel_tool_calls".into(), false.into());
    }
    Ok(())
}

pub(super) fn response(status: u16, body: &[u8], client_model: &str) -> Value {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    match parsed {
        Some(completion)
            if (200..300).contains(&status)
                && completion.get("error").is_none_or(Value::is_null)
                && completion.get("choices").is_some_and(Value::is_array) =>
        {
            message(&completion, client_model)
        }
        parsed => {
            let message = provider_message(parsed.as_ref())
                .unwrap_or_else(|| unreadable_message(status, body));
            anthropic_error(error_type_for_status(status), &message)
        }
    }
}

fn message_id(id: Option<&str>) -> String {
    match id {
        Some(id) if id.starts_with("msg_") => id.to_owned(),
        Some(id) => format!("msg_{id}"),
        None => fresh_id("msg_"),
    }
}

/// OpenAI reports `stop` when a named `tool_choice` forced the call; Anthropic clients decide
/// whether to run tools from `tool_use`, so calls present override it.
fn stop_reason(finish_reason: Option<&str>, has_tool_calls: bool) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        _ if has_tool_calls => "tool_use",
        _ => "end_turn",
    }
}

fn message(completion: &Value, client_model: &str) -> Value {
    let choice = completion.get("choices").and_then(|c| c.get(0));
    let message = choice.and_then(|c| c.get("message"));
    let mut content = Vec::new();
    let text = match message.and_then(|m| m.get("content")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts.iter().filter_map(|p| str_at(p, "text")).collect(),
        _ => String::new(),
    };
    if !text.is_empty() {
        content.push(json!({"type": "text", "text": text}));
    }
    let calls = message
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array);
    for call in calls.into_iter().flatten() {
        let function = call.get("function");
        let input = function
            .and_then(|f| str_at(f, "arguments"))
            .and_then(|a| serde_json::from_str::<Value>(a).ok())
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        content.push(json!({
            "type": "tool_use",
            "id": str_at(call, "id").map_or_else(|| fresh_id("toolu_"), str::to_owned),
            "name": function.and_then(|f| str_at(f, "name")).unwrap_or(""),
            "input": input,
        }));
    }
    let has_tools = content.len() > usize::from(!text.is_empty());
    let finish = choice.and_then(|c| str_at(c, "finish_reason"));
    let usage = completion
        .get("usage")
        .map(Usage::from_openai)
        .unwrap_or_default();
    json!({
        "id": message_id(str_at(completion, "id")),
        "type": "message",
        "role": "assistant",
        "model": client_model,
        "content": content,
        "stop_reason": stop_reason(finish, has_tools),
        "stop_sequence": null,
        "usage": usage.to_anthropic(),
    })
}

/// The content block currently open on the client's side.
#[derive(Debug)]
enum Open {
    None,
    Text {
        index: usize,
    },
    Tool {
        call: u64,
        id: String,
        index: usize,
    },
    /// A tool call whose name has not arrived yet: Anthropic's `content_block_start` must carry
    /// the name, so its start and arguments wait for it.
    Pending {
        call: u64,
        id: String,
        arguments: String,
    },
}

/// OpenAI chunks in, Anthropic events out.
#[derive(Debug)]
pub(super) struct Stream {
    model: String,
    id: Option<String>,
    started: bool,
    /// `message_stop` went out, or an error did: nothing more may follow either.
    ended: bool,
    open: Open,
    next_index: usize,
    /// OpenAI tool-call indices already opened, so a call is never started twice.
    calls_seen: Vec<u64>,
    stop_reason: Option<&'static str>,
    usage: Usage,
}

impl Stream {
    pub(super) fn new(client_model: &str) -> Stream {
        Stream {
            model: client_model.to_owned(),
            id: None,
            started: false,
            ended: false,
            open: Open::None,
            next_index: 0,
            calls_seen: Vec::new(),
            stop_reason: None,
            usage: Usage::default(),
        }
    }

    pub(super) fn event(&mut self, data: &str, out: &mut Vec<Bytes>) {
        if self.ended {
            return;
        }
        if data.trim() == "[DONE]" {
            self.end(out);
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return;
        };
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            let message = provider_message(Some(&chunk))
                .or_else(|| error.as_str().map(str::to_owned))
                .unwrap_or_else(|| "the provider reported an error mid-stream".to_owned());
            out.push(sse_event("error", &anthropic_error("api_error", &message)));
            self.ended = true;
            return;
        }
        if self.id.is_none() {
            self.id = Some(message_id(str_at(&chunk, "id")));
        }
        self.start(out);
        let choice = chunk.get("choices").and_then(|c| c.get(0));
        let delta = choice.and_then(|c| c.get("delta"));
        if let Some(text) = delta
            .and_then(|d| str_at(d, "content"))
            .filter(|t| !t.is_empty())
        {
            self.text(text, out);
        }
        let calls = delta
            .and_then(|d| d.get("tool_calls"))
            .and_then(Value::as_array);
        for call in calls.into_iter().flatten() {
            self.tool_call(call, out);
        }
        if let Some(finish) = choice.and_then(|c| str_at(c, "finish_reason")) {
            self.close(out);
            self.stop_reason = Some(stop_reason(Some(finish), !self.calls_seen.is_empty()));
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Usage::from_openai(usage);
            // OpenAI's usage-only chunk is the last before `[DONE]`; waiting for `[DONE]`
            // would only delay the client.
            if chunk
                .get("choices")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty)
            {
                self.end(out);
            }
        }
    }

    fn send(&self, kind: &str, data: Value, out: &mut Vec<Bytes>) {
        out.push(sse_event(kind, &data));
    }

    fn start(&mut self, out: &mut Vec<Bytes>) {
        if self.started {
            return;
        }
        self.started = true;
        let id = self.id.get_or_insert_with(|| fresh_id("msg_")).clone();
        self.send(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
            out,
        );
    }

    fn open_block(&mut self, block: Value, out: &mut Vec<Bytes>) -> usize {
        let index = self.next_index;
        self.next_index += 1;
        self.send(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
            out,
        );
        index
    }

    fn delta(&self, index: usize, delta: Value, out: &mut Vec<Bytes>) {
        self.send(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
            out,
        );
    }

    fn text(&mut self, text: &str, out: &mut Vec<Bytes>) {
        let index = match self.open {
            Open::Text { index } => index,
            _ => {
                self.close(out);
                let index = self.open_block(json!({"type": "text", "text": ""}), out);
                self.open = Open::Text { index };
                index
            }
        };
        self.delta(index, json!({"type": "text_delta", "text": text}), out);
    }

    fn tool_call(&mut self, call: &Value, out: &mut Vec<Bytes>) {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let new_id = str_at(call, "id").filter(|id| !id.is_empty());
        let function = call.get("function");
        let arguments = function.and_then(|f| str_at(f, "arguments")).unwrap_or("");
        // Some providers number every call 0 (or not at all) and tell calls apart only by id.
        let continues = |open: u64, id: &str| {
            open == index && (id.is_empty() || new_id.is_none_or(|new| new == id))
        };
        match &mut self.open {
            Open::Tool {
                call,
                id,
                index: block,
            } if continues(*call, id) => {
                let block = *block;
                if !arguments.is_empty() {
                    self.delta(
                        block,
                        json!({"type": "input_json_delta", "partial_json": arguments}),
                        out,
                    );
                }
                return;
            }
            Open::Pending {
                call,
                id,
                arguments: buffered,
            } if continues(*call, id) => {
                buffered.push_str(arguments);
                if id.is_empty() {
                    *id = new_id.unwrap_or("").to_owned();
                }
            }
            _ => {
                // Providers stream calls one after another; a fragment for a call already
                // closed cannot be put back into a finished block, so it is dropped.
                if new_id.is_none() && self.calls_seen.contains(&index) {
                    return;
                }
                self.close(out);
                self.calls_seen.push(index);
                self.open = Open::Pending {
                    call: index,
                    id: new_id.unwrap_or("").to_owned(),
                    arguments: arguments.to_owned(),
                };
            }
        }
        if let Some(name) = function
            .and_then(|f| str_at(f, "name"))
            .filter(|n| !n.is_empty())
        {
            self.start_tool(name, out);
        }
    }

    /// Opens the pending tool call's block and sends the arguments that waited for its name.
    fn start_tool(&mut self, name: &str, out: &mut Vec<Bytes>) {
        let Open::Pending {
            call,
            id,
            arguments,
        } = std::mem::replace(&mut self.open, Open::None)
        else {
            return;
        };
        let id = if id.is_empty() {
            fresh_id("toolu_")
        } else {
            id
        };
        let index = self.open_block(
            json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
            out,
        );
        if !arguments.is_empty() {
            self.delta(
                index,
                json!({"type": "input_json_delta", "partial_json": arguments}),
                out,
            );
        }
        self.open = Open::Tool { call, id, index };
    }

    fn close(&mut self, out: &mut Vec<Bytes>) {
        if let Open::Pending { .. } = self.open {
            // The name never came; the call and its arguments still must reach the client.
            self.start_tool("", out);
        }
        let index = match std::mem::replace(&mut self.open, Open::None) {
            Open::Text { index } | Open::Tool { index, .. } => index,
            Open::None | Open::Pending { .. } => return,
        };
        self.send(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
            out,
        );
    }

    fn end(&mut self, out: &mut Vec<Bytes>) {
        if self.ended {
            return;
        }
        self.start(out);
        self.close(out);
        let stop_reason = self
            .stop_reason
            .unwrap_or_else(|| stop_reason(None, !self.calls_seen.is_empty()));
        self.send(
            "message_delta",
            json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                "usage": self.usage.to_anthropic()}),
            out,
        );
        self.send("message_stop", json!({"type": "message_stop"}), out);
        self.ended = true;
    }

    pub(super) fn finish(&mut self, out: &mut Vec<Bytes>) {
        self.end(out);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse_out, response as translate_response};
    use super::super::{Direction, Stream as ClientStream, TranslateError};
    use serde_json::{json, Value};

    fn req(body: Value) -> Result<Value, TranslateError> {
        super::super::test_request(Direction::MessagesToChat, &body, "qwen")
    }

    fn resp(status: u16, body: Value) -> Value {
        super::super::test_response(Direction::MessagesToChat, status, &body, "claude-client")
    }

    #[test]
    fn system_user_and_parameters() {
        let out = req(json!({
            "model": "claude-client", "max_tokens": 100, "temperature": 0.2, "top_p": 0.8, "top_k": 5,
            "stream": true, "stop_sequences": ["END"], "metadata": {"user_id": "u-1"},
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Use English."}],
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"}},
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                ]},
                {"role": "user", "content": [{"type": "text", "text": "Just text"}]},
            ],
        }))
        .unwrap();
        assert_eq!(
            out,
            json!({
                "model": "qwen", "max_tokens": 100, "temperature": 0.2, "top_p": 0.8, "stream": true,
                "stream_options": {"include_usage": true}, "stop": ["END"], "user": "u-1",
                "messages": [
                    {"role": "system", "content": "Be brief.\n\nUse English."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}},
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                    ]},
                    {"role": "user", "content": "Just text"},
                ],
            })
        );
        let plain = req(
            json!({"max_tokens": 5, "system": "S", "messages": [{"role": "user", "content": "x"}]}),
        )
        .unwrap();
        assert_eq!(
            plain["messages"][0],
            json!({"role": "system", "content": "S"})
        );
        assert!(plain.get("stream_options").is_none());
        assert!(req(json!({"messages": [{"role": "system", "content": "x"}]})).is_err());
        assert!(
            req(json!({"messages": [{"role": "user", "content": [{"type": "document"}]}]}))
                .is_err()
        );
    }

    #[test]
    fn tools_and_tool_choice() {
        let tools = json!([
            {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
            {"type": "custom", "name": "now", "input_schema": {"type": "object"}},
        ]);
        let with = |choice: Value| {
            req(
                json!({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
            "tools": tools, "tool_choice": choice}),
            )
        };
        let out = with(json!({"type": "auto"})).unwrap();
        assert_eq!(
            out["tools"],
            json!([
                {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}},
            ])
        );
        assert_eq!(out["tool_choice"], "auto");
        assert!(out.get("parallel_tool_calls").is_none());
        assert_eq!(
            with(json!({"type": "any"})).unwrap()["tool_choice"],
            "required"
        );
        assert_eq!(
            with(json!({"type": "none"})).unwrap()["tool_choice"],
            "none"
        );
        let forced =
            with(json!({"type": "tool", "name": "now", "disable_parallel_tool_use": true}))
                .unwrap();
        assert_eq!(
            forced["tool_choice"],
            json!({"type": "function", "function": {"name": "now"}})
        );
        assert_eq!(forced["parallel_tool_calls"], false);
        assert!(with(json!({"type": "sometimes"})).is_err());
        let hosted = req(
            json!({"messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
        );
        assert!(hosted.is_err());
    }

    #[test]
    fn tool_calls_and_results_in_history() {
        let out = req(json!({"max_tokens": 5, "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "screenshot", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": false, "content": [
                    {"type": "text", "text": "taken"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}},
                ]},
                {"type": "text", "text": "Thanks"},
            ]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_3", "name": "now", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_3"}]},
        ]}))
        .unwrap();
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_2", "type": "function", "function": {"name": "screenshot", "arguments": "{}"}},
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": "taken"},
                {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
                    {"type": "text", "text": "Thanks"},
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "toolu_3", "type": "function", "function": {"name": "now", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "toolu_3", "content": ""},
            ])
        );
    }

    #[test]
    fn response_with_text_tool_call_and_usage() {
        let out = resp(
            200,
            json!({
                "id": "chatcmpl-7", "object": "chat.completion", "created": 1, "model": "qwen",
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": "Let me check.",
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                        {"id": "call_2", "type": "function", "function": {"name": "broken", "arguments": "{oops"}},
                    ]}}],
                "usage": {"prompt_tokens": 120, "completion_tokens": 8, "total_tokens": 128,
                    "prompt_tokens_details": {"cached_tokens": 100}},
            }),
        );
        assert_eq!(
            out,
            json!({
                "id": "msg_chatcmpl-7", "type": "message", "role": "assistant", "model": "claude-client",
                "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "broken", "input": {}},
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 20, "output_tokens": 8, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 0},
            })
        );
    }

    #[test]
    fn response_stop_reasons() {
        let call =
            json!([{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]);
        for (finish, calls, stop) in [
            ("stop", Value::Null, "end_turn"),
            ("length", Value::Null, "max_tokens"),
            ("tool_calls", call.clone(), "tool_use"),
            ("function_call", Value::Null, "tool_use"),
            ("content_filter", Value::Null, "end_turn"),
            ("stop", call, "tool_use"),
        ] {
            let out = resp(
                200,
                json!({"id": "msg_1", "choices": [{"index": 0, "finish_reason": finish,
                "message": {"role": "assistant", "content": null, "tool_calls": calls}}]}),
            );
            assert_eq!(out["stop_reason"], stop, "{finish}");
            assert_eq!(out["id"], "msg_1");
        }
    }

    #[test]
    fn error_bodies() {
        let out = resp(
            400,
            json!({"error": {"message": "bad thing", "type": "invalid_request_error", "code": null, "param": "x"}}),
        );
        assert_eq!(
            out,
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "bad thing"}})
        );
        let out = resp(
            401,
            json!({"error": {"message": "no key", "type": "invalid_request_error", "code": "invalid_api_key"}}),
        );
        assert_eq!(out["error"]["type"], "authentication_error");
        let out = resp(
            500,
            json!({"error": {"code": 500, "message": "llama broke", "type": "server_error"}}),
        );
        assert_eq!(
            out["error"],
            json!({"type": "api_error", "message": "llama broke"})
        );
        assert_eq!(
            resp(422, json!({"detail": "bad field"}))["error"]["message"],
            "bad field"
        );
        let out = resp(200, json!({"error": "oops"}));
        assert_eq!(
            out["error"],
            json!({"type": "api_error", "message": "oops"})
        );
        let raw = translate_response(Direction::MessagesToChat, 200, b"not json", "m");
        let out: Value = serde_json::from_slice(&raw).unwrap();
        assert!(out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("HTTP 200"));
    }

    fn chunk(delta: Value, finish: Value) -> Vec<u8> {
        let body = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "qwen",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {body}\n\n").into_bytes()
    }

    fn usage_chunk() -> Vec<u8> {
        let body = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "qwen",
            "choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57,
                "prompt_tokens_details": {"cached_tokens": 32}}});
        format!("data: {body}\n\n").into_bytes()
    }

    fn run(stream: &mut ClientStream, frames: &[Vec<u8>]) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for frame in frames {
            stream.frame(frame, &mut out);
        }
        parse_out(&out)
            .into_iter()
            .map(|(name, data)| {
                let name = name.unwrap();
                assert_eq!(data["type"], name.as_str());
                (name, data)
            })
            .collect()
    }

    fn names(events: &[(String, Value)]) -> Vec<&str> {
        events.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn text_stream() {
        let mut stream = ClientStream::new(Direction::MessagesToChat, "claude-client", false);
        let frames = [
            b": ping\n\n".to_vec(),
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"content": "Hel"}), Value::Null),
            b"data: {broken\n\n".to_vec(),
            chunk(json!({"content": "lo!"}), Value::Null),
            chunk(json!({}), json!("stop")),
        ];
        let mut events = run(&mut stream, &frames);
        assert_eq!(
            names(&events),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop"
            ]
        );
        assert_eq!(
            events[0].1["message"],
            json!({"id": "msg_chatcmpl-1", "type": "message", "role": "assistant",
            "model": "claude-client", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0}})
        );
        assert_eq!(
            events[1].1["content_block"],
            json!({"type": "text", "text": ""})
        );
        let text: String = events[2..4]
            .iter()
            .map(|(_, d)| d["delta"]["text"].as_str().unwrap())
            .collect();
        assert_eq!(text, "Hello!");
        // The message_delta waits for the usage chunk, then goes out with message_stop at once.
        events = run(&mut stream, &[usage_chunk(), b"data: [DONE]\n\n".to_vec()]);
        assert_eq!(names(&events), ["message_delta", "message_stop"]);
        assert_eq!(
            events[0].1["delta"],
            json!({"stop_reason": "end_turn", "stop_sequence": null})
        );
        assert_eq!(
            events[0].1["usage"],
            json!({"input_tokens": 18, "output_tokens": 7,
            "cache_read_input_tokens": 32, "cache_creation_input_tokens": 0})
        );
        let mut more = Vec::new();
        stream.finish(true, &mut more);
        assert!(more.is_empty());
    }

    #[test]
    fn tool_stream_with_crlf() {
        let mut stream = ClientStream::new(Direction::MessagesToChat, "claude-client", false);
        let tc = |index: u64, id: Value, name: Value, args: &str| {
            json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                "function": {"name": name, "arguments": args}}]})
        };
        let frames: Vec<Vec<u8>> = [
            chunk(
                json!({"role": "assistant", "content": "Checking."}),
                Value::Null,
            ),
            chunk(
                tc(0, json!("call_a"), json!("get_weather"), ""),
                Value::Null,
            ),
            chunk(tc(0, Value::Null, Value::Null, "{\"city\":"), Value::Null),
            chunk(tc(0, Value::Null, Value::Null, "\"Paris\"}"), Value::Null),
            // A provider that sends the id first and the name later.
            chunk(tc(1, json!("call_b"), Value::Null, "{\"tz\""), Value::Null),
            chunk(tc(1, Value::Null, json!("now"), ":\"UTC\"}"), Value::Null),
            chunk(json!({}), json!("tool_calls")),
            b"data: [DONE]\n\n".to_vec(),
        ]
        .iter()
        .map(|f| {
            String::from_utf8(f.clone())
                .unwrap()
                .replace('\n', "\r\n")
                .into_bytes()
        })
        .collect();
        let events = run(&mut stream, &frames);
        assert_eq!(
            names(&events),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                // The fragment that came before the name is sent with the next one, right after the start.
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        let starts: Vec<&Value> = events
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, d)| d)
            .collect();
        assert_eq!(starts[0]["index"], 0);
        assert_eq!(starts[1]["index"], 1);
        assert_eq!(
            starts[1]["content_block"],
            json!({"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}})
        );
        assert_eq!(
            starts[2]["content_block"],
            json!({"type": "tool_use", "id": "call_b", "name": "now", "input": {}})
        );
        let arguments = |block: u64| -> String {
            events
                .iter()
                .filter(|(n, d)| n == "content_block_delta" && d["index"] == block)
                .map(|(_, d)| {
                    assert_eq!(d["delta"]["type"], "input_json_delta");
                    d["delta"]["partial_json"].as_str().unwrap()
                })
                .collect()
        };
        assert_eq!(arguments(1), "{\"city\":\"Paris\"}");
        assert_eq!(arguments(2), "{\"tz\":\"UTC\"}");
        assert_eq!(
            events[2].1["delta"],
            json!({"type": "text_delta", "text": "Checking."})
        );
        let stops: Vec<&Value> = events
            .iter()
            .filter(|(n, _)| n == "content_block_stop")
            .map(|(_, d)| &d["index"])
            .collect();
        assert_eq!(stops, [&json!(0), &json!(1), &json!(2)]);
        assert_eq!(events[11].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(events[11].1["usage"]["input_tokens"], 0);
    }

    #[test]
    fn stream_endings() {
        // Ended by finish(true) with neither usage nor [DONE] seen.
        let mut stream = ClientStream::new(Direction::MessagesToChat, "claude-client", false);
        let events = run(
            &mut stream,
            &[chunk(json!({"content": "a"}), json!("length"))],
        );
        assert_eq!(
            names(&events),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop"
            ]
        );
        let mut out = Vec::new();
        stream.finish(false, &mut out);
        assert!(out.is_empty());
        stream.finish(true, &mut out);
        let tail = parse_out(&out);
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[0].1["delta"]["stop_reason"], "max_tokens");
        assert_eq!(tail[1].0.as_deref(), Some("message_stop"));
        out.clear();
        stream.finish(true, &mut out);
        stream.frame(b"data: [DONE]\n\n", &mut out);
        assert!(out.is_empty());

        // A mid-stream error ends the stream; nothing follows it.
        let mut stream = ClientStream::new(Direction::MessagesToChat, "claude-client", false);
        let events = run(&mut stream, &[
            chunk(json!({"content": "a"}), Value::Null),
            b"data: {\"error\":{\"message\":\"context overflow\",\"type\":\"server_error\"}}\n\n".to_vec(),
            b"data: [DONE]\n\n".to_vec(),
        ]);
        assert_eq!(
            names(&events),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "error"
            ]
        );
        assert_eq!(
            events[3].1["error"],
            json!({"type": "api_error", "message": "context overflow"})
        );
        stream.finish(true, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn tool_calls_told_apart_by_id_when_indices_repeat() {
        let mut stream = ClientStream::new(Direction::MessagesToChat, "claude-client", false);
        let call = |id: &str, name: &str, args: &str| {
            chunk(
                json!({"tool_calls": [{"index": 0, "id": id, "type": "function",
                    "function": {"name": name, "arguments": args}}]}),
                Value::Null,
            )
        };
        let events = run(
            &mut stream,
            &[
                call("a", "f", "{}"),
                call("b", "g", "{\"x\":1}"),
                chunk(json!({}), json!("tool_calls")),
            ],
        );
        let starts: Vec<&Value> = events
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, d)| &d["content_block"]["id"])
            .collect();
        assert_eq!(starts, [&json!("a"), &json!("b")]);
    }
}
