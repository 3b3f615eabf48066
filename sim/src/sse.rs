//! Server-sent events on the wire: frame encoding, and the body that paces frames by the engine's
//! inter-token latency, flushes each as its own write, and cuts the connection when a reset fault
//! asks for it.
//!
//! On the request path for every streamed frame: encoding is one `Vec` per frame, the pacing timer
//! is allocated once per stream and re-armed.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::body::Frame;
use serde::Serialize;
use tokio::time::{Instant, Sleep};

use crate::conn::ConnHandle;
use crate::engine::Sequence;
use crate::metrics::Finish;
use crate::stream::{Pace, TokenStream};

/// The OpenAI stream terminator.
pub const DONE_FRAME: &[u8] = b"data: [DONE]\n\n";

/// `data: {json}\n\n` (OpenAI chunks).
pub fn data_frame<T: Serialize>(value: &T) -> Bytes {
    let mut out = Vec::with_capacity(320);
    out.extend_from_slice(b"data: ");
    push_json(&mut out, value);
    out.extend_from_slice(b"\n\n");
    out.into()
}

/// `event: NAME\ndata: {json}\n\n` (Responses API and Anthropic events).
pub fn event_frame<T: Serialize>(event: &str, value: &T) -> Bytes {
    let mut out = Vec::with_capacity(320);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    push_json(&mut out, value);
    out.extend_from_slice(b"\n\n");
    out.into()
}

fn push_json<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    let start = out.len();
    if let Err(error) = serde_json::to_writer(&mut *out, value) {
        tracing::error!(%error, "serialising an SSE frame");
        out.truncate(start);
        out.extend_from_slice(b"{}");
    }
}

/// How a stream ends when it completes: what the sequence reports to the metrics.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub finish: Finish,
    pub generated_tokens: u64,
}

/// Cut the connection with an RST once this many frames are out.
pub struct ResetAfter {
    pub frames: u64,
    pub conn: ConnHandle,
}

/// A streaming response body.
pub struct SseBody {
    frames: TokenStream,
    /// Looked ahead so the last frame can end the body in the same write.
    next: Option<(Bytes, Pace)>,
    /// Held until the last frame is out; dropping the body early frees it too.
    sequence: Option<Sequence>,
    completion: Completion,
    /// When the previous decode step happened; the next one is an inter-token latency later.
    step_at: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    timer_armed: bool,
    /// A frame was just handed to hyper: yield once so it is flushed on its own.
    yield_for_flush: bool,
    sent_frames: u64,
    reset: Option<ResetAfter>,
}

impl SseBody {
    /// `sequence` must already be prefilled: the first token is due now.
    pub fn new(
        mut frames: TokenStream,
        sequence: Sequence,
        completion: Completion,
        reset: Option<ResetAfter>,
    ) -> Self {
        let next = frames.next_frame();
        SseBody {
            frames,
            next,
            sequence: Some(sequence),
            completion,
            step_at: Instant::now(),
            timer: None,
            timer_armed: false,
            yield_for_flush: false,
            sent_frames: 0,
            reset,
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.next.is_none()
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.yield_for_flush {
            // hyper keeps polling a ready body and would batch frames into one write; returning
            // Pending once makes it flush, so each frame reaches the client as its own write.
            self.yield_for_flush = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let Some(pace) = self.next.as_ref().map(|(_, pace)| *pace) else {
            return Poll::Ready(None);
        };
        if let Some(reset) = &self.reset {
            if self.sent_frames >= reset.frames {
                // The connection task drops this body with the connection; never woken again.
                reset.conn.reset();
                return Poll::Pending;
            }
        }
        if pace == Pace::NextToken {
            ready!(self.poll_decode_step(cx));
        }
        let Some((frame, _)) = self.next.take() else {
            return Poll::Ready(None);
        };
        self.sent_frames += 1;
        self.next = self.frames.next_frame();
        if self.next.is_none() {
            if let Some(sequence) = self.sequence.take() {
                sequence.finish(self.completion.finish, self.completion.generated_tokens);
            }
        } else {
            self.yield_for_flush = true;
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    /// Waits until the next decode step is due.
    fn poll_decode_step(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.timer_armed {
            let Some(interval) = self.sequence.as_ref().and_then(Sequence::token_interval) else {
                return Poll::Ready(());
            };
            // Deadlines advance from the previous step, not from now: a client that reads late
            // receives the tokens that piled up at once, as from a real server.
            self.step_at += interval;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(self.step_at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(self.step_at))),
            }
            self.timer_armed = true;
        }
        if let Some(timer) = &mut self.timer {
            ready!(timer.as_mut().poll(cx));
        }
        self.timer_armed = false;
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;
    use std::task::Waker;

    use super::*;
    use crate::api::test_support::{job, meta};
    use crate::api::TextApi;
    use crate::config::Config;
    use crate::engine::Engine;
    use crate::metrics::Metrics;

    async fn body(reset: Option<ResetAfter>) -> (SseBody, Arc<Metrics>) {
        let config = Config::from_cli(["sim", "--model", "m", "--zero-delay"]).unwrap();
        let metrics = Arc::new(Metrics::new(&config.models));
        let engine = Engine::new(&config, metrics.clone());
        let job = job(1, 3, false);
        let sequence = engine.schedule(0).await.unwrap();
        let frames = TextApi::Chat.stream(meta(), &job, None);
        let completion = Completion {
            finish: Finish::Length,
            generated_tokens: 3,
        };
        (SseBody::new(frames, sequence, completion, reset), metrics)
    }

    #[tokio::test]
    async fn each_frame_is_followed_by_a_flush_point_and_the_last_ends_the_body() {
        let (mut body, metrics) = body(None).await;
        let mut cx = Context::from_waker(Waker::noop());
        let mut frames = 0;
        loop {
            match body.poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(_))) => {
                    frames += 1;
                    if body.is_end_stream() {
                        break;
                    }
                    assert!(
                        body.poll_frame(&mut cx).is_pending(),
                        "a flush point after frame {frames}"
                    );
                }
                other => panic!("unexpected {:?}", other.map(|f| f.is_some())),
            }
        }
        // Role chunk, three tokens, finish chunk, [DONE].
        assert_eq!(frames, 6);
        assert!(matches!(body.poll_frame(&mut cx), Poll::Ready(None)));
        let m = metrics.model(0);
        assert_eq!(
            m.running.load(Relaxed),
            0,
            "the slot is freed with the last frame"
        );
        assert_eq!(m.generation_tokens.load(Relaxed), 3);
    }

    #[tokio::test]
    async fn reset_after_frames_stops_the_stream_and_signals_the_connection() {
        let conn = ConnHandle::default();
        let reset = ResetAfter {
            frames: 2,
            conn: conn.clone(),
        };
        let (mut body, metrics) = body(Some(reset)).await;
        let mut cx = Context::from_waker(Waker::noop());
        let mut frames = 0;
        for _ in 0..10 {
            if let Poll::Ready(Some(Ok(_))) = body.poll_frame(&mut cx) {
                frames += 1;
            }
        }
        assert_eq!(frames, 2);
        // The signal was raised: waiting for it resolves at once.
        let signal = std::pin::pin!(conn.reset_requested());
        assert!(signal.poll(&mut cx).is_ready());
        drop(body);
        assert_eq!(metrics.model(0).running.load(Relaxed), 0);
        assert_eq!(
            metrics.model(0).generation_tokens.load(Relaxed),
            0,
            "not a success"
        );
    }
}
