//! Rate limits (lock-free GCRA per rule and per key) and the providers' rate-limit headers.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::api::Wire;
use crate::client::ClientConn;
use crate::error::{ErrorDetail, ErrorKind, GateError};
use crate::governance::gcra::{now_ns, Verdict};
use crate::governance::hold::HeldRate;
use crate::governance::keys::KeyEntry;
use crate::governance::policy::RateKind;
use crate::governance::window::{now_ms, rfc3339};
use crate::governance::Governor;
use crate::pipeline::RequestCtx;
use crate::snapshot::Snapshot;

use super::{facts, reservation};

/// What the client is told about its quota, as the providers' rate-limit headers.
#[derive(Debug, Clone, Default)]
pub struct Quota {
    pub requests: Option<Remaining>,
    pub tokens: Option<Remaining>,
    /// `x-tollgate-fallback`: the model asked for, the one serving, the budget that was full.
    pub fallback: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Remaining {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
}

impl Remaining {
    /// Keeps whichever of two limits is closer to running out.
    fn tighter(a: Option<Remaining>, b: Remaining) -> Option<Remaining> {
        match a {
            Some(a) if a.remaining <= b.remaining => Some(a),
            _ => Some(b),
        }
    }
}

pub(super) fn rate_limits(
    gov: &Governor,
    snap: &Snapshot,
    client: &ClientConn,
    ctx: &mut RequestCtx,
    key: Option<&KeyEntry>,
) -> Result<(), GateError> {
    let policy = &snap.cfg.governance;
    let (input, output) = reservation(snap, ctx);
    let mut taken: Vec<HeldRate> = Vec::new();
    let mut quota = Quota::default();
    // Read when the first limit applies: most requests meet none, and a clock read is ~25 ns.
    let mut now = None;
    let f = facts(client, ctx, key);
    // Names are only rendered for a refusal (no allocation per admitted request).
    let key_limits = key.into_iter().flat_map(|k| {
        [
            k.state
                .rpm
                .clone()
                .map(|g| (Named::Key(k, "requests_per_minute"), RateKind::Requests, g)),
            k.state
                .tpm
                .clone()
                .map(|g| (Named::Key(k, "tokens_per_minute"), RateKind::Tokens, g)),
        ]
        .into_iter()
        .flatten()
    });
    let rule_limits = policy
        .rate_limits
        .iter()
        .zip(snap.governance.rates.iter())
        .filter(|(rule, _)| rule.scope.matches(&f))
        .flat_map(|(rule, limiters)| {
            rule.rates
                .iter()
                .zip(limiters)
                .map(move |(rate, g)| (Named::Rule(&rule.name, rate), rate.kind, g.clone()))
        });
    let mut denied = None;
    for (name, kind, gcra) in key_limits.chain(rule_limits) {
        let cost = match kind {
            RateKind::Requests => 1,
            RateKind::Tokens => input + output,
            RateKind::InputTokens => input,
            RateKind::OutputTokens => output,
        };
        match gcra.check(cost, *now.get_or_insert_with(now_ns)) {
            Verdict::Allowed { remaining, reset } => {
                let r = Remaining {
                    limit: gcra.amount,
                    remaining,
                    reset,
                };
                if kind == RateKind::Requests {
                    quota.requests = Remaining::tighter(quota.requests, r);
                } else {
                    quota.tokens = Remaining::tighter(quota.tokens, r);
                }
                taken.push(HeldRate {
                    gcra,
                    kind,
                    reserved: cost,
                });
            }
            Verdict::Denied { retry_after } => {
                let r = Remaining {
                    limit: gcra.amount,
                    remaining: 0,
                    reset: retry_after,
                };
                if kind == RateKind::Requests {
                    quota.requests = Some(r);
                } else {
                    quota.tokens = Some(r);
                }
                denied = Some((name, kind, cost, gcra.amount, retry_after));
                break;
            }
        }
    }
    if let Some((name, kind, cost, limit, retry_after)) = denied {
        let name = name.render();
        for t in taken {
            t.gcra.refund(t.reserved);
        }
        gov.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        let what = if kind == RateKind::Requests {
            "requests"
        } else {
            "tokens"
        };
        let message = if cost > limit {
            format!("This request needs {cost} {what}, more than the whole limit `{name}` ({limit}) allows; reduce max_tokens or the prompt.")
        } else {
            format!("Rate limit reached for `{name}`: limit {limit}, requested {cost}. Please try again in {}.", openai_duration(retry_after))
        };
        let headers = render_quota(&quota, ctx.api.wire());
        return Err(
            GateError::new(ErrorKind::RateLimited { kind: what }, message).with_detail(
                ErrorDetail {
                    limit: Some(name),
                    resets_at_ms: Some(now_ms() + retry_after.as_millis() as i64),
                    retry_after_s: Some(retry_after.as_secs_f64().ceil().max(1.0) as u32),
                    headers,
                },
            ),
        );
    }
    ctx.hold.rates = taken;
    if quota.requests.is_some() || quota.tokens.is_some() {
        ctx.quota = Some(Box::new(quota));
    }
    Ok(())
}

/// A rate limit, named when it refuses a request.
enum Named<'a> {
    Key(&'a KeyEntry, &'static str),
    Rule(&'a str, &'a crate::governance::policy::Rate),
}

impl Named<'_> {
    fn render(&self) -> String {
        match self {
            Named::Key(k, what) => format!("key={}/{what}", k.id),
            Named::Rule(name, rate) => format!("{name}/{}", rate.name()),
        }
    }
}

/// The providers' rate-limit headers for `q`, in the client's wire format, plus
/// `x-tollgate-fallback`. Written straight into one buffer (it runs for every governed
/// response), numbers with `itoa`: through `write!` it was ~5,400 of a governed request's
/// ~55,000 worker instructions (callgrind).
pub fn render_quota(q: &Quota, wire: Wire) -> String {
    let mut out = String::with_capacity(QUOTA_HEADERS_CAPACITY);
    let mut num = itoa::Buffer::new();
    let headers = match wire {
        Wire::OpenAi => &OPENAI_QUOTA_HEADERS,
        Wire::Anthropic => &ANTHROPIC_QUOTA_HEADERS,
    };
    for (names, r) in headers.iter().zip([q.requests, q.tokens]) {
        let Some(r) = r else { continue };
        let [limit, remaining, reset] = names;
        for (name, value) in [(limit, r.limit), (remaining, r.remaining)] {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(num.format(value));
            out.push_str("\r\n");
        }
        out.push_str(reset);
        out.push_str(": ");
        match wire {
            Wire::OpenAi => write_openai_duration(&mut out, r.reset),
            Wire::Anthropic => out.push_str(&rfc3339(now_ms() + r.reset.as_millis() as i64)),
        }
        out.push_str("\r\n");
    }
    if let Some(f) = &q.fallback {
        out.push_str("x-tollgate-fallback: ");
        out.push_str(f);
        out.push_str("\r\n");
    }
    out
}

/// Room for the headers [`render_quota`] writes (~410 bytes with both limits, Anthropic names
/// and a 60-byte fallback).
const QUOTA_HEADERS_CAPACITY: usize = 512;

/// Bytes a response head reserves for `q`'s headers, so it never grows mid-head (a realloc
/// there was ~550 instructions of every governed response).
pub fn room_for_quota(q: Option<&Quota>) -> usize {
    q.map_or(0, |_| QUOTA_HEADERS_CAPACITY)
}

/// The rate-limit header names for requests and for tokens: limit, remaining, reset.
const OPENAI_QUOTA_HEADERS: [[&str; 3]; 2] = [
    [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ],
    [
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    ],
];

const ANTHROPIC_QUOTA_HEADERS: [[&str; 3]; 2] = [
    [
        "anthropic-ratelimit-requests-limit",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
    ],
    [
        "anthropic-ratelimit-tokens-limit",
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
    ],
];

/// `20ms`, `1s`, `6m0s`, `1h2m3s`, as OpenAI writes its reset headers.
pub fn openai_duration(d: Duration) -> String {
    let mut s = String::new();
    write_openai_duration(&mut s, d);
    s
}

fn write_openai_duration(out: &mut String, d: Duration) {
    let mut num = itoa::Buffer::new();
    let ms = d.as_millis() as u64;
    if ms < 1000 {
        out.push_str(num.format(ms));
        out.push_str("ms");
        return;
    }
    let s = d.as_secs_f64().ceil() as u64;
    let mut part = |n: u64, unit: &str| {
        out.push_str(num.format(n));
        out.push_str(unit);
    };
    match s {
        0..=59 => part(s, "s"),
        60..=3599 => {
            part(s / 60, "m");
            part(s % 60, "s");
        }
        _ => {
            part(s / 3600, "h");
            part(s / 60 % 60, "m");
            part(s % 60, "s");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `write!` rendering this file had, kept as the reference.
    fn render_quota_by_format(q: &Quota, wire: Wire) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(384);
        for (what, r) in [("requests", q.requests), ("tokens", q.tokens)] {
            let Some(r) = r else { continue };
            match wire {
                Wire::OpenAi => {
                    let _ = write!(
                        out,
                        "x-ratelimit-limit-{what}: {}\r\nx-ratelimit-remaining-{what}: {}\r\nx-ratelimit-reset-{what}: ",
                        r.limit, r.remaining
                    );
                    write_openai_duration_by_format(&mut out, r.reset);
                    out.push_str("\r\n");
                }
                Wire::Anthropic => {
                    let _ = write!(
                        out,
                        "anthropic-ratelimit-{what}-limit: {}\r\nanthropic-ratelimit-{what}-remaining: {}\r\nanthropic-ratelimit-{what}-reset: {}\r\n",
                        r.limit,
                        r.remaining,
                        rfc3339(now_ms() + r.reset.as_millis() as i64)
                    );
                }
            }
        }
        if let Some(f) = &q.fallback {
            let _ = write!(out, "x-tollgate-fallback: {f}\r\n");
        }
        out
    }

    /// `20ms`, `1s`, `6m0s`, `1h2m3s`, as OpenAI writes its reset headers.
    fn openai_duration_by_format(d: Duration) -> String {
        let mut s = String::new();
        write_openai_duration_by_format(&mut s, d);
        s
    }

    fn write_openai_duration_by_format(out: &mut String, d: Duration) {
        use std::fmt::Write;
        let ms = d.as_millis() as u64;
        if ms < 1000 {
            let _ = write!(out, "{ms}ms");
            return;
        }
        let s = d.as_secs_f64().ceil() as u64;
        let _ = match s {
            0..=59 => write!(out, "{s}s"),
            60..=3599 => write!(out, "{}m{}s", s / 60, s % 60),
            _ => write!(out, "{}h{}m{}s", s / 3600, s / 60 % 60, s % 60),
        };
    }

    proptest::proptest! {
        /// The hand-written headers are byte for byte what `write!` wrote, for both wires (the
        /// Anthropic reset is a wall-clock time: both renderings run in the same millisecond
        /// or the case is retried).
        #[test]
        fn quota_headers_render_as_format_rendered_them(
            req in proptest::option::of((proptest::prelude::any::<u64>(), proptest::prelude::any::<u64>(), 0u64..10_000_000)),
            tok in proptest::option::of((proptest::prelude::any::<u64>(), proptest::prelude::any::<u64>(), 0u64..10_000_000)),
            fallback in proptest::option::of("[a-z0-9 =>-]{0,40}"),
        ) {
            let r = |x: Option<(u64, u64, u64)>| x.map(|(limit, remaining, ms)| Remaining {
                limit,
                remaining,
                reset: Duration::from_millis(ms),
            });
            for (_, _, ms) in req.iter().chain(tok.iter()) {
                let d = Duration::from_millis(*ms);
                proptest::prop_assert_eq!(openai_duration(d), openai_duration_by_format(d));
            }
            let q = Quota { requests: r(req), tokens: r(tok), fallback };
            for wire in [Wire::OpenAi, Wire::Anthropic] {
                loop {
                    let before = now_ms();
                    let (new, old) = (render_quota(&q, wire), render_quota_by_format(&q, wire));
                    if now_ms() != before {
                        continue;
                    }
                    proptest::prop_assert_eq!(new, old);
                    break;
                }
            }
        }
    }

    #[test]
    fn a_response_head_reserves_room_for_realistic_quota_headers() {
        let both = Remaining {
            limit: 1_000_000_000_000,
            remaining: 999_999_999_999,
            reset: Duration::from_secs(59 * 60 + 59),
        };
        let q = Quota {
            requests: Some(both),
            tokens: Some(both),
            fallback: Some(format!(
                "{} => {} (team-budget)",
                "m".repeat(24),
                "n".repeat(24)
            )),
        };
        for wire in [Wire::OpenAi, Wire::Anthropic] {
            let rendered = render_quota(&q, wire);
            assert!(
                rendered.len() <= room_for_quota(Some(&q)),
                "{wire:?}: {} bytes",
                rendered.len()
            );
        }
        assert_eq!(room_for_quota(None), 0);
    }

    #[test]
    fn reset_durations_read_like_openai() {
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "2s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(openai_duration(Duration::from_secs(3723)), "1h2m3s");
    }
}
