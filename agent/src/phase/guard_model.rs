//! Phase 7b, guard model: rules with a `guard_model` ask a Llama-Guard-style classifier (a
//! configured model on an OpenAI-compatible replica) whether the prompt is safe, before the
//! request is forwarded. Like `guard`, it runs before each attempt, and asks once per rule.
//!
//! * The classifier gets the conversation as the client sent it (a chat request's `messages`,
//!   spliced raw; other APIs' prompt text as one user turn) and answers `safe`, or `unsafe`
//!   with a category line (`S1,S10`), as Llama Guard 3 does.
//! * `action: block` refuses an unsafe prompt with 400 `content_blocked` naming the rule and
//!   the categories; `log` counts and audits it.
//! * The whole check (connect, send, answer) is bounded by `timeout_ms`. A check that fails or
//!   runs out lets the request through (`fail: open`, the default) or refuses it with 503
//!   `guardrail_unavailable` (`fail: closed`); either way it is audited.
//! * The classifier's tokens are metered and attributed like any other request: a ledger row
//!   of its own (id `<request id>.guard<rule>`, the caller's identity and key, the classifier's
//!   model, provider and price, route `guard:<rule>`), and the model's metrics.
//!
//! Reads: `ctx.body`, `ctx.guard` (the rules that cover this attempt). Writes: `ctx.guard`.

use std::time::Instant;

use sonic_rs::JsonValueTrait;

use crate::api::Api;
use crate::error::{ErrorKind, GateError};
use crate::guard::{Action, Class, GuardModel};
use crate::metering::usage::extract_usage;
use crate::metering::Usage;
use crate::phase::side_call;
use crate::pipeline::RequestCtx;
use crate::snapshot::Snapshot;
use crate::worker::Worker;

/// Tokens the classifier may write: a verdict and a category line.
const MAX_VERDICT_TOKENS: u32 = 32;

/// What the classifier said.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Safe,
    /// With its category line (`S1,S10`; empty when it gave none).
    Unsafe(String),
}

/// An answered check.
struct Answer {
    verdict: Verdict,
    usage: Option<Usage>,
}

/// Runs the guard-model checks due for this attempt.
pub async fn run(w: &Worker, ctx: &mut RequestCtx) -> Result<(), GateError> {
    let snap = ctx.snap.clone();
    for rule in ctx.guard.due_model_checks(&snap) {
        ctx.guard.model_checked.push(rule);
        let r = &snap.cfg.guardrails[rule as usize];
        let Some(gm) = &r.guard_model else {
            continue;
        };
        let started = Instant::now();
        let answer = match monoio::time::timeout(gm.timeout, ask(w, &snap, ctx, gm)).await {
            Ok(a) => a,
            Err(_) => Err(format!("no answer within {:?}", gm.timeout)),
        };
        let model = &snap.cfg.models[gm.model].name;
        match answer {
            Ok(a) => {
                side_call::record(
                    w,
                    ctx,
                    side_call::Call {
                        model: gm.model,
                        api: Api::ChatCompletions,
                        id_suffix: &format!("guard{rule}"),
                        route: &format!("guard:{}", r.name),
                        usage: a.usage,
                        started,
                    },
                );
                let Verdict::Unsafe(categories) = a.verdict else {
                    continue;
                };
                ctx.guard
                    .count(&snap, &Class::GuardModel, r.action, rule, false);
                if r.action == Action::Block {
                    let why = if categories.is_empty() {
                        String::new()
                    } else {
                        format!(" ({categories})")
                    };
                    return Err(GateError::new(
                        ErrorKind::ContentBlocked,
                        format!(
                            "the request was blocked by guardrail `{}`: guard model `{model}` \
                             judged it unsafe{why}",
                            r.name
                        ),
                    ));
                }
            }
            Err(why) => {
                let subject = ctx.key.as_ref().map_or(ctx.id.as_str(), |k| k.id.as_str());
                w.shared.governor.audit(
                    "guard.model_unavailable",
                    subject,
                    serde_json::json!({
                        "request": ctx.id, "rule": r.name, "model": model, "error": why,
                        "fail": if gm.fail_closed { "closed" } else { "open" },
                    }),
                );
                if gm.fail_closed {
                    return Err(GateError::new(
                        ErrorKind::Unavailable {
                            code: "guardrail_unavailable",
                        },
                        format!(
                            "guardrail `{}` could not check the request with guard model \
                             `{model}`: {why}",
                            r.name
                        ),
                    ));
                }
                tracing::warn!(rule = %r.name, model = %model, error = %why, "guard model check failed; letting the request through (fail: open)");
            }
        }
    }
    Ok(())
}

/// Sends the check and reads the verdict.
async fn ask(
    w: &Worker,
    snap: &Snapshot,
    ctx: &RequestCtx,
    gm: &GuardModel,
) -> Result<Answer, String> {
    let upstream = side_call::upstream_model(snap, gm.model)?;
    let body = check_body(ctx, upstream);
    let answer = side_call::post(w, snap, gm.model, Api::ChatCompletions, body, &ctx.id).await?;
    let content = sonic_rs::get(
        &answer[..],
        &sonic_rs::pointer!["choices", 0, "message", "content"],
    )
    .ok()
    .and_then(|v| v.as_str().map(str::to_string))
    .ok_or_else(|| "the answer has no choices[0].message.content".to_string())?;
    Ok(Answer {
        verdict: parse_verdict(&content)?,
        usage: extract_usage(Api::ChatCompletions, &answer),
    })
}

/// `safe`, or `unsafe` then the categories on the next line (Llama Guard's format).
fn parse_verdict(content: &str) -> Result<Verdict, String> {
    let mut lines = content.trim().lines();
    let first = lines.next().unwrap_or("").trim().to_ascii_lowercase();
    match first.as_str() {
        "safe" => Ok(Verdict::Safe),
        "unsafe" => {
            let cats: String = lines
                .next()
                .unwrap_or("")
                .trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == ',')
                .take(64)
                .collect();
            Ok(Verdict::Unsafe(cats))
        }
        _ => Err(format!(
            "unrecognised verdict ({} bytes; expected safe or unsafe)",
            content.len()
        )),
    }
}

/// The chat request: the client's `messages` spliced raw (a chat request), else its prompt
/// text as one user turn; a short greedy answer.
fn check_body(ctx: &RequestCtx, upstream_model: &str) -> bytes::Bytes {
    let raw = (ctx.api == Api::ChatCompletions)
        .then(|| sonic_rs::get(&ctx.body[..], ["messages"]).ok())
        .flatten()
        .filter(|v| v.is_array())
        .map(|v| v.as_raw_str().to_string());
    let messages = raw.unwrap_or_else(|| {
        let text = crate::phase::route::balance::render_prompt(ctx.api, &ctx.body);
        serde_json::json!([{"role": "user", "content": text}]).to_string()
    });
    let model = serde_json::to_string(upstream_model).unwrap_or_else(|_| "\"\"".into());
    format!(
        "{{\"model\":{model},\"messages\":{messages},\"max_tokens\":{MAX_VERDICT_TOKENS},\"temperature\":0}}"
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_in_llama_guard_format() {
        assert_eq!(parse_verdict("safe"), Ok(Verdict::Safe));
        assert_eq!(parse_verdict("\n\nsafe\n"), Ok(Verdict::Safe));
        assert_eq!(
            parse_verdict("unsafe\nS1,S10"),
            Ok(Verdict::Unsafe("S1,S10".into()))
        );
        assert_eq!(parse_verdict("UNSAFE"), Ok(Verdict::Unsafe(String::new())));
        assert!(parse_verdict("I think it is fine").is_err());
        assert!(parse_verdict("").is_err());
    }
}
