//! Puts pseudonymized originals back into a response as it streams. On the response path, per
//! chunk; cost is one `memchr('<')` pass plus a map lookup per `<`.
//!
//! A placeholder split across chunks (`<EMA` | `IL_1>`) is held back until it completes or
//! turns out not to be one: at most `max_placeholder_len - 1` bytes are held, never more.
//!
//! # Applying it to responses
//!
//! * Plain JSON completion: `Restorer::new(map, Encoding::Json)` over the whole body. Placeholders
//!   are only ASCII letters, digits, `<`, `>` and `_`, so they appear verbatim inside JSON
//!   strings; each original is JSON-escaped on the way in (a `"` or `\` in it cannot break the
//!   document).
//! * SSE: running it over the raw byte stream restores a placeholder only when one event
//!   carries it whole. Models stream a few characters per event, so `<EMAIL_1>` usually
//!   arrives as `<EM`, `AIL`, `_1>` in separate events with JSON between them. The caller must
//!   therefore feed each event's content delta (the raw JSON string bytes of
//!   `choices[i].delta.content`, or Anthropic's `delta.text`) to one `Restorer` per choice
//!   index, write what it outputs as that event's new content (possibly empty: the event may
//!   still be sent with `""`), and call `finish` before the event that carries `finish_reason`
//!   (or `message_stop`), putting the flushed bytes into that event's content.
//! * Plain text (already decoded): `Encoding::Text`.

use super::json::escape_into;
use super::rewrite::{Encoding, PseudoMap};

fn is_ph_byte(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'
}

/// Streaming placeholder restorer; one per response stream (or per SSE choice).
pub struct Restorer {
    /// A copy: a restorer lives as long as its response stream, apart from the request's map.
    map: PseudoMap,
    /// Originals as they are written back, indexed like `map.entries()`.
    values: Vec<Vec<u8>>,
    max_len: usize,
    pending: Vec<u8>,
}

impl Restorer {
    pub fn new(map: &PseudoMap, enc: Encoding) -> Restorer {
        let values = map
            .entries()
            .iter()
            .map(|e| match enc {
                Encoding::Text => e.original.clone(),
                Encoding::Json => {
                    let mut v = Vec::with_capacity(e.original.len());
                    escape_into(&e.original, &mut v);
                    v
                }
            })
            .collect();
        Restorer {
            map: map.clone(),
            values,
            max_len: map.max_placeholder_len(),
            pending: Vec::new(),
        }
    }

    /// Bytes currently held back (always `< max_placeholder_len`).
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// Restores `chunk` into `out`, holding back a trailing partial placeholder.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.pending.is_empty() {
            let used = self.process(chunk, out, false);
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(chunk);
            let used = self.process(&buf, out, false);
            buf.drain(..used);
            self.pending = buf;
        }
    }

    /// Flushes what is held back (the stream ended mid-placeholder-lookalike).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let buf = std::mem::take(&mut self.pending);
        let used = self.process(&buf, out, true);
        out.extend_from_slice(&buf[used..]);
    }

    /// Writes `buf` to `out` with placeholders replaced; returns how much was consumed (the rest
    /// is a possible placeholder prefix, unless `last`).
    fn process(&self, buf: &[u8], out: &mut Vec<u8>, last: bool) -> usize {
        if self.max_len == 0 {
            out.extend_from_slice(buf);
            return buf.len();
        }
        let mut i = 0;
        while let Some(k) = memchr::memchr(b'<', &buf[i..]) {
            let p = i + k;
            out.extend_from_slice(&buf[i..p]);
            let mut j = p + 1;
            while j < buf.len() && j - p < self.max_len && is_ph_byte(buf[j]) {
                j += 1;
            }
            if j < buf.len() && buf[j] == b'>' {
                if let Some(idx) = self.map.index(&buf[p..=j]) {
                    out.extend_from_slice(&self.values[idx]);
                    i = j + 1;
                    continue;
                }
            } else if j == buf.len() && !last && self.map.has_prefix(&buf[p..j]) {
                return p;
            }
            out.push(b'<');
            i = p + 1;
        }
        out.extend_from_slice(&buf[i..]);
        buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{pseudonymize, Class, Match};
    use super::*;

    #[test]
    fn json_originals_are_escaped() {
        let body = br#"{"q":"say a\"b@x.io"}"#;
        let m = [Match {
            class: Class::Email,
            range: 11..19,
        }];
        let (out, map) = pseudonymize(body, &m, Encoding::Json);
        assert_eq!(out, br#"{"q":"say a<EMAIL_1>"}"#);
        let mut r = Restorer::new(&map, Encoding::Json);
        let mut o = Vec::new();
        r.push(br#"{"a":"hi <EMAIL_1> and <EMAIL_9> <"#, &mut o);
        r.finish(&mut o);
        assert_eq!(o, br#"{"a":"hi \"b@x.io and <EMAIL_9> <"#);
    }
}
