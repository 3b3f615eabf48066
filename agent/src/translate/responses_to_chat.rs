//! Translation of the OpenAI Responses API (`POST /v1/responses`) into Chat Completions, so an
//! agent built on the Responses API can be served by a chat-only provider (vLLM, llama.cpp).
//! Bytes in, bytes out: request bodies, complete responses, error bodies and SSE streams.
//!
//! The Responses API is stateless here: the provider keeps no conversation, so
//! `previous_response_id`, `conversation` and stored prompts (`prompt`) are refused, and every
//! response says it was not stored. Built-in tools (web search, file search, code interpreter,
//! MCP, ...) and `file_id` image references exist only at the provider's own Responses API and
//! are refused too. As elsewhere in `translate`, what the client sends is
//! checked (a 400 beats silently changing what the model is asked) and what the provider sends
//! back is never an error: unreadable bodies become error bodies, unreadable frames are skipped.
//!
//! Not translated: reasoning text from the provider (`reasoning_content`) and its summaries,
//! refusals, logprobs, annotations, and choices other than the first.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::TranslateError;

/// The chat-completions body for a Responses request `body`; `model` replaces the client's model. Streams get `"stream_options": {"include_usage": true}`.
pub fn request(body: &[u8], model: &str) -> Result<Vec<u8>, TranslateError> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("request body is not valid JSON: {e}")))?;
    if !body.is_object() {
        return Err(invalid("request body must be a JSON object"));
    }
    for key in ["previous_response_id", "conversation", "prompt"] {
        if body.get(key).is_some_and(|v| !v.is_null()) {
            return Err(invalid(format!(
                "`{key}` refers to state that only the provider's own Responses API keeps; \
                 send the whole conversation in `instructions` and `input` instead"
            )));
        }
    }

    let mut messages = Vec::new();
    match body.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(json!({"role": "system", "content": text})),
        Some(_) => return Err(invalid("`instructions` must be a string")),
    }
    match body.get("input") {
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => {
            for item in items {
                input_item(item, &mut messages)?;
            }
        }
        _ => return Err(invalid("`input` must be a string or an array of items")),
    }

    let mut chat = Map::new();
    chat.insert("model".into(), model.into());
    chat.insert("messages".into(), Value::Array(messages));
    // Same meaning in both APIs, whatever the name; `null` means "unset" in both.
    for (from, to) in [
        ("/temperature", "temperature"),
        ("/top_p", "top_p"),
        ("/parallel_tool_calls", "parallel_tool_calls"),
        ("/user", "user"),
        ("/stream", "stream"),
        ("/max_output_tokens", "max_tokens"),
        ("/reasoning/effort", "reasoning_effort"),
    ] {
        if let Some(value) = body.pointer(from).filter(|v| !v.is_null()) {
            chat.insert(to.into(), value.clone());
        }
    }
    if let Some(tools) = body.get("tools").filter(|v| !v.is_null()) {
        let tools = tools
            .as_array()
            .ok_or_else(|| invalid("`tools` must be an array"))?;
        let tools = tools.iter().map(tool).collect::<Result<Vec<_>, _>>()?;
        if !tools.is_empty() {
            chat.insert("tools".into(), Value::Array(tools));
        }
    }
    match body.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(choice)) => {
            chat.insert("tool_choice".into(), choice.as_str().into());
        }
        Some(choice) => match str_at(choice, "type") {
            Some("function") => {
                let name = required_str(choice, "name", "a function `tool_choice`")?;
                chat.insert(
                    "tool_choice".into(),
                    json!({"type": "function", "function": {"name": name}}),
                );
            }
            other => {
                return Err(invalid(format!(
                    "the tool_choice type `{}` needs the provider's own Responses API",
                    other.unwrap_or("?")
                )))
            }
        },
    }
    if let Some(format) = body.get("text").and_then(|t| t.get("format")) {
        if let Some(format) = response_format(format)? {
            chat.insert("response_format".into(), format);
        }
    }
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        // The usage would otherwise never reach `response.completed`, nor the ledger.
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(to_json(&Value::Object(chat)))
}

fn input_item(item: &Value, messages: &mut Vec<Value>) -> Result<(), TranslateError> {
    let kind = match item.get("type") {
        None | Some(Value::Null) => "message",
        Some(kind) => kind
            .as_str()
            .ok_or_else(|| invalid("an input item's `type` must be a string"))?,
    };
    match kind {
        "message" => {
            let role = match str_at(item, "role") {
                Some(role @ ("user" | "assistant" | "system")) => role,
                Some("developer") => "system",
                Some(other) => {
                    return Err(invalid(format!(
                        "the message role `{other}` is not supported"
                    )))
                }
                None => return Err(invalid("every input message needs a `role`")),
            };
            let content = content(role, item.get("content").unwrap_or(&Value::Null))?;
            messages.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let call = json!({
                "id": required_str(item, "call_id", "a `function_call` item")?,
                "type": "function",
                "function": {
                    "name": required_str(item, "name", "a `function_call` item")?,
                    "arguments": str_at(item, "arguments").unwrap_or("{}"),
                },
            });
            // Chat templates expect a turn's text and its tool calls in one assistant message,
            // the way chat completions return them; Responses splits them into items.
            let last = messages.last_mut().filter(|m| m["role"] == "assistant");
            match last.and_then(Value::as_object_mut) {
                Some(last) => match last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    Some(calls) => calls.push(call),
                    None => {
                        last.insert("tool_calls".into(), json!([call]));
                    }
                },
                None => messages
                    .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let call_id = required_str(item, "call_id", "a `function_call_output` item")?;
            let output = content("tool", item.get("output").unwrap_or(&Value::Null))?;
            messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
        }
        // Reasoning is the provider's own (often encrypted) state; a chat backend cannot take it back.
        "reasoning" => {}
        other => {
            return Err(invalid(format!(
                "the input item type `{other}` is not supported by a chat-completions provider"
            )))
        }
    }
    Ok(())
}

/// A Responses `content` (or tool `output`) → chat message content.
fn content(role: &str, content: &Value) -> Result<Value, TranslateError> {
    let parts = match content {
        Value::String(_) => return Ok(content.clone()),
        Value::Array(parts) => parts,
        _ => {
            return Err(invalid(
                "message content must be a string or an array of parts",
            ))
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        match str_at(part, "type") {
            Some(kind @ ("input_text" | "output_text" | "refusal")) => {
                let key = if kind == "refusal" { "refusal" } else { "text" };
                let text = required_str(part, key, "a text part")?;
                out.push(json!({"type": "text", "text": text}));
            }
            // Chat completions accept images only from the user.
            Some("input_image") if role == "user" => {
                let Some(url) = str_at(part, "image_url") else {
                    return Err(invalid(
                        "an `input_image` part needs an `image_url`; `file_id` references need \
                         the provider's own Responses API",
                    ));
                };
                let mut image = json!({"url": url});
                if let (Some(detail), Some(map)) = (part.get("detail"), image.as_object_mut()) {
                    map.insert("detail".into(), detail.clone());
                }
                out.push(json!({"type": "image_url", "image_url": image}));
            }
            Some(other) => {
                return Err(invalid(format!(
                    "the content part type `{other}` is not supported in a `{role}` message"
                )))
            }
            None => return Err(invalid("every content part needs a `type`")),
        }
    }
    // A lone string is the one content form every chat template and backend accepts.
    if let [part] = out.as_slice() {
        if let Some(text) = str_at(part, "text").filter(|_| part["type"] == "text") {
            return Ok(text.into());
        }
    }
    Ok(Value::Array(out))
}

fn tool(tool: &Value) -> Result<Value, TranslateError> {
    match str_at(tool, "type") {
        Some("function") => {
            let mut function = Map::new();
            let name = required_str(tool, "name", "a function tool")?;
            function.insert("name".into(), name.into());
            if let Some(map) = tool.as_object() {
                copy_fields(map, &mut function, &["description", "parameters", "strict"]);
            }
            Ok(json!({"type": "function", "function": function}))
        }
        Some(other) => Err(invalid(format!(
            "the tool type `{other}` needs the provider's own Responses API"
        ))),
        None => Err(invalid("every tool needs a `type`")),
    }
}

fn response_format(format: &Value) -> Result<Option<Value>, TranslateError> {
    match format {
        Value::Null => return Ok(None),
        Value::Object(_) => {}
        _ => return Err(invalid("`text.format` must be an object")),
    }
    match str_at(format, "type") {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            let name = required_str(format, "name", "a `json_schema` format")?;
            schema.insert("name".into(), name.into());
            if let Some(map) = format.as_object() {
                copy_fields(map, &mut schema, &["description", "schema", "strict"]);
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        other => Err(invalid(format!(
            "the text format `{}` is not supported by a chat-completions provider",
            other.unwrap_or("?")
        ))),
    }
}

/// A complete chat.completion (or error) body from the provider → the Responses API body. `status` is the provider's HTTP status; non-2xx: an OpenAI error body passes through as `{"error":{...}}` (rebuilt if it does not parse, with a message naming the status). `client_model` goes into the response's `model`.
pub fn response(status: u16, body: &[u8], client_model: &str) -> Vec<u8> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let out = match &parsed {
        Some(chat)
            if (200..300).contains(&status) && chat.get("choices").is_some_and(Value::is_array) =>
        {
            completion(chat, client_model)
        }
        _ => error_body(status, body, parsed.as_ref()),
    };
    to_json(&out)
}

fn completion(chat: &Value, client_model: &str) -> Value {
    let id = str_at(chat, "id").map_or_else(fresh_id, str::to_owned);
    let created = chat
        .get("created")
        .and_then(Value::as_u64)
        .unwrap_or_else(unix_now);
    let choice = chat.get("choices").and_then(|c| c.get(0));
    let message = choice.and_then(|c| c.get("message"));
    let text = message.and_then(|m| str_at(m, "content")).unwrap_or("");
    let calls = message
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array)
        .filter(|calls| !calls.is_empty());
    let mut output = Vec::new();
    if !text.is_empty() || calls.is_none() {
        let content = vec![text_part(text)];
        output.push(message_item(&format!("msg_{id}"), "completed", content));
    }
    for (i, call) in calls.into_iter().flatten().enumerate() {
        let call_id = str_at(call, "id").map_or_else(|| format!("call_{id}_{i}"), str::to_owned);
        let function = call.get("function").unwrap_or(&Value::Null);
        let name = str_at(function, "name").unwrap_or("");
        let arguments = str_at(function, "arguments").unwrap_or("");
        output.push(call_item(&call_id, name, arguments, "completed"));
    }
    let finish = choice.and_then(|c| str_at(c, "finish_reason"));
    let usage = chat.get("usage").and_then(usage);
    response_object(&id, created, client_model, outcome(finish), output, usage)
}

fn error_body(status: u16, body: &[u8], parsed: Option<&Value>) -> Value {
    let error = parsed
        .and_then(|v| v.get("error"))
        .or(parsed.filter(is_flat_error));
    if let Some(error) = error.filter(|e| e.get("message").is_some_and(Value::is_string)) {
        return json!({"error": error});
    }
    // llama.cpp's plain `error` string and FastAPI's `detail` are the other shapes seen in the wild.
    let message = [
        error,
        parsed.and_then(|v| v.get("message")),
        parsed.and_then(|v| v.get("detail")),
    ]
    .into_iter()
    .flatten()
    .find_map(Value::as_str);
    let message = match message {
        Some(message) => format!("provider returned HTTP {status}: {message}"),
        None => {
            let text = std::str::from_utf8(body).map(str::trim).unwrap_or("");
            if text.is_empty() {
                format!("provider returned HTTP {status} with no readable body")
            } else {
                // A proxy's HTML or plain-text error is often the only clue.
                let snippet: String = text.chars().take(200).collect();
                format!("provider returned HTTP {status} with a body that could not be translated: {snippet}")
            }
        }
    };
    let kind = match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    json!({"error": {"message": message, "type": kind, "code": null, "param": null}})
}

/// Chat `usage` → Responses `usage`. Both count cached tokens inside the input (`prompt_tokens`
/// includes them, and so does `input_tokens`), so the numbers carry over and nothing is counted
/// twice; `cached_tokens` is only a breakdown.
fn usage(usage: &Value) -> Option<Value> {
    usage.as_object()?;
    let count = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
    let input = count(usage.get("prompt_tokens"));
    let output = count(usage.get("completion_tokens"));
    // A breakdown larger than its total would be nonsense to the client; clamp it.
    let cached = count(usage.pointer("/prompt_tokens_details/cached_tokens")).min(input);
    let reasoning = count(usage.pointer("/completion_tokens_details/reasoning_tokens")).min(output);
    Some(json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input.saturating_add(output),
    }))
}

/// The Responses `status` and `incomplete_details` for a chat `finish_reason`.
fn outcome(finish: Option<&str>) -> (&'static str, Value) {
    match finish {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

fn response_object(
    chat_id: &str,
    created: u64,
    model: &str,
    (status, incomplete): (&str, Value),
    output: Vec<Value>,
    usage: Option<Value>,
) -> Value {
    let output_text: String = output
        .iter()
        .filter_map(|item| item.get("content").and_then(Value::as_array))
        .flatten()
        .filter(|part| part["type"] == "output_text")
        .filter_map(|part| str_at(part, "text"))
        .collect();
    json!({
        "id": format!("resp_{chat_id}"),
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": output,
        "output_text": output_text,
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "tools": [],
        "store": false,
        "usage": usage,
        "incomplete_details": incomplete,
        "error": null,
    })
}

fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

fn call_item(call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": format!("fc_{call_id}"), "call_id": call_id,
        "name": name, "arguments": arguments, "status": status})
}

/// Chat-completions SSE chunks in, Responses API SSE events out.
#[derive(Debug)]
pub struct Stream {
    model: String,
    seq: u64,
    /// The provider's completion id, set by the first chunk: the stream has started.
    chat_id: Option<String>,
    created: u64,
    /// The items already closed, in output order; the open item's index is `output.len()`.
    output: Vec<Value>,
    open: Option<Open>,
    /// Chat tool-call index → output index, for every call opened so far.
    calls: Vec<(u64, usize)>,
    messages: usize,
    finish_reason: Option<String>,
    usage: Option<Value>,
    done: bool,
}

#[derive(Debug)]
enum Open {
    Text {
        item_id: String,
        text: String,
    },
    Call {
        index: u64,
        call_id: String,
        name: String,
        arguments: String,
    },
}

impl Stream {
    pub fn new(client_model: &str) -> Stream {
        Stream {
            model: client_model.to_owned(),
            seq: 0,
            chat_id: None,
            created: 0,
            output: Vec::new(),
            open: None,
            calls: Vec::new(),
            messages: 0,
            finish_reason: None,
            usage: None,
            done: false,
        }
    }

    /// One whole provider SSE frame as received, with its terminating blank line (`b"data: {...}\n\n"`, `b"data: [DONE]\n\n"`; lines may end in `\r\n`; `:` comment lines). Pushes zero or more whole client frames (`event: <type>\ndata: <json>\n\n`).
    pub fn frame(&mut self, frame: &[u8], out: &mut Vec<Bytes>) {
        for data in sse_data(frame) {
            if self.done {
                return;
            }
            if data.trim() == "[DONE]" {
                self.complete(out);
            } else if let Ok(chunk) = serde_json::from_str::<Value>(&data) {
                self.chunk(&chunk, out);
            }
        }
    }

    /// The provider's stream ended; `complete` = it ended properly. Push the closing events still owed (exactly once overall); when `complete` is false push nothing.
    pub fn finish(&mut self, complete: bool, out: &mut Vec<Bytes>) {
        // A truncated stream must look truncated: closing events would tell the client it was whole.
        if complete {
            self.complete(out);
        }
    }

    fn chunk(&mut self, chunk: &Value, out: &mut Vec<Bytes>) {
        let flat = Some(chunk).filter(is_flat_error);
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()).or(flat) {
            self.error(error, out);
            return;
        }
        if !chunk.is_object() {
            return;
        }
        self.start(chunk, out);
        let choices = chunk.get("choices").and_then(Value::as_array);
        let first = choices.and_then(|c| {
            c.iter()
                .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
        });
        if let Some(choice) = first {
            let delta = choice.get("delta").unwrap_or(&Value::Null);
            if let Some(text) = str_at(delta, "content").filter(|t| !t.is_empty()) {
                self.text(text, out);
            }
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for call in calls {
                    self.tool_call(call, out);
                }
            }
            if let Some(reason) = str_at(choice, "finish_reason") {
                self.close(out);
                self.finish_reason = Some(reason.to_owned());
            }
        }
        if let Some(usage) = chunk.get("usage").and_then(usage) {
            self.usage = Some(usage);
            // vLLM's continuous usage stats ride on every chunk; only the last one ends the stream.
            if choices.is_none_or(Vec::is_empty) || self.finish_reason.is_some() {
                self.complete(out);
            }
        }
    }

    fn start(&mut self, chunk: &Value, out: &mut Vec<Bytes>) {
        if self.chat_id.is_some() {
            return;
        }
        let chat_id = str_at(chunk, "id").map_or_else(fresh_id, str::to_owned);
        self.created = chunk
            .get("created")
            .and_then(Value::as_u64)
            .unwrap_or_else(unix_now);
        let response = response_object(
            &chat_id,
            self.created,
            &self.model,
            ("in_progress", Value::Null),
            Vec::new(),
            None,
        );
        self.chat_id = Some(chat_id);
        for kind in ["response.created", "response.in_progress"] {
            emit(&mut self.seq, kind, json!({"response": response}), out);
        }
    }

    fn text(&mut self, delta: &str, out: &mut Vec<Bytes>) {
        if !matches!(self.open, Some(Open::Text { .. })) {
            self.close(out);
            let chat_id = self.chat_id.as_deref().unwrap_or("");
            let item_id = match self.messages {
                0 => format!("msg_{chat_id}"),
                n => format!("msg_{chat_id}_{n}"),
            };
            self.messages += 1;
            let output_index = self.output.len();
            let item = message_item(&item_id, "in_progress", Vec::new());
            let event = json!({"output_index": output_index, "item": item});
            emit(&mut self.seq, "response.output_item.added", event, out);
            let event = json!({"item_id": item_id, "output_index": output_index,
                "content_index": 0, "part": text_part("")});
            emit(&mut self.seq, "response.content_part.added", event, out);
            self.open = Some(Open::Text {
                item_id,
                text: String::new(),
            });
        }
        if let Some(Open::Text { item_id, text }) = &mut self.open {
            text.push_str(delta);
            let event = json!({"item_id": item_id, "output_index": self.output.len(),
                "content_index": 0, "delta": delta, "logprobs": []});
            emit(&mut self.seq, "response.output_text.delta", event, out);
        }
    }

    fn tool_call(&mut self, call: &Value, out: &mut Vec<Bytes>) {
        let id = str_at(call, "id").filter(|id| !id.is_empty());
        let function = call.get("function").unwrap_or(&Value::Null);
        let name = str_at(function, "name").filter(|n| !n.is_empty());
        let fragment = str_at(function, "arguments").unwrap_or("");
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let is_open = matches!(&self.open, Some(Open::Call { index: i, .. }) if *i == index);
        if !is_open {
            if let Some(&(_, at)) = self.calls.iter().find(|(i, _)| *i == index) {
                // A provider interleaving calls: that item is already done for the client, but
                // the final response must still hold the whole call.
                if let Some(Value::Object(item)) = self.output.get_mut(at) {
                    let before = item.get("arguments").and_then(Value::as_str).unwrap_or("");
                    let whole = format!("{before}{fragment}");
                    item.insert("arguments".into(), whole.into());
                }
                return;
            }
            self.close(out);
            let chat_id = self.chat_id.as_deref().unwrap_or("");
            let call_id = id.map_or_else(|| format!("call_{chat_id}_{index}"), str::to_owned);
            let name = name.unwrap_or("").to_owned();
            let output_index = self.output.len();
            let item = call_item(&call_id, &name, "", "in_progress");
            let event = json!({"output_index": output_index, "item": item});
            emit(&mut self.seq, "response.output_item.added", event, out);
            self.calls.push((index, output_index));
            self.open = Some(Open::Call {
                index,
                call_id,
                name,
                arguments: String::new(),
            });
        }
        if let Some(Open::Call {
            call_id,
            name: open_name,
            arguments,
            ..
        }) = &mut self.open
        {
            if let (true, Some(name)) = (open_name.is_empty(), name) {
                name.clone_into(open_name);
            }
            if !fragment.is_empty() {
                arguments.push_str(fragment);
                let event = json!({"item_id": format!("fc_{call_id}"),
                    "output_index": self.output.len(), "delta": fragment});
                emit(
                    &mut self.seq,
                    "response.function_call_arguments.delta",
                    event,
                    out,
                );
            }
        }
    }

    /// Closes the open item, if any, and files it in `output`.
    fn close(&mut self, out: &mut Vec<Bytes>) {
        let Some(open) = self.open.take() else {
            return;
        };
        let output_index = self.output.len();
        let item = match open {
            Open::Text { item_id, text } => {
                let event = json!({"item_id": item_id, "output_index": output_index,
                    "content_index": 0, "text": text, "logprobs": []});
                emit(&mut self.seq, "response.output_text.done", event, out);
                let event = json!({"item_id": item_id, "output_index": output_index,
                    "content_index": 0, "part": text_part(&text)});
                emit(&mut self.seq, "response.content_part.done", event, out);
                message_item(&item_id, "completed", vec![text_part(&text)])
            }
            Open::Call {
                call_id,
                name,
                arguments,
                ..
            } => {
                let event = json!({"item_id": format!("fc_{call_id}"), "output_index": output_index,
                    "name": name, "arguments": arguments});
                emit(
                    &mut self.seq,
                    "response.function_call_arguments.done",
                    event,
                    out,
                );
                call_item(&call_id, &name, &arguments, "completed")
            }
        };
        let event = json!({"output_index": output_index, "item": item});
        emit(&mut self.seq, "response.output_item.done", event, out);
        self.output.push(item);
    }

    fn complete(&mut self, out: &mut Vec<Bytes>) {
        if self.done {
            return;
        }
        // A stream that ended before its first chunk still owes the client a whole response.
        self.start(&Value::Null, out);
        self.close(out);
        let outcome = outcome(self.finish_reason.as_deref());
        let kind = match outcome.0 {
            "incomplete" => "response.incomplete",
            _ => "response.completed",
        };
        let response = response_object(
            self.chat_id.as_deref().unwrap_or(""),
            self.created,
            &self.model,
            outcome,
            self.output.clone(),
            self.usage.clone(),
        );
        emit(&mut self.seq, kind, json!({"response": response}), out);
        self.done = true;
    }

    fn error(&mut self, error: &Value, out: &mut Vec<Bytes>) {
        let message = match error {
            Value::String(message) => message.as_str(),
            _ => str_at(error, "message").unwrap_or("the provider reported an error"),
        };
        // Responses error codes are strings; vLLM sends the HTTP status as a number.
        let code = match error.get("code") {
            Some(Value::String(code)) => Value::from(code.as_str()),
            Some(Value::Number(code)) => Value::from(code.to_string()),
            _ => str_at(error, "type").map_or(Value::Null, Value::from),
        };
        let event = json!({"code": code, "message": message, "param": null});
        emit(&mut self.seq, "error", event, out);
        // Anything after the error, `response.completed` above all, would claim a success.
        self.done = true;
    }
}

/// Pushes one client frame; `event` (a JSON object) gets its `type` and `sequence_number`.
fn emit(seq: &mut u64, kind: &str, mut event: Value, out: &mut Vec<Bytes>) {
    if let Some(map) = event.as_object_mut() {
        map.insert("type".into(), kind.into());
        map.insert("sequence_number".into(), (*seq).into());
    }
    *seq += 1;
    let mut frame = format!("event: {kind}\ndata: ").into_bytes();
    frame.extend_from_slice(&to_json(&event));
    frame.extend_from_slice(b"\n\n");
    out.push(Bytes::from(frame));
}

/// The `data` of each event in an SSE frame, parsed per the SSE rules rather than by prefix, so
/// `\r\n` endings, comments, `data:` without a space and multi-line data all work.
fn sse_data(frame: &[u8]) -> Vec<String> {
    let Ok(text) = std::str::from_utf8(frame) else {
        return Vec::new();
    };
    let mut events = Vec::new();
    let mut data: Option<String> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            events.extend(data.take());
            continue;
        }
        let Some(value) = line.strip_prefix("data:") else {
            continue;
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        match &mut data {
            Some(data) => {
                data.push('\n');
                data.push_str(value);
            }
            None => data = Some(value.to_owned()),
        }
    }
    // Tolerates a frame handed over without its final blank line.
    events.extend(data);
    events
}

fn invalid(message: impl Into<String>) -> TranslateError {
    TranslateError::Invalid(message.into())
}

/// vLLM's error shape before it nested errors under `error`.
fn is_flat_error(value: &&Value) -> bool {
    value["object"] == "error"
}

fn str_at<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

fn required_str<'a>(value: &'a Value, key: &str, what: &str) -> Result<&'a str, TranslateError> {
    str_at(value, key).ok_or_else(|| invalid(format!("{what} needs a string `{key}`")))
}

/// Copies the fields both APIs spell and mean the same way; `null` means "unset" in both.
fn copy_fields(from: &Map<String, Value>, to: &mut Map<String, Value>, keys: &[&str]) {
    for key in keys {
        if let Some(value) = from.get(*key).filter(|v| !v.is_null()) {
            to.insert((*key).to_owned(), value.clone());
        }
    }
}

fn to_json(value: &Value) -> Vec<u8> {
    // Serializing a `Value` cannot fail (its keys are strings); the fallback only avoids a panic path.
    serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An id for a completion whose provider gave none; clients key on ids, so they must not repeat.
fn fresh_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:x}{n:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: Value) -> Value {
        serde_json::from_slice(&request(&to_json(&body), "served").unwrap()).unwrap()
    }

    fn refused(body: Value) -> String {
        match request(&to_json(&body), "m") {
            Err(TranslateError::Invalid(message)) => message,
            Ok(out) => panic!("accepted: {}", String::from_utf8_lossy(&out)),
        }
    }

    fn resp(status: u16, body: &[u8]) -> Value {
        serde_json::from_slice(&response(status, body, "client-model")).unwrap()
    }

    /// Splits client frames into `(event name, data)`, checking the framing, that every event's
    /// `type` is its name and that sequence numbers count up from 0.
    fn events(out: &[Bytes]) -> Vec<(String, Value)> {
        let events: Vec<(String, Value)> = out
            .iter()
            .map(|frame| {
                let text = std::str::from_utf8(frame).unwrap();
                let rest = text.strip_prefix("event: ").unwrap();
                let (name, data) = rest.split_once("\ndata: ").unwrap();
                let data = data.strip_suffix("\n\n").unwrap();
                assert!(!data.contains('\n'), "{text}");
                (name.to_owned(), serde_json::from_str(data).unwrap())
            })
            .collect();
        for (n, (name, data)) in events.iter().enumerate() {
            assert_eq!(data["type"], name.as_str());
            assert_eq!(data["sequence_number"], n);
        }
        events
    }

    /// The event names, without their `response.` prefix, in one line.
    fn names(events: &[(String, Value)]) -> String {
        let names: Vec<&str> = events
            .iter()
            .map(|(name, _)| name.strip_prefix("response.").unwrap_or(name))
            .collect();
        names.join(" ")
    }

    fn deltas(events: &[(String, Value)], kind: &str) -> String {
        let matching = events.iter().filter(|(name, _)| name == kind);
        matching
            .map(|(_, data)| data["delta"].as_str().unwrap())
            .collect()
    }

    fn chunk(delta: Value, finish: Value) -> Vec<u8> {
        let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "created": 7,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {chunk}\n\n").into_bytes()
    }

    fn feed(stream: &mut Stream, frames: &[Vec<u8>]) -> Vec<Bytes> {
        let mut out = Vec::new();
        for frame in frames {
            stream.frame(frame, &mut out);
        }
        out
    }

    #[test]
    fn request_with_string_input_and_parameters() {
        let body = json!({"model": "gpt-x", "instructions": "Be brief.", "input": "Hi",
            "max_output_tokens": 50, "temperature": 0.5, "top_p": 0.9, "user": "u1", "stream": true,
            "reasoning": {"effort": "low", "summary": "auto"}, "store": true,
            "metadata": {"a": "b"}, "include": ["reasoning.encrypted_content"], "truncation": "auto"});
        let expected = json!({"model": "served", "messages": [
                {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "max_tokens": 50, "temperature": 0.5, "top_p": 0.9, "user": "u1", "stream": true,
            "reasoning_effort": "low", "stream_options": {"include_usage": true}});
        assert_eq!(req(body), expected);
    }

    #[test]
    fn request_with_items_and_images() {
        let body = json!({"input": [
            {"role": "developer", "content": "Rules."},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAA", "detail": "low"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "A cat.", "annotations": []}]},
        ]});
        let expected = json!([
            {"role": "system", "content": "Rules."},
            {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA", "detail": "low"}}]},
            {"role": "assistant", "content": "A cat."},
        ]);
        let chat = req(body);
        assert_eq!(chat["messages"], expected);
        assert!(chat.get("stream_options").is_none());
    }

    #[test]
    fn request_with_function_call_history() {
        let body = json!({"input": [
            {"role": "user", "content": "Weather in Oslo and Rome?"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{\"city\":\"Oslo\"}"},
            {"type": "function_call", "call_id": "call_2", "name": "weather", "arguments": "{\"city\":\"Rome\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "5C"},
            {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "20C"}]},
            {"type": "function_call", "call_id": "call_3", "name": "clock", "arguments": "{}"},
        ]});
        let call = |id: &str, name: &str, args: &str| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}});
        let expected = json!([
            {"role": "user", "content": "Weather in Oslo and Rome?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                call("call_1", "weather", "{\"city\":\"Oslo\"}"),
                call("call_2", "weather", "{\"city\":\"Rome\"}")]},
            {"role": "tool", "tool_call_id": "call_1", "content": "5C"},
            {"role": "tool", "tool_call_id": "call_2", "content": "20C"},
            {"role": "assistant", "content": null, "tool_calls": [call("call_3", "clock", "{}")]},
        ]);
        assert_eq!(req(body)["messages"], expected);
    }

    #[test]
    fn request_with_tools_tool_choice_and_text_format() {
        let params = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let body = json!({"input": "x", "parallel_tool_calls": false, "tools": [
            {"type": "function", "name": "weather", "description": "Weather.", "parameters": params, "strict": true},
            {"type": "function", "name": "clock", "strict": null}],
            "tool_choice": {"type": "function", "name": "weather"},
            "text": {"format": {"type": "json_schema", "name": "w", "schema": params, "strict": true}}});
        let chat = req(body);
        let expected = json!([{"type": "function", "function": {"name": "weather",
                "description": "Weather.", "parameters": params, "strict": true}},
            {"type": "function", "function": {"name": "clock"}}]);
        assert_eq!(chat["tools"], expected);
        let expected = json!({"type": "function", "function": {"name": "weather"}});
        assert_eq!(chat["tool_choice"], expected);
        assert_eq!(chat["parallel_tool_calls"], false);
        let expected = json!({"type": "json_schema",
            "json_schema": {"name": "w", "schema": params, "strict": true}});
        assert_eq!(chat["response_format"], expected);
        for choice in ["auto", "none", "required"] {
            assert_eq!(
                req(json!({"input": "x", "tool_choice": choice}))["tool_choice"],
                choice
            );
        }
        let chat = req(json!({"input": "x", "text": {"format": {"type": "json_object"}}}));
        assert_eq!(chat["response_format"], json!({"type": "json_object"}));
        let chat = req(json!({"input": "x", "text": {"format": {"type": "text"}}}));
        assert!(chat.get("response_format").is_none());
    }

    #[test]
    fn request_refuses_what_a_chat_backend_cannot_do() {
        let message = refused(json!({"input": "x", "previous_response_id": "resp_1"}));
        assert!(message.contains("`previous_response_id`"), "{message}");
        let message = refused(json!({"input": "x", "tools": [{"type": "web_search"}]}));
        assert_eq!(
            message,
            "the tool type `web_search` needs the provider's own Responses API"
        );
        let message = refused(json!({"input": [{"type": "item_reference", "id": "msg_1"}]}));
        assert!(message.contains("`item_reference`"), "{message}");
        let message = refused(json!({"input": "x", "tool_choice": {"type": "file_search"}}));
        assert!(message.contains("file_search"), "{message}");
        let image = json!({"type": "input_image", "file_id": "file_1"});
        let message = refused(json!({"input": [{"role": "user", "content": [image]}]}));
        assert!(message.contains("file_id"), "{message}");
        let image = json!({"type": "input_image", "image_url": "https://x/y.png"});
        let message = refused(json!({"input": [{"role": "assistant", "content": [image]}]}));
        assert!(message.contains("input_image"), "{message}");
        refused(json!({"instructions": "no input"}));
        refused(json!({"input": [{"content": "no role"}]}));
        assert!(request(b"[1]", "m").is_err() && request(b"{", "m").is_err());
    }

    #[test]
    fn response_with_text() {
        let body = br#"{"id": "chatcmpl-1", "object": "chat.completion", "created": 99,
            "model": "served", "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Hello!"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}"#;
        let expected = json!({"id": "resp_chatcmpl-1", "object": "response", "created_at": 99,
            "status": "completed", "model": "client-model",
            "output": [{"type": "message", "id": "msg_chatcmpl-1", "status": "completed",
                "role": "assistant", "content": [{"type": "output_text", "text": "Hello!", "annotations": []}]}],
            "output_text": "Hello!", "parallel_tool_calls": true, "tool_choice": "auto",
            "tools": [], "store": false, "incomplete_details": null, "error": null,
            "usage": {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 2, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 7}});
        assert_eq!(resp(200, body), expected);
    }

    #[test]
    fn response_with_tool_calls_has_no_empty_message() {
        let body = br#"{"id": "c2", "created": 1, "choices": [{"finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}},
                {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}}]}"#;
        let out = resp(200, body);
        let expected = json!([
            {"type": "function_call", "id": "fc_call_a", "call_id": "call_a", "name": "f",
                "arguments": "{\"x\":1}", "status": "completed"},
            {"type": "function_call", "id": "fc_call_b", "call_id": "call_b", "name": "g",
                "arguments": "{}", "status": "completed"},
        ]);
        assert_eq!(out["output"], expected);
        assert_eq!(out["status"], "completed");
        assert_eq!(out["usage"], Value::Null);
    }

    #[test]
    fn response_cut_short_is_incomplete() {
        let body = br#"{"id": "c3", "choices": [{"finish_reason": "length", "message": {"content": "Once"}}]}"#;
        let out = resp(200, body);
        assert_eq!(out["status"], "incomplete");
        assert_eq!(
            out["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert_eq!(out["output"][0]["content"][0]["text"], "Once");
        let out = resp(
            200,
            br#"{"choices": [{"finish_reason": "content_filter", "message": {}}]}"#,
        );
        assert_eq!(
            out["incomplete_details"],
            json!({"reason": "content_filter"})
        );
    }

    #[test]
    fn usage_counts_every_token_once() {
        let body =
            br#"{"id": "c4", "choices": [{"finish_reason": "stop", "message": {"content": "ok"}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 30, "total_tokens": 130,
                "prompt_tokens_details": {"cached_tokens": 60},
                "completion_tokens_details": {"reasoning_tokens": 20}}}"#;
        // Cached and reasoning tokens are breakdowns inside the totals, never added to them.
        let expected = json!({"input_tokens": 100, "input_tokens_details": {"cached_tokens": 60},
            "output_tokens": 30, "output_tokens_details": {"reasoning_tokens": 20}, "total_tokens": 130});
        assert_eq!(resp(200, body)["usage"], expected);
        let odd = json!({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 9}});
        assert_eq!(
            usage(&odd).unwrap()["input_tokens_details"]["cached_tokens"],
            5
        );
    }

    #[test]
    fn error_bodies() {
        let error = br#"{"error":{"message":"no such model","type":"NotFoundError","param":null,"code":404}}"#;
        assert_eq!(
            resp(404, error),
            serde_json::from_slice::<Value>(error).unwrap()
        );
        let out = resp(502, b"<html>Bad Gateway</html>");
        let message = out["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("502") && message.contains("Bad Gateway"),
            "{message}"
        );
        assert_eq!(out["error"]["type"], "server_error");
        let vllm = br#"{"object":"error","message":"bad","type":"BadRequestError","code":400}"#;
        assert_eq!(resp(400, vllm)["error"]["message"], "bad");
        let out = resp(400, br#"{"error": "context too long"}"#);
        let expected = "provider returned HTTP 400: context too long";
        assert_eq!(out["error"]["message"], expected);
        assert_eq!(out["error"]["type"], "invalid_request_error");
        let out = resp(200, b"");
        assert!(out["error"]["message"].as_str().unwrap().contains("200"));
    }

    #[test]
    fn stream_of_text() {
        let mut stream = Stream::new("client-model");
        let mut frames = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        for piece in ["Hel", "lo", "!"] {
            frames.push(chunk(json!({"content": piece}), Value::Null));
        }
        frames.push(chunk(json!({}), json!("stop")));
        let usage = json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 10,
            "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 6}}});
        frames.push(format!("data: {usage}\n\n").into_bytes());
        let events = events(&feed(&mut stream, &frames));
        let expected = "created in_progress output_item.added content_part.added \
            output_text.delta output_text.delta output_text.delta output_text.done \
            content_part.done output_item.done completed";
        assert_eq!(names(&events), expected);
        let created = &events[0].1["response"];
        assert_eq!(
            (&created["id"], &created["status"]),
            (&json!("resp_c1"), &json!("in_progress"))
        );
        assert_eq!(
            (&created["output"], &created["usage"]),
            (&json!([]), &Value::Null)
        );
        assert_eq!(events[2].1["item"]["id"], "msg_c1");
        assert_eq!(events[4].1["item_id"], "msg_c1");
        assert_eq!(deltas(&events, "response.output_text.delta"), "Hello!");
        assert_eq!(events[7].1["text"], "Hello!");
        let done = &events[10].1["response"];
        assert_eq!(
            (&done["status"], &done["model"]),
            (&json!("completed"), &json!("client-model"))
        );
        assert_eq!(done["output"], json!([events[9].1["item"]]));
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello!");
        let expected = json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 6},
            "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 14});
        assert_eq!(done["usage"], expected);
        let mut after = feed(&mut stream, &[b"data: [DONE]\n\n".to_vec()]);
        stream.finish(true, &mut after);
        assert!(after.is_empty());
    }

    #[test]
    fn stream_of_text_then_tool_call() {
        let mut stream = Stream::new("m");
        let mut frames = vec![chunk(json!({"content": "Let me look."}), Value::Null)];
        let first = json!({"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
            "function": {"name": "weather", "arguments": ""}}]});
        frames.push(chunk(first, Value::Null));
        for piece in ["{\"ci", "ty\":", "\"Oslo\"}"] {
            let delta = json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]});
            frames.push(chunk(delta, Value::Null));
        }
        frames.push(chunk(json!({}), json!("tool_calls")));
        frames.push(b"data: [DONE]\n\n".to_vec());
        let events = events(&feed(&mut stream, &frames));
        let expected = "created in_progress output_item.added content_part.added \
            output_text.delta output_text.done content_part.done output_item.done \
            output_item.added function_call_arguments.delta function_call_arguments.delta \
            function_call_arguments.delta function_call_arguments.done output_item.done completed";
        assert_eq!(names(&events), expected);
        let expected = json!({"type": "function_call", "id": "fc_call_9", "call_id": "call_9",
            "name": "weather", "arguments": "", "status": "in_progress"});
        assert_eq!(
            (&events[8].1["item"], &events[8].1["output_index"]),
            (&expected, &json!(1))
        );
        assert_eq!(events[9].1["item_id"], "fc_call_9");
        let arguments = deltas(&events, "response.function_call_arguments.delta");
        assert_eq!(arguments, "{\"city\":\"Oslo\"}");
        assert_eq!(events[12].1["arguments"], arguments.as_str());
        let done = &events[14].1["response"];
        assert_eq!(done["output"][0]["content"][0]["text"], "Let me look.");
        assert_eq!(done["output"][1], events[13].1["item"]);
        assert_eq!(done["output"][1]["arguments"], arguments.as_str());
        assert_eq!(done["usage"], Value::Null);
        let mut after = Vec::new();
        stream.finish(true, &mut after);
        assert!(after.is_empty());
    }

    #[test]
    fn stream_of_parallel_whole_tool_calls() {
        let mut stream = Stream::new("m");
        let call = |index: u64, id: &str| json!({"index": index, "id": id, "function": {"name": "f", "arguments": "{}"}});
        let both = json!({"tool_calls": [call(0, "call_a"), call(1, "call_b")]});
        // llama.cpp sends whole calls, and its usage rides on the finish chunk.
        let last = json!({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason":
            "tool_calls"}], "usage": {"prompt_tokens": 3, "completion_tokens": 2}});
        let frames = [
            chunk(both, Value::Null),
            format!("data: {last}\n\n").into_bytes(),
        ];
        let mut out = feed(&mut stream, &frames);
        stream.frame(b"data: [DONE]\n\n", &mut out);
        let events = events(&out);
        let expected = "created in_progress output_item.added function_call_arguments.delta \
            function_call_arguments.done output_item.done output_item.added \
            function_call_arguments.delta function_call_arguments.done output_item.done completed";
        assert_eq!(names(&events), expected);
        let done = &events[10].1["response"];
        let ids: Vec<&Value> = done["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| &i["call_id"])
            .collect();
        assert_eq!(ids, [&json!("call_a"), &json!("call_b")]);
        assert_eq!(done["usage"]["total_tokens"], 5);
    }

    #[test]
    fn stream_finish_closes_only_a_complete_stream() {
        let mut stream = Stream::new("m");
        let mut out = feed(
            &mut stream,
            &[chunk(json!({"content": "partial"}), Value::Null)],
        );
        let before = out.len();
        stream.finish(false, &mut out);
        assert_eq!(out.len(), before);

        let mut stream = Stream::new("m");
        let mut out = feed(
            &mut stream,
            &[chunk(json!({"content": "cut"}), json!("length"))],
        );
        stream.finish(true, &mut out);
        stream.finish(true, &mut out);
        let cut = events(&out);
        assert!(
            names(&cut).ends_with("output_item.done incomplete"),
            "{}",
            names(&cut)
        );
        let reason = &cut[cut.len() - 1].1["response"]["incomplete_details"]["reason"];
        assert_eq!(reason, "max_output_tokens");

        let mut out = Vec::new();
        Stream::new("m").finish(true, &mut out);
        assert_eq!(names(&events(&out)), "created in_progress completed");
    }

    #[test]
    fn stream_with_crlf_comments_and_errors() {
        let mut stream = Stream::new("m");
        let frames: [&[u8]; 5] = [
            b": keep-alive\r\n\r\n",
            b"data: {\"id\":\"c5\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\r\n\r\n",
            b"data: not json\r\n\r\n",
            b"data:{\"error\":{\"message\":\"overloaded\",\"code\":503}}\r\n\r\n",
            b"data: [DONE]\r\n\r\n",
        ];
        let mut out = feed(&mut stream, &frames.map(<[u8]>::to_vec));
        stream.finish(true, &mut out);
        let events = events(&out);
        let expected = "created in_progress output_item.added content_part.added \
            output_text.delta error";
        assert_eq!(names(&events), expected);
        assert_eq!(events[4].1["delta"], "a");
        let expected = json!({"type": "error", "code": "503", "message": "overloaded",
            "param": null, "sequence_number": 5});
        assert_eq!(events[5].1, expected);
    }

    #[test]
    fn hostile_input_never_panics() {
        let odd = r#"{}
[]
null
1
"x"
{"choices":5}
{"choices":[null]}
{"choices":[{"delta":null,"finish_reason":7}]}
{"choices":[{"delta":{"tool_calls":[{"index":-1,"function":null}]}}]}
{"choices":[{"delta":{"tool_calls":[5,{"id":null},{"index":1},{"index":0}]}}]}
{"choices":[{"message":{"content":[1],"tool_calls":[7]}}]}
{"choices":[],"usage":{"prompt_tokens":-3,"prompt_tokens_details":null}}
{"error":null}
{"error":5}"#;
        for body in odd.lines() {
            for status in [200, 400, 503] {
                let _ = response(status, body.as_bytes(), "m");
            }
            let _ = request(body.as_bytes(), "m");
            let wrapped = format!(
                r#"{{"input":[{body}],"tools":[{body}],"instructions":{body},"tool_choice":{body},"text":{{"format":{body}}},"reasoning":{body}}}"#
            );
            let _ = request(wrapped.as_bytes(), "m");
            let parts = format!(r#"{{"input":[{{"role":"user","content":[{body}]}}]}}"#);
            let _ = request(parts.as_bytes(), "m");
        }
        let mut stream = Stream::new("m");
        let mut out = Vec::new();
        for body in odd.lines() {
            let frame = format!("data: {body}\r\n\r\n");
            for cut in 0..=frame.len() {
                stream.frame(&frame.as_bytes()[..cut], &mut out);
            }
        }
        stream.finish(true, &mut out);
        events(&out);
    }
}
