//! Whole-module tests: rewrites over real request bodies (valid JSON out, nothing left to
//! find), the restorer at every chunk split, escape evasion, and a property test that the scan
//! never panics and stays in bounds.

use proptest::prelude::*;

use super::*;

const AWS: &str = "AKIAIOSFODNN7EXAMPLE";

fn body() -> String {
    let card = "4111 1111 1111 1111";
    serde_json::json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief. Support: help@example.com"},
            {"role": "user", "content": format!(
                "My card is {card}, mail alice@example.com or alice@example.com again.\n\
                 Key {AWS} and \"quoted\" text, call +44 20 7946 0958.\n\
                 password: \"Xk9#mP2$vL7qR4wZ\""
            )},
        ],
        "max_tokens": 4111111111111111u64,
    })
    .to_string()
}

fn messages_span(b: &[u8]) -> std::ops::Range<usize> {
    let ins = crate::phase::inspect::inspect_body(b).expect("valid body");
    ins.prompt_spans[0].clone()
}

#[test]
fn redact_and_pseudonymize_give_valid_json_with_nothing_left() {
    let det = Detectors::all();
    let b = body();
    let raw = b.as_bytes();
    let span = messages_span(raw);
    let m = det.scan_spans(raw, std::slice::from_ref(&span));
    let classes: Vec<String> = m.iter().map(|m| m.class.name().into_owned()).collect();
    assert_eq!(
        classes,
        [
            "email",
            "credit_card",
            "email",
            "email",
            "aws_key",
            "phone",
            "secret"
        ],
        "{m:?}"
    );
    let red = redact(raw, &m);
    let v: serde_json::Value = serde_json::from_slice(&red).expect("redacted body is JSON");
    // The number outside any string is not prompt text and is left alone.
    assert_eq!(v["max_tokens"], 4111111111111111u64);
    let content = v["messages"][1]["content"].as_str().unwrap_or_default();
    assert!(content.contains("[REDACTED_CREDIT_CARD]") && content.contains("\"quoted\""));
    let span2 = messages_span(&red);
    assert!(det.scan_spans(&red, &[span2]).is_empty());

    let (ps, map) = pseudonymize(raw, &m, Encoding::Json);
    let v: serde_json::Value = serde_json::from_slice(&ps).expect("pseudonymized body is JSON");
    let content = v["messages"][1]["content"].as_str().unwrap_or_default();
    assert!(
        content.contains("mail <EMAIL_2> or <EMAIL_2> again"),
        "{content}"
    );
    assert_eq!(map.len(), 6);
    let span3 = messages_span(&ps);
    assert!(det.scan_spans(&ps, &[span3]).is_empty());
}

#[test]
fn escaped_values_are_found_and_replaced_whole() {
    let det = Detectors::all();
    let raw = br#"{"content":"mail alice\u0040example.com, key \u0041KIA\u0049OSFODNN7EXAMPLE, hook https:\/\/hooks.slack.com\/services\/T0000AAAA\/B00000000BB\/abcdefghijklmnopqrstuvwx"}"#;
    let m = det.scan_json(raw);
    let got: Vec<(String, &str)> = m
        .iter()
        .map(|m| {
            (
                m.class.name().into_owned(),
                std::str::from_utf8(&raw[m.range.clone()]).unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(got[0], ("email".into(), r"alice\u0040example.com"));
    assert_eq!(
        got[1],
        ("aws_key".into(), r"\u0041KIA\u0049OSFODNN7EXAMPLE")
    );
    assert_eq!(got[2].0, "slack_token");
    assert!(got[2].1.starts_with(r"https:\/\/hooks"));
    let red = redact(raw, &m);
    let v: serde_json::Value = serde_json::from_slice(&red).expect("JSON");
    assert_eq!(
        v["content"],
        "mail [REDACTED_EMAIL], key [REDACTED_AWS_KEY], hook [REDACTED_SLACK_TOKEN]"
    );
    let (_, map) = pseudonymize(raw, &m, Encoding::Json);
    assert_eq!(map.get(b"<EMAIL_1>"), Some(&b"alice@example.com"[..]));
}

fn restore_all(map: &PseudoMap, chunks: &[&[u8]]) -> (Vec<u8>, usize) {
    let mut r = Restorer::new(map, Encoding::Text);
    let mut out = Vec::new();
    let mut max_held = 0;
    for c in chunks {
        r.push(c, &mut out);
        max_held = max_held.max(r.held());
    }
    r.finish(&mut out);
    (out, max_held)
}

#[test]
fn restorer_round_trips_at_every_split() {
    let det = Detectors::all();
    let text = "Hi alice@example.com, card 4111111111111111 and bob@example.org; \
                alice@example.com again <EMAIL_ <EMAIL_1 <> <EMAIL_9> end <";
    let m = det.scan_text(text);
    let (ps, map) = pseudonymize(text.as_bytes(), &m, Encoding::Text);
    let limit = map.max_placeholder_len();
    assert!(limit > 0);
    let whole = restore_all(&map, &[&ps]).0;
    assert_eq!(whole, text.as_bytes());
    for i in 0..=ps.len() {
        let (out, held) = restore_all(&map, &[&ps[..i], &ps[i..]]);
        assert_eq!(out, text.as_bytes(), "split at {i}");
        assert!(held < limit, "held {held} at split {i}");
    }
    for i in (0..=ps.len()).step_by(3) {
        for j in (i..=ps.len()).step_by(5) {
            let (out, held) = restore_all(&map, &[&ps[..i], &ps[i..j], &ps[j..]]);
            assert_eq!(out, text.as_bytes(), "splits at {i}, {j}");
            assert!(held < limit);
        }
    }
    // Byte by byte.
    let chunks: Vec<&[u8]> = ps.chunks(1).collect();
    assert_eq!(restore_all(&map, &chunks).0, text.as_bytes());
}

proptest! {
    #[test]
    fn scan_never_panics_and_stays_in_bounds(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let det = Detectors::all();
        let m = det.scan_json(&data);
        let mut last = 0;
        for x in &m {
            prop_assert!(x.range.start >= last && x.range.start < x.range.end && x.range.end <= data.len());
            last = x.range.end;
        }
        let _ = redact(&data, &m);
        let text = String::from_utf8_lossy(&data);
        let mut last = 0;
        for x in det.scan_text(&text) {
            prop_assert!(x.range.start >= last && x.range.end <= text.len());
            prop_assert!(text.is_char_boundary(x.range.start) && text.is_char_boundary(x.range.end));
            last = x.range.end;
        }
    }

    #[test]
    fn scan_of_value_soup_stays_in_strings(
        parts in proptest::collection::vec(prop_oneof![
            Just("alice@example.com"), Just("4111 1111 1111 1111"), Just(AWS), Just("\\u0040"),
            Just("\\n"), Just("\\\""), Just("\""), Just(" "), Just("password: "), Just("1.2.3.4"),
            Just("Xk9#mP2$vL7qR4wZ"), Just("\\\\"), Just("é"), Just("+44 20 7946 0958"),
        ], 0..24)
    ) {
        let det = Detectors::all();
        let s: String = parts.concat();
        let lit = format!("[\"{s}\"]");
        let m = det.scan_json(lit.as_bytes());
        for x in &m {
            prop_assert!(lit.is_char_boundary(x.range.start) && lit.is_char_boundary(x.range.end));
        }
        if serde_json::from_str::<serde_json::Value>(&lit).is_ok() {
            let red = redact(lit.as_bytes(), &m);
            prop_assert!(serde_json::from_slice::<serde_json::Value>(&red).is_ok());
        }
    }
}
