//! The vocabulary: requests, kinds, channels, devices, preferences and outcomes.

use std::collections::BTreeMap;

use kernel::CustomerId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Subject prefix of notification requests (outbox messages and the `NOTIFY` stream).
pub const REQUEST_SUBJECT_PREFIX: &str = "notify.req";
/// Longest accepted request id (it becomes a `Nats-Msg-Id` and a primary key).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// What a notification is about. The kind selects the template and the default routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// One-time codes (registration, login, step-up).
    Code,
    /// A posted transaction: payment, incoming transfer, card purchase.
    Transaction,
    /// A payment changed status.
    PaymentStatus,
    /// New device, password change, blocked card ...
    SecurityAlert,
    /// Marketing offer.
    Offer,
    /// A message from the bank.
    Mail,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Code,
        Kind::Transaction,
        Kind::PaymentStatus,
        Kind::SecurityAlert,
        Kind::Offer,
        Kind::Mail,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Code => "code",
            Kind::Transaction => "transaction",
            Kind::PaymentStatus => "payment_status",
            Kind::SecurityAlert => "security_alert",
            Kind::Offer => "offer",
            Kind::Mail => "mail",
        }
    }

    pub fn parse(raw: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == raw)
    }

    /// Codes and security alerts go first and ignore quiet hours.
    pub fn priority(&self) -> Priority {
        match self {
            Kind::Code | Kind::SecurityAlert => Priority::High,
            _ => Priority::Normal,
        }
    }

    pub fn ignores_quiet_hours(&self) -> bool {
        matches!(self, Kind::Code | Kind::SecurityAlert)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High,
    Normal,
}

impl Priority {
    pub fn as_str(&self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
        }
    }
    /// Sort rank: lower goes first.
    pub fn rank(&self) -> i64 {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
        }
    }
}

/// Where a notification can go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Push,
    Sms,
    Email,
    /// The in-app feed only: nothing leaves the platform.
    InApp,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::Push, Channel::Sms, Channel::Email, Channel::InApp];
    pub fn as_str(&self) -> &'static str {
        match self {
            Channel::Push => "push",
            Channel::Sms => "sms",
            Channel::Email => "email",
            Channel::InApp => "in_app",
        }
    }
    pub fn parse(raw: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == raw)
    }
}

/// Languages with templates. Anything else falls back to the configured default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    Ru,
    En,
}

impl Language {
    pub fn as_str(&self) -> &'static str {
        match self {
            Language::Ru => "ru",
            Language::En => "en",
        }
    }
    /// Reads `ru`, `ru-RU`, `EN_us` ...; `None` for other languages.
    pub fn parse(raw: &str) -> Option<Language> {
        let primary = raw
            .split(['-', '_'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        match primary.as_str() {
            "ru" => Some(Language::Ru),
            "en" => Some(Language::En),
            _ => None,
        }
    }
}

/// One notification to deliver, as emitted through the outbox. Serialized as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationRequest {
    /// Unique and stable: dedupe key of the queue and of every per-channel send.
    pub id: String,
    pub customer_id: CustomerId,
    pub kind: Kind,
    /// Defaults to the kind's priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Template parameters (see the template set for each kind's names and types).
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Contact overrides known to the emitter (a phone for a registration code before the
    /// customer has preferences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<Language>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl NotificationRequest {
    pub fn new(
        id: impl Into<String>,
        customer_id: CustomerId,
        kind: Kind,
        params: serde_json::Value,
    ) -> Self {
        Self {
            id: id.into(),
            customer_id,
            kind,
            priority: None,
            params: match params {
                serde_json::Value::Object(map) => map,
                _ => serde_json::Map::new(),
            },
            phone: None,
            email: None,
            language: None,
            created_at: kernel::now(),
        }
    }

    pub fn priority(&self) -> Priority {
        self.priority.unwrap_or_else(|| self.kind.priority())
    }

    /// The subject the request travels on: `notify.req.high` or `notify.req.normal`.
    pub fn subject(&self) -> String {
        format!("{REQUEST_SUBJECT_PREFIX}.{}", self.priority().as_str())
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and validates a request from its JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let request: NotificationRequest =
            serde_json::from_slice(bytes).map_err(|e| format!("malformed request: {e}"))?;
        if request.id.is_empty()
            || request.id.len() > MAX_REQUEST_ID_LEN
            || request
                .id
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(format!(
                "invalid request id: 1 to {MAX_REQUEST_ID_LEN} printable characters"
            ));
        }
        Ok(request)
    }

    /// The outbox message a customer actor adds to the commit that caused the notification.
    pub fn outbox_message(&self) -> kernel::store::OutboxMessage {
        kernel::store::OutboxMessage {
            subject: self.subject(),
            payload: self.to_json(),
        }
    }
}

/// Whether an outbox subject carries a notification request (for the outbox relay).
pub fn is_request_subject(subject: &str) -> bool {
    subject
        .strip_prefix(REQUEST_SUBJECT_PREFIX)
        .is_some_and(|rest| rest.starts_with('.'))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// Android (and web) through FCM.
    Android,
    /// iOS through APNs.
    Ios,
}

impl Platform {
    pub fn as_str(&self) -> &'static str {
        match self {
            Platform::Android => "android",
            Platform::Ios => "ios",
        }
    }
    pub fn parse(raw: &str) -> Option<Platform> {
        match raw {
            "android" => Some(Platform::Android),
            "ios" => Some(Platform::Ios),
            _ => None,
        }
    }
}

/// A device registered for push.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub platform: Platform,
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<Language>,
}

/// Local quiet hours, `start` inclusive to `end` exclusive, in minutes after local midnight;
/// `start > end` wraps midnight (22:00–08:00).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuietHours {
    #[serde(with = "hhmm")]
    pub start: u16,
    #[serde(with = "hhmm")]
    pub end: u16,
}

mod hhmm {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(minutes: &u16, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:02}:{:02}", minutes / 60, minutes % 60))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
        let raw = String::deserialize(d)?;
        parse(&raw).ok_or_else(|| D::Error::custom("expected HH:MM"))
    }
    pub fn parse(raw: &str) -> Option<u16> {
        let (h, m) = raw.split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    }
}

/// How one kind is delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindRule {
    /// Channels in order; empty means the in-app feed only.
    pub channels: Vec<Channel>,
    /// When push reaches no device, send an SMS instead.
    #[serde(default)]
    pub fallback_sms: bool,
    /// While the customer's app holds a live WebSocket, the in-app event replaces the push
    /// (and its SMS fallback): the customer is looking at the app already.
    #[serde(default)]
    pub in_app_when_online: bool,
}

/// A customer's notification preferences (`GET/PUT /v1/notification-preferences`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<Language>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The customer's offset from UTC in minutes, for quiet hours and dates in texts.
    #[serde(default = "default_utc_offset")]
    pub utc_offset_minutes: i16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
    /// Rules per kind; a kind not listed uses [`Preferences::default_rule`].
    #[serde(default)]
    pub kinds: BTreeMap<Kind, KindRule>,
}

fn default_utc_offset() -> i16 {
    180
}

impl Default for Preferences {
    fn default() -> Self {
        Self {
            language: None,
            phone: None,
            email: None,
            utc_offset_minutes: default_utc_offset(),
            quiet_hours: None,
            kinds: BTreeMap::new(),
        }
    }
}

impl Preferences {
    /// The platform's default routing for a kind.
    pub fn default_rule(kind: Kind) -> KindRule {
        let (channels, fallback_sms) = match kind {
            Kind::Code => (vec![Channel::Sms], false),
            Kind::SecurityAlert => (vec![Channel::Push], true),
            Kind::Transaction | Kind::PaymentStatus => (vec![Channel::Push], true),
            Kind::Offer => (vec![Channel::InApp], false),
            Kind::Mail => (vec![Channel::Email], false),
        };
        KindRule {
            channels,
            fallback_sms,
            in_app_when_online: false,
        }
    }

    pub fn rule(&self, kind: Kind) -> KindRule {
        self.kinds
            .get(&kind)
            .cloned()
            .unwrap_or_else(|| Self::default_rule(kind))
    }

    /// Checks what a customer may set. Codes must keep a channel that leaves the platform.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(rule) = self.kinds.get(&Kind::Code)
            && !rule.channels.iter().any(|c| *c != Channel::InApp)
        {
            return Err("codes need at least one of push, sms or email".into());
        }
        for (kind, rule) in &self.kinds {
            let mut seen = rule.channels.clone();
            seen.sort();
            seen.dedup();
            if seen.len() != rule.channels.len() {
                return Err(format!("{}: a channel is listed twice", kind.as_str()));
            }
        }
        if !(-720..=840).contains(&self.utc_offset_minutes) {
            return Err("utc_offset_minutes must be between -720 and 840".into());
        }
        if let Some(phone) = &self.phone
            && !valid_phone(phone)
        {
            return Err("phone must be E.164, e.g. +79990000001".into());
        }
        if let Some(email) = &self.email
            && !(email.len() <= 254 && email.contains('@') && !email.contains(char::is_whitespace))
        {
            return Err("email is not an address".into());
        }
        Ok(())
    }
}

pub fn valid_phone(phone: &str) -> bool {
    phone
        .strip_prefix('+')
        .is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

/// What became of one send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    /// A provider accepted the message (or it went to the in-app feed).
    Accepted,
    /// Refused for good on this channel (bad recipient, over a cap, nothing to send to).
    Failed,
    /// Gave up after the last delivery attempt; the request is in the dead-letter queue.
    DeadLettered,
}

impl OutcomeStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            OutcomeStatus::Accepted => "accepted",
            OutcomeStatus::Failed => "failed",
            OutcomeStatus::DeadLettered => "dead_lettered",
        }
    }
}

/// Reported to the [`crate::DeliverySink`] and recorded in the store, for the feed's
/// `notification` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryOutcome {
    pub request_id: String,
    /// `None` when the request could not be parsed.
    pub customer_id: Option<CustomerId>,
    pub kind: Option<Kind>,
    pub channel: Option<Channel>,
    pub status: OutcomeStatus,
    /// `fcm`, `apns`, `sms`, `smtp`, `in_app` ...
    pub provider: Option<String>,
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_validation() {
        let c = CustomerId::parse("c1").unwrap();
        let r =
            NotificationRequest::new("r-1", c, Kind::Code, serde_json::json!({"code":"123456"}));
        assert_eq!(r.subject(), "notify.req.high");
        assert_eq!(NotificationRequest::from_json(&r.to_json()).unwrap(), r);
        assert!(is_request_subject(&r.outbox_message().subject));
        assert!(!is_request_subject("notify.requests"));
        assert!(NotificationRequest::from_json(b"{").is_err());
        let mut bad = r.clone();
        bad.id = "a b".into();
        assert!(NotificationRequest::from_json(&bad.to_json()).is_err());
    }

    #[test]
    fn preferences_parse_and_validate() {
        let p: Preferences = serde_json::from_str(
            r#"{"language":"en","quiet_hours":{"start":"22:00","end":"08:00"},
                "kinds":{"transaction":{"channels":["push","email"],"fallback_sms":true}}}"#,
        )
        .unwrap();
        assert_eq!(p.quiet_hours.unwrap().start, 22 * 60);
        assert_eq!(
            p.rule(Kind::Transaction).channels,
            vec![Channel::Push, Channel::Email]
        );
        assert_eq!(p.rule(Kind::Code).channels, vec![Channel::Sms]);
        assert!(p.validate().is_ok());
        let bad: Preferences =
            serde_json::from_str(r#"{"kinds":{"code":{"channels":["in_app"]}}}"#).unwrap();
        assert!(bad.validate().is_err());
        assert!(
            serde_json::from_str::<Preferences>(
                r#"{"quiet_hours":{"start":"25:00","end":"08:00"}}"#
            )
            .is_err()
        );
        assert_eq!(Language::parse("ru-RU"), Some(Language::Ru));
        assert_eq!(Language::parse("de"), None);
    }
}
