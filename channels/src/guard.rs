//! The gateway's outer layer, run on every request before routing: per-IP rate limit (429 +
//! Retry-After), CORS and the WebSocket Origin allowlist, a request timeout, security
//! headers, and `Cache-Control: no-store` on every API answer. Per-customer limits are
//! applied where the token is verified (auth.rs), since only then is the customer known.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::Gateway;
use crate::access::ratelimit::RateLimiter;
use crate::manager::{client_ip, rate_limited};
use crate::problem::Problem;

/// The node's rate limiters.
pub struct Limits {
    /// Requests per client IP.
    pub ip: RateLimiter,
    /// Authenticated requests per customer.
    pub customer: RateLimiter,
    /// Codes sent per phone (registration, login, step-up).
    pub sends: RateLimiter,
}

impl Limits {
    pub fn new(config: &crate::GatewayConfig) -> Self {
        const KEYS: usize = 100_000;
        Self {
            ip: RateLimiter::new(
                config.rate_limit_ip_per_s,
                config.rate_limit_ip_per_s * 2.0,
                KEYS,
            ),
            customer: RateLimiter::new(
                config.rate_limit_customer_per_s,
                config.rate_limit_customer_per_s * 2.0,
                KEYS,
            ),
            sends: RateLimiter::new(
                config.code_sends_per_hour / 3600.0,
                config.code_sends_per_hour.min(5.0),
                KEYS,
            ),
        }
    }
}

fn is_api(path: &str) -> bool {
    ["/v1/", "/staff/", "/admin/", "/cache-control/"]
        .iter()
        .any(|prefix| path.starts_with(prefix))
}

pub(crate) async fn guard(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let api = is_api(&path);
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    let allowed = origin
        .as_ref()
        .map(|o| gateway.config.allowed_origins.iter().any(|a| a == o));

    let mut response = 'answer: {
        if api {
            let ip = client_ip(request.extensions());
            if let Err(wait) = gateway.limits.ip.check(&ip) {
                break 'answer rate_limited(wait).into_response();
            }
        }
        if allowed == Some(false) && (request.method() == Method::OPTIONS || path == "/v1/ws") {
            break 'answer Problem::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "this origin is not allowed",
            )
            .into_response();
        }
        if request.method() == Method::OPTIONS && allowed == Some(true) {
            let mut preflight = StatusCode::NO_CONTENT.into_response();
            let headers = preflight.headers_mut();
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, PUT, DELETE"),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(
                    "authorization, content-type, idempotency-key, accept-language",
                ),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            break 'answer preflight;
        }
        if path == "/v1/ws" {
            break 'answer next.run(request).await;
        }
        match tokio::time::timeout(gateway.config.request_timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the request took too long; try again",
            )
            .retry_after(1)
            .into_response(),
        }
    };

    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    if api {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if let (Some(true), Some(origin)) = (allowed, origin)
        && let Ok(value) = HeaderValue::from_str(&origin)
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}
