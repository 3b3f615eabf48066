//! JSON string handling for the guard: what a provider reads is the *unescaped* string, so
//! `alice\u0040example.com` must be found as an email and `AKIA\u0049...` as a key. Hot path.
//!
//! Most prompts carry only the escapes `\n`, `\t`, `\"`, `\\`: those decode to separators the
//! validators already treat as such (`text::escaped_letter`), so the raw bytes are scanned as
//! they are, with no copy. Only `\uXXXX` and `\/` can hide a character that belongs inside a
//! value; when either appears, a partially decoded copy is scanned (those two decoded, every
//! other byte and escape kept) and each match is mapped back to raw bytes, widened to cover
//! whole escapes. Matches outside string literals (numbers, keys' structure) are dropped: a
//! rewrite there would break the document.

use std::ops::Range;

use memchr::{memchr, memchr2, memmem};

use super::text::escaped_letter;
use super::Match;

/// Whether `raw` has an escape that can hide a value character (`\u`, `\/`).
pub(crate) fn needs_decode(raw: &[u8]) -> bool {
    memmem::find(raw, b"\\u").is_some() || memmem::find(raw, b"\\/").is_some()
}

/// One decoded escape: `ulen` decoded bytes at `u` came from `rlen` raw bytes at `r`.
#[derive(Debug, Clone, Copy)]
struct Esc {
    u: usize,
    ulen: usize,
    r: usize,
    rlen: usize,
}

/// `raw` with `\uXXXX` and `\/` decoded, and the map back to raw offsets.
pub(crate) struct Decoded {
    pub(crate) text: Vec<u8>,
    esc: Vec<Esc>,
}

fn hex4(raw: &[u8], i: usize) -> Option<u32> {
    let h = raw.get(i..i + 4)?;
    let s = std::str::from_utf8(h).ok()?;
    u32::from_str_radix(s, 16).ok()
}

/// The character of the `\u` escape at `b` (a `\`), and how many raw bytes it takes: 6, or 12
/// for a surrogate pair. A lone surrogate decodes to U+FFFD as serde_json and most providers do.
fn parse_u(raw: &[u8], b: usize) -> Option<(char, usize)> {
    let hi = hex4(raw, b + 2)?;
    if (0xD800..0xDC00).contains(&hi) {
        if raw.get(b + 6) == Some(&b'\\') && raw.get(b + 7) == Some(&b'u') {
            if let Some(lo) = hex4(raw, b + 8) {
                if (0xDC00..0xE000).contains(&lo) {
                    let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                    return Some((char::from_u32(cp)?, 12));
                }
            }
        }
        return Some(('\u{FFFD}', 6));
    }
    Some((char::from_u32(hi).unwrap_or('\u{FFFD}'), 6))
}

pub(crate) fn decode(raw: &[u8]) -> Decoded {
    let mut text = Vec::with_capacity(raw.len());
    let mut esc = Vec::new();
    let mut i = 0;
    while let Some(k) = memchr(b'\\', &raw[i..]) {
        let b = i + k;
        text.extend_from_slice(&raw[i..b]);
        match raw.get(b + 1) {
            Some(b'u') => {
                if let Some((ch, rlen)) = parse_u(raw, b) {
                    let mut buf = [0u8; 4];
                    let s = ch.encode_utf8(&mut buf);
                    esc.push(Esc {
                        u: text.len(),
                        ulen: s.len(),
                        r: b,
                        rlen,
                    });
                    text.extend_from_slice(s.as_bytes());
                    i = b + rlen;
                } else {
                    text.extend_from_slice(b"\\u");
                    i = b + 2;
                }
            }
            Some(b'/') => {
                esc.push(Esc {
                    u: text.len(),
                    ulen: 1,
                    r: b,
                    rlen: 2,
                });
                text.push(b'/');
                i = b + 2;
            }
            Some(&c) => {
                text.extend_from_slice(&[b'\\', c]);
                i = b + 2;
            }
            None => {
                text.push(b'\\');
                i = b + 1;
            }
        }
    }
    text.extend_from_slice(&raw[i..]);
    Decoded { text, esc }
}

impl Decoded {
    fn raw_start(&self, s: usize) -> usize {
        let k = self.esc.partition_point(|e| e.u <= s);
        match k.checked_sub(1).map(|k| self.esc[k]) {
            None => s,
            Some(e) if s < e.u + e.ulen => e.r,
            Some(e) => e.r + e.rlen + (s - (e.u + e.ulen)),
        }
    }

    fn raw_end(&self, end: usize) -> usize {
        if end == 0 {
            return 0;
        }
        let last = end - 1;
        let k = self.esc.partition_point(|e| e.u <= last);
        match k.checked_sub(1).map(|k| self.esc[k]) {
            Some(e) if last < e.u + e.ulen => e.r + e.rlen,
            _ => self.raw_start(last) + 1,
        }
    }

    pub(crate) fn to_raw(&self, r: Range<usize>) -> Range<usize> {
        self.raw_start(r.start)..self.raw_end(r.end)
    }
}

fn is_cont(b: u8) -> bool {
    b & 0xC0 == 0x80
}

/// Widens `r` so it neither splits an escape (`\n`) nor a UTF-8 character.
pub(crate) fn snap(raw: &[u8], r: Range<usize>) -> Range<usize> {
    let (mut s, mut e) = (r.start.min(raw.len()), r.end.min(raw.len()));
    if s < raw.len() && escaped_letter(raw, s) {
        s -= 1;
    }
    if e < raw.len() && escaped_letter(raw, e) {
        e += 1;
        // A `\u` escape left whole by `decode` never reaches here; an undecodable one is
        // covered through its hex digits so no lone backslash is left behind.
        if raw[e - 1] == b'u' {
            e = (e + 4).min(raw.len());
        }
    }
    while s > 0 && s < raw.len() && is_cont(raw[s]) {
        s -= 1;
    }
    while e < raw.len() && is_cont(raw[e]) {
        e += 1;
    }
    s..e.max(s)
}

/// Content ranges (between the quotes) of the string literals in a JSON value.
pub(crate) fn strings(raw: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(k) = memchr(b'"', raw.get(i..).unwrap_or_default()) {
        let start = i + k + 1;
        let mut j = start;
        loop {
            match memchr2(b'"', b'\\', raw.get(j..).unwrap_or_default()) {
                None => return out,
                Some(k) if raw[j + k] == b'\\' => j += k + 2,
                Some(k) => {
                    out.push(start..j + k);
                    i = j + k + 1;
                    break;
                }
            }
        }
    }
    out
}

/// Keeps the matches that lie inside one string literal, after snapping them to whole escapes
/// and characters; merges any that snapping made touch.
pub(crate) fn settle(raw: &[u8], matches: Vec<Match>) -> Vec<Match> {
    if matches.is_empty() {
        return matches;
    }
    let strs = strings(raw);
    let mut out: Vec<Match> = Vec::with_capacity(matches.len());
    let mut k = 0;
    for mut m in matches {
        m.range = snap(raw, m.range);
        while k < strs.len() && strs[k].end < m.range.end {
            k += 1;
        }
        let inside = strs
            .get(k)
            .is_some_and(|s| s.start <= m.range.start && m.range.end <= s.end);
        if !inside || m.range.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(prev) if prev.range.end > m.range.start => {
                prev.range.end = prev.range.end.max(m.range.end)
            }
            _ => out.push(m),
        }
    }
    out
}

/// Fully unescapes JSON string content (what the provider reads); invalid escapes are kept.
pub(crate) fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(k) = memchr(b'\\', &raw[i..]) {
        let b = i + k;
        out.extend_from_slice(&raw[i..b]);
        let simple = match raw.get(b + 1) {
            Some(b'n') => Some(b'\n'),
            Some(b't') => Some(b'\t'),
            Some(b'r') => Some(b'\r'),
            Some(b'b') => Some(0x08),
            Some(b'f') => Some(0x0c),
            Some(&c @ (b'"' | b'\\' | b'/')) => Some(c),
            _ => None,
        };
        if let Some(c) = simple {
            out.push(c);
            i = b + 2;
        } else if let Some((ch, rlen)) = parse_u(raw, b).filter(|_| raw.get(b + 1) == Some(&b'u')) {
            let mut buf = [0u8; 4];
            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            i = b + rlen;
        } else {
            out.push(b'\\');
            i = b + 1;
        }
    }
    out.extend_from_slice(&raw[i..]);
    out
}

/// Appends `s` escaped for the inside of a JSON string.
pub(crate) fn escape_into(s: &[u8], out: &mut Vec<u8>) {
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 15) as usize]);
            }
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_maps_back_to_whole_escapes() {
        let raw = br#"a\u0040b\nc\/d\ud83d\ude00e"#;
        let d = decode(raw);
        assert_eq!(d.text, "a@b\\nc/d\u{1F600}e".as_bytes());
        // "@" -> the whole \u0040.
        assert_eq!(d.to_raw(1..2), 1..7);
        // "b\nc" (decoded 2..6) is identity-mapped.
        assert_eq!(d.to_raw(2..6), 7..11);
        // The emoji (4 bytes) -> the 12-byte pair; "e" after it.
        let emoji = 8..12;
        assert_eq!(d.to_raw(emoji), 14..26);
        assert_eq!(d.to_raw(12..13), 26..27);
    }

    #[test]
    fn strings_and_settle() {
        let raw = br#"[{"a":"x\"y","b":12}]"#;
        let s: Vec<&[u8]> = strings(raw).into_iter().map(|r| &raw[r]).collect();
        assert_eq!(s, vec![&b"a"[..], b"x\\\"y", b"b"]);
        assert_eq!(snap(br"a\nb", 2..4), 1..4);
        assert_eq!(unescape(br#"a\u0040b\n\"\\"#), b"a@b\n\"\\");
        let mut e = Vec::new();
        escape_into(b"q\"\\\n\x01", &mut e);
        assert_eq!(e, br#"q\"\\\n\u0001"#);
    }
}
