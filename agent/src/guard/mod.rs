//! Guardrail detectors and rewrites (issue 15): find personal data and credentials in prompt
//! text, then redact them, or swap them for placeholders and put the originals back into the
//! response. Pure functions over bytes; no I/O, no configuration parsing, no pipeline state.
//! The request path calls this from `inspect`'s prompt spans and `relay`'s response stream, so
//! scanning is on the hot path (target: >= 1 GB/s per core with every detector on; measured in
//! `benches/benches/guard.rs` and `docs/guardrails.md`).
//!
//! It must never panic on any input (fuzzed: `fuzz/fuzz_targets/guard_scan.rs`) and never
//! change a byte outside a match.
//!
//! # API
//!
//! ```ignore
//! // Once, at config load (shared by all workers; `Send + Sync`):
//! let det = Detectors::new(&DetectorConfig {
//!     classes: Class::parse("secrets")?.into_iter().chain(Class::parse("email")?).collect(),
//!     custom_patterns: vec![("employee_id".into(), r"EMP-\d{6}".into())],
//!     word_lists: vec![("codename".into(), vec!["bluebird".into()])],
//! })?;
//!
//! // Per request: the raw JSON values inspect located (quotes included), absolute ranges out.
//! let matches: Vec<Match> = det.scan_spans(&body, &inspect.prompt_spans);
//! let redacted: Vec<u8> = redact(&body, &matches);
//! // or
//! let (body2, map): (Vec<u8>, PseudoMap) = pseudonymize(&body, &matches, Encoding::Json);
//!
//! // Response: one Restorer per response stream (or per SSE choice, see `restore`).
//! let mut r = Restorer::new(&map, Encoding::Json);
//! r.push(chunk, &mut out); /* ... */ r.finish(&mut out);
//! ```
//!
//! * [`Detectors::scan_json`] takes one raw JSON value (a string literal with its quotes, or an
//!   array/object of them) and reports only ranges inside string literals, widened to whole
//!   escapes: `alice\u0040example.com` is found and replaced as a whole.
//! * [`Detectors::scan_text`] takes plain text (a decoded response, a log line).
//! * [`redact`] and [`pseudonymize`] leave every byte outside the matches as it was; their
//!   placeholders (`[REDACTED_EMAIL]`, `<EMAIL_1>`) need no escaping inside a JSON string.
//! * [`Restorer`] is streaming and holds back at most one placeholder length.
//!
//! # Layout
//!
//! `class.rs` names; `detect.rs` the scan loop and prefilters; `pii.rs`, `finance.rs`,
//! `secrets.rs` the validators; `text.rs` byte helpers (SIMD digit scan, entropy); `json.rs`
//! escapes; `rewrite.rs` redact/pseudonymize; `restore.rs` the streaming restorer.

mod class;
mod detect;
mod finance;
mod json;
mod pii;
mod policy;
mod restore;
mod rewrite;
mod secrets;
mod stream;
mod text;

#[cfg(test)]
mod tests;

use std::ops::Range;

pub use class::{Class, ClassSet, PII, SECRETS};
pub use detect::Detectors;
pub use policy::{settle_overlaps, Action, Egress, GuardModel, Guardrail};
pub use restore::Restorer;
pub use stream::{Found, ResponseRule, StreamScanner};

pub use rewrite::{
    apply, pseudonymize, pseudonyms, redact, redaction_marker, redactions, Encoding, PseudoMap,
    Replacement,
};

/// One finding: its class and the byte range it covers in the scanned input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    pub class: Class,
    pub range: Range<usize>,
}

/// What to detect. `classes` enables built-in classes (see [`Class::parse`] for names and the
/// `pii` / `secrets` groups); each custom pattern and word list adds a `custom:<name>` class.
/// Word lists match whole words, ASCII-case-insensitively.
#[derive(Clone, Debug, Default)]
pub struct DetectorConfig {
    pub classes: Vec<Class>,
    /// `(name, regex)`; regex syntax of the `regex` crate, run over bytes.
    pub custom_patterns: Vec<(String, String)>,
    /// `(name, words)`.
    pub word_lists: Vec<(String, Vec<String>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(
        "unknown guard class {0:?} (expected a class name, custom:<name>, pii, secrets or all)"
    )]
    UnknownClass(String),
    #[error("bad guard name {0:?}: 1-32 characters of A-Z, a-z, 0-9, '_' or '-'")]
    BadName(String),
    #[error("custom pattern {name:?} does not compile: {reason}")]
    BadPattern { name: String, reason: String },
    #[error("guard detectors: {0}")]
    Build(String),
}

impl Detectors {
    /// Matches in one raw JSON value (as it sits in the request body, quotes included).
    /// Ranges are into `value`, sorted, non-overlapping, inside string literals, and never split
    /// an escape or a UTF-8 character. Zero-copy unless a `\u` or `\/` escape is present.
    pub fn scan_json(&self, value: &[u8]) -> Vec<Match> {
        let found = if json::needs_decode(value) {
            let dec = json::decode(value);
            let mut m = self.scan_bytes(&dec.text);
            for x in &mut m {
                x.range = dec.to_raw(x.range.clone());
            }
            m
        } else {
            self.scan_bytes(value)
        };
        json::settle(value, found)
    }

    /// [`scan_json`](Self::scan_json) over each of `spans` in `body` (inspect's
    /// `prompt_spans`); ranges are absolute in `body`. Out-of-bounds spans are skipped.
    pub fn scan_spans(&self, body: &[u8], spans: &[Range<usize>]) -> Vec<Match> {
        let mut out = Vec::new();
        for span in spans {
            let Some(value) = body.get(span.clone()) else {
                continue;
            };
            out.extend(self.scan_json(value).into_iter().map(|m| Match {
                class: m.class,
                range: m.range.start + span.start..m.range.end + span.start,
            }));
        }
        out.sort_by_key(|m| m.range.start);
        out.dedup_by(|b, a| a.range.end > b.range.start);
        out
    }

    /// Matches in plain text; ranges fall on `char` boundaries.
    pub fn scan_text(&self, text: &str) -> Vec<Match> {
        let raw = text.as_bytes();
        let mut out: Vec<Match> = Vec::new();
        for mut m in self.scan_bytes(raw) {
            let (mut s, mut e) = (m.range.start, m.range.end);
            while !text.is_char_boundary(s) {
                s -= 1;
            }
            while !text.is_char_boundary(e) {
                e += 1;
            }
            m.range = s..e;
            match out.last_mut() {
                Some(prev) if prev.range.end > s => prev.range.end = prev.range.end.max(e),
                _ => out.push(m),
            }
        }
        out
    }
}
