//! Providers: one per external service, each with a configurable base URL.
//!
//! - [`fcm`]: FCM HTTP v1 with an OAuth2 token from a service-account JSON (RS256 assertion).
//! - [`apns`]: APNs over HTTP/2 with a p8 key (ES256 provider token). a2 cannot target a local
//!   endpoint, so this is a thin reqwest HTTP/2 client: TLS + ALPN h2 for `https://`, HTTP/2
//!   prior knowledge for a plain `http://` base URL (the tests' local server).
//! - [`sms`]: the generic JSON gateway of API.md and a Twilio-compatible form provider.
//! - [`smtp`]: e-mail through lettre (STARTTLS or TLS; plain only to a loopback host).
//! - [`console`]: the embedded demo's stand-in that prints messages under a warning.

pub mod apns;
pub mod console;
pub mod fcm;
pub mod sms;
pub mod smtp;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use crate::model::{Kind, Priority};

/// One message for one recipient on one provider.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// The request id; providers that accept an idempotency key get it.
    pub request_id: String,
    pub kind: Kind,
    pub priority: Priority,
    /// Device token, E.164 phone or e-mail address.
    pub to: String,
    pub title: String,
    pub body: String,
    /// Extra key/values for push payloads.
    pub data: BTreeMap<String, String>,
}

/// Why a send did not go through. Kinds are stable (see [`SendError::code`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: 429, 5xx, timeouts, connection errors, an open breaker.
    #[error("temporary failure: {reason}")]
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The recipient is gone (unregistered device token): drop it.
    #[error("recipient is invalid: {reason}")]
    InvalidRecipient { reason: String },
    /// Refused for good (bad request, auth misconfiguration ...).
    #[error("rejected: {reason}")]
    Rejected { reason: String },
}

impl SendError {
    pub fn code(&self) -> &'static str {
        match self {
            SendError::Retryable { .. } => "retryable",
            SendError::InvalidRecipient { .. } => "invalid_recipient",
            SendError::Rejected { .. } => "rejected",
        }
    }
    pub fn retryable(reason: impl Into<String>) -> Self {
        SendError::Retryable {
            reason: reason.into(),
            retry_after: None,
        }
    }
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// A short stable name for metrics and outcomes: `fcm`, `apns`, `sms`, `smtp` ...
    fn name(&self) -> &'static str;
    /// Returns once the provider accepted the message.
    async fn send(&self, message: &Outgoing) -> Result<(), SendError>;
}

/// Reads a `Retry-After` header given in seconds (the HTTP-date form is treated as absent).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Maps transport errors: everything a network can do is worth retrying.
pub(crate) fn transport_error(provider: &str, error: reqwest::Error) -> SendError {
    let what = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect error"
    } else {
        "transport error"
    };
    // Never include the URL: some gateways carry credentials in it.
    SendError::retryable(format!("{provider}: {what}"))
}

/// The common status mapping: 429 and 5xx retry (with Retry-After), other 4xx are final.
pub(crate) fn classify_status(
    provider: &str,
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) -> SendError {
    let snippet: String = crate::mask::mask_pans(body).chars().take(200).collect();
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        SendError::Retryable {
            reason: format!("{provider}: HTTP {}", status.as_u16()),
            retry_after: retry_after(headers),
        }
    } else {
        SendError::Rejected {
            reason: format!("{provider}: HTTP {} {snippet}", status.as_u16()),
        }
    }
}

/// A reqwest client with sane timeouts; `http2_only` for APNs on a plain-text base URL.
pub(crate) fn http_client(timeout: Duration, http2_prior_knowledge: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .pool_idle_timeout(Duration::from_secs(90));
    if http2_prior_knowledge {
        builder = builder.http2_prior_knowledge();
    }
    builder
        .build()
        .expect("a reqwest client with rustls builds")
}

/// Joins a base URL and a path without doubling slashes.
pub(crate) fn join(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}
