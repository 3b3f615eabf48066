//! Fault injection: slow replies, error statuses, resets mid-stream, missing usage.
//!
//! Each inference request gets a [`FaultPlan`] from the command-line defaults, overridden by its
//! own headers (a header always wins):
//!
//! | header              | flag                       | effect                                         |
//! |---------------------|----------------------------|------------------------------------------------|
//! | `x-sim-delay-ms`    | `--delay-ms`               | wait before handling the request               |
//! | `x-sim-fail`        | `--fail-rate/--fail-status`| answer with this status and an error body      |
//! | `x-sim-reset-after` | `--reset-after-chunks`     | RST after N SSE frames (non-stream: no reply)  |
//! | `x-sim-no-usage`    | `--no-stream-usage`        | no usage in the stream                         |
//! | `x-sim-echo`        |                            | the output starts with the prompt text, in 3-byte tokens |
//!
//! A malformed header is the client's error (400). Delays apply even under `--zero-delay`: they
//! are asked for explicitly.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hyper::{HeaderMap, StatusCode};

use crate::config::FaultConfig;
use crate::error::SimError;
use crate::textgen::mix64;

pub const HEADER_DELAY_MS: &str = "x-sim-delay-ms";
pub const HEADER_FAIL: &str = "x-sim-fail";
pub const HEADER_RESET_AFTER: &str = "x-sim-reset-after";
pub const HEADER_NO_USAGE: &str = "x-sim-no-usage";
pub const HEADER_ECHO: &str = "x-sim-echo";

/// The configured defaults and the random draws for `--fail-rate`.
pub struct Faults {
    config: FaultConfig,
    rng_state: AtomicU64,
}

/// The faults one request will suffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    pub delay: Duration,
    pub fail: Option<StatusCode>,
    pub reset_after_frames: Option<u64>,
    pub suppress_stream_usage: bool,
    /// The output starts with the prompt text (what the model was sent comes back).
    pub echo: bool,
}

impl FaultPlan {
    /// Applies the faults that come before the engine: the delay, then the failure.
    pub async fn before_engine(&self) -> Result<(), SimError> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        match self.fail {
            Some(status) => Err(SimError::Injected(status)),
            None => Ok(()),
        }
    }
}

impl Faults {
    pub fn new(config: FaultConfig) -> Self {
        let rng_state = AtomicU64::new(config.seed);
        Faults { config, rng_state }
    }

    pub fn plan(&self, headers: &HeaderMap) -> Result<FaultPlan, SimError> {
        let delay_ms = header::<u64>(headers, HEADER_DELAY_MS)?.unwrap_or(self.config.delay_ms);
        let fail = match header::<u16>(headers, HEADER_FAIL)? {
            Some(code) => Some(
                StatusCode::from_u16(code)
                    .ok()
                    .filter(|s| s.is_client_error() || s.is_server_error())
                    .ok_or_else(|| {
                        SimError::invalid(format!("{HEADER_FAIL} must be a status from 400 to 599"))
                    })?,
            ),
            None if self.config.fail_rate > 0.0 && self.draw() < self.config.fail_rate => {
                Some(self.config.fail_status)
            }
            None => None,
        };
        let reset_after_frames =
            header::<u64>(headers, HEADER_RESET_AFTER)?.or(self.config.reset_after_frames);
        let suppress_stream_usage = self.config.no_stream_usage
            || header::<Flag>(headers, HEADER_NO_USAGE)?.is_some_and(|Flag(on)| on);
        Ok(FaultPlan {
            delay: Duration::from_millis(delay_ms),
            fail,
            reset_after_frames,
            suppress_stream_usage,
            echo: header::<Flag>(headers, HEADER_ECHO)?.is_some_and(|Flag(on)| on),
        })
    }

    /// A uniform draw in [0, 1) (splitmix64 over a shared counter).
    fn draw(&self) -> f64 {
        let x = self.rng_state.fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed);
        (mix64(x) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A boolean header: `1`/`true` or `0`/`false`.
struct Flag(bool);

impl std::str::FromStr for Flag {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "1" | "true" => Ok(Flag(true)),
            "0" | "false" => Ok(Flag(false)),
            _ => Err(()),
        }
    }
}

fn header<T: std::str::FromStr>(
    headers: &HeaderMap,
    name: &'static str,
) -> Result<Option<T>, SimError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| SimError::invalid(format!("invalid {name} header")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn faults(fail_rate: f64) -> Faults {
        Faults::new(FaultConfig {
            fail_rate,
            fail_status: StatusCode::SERVICE_UNAVAILABLE,
            delay_ms: 5,
            reset_after_frames: None,
            no_stream_usage: false,
            seed: 7,
        })
    }

    #[test]
    fn headers_override_flags() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            faults(0.0).plan(&headers).unwrap(),
            FaultPlan {
                delay: Duration::from_millis(5),
                ..FaultPlan::default()
            }
        );
        headers.insert(HEADER_DELAY_MS, HeaderValue::from_static("0"));
        headers.insert(HEADER_FAIL, HeaderValue::from_static("429"));
        headers.insert(HEADER_RESET_AFTER, HeaderValue::from_static("2"));
        headers.insert(HEADER_NO_USAGE, HeaderValue::from_static("1"));
        let plan = faults(0.0).plan(&headers).unwrap();
        assert_eq!(plan.delay, Duration::ZERO);
        assert_eq!(plan.fail, Some(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(plan.reset_after_frames, Some(2));
        assert!(plan.suppress_stream_usage);
    }

    #[test]
    fn bad_headers_are_client_errors() {
        for (name, value) in [
            (HEADER_FAIL, "200"),
            (HEADER_FAIL, "abc"),
            (HEADER_DELAY_MS, "-1"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_static(value));
            let error = faults(0.0).plan(&headers).unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{name}: {value}");
        }
    }

    #[test]
    fn fail_rate_draws_about_that_fraction() {
        let f = faults(0.25);
        let failed = (0..4000)
            .filter(|_| f.plan(&HeaderMap::new()).unwrap().fail.is_some())
            .count();
        assert!((800..1200).contains(&failed), "{failed}");
        let always = faults(1.0);
        assert!(always.plan(&HeaderMap::new()).unwrap().fail.is_some());
    }
}
