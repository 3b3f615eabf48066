//! Server-sent events framing. Splits a byte stream into frames (each ending with a blank line)
//! with memchr, handing complete frames out as `Bytes` slices: zero-copy when the provider's
//! reads end on frame boundaries (the common case), one copy of the straddling tail otherwise.
//! Hot path for streams.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

/// Finds the end (exclusive) of the first complete frame in `buf`, if any.
pub fn frame_end(buf: &[u8]) -> Option<usize> {
    for i in memchr::memchr_iter(b'\n', buf) {
        match buf.get(i + 1) {
            Some(b'\n') => return Some(i + 2),
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
            _ => {}
        }
    }
    None
}

/// Splits payload into SSE frames across reads.
#[derive(Default)]
pub struct FrameSplitter {
    pending: BytesMut,
}

impl FrameSplitter {
    /// Feeds the next payload piece; `on_frame` receives each completed frame in order.
    pub fn push(&mut self, mut piece: Bytes, mut on_frame: impl FnMut(Bytes)) {
        if self.pending.is_empty() {
            while let Some(end) = frame_end(&piece) {
                on_frame(piece.split_to(end));
            }
            if !piece.is_empty() {
                self.pending.extend_from_slice(&piece);
            }
            return;
        }
        // Resume the search just before the old tail's end: a boundary may straddle the join.
        let resume = self.pending.len().saturating_sub(2);
        self.pending.extend_from_slice(&piece);
        let mut from = resume;
        while let Some(end) = frame_end(&self.pending[from..]).map(|e| from + e) {
            on_frame(self.pending.split_to(end).freeze());
            from = 0;
        }
    }

    /// Bytes left over at the end of the stream (a frame without its blank line).
    pub fn take_rest(&mut self) -> Option<Bytes> {
        (!self.pending.is_empty()).then(|| self.pending.split().freeze())
    }
}

/// The `data` payload of a frame: borrowed when it has one data line (the usual case).
pub fn frame_data(frame: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut lines = frame.split(|b| *b == b'\n').filter_map(|l| {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        let d = l.strip_prefix(b"data:")?;
        Some(d.strip_prefix(b" ").unwrap_or(d))
    });
    let first = lines.next()?;
    match lines.next() {
        None => Some(Cow::Borrowed(first)),
        Some(second) => {
            let mut joined = first.to_vec();
            joined.push(b'\n');
            joined.extend_from_slice(second);
            for l in lines {
                joined.push(b'\n');
                joined.extend_from_slice(l);
            }
            Some(Cow::Owned(joined))
        }
    }
}

/// The `event` name of a frame, if it has one.
pub fn frame_event(frame: &[u8]) -> Option<&[u8]> {
    frame.split(|b| *b == b'\n').find_map(|l| {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        let e = l.strip_prefix(b"event:")?;
        Some(e.strip_prefix(b" ").unwrap_or(e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(input: &[u8], step: usize) -> (Vec<Vec<u8>>, Option<Bytes>) {
        let mut s = FrameSplitter::default();
        let mut frames = Vec::new();
        for piece in input.chunks(step) {
            s.push(Bytes::copy_from_slice(piece), |f| frames.push(f.to_vec()));
        }
        (frames, s.take_rest())
    }

    #[test]
    fn frames_survive_any_read_split() {
        let input = b"data: {\"a\":1}\n\nevent: x\r\ndata: y\r\n\r\ndata: [DONE]\n\ntail";
        for step in 1..input.len() {
            let (frames, rest) = split_all(input, step);
            assert_eq!(frames.len(), 3, "step {step}");
            assert_eq!(frames[0], b"data: {\"a\":1}\n\n");
            assert_eq!(frames[1], b"event: x\r\ndata: y\r\n\r\n");
            assert_eq!(frames[2], b"data: [DONE]\n\n");
            assert_eq!(rest.as_deref(), Some(&b"tail"[..]));
        }
    }

    #[test]
    fn data_and_event() {
        assert_eq!(
            frame_data(b"data: {\"x\":1}\n\n").as_deref(),
            Some(&b"{\"x\":1}"[..])
        );
        assert_eq!(
            frame_data(b"event: e\ndata:a\ndata: b\n\n").as_deref(),
            Some(&b"a\nb"[..])
        );
        assert_eq!(frame_data(b": comment\n\n"), None);
        assert_eq!(
            frame_event(b"event: message_start\r\ndata: {}\r\n\r\n"),
            Some(&b"message_start"[..])
        );
    }
}
