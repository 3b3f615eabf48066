//! Phase 7, forward: send the request to the provider over a per-core keep-alive connection.
//!
//! The body is sent as slices of the client's body with small edits spliced in (the provider's
//! model name, `stream_options.include_usage`), so it is never re-serialised. Client
//! credentials and Tollgate's own headers are dropped and the provider's key is added; the
//! key never appears in a response. The exception is an implicit passthrough provider (an
//! intercepted destination no configured provider serves): it has no key, and the client's own
//! `authorization`/`x-api-key` are forwarded, because the client addressed that server itself.
//! `OpenAI-Organization`/`-Project` are dropped unless the provider is configured to take them.
//! A request that would exceed the provider's header limit is refused here with 431.
//!
//! Retries: a pooled connection the provider has closed is noticed before use (the pool peeks
//! at it). A request whose write fails on a reused connection is retried once on a fresh one;
//! a request that was written completely is never sent again, even if the connection then
//! ends without a response byte, because the provider may have processed and billed it.
//! Guardrail replacements (`ctx.guard`) are spliced in the same way.
//! Reads: `ctx.body`, `ctx.inspection`, `ctx.target`, `ctx.guard`. Writes: `ctx.injected_usage`,
//! `ctx.upstream_head_at`. Hot path.

use std::io;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;

use crate::api::Api;
use crate::client::read_more_by;
use crate::config::routing::Timeouts;
use crate::config::{Provider, ProviderKind};
use crate::error::{ErrorKind, GateError};
use crate::http::iovec::BytesVec;
use crate::http::response::ResponseHead;
use crate::http::{find_head_end, is_hop_by_hop};
use crate::phase::inspect::Inspection;
use crate::pipeline::RequestCtx;
use crate::snapshot::Snapshot;
use crate::upstream::{self, UpstreamConn};
use crate::worker::Worker;

/// Largest response head accepted from a provider.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A provider connection whose response head has been read.
pub struct Forwarded {
    pub conn: UpstreamConn,
    pub head: ResponseHead,
}

/// Client headers never passed to a provider (besides hop-by-hop ones).
fn is_dropped(name: &[u8]) -> bool {
    const DROP: [&[u8]; 8] = [
        b"host",
        b"authorization",
        b"x-api-key",
        b"api-key",
        b"content-type",
        b"accept-encoding",
        b"anthropic-version",
        b"expect",
    ];
    is_hop_by_hop(name)
        || DROP.iter().any(|d| d.eq_ignore_ascii_case(name))
        || (name.len() >= 11 && name[..11].eq_ignore_ascii_case(b"x-tollgate-"))
}

/// Client credentials, forwarded only to implicit passthrough providers.
fn is_client_credential(name: &[u8]) -> bool {
    [&b"authorization"[..], b"x-api-key", b"api-key"]
        .iter()
        .any(|c| c.eq_ignore_ascii_case(name))
}

/// OpenAI's organization and project selectors: with the provider's key they would bill the
/// client's choice of the key owner's organizations, so they pass only where configured.
fn is_organization_header(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"openai-organization")
        || name.eq_ignore_ascii_case(b"openai-project")
}

/// Whether a client header goes on to `provider`.
fn forwarded(provider: &Provider, name: &[u8]) -> bool {
    if provider.implicit && is_client_credential(name) {
        return true;
    }
    !is_dropped(name) && (provider.forward_organization_headers || !is_organization_header(name))
}

/// Header lines Tollgate itself writes: host, content-type, accept-encoding, content-length,
/// x-tollgate-request-id, the key, anthropic-version.
const OWN_HEADERS: usize = 7;

/// Refuses a request that would reach the provider with more header lines than it accepts
/// (it would answer 431, often with an empty body).
fn check_header_count(ctx: &RequestCtx, provider: &Provider) -> Result<(), GateError> {
    let limit = provider.max_request_headers;
    // Fewer lines than the limit in all: no need to ask which of them go on (~350
    // instructions a request, callgrind).
    if ctx.head.header_count() + OWN_HEADERS <= limit {
        return Ok(());
    }
    let client = ctx
        .head
        .headers()
        .filter(|(n, _)| forwarded(provider, n))
        .count();
    if client + OWN_HEADERS > limit {
        return Err(GateError::new(
            ErrorKind::TooManyHeaders {
                limit: limit.saturating_sub(OWN_HEADERS),
            },
            format!(
                "the request carries {client} headers for the provider; with Tollgate's own it \
                 would exceed the {limit} that provider `{}` accepts (send at most {})",
                provider.name,
                limit.saturating_sub(OWN_HEADERS)
            ),
        ));
    }
    Ok(())
}

/// One edit of the client's body: replace `range` with `with`.
struct Edit {
    range: Range<usize>,
    with: Bytes,
}

/// The edits that turn the client's body into the provider's, and whether the usage chunk
/// was requested by us (and so must be hidden from the client).
fn body_edits(api: Api, body: &[u8], ins: &Inspection, upstream_model: &str) -> (Vec<Edit>, bool) {
    let mut edits = Vec::with_capacity(2);
    if ins.model != upstream_model || ins.original_model.is_some() {
        let quoted = serde_json::to_string(upstream_model)
            .unwrap_or_else(|_| format!("\"{upstream_model}\""));
        edits.push(Edit {
            range: ins.model_span.clone(),
            with: Bytes::from(quoted),
        });
    }
    let mut injected = false;
    if ins.stream && api.supports_include_usage() {
        match (&ins.include_usage, &ins.stream_options_span) {
            (Some((true, _)), _) => {}
            (Some((false, span)), _) => {
                edits.push(Edit {
                    range: span.clone(),
                    with: Bytes::from_static(b"true"),
                });
                injected = true;
            }
            (None, Some(opts)) => {
                // Insert right after the object's `{`; a comma only if it has members.
                let inner = &body[opts.start + 1..opts.end - 1];
                let text: &'static [u8] = if inner.trim_ascii().is_empty() {
                    b"\"include_usage\":true"
                } else {
                    b"\"include_usage\":true,"
                };
                edits.push(Edit {
                    range: opts.start + 1..opts.start + 1,
                    with: Bytes::from_static(text),
                });
                injected = true;
            }
            (None, None) => {
                edits.push(match &ins.stream_options_null {
                    // `"stream_options": null` is replaced: a second key would be a duplicate.
                    Some(null) => Edit {
                        range: null.clone(),
                        with: Bytes::from_static(b"{\"include_usage\":true}"),
                    },
                    None => {
                        // The body is an object with at least `model`, so a trailing comma is valid.
                        let at = body.iter().position(|b| *b == b'{').map_or(0, |p| p + 1);
                        Edit {
                            range: at..at,
                            with: Bytes::from_static(
                                b"\"stream_options\":{\"include_usage\":true},",
                            ),
                        }
                    }
                });
                injected = true;
            }
        }
    }
    edits.sort_by_key(|e| e.range.start);
    (edits, injected)
}

/// The provider's body for `body` as one buffer: what `forward` sends as slices, for tests and
/// fuzzing (the data path never builds it). Returns the body and whether usage was injected.
pub fn rewrite_body(
    api: Api,
    body: &[u8],
    ins: &Inspection,
    upstream_model: &str,
) -> (Vec<u8>, bool) {
    let (edits, injected) = body_edits(api, body, ins, upstream_model);
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut at = 0;
    for e in &edits {
        out.extend_from_slice(&body[at..e.range.start]);
        out.extend_from_slice(&e.with);
        at = e.range.end;
    }
    out.extend_from_slice(&body[at..]);
    (out, injected)
}

/// Builds the request head for the provider.
fn request_head(ctx: &RequestCtx, provider: &Provider, body_len: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(512);
    h.extend_from_slice(b"POST ");
    h.extend_from_slice(provider.base_path.as_bytes());
    h.extend_from_slice(ctx.upstream_api.upstream_path().as_bytes());
    h.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    h.extend_from_slice(provider.host_header.as_bytes());
    h.extend_from_slice(
        b"\r\ncontent-type: application/json\r\naccept-encoding: identity\r\ncontent-length: ",
    );
    h.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
    h.extend_from_slice(b"\r\nx-tollgate-request-id: ");
    h.extend_from_slice(ctx.id.as_bytes());
    h.extend_from_slice(b"\r\n");
    match provider.kind {
        ProviderKind::OpenAi => {
            if let Some(k) = &provider.api_key {
                h.extend_from_slice(b"authorization: Bearer ");
                h.extend_from_slice(k.as_bytes());
                h.extend_from_slice(b"\r\n");
            }
        }
        ProviderKind::Anthropic => {
            if let Some(k) = &provider.api_key {
                h.extend_from_slice(b"x-api-key: ");
                h.extend_from_slice(k.as_bytes());
                h.extend_from_slice(b"\r\n");
            }
            h.extend_from_slice(b"anthropic-version: ");
            let v = ctx
                .head
                .header("anthropic-version")
                .unwrap_or(provider.anthropic_version.as_bytes());
            h.extend_from_slice(v);
            h.extend_from_slice(b"\r\n");
        }
    }
    for (name, value) in ctx.head.headers() {
        if forwarded(provider, name) {
            h.extend_from_slice(name);
            h.extend_from_slice(b": ");
            h.extend_from_slice(value);
            h.extend_from_slice(b"\r\n");
        }
    }
    h.extend_from_slice(b"\r\n");
    h
}

/// The request as a list of slices: head, then the body with edits applied.
fn request_parts(ctx: &RequestCtx, provider: &Provider, edits: &[Edit]) -> BytesVec {
    let delta: isize = edits
        .iter()
        .map(|e| e.with.len() as isize - e.range.len() as isize)
        .sum();
    let body_len = (ctx.body.len() as isize + delta) as usize;
    let mut parts = BytesVec::with_capacity(2 + 2 * edits.len());
    parts.push(Bytes::from(request_head(ctx, provider, body_len)));
    let mut at = 0;
    for e in edits {
        parts.push(ctx.body.slice(at..e.range.start));
        parts.push(e.with.clone());
        at = e.range.end;
    }
    parts.push(ctx.body.slice(at..));
    parts
}

enum AttemptError {
    /// The request could not be written: the provider cannot have acted on it (a partial
    /// request is never processed), so a retry on a fresh connection is safe.
    NotSent(io::Error),
    /// The request was written, then the connection ended before any response byte. The
    /// provider may have processed (and billed) it, so it is never sent again.
    NoResponse(io::Error),
    Fatal(GateError),
}

pub async fn run(w: &Worker, ctx: &mut RequestCtx) -> Result<Forwarded, GateError> {
    let target = ctx
        .target
        .ok_or_else(|| GateError::new(ErrorKind::Internal, "forward without a route"))?;
    let snap = ctx.snap.clone();
    let cfg = &snap.cfg;
    let provider = &cfg.providers[target.provider];
    check_header_count(ctx, provider)?;
    // Counted in flight to this replica until the request ends (or moves to another target).
    ctx.route.inflight = Some(w.route.balance.start(snap.providers[target.provider].id));
    ctx.route.slot = None;
    if let (Some((m, t)), Some(permit)) = (target.model, &ctx.route.permit) {
        if let Some(Some(gate)) = snap.gates.get(m) {
            if std::sync::Arc::ptr_eq(gate, permit.gate()) {
                ctx.route.slot = gate.occupy(t);
            }
        }
    }
    let upstream_model = target.upstream_model(cfg, &ctx.inspection.model);
    // A provider of the other wire format gets a translated body (the one place a request
    // body is re-serialised: the formats differ in shape, not in a field or two).
    let translated = match crate::api::reach(ctx.api, provider).flatten() {
        Some(dir) => {
            // Guardrail rewrites first: the translation reads what the provider may see.
            let guarded = (!ctx.guard.replacements.is_empty())
                .then(|| crate::guard::apply(&ctx.body, &ctx.guard.replacements));
            let source = guarded.as_deref().unwrap_or(&ctx.body);
            let body = crate::translate::request(dir, source, upstream_model).map_err(|e| {
                GateError::new(
                    ErrorKind::InvalidRequest { param: None },
                    format!(
                        "this request goes to provider `{}`, which speaks the other API: {e}",
                        provider.name
                    ),
                )
            })?;
            ctx.translation = Some(dir);
            ctx.upstream_api = dir.upstream_api();
            Some(Bytes::from(body))
        }
        None => {
            ctx.translation = None;
            ctx.upstream_api = ctx.api;
            None
        }
    };
    let (edits, injected) = match &translated {
        Some(_) => (Vec::new(), false),
        None => {
            let (mut edits, injected) =
                body_edits(ctx.api, &ctx.body, &ctx.inspection, upstream_model);
            if !ctx.guard.replacements.is_empty() {
                // Replacements sit inside prompt strings; the other edits touch other values.
                edits.extend(ctx.guard.replacements.iter().map(|r| Edit {
                    range: r.range.clone(),
                    with: Bytes::from(r.with.clone()),
                }));
                edits.sort_by_key(|e| e.range.start);
            }
            (edits, injected)
        }
    };
    ctx.injected_usage = injected;
    let timeouts = target
        .model_index()
        .map_or(cfg.routing.timeouts, |m| cfg.models[m].timeouts);
    let fwd = exchange(w, &snap, target.provider, &timeouts, || match &translated {
        Some(body) => {
            let mut parts = BytesVec::with_capacity(2);
            parts.push(Bytes::from(request_head(ctx, provider, body.len())));
            parts.push(body.clone());
            parts
        }
        None => request_parts(ctx, provider, &edits),
    })
    .await?;
    ctx.upstream_head_at = Some(Instant::now());
    Ok(fwd)
}

/// Sends a request built by `parts` to provider `provider_idx` (of `snap`) on a pooled or new
/// connection and reads the response head; a stale pooled connection is retried once on a fresh one.
pub(crate) async fn exchange(
    w: &Worker,
    snap: &Snapshot,
    provider_idx: usize,
    timeouts: &Timeouts,
    parts: impl Fn() -> BytesVec,
) -> Result<Forwarded, GateError> {
    let provider = &snap.cfg.providers[provider_idx];
    let id = snap.providers[provider_idx].id;
    let pooled = w.pool.borrow_mut().take(id, Instant::now());
    let mut conn = match pooled {
        Some(c) => c,
        None => connect(w, snap, provider_idx, timeouts.connect).await?,
    };
    let mut retried = false;
    loop {
        match attempt(&mut conn, parts(), timeouts.first_token).await {
            Ok(head) => return Ok(Forwarded { conn, head }),
            Err(AttemptError::NotSent(e)) if conn.reused && !retried => {
                tracing::debug!(error = %e, provider = %provider.name, "stale keep-alive connection; retrying on a new one");
                w.shared
                    .metrics
                    .globals
                    .upstream_retries
                    .fetch_add(1, Ordering::Relaxed);
                retried = true;
                conn = connect(w, snap, provider_idx, timeouts.connect).await?;
            }
            Err(AttemptError::NotSent(e)) => {
                let kind = if e.kind() == io::ErrorKind::TimedOut {
                    ErrorKind::UpstreamTimeout
                } else {
                    ErrorKind::UpstreamUnreachable
                };
                return Err(GateError::new(
                    kind,
                    format!(
                        "sending the request to provider `{}` failed: {e}",
                        provider.name
                    ),
                )
                .retryable_elsewhere());
            }
            Err(AttemptError::NoResponse(e)) => {
                return Err(GateError::new(
                    ErrorKind::UpstreamUnreachable,
                    format!(
                        "provider `{}` closed the connection after receiving the request, before \
                         responding ({e}); it was not re-sent because the provider may have \
                         processed it",
                        provider.name
                    ),
                ));
            }
            Err(AttemptError::Fatal(e)) => return Err(e),
        }
    }
}

async fn connect(
    w: &Worker,
    snap: &Snapshot,
    provider_idx: usize,
    timeout: std::time::Duration,
) -> Result<UpstreamConn, GateError> {
    let provider = &snap.cfg.providers[provider_idx];
    let rt = &snap.providers[provider_idx];
    let addrs = rt.addrs.load_full();
    let tls = rt.tls.as_ref();
    let connected = upstream::connect(
        rt.id,
        &addrs,
        &provider.host,
        tls,
        timeout,
        &w.upstream_clock,
    )
    .await;
    connected.map_err(|e| {
        let kind = match e {
            upstream::UpstreamError::ConnectTimeout(_) => ErrorKind::UpstreamTimeout,
            _ => ErrorKind::UpstreamUnreachable,
        };
        // Nothing was sent: another target of the model may serve the request.
        GateError::new(
            kind,
            format!("provider `{}` is unreachable: {e}", provider.name),
        )
        .retryable_elsewhere()
    })
}

/// Sends the request and reads the response head (skipping 1xx interim responses).
async fn attempt(
    conn: &mut UpstreamConn,
    parts: BytesVec,
    timeout: std::time::Duration,
) -> Result<ResponseHead, AttemptError> {
    let (res, _) = conn.stream.write_vectored_all(parts).await;
    res.map_err(AttemptError::NotSent)?;
    let mut scanned = 0;
    loop {
        if let Some(end) = find_head_end(&conn.buf, scanned) {
            let raw = conn.buf.split_to(end);
            let head = ResponseHead::parse(&raw).map_err(|e| {
                AttemptError::Fatal(GateError::new(
                    ErrorKind::UpstreamProtocol,
                    format!("provider sent an invalid response: {e}"),
                ))
            })?;
            if (100..200).contains(&head.status) {
                scanned = 0;
                continue;
            }
            return Ok(head);
        }
        scanned = conn.buf.len();
        if scanned > MAX_RESPONSE_HEAD {
            return Err(AttemptError::Fatal(GateError::new(
                ErrorKind::UpstreamProtocol,
                "provider response head is too large",
            )));
        }
        let had_bytes = !conn.buf.is_empty();
        match read_more_by(&mut conn.stream, &mut conn.buf, &conn.deadline, timeout).await {
            Ok(0) if !had_bytes => {
                return Err(AttemptError::NoResponse(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "connection closed",
                )))
            }
            Ok(0) => {
                return Err(AttemptError::Fatal(GateError::new(
                    ErrorKind::UpstreamProtocol,
                    "provider closed the connection mid-head",
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(AttemptError::Fatal(GateError::new(
                    ErrorKind::UpstreamTimeout,
                    format!("provider did not respond within {timeout:?}"),
                )))
            }
            Err(e) if !had_bytes => return Err(AttemptError::NoResponse(e)),
            Err(e) => {
                return Err(AttemptError::Fatal(GateError::new(
                    ErrorKind::UpstreamProtocol,
                    format!("reading the response failed: {e}"),
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phase::inspect::inspect_body;

    fn rewrite(body: &str, upstream: &str) -> (serde_json::Value, bool) {
        let ins = inspect_body(body.as_bytes()).unwrap();
        let (out, injected) = rewrite_body(Api::ChatCompletions, body.as_bytes(), &ins, upstream);
        let out = String::from_utf8(out).unwrap();
        (
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}")),
            injected,
        )
    }

    #[test]
    fn model_is_spliced_and_usage_injected() {
        let (v, inj) = rewrite(r#"{"model":"smol","stream":true,"messages":[]}"#, "smollm2");
        assert_eq!(v["model"], "smollm2");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(inj);
    }

    #[test]
    fn existing_stream_options_are_extended_or_flipped() {
        let (v, inj) = rewrite(r#"{"stream_options":{},"model":"m","stream":true}"#, "m");
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(inj);
        let (v, inj) = rewrite(
            r#"{"model":"m","stream":true,"stream_options":{"x":1}}"#,
            "m",
        );
        assert_eq!(
            (
                v["stream_options"]["include_usage"].clone(),
                v["stream_options"]["x"].clone()
            ),
            (true.into(), 1.into())
        );
        assert!(inj);
        let (v, inj) = rewrite(
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#,
            "m",
        );
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(inj);
    }

    #[test]
    fn client_asked_for_usage_or_no_stream_means_no_edit() {
        let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        let ins = inspect_body(body.as_bytes()).unwrap();
        let (edits, inj) = body_edits(Api::ChatCompletions, body.as_bytes(), &ins, "m");
        assert!(edits.is_empty() && !inj);
        let body = r#"{"model":"m","messages":[]}"#;
        let ins = inspect_body(body.as_bytes()).unwrap();
        assert!(body_edits(Api::ChatCompletions, body.as_bytes(), &ins, "m")
            .0
            .is_empty());
    }

    #[test]
    fn credentials_and_envelope_are_dropped() {
        assert!(is_dropped(b"Authorization"));
        assert!(is_dropped(b"X-Api-Key"));
        assert!(is_dropped(b"x-tollgate-team"));
        assert!(is_dropped(b"Transfer-Encoding"));
        assert!(!is_dropped(b"openai-organization"));
        assert!(!is_dropped(b"anthropic-beta"));
        assert!(is_client_credential(b"Authorization") && is_client_credential(b"x-api-key"));
        assert!(!is_client_credential(b"x-tollgate-team"));
    }
}
