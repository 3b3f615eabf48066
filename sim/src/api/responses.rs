//! `POST /v1/responses`: the OpenAI Responses API, plain and streamed.
//!
//! The answer is one assistant `message` output item with one `output_text` part. The stream is
//! the API's typed events, each `event: TYPE\ndata: {..}\n\n` with a `sequence_number`:
//! `response.created`, `response.in_progress`, `response.output_item.added`,
//! `response.content_part.added`, one `response.output_text.delta` per token,
//! `response.output_text.done`, `response.content_part.done`, `response.output_item.done`,
//! `response.completed` (whose `response.usage` is null when usage is suppressed). No `[DONE]`.

use std::collections::VecDeque;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    new_id, parse_json, token_limit, CachedTokens, Content, Job, Meta, ReasoningTokens, Usage,
};
use crate::body::to_json;
use crate::engine::Prompt;
use crate::error::SimError;
use crate::sse::event_frame;
use crate::stream::StreamShape;

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    Text(String),
    Items(Vec<Item>),
}

/// An input item: a message (`content`) or a tool result (`output`).
#[derive(Deserialize)]
struct Item {
    content: Option<Content>,
    output: Option<Content>,
}

#[derive(Deserialize)]
struct ReasoningParam {
    effort: Option<String>,
}

#[derive(Deserialize)]
struct ResponsesRequest {
    model: Option<String>,
    input: Option<Input>,
    instructions: Option<String>,
    max_output_tokens: Option<u64>,
    reasoning: Option<ReasoningParam>,
    stream: Option<bool>,
}

pub fn parse(body: &[u8]) -> Result<Job, SimError> {
    let request: ResponsesRequest = parse_json(body)?;
    let mut text = request
        .instructions
        .map(String::into_bytes)
        .unwrap_or_default();
    match &request.input {
        Some(Input::Text(input)) => text.extend_from_slice(input.as_bytes()),
        Some(Input::Items(items)) => {
            for content in items.iter().flat_map(|i| i.content.iter().chain(&i.output)) {
                content.append_to(&mut text);
            }
        }
        None => {}
    }
    let (max_tokens, finish) = token_limit(request.max_output_tokens, "max_output_tokens")?;
    Ok(Job {
        model: request.model,
        prompt: Prompt::from_text(text),
        max_tokens,
        requested_limit: request.max_output_tokens,
        finish,
        choices: 1,
        stream: request.stream.unwrap_or(false),
        stream_usage: true,
        reasoning: request.reasoning.is_some(),
        reasoning_effort: request.reasoning.and_then(|r| r.effort),
        echo: None,
    })
}

#[derive(Serialize)]
struct ResponseObject<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    error: (),
    incomplete_details: (),
    instructions: (),
    max_output_tokens: Option<u64>,
    model: &'a str,
    output: Vec<OutputMessage<'a>>,
    parallel_tool_calls: bool,
    previous_response_id: (),
    reasoning: ReasoningEcho<'a>,
    store: bool,
    temperature: f64,
    text: TextConfig,
    tool_choice: &'static str,
    tools: [(); 0],
    top_p: f64,
    truncation: &'static str,
    usage: Option<ResponsesUsage>,
    user: (),
    metadata: Empty,
}

#[derive(Serialize)]
struct ReasoningEcho<'a> {
    effort: Option<&'a str>,
    summary: (),
}

#[derive(Serialize)]
struct TextConfig {
    format: TextFormat,
}

#[derive(Serialize)]
struct TextFormat {
    #[serde(rename = "type")]
    kind: &'static str,
}

/// `{}`
#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct OutputMessage<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    status: &'static str,
    content: Vec<OutputText<'a>>,
    role: &'static str,
}

#[derive(Serialize)]
struct OutputText<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    annotations: [(); 0],
    logprobs: [(); 0],
    text: &'a str,
}

#[derive(Debug, Serialize)]
struct ResponsesUsage {
    input_tokens: u64,
    input_tokens_details: CachedTokens,
    output_tokens: u64,
    output_tokens_details: ReasoningTokens,
    total_tokens: u64,
}

impl From<&Usage> for ResponsesUsage {
    fn from(usage: &Usage) -> Self {
        ResponsesUsage {
            input_tokens: usage.prompt_tokens,
            input_tokens_details: CachedTokens {
                cached_tokens: usage.cached_tokens,
            },
            output_tokens: usage.completion_tokens,
            output_tokens_details: ReasoningTokens {
                reasoning_tokens: usage.reasoning_tokens,
            },
            total_tokens: usage.total_tokens(),
        }
    }
}

/// What a response echoes of its request.
struct Echo {
    max_output_tokens: Option<u64>,
    reasoning_effort: Option<String>,
}

impl Echo {
    fn of(job: &Job) -> Self {
        Echo {
            max_output_tokens: job.requested_limit,
            reasoning_effort: job.reasoning_effort.clone(),
        }
    }

    fn response<'a>(
        &'a self,
        meta: &'a Meta,
        status: &'static str,
        output: Vec<OutputMessage<'a>>,
        usage: Option<ResponsesUsage>,
    ) -> ResponseObject<'a> {
        ResponseObject {
            id: &meta.id,
            object: "response",
            created_at: meta.created,
            status,
            error: (),
            incomplete_details: (),
            instructions: (),
            max_output_tokens: self.max_output_tokens,
            model: &meta.model,
            output,
            parallel_tool_calls: true,
            previous_response_id: (),
            reasoning: ReasoningEcho {
                effort: self.reasoning_effort.as_deref(),
                summary: (),
            },
            store: false,
            temperature: 1.0,
            text: TextConfig {
                format: TextFormat { kind: "text" },
            },
            tool_choice: "auto",
            tools: [],
            top_p: 1.0,
            truncation: "disabled",
            usage,
            user: (),
            metadata: Empty {},
        }
    }
}

fn output_text(text: &str) -> OutputText<'_> {
    OutputText {
        kind: "output_text",
        annotations: [],
        logprobs: [],
        text,
    }
}

fn message<'a>(
    id: &'a str,
    status: &'static str,
    content: Vec<OutputText<'a>>,
) -> OutputMessage<'a> {
    OutputMessage {
        id,
        kind: "message",
        status,
        content,
        role: "assistant",
    }
}

pub fn render(meta: &Meta, job: &Job, usage: &Usage) -> Vec<u8> {
    let texts = job.texts();
    let item_id = new_id("msg_");
    let output = texts
        .iter()
        .map(|text| message(&item_id, "completed", vec![output_text(text)]))
        .collect();
    let echo = Echo::of(job);
    to_json(&echo.response(meta, "completed", output, Some(usage.into())))
}

#[derive(Serialize)]
struct ResponseEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    response: ResponseObject<'a>,
}

#[derive(Serialize)]
struct ItemEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    output_index: u32,
    item: OutputMessage<'a>,
}

#[derive(Serialize)]
struct PartEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    part: OutputText<'a>,
}

#[derive(Serialize)]
struct TextEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sequence_number: u64,
    item_id: &'a str,
    output_index: u32,
    content_index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    logprobs: [(); 0],
}

pub struct ResponseStream {
    meta: Meta,
    echo: Echo,
    item_id: String,
    usage: Option<Usage>,
    sequence_number: u64,
    /// The text so far, for the `done` events.
    text: String,
}

impl ResponseStream {
    pub fn new(meta: Meta, job: &Job, usage: Option<Usage>) -> Self {
        ResponseStream {
            meta,
            echo: Echo::of(job),
            item_id: new_id("msg_"),
            usage,
            sequence_number: 0,
            text: String::with_capacity(job.max_tokens as usize * 7),
        }
    }

    fn next_sequence_number(&mut self) -> u64 {
        let n = self.sequence_number;
        self.sequence_number += 1;
        n
    }

    fn response_event(
        &mut self,
        kind: &'static str,
        status: &'static str,
        output: Vec<OutputMessage<'_>>,
    ) -> Bytes {
        let sequence_number = self.next_sequence_number();
        let usage = match status {
            "completed" => self.usage.as_ref().map(ResponsesUsage::from),
            _ => None,
        };
        let response = self.echo.response(&self.meta, status, output, usage);
        event_frame(
            kind,
            &ResponseEvent {
                kind,
                sequence_number,
                response,
            },
        )
    }

    fn item_event(
        &mut self,
        kind: &'static str,
        status: &'static str,
        content: Vec<OutputText<'_>>,
    ) -> Bytes {
        let sequence_number = self.next_sequence_number();
        let item = message(&self.item_id, status, content);
        event_frame(
            kind,
            &ItemEvent {
                kind,
                sequence_number,
                output_index: 0,
                item,
            },
        )
    }

    fn part_event(&mut self, kind: &'static str, text: &str) -> Bytes {
        let sequence_number = self.next_sequence_number();
        let event = PartEvent {
            kind,
            sequence_number,
            item_id: &self.item_id,
            output_index: 0,
            content_index: 0,
            part: output_text(text),
        };
        event_frame(kind, &event)
    }

    fn text_event(&mut self, kind: &'static str, delta: Option<&str>, text: Option<&str>) -> Bytes {
        let sequence_number = self.next_sequence_number();
        let event = TextEvent {
            kind,
            sequence_number,
            item_id: &self.item_id,
            output_index: 0,
            content_index: 0,
            delta,
            text,
            logprobs: [],
        };
        event_frame(kind, &event)
    }
}

impl StreamShape for ResponseStream {
    fn opening(&mut self, out: &mut VecDeque<Bytes>) {
        out.push_back(self.response_event("response.created", "in_progress", Vec::new()));
        out.push_back(self.response_event("response.in_progress", "in_progress", Vec::new()));
        out.push_back(self.item_event("response.output_item.added", "in_progress", Vec::new()));
        out.push_back(self.part_event("response.content_part.added", ""));
    }

    fn token(&mut self, _choice: u32, text: &str) -> Bytes {
        self.text.push_str(text);
        self.text_event("response.output_text.delta", Some(text), None)
    }

    fn closing(&mut self, out: &mut VecDeque<Bytes>) {
        let text = std::mem::take(&mut self.text);
        out.push_back(self.text_event("response.output_text.done", None, Some(&text)));
        out.push_back(self.part_event("response.content_part.done", &text));
        out.push_back(self.item_event(
            "response.output_item.done",
            "completed",
            vec![output_text(&text)],
        ));
        let item_id = self.item_id.clone();
        let output = vec![message(&item_id, "completed", vec![output_text(&text)])];
        out.push_back(self.response_event("response.completed", "completed", output));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::test_support::{job, meta, parse_sse, usage};
    use crate::api::TextApi;
    use crate::stream::tests::drain;

    #[test]
    fn parses_input_forms() {
        let job = parse(br#"{"model":"m","instructions":"ab","input":"cd","max_output_tokens":5,"reasoning":{"effort":"high"}}"#).unwrap();
        assert_eq!(job.prompt.text, b"abcd");
        assert_eq!(job.max_tokens, 5);
        assert!(job.reasoning);
        assert_eq!(job.reasoning_effort.as_deref(), Some("high"));
        let job = parse(
            br#"{"input":[{"role":"user","content":[{"type":"input_text","text":"ab"}]},
                {"type":"function_call_output","call_id":"c","output":"cd"},{"role":"user","content":"ef"}]}"#,
        )
        .unwrap();
        assert_eq!(job.prompt.text, b"abcdef");
        assert!(!job.reasoning);
    }

    #[test]
    fn non_streaming_shape() {
        let job = job(1, 4, true);
        let usage = usage(&job);
        let v: serde_json::Value = serde_json::from_slice(&render(&meta(), &job, &usage)).unwrap();
        assert_eq!(v["object"], "response");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["output"][0]["type"], "message");
        assert_eq!(v["output"][0]["content"][0]["type"], "output_text");
        assert_eq!(
            v["output"][0]["content"][0]["text"].as_str().unwrap(),
            job.texts()[0]
        );
        assert_eq!(v["usage"]["input_tokens"], 4);
        assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 2);
        assert_eq!(v["usage"]["output_tokens"], 4);
        assert_eq!(v["usage"]["output_tokens_details"]["reasoning_tokens"], 2);
        assert_eq!(v["usage"]["total_tokens"], 8);
    }

    #[test]
    fn streaming_events() {
        let job = job(1, 3, false);
        let usage = usage(&job);
        let frames = parse_sse(&drain(TextApi::Responses.stream(meta(), &job, Some(usage))));
        let events: Vec<_> = frames.iter().map(|(e, _)| e.clone().unwrap()).collect();
        assert_eq!(
            events,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, (event, data)) in frames.iter().enumerate() {
            assert_eq!(data["type"], event.as_deref().unwrap());
            assert_eq!(data["sequence_number"], i as u64);
        }
        assert!(frames[0].1["response"]["usage"].is_null());
        let deltas: String = frames[4..7]
            .iter()
            .map(|(_, d)| d["delta"].as_str().unwrap())
            .collect();
        assert_eq!(frames[7].1["text"].as_str().unwrap(), deltas);
        let completed = &frames[10].1["response"];
        assert_eq!(completed["status"], "completed");
        assert_eq!(
            completed["output"][0]["content"][0]["text"]
                .as_str()
                .unwrap(),
            deltas
        );
        assert_eq!(completed["usage"]["output_tokens"], 3);
        assert_eq!(
            completed["usage"]["input_tokens_details"]["cached_tokens"],
            2
        );

        let frames = parse_sse(&drain(TextApi::Responses.stream(meta(), &job, None)));
        assert!(frames[10].1["response"]["usage"].is_null());
    }
}
