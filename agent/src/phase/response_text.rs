//! The response text as the guardrails want the client to read it. Relay passes the
//! provider's body through here when the request was pseudonymized (the originals go back in)
//! or guardrails cover the response (`on: response|both`: what they find is redacted, logged,
//! or the response is blocked).
//!
//! * Plain bodies: restored piece by piece as they arrive (a placeholder split across pieces is
//!   held back until it completes: at most one placeholder length). When the response is
//!   scanned, relay keeps the body whole and hands it over at the end ([`ResponseText::plain`]):
//!   the text fields of the API's shape are scanned, and a block becomes an error response.
//! * Event streams: per content delta. Models stream a few characters per event, so
//!   `<EMAIL_1>` or `bob@example.com` arrive in pieces. Each choice (or content block, or
//!   output part) has its own lane: a [`StreamScanner`] (holds back at most one match length)
//!   then a [`Restorer`] (holds back at most one placeholder), fed the raw JSON string of its
//!   deltas; each event carries what its lane let out. What a lane still holds when its choice
//!   ends (`finish_reason`, `content_block_stop`, `output_text.done`) or the stream ends
//!   (`[DONE]`, `message_stop`, `response.completed`) goes out in a delta event of the same
//!   shape, before the event that ends it. Events without a text delta (a `done` event's full
//!   text, a final response object) are scanned and restored within the event.
//!
//! Scanning runs before restoring, so the values the client itself sent (and gets back) are
//! not taken for values the provider produced. Not covered: tool-call arguments and logprobs
//! inside events that also carry a text delta, and restoring placeholders in tool-call
//! arguments (JSON inside a JSON string would need a second level of escaping).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use sonic_rs::{JsonValueTrait, LazyValue};

use crate::api::Api;
use crate::guard::{
    redaction_marker, settle_overlaps, Action, Encoding, Found, Match, PseudoMap, ResponseRule,
    Restorer, StreamScanner,
};
use crate::metering::sse::frame_data;

/// Rewrites one response.
pub struct ResponseText {
    map: Option<Arc<PseudoMap>>,
    rules: Option<Arc<[ResponseRule]>>,
    /// The wire format of the frames it is given (the provider's).
    api: Api,
    body: Option<Restorer>,
    /// One lane per open stream key (choice index, content block, output part).
    lanes: Vec<(u64, Lane)>,
    /// Restores within one event or document (its held bytes are always flushed).
    scratch: Option<Restorer>,
    /// The previous event (by reference): where a delta event Tollgate writes itself takes the
    /// ids the current event lacks. Read only then, so events are not parsed for it.
    previous: Option<Bytes>,
    /// What the response rules found and acted on.
    found: Vec<Found>,
    blocked: bool,
    /// A text delta was seen: whole events (a `done` event repeating the text) are then
    /// rewritten without counting their findings again.
    seen_delta: bool,
}

/// One text stream's filters: scan, then restore.
struct Lane {
    scan: Option<StreamScanner>,
    restore: Option<Restorer>,
    /// What the scanner released, on its way to the restorer (reused across deltas).
    between: Vec<u8>,
}

impl Lane {
    fn held(&self) -> usize {
        self.scan.as_ref().map_or(0, StreamScanner::held)
            + self.restore.as_ref().map_or(0, Restorer::held)
    }

    /// Feeds raw JSON string bytes; with `last`, flushes everything held.
    fn push(&mut self, raw: &[u8], last: bool, out: &mut Vec<u8>, found: &mut Vec<Found>) {
        match (&mut self.scan, &mut self.restore) {
            (None, None) => out.extend_from_slice(raw),
            (Some(s), None) => s.push(raw, last, out, found),
            (scan, Some(r)) => {
                let raw = match scan {
                    Some(s) => {
                        self.between.clear();
                        s.push(raw, last, &mut self.between, found);
                        &self.between[..]
                    }
                    None => raw,
                };
                r.push(raw, out);
                if last {
                    r.finish(out);
                }
            }
        }
    }

    fn blocked(&self) -> bool {
        self.scan.as_ref().is_some_and(StreamScanner::blocked)
    }
}

/// What one event carries that the lanes care about.
#[derive(Default)]
struct Parsed {
    /// (stream key, span of the raw JSON string of the delta text) in `data`.
    deltas: Vec<(u64, Range<usize>)>,
    /// Stream keys this event ends.
    ends: Vec<u64>,
    /// The event ends the whole stream.
    last: bool,
}

impl ResponseText {
    pub fn new(
        map: Option<Arc<PseudoMap>>,
        rules: Option<Arc<[ResponseRule]>>,
        api: Api,
    ) -> ResponseText {
        ResponseText {
            scratch: map.as_ref().map(|m| Restorer::new(m, Encoding::Json)),
            map,
            rules,
            api,
            body: None,
            lanes: Vec::new(),
            previous: None,
            found: Vec::new(),
            blocked: false,
            seen_delta: false,
        }
    }

    /// Whether the response is scanned (relay then keeps a plain body whole).
    pub fn scans(&self) -> bool {
        self.rules.is_some()
    }

    /// A `block` rule matched: the client must get no more of the response.
    pub fn blocked(&self) -> bool {
        self.blocked
    }

    /// The finding that blocked the response.
    pub fn blocking(&self) -> Option<&Found> {
        self.found.iter().rev().find(|f| f.action == Action::Block)
    }

    /// What the response rules found (taken once, at the end).
    pub fn take_found(&mut self) -> Vec<Found> {
        std::mem::take(&mut self.found)
    }

    /// A piece of a plain (non-stream) body that is only restored, not scanned. A piece with no
    /// `<` while nothing is held passes by reference.
    pub fn body_piece(&mut self, piece: Bytes) -> Bytes {
        let Some(map) = &self.map else {
            return piece;
        };
        let r = self
            .body
            .get_or_insert_with(|| Restorer::new(map, Encoding::Json));
        if r.held() == 0 && memchr::memchr(b'<', &piece).is_none() {
            return piece;
        }
        let mut out = Vec::with_capacity(piece.len() + 32);
        r.push(&piece, &mut out);
        Bytes::from(out)
    }

    /// The end of a plain body: what was held back.
    pub fn body_end(&mut self) -> Option<Bytes> {
        let mut out = Vec::new();
        self.body.take()?.finish(&mut out);
        (!out.is_empty()).then(|| Bytes::from(out))
    }

    /// A whole plain body in `api`'s shape (kept whole, or translated): its text fields
    /// scanned, then placeholders restored. Check [`blocked`](Self::blocked) after.
    pub fn plain(&mut self, api: Api, doc: &[u8]) -> Vec<u8> {
        let scanned;
        let doc = match &self.rules {
            Some(rules) => {
                let spans = text_spans(api, doc);
                let mut found = Vec::new();
                for r in rules.iter() {
                    for m in r.detectors.scan_spans(doc, &spans) {
                        found.push((m, r.action, r.rule));
                    }
                }
                scanned = self.act(doc, settle_overlaps(found), true);
                &scanned[..]
            }
            None => doc,
        };
        let mut out = Vec::with_capacity(doc.len() + 32);
        self.restore_into(doc, &mut out);
        out
    }

    /// One event-stream frame; what the client should get goes to `out`.
    pub fn frame(&mut self, frame: Bytes, out: &mut Vec<Bytes>) {
        if self.blocked {
            return;
        }
        // Unscanned, most events hold no `<`: with nothing held back they leave as they came,
        // unparsed (a lane with nothing held has nothing to flush when its choice ends).
        if self.rules.is_none() && self.held() == 0 && memchr::memchr(b'<', &frame).is_none() {
            self.previous = Some(frame.clone());
            out.push(frame);
            return;
        }
        let previous = self.previous.replace(frame.clone());
        let Some(data) = frame_data(&frame) else {
            out.push(frame);
            return;
        };
        let data: &[u8] = match data {
            std::borrow::Cow::Borrowed(d) => d,
            // A multi-line data field: rewritten within the frame only.
            std::borrow::Cow::Owned(_) => {
                let doc = self.whole_event(&frame);
                if !self.blocked {
                    out.push(Bytes::from(doc));
                }
                return;
            }
        };
        let at = data.as_ptr() as usize - frame.as_ptr() as usize;
        let parsed = if data.first() == Some(&b'{') {
            parse(self.api, data)
        } else {
            Parsed {
                last: data == b"[DONE]",
                ..Parsed::default()
            }
        };
        // Keys that end here without a delta of their own, and at the stream's end every key:
        // what they hold goes out first, in an event of their own.
        let flush: Vec<u64> = if parsed.last {
            self.lanes.iter().map(|(k, _)| *k).collect()
        } else {
            parsed
                .ends
                .iter()
                .copied()
                .filter(|k| !parsed.deltas.iter().any(|(d, _)| d == k))
                .collect()
        };
        for key in flush {
            if let Some(held) = self.close(key) {
                let e = delta_event(self.api, key, &held, Some(&frame), previous.as_deref());
                out.push(e);
            }
            if self.blocked {
                return;
            }
        }
        if parsed.deltas.is_empty() {
            let doc = self.whole_event(&frame[..]);
            if !self.blocked {
                out.push(Bytes::from(doc));
            }
            return;
        }
        self.seen_delta = true;
        let mut body = Vec::with_capacity(frame.len() + 32);
        body.extend_from_slice(&frame[..at]);
        let mut pos = 0;
        for (key, span) in &parsed.deltas {
            self.restore_into(&data[pos..span.start], &mut body);
            body.push(b'"');
            let inner = &data[span.start + 1..span.end - 1];
            let end = parsed.ends.contains(key);
            let mut lane = self.take_lane(*key);
            lane.push(inner, end, &mut body, &mut self.found);
            self.blocked |= lane.blocked();
            if !end {
                self.lanes.push((*key, lane));
            }
            if self.blocked {
                return;
            }
            body.push(b'"');
            pos = span.end;
        }
        self.restore_into(&data[pos..], &mut body);
        body.extend_from_slice(&frame[at + data.len()..]);
        out.push(Bytes::from(body));
    }

    /// The stream ended without a closing event (cut short): what is held goes out.
    pub fn finish_stream(&mut self, out: &mut Vec<Bytes>) {
        let keys: Vec<u64> = self.lanes.iter().map(|(k, _)| *k).collect();
        for key in keys {
            if let Some(held) = self.close(key) {
                if self.blocked {
                    return;
                }
                let e = delta_event(self.api, key, &held, self.previous.as_deref(), None);
                out.push(e);
            }
        }
    }

    /// Bytes held back over all open lanes.
    pub fn held(&self) -> usize {
        self.lanes.iter().map(|(_, l)| l.held()).sum()
    }

    /// `key`'s lane, out of the list (the caller puts it back unless it ended).
    fn take_lane(&mut self, key: u64) -> Lane {
        match self.lanes.iter().position(|(k, _)| *k == key) {
            Some(i) => self.lanes.swap_remove(i).1,
            None => Lane {
                scan: self.rules.clone().map(StreamScanner::new),
                restore: self.map.as_ref().map(|m| Restorer::new(m, Encoding::Json)),
                between: Vec::new(),
            },
        }
    }

    /// Ends `key`'s lane; returns what it held, if anything.
    fn close(&mut self, key: u64) -> Option<Vec<u8>> {
        let i = self.lanes.iter().position(|(k, _)| *k == key)?;
        let (_, mut lane) = self.lanes.swap_remove(i);
        let mut held = Vec::new();
        lane.push(&[], true, &mut held, &mut self.found);
        self.blocked |= lane.blocked();
        (!held.is_empty()).then_some(held)
    }

    /// An event with no text delta, scanned and restored as a whole. Its findings are counted
    /// only while no delta has been seen (a `done` event repeats text already counted).
    fn whole_event(&mut self, doc: &[u8]) -> Vec<u8> {
        let scanned;
        let doc = match &self.rules {
            Some(rules) => {
                let mut found = Vec::new();
                for r in rules.iter() {
                    for m in r.detectors.scan_json(doc) {
                        found.push((m, r.action, r.rule));
                    }
                }
                scanned = self.act(doc, settle_overlaps(found), !self.seen_delta);
                &scanned[..]
            }
            None => doc,
        };
        let mut out = Vec::with_capacity(doc.len() + 32);
        self.restore_into(doc, &mut out);
        out
    }

    /// `doc` with `found`'s actions applied (redacted, or left for `log`); a `block` marks the
    /// response blocked. With `count`, the findings are recorded.
    fn act(&mut self, doc: &[u8], found: Vec<(Match, Action, u16)>, count: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(doc.len() + 32);
        let mut pos = 0;
        for (m, action, rule) in found {
            if count || action == Action::Block {
                self.found.push(Found {
                    class: m.class.clone(),
                    action,
                    rule,
                });
            }
            match action {
                Action::Log => continue,
                Action::Block => {
                    self.blocked = true;
                    return Vec::new();
                }
                Action::Redact | Action::Pseudonymize => {
                    out.extend_from_slice(&doc[pos..m.range.start]);
                    out.extend_from_slice(&redaction_marker(&m.class));
                    pos = m.range.end;
                }
            }
        }
        out.extend_from_slice(&doc[pos..]);
        out
    }

    /// `doc` with every whole placeholder restored (JSON-escaped), appended to `out`; copied
    /// as it is when nothing was pseudonymized or it holds no `<`.
    fn restore_into(&mut self, doc: &[u8], out: &mut Vec<u8>) {
        match &mut self.scratch {
            Some(r) if memchr::memchr(b'<', doc).is_some() => {
                r.push(doc, out);
                r.finish(out);
            }
            _ => out.extend_from_slice(doc),
        }
    }
}

/// The raw JSON of `fields` in an event's top-level object (`None` where absent).
fn raw_fields<const N: usize>(frame: Option<&[u8]>, fields: [&str; N]) -> [Option<Vec<u8>>; N] {
    let mut out: [Option<Vec<u8>>; N] = std::array::from_fn(|_| None);
    let Some(data) = frame.and_then(frame_data) else {
        return out;
    };
    for item in sonic_rs::to_object_iter(&data[..]) {
        let Ok((k, v)) = item else { break };
        if let Some(i) = fields.iter().position(|f| *f == &*k) {
            out[i] = Some(v.as_raw_str().as_bytes().to_vec());
        }
    }
    out
}

/// A delta event carrying `text` (raw JSON string bytes) for `key`, in the stream's shape; its
/// ids (`id`, `created`, `model`, or a Responses `item_id`) come from `current`, else from
/// `previous`. Only written when a restorer still held bytes at an end, so parsing here is rare.
fn delta_event(
    api: Api,
    key: u64,
    text: &[u8],
    current: Option<&[u8]>,
    previous: Option<&[u8]>,
) -> Bytes {
    let fields = |names| {
        let (now, before) = (raw_fields(current, names), raw_fields(previous, names));
        let mut it = now.into_iter().zip(before).map(|(a, b)| a.or(b));
        std::array::from_fn::<_, 3, _>(|_| it.next().flatten())
    };
    let mut e = Vec::with_capacity(160 + text.len());
    let head = |e: &mut Vec<u8>, object: &[u8]| {
        let [id, created, model] = fields(["id", "created", "model"]);
        e.extend_from_slice(b"data: {\"id\":");
        e.extend_from_slice(id.as_deref().unwrap_or(b"\"\""));
        e.extend_from_slice(b",\"object\":\"");
        e.extend_from_slice(object);
        e.extend_from_slice(b"\",\"created\":");
        e.extend_from_slice(created.as_deref().unwrap_or(b"0"));
        e.extend_from_slice(b",\"model\":");
        e.extend_from_slice(model.as_deref().unwrap_or(b"\"\""));
        e.extend_from_slice(format!(",\"choices\":[{{\"index\":{key},").as_bytes());
    };
    match api {
        Api::ChatCompletions | Api::Embeddings => {
            head(&mut e, b"chat.completion.chunk");
            e.extend_from_slice(b"\"delta\":{\"content\":\"");
            e.extend_from_slice(text);
            e.extend_from_slice(b"\"},\"finish_reason\":null}]}\n\n");
        }
        Api::Completions => {
            head(&mut e, b"text_completion");
            e.extend_from_slice(b"\"text\":\"");
            e.extend_from_slice(text);
            e.extend_from_slice(b"\",\"finish_reason\":null}]}\n\n");
        }
        Api::Messages => {
            e.extend_from_slice(
                format!(
                    "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":{key},\"delta\":{{\"type\":\"text_delta\",\"text\":\""
                )
                .as_bytes(),
            );
            e.extend_from_slice(text);
            e.extend_from_slice(b"\"}}\n\n");
        }
        Api::Responses => {
            let [item_id, ..] = fields(["item_id", "", ""]);
            e.extend_from_slice(b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"item_id\":");
            e.extend_from_slice(item_id.as_deref().unwrap_or(b"\"\""));
            e.extend_from_slice(
                format!(
                    ",\"output_index\":{},\"content_index\":{},\"delta\":\"",
                    key >> 32,
                    key & 0xffff_ffff
                )
                .as_bytes(),
            );
            e.extend_from_slice(text);
            e.extend_from_slice(b"\"}\n\n");
        }
    }
    Bytes::from(e)
}

fn span_of(data: &[u8], v: &LazyValue<'_>) -> Range<usize> {
    let raw = v.as_raw_str().as_bytes();
    let start = raw.as_ptr() as usize - data.as_ptr() as usize;
    start..start + raw.len()
}

/// The deltas, ends and ids of one event's data. Anything unexpected yields fewer deltas (the
/// event is then restored within itself), never an error.
fn parse(api: Api, data: &[u8]) -> Parsed {
    let mut p = Parsed::default();
    match api {
        Api::ChatCompletions | Api::Completions | Api::Embeddings => parse_choices(data, &mut p),
        Api::Messages => parse_messages(data, &mut p),
        Api::Responses => parse_responses(data, &mut p),
    }
    p.deltas.sort_by_key(|(_, r)| r.start);
    p
}

fn parse_choices(data: &[u8], p: &mut Parsed) {
    let Some(choices) = sonic_rs::get(data, ["choices"])
        .ok()
        .and_then(|v| v.into_array_iter())
    else {
        return;
    };
    for choice in choices.flatten() {
        let (mut index, mut span, mut end) = (0u64, None, false);
        for (k, v) in choice.into_object_iter().into_iter().flatten().flatten() {
            match &*k {
                "index" => index = v.as_u64().unwrap_or(0),
                "text" if v.is_str() => span = Some(span_of(data, &v)),
                "finish_reason" => end = !v.is_null(),
                "delta" => span = string_member(data, v, "content").or(span),
                _ => {}
            }
        }
        if let Some(s) = span {
            p.deltas.push((index, s));
        }
        if end {
            p.ends.push(index);
        }
    }
}

/// The span of `obj`'s string member `name`, if it has one.
fn string_member(data: &[u8], obj: LazyValue<'_>, name: &str) -> Option<Range<usize>> {
    obj.into_object_iter()?
        .flatten()
        .find(|(k, v)| &**k == name && v.is_str())
        .map(|(_, v)| span_of(data, &v))
}

fn parse_messages(data: &[u8], p: &mut Parsed) {
    let (mut ty, mut index, mut text) = (String::new(), 0u64, None);
    for item in sonic_rs::to_object_iter(data) {
        let Ok((k, v)) = item else { return };
        match &*k {
            "type" => ty = v.as_str().unwrap_or_default().to_string(),
            "index" => index = v.as_u64().unwrap_or(0),
            "delta" => text = string_member(data, v, "text"),
            _ => {}
        }
    }
    match ty.as_str() {
        "content_block_delta" => {
            if let Some(s) = text {
                p.deltas.push((index, s));
            }
        }
        "content_block_stop" => p.ends.push(index),
        "message_stop" => p.last = true,
        _ => {}
    }
}

fn parse_responses(data: &[u8], p: &mut Parsed) {
    let (mut ty, mut output, mut content, mut delta) = (String::new(), 0u64, 0u64, None);
    for item in sonic_rs::to_object_iter(data) {
        let Ok((k, v)) = item else { return };
        match &*k {
            "type" => ty = v.as_str().unwrap_or_default().to_string(),
            "output_index" => output = v.as_u64().unwrap_or(0),
            "content_index" => content = v.as_u64().unwrap_or(0),
            "delta" if v.is_str() => delta = Some(span_of(data, &v)),
            _ => {}
        }
    }
    let key = (output << 32) | (content & 0xffff_ffff);
    match ty.as_str() {
        "response.output_text.delta" => {
            if let Some(s) = delta {
                p.deltas.push((key, s));
            }
        }
        "response.output_text.done" => p.ends.push(key),
        "response.completed" | "response.incomplete" | "response.failed" => p.last = true,
        _ => {}
    }
}

/// Spans (raw JSON string values, quotes included) of the generated text in a plain
/// response of `api`'s shape: chat `choices[].message.content`, completions `choices[].text`,
/// messages `content[].text`, responses `output[].content[].text`. Anything else yields none.
fn text_spans(api: Api, doc: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let each = |path: &str| -> Vec<LazyValue<'_>> {
        sonic_rs::get(doc, [path])
            .ok()
            .and_then(|v| v.into_array_iter())
            .map(|it| it.flatten().collect())
            .unwrap_or_default()
    };
    match api {
        Api::ChatCompletions | Api::Completions | Api::Embeddings => {
            for choice in each("choices") {
                let text = choice.get("text").filter(|v| v.is_str());
                let content = sonic_rs::get(choice.as_raw_str(), ["message", "content"])
                    .ok()
                    .filter(|v| v.is_str());
                if let Some(v) = text.or(content) {
                    out.push(span_of(doc, &v));
                }
            }
        }
        Api::Messages => {
            for block in each("content") {
                if let Some(v) = block.get("text").filter(|v| v.is_str()) {
                    out.push(span_of(doc, &v));
                }
            }
        }
        Api::Responses => {
            for item in each("output") {
                let Some(parts) = item.get("content").and_then(|c| c.into_array_iter()) else {
                    continue;
                };
                for part in parts.flatten() {
                    if let Some(v) = part.get("text").filter(|v| v.is_str()) {
                        out.push(span_of(doc, &v));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::{pseudonymize, Class, Match};
    use proptest::prelude::*;

    fn map() -> std::sync::Arc<PseudoMap> {
        let body = br#"{"q":"mail bob@example.com now"}"#;
        let m = [Match {
            class: Class::Email,
            range: 11..26,
        }];
        let (out, map) = pseudonymize(body, &m, Encoding::Json);
        assert_eq!(out, br#"{"q":"mail <EMAIL_1> now"}"#);
        std::sync::Arc::new(map)
    }

    fn chat(content: &str, finish: Option<&str>) -> Bytes {
        let f = finish.map_or("null".to_string(), |f| format!("\"{f}\""));
        Bytes::from(format!(
            "data: {{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"finish_reason\":{f}}}]}}\n\n",
            serde_json::to_string(content).unwrap()
        ))
    }

    fn content_of(frames: &[Bytes]) -> String {
        let mut s = String::new();
        for f in frames {
            let Some(d) = frame_data(f) else { continue };
            if &*d == b"[DONE]" {
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(&d).unwrap();
            if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                s.push_str(c);
            }
            if let Some(c) = v["delta"]["text"].as_str() {
                s.push_str(c);
            }
        }
        s
    }

    #[test]
    fn a_placeholder_split_over_chat_events_is_restored() {
        let mut r = ResponseText::new(Some(map()), None, Api::ChatCompletions);
        let mut out = Vec::new();
        for piece in ["Write to <EM", "AIL", "_1> today", " <EMAIL_1>."] {
            r.frame(chat(piece, None), &mut out);
        }
        r.frame(chat("", Some("stop")), &mut out);
        r.frame(Bytes::from_static(b"data: [DONE]\n\n"), &mut out);
        assert_eq!(
            content_of(&out),
            "Write to bob@example.com today bob@example.com."
        );
        // Held back: never more than one placeholder.
        assert!(out.iter().all(|f| !f.is_empty()));
    }

    #[test]
    fn a_lookalike_held_at_the_end_is_flushed_before_done() {
        let mut r = ResponseText::new(Some(map()), None, Api::ChatCompletions);
        let mut out = Vec::new();
        r.frame(chat("a <EMA", None), &mut out);
        r.frame(
            Bytes::from_static(
                b"data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
            ),
            &mut out,
        );
        r.frame(Bytes::from_static(b"data: [DONE]\n\n"), &mut out);
        assert_eq!(content_of(&out), "a <EMA");
        let written = frame_data(&out[1]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&written).unwrap();
        assert_eq!(v["id"], "c1");
        assert_eq!(v["created"], 7);
    }

    #[test]
    fn anthropic_text_deltas_are_restored_per_block() {
        let mut r = ResponseText::new(Some(map()), None, Api::Messages);
        let mut out = Vec::new();
        let ev = |i: u32, t: &str| {
            Bytes::from(format!(
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":{i},\"delta\":{{\"type\":\"text_delta\",\"text\":{}}}}}\n\n",
                serde_json::to_string(t).unwrap()
            ))
        };
        r.frame(ev(0, "hi <EMAIL"), &mut out);
        r.frame(ev(0, "_1>"), &mut out);
        r.frame(ev(0, " and <EMAIL_"), &mut out);
        r.frame(
            Bytes::from_static(
                b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            ),
            &mut out,
        );
        assert_eq!(content_of(&out), "hi bob@example.com and <EMAIL_");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Any frame, in any API's shape or none: no panic, and a frame with no `<` in it
        /// leaves exactly as it came (restoring never touches bytes around placeholders).
        #[test]
        fn arbitrary_frames_never_panic_and_clean_ones_pass_unchanged(
            api in proptest::sample::select(vec![Api::ChatCompletions, Api::Completions, Api::Messages, Api::Responses]),
            frames in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..64),
                    "(event: [a-z_.]{1,20}\n)?data: \\{\"(type|choices|index|delta|text|content)\":[\\[\\{\"a-z0-9:,<>_ ]{0,40}\\}\n\n"
                        .prop_map(String::into_bytes),
                ],
                1..8,
            ),
        ) {
            let mut r = ResponseText::new(Some(map()), None, api);
            for f in frames {
                let clean = !f.contains(&b'<') && r.held() == 0;
                let mut out = Vec::new();
                r.frame(Bytes::from(f.clone()), &mut out);
                if clean && out.len() == 1 {
                    prop_assert_eq!(&out[0][..], &f[..]);
                }
            }
            let mut out = Vec::new();
            r.finish_stream(&mut out);
        }
    }

    #[test]
    fn plain_bodies_restore_across_pieces() {
        let mut r = ResponseText::new(Some(map()), None, Api::ChatCompletions);
        let mut out = Vec::new();
        // The last piece has no `<` and nothing is held: it passes by reference.
        for p in [&b"{\"c\":\"x <EMAIL"[..], b"_1> y", b" z\"}"] {
            out.extend_from_slice(&r.body_piece(Bytes::from_static(p)));
        }
        if let Some(b) = r.body_end() {
            out.extend_from_slice(&b);
        }
        assert_eq!(out, b"{\"c\":\"x bob@example.com y z\"}");
    }

    fn rules(classes: &str, action: Action) -> Arc<[ResponseRule]> {
        let det = crate::guard::Detectors::new(&crate::guard::DetectorConfig {
            classes: Class::parse(classes).unwrap(),
            ..Default::default()
        })
        .unwrap();
        Arc::from(vec![ResponseRule {
            detectors: Arc::new(det),
            action,
            rule: 0,
        }])
    }

    #[test]
    fn a_value_the_provider_streams_in_pieces_is_redacted_and_counted() {
        let mut r = ResponseText::new(
            None,
            Some(rules("email", Action::Redact)),
            Api::ChatCompletions,
        );
        let mut out = Vec::new();
        for piece in ["Mail ", "carol@exa", "mple.org", " or call."] {
            r.frame(chat(piece, None), &mut out);
        }
        r.frame(chat("", Some("stop")), &mut out);
        r.frame(Bytes::from_static(b"data: [DONE]\n\n"), &mut out);
        assert_eq!(content_of(&out), "Mail [REDACTED_EMAIL] or call.");
        assert_eq!(r.take_found().len(), 1);
        // Every event the client gets is valid JSON.
        for f in &out {
            let d = frame_data(f).unwrap();
            assert!(&*d == b"[DONE]" || serde_json::from_slice::<serde_json::Value>(&d).is_ok());
        }
    }

    #[test]
    fn the_clients_own_values_come_back_unscanned() {
        let mut r = ResponseText::new(
            Some(map()),
            Some(rules("email", Action::Redact)),
            Api::ChatCompletions,
        );
        let mut out = Vec::new();
        for piece in ["To <EMAIL", "_1> and x@y", ".io"] {
            r.frame(chat(piece, None), &mut out);
        }
        r.frame(chat("", Some("stop")), &mut out);
        assert_eq!(content_of(&out), "To bob@example.com and [REDACTED_EMAIL]");
    }

    #[test]
    fn a_blocked_stream_releases_nothing_of_the_value() {
        let mut r = ResponseText::new(None, Some(rules("secrets", Action::Block)), Api::Messages);
        let mut out = Vec::new();
        let ev = |t: &str| {
            Bytes::from(format!(
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{}}}}}\n\n",
                serde_json::to_string(t).unwrap()
            ))
        };
        for t in [
            "the key is AKIA",
            "IOSFODNN7EX",
            "AMPLE ok",
            &" more".repeat(30),
        ] {
            r.frame(ev(t), &mut out);
        }
        assert!(r.blocked());
        assert!(!content_of(&out).contains("AKIA"));
        assert_eq!(r.blocking().unwrap().class, Class::AwsKey);
    }

    #[test]
    fn plain_bodies_have_their_text_fields_scanned() {
        let mut r = ResponseText::new(
            None,
            Some(rules("email", Action::Redact)),
            Api::ChatCompletions,
        );
        let doc = br#"{"id":"a@b.io","choices":[{"index":0,"message":{"role":"assistant","content":"write to d@e.io"}}]}"#;
        let out = r.plain(Api::ChatCompletions, doc);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"id":"a@b.io","choices":[{"index":0,"message":{"role":"assistant","content":"write to [REDACTED_EMAIL]"}}]}"#
        );
        let mut r = ResponseText::new(None, Some(rules("email", Action::Block)), Api::Messages);
        r.plain(
            Api::Messages,
            br#"{"content":[{"type":"text","text":"d@e.io"}]}"#,
        );
        assert!(r.blocked());
    }
}
