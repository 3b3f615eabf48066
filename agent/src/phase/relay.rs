//! Phase 8, relay: the provider's response to the client, as it arrives.
//!
//! Plain bodies pass through piece by piece and are kept (by reference) to read `usage` at the
//! end. Event streams are split into frames; every frame is forwarded byte for byte except the
//! usage-only chunk Tollgate itself asked for (`include_usage` injection), which is metered and
//! dropped. If the client goes away, the provider is still read (bounded by the drain time and
//! byte limits) until usage arrives, so spend is never lost. If the provider resets mid-stream,
//! the client gets an error event and a cut connection, and what was delivered is billed.
//! Reads: the `Forwarded` response. Writes: `ctx.status`, `ctx.outcome`, `ctx.usage`,
//! `ctx.partial_usage`, `ctx.response_payload`, `ctx.first_byte_at`. Hot path.

use std::fmt::Write;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::api::Wire;
use crate::client::ClientConn;
use crate::error::{ErrorKind, GateError};
use crate::http::head::{reason, ClientBody, HeadWriter};
use crate::http::iovec::BytesVec;
use crate::http::response::{ResponseFraming, ResponseHead};
use crate::metering::sse::{frame_data, FrameSplitter};
use crate::metering::usage::{upstream_version, FrameUsage};
use crate::metering::UsageAccumulator;
use crate::phase::forward::Forwarded;
use crate::phase::response_text::ResponseText;
use crate::phase::settle;
use crate::pipeline::{Outcome, RequestCtx};
use crate::upstream::body::{BodyReader, PieceError};
use crate::worker::Worker;

/// Most response bytes kept for metering (usage parsing or estimates); past this, a response
/// without usage is estimated from what was kept.
const MAX_RETAINED: usize = 64 * 1024 * 1024;

static CRLF: &[u8] = b"\r\n";
static LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How the client's copy of the body is framed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientFraming {
    Length,
    Chunked,
    /// HTTP/1.0 client and unknown length: the body ends when we close.
    Close,
}

/// How a failed read ends the request: outcome, error kind for the client, message.
fn piece_failure(e: PieceError, timeout: Duration) -> (Outcome, ErrorKind, String) {
    match e {
        PieceError::Reset(e) => (
            Outcome::UpstreamReset,
            ErrorKind::UpstreamUnreachable,
            format!("the provider connection failed mid-response: {e}"),
        ),
        PieceError::Timeout => (
            Outcome::UpstreamTimeout,
            ErrorKind::UpstreamTimeout,
            format!("the provider sent nothing for {timeout:?} mid-response"),
        ),
        PieceError::Protocol(e) => (
            Outcome::UpstreamReset,
            ErrorKind::UpstreamProtocol,
            format!("the provider sent an invalid body: {e}"),
        ),
    }
}

/// Meters each body piece and queues what the client should receive.
struct Meter {
    sse: bool,
    /// The provider's API: what usage is read in (the client's, unless translated).
    api: crate::api::Api,
    hide_usage_chunk: bool,
    splitter: FrameSplitter,
    acc: UsageAccumulator,
    frames: Vec<Bytes>,
    retained_bytes: usize,
    /// The request is translated: a plain body is kept whole and translated at the end
    /// (`translated_body`); stream frames go through this translator.
    translate: Option<Translate>,
    /// The request was pseudonymized (originals go back in) or guardrails cover the response
    /// (values found are acted on); before any translation.
    text: Option<ResponseText>,
    /// A plain body is kept whole and handed over at the end: translated or scanned.
    hold_body: bool,
    /// The model version the stream says served it, read from the first frame with usage.
    version: Option<String>,
}

enum Translate {
    Body(crate::translate::Direction),
    Stream(Box<crate::translate::Stream>),
}

impl Meter {
    fn take(&mut self, piece: Bytes, retained: &mut Vec<Bytes>, parts: &mut Vec<Bytes>) {
        if !self.sse {
            let whole = self.hold_body;
            if self.retained_bytes + piece.len() <= MAX_RETAINED {
                self.retained_bytes += piece.len();
                retained.push(piece.clone());
            } else if whole {
                // Past the cap the body cannot be translated or scanned whole; `run` reports it.
                self.retained_bytes = usize::MAX;
                return;
            }
            if !whole {
                parts.push(match &mut self.text {
                    Some(r) => r.body_piece(piece),
                    None => piece,
                });
            }
            return;
        }
        let frames = &mut self.frames;
        self.splitter.push(piece, |f| frames.push(f));
        for frame in self.frames.drain(..) {
            let usage = match frame_data(&frame) {
                Some(data) => {
                    let usage = self.acc.observe_frame(self.api, &data);
                    // Usage frames are parsed anyway; the version is read from the first.
                    if usage != FrameUsage::None && self.version.is_none() {
                        self.version = upstream_version(&data);
                    }
                    usage
                }
                None => FrameUsage::None,
            };
            if self.hide_usage_chunk && usage == FrameUsage::UsageOnly {
                continue;
            }
            if self.retained_bytes + frame.len() <= MAX_RETAINED {
                self.retained_bytes += frame.len();
                retained.push(frame.clone());
            }
            emit(&mut self.text, &mut self.translate, frame, parts);
        }
    }
}

/// Queues one provider frame for the client: scanned and restored, then translated, as the
/// request needs.
fn emit(
    restore: &mut Option<ResponseText>,
    translate: &mut Option<Translate>,
    frame: Bytes,
    parts: &mut Vec<Bytes>,
) {
    match (restore, translate) {
        (None, Some(Translate::Stream(t))) => t.frame(&frame, parts),
        (None, _) => parts.push(frame),
        (Some(r), Some(Translate::Stream(t))) => {
            let mut restored = Vec::with_capacity(2);
            r.frame(frame, &mut restored);
            for f in restored {
                t.frame(&f, parts);
            }
        }
        // Restored frames go straight to the client's parts.
        (Some(r), _) => r.frame(frame, parts),
    }
}

/// Client-side state of the relay.
struct Downstream<'a> {
    client: &'a mut ClientConn,
    framing: ClientFraming,
    /// Set when a write failed: from then on we only drain the provider.
    gone_at: Option<Instant>,
    /// The response was blocked and the client told so: only the body's end is still written.
    muted: bool,
    out: BytesVec,
    /// The response head, held back so it leaves in the same write as the first body bytes
    /// when those are already here (one segment instead of two for most non-streaming replies).
    pending_head: Option<Bytes>,
    /// Chunk-size lines are written here and split off as `Bytes`, so a chunk costs no allocation
    /// until the scratch buffer's capacity is used up.
    scratch: BytesMut,
}

impl Downstream<'_> {
    /// Sends the held-back head on its own (no body bytes are ready to go with it).
    async fn flush_head(&mut self) {
        if let Some(h) = self.pending_head.take() {
            if self.gone_at.is_none() && self.client.write_all(h).await.is_err() {
                self.gone_at = Some(Instant::now());
            }
        }
    }

    /// Sends `parts` (payload slices) as one write, framed for the client, together with the
    /// held-back head if it is still here. With `last`, the chunked terminator rides along.
    async fn send(&mut self, parts: &mut Vec<Bytes>, last: bool) {
        let chunked_end = last && self.framing == ClientFraming::Chunked;
        if self.muted {
            parts.clear();
            if !chunked_end {
                return;
            }
        }
        if self.gone_at.is_some()
            || (parts.is_empty() && self.pending_head.is_none() && !chunked_end)
        {
            parts.clear();
            return;
        }
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        if let Some(h) = self.pending_head.take() {
            out.push(h);
        }
        if parts.is_empty() {
            // Nothing to frame.
        } else if self.framing == ClientFraming::Chunked {
            let len: usize = parts.iter().map(Bytes::len).sum();
            if self.scratch.capacity() - self.scratch.len() < 24 {
                self.scratch.reserve(4096);
            }
            let _ = write!(self.scratch, "{len:x}\r\n");
            out.push(self.scratch.split().freeze());
            for p in parts.drain(..) {
                out.push(p);
            }
            out.push(Bytes::from_static(CRLF));
        } else {
            for p in parts.drain(..) {
                out.push(p);
            }
        }
        if chunked_end {
            out.push(Bytes::from_static(LAST_CHUNK));
        }
        let (res, mut out) = self.client.write_vectored(out).await;
        out.clear();
        self.out = out;
        if res.is_err() {
            self.gone_at = Some(Instant::now());
        }
    }
}

pub async fn run(w: &Worker, ctx: &mut RequestCtx, client: &mut ClientConn, fwd: Forwarded) {
    let Forwarded { mut conn, head } = fwd;
    let snap = ctx.snap.clone();
    let cfg = &snap.cfg.upstream;
    let timeouts = ctx
        .target
        .and_then(|t| t.model_index())
        .map_or(snap.cfg.routing.timeouts, |m| snap.cfg.models[m].timeouts);
    // `timeouts.request` bounds the whole request, from its first byte read.
    let deadline = timeouts.request.map(|d| ctx.started + d);
    ctx.status = head.status;
    if head.status >= 400 {
        ctx.outcome = Outcome::UpstreamError;
    }
    let sse = head.event_stream;
    let empty_body = matches!(
        head.framing,
        ResponseFraming::Empty | ResponseFraming::Length(0)
    );
    // A provider error with no body (an empty 431, say) would leave the client guessing: it
    // gets an error body of ours naming the provider's status, which stays as it was.
    let substitute = (head.status >= 400 && empty_body && !sse).then(|| {
        let e = GateError::new(
            ErrorKind::UpstreamEmptyError {
                status: head.status,
            },
            format!(
                "the provider answered {} {} with an empty body",
                head.status,
                reason(head.status)
            ),
        );
        Bytes::from(e.to_response(ctx.api.wire()).body)
    });
    let translate = ctx.translation.filter(|_| substitute.is_none()).map(|dir| {
        if sse {
            let include_usage = ctx
                .inspection
                .include_usage
                .as_ref()
                .is_some_and(|(on, _)| *on);
            let model = ctx
                .inspection
                .original_model
                .as_deref()
                .unwrap_or(&ctx.inspection.model);
            Translate::Stream(Box::new(crate::translate::Stream::new(
                dir,
                model,
                include_usage,
            )))
        } else {
            Translate::Body(dir)
        }
    });
    let text = (substitute.is_none()
        && (ctx.guard.pseudo.is_some() || ctx.guard.response_rules.is_some()))
    .then(|| {
        ResponseText::new(
            ctx.guard.pseudo.clone(),
            ctx.guard.response_rules.clone(),
            ctx.upstream_api,
        )
    });
    let hold_body = !sse
        && (matches!(translate, Some(Translate::Body(_)))
            || text.as_ref().is_some_and(ResponseText::scans));
    // A translated, scanned or restored body has another length than the provider's.
    let rewritten = translate.is_some() || text.is_some();
    let framing = match head.framing {
        _ if rewritten && ctx.head.minor_version >= 1 => ClientFraming::Chunked,
        _ if rewritten => ClientFraming::Close,
        ResponseFraming::Empty | ResponseFraming::Length(_) if !sse => ClientFraming::Length,
        _ if ctx.head.minor_version >= 1 => ClientFraming::Chunked,
        _ => ClientFraming::Close,
    };
    if framing == ClientFraming::Close {
        ctx.client_keep_alive = false;
    }
    let head_bytes = response_head(ctx, &head, framing, substitute.as_ref());

    let mut down = Downstream {
        client,
        framing,
        gone_at: None,
        muted: false,
        out: BytesVec::with_capacity(8),
        // Reserved on the first chunk-size line: a length-framed reply never needs it.
        scratch: BytesMut::new(),
        pending_head: Some(Bytes::from(head_bytes)),
    };
    // Body bytes that came with the head go out with it. An empty body keeps the head back:
    // the head is then the response's last byte, which may only leave once the record is
    // journalled (below).
    // A body kept whole keeps its head too: a scan that blocks it turns it into an error.
    if conn.buf.is_empty() && !empty_body && !hold_body {
        down.flush_head().await;
    }
    ctx.response_started = true;

    let mut reader = BodyReader::new(head.framing);
    let mut meter = Meter {
        sse,
        api: ctx.upstream_api,
        translate,
        text,
        hold_body,
        hide_usage_chunk: ctx.injected_usage,
        splitter: FrameSplitter::default(),
        acc: UsageAccumulator::default(),
        frames: Vec::with_capacity(16),
        retained_bytes: 0,
        version: None,
    };
    let mut parts: Vec<Bytes> = Vec::with_capacity(16);
    // A cacheable miss keeps what the client is sent (by reference) for the exact cache.
    let mut capture = crate::phase::cache::Capture::start(ctx, head.status);
    let mut drained_bytes = 0u64;
    let mut failure: Option<(Outcome, ErrorKind, String)> = None;
    // A stream blocked by a response guardrail: the client has its error event, and the
    // provider is drained (like a client that went away) so the row has the provider's usage.
    let mut blocked_at: Option<Instant> = None;

    // The body's last pieces are not sent inside the loop: they leave after the record is
    // journalled, so a response the client has in full always has its ledger row.
    while failure.is_none() && !reader.is_done() {
        let idle = match deadline {
            None => timeouts.idle,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    failure = Some((
                        Outcome::UpstreamTimeout,
                        ErrorKind::UpstreamTimeout,
                        format!(
                            "the request ran past its {:?} limit (timeouts.request_ms)",
                            timeouts.request.unwrap_or_default()
                        ),
                    ));
                    break;
                }
                left.min(timeouts.idle)
            }
        };
        let timeout = match down.gone_at.or(blocked_at) {
            None => idle,
            Some(t) => {
                let left = cfg.drain_timeout.saturating_sub(t.elapsed());
                if left.is_zero()
                    || drained_bytes > cfg.drain_max_bytes
                    || (sse && meter.acc.is_complete())
                {
                    break;
                }
                left.min(idle)
            }
        };
        let piece = match reader.next(&mut conn, timeout).await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => {
                failure = Some(piece_failure(e, timeout));
                break;
            }
        };
        if ctx.first_byte_at.is_none() {
            ctx.first_byte_at = Some(Instant::now());
        }
        let draining = down.gone_at.is_some() || blocked_at.is_some();
        let mut take = |p: Bytes, parts: &mut Vec<Bytes>| {
            if draining {
                drained_bytes += p.len() as u64;
            }
            meter.take(p, &mut ctx.response_payload, parts);
        };
        take(piece, &mut parts);
        // Everything else that has already arrived goes out in the same write.
        loop {
            match reader.buffered(&mut conn) {
                Ok(Some(p)) => take(p, &mut parts),
                Ok(None) => break,
                Err(e) => {
                    failure = Some(piece_failure(e, timeout));
                    break;
                }
            }
        }
        if sse && blocked_at.is_none() && meter.text.as_ref().is_some_and(ResponseText::blocked) {
            blocked_at = Some(Instant::now());
            let e = block_error(ctx, meter.text.as_ref());
            ctx.outcome = Outcome::Rejected;
            ctx.error_code = Some(e.metric_reason());
            parts.push(error_event(ctx.api.wire(), e));
            down.send(&mut parts, false).await;
            down.muted = true;
        }
        if failure.is_none() && !reader.is_done() && !hold_body {
            if let Some(c) = &mut capture {
                c.keep(&parts);
            }
            down.send(&mut parts, false).await;
        }
    }
    let Meter {
        mut splitter,
        acc,
        mut translate,
        text: mut restore,
        retained_bytes,
        version,
        ..
    } = meter;
    if version.is_some() {
        ctx.upstream_version = version;
    }
    if let Some(rest) = splitter.take_rest() {
        ctx.response_payload.push(rest.clone());
        if translate.is_none() {
            match &mut restore {
                Some(r) => r.frame(rest, &mut parts),
                None => parts.push(rest),
            }
        }
    }
    if let Some(r) = &mut restore {
        if sse {
            let mut held = Vec::new();
            r.finish_stream(&mut held);
            for f in held {
                emit(&mut None, &mut translate, f, &mut parts);
            }
        } else if let Some(b) = r.body_end() {
            parts.push(b);
        }
    }

    // Usage: the provider's numbers when complete, else what was seen (settle estimates the rest).
    // A plain body's usage is read below: after its last byte when the journal can carry it.
    let mut unread: Option<Bytes> = None;
    if sse {
        if acc.is_complete() {
            ctx.usage = acc.finish();
        } else {
            ctx.partial_usage = acc.finish();
        }
        settle::keep_payload_for_sampling(w, ctx);
    } else if (200..300).contains(&ctx.status) {
        unread = Some(match ctx.response_payload.as_slice() {
            [one] => one.clone(),
            many => Bytes::from(many.concat()),
        });
    }
    if hold_body && retained_bytes == usize::MAX {
        failure.get_or_insert((
            Outcome::UpstreamReset,
            ErrorKind::UpstreamProtocol,
            format!(
                "the provider's response is over {MAX_RETAINED} bytes, too large to translate or scan"
            ),
        ));
    } else if hold_body && failure.is_none() {
        let body = ctx.response_payload.concat();
        let doc = match translate.take() {
            Some(Translate::Body(dir)) => {
                let model = ctx
                    .inspection
                    .original_model
                    .as_deref()
                    .unwrap_or(&ctx.inspection.model);
                crate::translate::response(dir, ctx.status, &body, model)
            }
            _ => body,
        };
        let doc = match &mut restore {
            Some(r) => r.plain(ctx.api, &doc),
            None => doc,
        };
        if restore.as_ref().is_some_and(ResponseText::blocked) {
            let e = block_error(ctx, restore.as_ref());
            failure = Some((Outcome::Rejected, ErrorKind::ContentBlocked, e.message));
        } else {
            parts.push(Bytes::from(doc));
        }
    }
    if let Some(Translate::Stream(mut t)) = translate {
        t.finish(failure.is_none() && reader.is_done(), &mut parts)
    }
    if let Some(r) = &mut restore {
        for f in r.take_found() {
            ctx.guard.count(&snap, &f.class, f.action, f.rule, true);
        }
    }
    if let Some(body) = substitute {
        parts.clear();
        parts.push(body);
    }

    match failure {
        Some((outcome, kind, msg)) => {
            if let Some(body) = unread.take() {
                settle::read_plain(w, ctx, &body);
            }
            ctx.outcome = outcome;
            ctx.client_keep_alive = false;
            let attribution = down.client.attribution().cloned();
            if down.pending_head.take().is_some() && down.gone_at.is_none() {
                // Nothing reached the client yet: a precise error instead of a cut connection.
                let e = GateError::new(kind, msg);
                ctx.status = e.status();
                ctx.error_code = Some(e.metric_reason());
                settle::seal(w, ctx, attribution.as_ref());
                let _ = down
                    .client
                    .respond_error(&e, ctx.api.wire(), false, Some(&ctx.id))
                    .await;
            } else if down.gone_at.is_none() && sse {
                settle::seal(w, ctx, attribution.as_ref());
                parts.push(error_event(ctx.api.wire(), GateError::new(kind, msg)));
                down.send(&mut parts, false).await;
            } else {
                if down.gone_at.is_none() {
                    settle::seal(w, ctx, attribution.as_ref());
                }
                down.send(&mut parts, false).await;
            }
            // No terminating chunk: the cut connection tells the client the body is incomplete.
        }
        None => {
            if down.gone_at.is_none() {
                let attribution = down.client.attribution().cloned();
                match unread.take() {
                    // Read after the send only when that delays no other request: with
                    // others in flight the read costs them what it saves this one, and the
                    // journalled body is ~500 instructions more.
                    Some(body) if body.len() <= settle::UNREAD_MAX && w.alone() => {
                        settle::seal_unread(w, ctx, attribution.as_ref(), body)
                    }
                    body => {
                        if let Some(body) = body {
                            settle::read_plain(w, ctx, &body);
                        }
                        settle::seal(w, ctx, attribution.as_ref());
                    }
                }
            }
            if let Some(c) = &mut capture {
                c.keep(&parts);
            }
            down.send(&mut parts, true).await;
            ctx.last_byte_at = Some(Instant::now());
            // The client has the whole response: now its usage is read.
            match unread.take() {
                Some(body) => settle::read_plain(w, ctx, &body),
                None => settle::read_unread(w, ctx),
            }
            if let Some(c) = capture.take() {
                if reader.is_done() && blocked_at.is_none() {
                    c.store(w, ctx);
                }
            }
            if down.gone_at.is_some() {
                ctx.outcome = Outcome::ClientDisconnected;
                ctx.client_keep_alive = false;
            } else if framing == ClientFraming::Close {
                ctx.client_keep_alive = false;
            }
        }
    }
    if down.gone_at.is_some() && matches!(ctx.outcome, Outcome::Ok | Outcome::UpstreamError) {
        ctx.outcome = Outcome::ClientDisconnected;
        ctx.client_keep_alive = false;
    }
    let now = Instant::now();
    ctx.last_byte_at.get_or_insert(now);

    if reader.is_done() && head.keep_alive && ctx.outcome != Outcome::UpstreamReset {
        w.pool.borrow_mut().put(conn, now);
    }
}

/// An error as one event of the client's stream format.
fn error_event(wire: Wire, e: GateError) -> Bytes {
    let err = e.to_response(wire);
    Bytes::from(match wire {
        Wire::OpenAi => format!("data: {}\n\n", err.body),
        Wire::Anthropic => format!("event: error\ndata: {}\n\n", err.body),
    })
}

/// The refusal for a response a guardrail blocked: the rule and class, never the text.
fn block_error(ctx: &RequestCtx, text: Option<&ResponseText>) -> GateError {
    let found = text.and_then(ResponseText::blocking);
    let rule = found
        .and_then(|f| ctx.snap.cfg.guardrails.get(f.rule as usize))
        .map_or("", |r| r.name.as_str());
    let class = found.map_or("".into(), |f| f.class.name());
    GateError::new(
        ErrorKind::ContentBlocked,
        format!(
            "the response was blocked by guardrail `{rule}`: it contains {class} that may not \
             be returned"
        ),
    )
}

/// The client's response head: the provider's status and end-to-end headers, our request id,
/// and framing for the client's side (which may differ from the provider's).
fn response_head(
    ctx: &RequestCtx,
    head: &ResponseHead,
    framing: ClientFraming,
    substitute: Option<&Bytes>,
) -> Vec<u8> {
    let quota = crate::phase::admit::room_for_quota(ctx.quota.as_deref());
    let mut out = HeadWriter::new(head.status, 256 + head.passthrough.len() + quota);
    if substitute.is_some() {
        // Our body replaces an empty one: its content type is ours.
        for line in head.passthrough.split_inclusive(|b| *b == b'\n') {
            if !line.starts_with(b"content-type:") && !line.starts_with(b"Content-Type:") {
                out.lines(line);
            }
        }
        out.header("content-type", b"application/json");
    } else if ctx.quota.is_some() {
        // The provider's own limits describe its key, not the client's quota: ours replace them.
        let starts = |line: &[u8], p: &[u8]| {
            line.get(..p.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(p))
        };
        for line in head.passthrough.split_inclusive(|b| *b == b'\n') {
            if !starts(line, b"x-ratelimit-") && !starts(line, b"anthropic-ratelimit-") {
                out.lines(line);
            }
        }
    } else {
        out.lines(&head.passthrough);
    }
    out.header("x-tollgate-request-id", ctx.id.as_bytes());
    if let Some(v) = ctx.cache.header() {
        out.header("x-tollgate-cache", v);
    }
    // Who served: `provider/upstream_model` (configured targets; the breaker's label).
    if let Some((m, t)) = ctx.target.and_then(|t| t.model) {
        if let Some(tb) = ctx.snap.breakers.get(m).and_then(|b| b.get(t)) {
            out.header("x-tollgate-target", tb.label.as_bytes());
        }
    }
    if let Some(q) = &ctx.quota {
        out.lines(crate::phase::admit::render_quota(q, ctx.api.wire()).as_bytes());
    }
    let body = match (framing, head.framing, substitute) {
        (ClientFraming::Length, _, Some(body)) => ClientBody::Length(body.len() as u64),
        (ClientFraming::Length, ResponseFraming::Length(n), None) => ClientBody::Length(n),
        (ClientFraming::Length, _, None) => ClientBody::Length(0),
        (ClientFraming::Chunked, _, _) => ClientBody::Chunked,
        (ClientFraming::Close, _, _) => ClientBody::Unframed,
    };
    out.finish(body, ctx.client_keep_alive)
}
