//! Endpoints Tollgate answers itself on the client port: `/healthz`, `/readyz`, `/metrics`
//! (unless `admin.metrics_on_client_port: false`), `/v1/models`.
//! Not on the proxy hot path.

use std::sync::atomic::Ordering;

use crate::api::Wire;
use crate::client::ClientConn;
use crate::config::Config;
use crate::error::{ErrorKind, GateError};
use crate::http::request::{Method, RequestHead};
use crate::shared::Shared;
use crate::worker::Worker;

/// Serves a local endpoint; returns whether the connection stays open.
pub async fn serve(w: &Worker, cfg: &Config, client: &mut ClientConn, head: &RequestHead) -> bool {
    let keep = head.keep_alive;
    let path = head.path();
    let metrics = cfg.metrics_on_client_port && path == "/metrics";
    let known = matches!(path, "/healthz" | "/readyz" | "/v1/models")
        || metrics
        || path.starts_with("/v1/models/");
    // `/v1/models` needs a valid key like the inference endpoints (OpenAI's does too): the
    // list would otherwise tell anyone on the port what is deployed; a key sees its models.
    let listing = if path.starts_with("/v1/models") {
        crate::phase::admit::authenticate(
            &w.shared.governor,
            client,
            head,
            Wire::OpenAi,
            cfg.governance.auth,
        )
    } else {
        Ok(None)
    };
    let result = if !known {
        let e = GateError::new(ErrorKind::NotFound, format!("Unknown request URL: {path}"));
        client.respond_error(&e, Wire::OpenAi, keep, None).await
    } else if head.method != Method::Get {
        let e = GateError::new(
            ErrorKind::MethodNotAllowed,
            format!("{path} accepts GET only"),
        );
        client.respond_error(&e, Wire::OpenAi, keep, None).await
    } else if let Err(denied) = &listing {
        client.respond_error(denied, Wire::OpenAi, keep, None).await
    } else {
        let key = listing.as_ref().ok().and_then(Option::as_deref);
        match path {
            "/healthz" => {
                client
                    .respond(
                        200,
                        "application/json",
                        br#"{"status":"ok"}"#.to_vec(),
                        keep,
                        "",
                    )
                    .await
            }
            "/readyz" => {
                let (status, body) = readiness(&w.shared, cfg);
                client
                    .respond(status, "application/json", body.into_bytes(), keep, "")
                    .await
            }
            "/metrics" => {
                let text = w.shared.render_metrics();
                client
                    .respond(
                        200,
                        "text/plain; version=0.0.4",
                        text.into_bytes(),
                        keep,
                        "",
                    )
                    .await
            }
            "/v1/models" => {
                client
                    .respond(
                        200,
                        "application/json",
                        models(cfg, None, key).into_bytes(),
                        keep,
                        "",
                    )
                    .await
            }
            _ => {
                let name = &path["/v1/models/".len()..];
                if cfg.model_by_name(name).is_some() && key.is_none_or(|k| k.allows_model(name)) {
                    client
                        .respond(
                            200,
                            "application/json",
                            models(cfg, Some(name), key).into_bytes(),
                            keep,
                            "",
                        )
                        .await
                } else {
                    let e = GateError::new(
                        ErrorKind::ModelNotFound,
                        format!(
                            "The model `{name}` does not exist or you do not have access to it."
                        ),
                    );
                    client.respond_error(&e, Wire::OpenAi, keep, None).await
                }
            }
        }
    };
    result.is_ok() && keep
}

/// The readiness status code and its label (`ready`, `stopping`, `starting`).
pub fn readiness_status(s: &Shared, cfg: &Config) -> (u16, &'static str) {
    let stopping = s.shutting_down.load(Ordering::Relaxed);
    let ready = s.workers_ready.load(Ordering::Acquire) == cfg.workers && !stopping;
    match (ready, stopping) {
        (true, _) => (200, "ready"),
        (false, true) => (503, "stopping"),
        (false, false) => (503, "starting"),
    }
}

/// `/readyz` on the client port and the admin listener: status and body.
pub fn readiness(s: &Shared, cfg: &Config) -> (u16, String) {
    let (status, label) = readiness_status(s, cfg);
    let body = serde_json::json!({
        "status": label,
        "workers": cfg.workers,
        "io_driver": s.io_driver.get().copied().unwrap_or("starting"),
        "kernel": s.kernel.to_json(),
        "gpu": s.gpus.status().to_json(),
        "models": cfg.models.len(),
        "breakers": open_breakers(s),
        "cluster": s.cluster.as_ref().map(|c| c.to_json()),
    });
    (status, body.to_string())
}

/// Targets whose circuit breaker is not closed, or whose provider fails its health check.
fn open_breakers(s: &Shared) -> serde_json::Value {
    let snap = s.snapshot.load();
    let now = crate::governance::window::now_ms().max(0) as u64;
    let mut out = serde_json::Map::new();
    for (m, list) in snap.breakers.iter().enumerate() {
        let model = &snap.cfg.models[m];
        for (t, tb) in list.iter().enumerate() {
            let provider = &snap.providers[model.targets[t].provider];
            if !provider.healthy.load(Ordering::Relaxed) {
                out.insert(tb.label.clone(), "unhealthy".into());
                continue;
            }
            if !model.breaker.enabled {
                continue;
            }
            let state = tb.breaker.state(now);
            if state != crate::upstream::breaker::State::Closed {
                out.insert(tb.label.clone(), state.label().into());
            }
        }
    }
    serde_json::Value::Object(out)
}

/// The model list (only what `key` may use, when there is a key).
fn models(
    cfg: &Config,
    only: Option<&str>,
    key: Option<&crate::governance::keys::KeyEntry>,
) -> String {
    let entry = |m: &crate::config::Model| {
        serde_json::json!({
            "id": m.name,
            "object": "model",
            "created": 0,
            // A tiered model has no targets of its own: it is Tollgate's.
            "owned_by": m.targets.first().map_or("tollgate", |t| cfg.providers[t.provider].name.as_str()),
        })
    };
    match only {
        Some(name) => cfg
            .model_by_name(name)
            .map(|(_, m)| entry(m))
            .unwrap_or_default()
            .to_string(),
        None => serde_json::json!({
            "object": "list",
            "data": cfg
                .models
                .iter()
                .filter(|m| key.is_none_or(|k| k.allows_model(&m.name)))
                .map(entry)
                .collect::<Vec<_>>(),
        })
        .to_string(),
    }
}
