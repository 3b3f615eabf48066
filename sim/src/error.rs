//! Every way a request can fail, and the one place that turns a failure into a response.
//!
//! [`SimError::into_response`] decides the status and the body with an exhaustive match: the
//! OpenAI shape `{"error":{"message","type","param","code"}}` everywhere, except `/v1/messages`
//! which answers in Anthropic's shape `{"type":"error","error":{"type","message"}}` as the real
//! API does. Injected 429 and 503 failures carry `retry-after`, like the providers' own.

use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::body::{json_response, SimBody};

/// Which provider's error body a route speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStyle {
    OpenAi,
    Anthropic,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The body is not JSON or not the shape the endpoint expects, or a field is out of range.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<&'static str>,
    },
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    #[error("This model's maximum context length is {limit} tokens. However, you requested {requested} tokens ({prompt} in the messages, {completion} in the completion). Please reduce the length of the messages or completion.")]
    ContextTooLong {
        limit: u64,
        requested: u64,
        prompt: u64,
        completion: u64,
    },
    #[error("The request body exceeds {limit_bytes} bytes.")]
    BodyTooLarge { limit_bytes: usize },
    /// An unknown path, or nothing to show yet.
    #[error("{0}")]
    NotFound(String),
    #[error("Method not allowed.")]
    MethodNotAllowed,
    /// A failure asked for by `--fail-rate` or `x-sim-fail`.
    #[error("Simulated failure with status {}.", .0.as_u16())]
    Injected(StatusCode),
    #[error("The server is shutting down.")]
    ShuttingDown,
}

impl SimError {
    pub fn invalid(message: impl Into<String>) -> Self {
        SimError::InvalidRequest {
            message: message.into(),
            param: None,
        }
    }

    pub fn invalid_param(param: &'static str, message: impl Into<String>) -> Self {
        SimError::InvalidRequest {
            message: message.into(),
            param: Some(param),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            SimError::InvalidRequest { .. } | SimError::ContextTooLong { .. } => {
                StatusCode::BAD_REQUEST
            }
            SimError::ModelNotFound(_) | SimError::NotFound(_) => StatusCode::NOT_FOUND,
            SimError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            SimError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            SimError::Injected(status) => *status,
            SimError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// OpenAI's `type` and `code` for this error.
    fn openai_kind(&self) -> (&'static str, Option<&'static str>) {
        match self {
            SimError::InvalidRequest { .. } | SimError::BodyTooLarge { .. } => {
                ("invalid_request_error", None)
            }
            SimError::ContextTooLong { .. } => {
                ("invalid_request_error", Some("context_length_exceeded"))
            }
            SimError::ModelNotFound(_) => ("invalid_request_error", Some("model_not_found")),
            SimError::NotFound(_) | SimError::MethodNotAllowed => ("invalid_request_error", None),
            SimError::Injected(status) => match status.as_u16() {
                401 => ("invalid_request_error", Some("invalid_api_key")),
                403 => ("permission_error", None),
                404 => ("invalid_request_error", None),
                429 => ("requests", Some("rate_limit_exceeded")),
                400..=499 => ("invalid_request_error", None),
                _ => ("server_error", None),
            },
            SimError::ShuttingDown => ("server_error", None),
        }
    }

    /// Anthropic's error `type` for the status.
    fn anthropic_kind(&self) -> &'static str {
        match self.status().as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 | 503 => "overloaded_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            SimError::InvalidRequest { param, .. } => *param,
            SimError::ModelNotFound(_) => Some("model"),
            SimError::ContextTooLong { .. } => Some("messages"),
            SimError::BodyTooLarge { .. }
            | SimError::NotFound(_)
            | SimError::MethodNotAllowed
            | SimError::Injected(_)
            | SimError::ShuttingDown => None,
        }
    }

    pub fn into_response(self, style: ErrorStyle) -> Response<SimBody> {
        let status = self.status();
        let message = self.to_string();
        let body = match style {
            ErrorStyle::OpenAi => {
                let (kind, code) = self.openai_kind();
                crate::body::to_json(&OpenAiError {
                    error: OpenAiErrorBody {
                        message: &message,
                        kind,
                        param: self.param(),
                        code,
                    },
                })
            }
            ErrorStyle::Anthropic => crate::body::to_json(&AnthropicError {
                kind: "error",
                error: AnthropicErrorBody {
                    kind: self.anthropic_kind(),
                    message: &message,
                },
            }),
        };
        let mut response = json_response(status, body);
        if matches!(self, SimError::Injected(s) if s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::SERVICE_UNAVAILABLE)
        {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[derive(Serialize)]
struct OpenAiError<'a> {
    error: OpenAiErrorBody<'a>,
}

#[derive(Serialize)]
struct OpenAiErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

#[derive(Serialize)]
struct AnthropicError<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicErrorBody<'a>,
}

#[derive(Serialize)]
struct AnthropicErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(response: Response<SimBody>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn openai_and_anthropic_shapes() {
        let r = SimError::ModelNotFound("x".into()).into_response(ErrorStyle::OpenAi);
        assert_eq!(r.status(), 404);
        let v = body_json(r).await;
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("`x`"));

        let r =
            SimError::Injected(StatusCode::TOO_MANY_REQUESTS).into_response(ErrorStyle::Anthropic);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[RETRY_AFTER], "1");
        let v = body_json(r).await;
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "rate_limit_error");
    }
}
