//! Requests on an intercepted connection that are not inference calls (`GET /v1/models`,
//! `/health`, `/metrics`, `/tokenize`, a `GET` on an API path, ...): relayed verbatim to the
//! connection's original destination, unmetered and unrecorded.
//!
//! Why: interception is transparent. A client that connected to its vLLM server must keep
//! talking to that server for everything, not get Tollgate's own `/v1/models` or a 404; only
//! the metered API calls (POST on the paths `Api` knows) go through the phases. The request
//! goes to the destination's OpenAI-side provider (`InterceptRoute::openai`: the configured
//! provider at that address or the implicit passthrough), with the client's own headers
//! (credentials included; hop-by-hop and `x-tollgate-*` dropped) and body; the response comes
//! back with its status and end-to-end headers, re-framed for the client like `relay.rs` does.
//!
//! Hot path only for these requests: one `writev` to the provider, body pieces relayed as read.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::api::Wire;
use crate::client::ClientConn;
use crate::error::{ErrorKind, GateError};
use crate::http::head::{ClientBody, HeadWriter};
use crate::http::iovec::BytesVec;
use crate::http::is_hop_by_hop;
use crate::http::request::{Method, RequestHead};
use crate::http::response::ResponseFraming;
use crate::phase::forward::{self, Forwarded};
use crate::phase::read::Request;
use crate::snapshot::Snapshot;
use crate::upstream::body::BodyReader;
use crate::worker::Worker;

/// The request head for the original destination.
fn request_head(head: &RequestHead, body_len: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(512);
    h.extend_from_slice(head.method_bytes());
    h.push(b' ');
    h.extend_from_slice(head.target());
    h.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in head.headers() {
        let envelope = name.len() >= 11 && name[..11].eq_ignore_ascii_case(b"x-tollgate-");
        if is_hop_by_hop(name) || envelope || name.eq_ignore_ascii_case(b"expect") {
            continue;
        }
        h.extend_from_slice(name);
        h.extend_from_slice(b": ");
        h.extend_from_slice(value);
        h.extend_from_slice(b"\r\n");
    }
    let has_body = body_len > 0 || !matches!(head.method, Method::Get | Method::Head);
    if has_body {
        h.extend_from_slice(format!("content-length: {body_len}\r\n").as_bytes());
    }
    h.extend_from_slice(b"\r\n");
    h
}

/// Relays one request to `dst`'s server; returns whether the client connection stays open.
pub async fn run(w: &Worker, client: &mut ClientConn, req: Request, dst: SocketAddr) -> bool {
    let keep = req.head.keep_alive;
    let snap = req.snap.clone();
    let Some(route) = snap.cfg.intercept_route(dst) else {
        let e = GateError::new(
            ErrorKind::UpstreamUnreachable,
            format!("the connection to {dst} was redirected to Tollgate, but {dst} is not in its intercept list"),
        );
        return client
            .respond_error(&e, Wire::OpenAi, keep, None)
            .await
            .is_ok()
            && keep;
    };
    let head = Bytes::from(request_head(&req.head, req.body.len()));
    let body = req.body.clone();
    let parts = || {
        let mut v = BytesVec::with_capacity(2);
        v.push(head.clone());
        if !body.is_empty() {
            v.push(body.clone());
        }
        v
    };
    match forward::exchange(w, &snap, route.openai, &snap.cfg.routing.timeouts, parts).await {
        Ok(fwd) => relay(w, &snap, client, &req.head, fwd).await,
        Err(e) => {
            client
                .respond_error(&e, Wire::OpenAi, keep, None)
                .await
                .is_ok()
                && keep
        }
    }
}

async fn relay(
    w: &Worker,
    snap: &Snapshot,
    client: &mut ClientConn,
    req: &RequestHead,
    fwd: Forwarded,
) -> bool {
    let Forwarded { mut conn, head } = fwd;
    let mut keep = req.keep_alive;
    let head_only = req.method == Method::Head;
    let body_framing = if head_only {
        ResponseFraming::Empty
    } else {
        head.framing
    };
    let chunked = match body_framing {
        ResponseFraming::Empty | ResponseFraming::Length(_) => false,
        _ if req.minor_version >= 1 => true,
        _ => {
            keep = false;
            false
        }
    };
    let mut out = HeadWriter::new(head.status, 128 + head.passthrough.len());
    out.lines(&head.passthrough);
    let body = match (head.framing, chunked) {
        (ResponseFraming::Length(n), _) => ClientBody::Length(n),
        (_, true) => ClientBody::Chunked,
        (ResponseFraming::Empty, _) if !head_only => ClientBody::Length(0),
        _ => ClientBody::Unframed,
    };
    let out = out.finish(body, keep);
    if client.write_all(out).await.is_err() {
        return false;
    }
    let mut reader = BodyReader::new(body_framing);
    let timeout = snap.cfg.upstream.read_timeout;
    loop {
        match reader.next(&mut conn, timeout).await {
            Ok(Some(piece)) => {
                let mut v = BytesVec::with_capacity(3);
                if chunked {
                    v.push(Bytes::from(format!("{:x}\r\n", piece.len())));
                    v.push(piece);
                    v.push(Bytes::from_static(b"\r\n"));
                } else {
                    v.push(piece);
                }
                if client.write_vectored(v).await.0.is_err() {
                    return false;
                }
            }
            Ok(None) => break,
            // Cut the client too, so it sees an incomplete body rather than a short one.
            Err(_) => return false,
        }
    }
    if chunked && client.write_all(&b"0\r\n\r\n"[..]).await.is_err() {
        return false;
    }
    if reader.is_done() && head.keep_alive && !head_only {
        w.pool.borrow_mut().put(conn, std::time::Instant::now());
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &'static [u8]) -> RequestHead {
        RequestHead::parse(Bytes::from_static(raw), 32).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn the_request_goes_out_as_the_client_sent_it() {
        let h = head(
            b"GET /v1/models?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nAuthorization: Bearer sk-own\r\n\
              Connection: keep-alive\r\nx-tollgate-team: t\r\n\r\n",
        );
        let out = String::from_utf8(request_head(&h, 0)).unwrap_or_default();
        assert!(out.starts_with("GET /v1/models?x=1 HTTP/1.1\r\n"), "{out}");
        assert!(out.contains("Host: 127.0.0.1:8000\r\n"), "{out}");
        assert!(out.contains("Authorization: Bearer sk-own\r\n"), "{out}");
        assert!(
            !out.contains("Connection") && !out.contains("x-tollgate"),
            "{out}"
        );
        assert!(!out.contains("content-length"), "{out}");

        let h = head(b"DELETE /v1/files/f1 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
        let out = String::from_utf8(request_head(&h, 0)).unwrap_or_default();
        assert!(out.starts_with("DELETE /v1/files/f1 HTTP/1.1\r\n"), "{out}");
        assert_eq!(out.matches("content-length: 0").count(), 1, "{out}");
        assert!(!out.contains("Content-Length"), "{out}");
    }
}
