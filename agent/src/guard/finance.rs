//! Validators for payment data: card numbers (length, issuer prefix, Luhn) and IBANs (country
//! length, mod-97). Called by the scan loop at one candidate position; no allocation, bounded
//! look-ahead, never panic.

use std::ops::Range;

use super::text::right_bound;

fn at(text: &[u8], i: usize) -> u8 {
    text.get(i).copied().unwrap_or(0)
}

/// A card number whose first digit is at `p`: 13-19 digits, either unbroken or in groups of
/// 3-6 split by one kind of separator (space, dash or dot), a known issuer prefix for that length,
/// and a valid Luhn check digit.
pub(crate) fn credit_card(text: &[u8], p: usize) -> Option<Range<usize>> {
    let mut digits = [0u8; 19];
    let mut n = 0;
    let mut i = p;
    let mut sep = 0u8;
    let mut group = 0;
    loop {
        let b = at(text, i);
        if b.is_ascii_digit() {
            if n == 19 {
                return None;
            }
            digits[n] = b - b'0';
            n += 1;
            group += 1;
            i += 1;
        } else if matches!(b, b' ' | b'-' | b'.')
            && at(text, i + 1).is_ascii_digit()
            && (sep == 0 || sep == b)
            && (3..=6).contains(&group)
        {
            sep = b;
            group = 0;
            i += 1;
        } else {
            break;
        }
    }
    if sep != 0 && !(1..=6).contains(&group) {
        return None;
    }
    // "4111111111111111.5" is a decimal, "...1111-22" a longer code.
    let next = at(text, i);
    if !right_bound(text, i)
        || next == b'_'
        || (matches!(next, b'.' | b',' | b'-') && at(text, i + 1).is_ascii_digit())
    {
        return None;
    }
    let d = &digits[..n];
    (issuer_ok(d) && luhn(d)).then_some(p..i)
}

fn prefix(d: &[u8], k: usize) -> u32 {
    d.iter().take(k).fold(0, |a, &x| a * 10 + x as u32)
}

/// Issuer identification numbers and the lengths each network issues.
fn issuer_ok(d: &[u8]) -> bool {
    let n = d.len();
    if !(13..=19).contains(&n) {
        return false;
    }
    let p1 = prefix(d, 1);
    let p2 = prefix(d, 2);
    let p3 = prefix(d, 3);
    let p4 = prefix(d, 4);
    let p6 = prefix(d, 6);
    let long = (16..=19).contains(&n);
    (p1 == 4 && matches!(n, 13 | 16 | 19))
        || (((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && n == 16)
        || ((p2 == 34 || p2 == 37) && n == 15)
        || ((p4 == 6011 || (644..=649).contains(&p3) || p2 == 65) && long)
        || ((622126..=622925).contains(&p6) && long)
        || (p2 == 62 && long)
        || ((3528..=3589).contains(&p4) && long)
        || (((300..=305).contains(&p3) || p4 == 3095 || p2 == 36 || p2 == 38 || p2 == 39)
            && (14..=19).contains(&n))
        || (matches!(p4, 5018 | 5020 | 5038 | 5893 | 6304 | 6759 | 6761..=6763))
}

pub(crate) fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(k, &x)| {
            let x = x as u32;
            if k % 2 == 1 {
                let y = x * 2;
                if y > 9 {
                    y - 9
                } else {
                    y
                }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// IBAN length per country (ISO 13616 registry). An unknown country is refused: without a
/// length, a spaced IBAN has no clear end.
fn iban_len(cc: [u8; 2]) -> Option<usize> {
    let n = match &cc {
        b"NO" => 15,
        b"BE" => 16,
        b"DK" | b"FI" | b"FO" | b"GL" | b"NL" => 18,
        b"MK" | b"SI" => 19,
        b"AT" | b"BA" | b"EE" | b"KZ" | b"LT" | b"LU" | b"XK" => 20,
        b"CH" | b"CR" | b"HR" | b"LI" | b"LV" => 21,
        b"BG" | b"BH" | b"DE" | b"GB" | b"GE" | b"IE" | b"ME" | b"RS" | b"VA" => 22,
        b"AE" | b"GI" | b"IL" | b"IQ" | b"TL" => 23,
        b"AD" | b"CZ" | b"ES" | b"MD" | b"PK" | b"RO" | b"SA" | b"SE" | b"SK" | b"TN" | b"VG" => 24,
        b"LY" | b"PT" | b"ST" => 25,
        b"IS" | b"TR" => 26,
        b"FR" | b"GR" | b"IT" | b"MC" | b"MR" | b"SM" => 27,
        b"AL" | b"AZ" | b"BY" | b"CY" | b"DO" | b"GT" | b"HU" | b"LB" | b"PL" | b"SV" => 28,
        b"BR" | b"EG" | b"PS" | b"QA" | b"UA" => 29,
        b"JO" | b"KW" | b"MU" => 30,
        b"MT" | b"SC" => 31,
        b"LC" => 32,
        _ => return None,
    };
    Some(n)
}

/// An IBAN whose country code starts at `t`: unbroken or printed in groups of four, either
/// case, with the country's length and a mod-97 remainder of 1.
pub(crate) fn iban(text: &[u8], t: usize) -> Option<Range<usize>> {
    let up = |i| at(text, i).to_ascii_uppercase();
    let len = iban_len([up(t), up(t + 1)])?;
    if !at(text, t + 2).is_ascii_digit() || !at(text, t + 3).is_ascii_digit() {
        return None;
    }
    let mut chars = [0u8; 34];
    let mut n = 0;
    let mut i = t;
    while n < len {
        let b = at(text, i);
        if b == b' ' && n % 4 == 0 && n > 0 && at(text, i + 1).is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        if !b.is_ascii_alphanumeric() {
            return None;
        }
        chars[n] = b.to_ascii_uppercase();
        n += 1;
        i += 1;
    }
    if !right_bound(text, i) {
        return None;
    }
    // Rotate the first four to the end; letters count as 10..35; fold the remainder as we go.
    let mut rem = 0u32;
    for &b in chars[4..len].iter().chain(&chars[..4]) {
        rem = if b.is_ascii_digit() {
            (rem * 10 + (b - b'0') as u32) % 97
        } else {
            (rem * 100 + (b - b'A' + 10) as u32) % 97
        };
    }
    (rem == 1).then_some(t..i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards() {
        for t in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "378282246310005",
            "3782 822463 10005",
            "5555555555554444",
            "6011111111111117",
            "3530111333300000",
        ] {
            assert_eq!(credit_card(t.as_bytes(), 0), Some(0..t.len()), "{t}");
        }
        for t in [
            "4111111111111112",
            "4111 1111-1111 1111",
            "1234567812345670",
            "41111111111111111111",
            "4111111111111111.5",
        ] {
            assert_eq!(credit_card(t.as_bytes(), 0), None, "{t}");
        }
    }

    #[test]
    fn ibans() {
        for t in [
            "DE89370400440532013000",
            "DE89 3704 0044 0532 0130 00",
            "GB29NWBK60161331926819",
            "GB29 NWBK 6016 1331 9268 19",
            "FR1420041010050500013M02606",
            "NO9386011117947",
        ] {
            assert_eq!(iban(t.as_bytes(), 0), Some(0..t.len()), "{t}");
        }
        for t in [
            "DE89370400440532013001",
            "XX89370400440532013000",
            "DE8937040044",
        ] {
            assert_eq!(iban(t.as_bytes(), 0), None, "{t}");
        }
    }
}
