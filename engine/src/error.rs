//! The engine's one error type on the wire.
//!
//! Every failure a client can see is an [`ApiError`]: an HTTP status, a stable snake_case
//! `code` and a message written by us. It renders as `{"error": {"code", "message"}}`;
//! upstream bodies and secrets never reach it (provider errors arrive already mapped by the
//! adapters, see `actors::ports::llm::ProviderError`).

use std::borrow::Cow;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::{HttpResponse, ResponseError};
use actors::turn::TurnError;
use serde::Serialize;

/// A client-facing error. Cheap to build; the message is usually `'static`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: Cow<'static, str>,
    retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The JSON body, also used for WebSocket `error` frames' code and message.
    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody { error: ErrorDetail { code: self.code, message: &self.message } }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// `{"error": {"code": …, "message": …}}`
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up: a client that waits exactly this long succeeds.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.insert_header((RETRY_AFTER, value));
            }
        }
        response.json(self.body())
    }
}

impl From<TurnError> for ApiError {
    fn from(error: TurnError) -> Self {
        let status = match &error {
            TurnError::UnknownModel(_) => StatusCode::BAD_REQUEST,
            TurnError::Rejected(_) => StatusCode::BAD_GATEWAY,
            TurnError::Exhausted { .. } => StatusCode::BAD_GATEWAY,
            TurnError::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            TurnError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            TurnError::Cancelled => StatusCode::CONFLICT,
            TurnError::BudgetExceeded(_) => StatusCode::PAYMENT_REQUIRED,
        };
        ApiError::new(status, error.code(), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    #[actix_rt::test]
    async fn renders_the_error_envelope_with_retry_after() {
        let error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down")
            .with_retry_after(Duration::from_millis(1500));
        let response = error.error_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers().get(RETRY_AFTER).unwrap(), "2");
        let body = to_bytes(response.into_body()).await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "rate_limited", "message": "slow down"}})
        );
    }

    #[test]
    fn turn_errors_keep_their_codes() {
        let e = ApiError::from(TurnError::UnknownModel("gpt-9".into()));
        assert_eq!((e.status(), e.code()), (StatusCode::BAD_REQUEST, "unknown_model"));
        assert!(e.message().contains("gpt-9"));
        assert_eq!(ApiError::from(TurnError::Overloaded).status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
