//! Phase 4, inspect: one pass of sonic-rs's lazy JSON iterator over the request body.
//!
//! Extracts what the later phases need (model, stream flag, output cap, n, tool count,
//! `stream_options.include_usage`) and the byte spans of prompt text, borrowing from the body:
//! nothing is copied or re-serialised. The spans let `forward` splice a new model name in and
//! let metering estimate tokens later without parsing the body again.
//! Reads: `ctx.body`, `ctx.api`. Writes: `ctx.inspection`. Hot path.

use std::ops::Range;

use sonic_rs::{JsonValueTrait, LazyValue};

use crate::error::{ErrorKind, GateError};
use crate::pipeline::RequestCtx;

/// What the gateway knows about a request body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspection {
    /// The model name, unescaped.
    pub model: String,
    /// Byte span of the `model` value including its quotes.
    pub model_span: Range<usize>,
    pub stream: bool,
    /// Span of the `stream_options` object, if present.
    pub stream_options_span: Option<Range<usize>>,
    /// Span of a `"stream_options": null` value (replaced, not duplicated, when usage is injected).
    pub stream_options_null: Option<Range<usize>>,
    /// `stream_options.include_usage` and the span of its value, if present.
    pub include_usage: Option<(bool, Range<usize>)>,
    /// max_tokens / max_completion_tokens / max_output_tokens, whichever is set.
    pub max_output_tokens: Option<u64>,
    pub n: u32,
    pub tool_count: u32,
    /// Spans of the raw JSON values that carry the prompt (`messages`, `prompt`, `input`,
    /// `system`, `instructions`), in order. Their text is pulled out only when needed (token
    /// estimates, off the request path), so the hot path does not walk every message.
    pub prompt_spans: Vec<Range<usize>>,
    /// Sum of the span lengths in bytes: the input for calibrated token estimates.
    pub prompt_bytes: usize,
    /// The model the client asked for, when admission moved the request to another one (a
    /// budget's fallback); `model` is then the one serving, and the body's model is rewritten.
    pub original_model: Option<String>,
    /// The request asks for repeatable output: `temperature` 0 or a `seed` (the exact cache
    /// stores only these by default).
    pub deterministic: bool,
}

/// Errors the inspection pass reports.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InspectError {
    #[error("invalid JSON at line {line} column {column} (byte {offset}): {msg}")]
    Syntax {
        line: usize,
        column: usize,
        offset: usize,
        msg: String,
    },
    #[error("the request body must be a JSON object")]
    NotAnObject,
    #[error("`{0}` has the wrong type")]
    WrongType(&'static str),
    #[error("you must provide a model parameter")]
    MissingModel,
    #[error("JSON is nested deeper than {limit} levels (at byte {offset})")]
    TooDeep { limit: usize, offset: usize },
    #[error("`{0}` appears more than once; send each field once")]
    Duplicate(&'static str),
    #[error("the model name is {len} bytes long; at most {MAX_MODEL_BYTES} are accepted")]
    ModelTooLong { len: usize },
}

/// Longest model name accepted. Real names are short; a longer one would be echoed in errors
/// and stored in the ledger, so it is refused rather than carried around.
pub const MAX_MODEL_BYTES: usize = 256;

/// The top-level fields Tollgate reads or rewrites. Each may appear once: parsers disagree on
/// which duplicate wins (first, last, or an error), so a duplicate could make billing and
/// routing read one value while the provider serves another.
const READ_KEYS: [&str; 15] = [
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "n",
    "tools",
    "messages",
    "prompt",
    "input",
    "system",
    "instructions",
    "temperature",
    "seed",
];

/// Runs the inspect phase.
pub fn run(ctx: &mut RequestCtx, max_depth: usize) -> Result<(), GateError> {
    match inspect_body_with(&ctx.body, max_depth) {
        Ok(i) => {
            ctx.inspection = i;
            Ok(())
        }
        Err(e) => Err(map_error(e)),
    }
}

fn map_error(e: InspectError) -> GateError {
    let kind = match &e {
        InspectError::Syntax {
            line,
            column,
            offset,
            ..
        } => ErrorKind::InvalidJson {
            line: *line,
            column: *column,
            offset: *offset,
        },
        InspectError::NotAnObject => ErrorKind::InvalidRequest { param: None },
        InspectError::WrongType(p) => ErrorKind::InvalidRequest { param: Some(p) },
        InspectError::MissingModel | InspectError::ModelTooLong { .. } => {
            ErrorKind::InvalidRequest {
                param: Some("model"),
            }
        }
        InspectError::TooDeep { limit, .. } => ErrorKind::JsonTooDeep { limit: *limit },
        InspectError::Duplicate(p) => ErrorKind::DuplicateKey { param: p },
    };
    GateError::new(kind, e.to_string())
}

fn syntax(e: sonic_rs::Error) -> InspectError {
    let msg = e.to_string();
    // sonic-rs appends a caret drawing of the input; keep the first line only.
    let msg = msg.lines().next().unwrap_or("").to_string();
    InspectError::Syntax {
        line: e.line(),
        column: e.column(),
        offset: e.offset(),
        msg,
    }
}

/// Byte span of a lazily parsed value within `body`.
fn span_of(body: &[u8], v: &LazyValue<'_>) -> Range<usize> {
    let raw = v.as_raw_str().as_bytes();
    let start = raw.as_ptr() as usize - body.as_ptr() as usize;
    debug_assert!(start + raw.len() <= body.len());
    start..start + raw.len()
}

/// Inspects a request body with the default nesting limit.
pub fn inspect_body(body: &[u8]) -> Result<Inspection, InspectError> {
    inspect_body_with(body, crate::json::DEFAULT_MAX_DEPTH)
}

/// Inspects a request body, refusing nesting deeper than `max_depth` before parsing.
pub fn inspect_body_with(body: &[u8], max_depth: usize) -> Result<Inspection, InspectError> {
    if let Some(offset) = crate::json::depth_exceeds(body, max_depth) {
        return Err(InspectError::TooDeep {
            limit: max_depth,
            offset,
        });
    }
    let trimmed = body.trim_ascii_start();
    if trimmed.first() != Some(&b'{') {
        if trimmed.is_empty() {
            return Err(InspectError::Syntax {
                line: 1,
                column: 0,
                offset: 0,
                msg: "empty body".into(),
            });
        }
        return match sonic_rs::from_slice::<sonic_rs::Value>(body) {
            Err(e) => Err(syntax(e)),
            Ok(_) => Err(InspectError::NotAnObject),
        };
    }
    let mut out = Inspection {
        n: 1,
        ..Inspection::default()
    };
    let mut have_model = false;
    let mut seen = 0u16;
    // End of the last member's value: the lazy iterator stops at the closing brace without
    // looking further, so trailing bytes are checked from here.
    let mut last_end = body.len() - trimmed.len() + 1;
    for item in sonic_rs::to_object_iter(body) {
        let (key, value) = item.map_err(syntax)?;
        last_end = span_of(body, &value).end;
        if let Some(i) = READ_KEYS.iter().position(|k| *k == &*key) {
            if seen & (1 << i) != 0 {
                return Err(InspectError::Duplicate(READ_KEYS[i]));
            }
            seen |= 1 << i;
        }
        match &*key {
            "model" => {
                let model = value.as_str().ok_or(InspectError::WrongType("model"))?;
                if model.len() > MAX_MODEL_BYTES {
                    return Err(InspectError::ModelTooLong { len: model.len() });
                }
                out.model = model.to_string();
                out.model_span = span_of(body, &value);
                have_model = true;
            }
            // null means "not set", as OpenAI reads it.
            "stream" if value.is_null() => out.stream = false,
            "stream" => out.stream = value.as_bool().ok_or(InspectError::WrongType("stream"))?,
            "stream_options" => {
                if value.is_null() {
                    out.stream_options_null = Some(span_of(body, &value));
                    continue;
                }
                out.stream_options_span = Some(span_of(body, &value));
                let iter = value
                    .into_object_iter()
                    .ok_or(InspectError::WrongType("stream_options"))?;
                for inner in iter {
                    let (k, v) = inner.map_err(syntax)?;
                    if &*k == "include_usage" {
                        if out.include_usage.is_some() {
                            return Err(InspectError::Duplicate("stream_options.include_usage"));
                        }
                        let b = v
                            .as_bool()
                            .ok_or(InspectError::WrongType("stream_options.include_usage"))?;
                        out.include_usage = Some((b, span_of(body, &v)));
                    }
                }
            }
            "max_tokens" | "max_completion_tokens" | "max_output_tokens" if !value.is_null() => {
                out.max_output_tokens =
                    Some(crate::json::as_u64(&value).ok_or(InspectError::WrongType("max_tokens"))?);
            }
            "n" if !value.is_null() => {
                let n = crate::json::as_u64(&value).ok_or(InspectError::WrongType("n"))?;
                out.n = u32::try_from(n).unwrap_or(u32::MAX);
            }
            "tools" => {
                if let Some(arr) = value.into_array_iter() {
                    for t in arr {
                        t.map_err(syntax)?;
                        out.tool_count += 1;
                    }
                }
            }
            "messages" | "prompt" | "input" | "system" | "instructions" => {
                out.prompt_spans.push(span_of(body, &value))
            }
            "temperature" if !value.is_null() => {
                let t = value
                    .as_f64()
                    .ok_or(InspectError::WrongType("temperature"))?;
                out.deterministic |= t == 0.0;
            }
            "seed" if !value.is_null() => {
                value.as_i64().ok_or(InspectError::WrongType("seed"))?;
                out.deterministic = true;
            }
            _ => {}
        }
    }
    check_trailing(body, last_end)?;
    if !have_model {
        return Err(InspectError::MissingModel);
    }
    out.prompt_bytes = out.prompt_spans.iter().map(|r| r.len()).sum();
    Ok(out)
}

/// After the last member only `}` and whitespace may follow.
fn check_trailing(body: &[u8], from: usize) -> Result<(), InspectError> {
    let rest = body.get(from..).unwrap_or_default();
    let after = rest.trim_ascii_start();
    let bad = match after.split_first() {
        Some((b'}', tail)) => tail
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .map(|p| body.len() - tail.len() + p),
        _ => Some(body.len() - after.len()),
    };
    match bad {
        None => Ok(()),
        Some(offset) => {
            let line = 1 + body[..offset].iter().filter(|b| **b == b'\n').count();
            let column = offset
                - body[..offset]
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |p| p + 1);
            Err(InspectError::Syntax {
                line,
                column,
                offset,
                msg: "trailing characters after the JSON object".into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAT: &str = r#"{"model":"smol","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi \"there\""}]}],"stream":true,"max_tokens":32,"tools":[{"type":"function"},{"type":"function"}],"stream_options":{"include_usage":false}}"#;

    #[test]
    fn extracts_fields_and_spans() {
        let i = inspect_body(CHAT.as_bytes()).unwrap();
        assert_eq!(i.model, "smol");
        assert_eq!(&CHAT[i.model_span.clone()], "\"smol\"");
        assert!(i.stream);
        assert_eq!(i.max_output_tokens, Some(32));
        assert_eq!(i.tool_count, 2);
        let (inc, span) = i.include_usage.clone().unwrap();
        assert!(!inc);
        assert_eq!(&CHAT[span], "false");
        assert_eq!(
            &CHAT[i.stream_options_span.clone().unwrap()],
            r#"{"include_usage":false}"#
        );
        let spans: Vec<&str> = i.prompt_spans.iter().map(|r| &CHAT[r.clone()]).collect();
        assert_eq!(spans.len(), 1);
        assert!(
            spans[0].starts_with(r#"[{"role":"system""#) && spans[0].ends_with("}]}]"),
            "{spans:?}"
        );
    }

    #[test]
    fn anthropic_system_and_messages() {
        let b = r#"{"model":"claude","system":"sys","max_tokens":5,"messages":[{"role":"user","content":"yo"}]}"#;
        let i = inspect_body(b.as_bytes()).unwrap();
        assert_eq!(i.prompt_spans.len(), 2);
        assert_eq!(i.max_output_tokens, Some(5));
        assert!(!i.stream);
    }

    #[test]
    fn escaped_model_is_unescaped() {
        let b = r#"{"model":"a\u0062c","input":"x"}"#;
        let i = inspect_body(b.as_bytes()).unwrap();
        assert_eq!(i.model, "abc");
        assert_eq!(&b[i.model_span], r#""a\u0062c""#);
    }

    #[test]
    fn errors_are_precise() {
        let e = inspect_body(br#"{"model": "x", "messages": [}"#).unwrap_err();
        assert!(
            matches!(e, InspectError::Syntax { offset, .. } if offset > 20),
            "{e:?}"
        );
        // Malformed JSON inside a field the pass does not read is still caught.
        let e = inspect_body(br#"{"model":"x","metadata":{"a":[1,2,}}"#).unwrap_err();
        assert!(matches!(e, InspectError::Syntax { .. }), "{e:?}");
        let e = inspect_body(br#"{"model":"x"} trailing"#).unwrap_err();
        assert!(matches!(e, InspectError::Syntax { .. }), "{e:?}");
        assert_eq!(
            inspect_body(br#"{"messages":[]}"#).unwrap_err(),
            InspectError::MissingModel
        );
        assert_eq!(
            inspect_body(br#"[1]"#).unwrap_err(),
            InspectError::NotAnObject
        );
        assert_eq!(
            inspect_body(br#"{"model":5}"#).unwrap_err(),
            InspectError::WrongType("model")
        );
        assert!(matches!(
            inspect_body(b"").unwrap_err(),
            InspectError::Syntax { .. }
        ));
    }
}

#[cfg(test)]
mod deep_tests {
    use super::*;

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        for body in [
            format!(r#"{{"model":"smol","x":{}"#, "[".repeat(10_000)),
            format!(r#"{{"model":"smol","x":{}"#, r#"{"a":"#.repeat(10_000)),
            format!(
                r#"{{"model":"smol","x":{}1{}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            ),
            format!(r#"{{"x":{},"model":"smol"}}"#, "[".repeat(100_000)),
        ] {
            let e = inspect_body(body.as_bytes()).unwrap_err();
            assert!(
                matches!(e, InspectError::TooDeep { limit: 128, .. }),
                "{e:?}"
            );
        }
    }
}
