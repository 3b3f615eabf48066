//! `POST /v1/completions`: OpenAI legacy text completions, plain and streamed.
//!
//! Streams as vLLM does: one `text_completion` chunk per token, a chunk with `finish_reason` per
//! choice, the `"choices":[]` usage chunk only when `stream_options.include_usage` is true, then
//! `data: [DONE]`. A batch of prompts is treated as one prompt (their concatenation).

use std::collections::VecDeque;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{choice_count, parse_json, token_limit, Job, Meta, OpenAiUsage, StreamOptions, Usage};
use crate::body::to_json;
use crate::engine::Prompt;
use crate::error::SimError;
use crate::sse::{data_frame, DONE_FRAME};
use crate::stream::StreamShape;

/// A prompt or embedding input: text, texts, token ids, or batches of token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TextInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenBatches(Vec<Vec<u32>>),
}

impl TextInput {
    /// Each input as prompt bytes. Token ids become 4 bytes each, so they count one token apiece.
    pub fn into_items(self) -> Vec<Vec<u8>> {
        let ids = |ids: Vec<u32>| ids.iter().flat_map(|id| id.to_le_bytes()).collect();
        match self {
            TextInput::Text(text) => vec![text.into_bytes()],
            TextInput::Texts(texts) => texts.into_iter().map(String::into_bytes).collect(),
            TextInput::Tokens(tokens) => vec![ids(tokens)],
            TextInput::TokenBatches(batches) => batches.into_iter().map(ids).collect(),
        }
    }
}

#[derive(Deserialize)]
struct CompletionRequest {
    model: Option<String>,
    prompt: TextInput,
    max_tokens: Option<u64>,
    n: Option<u32>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

pub fn parse(body: &[u8]) -> Result<Job, SimError> {
    let request: CompletionRequest = parse_json(body)?;
    let (max_tokens, finish) = token_limit(request.max_tokens, "max_tokens")?;
    Ok(Job {
        model: request.model,
        prompt: Prompt::from_text(request.prompt.into_items().concat()),
        max_tokens,
        requested_limit: request.max_tokens,
        finish,
        choices: choice_count(request.n)?,
        stream: request.stream.unwrap_or(false),
        stream_usage: request
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        reasoning: false,
        reasoning_effort: None,
        echo: None,
    })
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<Choice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<OpenAiUsage>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    text: &'a str,
    logprobs: (),
    finish_reason: Option<&'static str>,
}

pub fn render(meta: &Meta, job: &Job, usage: &Usage) -> Vec<u8> {
    let texts = job.texts();
    let choices = (0..)
        .zip(&texts)
        .map(|(index, text)| Choice {
            index,
            text,
            logprobs: (),
            finish_reason: Some(job.finish.openai()),
        })
        .collect();
    to_json(&Completion {
        id: &meta.id,
        object: "text_completion",
        created: meta.created,
        model: &meta.model,
        choices,
        usage: Some(usage.openai()),
    })
}

pub struct CompletionStream {
    meta: Meta,
    choices: u32,
    finish: &'static str,
    usage: Option<Usage>,
}

impl CompletionStream {
    pub fn new(meta: Meta, job: &Job, usage: Option<Usage>) -> Self {
        CompletionStream {
            meta,
            choices: job.choices,
            finish: job.finish.openai(),
            usage,
        }
    }

    fn chunk(&self, choices: Vec<Choice<'_>>, usage: Option<OpenAiUsage>) -> Bytes {
        data_frame(&Completion {
            id: &self.meta.id,
            object: "text_completion",
            created: self.meta.created,
            model: &self.meta.model,
            choices,
            usage,
        })
    }
}

impl StreamShape for CompletionStream {
    fn opening(&mut self, _out: &mut VecDeque<Bytes>) {}

    fn token(&mut self, index: u32, text: &str) -> Bytes {
        self.chunk(
            vec![Choice {
                index,
                text,
                logprobs: (),
                finish_reason: None,
            }],
            None,
        )
    }

    fn closing(&mut self, out: &mut VecDeque<Bytes>) {
        for index in 0..self.choices {
            let finish_reason = Some(self.finish);
            out.push_back(self.chunk(
                vec![Choice {
                    index,
                    text: "",
                    logprobs: (),
                    finish_reason,
                }],
                None,
            ));
        }
        if let Some(usage) = self.usage {
            out.push_back(self.chunk(Vec::new(), Some(usage.openai())));
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
    fn prompt_forms() {
        assert_eq!(parse(br#"{"prompt":"abcde"}"#).unwrap().prompt.tokens, 2);
        assert_eq!(
            parse(br#"{"prompt":["ab","cd"]}"#).unwrap().prompt.text,
            b"abcd"
        );
        assert_eq!(parse(br#"{"prompt":[1,2,3]}"#).unwrap().prompt.tokens, 3);
        assert_eq!(
            parse(br#"{"prompt":[[1,2],[3]]}"#).unwrap().prompt.tokens,
            3
        );
        assert!(parse(br#"{"prompt":{"a":1}}"#).is_err());
    }

    #[test]
    fn shapes() {
        let job = job(1, 2, false);
        let usage = usage(&job);
        let v: serde_json::Value = serde_json::from_slice(&render(&meta(), &job, &usage)).unwrap();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"].as_str().unwrap(), job.texts()[0]);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 2);

        let frames = parse_sse(&drain(TextApi::Completions.stream(
            meta(),
            &job,
            Some(usage),
        )));
        assert_eq!(frames.len(), 2 + 1 + 1 + 1);
        assert!(frames[..3].iter().all(|(_, f)| f.get("usage").is_none()));
        assert_eq!(frames[2].1["choices"][0]["finish_reason"], "length");
        assert_eq!(frames[3].1["usage"]["total_tokens"], 6);
        assert_eq!(frames[3].1["choices"].as_array().unwrap().len(), 0);
        assert_eq!(frames[4].1, "[DONE]");
    }
}
