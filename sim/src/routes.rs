//! Routing and the per-request pipeline of each endpoint.
//!
//! An inference request goes: read the body (bounded) → record it for `/sim/last-request` →
//! parse (400) → resolve the model (404) → check the context window (400) → plan faults (delay,
//! injected failure) → wait for a running slot → prefill → stream the tokens, or decode and
//! answer. Every failure becomes a response through [`SimError::into_response`].

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};

use crate::api::{embeddings, models, Meta, TextApi, Usage};
use crate::app::App;
use crate::body::{full_response, json_response, sse_response, SimBody};
use crate::conn::ConnHandle;
use crate::error::{ErrorStyle, SimError};
use crate::faults::FaultPlan;
use crate::metrics::Finish;
use crate::sse::{Completion, ResetAfter, SseBody};

/// What a path serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    Models,
    Metrics,
    LastRequest,
    Text(TextApi),
    Embeddings,
    Tokenize,
}

impl Route {
    #[cfg(test)]
    fn of_test(method: &Method, path: &str) -> Result<Route, SimError> {
        Route::of(method, path, false)
    }

    fn of(method: &Method, path: &str, no_tokenize: bool) -> Result<Route, SimError> {
        let (route, expected) = match path {
            "/health" => (Route::Health, Method::GET),
            "/v1/models" => (Route::Models, Method::GET),
            "/metrics" => (Route::Metrics, Method::GET),
            "/sim/last-request" => (Route::LastRequest, Method::GET),
            "/v1/chat/completions" => (Route::Text(TextApi::Chat), Method::POST),
            "/v1/completions" => (Route::Text(TextApi::Completions), Method::POST),
            "/v1/responses" => (Route::Text(TextApi::Responses), Method::POST),
            "/v1/messages" => (Route::Text(TextApi::Messages), Method::POST),
            "/v1/embeddings" => (Route::Embeddings, Method::POST),
            "/tokenize" if !no_tokenize => (Route::Tokenize, Method::POST),
            _ => return Err(SimError::NotFound(format!("No route for {path}."))),
        };
        if *method == expected {
            Ok(route)
        } else {
            Err(SimError::MethodNotAllowed)
        }
    }
}

pub async fn handle(
    app: Arc<App>,
    conn: ConnHandle,
    request: Request<Incoming>,
) -> Response<SimBody> {
    let path = request.uri().path();
    let style = if path == "/v1/messages" {
        ErrorStyle::Anthropic
    } else {
        ErrorStyle::OpenAi
    };
    let route = match Route::of(request.method(), path, app.config.no_tokenize) {
        Ok(route) => route,
        Err(error) => return error.into_response(style),
    };
    let result = match route {
        Route::Health => Ok(full_response(StatusCode::OK, "text/plain", Bytes::new())),
        Route::Models => Ok(json_response(
            StatusCode::OK,
            models::render(&app.config.models, app.config.max_model_len_tokens),
        )),
        Route::Metrics => Ok(full_response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            app.metrics.render(app.engine.kv_usage()),
        )),
        Route::LastRequest => app
            .last_request
            .to_json()
            .map(|body| json_response(StatusCode::OK, body))
            .ok_or_else(|| SimError::NotFound("No POST request received yet.".into())),
        Route::Text(api) => text(&app, &conn, api, request).await,
        Route::Embeddings => embed(&app, &conn, request).await,
        Route::Tokenize => tokenize(&app, request).await,
    };
    result.unwrap_or_else(|error| error.into_response(style))
}

/// Chat, completions, responses and messages.
async fn text(
    app: &App,
    conn: &ConnHandle,
    api: TextApi,
    request: Request<Incoming>,
) -> Result<Response<SimBody>, SimError> {
    let (parts, body) = receive(app, request).await?;
    let mut job = api.parse(&body)?;
    job.prompt.retokenize(app.config.bytes_per_token);
    let (model, model_name) = app.resolve_model(job.model.as_deref())?;
    job.check_context(app.config.max_model_len_tokens)?;
    let faults = plan_faults(app, &parts).await?;
    if faults.echo {
        job.echo = Some(String::from_utf8_lossy(&job.prompt.text).into());
    }
    if app.config.guard_models.iter().any(|g| g == model_name) {
        let verdict = crate::api::guard_verdict(&job.prompt.text, &app.config.guard_flags);
        job.max_tokens = verdict.len().div_ceil(crate::textgen::ECHO_PIECE) as u64;
        job.echo = Some(verdict.into());
    }

    let mut sequence = app.engine.schedule(model).await?;
    let cache = sequence.prefill(&job.prompt, true).await;
    let usage = Usage::new(&job, cache);
    let mut meta = Meta::new(api, model_name);
    meta.fingerprint.clone_from(&app.config.system_fingerprint);
    let completion = Completion {
        finish: job.finish,
        generated_tokens: usage.completion_tokens,
    };

    if job.stream {
        let stream_usage = (job.stream_usage && !faults.suppress_stream_usage).then_some(usage);
        let frames = api.stream(meta, &job, stream_usage);
        let reset = faults.reset_after_frames.map(|frames| ResetAfter {
            frames,
            conn: conn.clone(),
        });
        return Ok(sse_response(SseBody::new(
            frames, sequence, completion, reset,
        )));
    }

    sequence.decode(job.max_tokens).await;
    if faults.reset_after_frames.is_some() {
        return reset(conn).await;
    }
    let body = api.render(&meta, &job, &usage);
    sequence.finish(completion.finish, completion.generated_tokens);
    Ok(json_response(StatusCode::OK, body))
}

async fn embed(
    app: &App,
    conn: &ConnHandle,
    request: Request<Incoming>,
) -> Result<Response<SimBody>, SimError> {
    let (parts, body) = receive(app, request).await?;
    let job = embeddings::parse(&body)?;
    let (model, model_name) = app.resolve_model(job.model.as_deref())?;
    let prompt = job.prompt();
    let limit = app.config.max_model_len_tokens;
    if let Some(tokens) = job
        .inputs
        .iter()
        .map(|i| crate::textgen::count_tokens(i.len()))
        .find(|&t| t > limit)
    {
        return Err(SimError::ContextTooLong {
            limit,
            requested: tokens,
            prompt: tokens,
            completion: 0,
        });
    }
    let faults = plan_faults(app, &parts).await?;

    let mut sequence = app.engine.schedule(model).await?;
    sequence.prefill(&prompt, false).await;
    if faults.reset_after_frames.is_some() {
        return reset(conn).await;
    }
    let body = embeddings::render(model_name, &job, app.config.embedding_dim);
    sequence.finish(Finish::Stop, 0);
    Ok(json_response(StatusCode::OK, body))
}

/// `POST /tokenize`, as vLLM answers it: the prompt's tokens as a request would count them
/// (`messages` through the chat API's prompt, else `prompt` through the completions API's),
/// with `count`, `max_model_len` and the token ids. Not recorded as the last request.
async fn tokenize(app: &App, request: Request<Incoming>) -> Result<Response<SimBody>, SimError> {
    let (_, body) = request.into_parts();
    let body = read_body(app, body).await?;
    let fields: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| SimError::invalid(format!("The body is not JSON: {e}")))?;
    let api = if fields.get("messages").is_some() {
        TextApi::Chat
    } else {
        TextApi::Completions
    };
    let mut job = api.parse(&body)?;
    job.prompt.retokenize(app.config.bytes_per_token);
    app.resolve_model(job.model.as_deref())?;
    let count = job.prompt.tokens;
    let answer = serde_json::json!({
        "count": count,
        "max_model_len": app.config.max_model_len_tokens,
        "tokens": (0..count).map(|i| i % 50_000).collect::<Vec<_>>(),
    });
    Ok(json_response(
        StatusCode::OK,
        answer.to_string().into_bytes(),
    ))
}

/// Reads the body within the size limit and records the request.
async fn receive(app: &App, request: Request<Incoming>) -> Result<(Parts, Bytes), SimError> {
    let (parts, body) = request.into_parts();
    let body = read_body(app, body).await?;
    app.last_request.record(&parts, &body);
    Ok((parts, body))
}

/// The body, within the size limit.
async fn read_body(app: &App, body: Incoming) -> Result<Bytes, SimError> {
    let limit = app.config.max_body_bytes;
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(SimError::BodyTooLarge { limit_bytes: limit })
        }
        Err(error) => {
            return Err(SimError::invalid(format!(
                "Failed to read the request body: {error}"
            )))
        }
    };
    Ok(body)
}

/// Decides this request's faults and applies those that come before the engine.
async fn plan_faults(app: &App, parts: &Parts) -> Result<FaultPlan, SimError> {
    let plan = app.faults.plan(&parts.headers)?;
    plan.before_engine().await?;
    Ok(plan)
}

/// Has the connection task kill the connection with an RST; the response never comes.
async fn reset(conn: &ConnHandle) -> Result<Response<SimBody>, SimError> {
    conn.reset();
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_path_and_method() {
        assert_eq!(
            Route::of_test(&Method::POST, "/v1/messages").unwrap(),
            Route::Text(TextApi::Messages)
        );
        assert_eq!(
            Route::of_test(&Method::GET, "/metrics").unwrap(),
            Route::Metrics
        );
        assert_eq!(
            Route::of_test(&Method::GET, "/v1/chat/completions")
                .unwrap_err()
                .status(),
            405
        );
        assert_eq!(
            Route::of_test(&Method::GET, "/nope").unwrap_err().status(),
            404
        );
    }
}
