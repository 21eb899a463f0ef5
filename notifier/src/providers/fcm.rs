//! FCM HTTP v1: `POST {base}/v1/projects/{project_id}/messages:send` with
//! `Authorization: Bearer <OAuth2 access token>`. The token comes from the service account's
//! `token_uri` for an RS256-signed JWT assertion; it is cached and refreshed before expiry.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{Outgoing, Provider, SendError, classify_status, join, transport_error};
use crate::model::Priority;

pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
pub const DEFAULT_BASE_URL: &str = "https://fcm.googleapis.com";

/// The fields of a Google service-account JSON that FCM needs.
#[derive(Clone, Deserialize)]
pub struct ServiceAccount {
    pub project_id: String,
    pub client_email: String,
    pub private_key: String,
    pub token_uri: String,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    pub fn from_json(text: &str) -> Result<Self, String> {
        let account: ServiceAccount =
            serde_json::from_str(text).map_err(|e| format!("not a service-account JSON: {e}"))?;
        jsonwebtoken::EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| format!("private_key is not an RSA PEM key: {e}"))?;
        Ok(account)
    }
}

#[derive(Clone, Debug)]
pub struct FcmConfig {
    pub account: ServiceAccount,
    pub base_url: String,
    pub timeout: Duration,
    /// Refresh the access token this long before it expires.
    pub refresh_skew: Duration,
}

impl FcmConfig {
    pub fn new(account: ServiceAccount, base_url: Option<String>) -> Self {
        Self {
            account,
            base_url: base_url.unwrap_or_else(|| DEFAULT_BASE_URL.to_owned()),
            timeout: Duration::from_secs(10),
            refresh_skew: Duration::from_secs(300),
        }
    }
}

struct CachedToken {
    token: String,
    refresh_at: Instant,
}

pub struct Fcm {
    config: FcmConfig,
    key: jsonwebtoken::EncodingKey,
    client: reqwest::Client,
    /// The current token: read by every send without waiting on one another.
    token: std::sync::RwLock<Option<CachedToken>>,
    /// Held while fetching a token, so that only one fetch runs at a time.
    refresh: Mutex<()>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default = "default_expiry")]
    expires_in: u64,
}

fn default_expiry() -> u64 {
    3600
}

impl Fcm {
    pub fn new(config: FcmConfig) -> Result<Self, String> {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(config.account.private_key.as_bytes())
            .map_err(|e| format!("FCM private_key: {e}"))?;
        Ok(Self {
            client: super::http_client(config.timeout, false),
            key,
            config,
            token: std::sync::RwLock::new(None),
            refresh: Mutex::new(()),
        })
    }

    fn cached_token(&self) -> Option<String> {
        let cached = self.token.read().unwrap_or_else(|e| e.into_inner());
        cached
            .as_ref()
            .filter(|t| Instant::now() < t.refresh_at)
            .map(|t| t.token.clone())
    }

    fn assertion(&self) -> Result<String, SendError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = json!({
            "iss": self.config.account.client_email,
            "scope": SCOPE,
            "aud": self.config.account.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &self.key,
        )
        .map_err(|e| SendError::Rejected {
            reason: format!("fcm: signing the assertion: {e}"),
        })
    }

    /// The cached access token, fetched or refreshed when missing or about to expire.
    pub async fn access_token(&self) -> Result<String, SendError> {
        if let Some(token) = self.cached_token() {
            return Ok(token);
        }
        let _refreshing = self.refresh.lock().await;
        // Another send may have fetched one while this one waited.
        if let Some(token) = self.cached_token() {
            return Ok(token);
        }
        let assertion = self.assertion()?;
        let response = self
            .client
            .post(&self.config.account.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| transport_error("fcm token", e))?;
        let status = response.status();
        let headers = response.headers().clone();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(classify_status("fcm token", status, &headers, &body));
        }
        let answer: TokenAnswer = response.json().await.map_err(|_| SendError::Retryable {
            reason: "fcm token: unreadable answer".into(),
            retry_after: None,
        })?;
        let lifetime = Duration::from_secs(answer.expires_in);
        let refresh_at = Instant::now() + lifetime.saturating_sub(self.config.refresh_skew);
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = Some(CachedToken {
            token: answer.access_token.clone(),
            refresh_at,
        });
        tracing::debug!(expires_in = answer.expires_in, "fcm access token refreshed");
        Ok(answer.access_token)
    }

    async fn invalidate_token(&self) {
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The exact body FCM HTTP v1 expects.
    pub fn body(message: &Outgoing) -> serde_json::Value {
        let mut data = serde_json::Map::new();
        for (k, v) in &message.data {
            data.insert(k.clone(), json!(v));
        }
        json!({
            "message": {
                "token": message.to,
                "notification": {"title": message.title, "body": message.body},
                "data": data,
                "android": {"priority": match message.priority { Priority::High => "high", Priority::Normal => "normal" }},
            }
        })
    }

    async fn send_once(&self, message: &Outgoing) -> Result<(), (SendError, bool)> {
        let token = self.access_token().await.map_err(|e| (e, false))?;
        let url = join(
            &self.config.base_url,
            &format!(
                "v1/projects/{}/messages:send",
                self.config.account.project_id
            ),
        );
        let response = self
            .client
            .post(url)
            .bearer_auth(token)
            .json(&Self::body(message))
            .send()
            .await
            .map_err(|e| (transport_error("fcm", e), false))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let headers = response.headers().clone();
        let body = response.text().await.unwrap_or_default();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err((SendError::retryable("fcm: HTTP 401"), true));
        }
        Err((classify_fcm_error(status, &headers, &body), false))
    }
}

/// 404 UNREGISTERED and 400 INVALID_ARGUMENT about the token mean the token is dead.
fn classify_fcm_error(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) -> SendError {
    let parsed: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let error = &parsed["error"];
    let status_text = error["status"].as_str().unwrap_or("");
    let details_code = error["details"]
        .as_array()
        .and_then(|d| d.iter().find_map(|x| x["errorCode"].as_str()))
        .unwrap_or("");
    let message = error["message"].as_str().unwrap_or("").to_ascii_lowercase();
    let unregistered = status == reqwest::StatusCode::NOT_FOUND
        && (status_text == "NOT_FOUND"
            || details_code == "UNREGISTERED"
            || status_text == "UNREGISTERED");
    let bad_token = status == reqwest::StatusCode::BAD_REQUEST
        && (status_text == "INVALID_ARGUMENT" || details_code == "INVALID_ARGUMENT")
        && (message.contains("token") || message.contains("registration"));
    if unregistered || bad_token {
        return SendError::InvalidRecipient {
            reason: format!(
                "fcm: HTTP {} {}",
                status.as_u16(),
                if details_code.is_empty() {
                    status_text
                } else {
                    details_code
                }
            ),
        };
    }
    classify_status("fcm", status, headers, body)
}

#[async_trait]
impl Provider for Fcm {
    fn name(&self) -> &'static str {
        "fcm"
    }

    async fn send(&self, message: &Outgoing) -> Result<(), SendError> {
        match self.send_once(message).await {
            Ok(()) => Ok(()),
            Err((_, true)) => {
                // The token was revoked early: fetch a new one and try once more.
                self.invalidate_token().await;
                self.send_once(message).await.map_err(|(e, _)| e)
            }
            Err((e, false)) => Err(e),
        }
    }
}
