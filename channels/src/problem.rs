//! RFC 9457 problem details with a stable machine `code`. The only error shape clients see.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub extra: Option<(&'static str, Value)>,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            extra: None,
            retry_after: None,
        }
    }
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid access token is required",
        )
    }
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "something went wrong on our side",
        )
    }
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }
    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token cannot be used here",
        )
    }
    pub fn with(mut self, key: &'static str, value: Value) -> Self {
        self.extra = Some((key, value));
        self
    }

    fn title(&self) -> &'static str {
        self.status.canonical_reason().unwrap_or("Error")
    }
}

impl From<actors::CallError> for Problem {
    fn from(error: actors::CallError) -> Self {
        match error.code.as_str() {
            "not_found" => Problem::not_found(),
            "unknown_customer" => Problem::new(
                StatusCode::NOT_FOUND,
                "unknown_customer",
                "the bank does not know this customer",
            ),
            "timeout" => Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the request took too long; try again",
            ),
            "unavailable" | "partition_moving" | "version_conflict" => {
                Problem::unavailable("temporarily unavailable; try again")
            }
            "bad_request" => Problem::bad_request(error.detail),
            // Payments: stable codes of refusals that changed nothing.
            "account_not_found" | "payee_not_found" => Problem::new(
                StatusCode::NOT_FOUND,
                payment_code(&error.code),
                error.detail,
            ),
            "idempotency_conflict" => Problem::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                "this Idempotency-Key was used with another request",
            ),
            "quote_not_found" => {
                Problem::new(StatusCode::NOT_FOUND, "quote_not_found", "no such quote")
            }
            "quote_used" => Problem::new(
                StatusCode::CONFLICT,
                "quote_used",
                "this quote was used by another conversion",
            ),
            "insufficient_funds" | "limit_exceeded" | "card_blocked" | "account_closed"
            | "currency_mismatch" | "invalid_field" | "invalid_command" | "quote_expired"
            | "quote_mismatch" => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                payment_code(&error.code),
                error.detail,
            ),
            _ => {
                tracing::error!(code = %error.code, detail = %error.detail, "call failed");
                Problem::internal()
            }
        }
    }
}

/// The static form of a payment refusal code.
fn payment_code(code: &str) -> &'static str {
    match code {
        "account_not_found" => "account_not_found",
        "payee_not_found" => "payee_not_found",
        "insufficient_funds" => "insufficient_funds",
        "limit_exceeded" => "limit_exceeded",
        "card_blocked" => "card_blocked",
        "account_closed" => "account_closed",
        "currency_mismatch" => "currency_mismatch",
        "invalid_field" => "invalid_field",
        "quote_expired" => "quote_expired",
        "quote_mismatch" => "quote_mismatch",
        _ => "invalid_payment",
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        kernel::metrics::count_error(self.code);
        let mut body = json!({
            "type": format!("https://arbat.dev/problems/{}", self.code),
            "title": self.title(),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        if let Some((key, value)) = self.extra {
            body[key] = value;
        }
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
