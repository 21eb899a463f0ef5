//! SMS through HTTP gateways.
//!
//! - [`JsonGateway`]: API.md's generic gateway, `POST {url}` JSON `{"id","to","text"}` with an
//!   optional `Authorization: Bearer <ARBAT_SMS_TOKEN>`; 2xx means accepted. The `id` is the
//!   request id, so a gateway can drop a repeat after a worker died between its answer and
//!   our record.
//! - [`Twilio`]: a Twilio-compatible form provider,
//!   `POST {base}/2010-04-01/Accounts/{sid}/Messages.json` with `To`, `From`, `Body` and basic auth.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use super::{Outgoing, Provider, SendError, classify_status, join, transport_error};

#[derive(Clone)]
pub struct JsonGatewayConfig {
    pub url: String,
    pub token: Option<String>,
    pub timeout: Duration,
}

impl std::fmt::Debug for JsonGatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonGatewayConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

pub struct JsonGateway {
    config: JsonGatewayConfig,
    client: reqwest::Client,
}

impl JsonGateway {
    pub fn new(config: JsonGatewayConfig) -> Self {
        Self {
            client: super::http_client(config.timeout, false),
            config,
        }
    }

    /// The SMS text of a message: the short form (title is not sent by SMS).
    pub fn body(message: &Outgoing) -> serde_json::Value {
        json!({"id": message.request_id, "to": message.to, "text": message.body})
    }
}

#[async_trait]
impl Provider for JsonGateway {
    fn name(&self) -> &'static str {
        "sms"
    }

    async fn send(&self, message: &Outgoing) -> Result<(), SendError> {
        let mut request = self
            .client
            .post(&self.config.url)
            .json(&Self::body(message));
        if let Some(token) = &self.config.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport_error("sms", e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let headers = response.headers().clone();
        let body = response.text().await.unwrap_or_default();
        Err(classify_status("sms", status, &headers, &body))
    }
}

#[derive(Clone)]
pub struct TwilioConfig {
    pub base_url: String,
    pub account_sid: String,
    pub auth_token: String,
    pub from: String,
    pub timeout: Duration,
}

impl std::fmt::Debug for TwilioConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioConfig")
            .field("base_url", &self.base_url)
            .field("account_sid", &self.account_sid)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

pub struct Twilio {
    config: TwilioConfig,
    client: reqwest::Client,
}

impl Twilio {
    pub fn new(config: TwilioConfig) -> Self {
        Self {
            client: super::http_client(config.timeout, false),
            config,
        }
    }
}

#[async_trait]
impl Provider for Twilio {
    fn name(&self) -> &'static str {
        "sms"
    }

    async fn send(&self, message: &Outgoing) -> Result<(), SendError> {
        let url = join(
            &self.config.base_url,
            &format!(
                "2010-04-01/Accounts/{}/Messages.json",
                self.config.account_sid
            ),
        );
        let response = self
            .client
            .post(url)
            .basic_auth(&self.config.account_sid, Some(&self.config.auth_token))
            .form(&[
                ("To", message.to.as_str()),
                ("From", self.config.from.as_str()),
                ("Body", message.body.as_str()),
            ])
            .send()
            .await
            .map_err(|e| transport_error("sms", e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let headers = response.headers().clone();
        let body = response.text().await.unwrap_or_default();
        // Twilio 21211/21614: the number cannot receive SMS.
        if status == reqwest::StatusCode::BAD_REQUEST
            && (body.contains("21211") || body.contains("21614"))
        {
            return Err(SendError::InvalidRecipient {
                reason: "sms: number cannot receive SMS".into(),
            });
        }
        Err(classify_status("sms", status, &headers, &body))
    }
}
