//! Rewrites of a scanned body: `redact` (typed markers, irreversible) and `pseudonymize`
//! (numbered placeholders plus the map that `Restorer` uses to put originals back). Both copy
//! the body once and change nothing outside the matches. On the request path, only when a
//! policy asks for a rewrite and something matched.
//!
//! Matches must come from a scan of the same bytes; ones that are out of bounds or overlap an
//! earlier one are skipped rather than trusted.

use std::fmt;

use super::json;
use super::{Class, Match};

/// How the scanned bytes are encoded, which decides how originals are read and written back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Inside JSON strings: originals are unescaped when recorded and re-escaped when restored.
    Json,
    /// Plain text: bytes as they are.
    Text,
}

/// The well-formed, in-bounds, non-overlapping subset of `matches`, in order.
fn usable<'a>(body: &'a [u8], matches: &'a [Match]) -> impl Iterator<Item = &'a Match> + 'a {
    let mut last = 0;
    matches.iter().filter(move |m| {
        let ok = m.range.start >= last && m.range.start < m.range.end && m.range.end <= body.len();
        if ok {
            last = m.range.end;
        }
        ok
    })
}

/// One replacement of a rewrite: `range` of the scanned bytes becomes `with`. The request path
/// splices these into the body it forwards (zero-copy around them); [`redact`] and
/// [`pseudonymize`] apply them to a copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replacement {
    pub range: std::ops::Range<usize>,
    pub with: Vec<u8>,
}

/// `body` with `reps` (in order, non-overlapping) applied.
pub fn apply(body: &[u8], reps: &[Replacement]) -> Vec<u8> {
    let extra: usize = reps.iter().map(|r| r.with.len()).sum();
    let mut out = Vec::with_capacity(body.len() + extra);
    let mut at = 0;
    for r in reps {
        out.extend_from_slice(&body[at..r.range.start]);
        out.extend_from_slice(&r.with);
        at = r.range.end;
    }
    out.extend_from_slice(&body[at..]);
    out
}

/// The redaction marker of `class`: `[REDACTED_EMAIL]`, `[REDACTED_CUSTOM_EMPLOYEE_ID]`.
pub fn redaction_marker(class: &Class) -> Vec<u8> {
    format!("[REDACTED_{}]", class.tag()).into_bytes()
}

/// The replacements that redact `matches` (see [`redact`]).
pub fn redactions(body: &[u8], matches: &[Match]) -> Vec<Replacement> {
    usable(body, matches)
        .map(|m| Replacement {
            range: m.range.clone(),
            with: redaction_marker(&m.class),
        })
        .collect()
}

/// `body` with each match replaced by `[REDACTED_<TAG>]` (`[REDACTED_EMAIL]`,
/// `[REDACTED_CUSTOM_EMPLOYEE_ID]`).
pub fn redact(body: &[u8], matches: &[Match]) -> Vec<u8> {
    apply(body, &redactions(body, matches))
}

/// Placeholders of one request and the originals they stand for. `Debug` shows placeholders
/// only: originals are the sensitive values themselves and must stay out of logs.
#[derive(Clone, Default)]
pub struct PseudoMap {
    /// Sorted by placeholder (prefix lookups in `Restorer`).
    entries: Vec<Entry>,
}

#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) placeholder: Vec<u8>,
    /// What the provider read (JSON-unescaped when the body was JSON).
    pub(crate) original: Vec<u8>,
    pub(crate) class: Class,
}

impl fmt::Debug for PseudoMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.entries
                    .iter()
                    .map(|e| String::from_utf8_lossy(&e.placeholder)),
            )
            .finish()
    }
}

impl PseudoMap {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The original behind `placeholder` (e.g. `b"<EMAIL_1>"`).
    pub fn get(&self, placeholder: &[u8]) -> Option<&[u8]> {
        self.index(placeholder)
            .map(|i| self.entries[i].original.as_slice())
    }

    /// `(placeholder, class)` pairs, for metrics and audit (no originals).
    pub fn placeholders(&self) -> impl Iterator<Item = (&str, &Class)> {
        self.entries
            .iter()
            .map(|e| (std::str::from_utf8(&e.placeholder).unwrap_or(""), &e.class))
    }

    /// Length in bytes of the longest placeholder: the most a `Restorer` holds back, plus one.
    pub fn max_placeholder_len(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.placeholder.len())
            .max()
            .unwrap_or(0)
    }

    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub(crate) fn index(&self, placeholder: &[u8]) -> Option<usize> {
        self.entries
            .binary_search_by(|e| e.placeholder.as_slice().cmp(placeholder))
            .ok()
    }

    /// Whether some placeholder starts with `prefix`.
    pub(crate) fn has_prefix(&self, prefix: &[u8]) -> bool {
        let i = self
            .entries
            .partition_point(|e| e.placeholder.as_slice() < prefix);
        self.entries
            .get(i)
            .is_some_and(|e| e.placeholder.starts_with(prefix))
    }
}

/// `body` with each match replaced by a numbered placeholder per class (`<EMAIL_1>`,
/// `<EMAIL_2>`, ...), the same value getting the same placeholder, and the map back. A number
/// whose placeholder already appears in `body` is skipped, so restoring never rewrites text the
/// client wrote itself.
pub fn pseudonymize(body: &[u8], matches: &[Match], enc: Encoding) -> (Vec<u8>, PseudoMap) {
    let (reps, map) = pseudonyms(body, matches, enc);
    (apply(body, &reps), map)
}

/// The replacements that [`pseudonymize`] applies, and the map back.
pub fn pseudonyms(body: &[u8], matches: &[Match], enc: Encoding) -> (Vec<Replacement>, PseudoMap) {
    // (class tag, original) -> placeholder: the same value of the same class reads the same.
    let mut seen: std::collections::HashMap<(String, Vec<u8>), Vec<u8>> = Default::default();
    let mut counters: std::collections::HashMap<String, usize> = Default::default();
    let mut entries = Vec::new();
    let mut reps = Vec::with_capacity(matches.len());
    for m in usable(body, matches) {
        let raw = &body[m.range.clone()];
        let original = match enc {
            Encoding::Json => json::unescape(raw),
            Encoding::Text => raw.to_vec(),
        };
        let tag = m.class.tag();
        let key = (tag.clone(), original);
        let ph = match seen.get(&key) {
            Some(p) => p.clone(),
            None => {
                let n = counters.entry(tag.clone()).or_insert(0);
                let ph = loop {
                    *n += 1;
                    let ph = format!("<{tag}_{n}>").into_bytes();
                    if memchr::memmem::find(body, &ph).is_none() {
                        break ph;
                    }
                };
                entries.push(Entry {
                    placeholder: ph.clone(),
                    original: key.1.clone(),
                    class: m.class.clone(),
                });
                seen.insert(key, ph.clone());
                ph
            }
        };
        reps.push(Replacement {
            range: m.range.clone(),
            with: ph,
        });
    }
    entries.sort_by(|a: &Entry, b: &Entry| a.placeholder.cmp(&b.placeholder));
    (reps, PseudoMap { entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(class: Class, r: std::ops::Range<usize>) -> Match {
        Match { class, range: r }
    }

    #[test]
    fn redact_and_pseudonymize_keep_the_rest() {
        let body = b"a x@y.io b z@w.io c x@y.io";
        let ms = [
            m(Class::Email, 2..8),
            m(Class::Email, 11..17),
            m(Class::Email, 20..26),
        ];
        assert_eq!(
            redact(body, &ms),
            b"a [REDACTED_EMAIL] b [REDACTED_EMAIL] c [REDACTED_EMAIL]"
        );
        let (out, map) = pseudonymize(body, &ms, Encoding::Text);
        assert_eq!(out, b"a <EMAIL_1> b <EMAIL_2> c <EMAIL_1>");
        assert_eq!(map.get(b"<EMAIL_2>"), Some(&b"z@w.io"[..]));
        assert_eq!(format!("{map:?}"), r#"["<EMAIL_1>", "<EMAIL_2>"]"#);
        // Bad matches are ignored, not trusted.
        assert_eq!(redact(b"abc", &[m(Class::Ip, 2..9)]), b"abc");
    }

    #[test]
    fn placeholders_already_in_the_body_are_skipped() {
        let body = b"<EMAIL_1> x@y.io";
        let (out, map) = pseudonymize(body, &[m(Class::Email, 10..16)], Encoding::Text);
        assert_eq!(out, b"<EMAIL_1> <EMAIL_2>");
        assert!(map.get(b"<EMAIL_1>").is_none());
    }
}
