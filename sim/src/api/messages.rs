//! `POST /v1/messages`: the Anthropic Messages API, plain and streamed.
//!
//! Usage follows Anthropic's split of the prompt: `cache_read_input_tokens` were found in the
//! prefix cache, `cache_creation_input_tokens` were added to it, and `input_tokens` is the rest.
//! The stream is `message_start` (usage with `output_tokens: 1`), `content_block_start`, `ping`,
//! one `content_block_delta` per token, `content_block_stop`, `message_delta` (final
//! `output_tokens`), `message_stop`; with usage suppressed both usage objects are left out.

use std::collections::VecDeque;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{parse_json, token_limit, Content, Job, Meta, Usage};
use crate::body::to_json;
use crate::engine::Prompt;
use crate::error::SimError;
use crate::sse::event_frame;
use crate::stream::StreamShape;

#[derive(Deserialize)]
struct MessagesRequest {
    model: Option<String>,
    system: Option<Content>,
    messages: Vec<Message>,
    max_tokens: Option<u64>,
    stream: Option<bool>,
}

#[derive(Deserialize)]
struct Message {
    content: Option<Content>,
}

pub fn parse(body: &[u8]) -> Result<Job, SimError> {
    let request: MessagesRequest = parse_json(body)?;
    let mut text = Vec::new();
    let contents = request
        .system
        .iter()
        .chain(request.messages.iter().filter_map(|m| m.content.as_ref()));
    for content in contents {
        content.append_to(&mut text);
    }
    let (max_tokens, finish) = token_limit(request.max_tokens, "max_tokens")?;
    Ok(Job {
        model: request.model,
        prompt: Prompt::from_text(text),
        max_tokens,
        requested_limit: request.max_tokens,
        finish,
        choices: 1,
        stream: request.stream.unwrap_or(false),
        stream_usage: true,
        reasoning: false,
        reasoning_effort: None,
        echo: None,
    })
}

#[derive(Serialize)]
struct MessageObject<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<TextBlock<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: (),
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<AnthropicUsage>,
}

#[derive(Serialize)]
struct TextBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Debug, Serialize)]
struct AnthropicUsage {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    output_tokens: u64,
}

impl AnthropicUsage {
    fn new(usage: &Usage, output_tokens: u64) -> Self {
        AnthropicUsage {
            input_tokens: usage.anthropic_input_tokens(),
            cache_creation_input_tokens: usage.cache_creation_tokens,
            cache_read_input_tokens: usage.cached_tokens,
            output_tokens,
        }
    }
}

pub fn render(meta: &Meta, job: &Job, usage: &Usage) -> Vec<u8> {
    let texts = job.texts();
    to_json(&MessageObject {
        id: &meta.id,
        kind: "message",
        role: "assistant",
        model: &meta.model,
        content: texts
            .iter()
            .map(|text| TextBlock { kind: "text", text })
            .collect(),
        stop_reason: Some(job.finish.anthropic()),
        stop_sequence: (),
        usage: Some(AnthropicUsage::new(usage, usage.completion_tokens)),
    })
}

#[derive(Serialize)]
struct MessageStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: MessageObject<'a>,
}

#[derive(Serialize)]
struct BlockStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    content_block: TextBlock<'a>,
}

#[derive(Serialize)]
struct BlockDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    delta: TextDelta<'a>,
}

#[derive(Serialize)]
struct TextDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct BlockStop {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
}

#[derive(Serialize)]
struct MessageDelta {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: StopDelta,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<OutputTokens>,
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: (),
}

#[derive(Serialize)]
struct OutputTokens {
    output_tokens: u64,
}

/// `{"type": NAME}` events: `ping`, `message_stop`.
#[derive(Serialize)]
struct Bare {
    #[serde(rename = "type")]
    kind: &'static str,
}

pub struct MessageStream {
    meta: Meta,
    stop_reason: &'static str,
    usage: Option<Usage>,
}

impl MessageStream {
    pub fn new(meta: Meta, job: &Job, usage: Option<Usage>) -> Self {
        MessageStream {
            meta,
            stop_reason: job.finish.anthropic(),
            usage,
        }
    }
}

impl StreamShape for MessageStream {
    fn opening(&mut self, out: &mut VecDeque<Bytes>) {
        let message = MessageObject {
            id: &self.meta.id,
            kind: "message",
            role: "assistant",
            model: &self.meta.model,
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: (),
            usage: self.usage.as_ref().map(|u| AnthropicUsage::new(u, 1)),
        };
        out.push_back(event_frame(
            "message_start",
            &MessageStart {
                kind: "message_start",
                message,
            },
        ));
        let block = TextBlock {
            kind: "text",
            text: "",
        };
        let start = BlockStart {
            kind: "content_block_start",
            index: 0,
            content_block: block,
        };
        out.push_back(event_frame("content_block_start", &start));
        out.push_back(event_frame("ping", &Bare { kind: "ping" }));
    }

    fn token(&mut self, _choice: u32, text: &str) -> Bytes {
        let delta = TextDelta {
            kind: "text_delta",
            text,
        };
        event_frame(
            "content_block_delta",
            &BlockDelta {
                kind: "content_block_delta",
                index: 0,
                delta,
            },
        )
    }

    fn closing(&mut self, out: &mut VecDeque<Bytes>) {
        out.push_back(event_frame(
            "content_block_stop",
            &BlockStop {
                kind: "content_block_stop",
                index: 0,
            },
        ));
        let delta = MessageDelta {
            kind: "message_delta",
            delta: StopDelta {
                stop_reason: self.stop_reason,
                stop_sequence: (),
            },
            usage: self.usage.map(|u| OutputTokens {
                output_tokens: u.completion_tokens,
            }),
        };
        out.push_back(event_frame("message_delta", &delta));
        out.push_back(event_frame(
            "message_stop",
            &Bare {
                kind: "message_stop",
            },
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::test_support::{job, meta, parse_sse, usage};
    use crate::api::TextApi;
    use crate::engine::CacheUsage;
    use crate::stream::tests::drain;

    #[test]
    fn parses_system_and_blocks() {
        let job = parse(
            br#"{"model":"m","system":[{"type":"text","text":"ab","cache_control":{"type":"ephemeral"}}],
                "messages":[{"role":"user","content":"cd"},{"role":"user","content":[{"type":"text","text":"ef"}]}],
                "max_tokens":3,"stream":true}"#,
        )
        .unwrap();
        assert_eq!(job.prompt.text, b"abcdef");
        assert_eq!(job.max_tokens, 3);
        assert!(job.stream);
    }

    #[test]
    fn non_streaming_usage_splits_the_prompt() {
        let mut job = job(1, 3, false);
        job.prompt = Prompt::from_text(vec![b'x'; 400]);
        let usage = Usage::new(
            &job,
            CacheUsage {
                cached_tokens: 32,
                created_tokens: 64,
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&render(&meta(), &job, &usage)).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["content"][0]["type"], "text");
        assert_eq!(v["stop_reason"], "max_tokens");
        assert_eq!(v["usage"]["input_tokens"], 100 - 32 - 64);
        assert_eq!(v["usage"]["cache_read_input_tokens"], 32);
        assert_eq!(v["usage"]["cache_creation_input_tokens"], 64);
        assert_eq!(v["usage"]["output_tokens"], 3);
    }

    #[test]
    fn streaming_events() {
        let job = job(1, 2, false);
        let usage = usage(&job);
        let frames = parse_sse(&drain(TextApi::Messages.stream(meta(), &job, Some(usage))));
        let events: Vec<_> = frames.iter().map(|(e, _)| e.clone().unwrap()).collect();
        assert_eq!(
            events,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        for (event, data) in &frames {
            assert_eq!(data["type"], event.as_deref().unwrap());
        }
        let start = &frames[0].1["message"];
        assert_eq!(start["usage"]["output_tokens"], 1);
        assert_eq!(start["usage"]["cache_read_input_tokens"], 2);
        assert_eq!(start["usage"]["input_tokens"], 2);
        assert_eq!(frames[3].1["delta"]["type"], "text_delta");
        assert_eq!(frames[6].1["usage"]["output_tokens"], 2);
        assert_eq!(frames[6].1["delta"]["stop_reason"], "max_tokens");

        let frames = parse_sse(&drain(TextApi::Messages.stream(meta(), &job, None)));
        assert!(frames[0].1["message"].get("usage").is_none());
        assert!(frames[6].1.get("usage").is_none());
    }
}
