//! Provider configuration from the environment names of API.md.

use std::sync::Arc;
use std::time::Duration;

use crate::providers::apns::{Apns, ApnsConfig};
use crate::providers::console::ConsoleSms;
use crate::providers::fcm::{Fcm, FcmConfig, ServiceAccount};
use crate::providers::sms::{JsonGateway, JsonGatewayConfig, Twilio, TwilioConfig};
use crate::providers::smtp::Smtp;
use crate::worker::Providers;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{var} is required when {because}")]
    Missing {
        var: &'static str,
        because: &'static str,
    },
    #[error("{var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
}

#[derive(Clone, Debug)]
pub enum SmsConfig {
    Json(JsonGatewayConfig),
    Twilio(TwilioConfig),
}

/// What the operator configured; any provider may be absent.
#[derive(Clone, Debug, Default)]
pub struct NotifierConfig {
    pub sms: Option<SmsConfig>,
    pub fcm: Option<FcmConfig>,
    pub apns: Option<ApnsConfig>,
    /// `(ARBAT_SMTP_URL, ARBAT_MAIL_FROM)`.
    pub smtp: Option<(String, String)>,
    pub timeout: Duration,
}

impl NotifierConfig {
    /// Reads `ARBAT_SMS_URL` (+ `ARBAT_SMS_TOKEN`; `ARBAT_SMS_PROVIDER=twilio` with
    /// `ARBAT_TWILIO_ACCOUNT_SID`, `ARBAT_TWILIO_AUTH_TOKEN`, `ARBAT_SMS_FROM`),
    /// `ARBAT_FCM_SERVICE_ACCOUNT`, `ARBAT_FCM_BASE_URL`, `ARBAT_APNS_KEY`, `ARBAT_APNS_KEY_ID`,
    /// `ARBAT_APNS_TEAM_ID`, `ARBAT_APNS_TOPIC`, `ARBAT_APNS_BASE_URL`, `ARBAT_SMTP_URL`,
    /// `ARBAT_MAIL_FROM`.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// Like [`Self::from_env`] with any lookup (tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let timeout = Duration::from_secs(10);
        let url_var = |var: &'static str| -> Result<Option<String>, ConfigError> {
            match get(var) {
                None => Ok(None),
                Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                    Ok(Some(url))
                }
                Some(_) => Err(ConfigError::Invalid {
                    var,
                    reason: "must be an http:// or https:// URL".into(),
                }),
            }
        };
        let sms = match (
            get("ARBAT_SMS_PROVIDER").as_deref(),
            url_var("ARBAT_SMS_URL")?,
        ) {
            (Some("twilio"), url) => {
                let need = |var: &'static str| {
                    get(var).ok_or(ConfigError::Missing {
                        var,
                        because: "ARBAT_SMS_PROVIDER=twilio",
                    })
                };
                Some(SmsConfig::Twilio(TwilioConfig {
                    base_url: url.unwrap_or_else(|| "https://api.twilio.com".into()),
                    account_sid: need("ARBAT_TWILIO_ACCOUNT_SID")?,
                    auth_token: need("ARBAT_TWILIO_AUTH_TOKEN")?,
                    from: need("ARBAT_SMS_FROM")?,
                    timeout,
                }))
            }
            (Some("json") | None, Some(url)) => Some(SmsConfig::Json(JsonGatewayConfig {
                url,
                token: get("ARBAT_SMS_TOKEN"),
                timeout,
            })),
            (Some("json") | None, None) => None,
            (Some(other), _) => {
                return Err(ConfigError::Invalid {
                    var: "ARBAT_SMS_PROVIDER",
                    reason: format!("{other:?}: use json or twilio"),
                });
            }
        };
        let fcm_base = url_var("ARBAT_FCM_BASE_URL")?;
        let fcm = match get("ARBAT_FCM_SERVICE_ACCOUNT") {
            None => None,
            Some(path) => {
                let var = "ARBAT_FCM_SERVICE_ACCOUNT";
                let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Invalid {
                    var,
                    reason: format!("reading {path}: {e}"),
                })?;
                let account = ServiceAccount::from_json(&text)
                    .map_err(|reason| ConfigError::Invalid { var, reason })?;
                Some(FcmConfig::new(account, fcm_base))
            }
        };
        let apns = match get("ARBAT_APNS_KEY") {
            None => None,
            Some(path) => {
                let because = "ARBAT_APNS_KEY is set";
                let need =
                    |var: &'static str| get(var).ok_or(ConfigError::Missing { var, because });
                let key_pem = std::fs::read_to_string(&path).map_err(|e| ConfigError::Invalid {
                    var: "ARBAT_APNS_KEY",
                    reason: format!("reading {path}: {e}"),
                })?;
                jsonwebtoken::EncodingKey::from_ec_pem(key_pem.as_bytes()).map_err(|e| {
                    ConfigError::Invalid {
                        var: "ARBAT_APNS_KEY",
                        reason: format!("not a P-256 p8 key: {e}"),
                    }
                })?;
                Some(ApnsConfig::new(
                    key_pem,
                    need("ARBAT_APNS_KEY_ID")?,
                    need("ARBAT_APNS_TEAM_ID")?,
                    need("ARBAT_APNS_TOPIC")?,
                    url_var("ARBAT_APNS_BASE_URL")?,
                ))
            }
        };
        let smtp = match get("ARBAT_SMTP_URL") {
            None => None,
            Some(url) => {
                let from = get("ARBAT_MAIL_FROM").ok_or(ConfigError::Missing {
                    var: "ARBAT_MAIL_FROM",
                    because: "ARBAT_SMTP_URL is set",
                })?;
                Smtp::check(&url, &from).map_err(|reason| ConfigError::Invalid {
                    var: "ARBAT_SMTP_URL",
                    reason,
                })?;
                Some((url, from))
            }
        };
        Ok(Self {
            sms,
            fcm,
            apns,
            smtp,
            timeout,
        })
    }

    /// Builds the providers. With no SMS gateway, `demo_console_sms` prints SMS to the
    /// console (embedded demo); otherwise a missing gateway is an error (cluster).
    pub fn providers(&self, demo_console_sms: bool) -> Result<Providers, ConfigError> {
        let sms: Arc<dyn crate::Provider> = match &self.sms {
            Some(SmsConfig::Json(c)) => Arc::new(JsonGateway::new(c.clone())),
            Some(SmsConfig::Twilio(c)) => Arc::new(Twilio::new(c.clone())),
            None if demo_console_sms => Arc::new(ConsoleSms),
            None => {
                return Err(ConfigError::Missing {
                    var: "ARBAT_SMS_URL",
                    because: "running in a cluster",
                });
            }
        };
        let fcm = self
            .fcm
            .clone()
            .map(|c| Fcm::new(c).map(|p| Arc::new(p) as Arc<dyn crate::Provider>))
            .transpose()
            .map_err(|reason| ConfigError::Invalid {
                var: "ARBAT_FCM_SERVICE_ACCOUNT",
                reason,
            })?;
        let apns = self
            .apns
            .clone()
            .map(|c| Apns::new(c).map(|p| Arc::new(p) as Arc<dyn crate::Provider>))
            .transpose()
            .map_err(|reason| ConfigError::Invalid {
                var: "ARBAT_APNS_KEY",
                reason,
            })?;
        let email = self
            .smtp
            .as_ref()
            .map(|(url, from)| {
                Smtp::new(url, from, self.timeout).map(|p| Arc::new(p) as Arc<dyn crate::Provider>)
            })
            .transpose()
            .map_err(|reason| ConfigError::Invalid {
                var: "ARBAT_SMTP_URL",
                reason,
            })?;
        Ok(Providers {
            fcm,
            apns,
            sms: Some(sms),
            email,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[tokio::test]
    async fn errors_name_the_variable() {
        let empty = NotifierConfig::from_lookup(lookup(&[])).unwrap();
        assert!(empty.sms.is_none() && empty.fcm.is_none());
        assert_eq!(
            empty.providers(false).err().unwrap(),
            ConfigError::Missing {
                var: "ARBAT_SMS_URL",
                because: "running in a cluster"
            }
        );
        assert!(empty.providers(true).is_ok());
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![("ARBAT_SMS_URL", "ftp://x")], "ARBAT_SMS_URL"),
            (
                vec![("ARBAT_SMS_PROVIDER", "twilio")],
                "ARBAT_TWILIO_ACCOUNT_SID",
            ),
            (vec![("ARBAT_SMS_PROVIDER", "pigeon")], "ARBAT_SMS_PROVIDER"),
            (
                vec![("ARBAT_FCM_SERVICE_ACCOUNT", "/nonexistent.json")],
                "ARBAT_FCM_SERVICE_ACCOUNT",
            ),
            (
                vec![("ARBAT_APNS_KEY", "/nonexistent.p8")],
                "ARBAT_APNS_KEY",
            ),
            (
                vec![("ARBAT_SMTP_URL", "smtp://127.0.0.1:25")],
                "ARBAT_MAIL_FROM",
            ),
            (
                vec![("ARBAT_SMTP_URL", "imap://x"), ("ARBAT_MAIL_FROM", "a@b.c")],
                "ARBAT_SMTP_URL",
            ),
        ];
        for (vars, named) in cases {
            let err = NotifierConfig::from_lookup(lookup(&vars)).unwrap_err();
            assert!(err.to_string().contains(named), "{err} should name {named}");
        }
        let ok = NotifierConfig::from_lookup(lookup(&[
            ("ARBAT_SMS_URL", "http://127.0.0.1:1/sms"),
            ("ARBAT_SMS_TOKEN", "secret"),
            ("ARBAT_SMTP_URL", "smtp://127.0.0.1:2525"),
            ("ARBAT_MAIL_FROM", "Arbat <bank@example.com>"),
        ]))
        .unwrap();
        assert!(!format!("{ok:?}").contains("secret"), "no secrets in Debug");
        assert!(ok.providers(false).unwrap().email.is_some());
    }
}
