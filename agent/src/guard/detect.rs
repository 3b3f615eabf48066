//! The scan: one Aho-Corasick (Teddy) pass for secret literals, one SIMD pass for digits and
//! `@`, and the precise validators only around what those passes find. Operator regexes and
//! word lists run after, each as its own pass (the regex crate has its own literal
//! prefilters). Overlapping candidates are settled last: the longer match wins, then the more
//! specific class (a generic `secret` always yields to a specific one). Hot path; allocation-free when nothing is found (beyond the output `Vec`).

use std::ops::Range;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::bytes::{Regex, RegexBuilder};

use super::class::{check_name, Class, ClassSet, PII};
use super::secrets::{self, Trigger};
use super::text::{escaped_letter, find_numeric_or_at, is_alnum, left_bound};
use super::{finance, pii, DetectorConfig, GuardError, Match};

/// Compiled operator regexes are capped (bytes of compiled program) so a config cannot make the
/// scan slow or huge.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Hold-back for an operator pattern with no maximum length (`EMP-\d+`), and the cap on any.
const MAX_CUSTOM_HOLD: usize = 1024;

/// Bytes past a value that a word-boundary check looks at.
const LOOKAHEAD: usize = 8;

/// Detectors built once from configuration; immutable and `Send + Sync`, so one instance is
/// shared by every worker.
#[derive(Debug)]
pub struct Detectors {
    enabled: ClassSet,
    secret_ac: Option<AhoCorasick>,
    secret_triggers: Vec<Trigger>,
    numeric: bool,
    custom: Vec<(Class, Regex)>,
    words: Option<(AhoCorasick, Vec<Class>)>,
    /// See [`Detectors::stream_hold`].
    hold: usize,
}

impl Detectors {
    pub fn new(cfg: &DetectorConfig) -> Result<Detectors, GuardError> {
        let enabled = ClassSet::from_iter(cfg.classes.iter().cloned());
        let trig = secrets::triggers(enabled);
        let secret_ac = if trig.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .match_kind(MatchKind::LeftmostFirst)
                    .build(trig.iter().map(|t| t.0))
                    .map_err(|e| GuardError::Build(e.to_string()))?,
            )
        };
        // Every personal-data class is found from the digit-or-`@` pass.
        let numeric = PII.iter().any(|c| enabled.contains(c));
        let mut hold = cfg
            .classes
            .iter()
            .map(Class::stream_hold)
            .max()
            .unwrap_or(0);
        let mut custom = Vec::new();
        for (name, pat) in &cfg.custom_patterns {
            let longest = regex_syntax::Parser::new()
                .parse(pat)
                .ok()
                .and_then(|h| h.properties().maximum_len());
            hold =
                hold.max(longest.map_or(MAX_CUSTOM_HOLD, |n| n.min(MAX_CUSTOM_HOLD) + LOOKAHEAD));
            check_name(name)?;
            let re = RegexBuilder::new(pat)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| GuardError::BadPattern {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
            custom.push((Class::Custom(Arc::from(name.as_str())), re));
        }
        let mut pats = Vec::new();
        let mut owners = Vec::new();
        for (name, list) in &cfg.word_lists {
            check_name(name)?;
            let class = Class::Custom(Arc::from(name.as_str()));
            for w in list.iter().filter(|w| !w.trim().is_empty()) {
                hold = hold.max(w.trim().len() + LOOKAHEAD);
                pats.push(w.trim().to_string());
                owners.push(class.clone());
            }
        }
        let words = if pats.is_empty() {
            None
        } else {
            let ac = AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::LeftmostLongest)
                .build(&pats)
                .map_err(|e| GuardError::Build(e.to_string()))?;
            Some((ac, owners))
        };
        Ok(Detectors {
            enabled,
            secret_ac,
            secret_triggers: trig.into_iter().map(|t| t.1).collect(),
            numeric,
            custom,
            words,
            hold,
        })
    }

    /// How many raw bytes of streamed text must be held back so that no value these detectors
    /// find is released before it is recognised (one match length; see [`Class::stream_hold`]).
    pub fn stream_hold(&self) -> usize {
        self.hold
    }

    /// Every built-in class on, no operator patterns.
    pub fn all() -> Detectors {
        let cfg = DetectorConfig {
            classes: Class::builtin().collect(),
            ..DetectorConfig::default()
        };
        // Built-in literals and no operator input: construction cannot fail.
        Detectors::new(&cfg).unwrap_or_else(|_| unreachable!("built-in detectors build"))
    }

    /// Matches in `text` (raw bytes; JSON simple escapes such as `\n` count as separators):
    /// sorted, non-overlapping, in bounds.
    pub(crate) fn scan_bytes(&self, text: &[u8]) -> Vec<Match> {
        let mut cands: Vec<(Class, Range<usize>)> = Vec::new();
        if let Some(ac) = &self.secret_ac {
            for m in ac.find_iter(text) {
                let t = self.secret_triggers[m.pattern().as_usize()];
                secrets::check(t, text, m.start(), m.end(), self.enabled, &mut cands);
            }
        }
        if self.numeric {
            let mut i = 0;
            while let Some(p) = find_numeric_or_at(text, i) {
                i = if text[p] == b'@' {
                    self.on_at(text, p, &mut cands)
                } else {
                    self.on_digit(text, p, &mut cands)
                };
            }
        }
        for (class, re) in &self.custom {
            for m in re.find_iter(text) {
                if !m.is_empty() {
                    cands.push((class.clone(), m.range()));
                }
            }
        }
        if let Some((ac, owners)) = &self.words {
            for m in ac.find_iter(text) {
                let word = |b: u8| is_alnum(b) || b == b'_';
                let l =
                    left_bound(text, m.start()) && (m.start() == 0 || text[m.start() - 1] != b'_');
                let r = m.end() >= text.len() || !word(text[m.end()]);
                if l && r {
                    cands.push((owners[m.pattern().as_usize()].clone(), m.range()));
                }
            }
        }
        resolve(cands)
    }

    fn on_at(&self, text: &[u8], p: usize, out: &mut Vec<(Class, Range<usize>)>) -> usize {
        if self.enabled.contains(&Class::Email) {
            if let Some(r) = pii::email(text, p) {
                let end = r.end;
                out.push((Class::Email, r));
                return end;
            }
        }
        p + 1
    }

    /// Every numeric validator that can start near the digit at `p`; returns where the scan
    /// resumes (past the word or value examined, always > `p`).
    fn on_digit(&self, text: &[u8], p: usize, out: &mut Vec<(Class, Range<usize>)>) -> usize {
        let on = |c: &Class| self.enabled.contains(c);
        let mut t = p;
        while t > 0
            && p - t < 3
            && text[t - 1].is_ascii_alphabetic()
            && !escaped_letter(text, t - 1)
        {
            t -= 1;
        }
        let letters = p - t;
        let mut tok_end = p;
        while tok_end < text.len() && is_alnum(text[tok_end]) {
            tok_end += 1;
        }
        let mut resume = tok_end.max(p + 1);
        let mut add = |c: Class, r: Range<usize>, out: &mut Vec<(Class, Range<usize>)>| {
            resume = resume.max(r.end);
            out.push((c, r));
        };
        if letters == 2 && left_bound(text, t) {
            if on(&Class::Iban) {
                if let Some(r) = finance::iban(text, t) {
                    add(Class::Iban, r, out);
                }
            }
            if on(&Class::NationalId) {
                if let Some(r) = pii::nino(text, t) {
                    add(Class::NationalId, r, out);
                }
            }
        } else if letters == 0 && left_bound(text, p) && !inside_number(text, p) {
            // Cheap gate: how many digits in the separated run from here? Most digits in prose
            // and code are short numbers that no validator below could accept.
            let (digits, dots) = numeric_shape(text, p);
            if digits >= 9 {
                if on(&Class::CreditCard) {
                    if let Some(r) = finance::credit_card(text, p) {
                        add(Class::CreditCard, r, out);
                    }
                }
                if on(&Class::NationalId) {
                    if let Some(r) = pii::ssn(text, p) {
                        add(Class::NationalId, r, out);
                    }
                }
            }
            if digits >= 8 && on(&Class::Phone) {
                if let Some(r) = pii::phone(text, p) {
                    add(Class::Phone, r, out);
                }
            }
            if dots >= 3 && on(&Class::Ip) {
                if let Some(r) = pii::ipv4(text, p) {
                    add(Class::Ip, r, out);
                }
            }
            // "QQ 12 34 56 C": the letters sit before a space.
            if p >= 3
                && text[p - 1] == b' '
                && on(&Class::NationalId)
                && digits >= 6
                && text[p - 3].is_ascii_uppercase()
            {
                if let Some(r) = pii::nino(text, p - 3) {
                    add(Class::NationalId, r, out);
                }
            }
        }
        if on(&Class::Ip) && near_colon(text, p) {
            if let Some(r) = pii::ipv6(text, p) {
                add(Class::Ip, r, out);
            }
        }
        resume
    }
}

/// Digits and dots over the run of digits and single separators starting at `p` (bounded to
/// 40 bytes).
fn numeric_shape(text: &[u8], p: usize) -> (usize, usize) {
    let mut digits = 0;
    let mut dots = 0;
    let mut i = p;
    let end = text.len().min(p + 40);
    while i < end {
        match text[i] {
            b'0'..=b'9' => digits += 1,
            b'.' => dots += 1,
            b' ' | b'-' | b'(' | b')' => {}
            b'a'..=b'f' | b'A'..=b'F' => {}
            _ => break,
        }
        // Two separators in a row end a number ("5. 6" is a list, not a value).
        if i + 1 < end && !text[i].is_ascii_hexdigit() && !text[i + 1].is_ascii_hexdigit() {
            let pair = (text[i], text[i + 1]);
            if !matches!(pair, (b')', b' ') | (b' ', b'(')) {
                break;
            }
        }
        i += 1;
    }
    (digits, dots)
}

/// Whether `p` continues a separated digit run (`4000 0000 ...`): validators start only at a
/// run's first group.
fn inside_number(text: &[u8], p: usize) -> bool {
    p >= 2 && matches!(text[p - 1], b' ' | b'-' | b'.') && text[p - 2].is_ascii_digit()
}

fn near_colon(text: &[u8], p: usize) -> bool {
    let from = p.saturating_sub(5);
    let to = text.len().min(p + 6);
    text[from..to].contains(&b':')
}

/// Sorted, non-overlapping matches from overlapping candidates: specific classes before the
/// generic secret, then longer first, then by class rank, then leftmost.
fn resolve(mut cands: Vec<(Class, Range<usize>)>) -> Vec<Match> {
    if cands.is_empty() {
        return Vec::new();
    }
    cands.retain(|(_, r)| r.start < r.end);
    // A generic secret (a token after `password`, a URL password) yields to any specific
    // match it overlaps: `token:ghs_...@github.com` is a GitHub token, however far the generic
    // token runs.
    let generic = |c: &Class| *c == Class::Secret;
    cands.sort_by(|a, b| {
        (generic(&a.0), b.1.len(), a.0.rank(), a.1.start).cmp(&(
            generic(&b.0),
            a.1.len(),
            b.0.rank(),
            b.1.start,
        ))
    });
    let mut taken: std::collections::BTreeMap<usize, (usize, Class)> = Default::default();
    for (class, r) in cands {
        let before = taken.range(..r.end).next_back();
        let clash = before.is_some_and(|(_, (end, _))| *end > r.start);
        if !clash {
            taken.insert(r.start, (r.end, class));
        }
    }
    taken
        .into_iter()
        .map(|(start, (end, class))| Match {
            class,
            range: start..end,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlaps_keep_longest_then_specific() {
        let m = resolve(vec![
            (Class::Secret, 5..20),
            (Class::Jwt, 5..20),
            (Class::Phone, 0..8),
            (Class::Email, 30..40),
            (Class::Ip, 32..34),
        ]);
        let got: Vec<_> = m
            .iter()
            .map(|m| (m.class.clone(), m.range.clone()))
            .collect();
        assert_eq!(got, vec![(Class::Jwt, 5..20), (Class::Email, 30..40)]);
    }

    #[test]
    fn operator_patterns() {
        let d = Detectors::new(&DetectorConfig {
            classes: vec![],
            custom_patterns: vec![("emp".into(), r"EMP-\d{6}".into())],
            word_lists: vec![("codename".into(), vec!["Bluebird".into(), "red fox".into()])],
        })
        .unwrap();
        let t = b"EMP-123456 told BLUEBIRD and the Red Fox; bluebirds fly";
        let m = d.scan_bytes(t);
        let got: Vec<_> = m.iter().map(|m| &t[m.range.clone()]).collect();
        assert_eq!(got, vec![&b"EMP-123456"[..], b"BLUEBIRD", b"Red Fox"]);
        assert!(matches!(
            Detectors::new(&DetectorConfig {
                custom_patterns: vec![("x".into(), "(".into())],
                ..Default::default()
            }),
            Err(GuardError::BadPattern { .. })
        ));
    }
}
