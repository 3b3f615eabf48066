//! Validators for personal data: email, phone, national ids (US SSN, UK NINO) and IP
//! addresses. Each is called by the scan loop (`detect.rs`) at one candidate position (an `@`
//! or the first digit of a run) and answers with the byte range of a valid value, or `None`.
//! They never allocate, never look further than a few dozen bytes, and must never panic on any
//! input: every index is bounds-checked.

use std::ops::Range;

use super::text::{escaped_letter, is_alnum, left_bound, preceded_by_ci, right_bound};

fn at(text: &[u8], i: usize) -> u8 {
    text.get(i).copied().unwrap_or(0)
}

fn digit(text: &[u8], i: usize) -> bool {
    at(text, i).is_ascii_digit()
}

fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-' | b'\'')
}

/// Image names such as `icon@2x.png` look like addresses; no real address ends in these.
const NOT_TLDS: [&[u8]; 8] = [
    b"png", b"jpg", b"jpeg", b"gif", b"svg", b"webp", b"bmp", b"ico",
];

/// An email address around the `@` at `p`.
pub(crate) fn email(text: &[u8], p: usize) -> Option<Range<usize>> {
    let mut s = p;
    while s > 0 && p - s < 64 && is_local(text[s - 1]) {
        if is_alnum(text[s - 1]) && escaped_letter(text, s - 1) {
            break;
        }
        s -= 1;
    }
    while s < p && matches!(text[s], b'.' | b'-' | b'+' | b'\'') {
        s += 1;
    }
    if s == p || text[p - 1] == b'.' || in_url(text, s) {
        return None;
    }
    // Domain: labels of [A-Za-z0-9-], not starting or ending with '-', joined by single dots.
    let mut i = p + 1;
    let mut labels = 0;
    let mut last_label = i..i;
    let mut end = i;
    loop {
        let ls = i;
        if !is_alnum(at(text, i)) {
            break;
        }
        while i < text.len() && (is_alnum(text[i]) || text[i] == b'-') && i - ls < 63 {
            i += 1;
        }
        if text[i - 1] == b'-' {
            return None;
        }
        labels += 1;
        last_label = ls..i;
        end = i;
        if at(text, i) == b'.' && is_alnum(at(text, i + 1)) {
            i += 1;
        } else {
            break;
        }
    }
    let tld = &text[last_label];
    if labels < 2
        || !(2..=24).contains(&tld.len())
        || !tld.iter().all(|b| b.is_ascii_alphabetic())
        || NOT_TLDS.iter().any(|x| tld.eq_ignore_ascii_case(x))
        || !right_bound(text, end)
        || matches!(at(text, end), b'-' | b'_')
        // `git@github.com:org/repo.git` is an SSH remote, not an address.
        || (at(text, end) == b':' && at(text, end + 1).is_ascii_graphic())
    {
        return None;
    }
    Some(s..end)
}

/// Whether `s` is inside the userinfo of a URL (`https://token@host`, `https://x:pw@host`):
/// a credential, found by its own validator, not an address.
fn in_url(text: &[u8], s: usize) -> bool {
    let from = s.saturating_sub(128);
    let word = text[from..s]
        .iter()
        .rposition(|b| b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b'<' | b'('))
        .map_or(from, |k| from + k + 1);
    memchr::memmem::find(&text[word..s], b"://").is_some()
}

/// Digit groups from `p`: `(group lengths, separators between them, end)`. A separator is one of
/// ` `, `-`, `.`, optionally with a `(`/`)` around the next/previous group; the run stops at the
/// first byte that does not continue it with a digit.
struct Groups {
    lens: [u8; 8],
    seps: [u8; 8],
    n: usize,
    digits: usize,
    end: usize,
    parens: bool,
}

fn groups(text: &[u8], p: usize, allow_parens: bool) -> Option<Groups> {
    let mut g = Groups {
        lens: [0; 8],
        seps: [0; 8],
        n: 0,
        digits: 0,
        end: p,
        parens: false,
    };
    let mut i = p;
    loop {
        let s = i;
        while digit(text, i) && i - s < 20 {
            i += 1;
        }
        if i == s || g.n == 8 {
            return None;
        }
        g.lens[g.n] = (i - s) as u8;
        g.digits += i - s;
        g.n += 1;
        g.end = i;
        if digit(text, i) {
            return None;
        }
        // Separator forms: " ", "-", ".", ") ", ")", " (", "(" around an area code.
        let mut j = i;
        let mut sep = 0u8;
        let mut parens = false;
        if allow_parens && at(text, j) == b')' {
            j += 1;
            parens = true;
            sep = b')';
        }
        if matches!(at(text, j), b' ' | b'-' | b'.') {
            sep = if sep == 0 { at(text, j) } else { sep };
            j += 1;
        }
        if allow_parens && at(text, j) == b'(' {
            j += 1;
            parens = true;
            sep = b'(';
        }
        if sep == 0 || !digit(text, j) || g.n == 8 {
            return Some(g);
        }
        g.parens |= parens;
        g.seps[g.n - 1] = sep;
        i = j;
    }
}

/// A phone number whose first digit is at `p`: international (`+CC ...` or `00 CC ...`, 8-15
/// digits), North American (`(202) 555-0143`, `202-555-0143`, `1 202 555 0143`: separators
/// required) or a national number with a trunk `0` (`020 7946 0958`, `01 23 45 67 89`).
/// Bare digit runs without `+` are refused: they are order numbers, ids and timestamps far more
/// often than phone numbers.
pub(crate) fn phone(text: &[u8], p: usize) -> Option<Range<usize>> {
    let plus = p > 0 && text[p - 1] == b'+' && left_bound(text, p - 1);
    let open = p > 0 && text[p - 1] == b'(' && left_bound(text, p - 1);
    let g = groups(text, p, true)?;
    if !right_bound(text, g.end) || at(text, g.end) == b'_' {
        return None;
    }
    let first = at(text, p);
    let lens = &g.lens[..g.n];
    let seps = &g.seps[..g.n.saturating_sub(1)];
    if plus {
        // +1 is the North American plan: exactly ten digits follow.
        let ok = (8..=15).contains(&g.digits)
            && first != b'0'
            && (first != b'1' || lens[0] > 1 || g.digits == 11);
        return ok.then(|| p - 1..g.end);
    }
    let start = if open { p - 1 } else { p };
    if text[p..].starts_with(b"00") && !open {
        let ok = (10..=17).contains(&g.digits) && g.n >= 3;
        return ok.then_some(start..g.end);
    }
    // North America: [1] NXX NXX XXXX with separators.
    let nanp = |ls: &[u8], from: usize| {
        ls == [3, 3, 4]
            && (b'2'..=b'9').contains(&at(text, from))
            && (b'2'..=b'9').contains(&at(text, from + 4 + usize::from(g.parens)))
    };
    if nanp(lens, p) {
        // `(202)555-0143` and `202.555.0143` are fine; `202 555.0143` mixes styles like a list.
        let dots = seps.iter().filter(|&&s| s == b'.').count();
        if dots == 0 || dots == 2 {
            return Some(start..g.end);
        }
    }
    if first == b'1' && lens.len() == 4 && lens[0] == 1 && !open {
        let rest = p + 2;
        if (b'2'..=b'9').contains(&at(text, rest + usize::from(at(text, rest) == b'(')))
            && lens[1..] == [3, 3, 4]
        {
            return Some(start..g.end);
        }
    }
    // National with trunk prefix 0: space or dash separators only, 9-12 digits; `(020) ...`
    // may bracket the area code.
    let bracketed = open && g.parens && g.seps[0] == b')';
    if first == b'0'
        && (open == bracketed)
        && (!g.parens || bracketed)
        && g.n >= 2
        && (9..=12).contains(&g.digits)
        && (2..=5).contains(&lens[0])
        && lens.iter().all(|&l| l >= 2)
        && seps
            .iter()
            .skip(usize::from(bracketed))
            .all(|&s| s == seps[seps.len() - 1] && (s == b' ' || s == b'-'))
    {
        return Some(start..g.end);
    }
    None
}

/// A US Social Security number at `p`: `123-45-6789` or `123 45 6789`, or nine bare digits
/// when "ssn" or "social security" comes shortly before. Ranges the SSA never issues (area 000,
/// 666, 900-999; group 00; serial 0000) are refused.
pub(crate) fn ssn(text: &[u8], p: usize) -> Option<Range<usize>> {
    let g = groups(text, p, false)?;
    if !right_bound(text, g.end) {
        return None;
    }
    let lens = &g.lens[..g.n];
    let spaced = lens == [3, 2, 4] && g.seps[0] == g.seps[1] && matches!(g.seps[0], b'-' | b' ');
    let bare = lens == [9] && ssn_context(text, p);
    if !(spaced || bare) || (p >= 2 && text[p - 1] == b'-' && digit(text, p - 2)) {
        return None;
    }
    let d: Vec<u8> = text[p..g.end]
        .iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| b - b'0')
        .collect();
    let area = d[0] as u32 * 100 + d[1] as u32 * 10 + d[2] as u32;
    let ok = area != 0 && area != 666 && area < 900 && d[3..5] != [0, 0] && d[5..9] != [0, 0, 0, 0];
    ok.then_some(p..g.end)
}

fn ssn_context(text: &[u8], p: usize) -> bool {
    let from = p.saturating_sub(32);
    let window = &text[from..p];
    window.windows(3).any(|w| w.eq_ignore_ascii_case(b"ssn"))
        || window
            .windows(15)
            .any(|w| w.eq_ignore_ascii_case(b"social security"))
}

/// A UK National Insurance number starting at the letters at `t`: `QQ123456C`,
/// `QQ 12 34 56 C`, with the prefix rules HMRC publishes (no D, F, I, Q, U, V first; no D, F,
/// I, O, Q, U, V second; not BG, GB, NK, KN, TN, NT, ZZ).
pub(crate) fn nino(text: &[u8], t: usize) -> Option<Range<usize>> {
    let (a, b) = (at(text, t), at(text, t + 1));
    if !a.is_ascii_uppercase()
        || !b.is_ascii_uppercase()
        || b"DFIQUV".contains(&a)
        || b"DFIOQUV".contains(&b)
        || [b"BG", b"GB", b"NK", b"KN", b"TN", b"NT", b"ZZ"].contains(&&[a, b])
        || !left_bound(text, t)
    {
        return None;
    }
    let mut i = t + 2;
    let spaced = at(text, i) == b' ';
    let mut n = 0;
    while n < 6 {
        if spaced && n % 2 == 0 {
            if at(text, i) != b' ' {
                return None;
            }
            i += 1;
        }
        if !digit(text, i) {
            return None;
        }
        i += 1;
        n += 1;
    }
    if spaced && at(text, i) == b' ' {
        i += 1;
    }
    let ok = matches!(at(text, i), b'A'..=b'D') && right_bound(text, i + 1);
    ok.then_some(t..i + 1)
}

/// An IPv4 address at `p`: four decimal octets <= 255 without leading zeros, not part of a
/// longer dotted run (OIDs, version quads after "version"/"v").
pub(crate) fn ipv4(text: &[u8], p: usize) -> Option<Range<usize>> {
    if p > 0 && text[p - 1] == b'.' {
        return None;
    }
    let mut i = p;
    for k in 0..4 {
        let s = i;
        let mut v = 0u32;
        while digit(text, i) && i - s < 3 {
            v = v * 10 + (text[i] - b'0') as u32;
            i += 1;
        }
        if i == s || v > 255 || (i - s > 1 && text[s] == b'0') || digit(text, i) {
            return None;
        }
        if k < 3 {
            if at(text, i) != b'.' {
                return None;
            }
            i += 1;
        }
    }
    if !right_bound(text, i) || (at(text, i) == b'.' && digit(text, i + 1)) {
        return None;
    }
    let before = p.saturating_sub(9);
    let lead = &text[before..p];
    if preceded_by_ci(lead, lead.len(), b"version ")
        || preceded_by_ci(lead, lead.len(), b"version: ")
        || preceded_by_ci(lead, lead.len(), b"v ")
    {
        return None;
    }
    Some(p..i)
}

fn is_v6(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':' || b == b'.'
}

/// An IPv6 address around the digit at `p` (full, compressed `::`, IPv4-mapped), parsed by
/// `std::net::Ipv6Addr`. At least two colons and one digit, so `std::io` and `12:30` never
/// qualify.
pub(crate) fn ipv6(text: &[u8], p: usize) -> Option<Range<usize>> {
    let mut s = p;
    while s > 0 && p - s < 45 && is_v6(text[s - 1]) {
        s -= 1;
    }
    if s > 0 && (is_alnum(text[s - 1]) && !escaped_letter(text, s - 1)) {
        return None;
    }
    let mut e = p;
    while e < text.len() && e - s < 45 && is_v6(text[e]) {
        e += 1;
    }
    if e < text.len() && (is_alnum(text[e]) || is_v6(text[e])) {
        return None;
    }
    while e > s && text[e - 1] == b'.' {
        e -= 1;
    }
    if e > s + 1 && text[e - 1] == b':' && text[e - 2] != b':' {
        e -= 1;
    }
    let cand = &text[s..e];
    if cand.iter().filter(|&&b| b == b':').count() < 2 || !cand.iter().any(u8::is_ascii_digit) {
        return None;
    }
    let st = std::str::from_utf8(cand).ok()?;
    st.parse::<std::net::Ipv6Addr>().ok()?;
    Some(s..e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(f: fn(&[u8], usize) -> Option<Range<usize>>, text: &str, at: usize) -> Option<&str> {
        f(text.as_bytes(), at).map(|r| &text[r])
    }

    #[test]
    fn emails() {
        assert_eq!(
            find(email, "mail alice.b+x@mail.example.co.uk.", 14),
            Some("alice.b+x@mail.example.co.uk")
        );
        assert_eq!(find(email, r"\nbob@ex.io", 5), Some("bob@ex.io"));
        assert_eq!(find(email, "icon@2x.png", 4), None);
        assert_eq!(find(email, "@decorator", 0), None);
        assert_eq!(find(email, "a@localhost", 1), None);
    }

    #[test]
    fn phones() {
        for (t, p) in [
            ("+44 20 7946 0958", 1),
            ("+1 (202) 555-0143", 1),
            ("(202) 555-0143", 1),
            ("202-555-0143", 0),
            ("202.555.0143", 0),
            ("1-202-555-0143", 0),
            ("020 7946 0958", 0),
            ("01 23 45 67 89", 0),
            ("+14155552671", 1),
        ] {
            let want = if t.starts_with('+') || t.starts_with('(') {
                t
            } else {
                &t[p..]
            };
            assert_eq!(find(phone, t, p), Some(want), "{t}");
        }
        for t in [
            "2024-03-12",
            "12.03.2024",
            "1234567890",
            "1.2.3",
            "2023-10-15 14:30",
            "0123456789",
        ] {
            assert_eq!(find(phone, t, 0), None, "{t}");
        }
    }

    #[test]
    fn national_ids() {
        assert_eq!(find(ssn, "123-45-6789", 0), Some("123-45-6789"));
        assert_eq!(find(ssn, "666-45-6789", 0), None);
        assert_eq!(find(ssn, "123-00-6789", 0), None);
        assert_eq!(find(ssn, "SSN: 123456789", 5), Some("123456789"));
        assert_eq!(find(ssn, "id 123456789", 3), None);
        assert_eq!(find(nino, "QQ123456C", 0), None);
        assert_eq!(find(nino, "AB123456C", 0), Some("AB123456C"));
        assert_eq!(find(nino, "AB 12 34 56 C", 0), Some("AB 12 34 56 C"));
    }

    #[test]
    fn ips() {
        assert_eq!(find(ipv4, "10.0.0.1", 0), Some("10.0.0.1"));
        assert_eq!(find(ipv4, "256.1.1.1", 0), None);
        assert_eq!(find(ipv4, "1.3.6.1.4.1", 0), None);
        assert_eq!(find(ipv4, "version 1.2.3.4", 8), None);
        assert_eq!(
            find(ipv6, "at 2001:db8::8a2e:370:7334 ok", 3),
            Some("2001:db8::8a2e:370:7334")
        );
        assert_eq!(find(ipv6, "fe80::1", 2), Some("fe80::1"));
        assert_eq!(find(ipv6, "::1", 2), Some("::1"));
        assert_eq!(find(ipv6, "12:30:45", 0), None);
        assert_eq!(find(ipv6, "00:1A:2B:3C:4D:5E", 0), None);
    }
}
