//! APNs over HTTP/2 with token (p8, ES256) authentication:
//! `POST {base}/3/device/<token>` with `authorization: bearer <jwt>`, `apns-topic`,
//! `apns-push-type`, `apns-priority`. The provider token is reused for 50 minutes (Apple
//! refuses tokens older than an hour and throttles ones refreshed more often than 20 minutes).

use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{Outgoing, Provider, SendError, classify_status, join, transport_error};
use crate::model::Priority;

pub const DEFAULT_BASE_URL: &str = "https://api.push.apple.com";

#[derive(Clone)]
pub struct ApnsConfig {
    /// The p8 key (PKCS#8 PEM).
    pub key_pem: String,
    pub key_id: String,
    pub team_id: String,
    /// The app's bundle id.
    pub topic: String,
    pub base_url: String,
    pub timeout: Duration,
    pub token_lifetime: Duration,
}

impl std::fmt::Debug for ApnsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsConfig")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("topic", &self.topic)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl ApnsConfig {
    pub fn new(
        key_pem: String,
        key_id: String,
        team_id: String,
        topic: String,
        base_url: Option<String>,
    ) -> Self {
        Self {
            key_pem,
            key_id,
            team_id,
            topic,
            base_url: base_url.unwrap_or_else(|| DEFAULT_BASE_URL.to_owned()),
            timeout: Duration::from_secs(10),
            token_lifetime: Duration::from_secs(50 * 60),
        }
    }
}

pub struct Apns {
    config: ApnsConfig,
    key: jsonwebtoken::EncodingKey,
    client: reqwest::Client,
    /// The current provider token and when it was made (read without waiting).
    token: std::sync::RwLock<Option<(String, Instant)>>,
    /// Held while signing a new token.
    refresh: Mutex<()>,
}

impl Apns {
    pub fn new(config: ApnsConfig) -> Result<Self, String> {
        let key = jsonwebtoken::EncodingKey::from_ec_pem(config.key_pem.as_bytes())
            .map_err(|e| format!("APNs key is not a P-256 p8 key: {e}"))?;
        // https: TLS with ALPN h2; http (tests): HTTP/2 with prior knowledge.
        let prior_knowledge = config.base_url.starts_with("http://");
        Ok(Self {
            client: super::http_client(config.timeout, prior_knowledge),
            key,
            config,
            token: std::sync::RwLock::new(None),
            refresh: Mutex::new(()),
        })
    }

    fn cached_token(&self) -> Option<(String, Instant)> {
        let cached = self.token.read().unwrap_or_else(|e| e.into_inner());
        cached
            .as_ref()
            .filter(|(_, made)| made.elapsed() < self.config.token_lifetime)
            .cloned()
    }

    async fn provider_token(&self, force: bool) -> Result<String, SendError> {
        let seen = self.cached_token();
        if !force && let Some((token, _)) = seen {
            return Ok(token);
        }
        let _signing = self.refresh.lock().await;
        // Another send may have made a new one meanwhile (newer than the one we saw).
        if let Some((token, made)) = self.cached_token()
            && (!force || seen.as_ref().is_none_or(|(_, old)| made > *old))
        {
            return Ok(token);
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.config.key_id.clone());
        let claims = json!({
            "iss": self.config.team_id,
            "iat": time::OffsetDateTime::now_utc().unix_timestamp(),
        });
        let token =
            jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| SendError::Rejected {
                reason: format!("apns: signing the provider token: {e}"),
            })?;
        *self.token.write().unwrap_or_else(|e| e.into_inner()) =
            Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// The exact payload APNs expects.
    pub fn body(message: &Outgoing) -> serde_json::Value {
        let mut body = json!({
            "aps": {
                "alert": {"title": message.title, "body": message.body},
                "sound": "default",
            }
        });
        for (k, v) in &message.data {
            if k != "aps" {
                body[k] = json!(v);
            }
        }
        body
    }

    async fn send_once(&self, message: &Outgoing, force_token: bool) -> Result<(), SendError> {
        let token = self.provider_token(force_token).await?;
        let url = join(&self.config.base_url, &format!("3/device/{}", message.to));
        let priority = match message.priority {
            Priority::High => "10",
            Priority::Normal => "5",
        };
        let response = self
            .client
            .post(url)
            .header("authorization", format!("bearer {token}"))
            .header("apns-topic", &self.config.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", priority)
            .header("apns-expiration", "0")
            .json(&Self::body(message))
            .send()
            .await
            .map_err(|e| transport_error("apns", e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let headers = response.headers().clone();
        let body = response.text().await.unwrap_or_default();
        let reason: String = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_owned))
            .unwrap_or_default();
        match (status.as_u16(), reason.as_str()) {
            (410, _) | (400, "BadDeviceToken") | (400, "DeviceTokenNotForTopic") => {
                Err(SendError::InvalidRecipient {
                    reason: format!("apns: HTTP {} {reason}", status.as_u16()),
                })
            }
            (403, "ExpiredProviderToken") | (403, "InvalidProviderToken") => {
                Err(SendError::Retryable {
                    reason: format!("apns: {reason}"),
                    retry_after: None,
                })
            }
            _ => Err(classify_status("apns", status, &headers, &body)),
        }
    }
}

#[async_trait]
impl Provider for Apns {
    fn name(&self) -> &'static str {
        "apns"
    }

    async fn send(&self, message: &Outgoing) -> Result<(), SendError> {
        match self.send_once(message, false).await {
            Err(SendError::Retryable { reason, .. }) if reason.contains("ProviderToken") => {
                self.send_once(message, true).await
            }
            other => other,
        }
    }
}
