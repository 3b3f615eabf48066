//! Cost tiers: a virtual model with `tiers` sends each request to the first tier whose rule it
//! satisfies (prompt size, tools, reasoning effort, workflow, keywords or a regex on the last
//! user message), and to the last tier when none does. Runs before admission, so access rules
//! see the virtual model's name while budgets reserve at the tier's price; the ledger keeps
//! the virtual model as `requested_model` and the tier in `route`.
//!
//! Reads the body only for what a rule asks: reasoning effort and the last user message are
//! pulled out lazily, once, and only for tiered models.

use sonic_rs::{JsonContainerTrait, JsonValueTrait};

use crate::config::routing::Tier;
use crate::pipeline::RequestCtx;
use crate::snapshot::Snapshot;

/// Moves a request for a tiered model to its tier's model.
pub fn resolve_tier(snap: &Snapshot, ctx: &mut RequestCtx) {
    let Some((_, model)) = snap.cfg.model_by_name(&ctx.inspection.model) else {
        return;
    };
    let Some(last) = model.tiers.last() else {
        return;
    };
    let mut facts = Facts::default();
    let chosen = model
        .tiers
        .iter()
        .find(|t| matches(t, ctx, &mut facts))
        .unwrap_or(last);
    let from = std::mem::replace(&mut ctx.inspection.model, chosen.model_name.clone());
    ctx.route.note(format_args!("{from}: {}", chosen.label));
    ctx.inspection.original_model.get_or_insert(from);
}

/// What rules read from the body, extracted at most once.
#[derive(Default)]
struct Facts {
    effort: Option<Option<String>>,
    last_user: Option<String>,
}

fn matches(tier: &Tier, ctx: &RequestCtx, facts: &mut Facts) -> bool {
    let w = &tier.when;
    let tokens = super::prompt_tokens(ctx);
    if w.max_prompt_tokens.is_some_and(|n| tokens > n)
        || w.min_prompt_tokens.is_some_and(|n| tokens < n)
        || w.tools
            .is_some_and(|t| t != (ctx.inspection.tool_count > 0))
    {
        return false;
    }
    if !w.workflow.is_empty() {
        let Some(flow) = ctx.identity.workflow.as_deref() else {
            return false;
        };
        if !w.workflow.iter().any(|g| g.matches(flow)) {
            return false;
        }
    }
    if !w.reasoning_effort.is_empty() {
        let effort = facts
            .effort
            .get_or_insert_with(|| reasoning_effort(&ctx.body));
        if !effort
            .as_deref()
            .is_some_and(|e| w.reasoning_effort.iter().any(|x| x.eq_ignore_ascii_case(e)))
        {
            return false;
        }
    }
    if w.needs_text() {
        let text = facts
            .last_user
            .get_or_insert_with(|| last_user_text(&ctx.body).to_lowercase());
        if !w.keywords.is_empty() && !w.keywords.iter().any(|k| text.contains(k.as_str())) {
            return false;
        }
        if w.regex.as_ref().is_some_and(|r| !r.is_match(text)) {
            return false;
        }
    }
    true
}

/// `reasoning_effort` (chat completions) or `reasoning.effort` (Responses).
fn reasoning_effort(body: &[u8]) -> Option<String> {
    for path in [&["reasoning_effort"][..], &["reasoning", "effort"][..]] {
        if let Ok(v) = sonic_rs::get(body, path) {
            if let Some(s) = v.as_str() {
                return Some(s.to_string());
            }
        }
    }
    None
}

/// The text of the last user message: `messages` (chat, Anthropic), else `input` (Responses)
/// or `prompt` (completions) when they are strings. Content parts contribute their `text`.
pub fn last_user_text(body: &[u8]) -> String {
    if let Ok(raw) = sonic_rs::get(body, &["messages"]) {
        if let Ok(messages) = sonic_rs::from_str::<sonic_rs::Value>(raw.as_raw_str()) {
            if let Some(list) = messages.as_array() {
                for m in list.iter().rev() {
                    if m.get("role").and_then(|r| r.as_str()) == Some("user") {
                        return content_text(m.get("content"));
                    }
                }
            }
        }
    }
    for field in ["input", "prompt"] {
        if let Ok(v) = sonic_rs::get(body, &[field]) {
            if let Some(s) = v.as_str() {
                return s.to_string();
            }
        }
    }
    String::new()
}

fn content_text(content: Option<&sonic_rs::Value>) -> String {
    let Some(c) = content else {
        return String::new();
    };
    if let Some(s) = c.as_str() {
        return s.to_string();
    }
    let mut out = String::new();
    for part in c.as_array().into_iter().flat_map(|a| a.iter()) {
        if let Some(t) = part.get("text").and_then(|t| t.as_str()) {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_user_message_is_found_in_each_shape() {
        let chat = br#"{"messages":[{"role":"user","content":"first"},{"role":"assistant","content":"x"},{"role":"user","content":[{"type":"text","text":"fix this regex"},{"type":"image_url","image_url":{"url":"u"}}]}]}"#;
        assert_eq!(last_user_text(chat), "fix this regex");
        assert_eq!(last_user_text(br#"{"input":"hello"}"#), "hello");
        assert_eq!(last_user_text(br#"{"model":"m"}"#), "");
        assert_eq!(
            reasoning_effort(br#"{"reasoning":{"effort":"high"}}"#).as_deref(),
            Some("high")
        );
        assert_eq!(
            reasoning_effort(br#"{"reasoning_effort":"low"}"#).as_deref(),
            Some("low")
        );
    }
}
