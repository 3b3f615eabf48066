//! Phase 6, route: the requested model name → the provider target that serves it.
//! Today a model has one target; weighted, priority and fallback targets, health and
//! prefix-aware choice among replicas extend `Target` selection here.
//!
//! Intercepted connections (the kernel redirected a client's connect to the agent, so the
//! connection carries an `original_dst`) go where the client addressed them, under full
//! metering: to the configured provider at exactly that address (and the configured model when
//! the name is one of its models, else the model name passes through unchanged), or else to
//! the implicit passthrough provider validation created for that destination. The route for
//! each destination was computed at load (`Config::intercept_routes`).
//!
//! Reads: `ctx.inspection.model`, `ctx.api`, the connection's original destination.
//! Writes: `ctx.target`. Hot path (one hash lookup, or a scan of the short intercept list).

use std::net::SocketAddr;

use crate::api::Wire;
use crate::config::{Config, ProviderKind};
use crate::error::{ErrorKind, GateError};
use crate::pipeline::RequestCtx;

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The configured model; `None` for an intercepted request whose model name is passed
    /// through to the original destination unchanged.
    pub model: Option<usize>,
    pub provider: usize,
}

impl Target {
    /// The model name the provider receives: the configured model's, or the client's own.
    pub fn upstream_model<'a>(&self, cfg: &'a Config, requested: &'a str) -> &'a str {
        match self.model {
            Some(m) => &cfg.models[m].upstream_model,
            None => requested,
        }
    }
}

pub fn run(
    cfg: &Config,
    ctx: &mut RequestCtx,
    original_dst: Option<SocketAddr>,
) -> Result<(), GateError> {
    if let Some(dst) = original_dst {
        return intercepted(cfg, ctx, dst);
    }
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
        model: Some(model_idx),
        provider: model.provider,
    });
    Ok(())
}

/// A request on a connection the kernel redirected from `dst`.
fn intercepted(cfg: &Config, ctx: &mut RequestCtx, dst: SocketAddr) -> Result<(), GateError> {
    let Some(route) = cfg.intercept_route(dst) else {
        // Only destinations in `intercept` are redirected, so this is a configuration that
        // changed under a live connection, or another agent's redirect.
        return Err(GateError::new(
            ErrorKind::UpstreamUnreachable,
            format!("the connection to {dst} was redirected to Tollgate, but {dst} is not in its intercept list"),
        ));
    };
    let provider = route.provider_for(ctx.api.wire());
    let model = cfg
        .model_by_name(&ctx.inspection.model)
        .filter(|(_, m)| m.provider == provider)
        .map(|(i, _)| i);
    ctx.target = Some(Target { model, provider });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Api;
    use crate::http::request::RequestHead;
    use crate::phase::read::Request;
    use std::time::Instant;

    const CFG: &str = "listen: 127.0.0.1:4000
providers:
  - name: local
    kind: openai
    base_url: http://127.0.0.1:8000
  - name: other
    kind: openai
    base_url: http://127.0.0.1:9000
models:
  - name: smol
    provider: local
    model: smollm2
  - name: big
    provider: other
intercept:
  - 127.0.0.1:8000
  - 127.0.0.1:7000
";

    fn ctx(api: Api, model: &str) -> RequestCtx {
        let raw =
            bytes::Bytes::from_static(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n\r\n");
        let head = RequestHead::parse(raw, 16).unwrap_or_else(|e| panic!("{e:?}"));
        let mut ctx = RequestCtx::new(
            "t".into(),
            Instant::now(),
            api,
            Request {
                head,
                body: bytes::Bytes::new(),
                reservation: crate::phase::read::Reservation::none(),
            },
        );
        ctx.inspection.model = model.to_string();
        ctx
    }

    fn cfg() -> Config {
        Config::from_yaml(CFG, &|_| None).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn intercepted_requests_go_to_their_original_destination() {
        let cfg = cfg();
        let dst: SocketAddr = "127.0.0.1:8000".parse().unwrap_or_else(|e| panic!("{e}"));
        // A configured model of the provider at that address: its upstream name.
        let mut c = ctx(Api::ChatCompletions, "smol");
        run(&cfg, &mut c, Some(dst)).unwrap_or_else(|e| panic!("{e}"));
        let t = c.target.unwrap_or_else(|| panic!("no target"));
        assert_eq!((t.model, t.provider), (Some(0), 0));
        assert_eq!(t.upstream_model(&cfg, "smol"), "smollm2");
        // Any other name passes through, still to that address (never to `other`).
        for name in ["smollm2", "big"] {
            let mut c = ctx(Api::ChatCompletions, name);
            run(&cfg, &mut c, Some(dst)).unwrap_or_else(|e| panic!("{e}"));
            let t = c.target.unwrap_or_else(|| panic!("no target"));
            assert_eq!((t.model, t.provider), (None, 0), "{name}");
            assert_eq!(t.upstream_model(&cfg, name), name);
        }
        // /v1/messages to that address: the implicit anthropic passthrough.
        let mut c = ctx(Api::Messages, "claude-x");
        run(&cfg, &mut c, Some(dst)).unwrap_or_else(|e| panic!("{e}"));
        let t = c.target.unwrap_or_else(|| panic!("no target"));
        let p = &cfg.providers[t.provider];
        assert!(p.implicit && p.kind == ProviderKind::Anthropic && p.port == 8000);
        // A destination no provider serves: implicit openai passthrough, no key.
        let other: SocketAddr = "127.0.0.1:7000".parse().unwrap_or_else(|e| panic!("{e}"));
        let mut c = ctx(Api::ChatCompletions, "smol");
        run(&cfg, &mut c, Some(other)).unwrap_or_else(|e| panic!("{e}"));
        let t = c.target.unwrap_or_else(|| panic!("no target"));
        let p = &cfg.providers[t.provider];
        assert!(p.implicit && p.api_key.is_none() && p.port == 7000);
        assert_eq!(t.model, None);
        // Not intercepted at all: refused rather than sent somewhere else.
        let stray: SocketAddr = "127.0.0.1:6000".parse().unwrap_or_else(|e| panic!("{e}"));
        let mut c = ctx(Api::ChatCompletions, "smol");
        assert!(run(&cfg, &mut c, Some(stray)).is_err());
    }

    #[test]
    fn direct_requests_route_by_model_name() {
        let cfg = cfg();
        let mut c = ctx(Api::ChatCompletions, "big");
        run(&cfg, &mut c, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.target,
            Some(Target {
                model: Some(1),
                provider: 1
            })
        );
        let mut c = ctx(Api::ChatCompletions, "smollm2");
        assert!(run(&cfg, &mut c, None).is_err());
    }
}
