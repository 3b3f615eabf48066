//! Usage extraction from provider responses, normalised across OpenAI and Anthropic.
//!
//! Normal form: `input_tokens` counts every prompt token including cached ones;
//! `cached_tokens` are prompt tokens read from the provider's prefix cache;
//! `cache_write_tokens` are prompt tokens written to it (Anthropic); `reasoning_tokens` are
//! part of `output_tokens`. Anthropic reports `input_tokens` *excluding* cache reads and writes,
//! so those are added back. Hot path for streams: `observe_frame` is called only on frames that
//! contain the bytes `"usage"`.

use sonic_rs::{JsonValueTrait, LazyValue};

use crate::api::Api;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
}

/// Largest token count taken from a provider (about 4 billion, far past any real request): a
/// larger number is a broken or hostile provider, and left unbounded it would overflow sums and
/// turn negative in the ledger's signed columns. Found by fuzzing.
pub const MAX_REPORTED_TOKENS: u64 = 1 << 32;

fn u(v: &LazyValue<'_>, path: &[&str]) -> Option<u64> {
    v.pointer(path.iter().copied())
        .and_then(|x| crate::json::as_u64(&x))
        .map(|n| n.min(MAX_REPORTED_TOKENS))
}

/// Whether `v`'s text may hold a `*_details` key: it spells `_details` out, or it has an
/// escape (a key can be written with escapes, and is read as a parser reads it). A lookup
/// that finds nothing scans the whole object, and most usage objects (vLLM's, SGLang's,
/// Anthropic's) have no details: four such scans per response, for nothing.
fn may_have_details(v: &LazyValue<'_>) -> bool {
    static DETAILS: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new("_details"));
    let raw = v.as_raw_str().as_bytes();
    memchr::memchr(b'\\', raw).is_some() || DETAILS.find(raw).is_some()
}

fn openai_usage(v: &LazyValue<'_>) -> Usage {
    let input = u(v, &["prompt_tokens"])
        .or_else(|| u(v, &["input_tokens"]))
        .unwrap_or(0);
    let details = may_have_details(v);
    let detail = |chat: &str, responses: &str, field: &str| {
        if !details {
            return 0;
        }
        u(v, &[chat, field])
            .or_else(|| u(v, &[responses, field]))
            .unwrap_or(0)
    };
    Usage {
        input_tokens: input,
        cached_tokens: detail(
            "prompt_tokens_details",
            "input_tokens_details",
            "cached_tokens",
        ),
        cache_write_tokens: 0,
        output_tokens: u(v, &["completion_tokens"])
            .or_else(|| u(v, &["output_tokens"]))
            .unwrap_or(0),
        reasoning_tokens: detail(
            "completion_tokens_details",
            "output_tokens_details",
            "reasoning_tokens",
        ),
    }
}

/// Partial Anthropic usage: every field is optional because message_start and message_delta
/// each carry some of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct AnthropicUsage {
    input: Option<u64>,
    cache_read: Option<u64>,
    cache_write: Option<u64>,
    output: Option<u64>,
}

fn anthropic_usage(v: &LazyValue<'_>) -> AnthropicUsage {
    AnthropicUsage {
        input: u(v, &["input_tokens"]),
        cache_read: u(v, &["cache_read_input_tokens"]),
        cache_write: u(v, &["cache_creation_input_tokens"]),
        output: u(v, &["output_tokens"]),
    }
}

/// True for provider JSON nested too deeply to hand to a recursive parser. No real response
/// comes near the limit; one that does is metered as if it reported no usage (estimated).
pub(crate) fn too_deep(json: &[u8]) -> bool {
    crate::json::depth_exceeds(json, crate::json::DEFAULT_MAX_DEPTH).is_some()
}

/// The model version a response says served it: its `model` (Anthropic: `message.model`), with
/// `@<system_fingerprint>` when the provider sends one. At most 128 printable characters.
pub fn upstream_version(data: &[u8]) -> Option<String> {
    if too_deep(data) {
        return None;
    }
    let text = |path: &[&str]| -> Option<String> {
        version_text(sonic_rs::get(data, path).ok()?.as_str()?)
    };
    let model = text(&["model"]).or_else(|| text(&["message", "model"]))?;
    Some(versioned(model, text(&["system_fingerprint"])))
}

/// A version part: non-empty, at most 128 characters, none of them control characters.
fn version_text(s: &str) -> Option<String> {
    (!s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control)).then(|| s.to_string())
}

fn versioned(model: String, fingerprint: Option<String>) -> String {
    match fingerprint {
        Some(fp) => format!("{model}@{fp}"),
        None => model,
    }
}

/// The usage of a complete non-streaming response body, and (when it has usage) the model
/// version it reports, in one serde pass over the body (`one_pass.rs`): `extract_usage` and
/// `upstream_version` would scan it three times and the usage object four more. The first
/// occurrence of a field counts, as with `sonic_rs::get`; a body that is not valid JSON is read
/// field by field.
pub fn plain_response_facts(api: Api, body: &[u8]) -> (Option<Usage>, Option<String>) {
    use super::one_pass::Counts;
    if too_deep(body) {
        return (None, None);
    }
    let Some(facts) = super::one_pass::read(body) else {
        let usage = extract_usage(api, body);
        return (usage, usage.and_then(|_| upstream_version(body)));
    };
    let Some(Some(c)) = facts.usage else {
        return (None, None);
    };
    let cap = |n: Option<u64>| n.map(|n| n.min(MAX_REPORTED_TOKENS));
    let count = |n| cap(Counts::get(n));
    let detail = |n| cap(Counts::detail(n));
    let mut acc = UsageAccumulator::default();
    match api {
        Api::Messages => {
            acc.anthropic = Some(AnthropicUsage {
                input: count(c.input_tokens),
                cache_read: count(c.cache_read_input_tokens),
                cache_write: count(c.cache_creation_input_tokens),
                output: count(c.output_tokens),
            })
        }
        _ => {
            acc.openai = Some(Usage {
                input_tokens: count(c.prompt_tokens)
                    .or(count(c.input_tokens))
                    .unwrap_or(0),
                cached_tokens: detail(c.prompt_tokens_details)
                    .or(detail(c.input_tokens_details))
                    .unwrap_or(0),
                cache_write_tokens: 0,
                output_tokens: count(c.completion_tokens)
                    .or(count(c.output_tokens))
                    .unwrap_or(0),
                reasoning_tokens: detail(c.completion_tokens_details)
                    .or(detail(c.output_tokens_details))
                    .unwrap_or(0),
            })
        }
    }
    let Some(usage) = acc.finish() else {
        return (None, None);
    };
    let text = |t: Option<Option<std::borrow::Cow<'_, str>>>| {
        t.flatten().as_deref().and_then(version_text)
    };
    let version = text(facts.model).map(|m| versioned(m, text(facts.fingerprint)));
    (Some(usage), version)
}

/// Reads usage from a complete non-streaming response body.
pub fn extract_usage(api: Api, body: &[u8]) -> Option<Usage> {
    // sonic-rs validates skipped values by recursion: refuse what could overflow the stack.
    if too_deep(body) {
        return None;
    }
    let v = sonic_rs::get(body, &["usage"]).ok()?;
    if !v.is_object() {
        return None;
    }
    let mut acc = UsageAccumulator::default();
    match api {
        Api::Messages => acc.anthropic = Some(anthropic_usage(&v)),
        _ => acc.openai = Some(openai_usage(&v)),
    }
    acc.finish()
}

/// Collects usage across the frames of one stream.
#[derive(Debug, Default, Clone)]
pub struct UsageAccumulator {
    openai: Option<Usage>,
    anthropic: Option<AnthropicUsage>,
    /// Anthropic's message_delta (carrying the final output count) was seen.
    anthropic_final: bool,
}

/// What a frame turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameUsage {
    /// No usage in this frame.
    None,
    /// Usage, in a frame that also carries content (or in an Anthropic event).
    Inline,
    /// An OpenAI usage-only chunk (`"choices":[]`): the one `include_usage` adds.
    UsageOnly,
}

impl UsageAccumulator {
    /// Reads the usage carried by one SSE frame's `data` payload, if any.
    pub fn observe_frame(&mut self, api: Api, data: &[u8]) -> FrameUsage {
        // Built once, not per frame (`memmem::find` builds a searcher per call).
        static USAGE_KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));
        if USAGE_KEY.find(data).is_none() || too_deep(data) {
            return FrameUsage::None;
        }
        match api {
            Api::Messages => {
                // message_start: {"type":"message_start","message":{...,"usage":{...}}}
                // message_delta: {"type":"message_delta",...,"usage":{"output_tokens":N}}
                let (v, is_delta) = match sonic_rs::get(data, &["message", "usage"]) {
                    Ok(v) => (v, false),
                    Err(_) => match sonic_rs::get(data, &["usage"]) {
                        Ok(v) => (v, true),
                        Err(_) => return FrameUsage::None,
                    },
                };
                if !v.is_object() {
                    return FrameUsage::None;
                }
                let new = anthropic_usage(&v);
                let cur = self.anthropic.get_or_insert_with(AnthropicUsage::default);
                cur.input = new.input.or(cur.input);
                cur.cache_read = new.cache_read.or(cur.cache_read);
                cur.cache_write = new.cache_write.or(cur.cache_write);
                cur.output = new.output.or(cur.output);
                self.anthropic_final |= is_delta;
                FrameUsage::Inline
            }
            Api::Responses => {
                let Ok(v) = sonic_rs::get(data, &["response", "usage"]) else {
                    return FrameUsage::None;
                };
                if !v.is_object() {
                    return FrameUsage::None;
                }
                self.openai = Some(openai_usage(&v));
                FrameUsage::Inline
            }
            _ => {
                let Ok(v) = sonic_rs::get(data, &["usage"]) else {
                    return FrameUsage::None;
                };
                if !v.is_object() {
                    return FrameUsage::None;
                }
                self.openai = Some(openai_usage(&v));
                let usage_only = sonic_rs::get(data, &["choices"])
                    .ok()
                    .and_then(|c| c.into_array_iter())
                    .is_some_and(|mut it| it.next().is_none());
                if usage_only {
                    FrameUsage::UsageOnly
                } else {
                    FrameUsage::Inline
                }
            }
        }
    }

    /// True when the stream has reported its final usage (not just the opening counts).
    pub fn is_complete(&self) -> bool {
        self.openai.is_some() || (self.anthropic.is_some() && self.anthropic_final)
    }

    /// The normalised usage seen so far.
    pub fn finish(&self) -> Option<Usage> {
        if let Some(u) = self.openai {
            return Some(u);
        }
        let a = self.anthropic?;
        let cache_read = a.cache_read.unwrap_or(0);
        let cache_write = a.cache_write.unwrap_or(0);
        Some(Usage {
            input_tokens: a
                .input
                .unwrap_or(0)
                .saturating_add(cache_read)
                .saturating_add(cache_write),
            cached_tokens: cache_read,
            cache_write_tokens: cache_write,
            output_tokens: a.output.unwrap_or(0),
            reasoning_tokens: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The readers without the `_details` text check: a `pointer` per field. The checked
    /// readers must read every usage object the same.
    fn openai_by_pointer(v: &LazyValue<'_>) -> Usage {
        Usage {
            input_tokens: u(v, &["prompt_tokens"])
                .or_else(|| u(v, &["input_tokens"]))
                .unwrap_or(0),
            cached_tokens: u(v, &["prompt_tokens_details", "cached_tokens"])
                .or_else(|| u(v, &["input_tokens_details", "cached_tokens"]))
                .unwrap_or(0),
            cache_write_tokens: 0,
            output_tokens: u(v, &["completion_tokens"])
                .or_else(|| u(v, &["output_tokens"]))
                .unwrap_or(0),
            reasoning_tokens: u(v, &["completion_tokens_details", "reasoning_tokens"])
                .or_else(|| u(v, &["output_tokens_details", "reasoning_tokens"]))
                .unwrap_or(0),
        }
    }

    /// The reader before the serde pass (sonic-rs's object iterator, then a `pointer` per count),
    /// kept as the reference the serde pass must equal. The first occurrence of a field counts;
    /// a body the iterator refuses is read field by field.
    fn plain_response_facts_by_iterator(api: Api, body: &[u8]) -> (Option<Usage>, Option<String>) {
        if too_deep(body) {
            return (None, None);
        }
        let (mut usage, mut model, mut fingerprint) = (None, None, None);
        for pair in sonic_rs::to_object_iter(body) {
            // A body the iterator refuses (it checks all of its UTF-8 first, `get` reads only up
            // to the field): the field-by-field reading decides, as before.
            let Ok((key, value)) = pair else {
                let usage = extract_usage(api, body);
                return (usage, usage.and_then(|_| upstream_version(body)));
            };
            match &*key {
                "usage" if usage.is_none() => usage = Some(value),
                "model" if model.is_none() => model = Some(value),
                "system_fingerprint" if fingerprint.is_none() => fingerprint = Some(value),
                _ => {}
            }
        }
        let Some(v) = usage.filter(|v| v.is_object()) else {
            return (None, None);
        };
        let mut acc = UsageAccumulator::default();
        match api {
            Api::Messages => acc.anthropic = Some(anthropic_usage(&v)),
            _ => acc.openai = Some(openai_usage(&v)),
        }
        let Some(usage) = acc.finish() else {
            return (None, None);
        };
        let text =
            |v: Option<LazyValue<'_>>| v.as_ref().and_then(|v| v.as_str()).and_then(version_text);
        let version = text(model).map(|m| versioned(m, text(fingerprint)));
        (Some(usage), version)
    }

    /// A usage field's value: counts, and what a count is not.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u64..100_000).prop_map(|n| n.to_string()),
            Just(u64::MAX.to_string()),
            Just("null".to_string()),
            Just("-3".to_string()),
            Just("2.5".to_string()),
            Just("\"7\"".to_string()),
            Just("[1]".to_string()),
            (0u64..50).prop_map(|n| format!("{{\"cached_tokens\":{n},\"reasoning_tokens\":{n}}}")),
            (0u64..50).prop_map(|n| format!("{{\"\\u0063ached_tokens\":{n}}}")),
            Just("{\"cached_tokens\":null}".to_string()),
        ]
    }

    fn key() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "prompt_tokens_details",
            "completion_tokens_details",
            "input_tokens",
            "output_tokens",
            "input_tokens_details",
            "output_tokens_details",
            "other",
            // Escaped spellings of the same keys: a parser reads them as the plain ones.
            "prompt\\u005ftokens",
            "prompt_tokens_det\\u0061ils",
            "completion_tokens\\u005Fdetails",
            "output\\u005Ftokens",
        ])
    }

    proptest! {
        /// Random usage objects, repeated keys, escaped keys and wrong types included, read
        /// with the `_details` text check as a pointer per field reads them.
        #[test]
        fn checked_usage_reads_as_pointers_read(
            fields in prop::collection::vec((key(), value()), 0..12)
        ) {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let json = format!("{{{}}}", body.join(","));
            let v: LazyValue<'_> = sonic_rs::from_str(&json).expect("an object");
            prop_assert_eq!(openai_usage(&v), openai_by_pointer(&v), "{}", json);
        }
    }

    /// A top-level value of a response body: usage objects (built from the fields above),
    /// texts, and the other types.
    fn top_value() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::collection::vec((key(), value()), 0..8).prop_map(|fields| {
                let body: Vec<String> =
                    fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", body.join(","))
            }),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "input_tokens",
                        "output_tokens",
                        "cache_read_input_tokens",
                        "cache_creation_input_tokens",
                    ]),
                    value()
                ),
                0..6
            )
            .prop_map(|fields| {
                let body: Vec<String> =
                    fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", body.join(","))
            }),
            prop::sample::select(vec![
                "\"gpt-4o\"",
                "\"\"",
                "\"fp_\\u0041\"",
                "\"tab\\there\"",
                "null",
                "42",
                "[\"a\",{\"usage\":1}]",
                "{\"model\":\"inner\",\"usage\":{\"prompt_tokens\":9}}",
            ])
            .prop_map(String::from),
            value(),
        ]
    }

    fn top_key() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "usage",
            "model",
            "system_fingerprint",
            "id",
            "choices",
            "message",
            "us\\u0061ge",
            "m\\u006fdel",
        ])
    }

    proptest! {
        /// Random response bodies (repeated, escaped and mistyped fields, nested look-alikes,
        /// bodies cut short) read by the serde pass as the iterator-and-pointer reader read
        /// them, for each API's usage names.
        #[test]
        fn one_pass_reads_as_the_iterator_read(
            fields in prop::collection::vec((top_key(), top_value()), 0..8),
            cut in prop::option::of(0usize..400),
            api in prop::sample::select(vec![Api::ChatCompletions, Api::Responses, Api::Messages]),
        ) {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let mut json = format!("{{{}}}", body.join(","));
            if let Some(cut) = cut {
                json.truncate(cut.min(json.len()));
            }
            prop_assert_eq!(
                plain_response_facts(api, json.as_bytes()),
                plain_response_facts_by_iterator(api, json.as_bytes()),
                "{}", json
            );
        }
    }

    #[test]
    fn absurd_counts_are_capped_not_wrapped() {
        let mut acc = UsageAccumulator::default();
        let frame = br#"{"type":"message_delta","usage":{"input_tokens":18446744073709551615,"cache_read_input_tokens":1,"output_tokens":99999999999999}}"#;
        assert_eq!(acc.observe_frame(Api::Messages, frame), FrameUsage::Inline);
        let u = acc.finish().unwrap();
        assert_eq!(u.input_tokens, MAX_REPORTED_TOKENS + 1);
        assert_eq!(u.output_tokens, MAX_REPORTED_TOKENS);
        assert!(i64::try_from(u.input_tokens).is_ok());
    }

    #[test]
    fn openai_chat_body() {
        let b = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#;
        let u = extract_usage(Api::ChatCompletions, b).unwrap();
        assert_eq!(
            u,
            Usage {
                input_tokens: 10,
                cached_tokens: 4,
                cache_write_tokens: 0,
                output_tokens: 5,
                reasoning_tokens: 2
            }
        );
    }

    #[test]
    fn responses_body() {
        let b = br#"{"object":"response","usage":{"input_tokens":7,"input_tokens_details":{"cached_tokens":1},"output_tokens":3,"output_tokens_details":{"reasoning_tokens":1},"total_tokens":10}}"#;
        let u = extract_usage(Api::Responses, b).unwrap();
        assert_eq!(
            (
                u.input_tokens,
                u.cached_tokens,
                u.output_tokens,
                u.reasoning_tokens
            ),
            (7, 1, 3, 1)
        );
    }

    #[test]
    fn anthropic_body_adds_cache_back() {
        let b = br#"{"type":"message","usage":{"input_tokens":3,"cache_creation_input_tokens":16,"cache_read_input_tokens":32,"output_tokens":9}}"#;
        let u = extract_usage(Api::Messages, b).unwrap();
        assert_eq!(
            u,
            Usage {
                input_tokens: 51,
                cached_tokens: 32,
                cache_write_tokens: 16,
                output_tokens: 9,
                reasoning_tokens: 0
            }
        );
    }

    #[test]
    fn missing_or_null_usage() {
        assert_eq!(
            extract_usage(Api::ChatCompletions, br#"{"choices":[]}"#),
            None
        );
        assert_eq!(
            extract_usage(Api::ChatCompletions, br#"{"usage":null}"#),
            None
        );
    }

    #[test]
    fn openai_stream_frames() {
        let mut acc = UsageAccumulator::default();
        assert_eq!(
            acc.observe_frame(
                Api::ChatCompletions,
                br#"{"choices":[{"delta":{"content":"hi"}}]}"#
            ),
            FrameUsage::None
        );
        assert_eq!(
            acc.observe_frame(
                Api::ChatCompletions,
                br#"{"choices":[{"delta":{}}],"usage":null}"#
            ),
            FrameUsage::None
        );
        assert!(!acc.is_complete());
        let f = acc.observe_frame(
            Api::ChatCompletions,
            br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
        );
        assert_eq!(f, FrameUsage::UsageOnly);
        assert!(acc.is_complete());
        assert_eq!(acc.finish().unwrap().output_tokens, 2);
    }

    #[test]
    fn anthropic_stream_merges_start_and_delta() {
        let mut acc = UsageAccumulator::default();
        acc.observe_frame(Api::Messages, br#"{"type":"message_start","message":{"usage":{"input_tokens":5,"cache_read_input_tokens":16,"cache_creation_input_tokens":0,"output_tokens":1}}}"#);
        assert!(acc.finish().is_some() && !acc.is_complete());
        acc.observe_frame(Api::Messages, br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":12}}"#);
        assert!(acc.is_complete());
        let u = acc.finish().unwrap();
        assert_eq!(
            (u.input_tokens, u.cached_tokens, u.output_tokens),
            (21, 16, 12)
        );
    }

    /// The one-pass reader of plain bodies says what `extract_usage` and `upstream_version`
    /// say, field order and absences included.
    #[test]
    fn plain_response_facts_match_the_separate_readers() {
        let bodies: [(Api, &[u8]); 8] = [
            (Api::ChatCompletions, br#"{"id":"x","model":"gpt-4o","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5},"system_fingerprint":"fp_9"}"#),
            (Api::ChatCompletions, br#"{"usage":{"prompt_tokens":3,"completion_tokens":2},"model":"m","system_fingerprint":null}"#),
            (Api::ChatCompletions, br#"{"model":"m","choices":[]}"#),
            (Api::ChatCompletions, br#"{"model":"","usage":{"prompt_tokens":1,"completion_tokens":1}}"#),
            (Api::ChatCompletions, br#"{"model":"a","usage":{"prompt_tokens":1,"completion_tokens":1},"model":"b"}"#),
            (Api::Messages, br#"{"id":"msg","type":"message","model":"claude","content":[],"usage":{"input_tokens":10,"output_tokens":4,"cache_read_input_tokens":2}}"#),
            (Api::Responses, br#"{"object":"response","model":"gpt-5","output":[],"usage":{"input_tokens":7,"output_tokens":9,"total_tokens":16}}"#),
            (Api::ChatCompletions, br#"{"model":"m","usage":{"prompt_tokens":1,"completion_tokens":1},"oops"#),
        ];
        for (api, body) in bodies {
            let usage = extract_usage(api, body);
            let version = usage.and_then(|_| upstream_version(body));
            assert_eq!(
                plain_response_facts(api, body),
                (usage, version),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            plain_response_facts(Api::ChatCompletions, bodies[0].1)
                .1
                .as_deref(),
            Some("gpt-4o@fp_9")
        );
    }
}
