//! Guards that run before any recursive JSON parser sees untrusted bytes.
//!
//! sonic-rs (and serde-style `Value` parsers) validate nested arrays and objects by recursion,
//! so a small body of ten thousand `[` overflows a worker's stack and aborts the whole agent.
//! [`depth_exceeds`] finds the nesting depth without recursion, jumping over string contents with
//! `memchr`, so the cost is proportional to the number of structural bytes, not the body size.
//! Used on request bodies (inspect), provider bodies and stream frames (metering) and on what
//! the control thread parses for estimates. Hot path: one pass over the body.
//!
//! Also [`as_u64`], the integer reading of the hot path's counts.

/// Default deepest nesting accepted in a request body (serde_json's own recursion limit).
pub const DEFAULT_MAX_DEPTH: usize = 128;

/// Whether `bytes` hold at most `max` opening brackets (`[` or `{`, in strings or not), counted
/// 32 bytes at a time into 32 byte-wide counters, which the compiler turns into wide compares
/// and adds (a counter takes at most one a step, so 255 steps cannot overflow it). Against
/// stepping from match to match with `memchr2_iter` (every key and message of a chat body is a
/// match), `json_depth_guard`: 1 KB chat body 136 → 39 ns, 4 KB 265 → 140 ns. The scan after
/// a failed bound is its own function, and steps over non-structural bytes with a table: split
/// off with the old `match` loop, the 4.7 MB embeddings response took +76 %; as it is, it is
/// level (−4 %) and the 64 KB body +6 %.
#[inline(never)]
fn opens_at_most(bytes: &[u8], max: usize) -> bool {
    const LANES: usize = 32;
    let is_open = |b: u8| u8::from(b | 0x20 == b'{'); // only `[` (0x5b) and `{` (0x7b) match
    let mut opens = 0usize;
    let mut steps = bytes.chunks_exact(LANES);
    loop {
        let mut counters = [0u8; LANES];
        let mut taken = 0;
        for step in steps.by_ref().take(255) {
            for (c, &b) in counters.iter_mut().zip(step) {
                *c += is_open(b);
            }
            taken += 1;
        }
        opens += counters.iter().map(|&c| usize::from(c)).sum::<usize>();
        if opens > max {
            return false;
        }
        if taken < 255 {
            break;
        }
    }
    let tail = steps.remainder().iter().map(|&b| usize::from(is_open(b)));
    opens + tail.sum::<usize>() <= max
}

/// Returns the byte offset of the first `[` or `{` that opens a container deeper than `max`,
/// or `None` when the nesting stays within it. Brackets inside strings do not count. The input
/// need not be valid JSON (an unterminated string simply ends the scan).
pub fn depth_exceeds(bytes: &[u8], max: usize) -> Option<usize> {
    // A cheap bound first: fewer opening brackets than the limit cannot nest deeper than it.
    if opens_at_most(bytes, max) {
        return None;
    }
    first_too_deep(bytes, max)
}

/// The bytes [`first_too_deep`] acts on: quotes and brackets.
static STRUCTURAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'[' as usize] = true;
    t[b']' as usize] = true;
    t[b'{' as usize] = true;
    t[b'}' as usize] = true;
    t
};

/// [`depth_exceeds`] past its bound: the scan itself.
#[inline(never)]
fn first_too_deep(bytes: &[u8], max: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        // Past the bytes that change nothing (digits, letters, commas, blanks) in a tight loop:
        // a number-heavy body is mostly those.
        if !STRUCTURAL[usize::from(bytes[i])] {
            i += 1;
            continue;
        }
        match bytes[i] {
            b'"' => {
                // Skip the string: find its closing quote, stepping over escapes.
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &bytes[i..]) {
                        None => return None,
                        Some(p) if bytes[i + p] == b'\\' => i += p + 2,
                        Some(p) => {
                            i += p + 1;
                            break;
                        }
                    }
                    if i >= bytes.len() {
                        return None;
                    }
                }
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// `v` as an unsigned integer, exactly as `LazyValue::as_u64` reads it. Plain digits (up to 19,
/// no leading zero: always within `u64`) are read here; anything else, a sign, a fraction, an
/// exponent, 20 digits or another type, goes to sonic-rs. Its reading deserialises the number
/// through serde: ~650 instructions of the ~14,300 that reading one OpenAI usage object took
/// (callgrind), for each of its four counts.
pub fn as_u64(v: &sonic_rs::LazyValue<'_>) -> Option<u64> {
    let raw = v.as_raw_str().as_bytes();
    let plain = (1..=19).contains(&raw.len())
        && raw.iter().all(u8::is_ascii_digit)
        && (raw[0] != b'0' || raw.len() == 1);
    if plain {
        return Some(raw.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
    }
    sonic_rs::JsonValueTrait::as_u64(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value at `"a"` of `{"a":TEXT}`, read as the hot path's `pointer` reads it (unchecked:
    /// the text need not be valid JSON).
    fn value_of(text: &str, read: impl Fn(&sonic_rs::LazyValue<'_>) -> Option<u64>) -> Option<u64> {
        let json = format!("{{\"a\":{text}}}");
        // SAFETY: `get_unchecked` only requires valid UTF-8, which a `String` is.
        let v = unsafe { sonic_rs::get_unchecked(json.as_str(), &["a"]) }.ok()?;
        read(&v)
    }

    #[test]
    fn counts_read_as_sonic_reads_them() {
        let sonic = |v: &sonic_rs::LazyValue<'_>| sonic_rs::JsonValueTrait::as_u64(v);
        let texts = [
            "0",
            "7",
            "10",
            "1234567890123456789",
            "9999999999999999999",
            "10000000000000000000",
            "18446744073709551615",
            "18446744073709551616",
            "-0",
            "-3",
            "1.0",
            "0.0",
            "1e2",
            "1E2",
            "00",
            "007",
            "0x1",
            "\"7\"",
            "null",
            "true",
            "[1]",
            "{}",
            "+1",
            "1 ",
        ];
        for text in texts {
            assert_eq!(value_of(text, as_u64), value_of(text, sonic), "{text}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_integer_text_reads_as_sonic_reads_it(n in proptest::prelude::any::<u64>(), zeros in 0usize..3, minus: bool) {
            let text = format!("{}{}{n}", if minus { "-" } else { "" }, "0".repeat(zeros));
            let sonic = |v: &sonic_rs::LazyValue<'_>| sonic_rs::JsonValueTrait::as_u64(v);
            proptest::prop_assert_eq!(value_of(&text, as_u64), value_of(&text, sonic), "{}", text);
        }
    }

    #[test]
    fn counts_only_structure_outside_strings() {
        assert_eq!(depth_exceeds(br#"{"a":[[1]]}"#, 3), None);
        assert_eq!(depth_exceeds(br#"{"a":[[1]]}"#, 2), Some(6));
        // Brackets inside strings, escaped quotes included, are text.
        let s = format!(r#"{{"a":"{}\"{}"}}"#, "[".repeat(500), "{".repeat(500));
        assert_eq!(depth_exceeds(s.as_bytes(), 4), None);
        // Siblings do not add up.
        let flat = format!("[{}]", "[],".repeat(1000) + "[]");
        assert_eq!(depth_exceeds(flat.as_bytes(), 2), None);
    }

    /// `depth_exceeds` as a byte-at-a-time state machine, without the bound or `memchr`.
    fn depth_exceeds_byte_by_byte(bytes: &[u8], max: usize) -> Option<usize> {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        for (i, &b) in bytes.iter().enumerate() {
            if in_string {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            in_string = b == b'"';
            let opens = matches!(b, b'[' | b'{');
            let closes = matches!(b, b']' | b'}');
            depth = (depth + usize::from(opens)).saturating_sub(usize::from(closes));
            if opens && depth > max {
                return Some(i);
            }
        }
        None
    }

    proptest::proptest! {
        /// Across the bound's 32-byte steps and its 8,160-byte blocks of them, with brackets from 1 % of
        /// the bytes to all of them (so their count falls on either side of the limit), of
        /// both kinds or of one.
        #[test]
        fn depth_reads_as_a_byte_by_byte_scan(
            picks in proptest::collection::vec(0usize..1000, 0..9_000),
            structural in 12usize..1000,
            one_kind: bool,
            max in 0usize..300,
        ) {
            const ALPHABET: &[u8; 12] = b"[{[{]}]}\\\"\"a";
            let bytes: Vec<u8> = picks
                .iter()
                .map(|&p| match p {
                    _ if p >= structural => b'a',
                    _ if one_kind => b"[]"[p % 2],
                    _ => ALPHABET[p % 12],
                })
                .collect();
            proptest::prop_assert_eq!(
                depth_exceeds(&bytes, max),
                depth_exceeds_byte_by_byte(&bytes, max)
            );
        }
    }

    #[test]
    fn unterminated_deep_input_is_caught() {
        let body = format!(r#"{{"model":"smol","x":{}"#, "[".repeat(10_000));
        assert_eq!(depth_exceeds(body.as_bytes(), 128), Some(20 + 127));
        let objects = format!(r#"{{"x":{}"#, r#"{"a":"#.repeat(10_000));
        assert!(depth_exceeds(objects.as_bytes(), 128).is_some());
        // An unterminated string ends the scan without panicking.
        assert_eq!(depth_exceeds(b"[\"\\", 0), Some(0));
        assert_eq!(depth_exceeds(b"\"\\", 0), None);
    }
}
