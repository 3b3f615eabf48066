//! Fuzz entry points, shared by the libFuzzer targets (`fuzz/fuzz_targets/`, run with
//! `cargo xtask fuzz`) and by the crasher-replay test (`agent/tests/fuzz_crashers.rs`), which runs
//! every saved crasher and seed through them as an ordinary test. Not on the hot path.
//!
//! Each function takes arbitrary bytes and must never panic on its own: a panic is a finding,
//! either in the parser under test or in one of the invariants asserted here (equivalence of
//! one-piece and split reads, re-parse of what is forwarded, agreement with serde_json).
//! Reads are split at points derived from the input itself (a hash of it seeds a small
//! generator), so every input is also tried with its own irregular read boundaries.

use bytes::{Bytes, BytesMut};

use crate::api::Api;
use crate::config::Config;
use crate::http::chunked::{ChunkedDecoder, Decoded};
use crate::http::request::{BodyFraming, RequestHead};
use crate::http::response::{ResponseFraming, ResponseHead};
use crate::http::{find_head_end, is_hop_by_hop, HttpError};
use crate::metering::sse::{frame_data, frame_end, frame_event, FrameSplitter};
use crate::metering::usage::{
    extract_usage, plain_response_facts, upstream_version, FrameUsage, UsageAccumulator,
};
use crate::phase::forward::rewrite_body;
use crate::phase::inspect::inspect_body;
use crate::upstream::body::BodyReader;

/// The header limit `read` applies by default (`limits.max_headers`).
const MAX_HEADERS: usize = 100;

/// The model name `inspect_rewrite` asks `rewrite_body` to splice in.
const REWRITTEN: &str = "rewritten-model";

/// A client request: head (with the incremental head-end search of `read`), then a chunked
/// body after it when the head says so.
pub fn request_head(data: &[u8]) {
    let end = find_head_end(data, 0);
    for salt in [1, 2] {
        assert_eq!(
            head_end_incremental(&pieces(data, salt)),
            end,
            "the head end found across reads differs from the one found in one piece"
        );
    }
    let Some(end) = end else { return };
    let raw = Bytes::copy_from_slice(&data[..end]);
    let Ok(head) = RequestHead::parse(raw.clone(), MAX_HEADERS) else {
        return;
    };
    let path = head.path();
    assert!(
        !path.contains('?'),
        "path() kept the query string: {path:?}"
    );
    assert!(
        path == "/" || head.target().starts_with(path.as_bytes()),
        "path() {path:?} is not a prefix of the target"
    );
    let _ = head.method_bytes();
    let mut count = 0;
    for (name, value) in head.headers() {
        count += 1;
        let name = std::str::from_utf8(name).expect("httparse header names are tokens");
        assert!(head.header(name).is_some(), "header({name:?}) not found");
        let _ = head.header_str(name);
        let _ = value;
    }
    // The same head parses with exactly as many header slots as it has headers, not one fewer.
    let exact = RequestHead::parse(raw.clone(), count).expect("parses with exact header slots");
    assert_eq!(exact.framing, head.framing);
    if count > 0 {
        assert_eq!(
            RequestHead::parse(raw, count - 1).unwrap_err(),
            HttpError::TooManyHeaders { limit: count - 1 }
        );
    }
    if head.framing == BodyFraming::Chunked {
        chunked_equivalence(&data[end..]);
    }
}

/// A chunked body on its own.
pub fn chunked(data: &[u8]) {
    chunked_equivalence(data);
}

/// A request body: the inspect pass, then the body the provider would receive.
pub fn inspect_rewrite(data: &[u8]) {
    let Ok(ins) = inspect_body(data) else { return };
    assert!(
        ins.model_span.end <= data.len(),
        "model span out of the body"
    );
    for r in &ins.prompt_spans {
        assert!(r.start <= r.end && r.end <= data.len(), "prompt span {r:?}");
    }
    assert_eq!(
        ins.prompt_bytes,
        ins.prompt_spans.iter().map(|r| r.len()).sum::<usize>()
    );
    if let Ok(model) = serde_json::from_slice::<String>(&data[ins.model_span.clone()]) {
        assert_eq!(model, ins.model, "model span does not hold the model");
    }
    // serde_json as a second opinion: when it reads the body, it must read the same model and
    // stream flag (a parser differential would route or bill one request and serve another).
    let serde_obj = match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(serde_json::Value::Object(m)) => Some(m),
        _ => None,
    };
    if let Some(obj) = &serde_obj {
        assert_eq!(
            obj.get("model").and_then(|m| m.as_str()),
            Some(ins.model.as_str()),
            "serde_json reads another model than inspect"
        );
        let stream = match obj.get("stream") {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(other) => panic!("inspect accepted stream = {other}"),
        };
        assert_eq!(stream, ins.stream, "serde_json reads another stream flag");
    }
    // Chat completions stands for every API that takes `include_usage` (completions too),
    // messages for every API that does not (responses, embeddings).
    for api in [Api::ChatCompletions, Api::Messages] {
        let (out, injected) = rewrite_body(api, data, &ins, REWRITTEN);
        let wants_usage = ins.stream && api.supports_include_usage();
        assert_eq!(
            injected,
            wants_usage && !matches!(ins.include_usage, Some((true, _))),
            "injected flag for {api:?}"
        );
        // What the provider receives must pass our own inspection too, with the new model.
        let again = inspect_body(&out).unwrap_or_else(|e| {
            panic!(
                "rewritten body for {api:?} fails inspection: {e}\n{}",
                String::from_utf8_lossy(&out)
            )
        });
        assert_eq!(again.model, REWRITTEN);
        assert_eq!(again.stream, ins.stream);
        if wants_usage {
            assert!(
                matches!(again.include_usage, Some((true, _))),
                "rewritten stream for {api:?} does not ask for usage"
            );
        }
        let Some(obj) = &serde_obj else { continue };
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
            panic!(
                "rewritten body for {api:?} is not JSON: {e}\n{}",
                String::from_utf8_lossy(&out)
            )
        });
        let out_obj = v.as_object().expect("rewritten body is an object");
        assert_eq!(
            out_obj.get("model").and_then(|m| m.as_str()),
            Some(REWRITTEN),
            "rewritten model for {api:?}"
        );
        let usage = out_obj
            .get("stream_options")
            .and_then(|o| o.get("include_usage"));
        if wants_usage {
            assert_eq!(
                usage,
                Some(&serde_json::Value::Bool(true)),
                "stream_options.include_usage for {api:?}"
            );
        }
        // Every other member passes through unchanged.
        for (k, val) in obj {
            if k == "model" || (wants_usage && k == "stream_options") {
                continue;
            }
            assert_eq!(
                out_obj.get(k),
                Some(val),
                "member {k:?} changed for {api:?}"
            );
        }
        let added = out_obj.keys().filter(|k| !obj.contains_key(*k)).count();
        let allowed = usize::from(wants_usage && !obj.contains_key("stream_options"));
        assert_eq!(added, allowed, "members added for {api:?}");
    }
}

/// A provider's SSE stream: framing across reads, frame fields, and usage extraction.
pub fn sse_usage(data: &[u8]) {
    let (frames, rest) = split_frames(&[data]);
    let mut joined = Vec::with_capacity(data.len());
    for f in &frames {
        assert_eq!(
            frame_end(f),
            Some(f.len()),
            "a frame does not end at its first blank line: {f:?}"
        );
        joined.extend_from_slice(f);
    }
    if let Some(r) = &rest {
        assert!(!r.is_empty(), "take_rest returned an empty piece");
        assert_eq!(frame_end(r), None, "the rest holds a complete frame");
        joined.extend_from_slice(r);
    }
    assert_eq!(joined, data, "frames plus rest differ from the input");
    for salt in [1, 2] {
        let split = split_frames(&pieces(data, salt));
        assert_eq!(
            split,
            (frames.clone(), rest.clone()),
            "frames depend on read splits"
        );
    }
    // Chat completions stands for completions and embeddings: usage.rs reads all three alike.
    for api in [Api::ChatCompletions, Api::Responses, Api::Messages] {
        let mut acc = UsageAccumulator::default();
        for f in &frames {
            if let Some(ev) = frame_event(f) {
                assert!(!ev.contains(&b'\n'), "event name spans lines");
            }
            let Some(d) = frame_data(f) else { continue };
            let seen = acc.observe_frame(api, &d);
            if seen != FrameUsage::None {
                assert!(
                    acc.finish().is_some(),
                    "usage observed but finish() is None"
                );
            }
            if seen == FrameUsage::UsageOnly {
                assert!(
                    !matches!(api, Api::Messages | Api::Responses),
                    "usage-only chunk on {api:?}"
                );
            }
        }
        let _ = acc.is_complete();
        let _ = acc.finish();
        // The one-pass reader of plain bodies agrees with the two it replaces.
        let usage = extract_usage(api, data);
        let version = usage.and_then(|_| upstream_version(data));
        assert_eq!(plain_response_facts(api, data), (usage, version));
    }
}

/// A provider's response head, then its body framing where that is a pure function.
pub fn response_head(data: &[u8]) {
    let Some(end) = find_head_end(data, 0) else {
        return;
    };
    let Ok(head) = ResponseHead::parse(&data[..end]) else {
        return;
    };
    if head.framing == ResponseFraming::UntilClose {
        assert!(
            !head.keep_alive,
            "a close-delimited body on a keep-alive connection"
        );
    }
    assert_eq!(
        BodyReader::new(head.framing).is_done(),
        matches!(
            head.framing,
            ResponseFraming::Empty | ResponseFraming::Length(0)
        )
    );
    // The headers passed on to the client re-parse to themselves, with no framing or
    // hop-by-hop header among them.
    let mut again = b"HTTP/1.1 200 OK\r\n".to_vec();
    again.extend_from_slice(&head.passthrough);
    again.extend_from_slice(b"\r\n");
    let re = ResponseHead::parse(&again).unwrap_or_else(|e| {
        panic!(
            "passthrough headers do not re-parse ({e}): {:?}",
            String::from_utf8_lossy(&head.passthrough)
        )
    });
    assert_eq!(
        re.passthrough, head.passthrough,
        "passthrough is not stable"
    );
    assert_eq!(re.event_stream, head.event_stream);
    assert_eq!(
        re.framing,
        ResponseFraming::UntilClose,
        "framing header passed on"
    );
    for line in head
        .passthrough
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
    {
        let name = line.split(|b| *b == b':').next().unwrap_or(line);
        assert!(
            !is_hop_by_hop(name),
            "hop-by-hop header passed on: {line:?}"
        );
    }
    let body = &data[end..];
    match head.framing {
        ResponseFraming::Chunked => chunked_equivalence(body),
        ResponseFraming::Length(n) => {
            // BodyReader::Length hands out min(remaining, buffered) per read.
            let mut rem = n;
            let mut got = 0u64;
            for p in pieces(body, 1) {
                let take = rem.min(p.len() as u64);
                rem -= take;
                got += take;
            }
            assert_eq!(got, n.min(body.len() as u64));
        }
        ResponseFraming::Empty | ResponseFraming::UntilClose => {}
    }
}

/// A configuration file's text, through the same parse and validation as `tollgate validate`.
pub fn config(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_yaml(src, &|name| Some(format!("key-{name}"))) {
        Ok(cfg) => {
            for (i, m) in cfg.models.iter().enumerate() {
                assert!(
                    m.targets.iter().all(|t| t.provider < cfg.providers.len()),
                    "model {i} has no provider"
                );
                let (j, _) = cfg.model_by_name(&m.name).expect("model found by name");
                assert_eq!(i, j, "model_by_name({:?})", m.name);
            }
            assert_eq!(cfg.intercept.len(), cfg.intercept_routes.len());
            for r in &cfg.intercept_routes {
                assert!(cfg.intercept_route(r.dst).is_some());
            }
            assert!(cfg.workers >= 1);
        }
        Err(problems) => {
            assert!(!problems.0.is_empty(), "an error without problems");
            // libyaml reports an error at the end of input one line past the last one when
            // the text does not end with a line break; any other line must be in the text.
            let lines = line_count(src);
            let last = lines + usize::from(!src.is_empty() && !ends_with_break(src));
            for p in &problems.0 {
                if let Some(l) = p.line {
                    assert!(
                        (1..=last).contains(&l),
                        "problem {p} points at line {l}; the text has {lines}"
                    );
                }
            }
            let _ = problems.to_string();
        }
    }
}

/// How a chunked decode ended, with the bytes left after it.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Done { rest: Vec<u8> },
    NeedMore,
    Error(HttpError),
}

/// Decodes in one piece and in two input-derived splits; all three must agree.
fn chunked_equivalence(data: &[u8]) {
    let one = decode_chunked(&[data]);
    for salt in [1, 2] {
        let split = decode_chunked(&pieces(data, salt));
        assert_eq!(
            split, one,
            "chunked decoding depends on how the input is split into reads"
        );
    }
}

fn decode_chunked(pieces: &[&[u8]]) -> (Vec<u8>, Outcome) {
    let mut dec = ChunkedDecoder::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        buf.extend_from_slice(piece);
        loop {
            match dec.next(&mut buf) {
                Ok(Decoded::Data(d)) => {
                    // An empty piece would be relayed as a zero-size chunk: the end of the body.
                    assert!(!d.is_empty(), "the decoder handed out an empty data piece");
                    out.extend_from_slice(&d);
                }
                Ok(Decoded::NeedMore) => break,
                Ok(Decoded::Done) => {
                    assert!(dec.is_done());
                    let mut rest = buf.to_vec();
                    for p in &pieces[i + 1..] {
                        rest.extend_from_slice(p);
                    }
                    return (out, Outcome::Done { rest });
                }
                Err(e) => return (out, Outcome::Error(e)),
            }
        }
    }
    (out, Outcome::NeedMore)
}

/// The head end as `read` finds it: searching again after each read from where it left off.
fn head_end_incremental(pieces: &[&[u8]]) -> Option<usize> {
    let mut buf = Vec::new();
    let mut scanned = 0;
    for p in pieces {
        buf.extend_from_slice(p);
        if let Some(end) = find_head_end(&buf, scanned) {
            return Some(end);
        }
        scanned = buf.len();
    }
    None
}

fn split_frames(pieces: &[&[u8]]) -> (Vec<Bytes>, Option<Bytes>) {
    let mut s = FrameSplitter::default();
    let mut frames = Vec::new();
    for p in pieces {
        s.push(Bytes::copy_from_slice(p), |f| frames.push(f));
    }
    (frames, s.take_rest())
}

/// Lines in `src` as YAML counts them (LF, CRLF, CR, NEL, LS and PS all break lines).
fn line_count(src: &str) -> usize {
    let mut n = 1;
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                n += 1;
            }
            '\n' | '\u{85}' | '\u{2028}' | '\u{2029}' => n += 1,
            _ => {}
        }
    }
    n
}

fn ends_with_break(src: &str) -> bool {
    src.ends_with(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'])
}

/// Splits `data` into non-empty pieces at points derived from the input: `salt` 1 gives pieces
/// of 1 to 64 bytes, any other salt pieces of 1 to 8 bytes.
fn pieces(data: &[u8], salt: u64) -> Vec<&[u8]> {
    let max = if salt == 1 { 64 } else { 8 };
    // FNV-1a of the input seeds an xorshift generator.
    let mut x = data.iter().fold(0xcbf2_9ce4_8422_2325 ^ salt, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    }) | 1;
    let mut out = Vec::with_capacity(data.len() / (max / 2 + 1) + 1);
    let mut rest = data;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = (1 + (x % max as u64) as usize).min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

/// A Batch API upload: the first line is the multipart boundary, the rest the body. Parts must
/// lie inside the body; the `file` part (and the whole body, so the JSONL checks are reached
/// without multipart structure too) goes through the batch input validation, and an accepted
/// input has unique `custom_id`s and object bodies that parse again.
pub fn batch_upload(data: &[u8]) {
    let (first, body) = match memchr::memchr(b'\n', data) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[data.len()..]),
    };
    check_batch_input(body);
    let content_type = format!(
        "multipart/form-data; boundary={}",
        String::from_utf8_lossy(first).trim()
    );
    let Some(boundary) = crate::batch::multipart::boundary(&content_type) else {
        return;
    };
    let Ok(parts) = crate::batch::multipart::parse(body, boundary) else {
        return;
    };
    assert!(parts.len() <= crate::batch::multipart::MAX_PARTS);
    let range = body.as_ptr_range();
    for p in &parts {
        let r = p.data.as_ptr_range();
        assert!(
            r.start >= range.start && r.end <= range.end,
            "a part outside the body"
        );
        if p.name == "file" {
            check_batch_input(p.data);
        }
    }
}

fn check_batch_input(bytes: &[u8]) {
    if let Ok(lines) = crate::batch::input::parse(bytes) {
        let ids: std::collections::HashSet<&str> =
            lines.iter().map(|l| l.custom_id.as_str()).collect();
        assert_eq!(ids.len(), lines.len(), "duplicate custom_id accepted");
        for l in &lines {
            let v: serde_json::Value =
                serde_json::from_slice(&l.body).expect("a rewritten body parses");
            assert!(v.is_object(), "a body that is not an object");
            assert!(crate::batch::ENDPOINTS.contains(&l.url.as_str()));
        }
    }
}

/// Guardrail detectors and rewrites: the input is scanned as a JSON value (and, when it is
/// UTF-8, as text). Ranges must be sorted, disjoint and in bounds; a re-scan of the redacted or
/// pseudonymized output finds nothing in or around the placeholders except values that a
/// rewritten neighbour had hidden (see `near_rewrite`); a valid JSON input stays valid through
/// redact, pseudonymize and restore; and for text, restoring the pseudonymized text in
/// input-derived pieces gives back the input exactly.
pub fn guard_scan(data: &[u8]) {
    use crate::guard::{pseudonymize, redact, Detectors, Encoding, Match, Restorer};
    static DET: std::sync::OnceLock<Detectors> = std::sync::OnceLock::new();
    let det = DET.get_or_init(|| {
        let cfg = crate::guard::DetectorConfig {
            classes: crate::guard::Class::builtin().collect(),
            custom_patterns: vec![("ticket".into(), r"TKT-[0-9]{4}".into())],
            word_lists: vec![("codename".into(), vec!["bluebird".into()])],
        };
        Detectors::new(&cfg).unwrap_or_else(|_| Detectors::all())
    });
    let check = |m: &[Match], len: usize| {
        let mut last = 0;
        for x in m {
            assert!(
                x.range.start >= last && x.range.start < x.range.end && x.range.end <= len,
                "bad range {:?} (len {len})",
                x.range
            );
            last = x.range.end;
        }
    };
    let m = det.scan_json(data);
    check(&m, data.len());
    let valid = serde_json::from_slice::<serde_json::Value>(data).is_ok();
    let red = redact(data, &m);
    near_rewrite(&red, &det.scan_json(&red), b'[', b']');
    let (ps, map) = pseudonymize(data, &m, Encoding::Json);
    near_rewrite(&ps, &det.scan_json(&ps), b'<', b'>');
    let mut restored = Vec::new();
    let mut r = Restorer::new(&map, Encoding::Json);
    for piece in pieces(&ps, 2) {
        r.push(piece, &mut restored);
        assert!(r.held() < map.max_placeholder_len().max(1), "held too much");
    }
    r.finish(&mut restored);
    if valid {
        for (what, out) in [
            ("redacted", &red),
            ("pseudonymized", &ps),
            ("restored", &restored),
        ] {
            assert!(
                serde_json::from_slice::<serde_json::Value>(out).is_ok(),
                "{what} body is no longer JSON"
            );
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let m = det.scan_text(text);
    check(&m, text.len());
    for x in &m {
        assert!(text.is_char_boundary(x.range.start) && text.is_char_boundary(x.range.end));
    }
    let (ps, map) = pseudonymize(data, &m, Encoding::Text);
    if let Ok(ps_text) = std::str::from_utf8(&ps) {
        near_rewrite(&ps, &det.scan_text(ps_text), b'<', b'>');
    }
    let mut back = Vec::new();
    let mut r = Restorer::new(&map, Encoding::Text);
    for piece in pieces(&ps, 3) {
        r.push(piece, &mut back);
    }
    r.finish(&mut back);
    assert_eq!(back, data, "restore(pseudonymize(text)) != text");
}

/// A re-scan of rewritten output may only find values that a rewritten neighbour hid from the
/// first scan (digits glued to a card number, a `+` right after a matched word, a token whose
/// end was glued to a matched ticket id): such a find sits within a few bytes of a placeholder. Anything else (a match inside
/// a placeholder, or far from any) means a rewrite left a value behind.
fn near_rewrite(out: &[u8], found: &[crate::guard::Match], open: u8, close: u8) {
    for m in found {
        let inside = out[m.range.clone()]
            .iter()
            .any(|&b| b == open || b == close);
        let from = m.range.start.saturating_sub(64);
        let to = out.len().min(m.range.end + 64);
        let beside =
            out[from..m.range.start].contains(&close) || out[m.range.end..to].contains(&open);
        assert!(
            !inside && beside,
            "re-scan found {:?} at {:?}",
            String::from_utf8_lossy(&out[m.range.clone()]),
            m.range
        );
    }
}

/// A cache spill file (`cache/spill.rs`): decoding never panics, and what it accepts encodes
/// back to bytes that decode to the same record. The input is tried as it is and with its
/// CRC-32 appended, so the fuzzer reaches the parsing past the checksum.
pub fn cache_spill(data: &[u8]) {
    use crate::cache::spill::{decode, encode};
    let mut fixed = data.to_vec();
    fixed.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    for bytes in [data.to_vec(), fixed] {
        if let Ok(r) = decode(Bytes::from(bytes)) {
            let once = encode(&r);
            let again = decode(Bytes::from(once.clone())).expect("an encoded record decodes");
            // Compared as bytes: an embedding may hold NaNs, which are never equal.
            assert_eq!(encode(&again), once, "a record changes through the file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_input() {
        let data: Vec<u8> = (0..=255).collect();
        for salt in [1, 2] {
            let p = pieces(&data, salt);
            assert!(p.iter().all(|p| !p.is_empty()));
            assert_eq!(p.concat(), data);
        }
        assert!(pieces(b"", 1).is_empty());
    }

    #[test]
    fn yaml_line_count() {
        assert_eq!(line_count(""), 1);
        assert_eq!(line_count("a\r\nb\rc\nd\u{2028}"), 5);
    }
}
