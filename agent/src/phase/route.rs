//! Phase 6, route: the requested model name → the deployment (target) that serves it.
//! A model has one or more targets (provider + the provider's model name). Until the routing
//! policy lands (weights, priorities, fallbacks, breakers, prefix-aware choice), the route is
//! the first target that speaks the request's API and whose provider this worker has not seen
//! refuse a connection in the last few seconds (`upstream::health`); when every compatible
//! target is marked down, the first compatible one is tried anyway.
//!
//! Intercepted connections (the kernel redirected a client's connect to the agent, so the
//! connection carries an `original_dst`) go where the client addressed them, under full
//! metering: to the configured provider at exactly that address (and the configured model when
//! the name is one of its models, else the model name passes through unchanged), or else to
//! the implicit passthrough provider validation created for that destination. The route for
//! each destination was computed at load (`Config::intercept_routes`).
//!
//! Reads: `ctx.inspection.model`, `ctx.api`, the connection's original destination, the
//! worker's provider health. Writes: `ctx.target`. Hot path (one hash lookup and a short scan).

use std::net::SocketAddr;
use std::time::Instant;

use crate::api::Wire;
use crate::config::{Config, ProviderKind};
use crate::error::{ErrorKind, GateError};
use crate::pipeline::RequestCtx;
use crate::snapshot::Snapshot;
use crate::upstream::health::HealthLocal;

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The configured model and which of its targets; `None` for an intercepted request whose
    /// model name is passed through to the original destination unchanged.
    pub model: Option<(usize, usize)>,
    pub provider: usize,
}

impl Target {
    /// The model name the provider receives: the configured target's, or the client's own.
    pub fn upstream_model<'a>(&self, cfg: &'a Config, requested: &'a str) -> &'a str {
        match self.model {
            Some((m, t)) => &cfg.models[m].targets[t].upstream_model,
            None => requested,
        }
    }

    /// The configured model's index, if any.
    pub fn model_index(&self) -> Option<usize> {
        self.model.map(|(m, _)| m)
    }
}

fn speaks(wire: Wire, kind: ProviderKind) -> bool {
    matches!(
        (wire, kind),
        (Wire::OpenAi, ProviderKind::OpenAi) | (Wire::Anthropic, ProviderKind::Anthropic)
    )
}

pub fn run(
    snap: &Snapshot,
    health: &HealthLocal,
    ctx: &mut RequestCtx,
    original_dst: Option<SocketAddr>,
) -> Result<(), GateError> {
    let cfg = &snap.cfg;
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
    let wire = ctx.api.wire();
    let now = Instant::now();
    let mut compatible = model
        .targets
        .iter()
        .enumerate()
        .filter(|(_, t)| speaks(wire, cfg.providers[t.provider].kind));
    let Some(first) = compatible.clone().next() else {
        let kind = cfg.providers[model.targets[0].provider].kind;
        let hint = match kind {
            ProviderKind::Anthropic => "use /v1/messages",
            ProviderKind::OpenAi => "use the OpenAI endpoints (/v1/chat/completions, ...)",
        };
        return Err(GateError::new(
            ErrorKind::UnsupportedApi,
            format!(
                "The model `{name}` is served by an {kind:?} provider that does not speak {}; {hint}.",
                ctx.head.path()
            ),
        ));
    };
    let (index, chosen) = compatible
        .find(|(_, t)| health.is_up(snap.providers[t.provider].id, now))
        .unwrap_or(first);
    ctx.target = Some(Target {
        model: Some((model_idx, index)),
        provider: chosen.provider,
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
        .and_then(|(i, m)| m.target_on(provider).map(|t| (i, t)));
    ctx.target = Some(Target { model, provider });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Api;
    use crate::http::request::RequestHead;
    use crate::phase::read::Request;
    use std::sync::Arc;
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

    fn snap_of(cfg: &Config) -> Arc<Snapshot> {
        let metrics = crate::telemetry::metrics::Metrics::new(1, vec![], vec![]);
        Arc::new(
            crate::snapshot::Registry::default()
                .build(
                    Arc::new(cfg.clone()),
                    1,
                    &metrics,
                    &crate::governance::Governor::for_tests(),
                )
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    fn ctx(snap: &Arc<Snapshot>, api: Api, model: &str) -> RequestCtx {
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
                snap: snap.clone(),
                reservation: crate::phase::read::Reservation::none(),
            },
        );
        ctx.inspection.model = model.to_string();
        ctx
    }

    fn health(cfg: &Config) -> HealthLocal {
        HealthLocal::new(cfg.providers.len())
    }

    #[test]
    fn the_first_target_whose_provider_is_up_serves() {
        let cfg = Config::from_yaml(
            "providers:
  - {name: a, kind: openai, base_url: http://127.0.0.1:8001}
  - {name: b, kind: openai, base_url: http://127.0.0.1:8002}
  - {name: c, kind: anthropic, base_url: http://127.0.0.1:8003}
models:
  - name: chat
    targets:
      - {provider: c, model: claude-x}
      - {provider: a, model: qwen}
      - {provider: b, model: qwen-b, weight: 2}
",
            &|_| None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let snap = snap_of(&cfg);
        let health = health(&cfg);
        let route = |api| {
            let mut c = ctx(&snap, api, "chat");
            run(&snap, &health, &mut c, None)
                .map(|()| c.target.unwrap_or_else(|| panic!("no target")))
        };
        // OpenAI clients skip the Anthropic target.
        let t = route(Api::ChatCompletions).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (t.model, t.upstream_model(&cfg, "chat")),
            (Some((0, 1)), "qwen")
        );
        assert_eq!(cfg.models[0].targets[2].weight, 2);
        // A provider that refused a connect is avoided while another target is up...
        health.mark_down(0, Instant::now());
        let t = route(Api::ChatCompletions).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.provider, 1);
        // ... and tried anyway when every compatible target is down.
        health.mark_down(1, Instant::now());
        let t = route(Api::ChatCompletions).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.provider, 0);
        health.mark_up(1);
        assert_eq!(
            route(Api::ChatCompletions).map(|t| t.provider).ok(),
            Some(1)
        );
        let t = route(Api::Messages).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (t.provider, t.upstream_model(&cfg, "chat")),
            (2, "claude-x")
        );
    }

    fn cfg() -> Config {
        Config::from_yaml(CFG, &|_| None).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn intercepted_requests_go_to_their_original_destination() {
        let cfg = cfg();
        let snap = snap_of(&cfg);
        let dst: SocketAddr = "127.0.0.1:8000".parse().unwrap_or_else(|e| panic!("{e}"));
        // A configured model of the provider at that address: its upstream name.
        let mut c = ctx(&snap, Api::ChatCompletions, "smol");
        run(&snap, &health(&cfg), &mut c, Some(dst)).unwrap_or_else(|e| panic!("{e}"));
        let t = c.target.unwrap_or_else(|| panic!("no target"));
        assert_eq!((t.model, t.provider), (Some((0, 0)), 0));
        assert_eq!(t.upstream_model(&cfg, "smol"), "smollm2");
        // Any other name passes through, still to that address (never to `other`).
        for name in ["smollm2", "big"] {
            let mut c = ctx(&snap, Api::ChatCompletions, name);
            run(&snap, &health(&cfg), &mut c, Some(dst)).unwrap_or_else(|e| panic!("{e}"));
            let t = c.target.unwrap_or_else(|| panic!("no target"));
            assert_eq!((t.model, t.provider), (None, 0), "{name}");
            assert_eq!(t.upstream_model(&cfg, name), name);
        }
        // /v1/messages to that address: the implicit anthropic passthrough.
        let mut c = ctx(&snap, Api::Messages, "claude-x");
        run(&snap, &health(&cfg), &mut c, Some(dst)).unwrap_or_else(|e| panic!("{e}"));
        let t = c.target.unwrap_or_else(|| panic!("no target"));
        let p = &cfg.providers[t.provider];
        assert!(p.implicit && p.kind == ProviderKind::Anthropic && p.port == 8000);
        // A destination no provider serves: implicit openai passthrough, no key.
        let other: SocketAddr = "127.0.0.1:7000".parse().unwrap_or_else(|e| panic!("{e}"));
        let mut c = ctx(&snap, Api::ChatCompletions, "smol");
        run(&snap, &health(&cfg), &mut c, Some(other)).unwrap_or_else(|e| panic!("{e}"));
        let t = c.target.unwrap_or_else(|| panic!("no target"));
        let p = &cfg.providers[t.provider];
        assert!(p.implicit && p.api_key.is_none() && p.port == 7000);
        assert_eq!(t.model, None);
        // Not intercepted at all: refused rather than sent somewhere else.
        let stray: SocketAddr = "127.0.0.1:6000".parse().unwrap_or_else(|e| panic!("{e}"));
        let mut c = ctx(&snap, Api::ChatCompletions, "smol");
        assert!(run(&snap, &health(&cfg), &mut c, Some(stray)).is_err());
    }

    #[test]
    fn direct_requests_route_by_model_name() {
        let cfg = cfg();
        let snap = snap_of(&cfg);
        let mut c = ctx(&snap, Api::ChatCompletions, "big");
        run(&snap, &health(&cfg), &mut c, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.target,
            Some(Target {
                model: Some((1, 0)),
                provider: 1
            })
        );
        let mut c = ctx(&snap, Api::ChatCompletions, "smollm2");
        assert!(run(&snap, &health(&cfg), &mut c, None).is_err());
    }
}
