//! The admin listener: a separate port for operators (`admin.listen`), authenticated with a
//! bearer token compared in constant time. It serves `/metrics`, `/readyz`, `/healthz`,
//! `POST /admin/config/reload` (the answer says what was applied, or every problem of a refused
//! file), `GET /admin/config/history` and `GET /admin/config/versions/N` (a version's file),
//! and the governance API: keys, exceptions, audit log (`governance/api.rs`). It also serves
//! the web dashboard: the page at `/dashboard/` (no data, no token) and its data under
//! `/admin/dashboard/` (token required; `dashboard/`).
//! Control plane: hyper on a current-thread tokio runtime on its own thread, never on a worker.
//! The token never appears in a log line or a response.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use subtle::ConstantTimeEq;

use crate::api::Wire;
use crate::config::admin::AdminSettings;
use crate::error::{ErrorKind, GateError};
use crate::reload::{history, ReloadError, Reloader, Trigger};
use crate::shared::Shared;

/// Longest an admin connection may take to send a request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A running admin listener; [`AdminHandle::stop`] ends it.
pub struct AdminHandle {
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl AdminHandle {
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Binds the admin listener (errors surface here, before the agent reports itself started)
/// and serves it on a thread of its own.
pub fn start(
    settings: &AdminSettings,
    shared: Arc<Shared>,
    reloader: Option<Arc<Reloader>>,
) -> std::io::Result<AdminHandle> {
    let listener = std::net::TcpListener::bind(settings.listen)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let token: Arc<[u8]> = settings.token.as_bytes().into();
    let store = crate::governance::store::Store::open(shared.governor.data_dir())
        .map_err(std::io::Error::other)?;
    let store = Arc::new(std::sync::Mutex::new(store));
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("tollgate-admin".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "the admin listener could not start its runtime");
                    return;
                }
            };
            rt.block_on(accept_loop(
                listener,
                stopped,
                Ctx {
                    shared,
                    token,
                    reloader,
                    store,
                },
            ));
        })?;
    Ok(AdminHandle { addr, stop, thread })
}

/// What every admin request can see.
#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    token: Arc<[u8]>,
    reloader: Option<Arc<Reloader>>,
    /// The governance store (keys, exceptions, audit log).
    store: Arc<std::sync::Mutex<crate::governance::store::Store>>,
}

/// Largest admin request body (key specs and exceptions are small).
const MAX_BODY: usize = 1 << 20;

async fn accept_loop(
    listener: std::net::TcpListener,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    ctx: Ctx,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "the admin listener could not be registered");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let ctx = ctx.clone();
                            async move {
                                use http_body_util::BodyExt;
                                let (parts, body) = req.into_parts();
                                let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
                                    Ok(b) => b.to_bytes(),
                                    Err(_) => {
                                        return Ok::<_, Infallible>(error(&GateError::new(
                                            ErrorKind::BodyTooLarge { limit: MAX_BODY as u64 },
                                            "admin request bodies are limited to 1 MiB",
                                        )))
                                    }
                                };
                                Ok::<_, Infallible>(route(ctx, parts, body).await)
                            }
                        });
                        let _ = http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(HEADER_TIMEOUT)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// Kubernetes probes cannot carry a Secret's token, so `/healthz` and `/readyz` answer without
/// one, with the status alone; the readiness details (models, breakers, kernel features) need
/// the token.
fn probe(ctx: &Ctx, path: &str) -> Option<Response<Full<Bytes>>> {
    let (status, body) = match path {
        "/healthz" => (StatusCode::OK, r#"{"status":"ok"}"#.to_string()),
        "/readyz" => {
            let snap = ctx.shared.snapshot.load();
            let (status, label) = crate::local::readiness_status(&ctx.shared, &snap.cfg);
            (
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                format!(r#"{{"status":"{label}"}}"#),
            )
        }
        _ => return None,
    };
    Some(respond(status, "application/json", body))
}

/// True when `req` carries `Authorization: Bearer <token>` with the configured token.
fn authorized(req: &hyper::http::request::Parts, token: &[u8]) -> bool {
    req.headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|given| bool::from(given.ct_eq(token)))
}

/// The dashboard's page and data; everything else goes to [`handle`].
async fn route(ctx: Ctx, parts: hyper::http::request::Parts, body: Bytes) -> Response<Full<Bytes>> {
    let path = parts.uri.path();
    if parts.method == hyper::Method::GET {
        if path == "/dashboard" {
            return redirect("/dashboard/");
        }
        if let Some((content_type, page)) = crate::dashboard::asset(path) {
            let mut r = respond(StatusCode::OK, content_type, page.to_string());
            let h = r.headers_mut();
            use hyper::header::{
                HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, X_CONTENT_TYPE_OPTIONS,
            };
            h.insert(
                CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(crate::dashboard::CSP),
            );
            h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            return r;
        }
        if crate::dashboard::is_api(path) && authorized(&parts, &ctx.token) {
            let snap = ctx.shared.snapshot.load_full();
            let data_dir = ctx.shared.governor.data_dir().to_path_buf();
            let (path, query) = (
                path.to_string(),
                parts.uri.query().unwrap_or("").to_string(),
            );
            let store = ctx.store.clone();
            // SQLite blocks: on the blocking pool, so `/metrics` never waits behind a query.
            let answer = tokio::task::spawn_blocking(move || {
                crate::dashboard::api(&data_dir, &snap.governance, &store, &path, &query)
            })
            .await;
            return match answer {
                Ok((status, body)) => json(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    body,
                ),
                Err(e) => error(&GateError::new(
                    ErrorKind::Internal,
                    format!("the dashboard query failed: {e}"),
                )),
            };
        }
    }
    handle(&ctx, &parts, &body)
}

fn redirect(to: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    r.headers_mut().insert(
        hyper::header::LOCATION,
        hyper::header::HeaderValue::from_static(to),
    );
    r
}

fn handle(ctx: &Ctx, req: &hyper::http::request::Parts, body: &[u8]) -> Response<Full<Bytes>> {
    let authorized = authorized(req, &ctx.token);
    if !authorized && req.method == hyper::Method::GET {
        if let Some(r) = probe(ctx, req.uri.path()) {
            return r;
        }
    }
    if !authorized {
        let e = GateError::new(
            ErrorKind::AdminUnauthorized,
            "the admin API needs `Authorization: Bearer <token>` with the configured admin token",
        );
        let mut r = error(&e);
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let path = req.uri.path();
    if let Some(r) = config_endpoint(ctx, &req.method, path) {
        return r;
    }
    if let Some(r) = models_endpoint(ctx, &req.method, path, body) {
        return r;
    }
    if path == "/admin/route/predict" {
        return predict_endpoint(ctx, &req.method, body);
    }
    if path.starts_with("/admin/") {
        let store = ctx
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((status, body)) = crate::governance::api::handle(
            &ctx.shared.governor,
            &store,
            req.method.as_str(),
            path,
            req.uri.query().unwrap_or(""),
            body,
        ) {
            return json(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body,
            );
        }
    }
    if req.method != hyper::Method::GET {
        let e = GateError::new(
            ErrorKind::MethodNotAllowed,
            format!("{path} accepts GET only"),
        );
        return error(&e);
    }
    match path {
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            ctx.shared.render_metrics(),
        ),
        "/readyz" => {
            let snap = ctx.shared.snapshot.load();
            let (status, body) = crate::local::readiness(&ctx.shared, &snap.cfg);
            respond(
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "application/json",
                body,
            )
        }
        "/healthz" => respond(
            StatusCode::OK,
            "application/json",
            r#"{"status":"ok"}"#.into(),
        ),
        _ => error(&GateError::new(
            ErrorKind::NotFound,
            format!("Unknown admin URL: {path}"),
        )),
    }
}

/// `GET /admin/models` and `PUT /admin/models/{name}/weights`. `None` for other paths.
fn models_endpoint(
    ctx: &Ctx,
    method: &hyper::Method,
    path: &str,
    body: &[u8],
) -> Option<Response<Full<Bytes>>> {
    let rest = path.strip_prefix("/admin/models")?;
    if rest.is_empty() && method == hyper::Method::GET {
        return Some(json(
            StatusCode::OK,
            crate::reload::weights::list(&ctx.shared.snapshot.load()),
        ));
    }
    let name = rest.strip_prefix('/')?.strip_suffix("/weights")?;
    let refuse = |status: u16, code: &str, message: String| {
        json(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "code": code, "param": null}}),
        )
    };
    if method != hyper::Method::PUT {
        return Some(refuse(
            405,
            "method_not_allowed",
            format!("{path} accepts PUT only"),
        ));
    }
    let Some(reloader) = &ctx.reloader else {
        return Some(refuse(
            404,
            "not_found",
            "this agent runs from an in-memory configuration: nothing to change".into(),
        ));
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        weights: std::collections::HashMap<String, u32>,
    }
    let weights = match serde_json::from_slice::<Body>(body) {
        Ok(b) => b.weights,
        Err(e) => {
            return Some(refuse(
                400,
                "invalid_request",
                format!("expected {{\"weights\": {{\"provider/model\": N, ...}}}}: {e}"),
            ))
        }
    };
    Some(
        match crate::reload::weights::set(reloader, name, &weights) {
            Ok(a) => json(
                StatusCode::OK,
                serde_json::json!({
                    "model": name,
                    "weights": weights,
                    "generation": a.generation,
                    "version": a.version,
                }),
            ),
            Err(e) => refuse(e.status(), "weights_rejected", e.to_string()),
        },
    )
}

/// `POST /admin/route/predict`: each replica's predicted prefix match and load for a request.
fn predict_endpoint(ctx: &Ctx, method: &hyper::Method, body: &[u8]) -> Response<Full<Bytes>> {
    if method != hyper::Method::POST {
        return error(&GateError::new(
            ErrorKind::MethodNotAllowed,
            "/admin/route/predict accepts POST only",
        ));
    }
    let indexes = ctx
        .shared
        .prefix_indexes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let snap = ctx.shared.snapshot.load();
    match crate::phase::route::predict::predict(&snap, &indexes, &ctx.shared.replicas, body) {
        Ok(v) => json(StatusCode::OK, v),
        Err(e) => json(
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            serde_json::json!({"error": {"message": e.to_string(), "type": "invalid_request_error", "code": if e.status() == 404 { "model_not_found" } else { "invalid_request" }, "param": null}}),
        ),
    }
}

/// `/admin/config/...`: reload, history, versions. `None` for other paths.
fn config_endpoint(ctx: &Ctx, method: &hyper::Method, path: &str) -> Option<Response<Full<Bytes>>> {
    let rest = path.strip_prefix("/admin/config/")?;
    let Some(reloader) = &ctx.reloader else {
        return Some(error(&GateError::new(
            ErrorKind::NotFound,
            "this agent runs from an in-memory configuration: nothing to reload",
        )));
    };
    let data_dir = reloader.data_dir();
    Some(match (method, rest) {
        (&hyper::Method::POST, "reload") => match reloader.reload(Trigger::Admin) {
            Ok(a) => json(
                StatusCode::OK,
                serde_json::json!({
                    "applied": !a.unchanged,
                    "generation": a.generation,
                    "version": a.version,
                    "restart_only": a.restart_only,
                }),
            ),
            Err(e) => {
                let problems: Vec<serde_json::Value> = match &e {
                    ReloadError::Invalid { problems } => problems
                        .0
                        .iter()
                        .map(|p| serde_json::json!({"path": p.path, "line": p.line, "message": p.message}))
                        .collect(),
                    _ => Vec::new(),
                };
                json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({
                        "error": {
                            "message": e.to_string(),
                            "type": "invalid_request_error",
                            "code": "config_rejected",
                            "param": null,
                        },
                        "problems": problems,
                    }),
                )
            }
        },
        (&hyper::Method::GET, "history") => match history::list(data_dir) {
            Ok(list) => json(StatusCode::OK, serde_json::json!({ "versions": list })),
            Err(e) => error(&GateError::new(ErrorKind::Internal, e.to_string())),
        },
        (&hyper::Method::GET, v) if v.starts_with("versions/") => {
            let n = v["versions/".len()..].parse::<u64>().ok();
            match n.map(|n| history::content(data_dir, n)) {
                Some(Ok(text)) => {
                    let mut r = Response::new(Full::new(Bytes::from(text)));
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/yaml"),
                    );
                    r
                }
                _ => error(&GateError::new(
                    ErrorKind::NotFound,
                    format!("no configuration version `{}`", &v["versions/".len()..]),
                )),
            }
        }
        _ => error(&GateError::new(
            ErrorKind::NotFound,
            format!("Unknown admin URL: {path} (reload is POST; history and versions are GET)"),
        )),
    })
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    respond(status, "application/json", body.to_string())
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

fn error(e: &GateError) -> Response<Full<Bytes>> {
    let r = e.to_response(Wire::OpenAi);
    respond(
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "application/json",
        r.body,
    )
}
