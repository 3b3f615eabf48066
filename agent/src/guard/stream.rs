//! Guardrails on response text as it streams. Models send a few characters per event, so a
//! value usually arrives in pieces (`bob@ex`, `ample.c`, `om`): one [`StreamScanner`] per
//! text stream (an SSE choice, content block or output part) keeps the tail that could still be
//! the start of a value and releases the rest.
//!
//! * It holds back [`Detectors::stream_hold`] bytes (one match length for the classes
//!   configured) plus at most an eighth of that not yet scanned (scans are batched: each reads
//!   the whole held tail), and a value the detectors report while it is still growing (a PEM
//!   key arriving line by line), from its start until it ends.
//! * What it releases is final: every value in it was either wholly inside the scanned text
//!   and acted on, or cannot exist (any value that reached into the held tail would have
//!   started there).
//! * It works on the raw bytes of JSON string contents (escapes included, as they sit in the
//!   event), never splits an escape, a surrogate pair or a UTF-8 character, so each piece it
//!   releases is a valid JSON string body of its own.
//!
//! Pure and synchronous; the relay drives it (`phase/response_text.rs`).

use std::sync::Arc;

use super::{redaction_marker, Action, Class, Detectors, Match};

/// A guardrail that covers the response: its detectors, action and rule index (for the audit).
#[derive(Clone)]
pub struct ResponseRule {
    pub detectors: Arc<Detectors>,
    pub action: Action,
    pub rule: u16,
}

/// One finding on the response; the matched text is never kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub class: Class,
    pub action: Action,
    pub rule: u16,
}

/// Bytes already released that stay in the buffer as context: detectors look back before a
/// value (`http://user@host` is a URL, not an email; `password: ...`), and must decide as they
/// would over the whole text.
const CONTEXT: usize = 160;

/// Scans and rewrites one text stream.
pub struct StreamScanner {
    rules: Arc<[ResponseRule]>,
    hold: usize,
    /// `"`, up to [`CONTEXT`] released bytes, then the raw JSON string bytes not yet released
    /// (the quote lets the JSON scanner read the buffer as one string value without a copy).
    buf: Vec<u8>,
    /// Where the unreleased bytes start in `buf`.
    start: usize,
    /// A rule blocks: the held text is scanned even when nothing can be released yet, so the
    /// stream stops as soon as a value shows.
    any_block: bool,
    /// Bytes appended since the last scan, and how many make a scan worth it: every scan reads
    /// the whole held tail, so scanning per 4-byte delta would read each byte ~70 times.
    unscanned: usize,
    step: usize,
    blocked: bool,
}

impl StreamScanner {
    pub fn new(rules: Arc<[ResponseRule]>) -> StreamScanner {
        let hold = rules
            .iter()
            .map(|r| r.detectors.stream_hold())
            .max()
            .unwrap_or(0);
        StreamScanner {
            any_block: rules.iter().any(|r| r.action == Action::Block),
            rules,
            hold,
            unscanned: 0,
            step: (hold / 8).max(16),
            buf: vec![b'"'],
            start: 1,
            blocked: false,
        }
    }

    /// Bytes held back.
    pub fn held(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether a `block` rule matched: nothing more is released.
    pub fn blocked(&self) -> bool {
        self.blocked
    }

    /// Appends `raw` (JSON string contents with whole escapes) and writes to `out` what may be
    /// released; findings acted on go to `found`. With `last`, everything held is settled and
    /// released.
    pub fn push(&mut self, raw: &[u8], last: bool, out: &mut Vec<u8>, found: &mut Vec<Found>) {
        if self.blocked {
            return;
        }
        self.buf.extend_from_slice(raw);
        self.unscanned += raw.len();
        if !last && self.unscanned < self.step {
            return;
        }
        let n = self.buf.len();
        let target = if last { n } else { n.saturating_sub(self.hold) };
        let mut cut = safe_cut(&self.buf, self.start, target);
        // Nothing to release: only a `block` rule needs to look now.
        if cut <= self.start && !self.any_block {
            return;
        }
        self.buf.push(b'"');
        let matches = self.scan();
        self.buf.pop();
        self.unscanned = 0;
        let start = self.start;
        let open = |m: &Match| m.range.end > start;
        // A value a `block` rule covers ends the stream as soon as it is seen, settled or not.
        if let Some((m, action, rule)) = matches
            .iter()
            .find(|(m, a, _)| open(m) && *a == Action::Block)
        {
            found.push(Found {
                class: m.class.clone(),
                action: *action,
                rule: *rule,
            });
            self.blocked = true;
            self.buf.truncate(1);
            self.start = 1;
            return;
        }
        if cut <= start {
            return;
        }
        // A value that reaches past the cut is not settled yet: hold it from its start.
        if let Some((m, _, _)) = matches
            .iter()
            .find(|(m, _, _)| open(m) && m.range.end > cut)
        {
            cut = cut.min(m.range.start.max(start));
        }
        let mut pos = start;
        for (m, action, rule) in matches
            .iter()
            .filter(|(m, _, _)| open(m) && m.range.end <= cut)
        {
            found.push(Found {
                class: m.class.clone(),
                action: *action,
                rule: *rule,
            });
            out.extend_from_slice(&self.buf[pos..m.range.start.max(start)]);
            match action {
                Action::Log => {
                    out.extend_from_slice(&self.buf[m.range.start.max(start)..m.range.end])
                }
                Action::Redact | Action::Pseudonymize => {
                    out.extend_from_slice(&redaction_marker(&m.class))
                }
                // Handled above.
                Action::Block => {}
            }
            pos = m.range.end;
        }
        out.extend_from_slice(&self.buf[pos..cut]);
        let keep_from = safe_cut(&self.buf, 1, cut.saturating_sub(CONTEXT));
        self.buf.drain(1..keep_from);
        self.start = cut - (keep_from - 1);
    }

    /// Every rule's matches in the buffer, overlaps settled (the stronger action wins).
    fn scan(&self) -> Vec<(Match, Action, u16)> {
        let mut found = Vec::new();
        for r in self.rules.iter() {
            for m in r.detectors.scan_json(&self.buf) {
                found.push((m, r.action, r.rule));
            }
        }
        super::settle_overlaps(found)
    }
}

/// The largest position in `from..=target` (`from` when `target < from`) that is not inside
/// a JSON escape, a `\uD8xx\uDCxx` surrogate pair or a UTF-8 character; `from` must be one.
fn safe_cut(buf: &[u8], from: usize, target: usize) -> usize {
    let mut i = from;
    while i < buf.len() {
        let next = i + unit_len(buf, i);
        if next > target || next > buf.len() {
            break;
        }
        i = next;
    }
    i
}

/// Length of the escape or character at `i`.
fn unit_len(buf: &[u8], i: usize) -> usize {
    match buf[i] {
        b'\\' if buf.get(i + 1) == Some(&b'u') => {
            let high = buf.get(i + 2..i + 6).is_some_and(is_high_surrogate);
            if high && buf.get(i + 6) == Some(&b'\\') && buf.get(i + 7) == Some(&b'u') {
                12
            } else {
                6
            }
        }
        b'\\' => 2,
        b if b >= 0xf0 => 4,
        b if b >= 0xe0 => 3,
        b if b >= 0xc0 => 2,
        _ => 1,
    }
}

fn is_high_surrogate(hex: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(hex) else {
        return false;
    };
    u16::from_str_radix(s, 16).is_ok_and(|v| (0xd800..0xdc00).contains(&v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::DetectorConfig;
    use proptest::prelude::*;

    fn rules(classes: &str, action: Action) -> Arc<[ResponseRule]> {
        let det = Detectors::new(&DetectorConfig {
            classes: Class::parse(classes).unwrap(),
            ..DetectorConfig::default()
        })
        .unwrap();
        Arc::from(vec![ResponseRule {
            detectors: Arc::new(det),
            action,
            rule: 0,
        }])
    }

    fn run(s: &mut StreamScanner, pieces: &[&str]) -> (String, Vec<Found>) {
        let (mut out, mut found) = (Vec::new(), Vec::new());
        for p in pieces {
            s.push(p.as_bytes(), false, &mut out, &mut found);
            assert!(s.held() <= s.hold + p.len() + 64, "held {}", s.held());
        }
        s.push(b"", true, &mut out, &mut found);
        (String::from_utf8(out).unwrap(), found)
    }

    #[test]
    fn a_value_split_over_pieces_is_redacted_whole() {
        let mut s = StreamScanner::new(rules("email", Action::Redact));
        let (out, found) = run(
            &mut s,
            &["Write to bob@ex", "ample.c", "om today", " please."],
        );
        assert_eq!(out, "Write to [REDACTED_EMAIL] today please.");
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn text_is_released_once_past_the_hold() {
        let mut s = StreamScanner::new(rules("credit_card", Action::Redact));
        let (mut out, mut found) = (Vec::new(), Vec::new());
        let long = "word ".repeat(40);
        s.push(long.as_bytes(), false, &mut out, &mut found);
        assert_eq!(out.len(), long.len() - s.hold);
        assert_eq!(s.held(), s.hold);
    }

    #[test]
    fn block_stops_release_before_the_value() {
        let mut s = StreamScanner::new(rules("secrets", Action::Block));
        let key = "AKIAIOSFODNN7EXAMPLE";
        let (out, found) = run(&mut s, &["here: ", &key[..7], &key[7..], " end"]);
        assert!(s.blocked());
        assert!(!out.contains("AKIA"), "{out}");
        assert_eq!(found[0].class, Class::AwsKey);
    }

    #[test]
    fn escapes_and_multibyte_characters_are_never_split() {
        let buf = b"\"ab\\u00e9\\n\xc3\xa9\\ud83d\\ude00z";
        for cut in 1..buf.len() {
            let c = safe_cut(buf, 1, cut);
            assert!(c <= cut);
            let piece = std::str::from_utf8(&buf[1..c]).unwrap();
            let json = format!("\"{piece}\"");
            assert!(serde_json::from_str::<String>(&json).is_ok(), "{json}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// However the text is cut into pieces, the output equals scanning it whole, and no
        /// email survives.
        #[test]
        fn any_split_equals_the_whole(
            words in proptest::collection::vec(
                prop_oneof!["[a-z]{1,8}", "[a-z]{1,6}@[a-z]{2,6}\\.(com|io|de)", "é", "\\\\n", " "],
                1..40,
            ),
            cuts in proptest::collection::vec(1usize..12, 1..40),
        ) {
            let text: String = words.join(" ");
            let mut whole = StreamScanner::new(rules("email", Action::Redact));
            let (expected, _) = run(&mut whole, &[&text]);
            let mut pieces = Vec::new();
            let mut rest = text.as_str();
            for c in cuts.iter().cycle() {
                if rest.is_empty() { break; }
                let mut k = (*c).min(rest.len());
                // Pieces are whole escapes and whole characters, as event deltas are.
                while !rest.is_char_boundary(k) || rest[..k].ends_with('\\') { k += 1; }
                pieces.push(&rest[..k]);
                rest = &rest[k..];
            }
            let mut split = StreamScanner::new(rules("email", Action::Redact));
            let (got, _) = run(&mut split, &pieces);
            prop_assert_eq!(&got, &expected);
            prop_assert!(!got.contains('@'));
        }
    }
}
