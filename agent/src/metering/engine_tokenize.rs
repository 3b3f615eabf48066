//! Prompt tokens as the serving engine counts them (`models[].tokenizer: {engine: true}`):
//! vLLM, SGLang and llama.cpp answer `POST /tokenize`, and for chat `messages` vLLM applies the
//! model's own chat template, which no per-message framing of a local `tokenizer.json`
//! reproduces exactly. Called only from the estimator thread (`ledger/estimator.rs`) and the
//! accuracy sampler, never on a worker.
//!
//! - **Request.** The request's own `messages` (chat) or `prompt` (completions) JSON, passed
//!   as the client sent it (no re-serialisation), with the served model's name.
//! - **Answer.** `count` (vLLM, SGLang), else the length of `tokens` (llama.cpp).
//! - **Output.** Generated text has no template: it is counted locally (the family's
//!   `tokenizer.json`, else o200k), which costs no second call per request.

use std::time::Duration;

use crate::api::Api;

/// Where a record's prompt can be counted: the engine that served it.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineTokenize {
    /// `scheme://host:port/tokenize` (the engine's root, not its `/v1`).
    pub url: String,
    /// The model name the engine knows.
    pub model: String,
}

impl EngineTokenize {
    /// For `model` served by `p`: its scheme, host and port, path `/tokenize` (whatever its
    /// base path: engines serve it at their root).
    pub fn for_provider(p: &crate::config::Provider, model: &str) -> EngineTokenize {
        let scheme = if p.tls { "https" } else { "http" };
        let host = if p.host.contains(':') {
            format!("[{}]", p.host)
        } else {
            p.host.clone()
        };
        EngineTokenize {
            url: format!("{scheme}://{host}:{}/tokenize", p.port),
            model: model.to_string(),
        }
    }
}

/// Why the engine's count could not be used (the estimate then counts locally).
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("the {0:?} API has no /tokenize form (only chat messages and completion prompts)")]
    Unsupported(Api),
    #[error("the request has no `{0}` to count")]
    NoPrompt(&'static str),
    #[error("POST {url}: {source}")]
    Http {
        url: String,
        source: Box<ureq::Error>,
    },
    #[error("POST {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("POST {url}: the answer has neither `count` nor `tokens`")]
    Answer { url: String },
}

/// One HTTP client for the estimator's thread: short timeouts, no redirects.
pub fn client(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent("tollgate")
        .build()
        .into()
}

/// The body `/tokenize` is sent: the request's prompt value, verbatim, and the model.
pub fn request_body(e: &EngineTokenize, api: Api, body: &[u8]) -> Result<Vec<u8>, TokenizeError> {
    let field = match api {
        Api::ChatCompletions => "messages",
        Api::Completions => "prompt",
        other => return Err(TokenizeError::Unsupported(other)),
    };
    let raw = sonic_rs::get(body, [field]).map_err(|_| TokenizeError::NoPrompt(field))?;
    let model = serde_json::to_string(&e.model).unwrap_or_else(|_| "\"\"".into());
    let mut out = Vec::with_capacity(raw.as_raw_str().len() + model.len() + 32);
    out.extend_from_slice(b"{\"model\":");
    out.extend_from_slice(model.as_bytes());
    out.extend_from_slice(format!(",\"{field}\":").as_bytes());
    out.extend_from_slice(raw.as_raw_str().as_bytes());
    // vLLM: the chat template's assistant header counts toward the prompt, as in a request.
    if field == "messages" {
        out.extend_from_slice(b",\"add_generation_prompt\":true");
    }
    out.push(b'}');
    Ok(out)
}

/// The token count in a `/tokenize` answer.
pub fn parse_answer(body: &[u8]) -> Option<u64> {
    if let Ok(count) = sonic_rs::get(body, ["count"]) {
        return count.as_raw_str().parse().ok();
    }
    let tokens: serde_json::Value = serde_json::from_slice(body).ok()?;
    tokens.get("tokens")?.as_array().map(|t| t.len() as u64)
}

/// The prompt's tokens as the engine counts them.
pub fn prompt_tokens(
    agent: &ureq::Agent,
    e: &EngineTokenize,
    api: Api,
    request: &[u8],
) -> Result<u64, TokenizeError> {
    let body = request_body(e, api, request)?;
    let http = |source| TokenizeError::Http {
        url: e.url.clone(),
        source: Box::new(source),
    };
    let mut answer = agent
        .post(&e.url)
        .header("content-type", "application/json")
        .send(&body[..])
        .map_err(http)?;
    let status = answer.status().as_u16();
    if status != 200 {
        return Err(TokenizeError::Status {
            url: e.url.clone(),
            status,
        });
    }
    // vLLM lists every token id after the count: ~6 bytes a token, so 8 MiB covers prompts
    // past a million tokens.
    let text = answer
        .body_mut()
        .with_config()
        .limit(8 << 20)
        .read_to_vec()
        .map_err(http)?;
    parse_answer(&text).ok_or_else(|| TokenizeError::Answer { url: e.url.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_root_is_found_and_the_prompt_goes_verbatim() {
        let cfg = crate::config::Config::from_yaml(
            concat!(
                "providers:\n",
                "  - {name: a, kind: openai, base_url: \"http://10.0.0.5:8000/v1\"}\n",
                "  - {name: b, kind: openai, base_url: \"http://[fd00::5]:9000\"}\n",
                "models:\n",
                "  - {name: m, targets: [{provider: a, model: llama-3}, {provider: b, model: llama-3}], tokenizer: {engine: true}}\n",
                "  - {name: plain, provider: a, model: q}\n",
            ),
            &|_| None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let urls: Vec<Option<String>> = cfg
            .models
            .iter()
            .flat_map(|m| &m.targets)
            .map(|t| t.tokenize.as_ref().map(|e| e.url.clone()))
            .collect();
        assert_eq!(
            urls,
            [
                Some("http://10.0.0.5:8000/tokenize".to_string()),
                Some("http://[fd00::5]:9000/tokenize".to_string()),
                None
            ]
        );
        let e = cfg.models[0].targets[0].tokenize.clone().unwrap();
        assert_eq!(e.model, "llama-3");
        let body = br#"{"model":"virtual","messages":[{"role":"user","content":"h\u00e9 \"q\""}],"stream":true}"#;
        let sent = request_body(&e, Api::ChatCompletions, body).unwrap();
        assert_eq!(
            std::str::from_utf8(&sent).unwrap(),
            r#"{"model":"llama-3","messages":[{"role":"user","content":"h\u00e9 \"q\""}],"add_generation_prompt":true}"#
        );
        let sent = request_body(&e, Api::Completions, br#"{"prompt":["a","b"]}"#).unwrap();
        assert_eq!(
            std::str::from_utf8(&sent).unwrap(),
            r#"{"model":"llama-3","prompt":["a","b"]}"#
        );
        assert!(matches!(
            request_body(&e, Api::Messages, body),
            Err(TokenizeError::Unsupported(Api::Messages))
        ));
        assert!(matches!(
            request_body(&e, Api::ChatCompletions, b"{}"),
            Err(TokenizeError::NoPrompt("messages"))
        ));
    }

    #[test]
    fn answers_of_each_engine_are_read() {
        assert_eq!(
            parse_answer(br#"{"count":42,"max_model_len":8192,"tokens":[1,2]}"#),
            Some(42)
        );
        assert_eq!(parse_answer(br#"{"tokens":[5,6,7]}"#), Some(3));
        assert_eq!(parse_answer(br#"{"error":"no"}"#), None);
        assert_eq!(parse_answer(b"not json"), None);
    }
}
