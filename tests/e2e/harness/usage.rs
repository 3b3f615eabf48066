//! What a provider response says it used, normalised to the ledger's columns, so a test can
//! assert `row.tokens() == Tokens::from_*(&usage)`.
//!
//! Normalisation (the ledger's): `input` includes cached tokens; for Anthropic,
//! `input = input_tokens + cache_read + cache_creation`, `cached = cache_read`,
//! `cache_write = cache_creation`.

use serde_json::Value;

/// Token counts in ledger terms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: i64,
    pub cached: i64,
    pub cache_write: i64,
    pub output: i64,
    pub reasoning: i64,
}

fn int(usage: &Value, pointer: &str) -> i64 {
    usage
        .pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("usage has no integer at {pointer}: {usage}"))
}

fn int_or_zero(usage: &Value, pointer: &str) -> i64 {
    usage.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

impl Tokens {
    /// Chat and text completions `usage`.
    pub fn from_openai(usage: &Value) -> Tokens {
        Tokens {
            input: int(usage, "/prompt_tokens"),
            cached: int_or_zero(usage, "/prompt_tokens_details/cached_tokens"),
            cache_write: 0,
            output: int(usage, "/completion_tokens"),
            reasoning: int_or_zero(usage, "/completion_tokens_details/reasoning_tokens"),
        }
    }

    /// Responses API `usage`.
    pub fn from_responses(usage: &Value) -> Tokens {
        Tokens {
            input: int(usage, "/input_tokens"),
            cached: int_or_zero(usage, "/input_tokens_details/cached_tokens"),
            cache_write: 0,
            output: int(usage, "/output_tokens"),
            reasoning: int_or_zero(usage, "/output_tokens_details/reasoning_tokens"),
        }
    }

    /// Embeddings `usage`.
    pub fn from_embeddings(usage: &Value) -> Tokens {
        Tokens {
            input: int(usage, "/prompt_tokens"),
            ..Tokens::default()
        }
    }

    /// Anthropic Messages `usage` (for streams: `message_start`'s input fields with
    /// `message_delta`'s `output_tokens`).
    pub fn from_anthropic(usage: &Value) -> Tokens {
        let read = int_or_zero(usage, "/cache_read_input_tokens");
        let creation = int_or_zero(usage, "/cache_creation_input_tokens");
        Tokens {
            input: int(usage, "/input_tokens") + read + creation,
            cached: read,
            cache_write: creation,
            output: int(usage, "/output_tokens"),
            reasoning: 0,
        }
    }
}
