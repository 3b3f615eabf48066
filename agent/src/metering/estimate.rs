//! Token estimates for responses whose provider reported no usage. Exact BPE counting costs
//! tens of microseconds per KB, so this never runs on a worker: settle hands the request body
//! and the retained response payload to the control thread, which calls [`estimate`].
//! Counts use the model's own tokenizer when one is configured (`metering/tokenizer.rs`), else
//! OpenAI's o200k_base encoding; records made this way are flagged `estimated`.

use std::sync::OnceLock;

use bytes::Bytes;
use sonic_rs::{JsonContainerTrait, JsonValueTrait};
use tiktoken_rs::CoreBPE;

use super::sse::{frame_data, FrameSplitter};
use super::Usage;
use crate::api::Api;

/// Per-message framing tokens, as OpenAI's chat format adds them.
const TOKENS_PER_MESSAGE: u64 = 3;

fn bpe() -> Option<&'static CoreBPE> {
    static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::o200k_base().ok()).as_ref()
}

/// Counts the tokens of `text`; falls back to bytes/4 if the tokenizer failed to load.
pub fn count_tokens(text: &str) -> u64 {
    match bpe() {
        Some(b) => b.encode_ordinary(text).len() as u64,
        None => text.len().div_ceil(4) as u64,
    }
}

/// What the estimator needs; moved to the control thread.
pub struct EstimateInput {
    pub api: Api,
    pub stream: bool,
    pub request_body: Bytes,
    /// `Inspection::prompt_spans`: raw JSON values carrying the prompt.
    pub prompt_spans: Vec<std::ops::Range<usize>>,
    /// The response payload as relayed (frames for streams, the body otherwise).
    pub response: Vec<Bytes>,
    /// Usage the provider did report (e.g. Anthropic's message_start before a reset).
    pub partial: Option<Usage>,
    /// The served model's own tokenizer, if configured (else o200k).
    pub tokenizer: Option<super::tokenizer::ModelTokenizer>,
    /// The engine that served, when its model counts prompts with the engine's `/tokenize`.
    pub engine: Option<std::sync::Arc<super::engine_tokenize::EngineTokenize>>,
}

/// Estimates usage locally, keeping any numbers the provider did report.
pub fn estimate(input: &EstimateInput) -> Usage {
    estimate_counted(input, None)
}

/// Like [`estimate`], with the prompt counted by the serving engine when the input names one
/// and the provider reported no prompt count; the local count stands in on any error, which
/// is returned with the outcome (`None`: the engine was not asked). Blocks on HTTP: estimator
/// and sampler threads only.
pub fn estimate_with_engine(
    input: &EstimateInput,
    agent: &ureq::Agent,
) -> (
    Usage,
    Option<Result<u64, super::engine_tokenize::TokenizeError>>,
) {
    let reported = input.partial.is_some_and(|p| p.input_tokens > 0);
    let asked = match &input.engine {
        Some(e) if !reported => Some(super::engine_tokenize::prompt_tokens(
            agent,
            e,
            input.api,
            &input.request_body,
        )),
        _ => None,
    };
    let counted = asked.as_ref().and_then(|r| r.as_ref().ok().copied());
    (estimate_counted(input, counted), asked)
}

/// The estimate, with `prompt` as the prompt count when the engine gave one.
fn estimate_counted(input: &EstimateInput, prompt: Option<u64>) -> Usage {
    let mut u = input.partial.unwrap_or_default();
    let tok = input.tokenizer.as_ref();
    if u.input_tokens == 0 {
        u.input_tokens = match (prompt, tok) {
            (Some(counted), _) => counted,
            (None, Some(t)) => count_input(
                &input.request_body,
                &input.prompt_spans,
                t.per_message,
                t.per_request,
                |s| t.count(s),
            ),
            (None, None) => estimate_input(&input.request_body, &input.prompt_spans),
        };
    }
    if u.output_tokens <= 1 {
        let text = generated_text(input.api, input.stream, &input.response);
        u.output_tokens = tok.map_or_else(|| count_tokens(&text), |t| t.count(&text));
    }
    u
}

/// Prompt tokens: every text in the prompt values counted, plus per-message framing.
pub fn estimate_input(body: &[u8], spans: &[std::ops::Range<usize>]) -> u64 {
    count_input(
        body,
        spans,
        TOKENS_PER_MESSAGE,
        TOKENS_PER_MESSAGE,
        count_tokens,
    )
}

/// `per_request`, plus each prompt text's count and `per_message`.
fn count_input(
    body: &[u8],
    spans: &[std::ops::Range<usize>],
    per_message: u64,
    per_request: u64,
    count: impl Fn(&str) -> u64,
) -> u64 {
    let mut texts = Vec::new();
    let values: Vec<sonic_rs::Value> = spans
        .iter()
        .filter_map(|span| body.get(span.clone()))
        .filter_map(|raw| sonic_rs::from_slice(raw).ok())
        .collect();
    for v in &values {
        collect_texts(v, &mut texts);
    }
    per_request + texts.iter().map(|t| count(t) + per_message).sum::<u64>()
}

/// Strings, arrays of strings, message objects' `content` and content parts' `text`. Token-id
/// arrays (embeddings) carry no text and are skipped.
fn collect_texts<'a>(v: &'a sonic_rs::Value, out: &mut Vec<&'a str>) {
    if let Some(s) = v.as_str() {
        out.push(s);
    } else if let Some(items) = v.as_array() {
        for item in items.iter() {
            collect_texts(item, out);
        }
    } else if let Some(obj) = v.as_object() {
        for key in ["content", "text"] {
            if let Some(inner) = obj.get(&key) {
                collect_texts(inner, out);
            }
        }
    }
}

/// The text the model generated, pulled out of the relayed payload.
pub fn generated_text(api: Api, stream: bool, payload: &[Bytes]) -> String {
    let mut out = String::new();
    if stream {
        let mut splitter = FrameSplitter::default();
        let mut frames = Vec::new();
        for p in payload {
            splitter.push(p.clone(), |f| frames.push(f));
        }
        frames.extend(splitter.take_rest());
        for f in &frames {
            if let Some(data) = frame_data(f) {
                append_stream_text(api, &data, &mut out);
            }
        }
    } else {
        let body: Vec<u8> = payload.iter().flat_map(|b| b.iter().copied()).collect();
        append_body_text(api, &body, &mut out);
    }
    out
}

fn push_str(v: Option<sonic_rs::LazyValue<'_>>, out: &mut String) {
    if let Some(s) = v.as_ref().and_then(|v| v.as_str()) {
        out.push_str(s);
    }
}

fn append_stream_text(api: Api, data: &[u8], out: &mut String) {
    if super::usage::too_deep(data) {
        return;
    }
    match api {
        Api::ChatCompletions | Api::Completions => {
            let Ok(choices) = sonic_rs::get(data, &["choices"]) else {
                return;
            };
            let Some(items) = choices.into_array_iter() else {
                return;
            };
            for c in items.flatten() {
                push_str(c.pointer(["delta", "content"]), out);
                push_str(c.pointer(["delta", "reasoning_content"]), out);
                push_str(c.get("text"), out);
            }
        }
        Api::Responses => push_str(sonic_rs::get(data, &["delta"]).ok(), out),
        Api::Messages => {
            push_str(sonic_rs::get(data, &["delta", "text"]).ok(), out);
            push_str(sonic_rs::get(data, &["delta", "thinking"]).ok(), out);
        }
        Api::Embeddings => {}
    }
}

fn append_body_text(api: Api, body: &[u8], out: &mut String) {
    if super::usage::too_deep(body) {
        return;
    }
    match api {
        Api::ChatCompletions | Api::Completions => {
            let Ok(choices) = sonic_rs::get(body, &["choices"]) else {
                return;
            };
            let Some(items) = choices.into_array_iter() else {
                return;
            };
            for c in items.flatten() {
                push_str(c.pointer(["message", "content"]), out);
                push_str(c.get("text"), out);
            }
        }
        Api::Responses => push_str(sonic_rs::get(body, &["output_text"]).ok(), out),
        Api::Messages => {
            let Ok(content) = sonic_rs::get(body, &["content"]) else {
                return;
            };
            let Some(items) = content.into_array_iter() else {
                return;
            };
            for c in items.flatten() {
                push_str(c.get("text"), out);
            }
        }
        Api::Embeddings => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_known_text() {
        // "hello world" is two tokens in o200k_base.
        assert_eq!(count_tokens("hello world"), 2);
        assert_eq!(count_tokens(""), 0);
    }

    #[test]
    fn output_from_chat_stream_split_anywhere() {
        let s = b"data: {\"choices\":[{\"delta\":{\"content\":\"hello\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\" world\"}}]}\n\ndata: [DONE]\n\n";
        let payload: Vec<Bytes> = s.chunks(7).map(Bytes::copy_from_slice).collect();
        assert_eq!(
            generated_text(Api::ChatCompletions, true, &payload),
            "hello world"
        );
    }

    #[test]
    fn output_from_anthropic_stream() {
        let s = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n";
        assert_eq!(
            generated_text(Api::Messages, true, &[Bytes::from_static(s)]),
            "hi"
        );
    }

    #[test]
    fn input_walks_messages_and_parts() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hello world"},{"role":"user","content":[{"type":"text","text":"hello world"}]}],"system":"a\nb"}"#;
        let ins = crate::phase::inspect::inspect_body(body).unwrap();
        assert_eq!(ins.prompt_spans.len(), 2);
        let n = estimate_input(body, &ins.prompt_spans);
        // Three texts: "hello world" twice (2 tokens each) and "a\nb" (3 tokens), each with framing.
        assert_eq!(
            n,
            TOKENS_PER_MESSAGE
                + 2 * (2 + TOKENS_PER_MESSAGE)
                + count_tokens("a\nb")
                + TOKENS_PER_MESSAGE
        );
    }

    #[test]
    fn estimate_keeps_reported_input() {
        let input = EstimateInput {
            api: Api::Messages,
            stream: true,
            request_body: Bytes::new(),
            prompt_spans: vec![],
            response: vec![Bytes::from_static(
                b"data: {\"delta\":{\"text\":\"hello world\"}}\n\n",
            )],
            partial: Some(Usage {
                input_tokens: 40,
                output_tokens: 1,
                ..Usage::default()
            }),
            tokenizer: None,
            engine: None,
        };
        let u = estimate(&input);
        assert_eq!((u.input_tokens, u.output_tokens), (40, 2));
    }
}
