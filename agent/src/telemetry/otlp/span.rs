//! A usage record as a GenAI client span (OpenTelemetry semantic conventions for generative AI:
//! `gen_ai.operation.name`, `gen_ai.request.model`, `gen_ai.response.model`,
//! `gen_ai.provider.name`, `gen_ai.usage.*`), plus Tollgate's attributes (`tollgate.*`: who,
//! which target, what it cost) and a `gen_ai.first_token` event at the time to first token.

use sha2::{Digest, Sha256};

use super::proto::{kv, Event, Span, Status, Value};
use crate::ledger::UsageRecord;

const SPAN_KIND_CLIENT: i32 = 3;
const STATUS_ERROR: i32 = 2;

/// The trace id of a request's span: the first 16 bytes of SHA-256 of its id.
pub fn trace_id_of(request_id: &str) -> [u8; 16] {
    let h = Sha256::digest(request_id.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&h[..16]);
    id
}

/// A W3C `traceparent` (`00-<trace id>-<parent span id>-<flags>`): its trace id and parent span
/// id, unless malformed or all zeros (which the specification says to ignore).
pub fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8])> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || flags.len() != 2
        || (version == "00" && parts.next().is_some())
    {
        return None;
    }
    fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
        if s.len() != N * 2 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut out = [0u8; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
        }
        Some(out)
    }
    let trace: [u8; 16] = hex(trace)?;
    let span: [u8; 8] = hex(span)?;
    hex::<1>(flags)?;
    (trace != [0; 16] && span != [0; 8]).then_some((trace, span))
}

/// The GenAI operation name of an API label.
fn operation(api: &str) -> &str {
    match api {
        "chat" | "messages" | "responses" => "chat",
        "completions" => "text_completion",
        "embeddings" => "embeddings",
        other => other,
    }
}

pub fn span_of(r: &UsageRecord) -> Span {
    let h = Sha256::digest(r.id.as_bytes());
    let start = u64::try_from(r.ts_ms).unwrap_or(0) * 1_000_000;
    let end = start + r.latency_us * 1_000;
    let op = operation(r.api);
    let requested = r.requested_model.as_deref().unwrap_or("unknown");
    let s = |v: &str| Value::String(v.to_string());
    let mut attributes = vec![
        kv("gen_ai.operation.name", s(op)),
        kv("gen_ai.request.model", s(requested)),
        kv("http.response.status_code", Value::Int(i64::from(r.status))),
        kv("tollgate.request_id", s(&r.id)),
        kv("tollgate.outcome", s(&r.outcome)),
        kv("tollgate.api", s(r.api)),
    ];
    if let Some(m) = &r.served_model {
        attributes.push(kv("gen_ai.response.model", s(m)));
    }
    if let Some(p) = &r.provider {
        attributes.push(kv("gen_ai.provider.name", s(p)));
        attributes.push(kv("gen_ai.system", s(p)));
    }
    let u = &r.usage;
    let tokens = [
        ("gen_ai.usage.input_tokens", u.input_tokens),
        ("gen_ai.usage.output_tokens", u.output_tokens),
        ("tollgate.usage.cached_input_tokens", u.cached_tokens),
        ("tollgate.usage.reasoning_tokens", u.reasoning_tokens),
    ];
    for (k, v) in tokens {
        attributes.push(kv(k, Value::Int(i64::try_from(v).unwrap_or(i64::MAX))));
    }
    attributes.push(kv("tollgate.usage.estimated", Value::Bool(r.estimated)));
    attributes.push(kv(
        "tollgate.cost_usd",
        Value::Double(r.cost_micro_usd as f64 / 1e6),
    ));
    let id = &r.identity;
    let who = [
        ("tollgate.team", &id.team),
        ("tollgate.project", &id.project),
        ("tollgate.user", &id.user),
        ("tollgate.session", &id.session),
        ("tollgate.workflow", &id.workflow),
        ("tollgate.cost_center", &id.cost_center),
        ("tollgate.key_id", &r.key_id),
        ("tollgate.target", &r.route),
        ("tollgate.cache", &r.cache),
    ];
    for (k, v) in who {
        if let Some(v) = v {
            attributes.push(kv(k, s(v)));
        }
    }
    if r.attempts > 1 {
        attributes.push(kv("tollgate.attempts", Value::Int(i64::from(r.attempts))));
    }
    let events = r
        .ttft_us
        .map(|t| Event {
            time_unix_nano: start + t * 1_000,
            name: "gen_ai.first_token".into(),
            attributes: Vec::new(),
        })
        .into_iter()
        .collect();
    let failed = r.status >= 400 || r.outcome != "ok";
    let (trace_id, parent_span_id) = match r.trace_parent {
        Some((trace, parent)) => (trace.to_vec(), parent.to_vec()),
        None => (h[..16].to_vec(), Vec::new()),
    };
    Span {
        trace_id,
        span_id: h[16..24].to_vec(),
        parent_span_id,
        name: format!("{op} {requested}"),
        kind: SPAN_KIND_CLIENT,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes,
        events,
        status: failed.then(|| Status {
            message: r.outcome.to_string(),
            code: STATUS_ERROR,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::Usage;
    use prost::Message;

    #[test]
    fn a_record_becomes_a_genai_client_span_that_round_trips() {
        let mut r = UsageRecord {
            id: "req-1".into(),
            ts_ms: 1_700_000_000_000,
            latency_us: 250_000,
            ttft_us: Some(40_000),
            status: 200,
            outcome: "ok".into(),
            api: "chat",
            requested_model: Some("smol".into()),
            served_model: Some("smol-v2".into()),
            provider: Some("sim".into()),
            usage: Usage {
                input_tokens: 12,
                output_tokens: 7,
                ..Usage::default()
            },
            cost_micro_usd: 1_500,
            key_id: Some("k_1".into()),
            ..UsageRecord::default()
        };
        r.identity.team = Some("search".into());
        let span = span_of(&r);
        assert_eq!(span.name, "chat smol");
        assert_eq!(span.trace_id, trace_id_of("req-1").to_vec());
        assert_eq!(
            span.end_time_unix_nano - span.start_time_unix_nano,
            250_000_000
        );
        assert_eq!(
            span.events[0].time_unix_nano - span.start_time_unix_nano,
            40_000_000
        );
        let attr = |k: &str| {
            span.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(attr("gen_ai.usage.input_tokens"), Some(Value::Int(12)));
        assert_eq!(
            attr("gen_ai.response.model"),
            Some(Value::String("smol-v2".into()))
        );
        assert_eq!(attr("tollgate.team"), Some(Value::String("search".into())));
        assert_eq!(attr("tollgate.cost_usd"), Some(Value::Double(0.0015)));
        assert!(span.status.is_none());
        let bytes = span.encode_to_vec();
        assert_eq!(Span::decode(&bytes[..]).unwrap(), span);

        let tp =
            parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        r.trace_parent = Some(tp);
        let child = span_of(&r);
        assert_eq!(
            (child.trace_id, child.parent_span_id),
            (tp.0.to_vec(), tp.1.to_vec())
        );
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert!(
                parse_traceparent(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        r.trace_parent = None;
        r.status = 502;
        r.outcome = "upstream_error".into();
        let failed = span_of(&r);
        assert_eq!(failed.status.map(|s| s.code), Some(STATUS_ERROR));
    }
}
