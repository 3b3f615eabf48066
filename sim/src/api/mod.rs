//! The APIs the simulator speaks: request parsing into one API-independent [`Job`], and response
//! shaping back into each API's own JSON and SSE.
//!
//! One module per API; each parses only the fields that change what the simulator does (model,
//! prompt text, limits, stream flags, reasoning) and ignores the rest, like a lenient server.
//! Shapes follow the real APIs field for field where clients read them.

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod messages;
pub mod models;
pub mod responses;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::{DEFAULT_COMPLETION_TOKENS, MAX_COMPLETION_TOKENS};
use crate::engine::{CacheUsage, Prompt};
use crate::error::SimError;
use crate::metrics::Finish;
use crate::stream::{StreamShape, TokenStream};
use crate::textgen::{generate, mix64};

/// The APIs that generate text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextApi {
    /// `POST /v1/chat/completions`
    Chat,
    /// `POST /v1/completions`
    Completions,
    /// `POST /v1/responses`
    Responses,
    /// `POST /v1/messages` (Anthropic)
    Messages,
}

impl TextApi {
    pub fn parse(self, body: &[u8]) -> Result<Job, SimError> {
        match self {
            TextApi::Chat => chat::parse(body),
            TextApi::Completions => completions::parse(body),
            TextApi::Responses => responses::parse(body),
            TextApi::Messages => messages::parse(body),
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            TextApi::Chat => "chatcmpl-",
            TextApi::Completions => "cmpl-",
            TextApi::Responses => "resp_",
            TextApi::Messages => "msg_",
        }
    }

    /// The whole non-streaming response body.
    pub fn render(self, meta: &Meta, job: &Job, usage: &Usage) -> Vec<u8> {
        match self {
            TextApi::Chat => chat::render(meta, job, usage),
            TextApi::Completions => completions::render(meta, job, usage),
            TextApi::Responses => responses::render(meta, job, usage),
            TextApi::Messages => messages::render(meta, job, usage),
        }
    }

    /// The frames of a streaming response. `usage` is `None` when the stream must carry none.
    pub fn stream(self, meta: Meta, job: &Job, usage: Option<Usage>) -> TokenStream {
        let shape: Box<dyn StreamShape> = match self {
            TextApi::Chat => Box::new(chat::ChatStream::new(meta, job, usage)),
            TextApi::Completions => Box::new(completions::CompletionStream::new(meta, job, usage)),
            TextApi::Responses => Box::new(responses::ResponseStream::new(meta, job, usage)),
            TextApi::Messages => Box::new(messages::MessageStream::new(meta, job, usage)),
        };
        TokenStream::new(
            shape,
            job.prompt.seed(),
            job.choices,
            job.max_tokens,
            job.echo.clone(),
        )
    }
}

/// What a guard model (Llama Guard's output format) says about `prompt`: `safe`, or `unsafe`
/// and the category line `S1` when it contains one of `flags` (lower-case words).
pub fn guard_verdict(prompt: &[u8], flags: &[String]) -> &'static str {
    let text = String::from_utf8_lossy(prompt).to_ascii_lowercase();
    if flags
        .iter()
        .any(|f| !f.is_empty() && text.contains(f.as_str()))
    {
        "unsafe\nS1"
    } else {
        "safe"
    }
}

/// What a text-generating request asks of the engine, whatever API carried it.
#[derive(Debug, Clone)]
pub struct Job {
    /// `None` when the request names no model (the first served model answers).
    pub model: Option<String>,
    pub prompt: Prompt,
    /// Tokens generated per choice.
    pub max_tokens: u64,
    /// The token limit the request set, echoed where the API echoes it.
    pub requested_limit: Option<u64>,
    pub finish: Finish,
    pub choices: u32,
    pub stream: bool,
    /// The client asked for usage in the stream (always true where the API always sends it).
    pub stream_usage: bool,
    /// Reasoning was requested: half the completion tokens are reported as reasoning.
    pub reasoning: bool,
    /// The requested reasoning effort, echoed by the Responses API.
    pub reasoning_effort: Option<String>,
    /// The prompt text the output starts with (`x-sim-echo`).
    pub echo: Option<std::sync::Arc<str>>,
}

impl Job {
    /// The generated text of every choice.
    pub fn texts(&self) -> Vec<String> {
        let seed = self.prompt.seed();
        (0..self.choices)
            .map(|choice| generate(seed, choice, self.max_tokens, self.echo.clone()))
            .collect()
    }

    /// Tokens generated over all choices.
    pub fn completion_tokens(&self) -> u64 {
        self.max_tokens * u64::from(self.choices)
    }

    /// Rejects prompts that do not fit the context window, as vLLM does.
    pub fn check_context(&self, max_model_len_tokens: u64) -> Result<(), SimError> {
        let completion = self.requested_limit.map_or(0, |_| self.completion_tokens());
        let requested = self.prompt.tokens + completion;
        let too_long = match self.requested_limit {
            Some(_) => requested > max_model_len_tokens,
            None => self.prompt.tokens >= max_model_len_tokens,
        };
        if too_long {
            return Err(SimError::ContextTooLong {
                limit: max_model_len_tokens,
                requested,
                prompt: self.prompt.tokens,
                completion,
            });
        }
        Ok(())
    }
}

/// Token limit and finish reason from the request's limit field: no limit means the model stops
/// by itself after [`DEFAULT_COMPLETION_TOKENS`]; a limit above [`MAX_COMPLETION_TOKENS`] is never
/// reached, so the model stops by itself there too.
pub fn token_limit(requested: Option<u64>, param: &'static str) -> Result<(u64, Finish), SimError> {
    match requested {
        None => Ok((DEFAULT_COMPLETION_TOKENS, Finish::Stop)),
        Some(0) => Err(SimError::invalid_param(
            param,
            format!("{param} must be at least 1"),
        )),
        Some(n) if n > MAX_COMPLETION_TOKENS => Ok((MAX_COMPLETION_TOKENS, Finish::Stop)),
        Some(n) => Ok((n, Finish::Length)),
    }
}

/// `n`: how many choices, 1 to 128.
pub fn choice_count(n: Option<u32>) -> Result<u32, SimError> {
    match n.unwrap_or(1) {
        n @ 1..=128 => Ok(n),
        _ => Err(SimError::invalid_param("n", "n must be between 1 and 128")),
    }
}

/// Parses a JSON request body; any syntax or shape error is a 400.
pub fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, SimError> {
    serde_json::from_slice(body)
        .map_err(|e| SimError::invalid(format!("Invalid request body: {e}")))
}

/// Message content as both OpenAI and Anthropic carry it: a string, or an array of typed parts of
/// which only text counts (images, tool calls and the like carry no prompt text here).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(default)]
    text: Option<String>,
}

impl Content {
    pub fn append_to(&self, out: &mut Vec<u8>) {
        match self {
            Content::Text(text) => out.extend_from_slice(text.as_bytes()),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .for_each(|t| out.extend_from_slice(t.as_bytes())),
        }
    }
}

/// `stream_options` of the OpenAI APIs.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// Token counts of one response, in tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    /// Tokens of prompt blocks this request added to the cache (Anthropic's cache creation).
    pub cache_creation_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
}

impl Usage {
    pub fn new(job: &Job, cache: CacheUsage) -> Self {
        let completion_tokens = job.completion_tokens();
        Usage {
            prompt_tokens: job.prompt.tokens,
            cached_tokens: cache.cached_tokens,
            cache_creation_tokens: cache.created_tokens,
            completion_tokens,
            reasoning_tokens: if job.reasoning {
                completion_tokens / 2
            } else {
                0
            },
        }
    }

    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// Anthropic's `input_tokens`: the prompt tokens neither read from nor written to the cache.
    pub fn anthropic_input_tokens(&self) -> u64 {
        self.prompt_tokens
            .saturating_sub(self.cached_tokens)
            .saturating_sub(self.cache_creation_tokens)
    }

    pub fn openai(&self) -> OpenAiUsage {
        OpenAiUsage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.total_tokens(),
            prompt_tokens_details: CachedTokens {
                cached_tokens: self.cached_tokens,
            },
            completion_tokens_details: ReasoningTokens {
                reasoning_tokens: self.reasoning_tokens,
            },
        }
    }
}

/// `usage` of chat and text completions.
#[derive(Debug, Serialize)]
pub struct OpenAiUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub prompt_tokens_details: CachedTokens,
    pub completion_tokens_details: ReasoningTokens,
}

#[derive(Debug, Serialize)]
pub struct CachedTokens {
    pub cached_tokens: u64,
}

#[derive(Debug, Serialize)]
pub struct ReasoningTokens {
    pub reasoning_tokens: u64,
}

/// Identity of one response.
#[derive(Debug, Clone)]
pub struct Meta {
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    pub model: String,
    /// `system_fingerprint` of chat completions (`--system-fingerprint`; else null).
    pub fingerprint: Option<String>,
}

impl Meta {
    pub fn new(api: TextApi, model: &str) -> Self {
        Meta {
            id: new_id(api.id_prefix()),
            created: unix_now(),
            model: model.to_owned(),
            fingerprint: None,
        }
    }
}

/// A unique id with an API's prefix: 24 hex digits, distinct per process and per call.
pub fn new_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let process = *PROCESS.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        mix64(nanos ^ u64::from(std::process::id()))
    });
    let n = NEXT.fetch_add(1, Relaxed);
    format!("{prefix}{:016x}{:08x}", mix64(process ^ n), n as u32)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A job for shaping tests: a fixed prompt, `max_tokens` tokens per choice.
    pub fn job(choices: u32, max_tokens: u64, reasoning: bool) -> Job {
        Job {
            model: Some("m".into()),
            prompt: Prompt::from_text(b"hello simulator".to_vec()),
            max_tokens,
            requested_limit: Some(max_tokens),
            finish: Finish::Length,
            choices,
            stream: true,
            stream_usage: true,
            reasoning,
            reasoning_effort: reasoning.then(|| "low".to_string()),
            echo: None,
        }
    }

    pub fn usage(job: &Job) -> Usage {
        Usage::new(
            job,
            CacheUsage {
                cached_tokens: 2,
                created_tokens: 0,
            },
        )
    }

    pub fn meta() -> Meta {
        Meta {
            id: "id-1".into(),
            created: 1,
            model: "m".into(),
            fingerprint: None,
        }
    }

    /// Splits an SSE body into (event name, parsed data) pairs; `[DONE]` parses as a string.
    pub fn parse_sse(frames: &[String]) -> Vec<(Option<String>, serde_json::Value)> {
        frames
            .iter()
            .map(|frame| {
                assert!(frame.ends_with("\n\n"), "frame not terminated: {frame:?}");
                let mut event = None;
                let mut data = None;
                for line in frame.trim_end().lines() {
                    if let Some(e) = line.strip_prefix("event: ") {
                        event = Some(e.to_string());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = Some(if d == "[DONE]" {
                            serde_json::Value::String(d.into())
                        } else {
                            serde_json::from_str(d).unwrap()
                        });
                    } else {
                        panic!("unexpected line {line:?}");
                    }
                }
                (event, data.unwrap())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(token_limit(None, "max_tokens").unwrap(), (16, Finish::Stop));
        assert_eq!(
            token_limit(Some(5), "max_tokens").unwrap(),
            (5, Finish::Length)
        );
        assert_eq!(
            token_limit(Some(100_000), "max_tokens").unwrap(),
            (4096, Finish::Stop)
        );
        assert!(token_limit(Some(0), "max_tokens").is_err());
        assert!(choice_count(Some(0)).is_err());
        assert_eq!(choice_count(None).unwrap(), 1);
    }

    #[test]
    fn context_window() {
        let mut job = test_support::job(1, 10, false);
        job.prompt = Prompt::from_text(vec![b'x'; 400]);
        assert!(job.check_context(110).is_ok());
        assert!(job.check_context(109).is_err());
        job.requested_limit = None;
        assert!(job.check_context(101).is_ok());
        assert!(job.check_context(100).is_err());
    }

    #[test]
    fn ids_are_unique() {
        let a = new_id("chatcmpl-");
        assert!(a.starts_with("chatcmpl-"));
        assert_eq!(a.len(), "chatcmpl-".len() + 24);
        assert_ne!(a, new_id("chatcmpl-"));
    }
}
