//! Response bodies and the helpers that build responses around them.
//!
//! A response is either a whole buffer (JSON, metrics text) sent with `content-length`, or an SSE
//! stream sent with chunked encoding whose frames are produced, paced and flushed one at a time by
//! [`SseBody`]. Building a response never fails: headers here are static.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::sse::SseBody;

pub enum SimBody {
    Full(Option<Bytes>),
    Sse(Box<SseBody>),
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            SimBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            SimBody::Sse(sse) => sse.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SimBody::Full(bytes) => bytes.is_none(),
            SimBody::Sse(sse) => sse.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SimBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            SimBody::Sse(_) => SizeHint::default(),
        }
    }
}

/// Serialises one of our own response types. They hold only strings, numbers and string-keyed
/// structs, so this cannot fail; should it ever, the client gets `{}` rather than a panic.
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    if let Err(error) = serde_json::to_writer(&mut out, value) {
        tracing::error!(%error, "serialising a response");
        return b"{}".to_vec();
    }
    out
}

pub fn full_response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<SimBody> {
    let mut response = Response::new(SimBody::Full(Some(body.into())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response<SimBody> {
    full_response(status, "application/json", body)
}

pub fn sse_response(body: SseBody) -> Response<SimBody> {
    let mut response = Response::new(SimBody::Sse(Box::new(body)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
