//! The one error type the data plane answers with, and the only place that turns an error into
//! an HTTP status and body.
//!
//! Subsystems keep their own `thiserror` enums; phases map them into [`GateError`] at their
//! boundary. [`GateError::to_response`] decides status, body shape (OpenAI or Anthropic) and
//! `Retry-After` with an exhaustive match, so a new error kind cannot ship without a status.
//! Hot path: only on failures.

use std::fmt;

use crate::api::Wire;

/// Which side of the proxy caused the failure (pingora's Upstream/Downstream/Internal split).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Internal,
}

/// Every way a request can fail. Each variant has exactly one status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request head exceeded `limits.max_head_bytes`.
    HeadTooLarge { limit: usize },
    /// More header lines than `limits.max_headers`.
    TooManyHeaders { limit: usize },
    /// The body exceeded `limits.max_body_bytes`.
    BodyTooLarge { limit: u64 },
    /// The client was too slow to send its head or body.
    ClientTimeout,
    /// Bytes that are not HTTP/1.1.
    MalformedHttp,
    /// A POST with neither Content-Length nor chunked encoding.
    LengthRequired,
    /// The body is not valid JSON; `offset` is the parser's byte position.
    InvalidJson {
        line: usize,
        column: usize,
        offset: usize,
    },
    /// JSON nested deeper than `limits.max_json_depth` (refused before any recursive parser).
    JsonTooDeep { limit: usize },
    /// A top-level field Tollgate reads or rewrites appears twice: providers disagree on which
    /// one wins, so billing and routing could read a different value than the provider.
    DuplicateKey { param: &'static str },
    /// Valid JSON, but a field has the wrong type or a required field is missing.
    InvalidRequest { param: Option<&'static str> },
    /// No configured model has the requested name.
    ModelNotFound,
    /// The model exists but its provider does not speak this API (e.g. /v1/messages to OpenAI).
    UnsupportedApi,
    /// The admin API was called without the admin token, or with a wrong one.
    AdminUnauthorized,
    /// No usable virtual key: `missing_api_key`, `invalid_api_key`, `key_expired`, `key_disabled`.
    Unauthorized { code: &'static str },
    /// The key may not be used from this address (`ip_not_allowed`) or for this model
    /// (`model_not_allowed`).
    Forbidden { code: &'static str },
    /// An identity header that policy requires is missing (`require_headers`).
    MissingIdentityHeader { header: &'static str },
    /// A rate limit has no room; `kind` is `requests` or `tokens`, as OpenAI's error types.
    RateLimited { kind: &'static str },
    /// A budget has no room for this request in its window.
    BudgetExceeded,
    /// The session's loop-guard breaker is open.
    LoopDetected,
    /// The tenant already has its share of requests waiting for a busy model (`tenant_queue_full`).
    Throttled { code: &'static str },
    /// The estimated prompt does not fit the context window of any target the request may use.
    ContextTooLong,
    /// No target of the model (or its fallbacks) may take the request now: `circuit_open`
    /// (every breaker open) or `no_target_available` (outside every target's hours).
    Unavailable { code: &'static str },
    /// A guardrail with `action: block` found sensitive content; the message names the
    /// classes, never the matched text.
    ContentBlocked,
    /// No route for this path.
    NotFound,
    /// Known path, wrong method.
    MethodNotAllowed,
    /// Could not connect to (or lost) the provider before any response byte.
    UpstreamUnreachable,
    /// The provider did not answer in time.
    UpstreamTimeout,
    /// The provider answered with something that is not HTTP/1.1.
    UpstreamProtocol,
    /// The provider answered an error status with an empty body; its status is kept.
    UpstreamEmptyError { status: u16 },
    /// The worker is at its connection or buffered-bytes cap; the client should retry later.
    Overloaded { retry_after_s: u32 },
    /// A bug or resource failure inside the agent.
    Internal,
}

/// An error with its kind, the side that caused it, and a message for the client.
#[derive(Debug, Clone)]
pub struct GateError {
    pub kind: ErrorKind,
    pub message: String,
    /// Nothing reached the provider, so the request may go to another target of its model.
    pub retry_elsewhere: bool,
    /// Structured data for responses that carry it (limits, their reset, `Retry-After`).
    pub detail: Option<Box<ErrorDetail>>,
}

/// What a limit-shaped error tells the client besides its message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorDetail {
    /// The limit that tripped (e.g. `team:search/tokens_per_minute`).
    pub limit: Option<String>,
    /// When it resets, milliseconds since the Unix epoch.
    pub resets_at_ms: Option<i64>,
    /// Seconds the client should wait; overrides the kind's default `Retry-After`.
    pub retry_after_s: Option<u32>,
    /// Extra response header lines (`name: value\r\n`), e.g. the rate-limit headers.
    pub headers: String,
}

/// A fully rendered error response.
pub struct ErrorResponse {
    pub status: u16,
    pub body: String,
    pub retry_after_s: Option<u32>,
}

impl GateError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_elsewhere: false,
            detail: None,
        }
    }

    /// Marks the error as one where nothing reached the provider (another target may serve).
    pub fn retryable_elsewhere(mut self) -> Self {
        self.retry_elsewhere = true;
        self
    }

    /// Attaches structured data (limit, reset, `Retry-After`).
    pub fn with_detail(mut self, detail: ErrorDetail) -> Self {
        self.detail = Some(Box::new(detail));
        self
    }

    pub fn side(&self) -> Side {
        use ErrorKind::*;
        match self.kind {
            HeadTooLarge { .. }
            | TooManyHeaders { .. }
            | BodyTooLarge { .. }
            | ClientTimeout
            | MalformedHttp
            | LengthRequired
            | InvalidJson { .. }
            | JsonTooDeep { .. }
            | DuplicateKey { .. }
            | InvalidRequest { .. }
            | ModelNotFound
            | UnsupportedApi
            | AdminUnauthorized
            | Unauthorized { .. }
            | Forbidden { .. }
            | MissingIdentityHeader { .. }
            | RateLimited { .. }
            | BudgetExceeded
            | LoopDetected
            | Throttled { .. }
            | ContextTooLong
            | ContentBlocked
            | NotFound
            | MethodNotAllowed => Side::Client,
            UpstreamUnreachable
            | UpstreamTimeout
            | UpstreamProtocol
            | UpstreamEmptyError { .. }
            | Unavailable { .. } => Side::Upstream,
            Overloaded { .. } | Internal => Side::Internal,
        }
    }

    /// HTTP status, OpenAI `type` and `code` for this error.
    fn classify(&self) -> (u16, &'static str, &'static str) {
        use ErrorKind::*;
        match self.kind {
            HeadTooLarge { .. } => (431, "invalid_request_error", "request_header_too_large"),
            TooManyHeaders { .. } => (431, "invalid_request_error", "too_many_headers"),
            BodyTooLarge { .. } => (413, "invalid_request_error", "request_too_large"),
            ClientTimeout => (408, "invalid_request_error", "request_timeout"),
            MalformedHttp => (400, "invalid_request_error", "malformed_http"),
            LengthRequired => (411, "invalid_request_error", "length_required"),
            InvalidJson { .. } => (400, "invalid_request_error", "invalid_json"),
            JsonTooDeep { .. } => (400, "invalid_request_error", "json_too_deep"),
            DuplicateKey { .. } => (400, "invalid_request_error", "duplicate_key"),
            InvalidRequest { .. } => (400, "invalid_request_error", "invalid_request"),
            ModelNotFound => (404, "invalid_request_error", "model_not_found"),
            UnsupportedApi => (400, "invalid_request_error", "unsupported_api_for_model"),
            AdminUnauthorized => (401, "invalid_request_error", "invalid_admin_token"),
            Unauthorized { code } => (401, "invalid_request_error", code),
            Forbidden { code } => (403, "invalid_request_error", code),
            MissingIdentityHeader { .. } => {
                (400, "invalid_request_error", "missing_identity_header")
            }
            RateLimited { kind } => (429, kind, "rate_limit_exceeded"),
            BudgetExceeded => (429, "insufficient_quota", "budget_exceeded"),
            LoopDetected => (429, "requests", "loop_detected"),
            Throttled { code } => (429, "requests", code),
            ContextTooLong => (400, "invalid_request_error", "context_length_exceeded"),
            Unavailable { code } => (503, "api_error", code),
            ContentBlocked => (400, "invalid_request_error", "content_blocked"),
            NotFound => (404, "invalid_request_error", "not_found"),
            MethodNotAllowed => (405, "invalid_request_error", "method_not_allowed"),
            UpstreamUnreachable => (502, "api_error", "upstream_unreachable"),
            UpstreamTimeout => (504, "api_error", "upstream_timeout"),
            UpstreamProtocol => (502, "api_error", "upstream_protocol_error"),
            UpstreamEmptyError { status } if status < 500 => {
                (status, "invalid_request_error", "upstream_error")
            }
            UpstreamEmptyError { status } => (status, "api_error", "upstream_error"),
            Overloaded { .. } => (503, "api_error", "overloaded"),
            Internal => (500, "api_error", "internal_error"),
        }
    }

    pub fn status(&self) -> u16 {
        self.classify().0
    }

    /// Short label for metrics and the ledger's `outcome` column.
    pub fn metric_reason(&self) -> &'static str {
        self.classify().2
    }

    fn param(&self) -> Option<&'static str> {
        match self.kind {
            ErrorKind::InvalidRequest { param } => param,
            ErrorKind::DuplicateKey { param } => Some(param),
            ErrorKind::ModelNotFound | ErrorKind::UnsupportedApi => Some("model"),
            ErrorKind::ContextTooLong => Some("messages"),
            ErrorKind::Forbidden {
                code: "model_not_allowed",
            } => Some("model"),
            ErrorKind::MissingIdentityHeader { header } => Some(header),
            _ => None,
        }
    }

    /// Renders the error in the wire format the client speaks.
    pub fn to_response(&self, wire: Wire) -> ErrorResponse {
        let (status, err_type, code) = self.classify();
        let detail = self.detail.as_deref();
        let body = match wire {
            Wire::OpenAi => {
                let mut error = serde_json::json!({
                    "message": self.message,
                    "type": err_type,
                    "code": code,
                    "param": self.param(),
                });
                if let Some(d) = detail {
                    if let Some(limit) = &d.limit {
                        error["limit"] = limit.as_str().into();
                    }
                    if let Some(at) = d.resets_at_ms {
                        error["resets_at_ms"] = at.into();
                    }
                }
                serde_json::json!({ "error": error })
            }
            Wire::Anthropic => serde_json::json!({
                "type": "error",
                "error": { "type": anthropic_type(status), "message": self.message }
            }),
        };
        let retry_after_s = detail.and_then(|d| d.retry_after_s).or(match self.kind {
            ErrorKind::UpstreamUnreachable
            | ErrorKind::UpstreamTimeout
            | ErrorKind::Unavailable { .. } => Some(1),
            ErrorKind::Overloaded { retry_after_s } => Some(retry_after_s),
            _ => None,
        });
        ErrorResponse {
            status,
            body: body.to_string(),
            retry_after_s,
        }
    }
}

/// Anthropic's error `type` names, by status.
fn anthropic_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 408 | 411 | 413 | 431 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

impl fmt::Display for GateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.metric_reason(), self.message)
    }
}

impl std::error::Error for GateError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_adds_limit_reset_and_retry_after() {
        let e = GateError::new(ErrorKind::Overloaded { retry_after_s: 1 }, "slow down")
            .with_detail(ErrorDetail {
                limit: Some("team:search/requests_per_minute".into()),
                resets_at_ms: Some(1_700_000_000_000),
                retry_after_s: Some(7),
                headers: String::new(),
            });
        let r = e.to_response(Wire::OpenAi);
        assert_eq!(r.retry_after_s, Some(7), "the detail's Retry-After wins");
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["error"]["limit"], "team:search/requests_per_minute");
        assert_eq!(v["error"]["resets_at_ms"], 1_700_000_000_000i64);
        assert!(
            !e.retry_elsewhere
                && GateError::new(ErrorKind::Internal, "x")
                    .retryable_elsewhere()
                    .retry_elsewhere
        );
    }

    #[test]
    fn openai_shape_has_all_fields() {
        let e = GateError::new(ErrorKind::ModelNotFound, "The model `x` does not exist");
        let r = e.to_response(Wire::OpenAi);
        assert_eq!(r.status, 404);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["message"], "The model `x` does not exist");
    }

    #[test]
    fn anthropic_shape() {
        let e = GateError::new(ErrorKind::UpstreamTimeout, "slow");
        let r = e.to_response(Wire::Anthropic);
        assert_eq!(r.status, 504);
        assert_eq!(r.retry_after_s, Some(1));
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "timeout_error");
    }
}
