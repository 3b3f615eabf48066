//! The admin listener: a separate port for operators (`admin.listen`), authenticated with a
//! bearer token compared in constant time. It serves `/metrics`, `/readyz` and `/healthz` now;
//! configuration reloads and history, and the key and policy endpoints, join it as they land.
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
use crate::server::Shared;

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
pub fn start(settings: &AdminSettings, shared: Arc<Shared>) -> std::io::Result<AdminHandle> {
    let listener = std::net::TcpListener::bind(settings.listen)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let token: Arc<[u8]> = settings.token.as_bytes().into();
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
            rt.block_on(accept_loop(listener, stopped, Ctx { shared, token }));
        })?;
    Ok(AdminHandle { addr, stop, thread })
}

/// What every admin request can see.
#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    token: Arc<[u8]>,
}

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
                        let service = service_fn(move |req| {
                            let ctx = ctx.clone();
                            async move { Ok::<_, Infallible>(handle(&ctx, &req)) }
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

/// True when `req` carries `Authorization: Bearer <token>` with the configured token.
fn authorized(req: &Request<Incoming>, token: &[u8]) -> bool {
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|given| bool::from(given.ct_eq(token)))
}

fn handle(ctx: &Ctx, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if !authorized(req, &ctx.token) {
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
    let path = req.uri().path();
    if req.method() != hyper::Method::GET {
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
            ctx.shared.metrics.render(),
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
