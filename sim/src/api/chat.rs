//! `POST /v1/chat/completions`: OpenAI chat completions, plain and streamed.
//!
//! The stream is vLLM's: a `delta.role` chunk per choice, one content chunk per token, a chunk
//! with `finish_reason` per choice, then, only when `stream_options.include_usage` is true, a
//! chunk with `"choices":[]` and `usage`, then `data: [DONE]`. Other chunks have no `usage` key.

use std::collections::VecDeque;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    choice_count, parse_json, token_limit, Content, Job, Meta, OpenAiUsage, StreamOptions, Usage,
};
use crate::body::to_json;
use crate::engine::Prompt;
use crate::error::SimError;
use crate::sse::{data_frame, DONE_FRAME};
use crate::stream::StreamShape;

#[derive(Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Vec<Message>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    n: Option<u32>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    reasoning_effort: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    content: Option<Content>,
}

pub fn parse(body: &[u8]) -> Result<Job, SimError> {
    let request: ChatRequest = parse_json(body)?;
    let mut text = Vec::new();
    for content in request.messages.iter().filter_map(|m| m.content.as_ref()) {
        content.append_to(&mut text);
    }
    let (requested_limit, param) = match request.max_completion_tokens {
        Some(limit) => (Some(limit), "max_completion_tokens"),
        None => (request.max_tokens, "max_tokens"),
    };
    let (max_tokens, finish) = token_limit(requested_limit, param)?;
    Ok(Job {
        model: request.model,
        prompt: Prompt::from_text(text),
        max_tokens,
        requested_limit,
        finish,
        choices: choice_count(request.n)?,
        stream: request.stream.unwrap_or(false),
        stream_usage: request
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        reasoning: request.reasoning_effort.is_some(),
        reasoning_effort: request.reasoning_effort,
        echo: None,
    })
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<Choice<'a>>,
    usage: OpenAiUsage,
    system_fingerprint: Option<&'a str>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    logprobs: (),
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: &'a str,
    refusal: (),
}

pub fn render(meta: &Meta, job: &Job, usage: &Usage) -> Vec<u8> {
    let texts = job.texts();
    to_json(&ChatCompletion {
        id: &meta.id,
        object: "chat.completion",
        created: meta.created,
        model: &meta.model,
        choices: (0..)
            .zip(&texts)
            .map(|(index, text)| Choice {
                index,
                message: AssistantMessage {
                    role: "assistant",
                    content: text,
                    refusal: (),
                },
                logprobs: (),
                finish_reason: job.finish.openai(),
            })
            .collect(),
        usage: usage.openai(),
        system_fingerprint: meta.fingerprint.as_deref(),
    })
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<OpenAiUsage>,
    /// Only with `--system-fingerprint` (streams without one stay as they were).
    #[serde(skip_serializing_if = "Option::is_none")]
    system_fingerprint: Option<&'a str>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: (),
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

pub struct ChatStream {
    meta: Meta,
    choices: u32,
    finish: &'static str,
    usage: Option<Usage>,
}

impl ChatStream {
    pub fn new(meta: Meta, job: &Job, usage: Option<Usage>) -> Self {
        ChatStream {
            meta,
            choices: job.choices,
            finish: job.finish.openai(),
            usage,
        }
    }

    fn chunk(&self, choices: &[ChunkChoice<'_>], usage: Option<OpenAiUsage>) -> Bytes {
        data_frame(&Chunk {
            id: &self.meta.id,
            object: "chat.completion.chunk",
            created: self.meta.created,
            model: &self.meta.model,
            choices,
            usage,
            system_fingerprint: self.meta.fingerprint.as_deref(),
        })
    }
}

impl StreamShape for ChatStream {
    fn opening(&mut self, out: &mut VecDeque<Bytes>) {
        for index in 0..self.choices {
            let delta = Delta {
                role: Some("assistant"),
                content: Some(""),
            };
            out.push_back(self.chunk(
                &[ChunkChoice {
                    index,
                    delta,
                    logprobs: (),
                    finish_reason: None,
                }],
                None,
            ));
        }
    }

    fn token(&mut self, index: u32, text: &str) -> Bytes {
        let delta = Delta {
            role: None,
            content: Some(text),
        };
        self.chunk(
            &[ChunkChoice {
                index,
                delta,
                logprobs: (),
                finish_reason: None,
            }],
            None,
        )
    }

    fn closing(&mut self, out: &mut VecDeque<Bytes>) {
        for index in 0..self.choices {
            let delta = Delta {
                role: None,
                content: None,
            };
            let finish_reason = Some(self.finish);
            out.push_back(self.chunk(
                &[ChunkChoice {
                    index,
                    delta,
                    logprobs: (),
                    finish_reason,
                }],
                None,
            ));
        }
        if let Some(usage) = self.usage {
            out.push_back(self.chunk(&[], Some(usage.openai())));
        }
        out.push_back(Bytes::from_static(DONE_FRAME));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::test_support::{job, meta, parse_sse, usage};
    use crate::api::TextApi;
    use crate::stream::tests::drain;

    #[test]
    fn parses_prompt_limits_and_flags() {
        let job = parse(
            br#"{"model":"m","messages":[{"role":"system","content":"abcd"},
                {"role":"user","content":[{"type":"text","text":"efgh"},{"type":"image_url","image_url":{"url":"x"}}]},
                {"role":"assistant","content":null}],
                "max_tokens":9,"max_completion_tokens":7,"n":2,"stream":true,
                "stream_options":{"include_usage":true},"reasoning_effort":"low","temperature":0.2}"#,
        )
        .unwrap();
        assert_eq!(job.prompt.text, b"abcdefgh");
        assert_eq!(job.prompt.tokens, 2);
        assert_eq!((job.max_tokens, job.choices), (7, 2));
        assert!(job.stream && job.stream_usage && job.reasoning);
        assert_eq!(job.completion_tokens(), 14);

        assert!(parse(b"{not json").is_err());
        assert!(parse(br#"{"model":"m"}"#).is_err(), "messages are required");
        assert!(parse(br#"{"messages":[],"max_tokens":0}"#).is_err());
    }

    #[test]
    fn non_streaming_shape() {
        let job = job(2, 3, true);
        let usage = usage(&job);
        let v: serde_json::Value = serde_json::from_slice(&render(&meta(), &job, &usage)).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][1]["index"], 1);
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(content.split_whitespace().count(), 3);
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["prompt_tokens"], 4);
        assert_eq!(v["usage"]["completion_tokens"], 6);
        assert_eq!(v["usage"]["total_tokens"], 10);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
        assert_eq!(
            v["usage"]["completion_tokens_details"]["reasoning_tokens"],
            3
        );
    }

    #[test]
    fn streaming_shape_with_usage() {
        let job = job(1, 3, false);
        let usage = usage(&job);
        let frames = parse_sse(&drain(TextApi::Chat.stream(meta(), &job, Some(usage))));
        assert_eq!(frames.len(), 1 + 3 + 1 + 1 + 1);
        let (first, last) = (&frames[0].1, &frames[frames.len() - 1].1);
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(last, "[DONE]");
        let mut text = String::new();
        for (event, chunk) in &frames[1..4] {
            assert!(event.is_none());
            assert!(
                chunk.get("usage").is_none(),
                "no usage key outside the usage chunk"
            );
            assert!(chunk["choices"][0]["finish_reason"].is_null());
            text.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap());
        }
        assert_eq!(
            text,
            job.texts()[0],
            "the stream carries the non-streaming text"
        );
        assert_eq!(frames[4].1["choices"][0]["finish_reason"], "length");
        assert!(frames[4].1.get("usage").is_none());
        let usage_chunk = &frames[5].1;
        assert_eq!(usage_chunk["choices"].as_array().unwrap().len(), 0);
        assert_eq!(usage_chunk["usage"]["completion_tokens"], 3);
        assert_eq!(
            usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"],
            2
        );
    }

    #[test]
    fn streaming_without_usage_and_with_choices() {
        let job = job(2, 2, false);
        let frames = parse_sse(&drain(TextApi::Chat.stream(meta(), &job, None)));
        // Two role chunks, 2x2 tokens, two finish chunks, [DONE].
        assert_eq!(frames.len(), 2 + 4 + 2 + 1);
        assert!(frames.iter().all(|(_, f)| f.get("usage").is_none()));
        assert_eq!(frames[7].1["choices"][0]["index"], 1);
    }
}
