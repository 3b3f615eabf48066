//! Phase 6, route: the requested model name → the provider target that serves it.
//! Today a model has one target; weighted, priority and fallback targets, health and
//! prefix-aware choice among replicas extend `Target` selection here.
//! Reads: `ctx.inspection.model`, `ctx.api`. Writes: `ctx.target`. Hot path (one hash lookup).

use crate::api::Wire;
use crate::config::{Config, ProviderKind};
use crate::error::{ErrorKind, GateError};
use crate::pipeline::RequestCtx;

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub model: usize,
    pub provider: usize,
}

pub fn run(cfg: &Config, ctx: &mut RequestCtx) -> Result<(), GateError> {
    let name = &ctx.inspection.model;
    let Some((model_idx, model)) = cfg.model_by_name(name) else {
        return Err(GateError::new(
            ErrorKind::ModelNotFound,
            format!("The model `{name}` does not exist or you do not have access to it."),
        ));
    };
    let provider = &cfg.providers[model.provider];
    let compatible = matches!(
        (ctx.api.wire(), provider.kind),
        (Wire::OpenAi, ProviderKind::OpenAi) | (Wire::Anthropic, ProviderKind::Anthropic)
    );
    if !compatible {
        let hint = match provider.kind {
            ProviderKind::Anthropic => "use /v1/messages",
            ProviderKind::OpenAi => "use the OpenAI endpoints (/v1/chat/completions, ...)",
        };
        return Err(GateError::new(
            ErrorKind::UnsupportedApi,
            format!(
                "The model `{name}` is served by an {:?} provider that does not speak {}; {hint}.",
                provider.kind,
                ctx.head.path()
            ),
        ));
    }
    ctx.target = Some(Target {
        model: model_idx,
        provider: model.provider,
    });
    Ok(())
}
