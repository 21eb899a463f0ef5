//! Cache Control changes: what back systems push to keep hot state current (API.md).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{CustomerId, Money};

/// One change from a back system, applied at most once (deduplicated by `id`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub id: String,
    pub customer_id: CustomerId,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(flatten)]
    pub body: ChangeBody,
}

/// The kinds of change the platform understands, tagged by `kind` on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChangeBody {
    TransactionPosted {
        account_id: String,
        /// Negative for a debit.
        amount: Money,
        /// The account balance after the posting.
        balance: Money,
        description: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mcc: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        counterparty: Option<String>,
    },
    BalanceChanged {
        account_id: String,
        balance: Money,
    },
    ProductChanged {
        product_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
        /// A card's new daily spending limit (`PUT /v1/cards/{id}/limits`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        daily_limit: Option<Money>,
    },
    /// A product the ABS opened for the customer (a deposit opened from an account).
    ProductOpened {
        product_id: String,
        /// `account`, `card`, `deposit` or `loan`.
        product_kind: String,
        title: String,
        status: String,
        balance: Money,
        #[serde(default)]
        details: serde_json::Map<String, serde_json::Value>,
    },
    /// The outcome of a notification sent to the customer (from the notifier), or a message
    /// the bank wants in the customer's feed.
    Notification {
        /// The notification request this reports on.
        request_id: String,
        /// What it was about: `transaction`, `code`, `offer` ...
        about: String,
        /// `push`, `sms`, `email`, `in_app`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        /// `accepted`, `failed`, `dead_lettered`.
        status: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

impl ChangeBody {
    /// Every kind the platform understands; a change of another kind is `unknown_change_kind`.
    pub const KINDS: [&'static str; 5] = [
        "transaction_posted",
        "balance_changed",
        "product_changed",
        "product_opened",
        "notification",
    ];

    pub fn kind(&self) -> &'static str {
        match self {
            ChangeBody::TransactionPosted { .. } => "transaction_posted",
            ChangeBody::BalanceChanged { .. } => "balance_changed",
            ChangeBody::ProductChanged { .. } => "product_changed",
            ChangeBody::ProductOpened { .. } => "product_opened",
            ChangeBody::Notification { .. } => "notification",
        }
    }
}

/// Why a change was refused. The `code` is stable and reaches back systems.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("change is not a JSON object: {0}")]
    Malformed(String),
    #[error("unknown change kind {0:?}")]
    UnknownKind(String),
    #[error("invalid change: {0}")]
    Invalid(String),
}

impl ChangeError {
    pub fn code(&self) -> &'static str {
        match self {
            ChangeError::Malformed(_) => "malformed_change",
            ChangeError::UnknownKind(_) => "unknown_change_kind",
            ChangeError::Invalid(_) => "invalid_change",
        }
    }
}

/// Longest accepted change id; ids are stored and used as NATS message ids.
pub const MAX_CHANGE_ID_LEN: usize = 128;

impl Change {
    /// Parses and validates one change from its JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ChangeError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ChangeError::Malformed(e.to_string()))?;
        Self::from_value(value)
    }

    /// Validates one change already decoded as JSON (an element of an HTTP batch).
    pub fn from_value(value: serde_json::Value) -> Result<Self, ChangeError> {
        let Some(object) = value.as_object() else {
            return Err(ChangeError::Malformed("expected an object".into()));
        };
        match object.get("kind").and_then(|k| k.as_str()) {
            Some(kind) if ChangeBody::KINDS.contains(&kind) => {}
            Some(kind) => return Err(ChangeError::UnknownKind(kind.chars().take(64).collect())),
            None => return Err(ChangeError::Invalid("missing field `kind`".into())),
        }
        let change: Change =
            serde_json::from_value(value).map_err(|e| ChangeError::Invalid(e.to_string()))?;
        if change.id.is_empty() || change.id.len() > MAX_CHANGE_ID_LEN {
            return Err(ChangeError::Invalid(format!(
                "id must be 1 to {MAX_CHANGE_ID_LEN} characters"
            )));
        }
        if let ChangeBody::TransactionPosted {
            amount, balance, ..
        } = &change.body
            && amount.currency != balance.currency
        {
            return Err(ChangeError::Invalid(
                "amount and balance currencies differ".into(),
            ));
        }
        Ok(change)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POSTED: &str = r#"{"id":"chg-1","customer_id":"c000001","kind":"transaction_posted",
        "at":"2026-12-04T10:00:00Z","account_id":"a000001","amount":{"amount":"-100.00","currency":"RUB"},
        "balance":{"amount":"900.00","currency":"RUB"},"description":"Coffee","mcc":"5814"}"#;

    #[test]
    fn parses_the_documented_kinds() {
        let change = Change::from_json(POSTED.as_bytes()).unwrap();
        assert_eq!(change.body.kind(), "transaction_posted");
        let round_trip = Change::from_json(&change.to_json()).unwrap();
        assert_eq!(round_trip, change);
        let balance = r#"{"id":"b","customer_id":"c1","kind":"balance_changed","at":"2026-12-04T10:00:00Z",
            "account_id":"a1","balance":{"amount":"1.00","currency":"RUB"}}"#;
        assert!(Change::from_json(balance.as_bytes()).is_ok());
    }

    #[test]
    fn every_kind_is_known_to_the_parser() {
        let money = r#"{"amount":"1.00","currency":"RUB"}"#;
        let samples = [
            format!(
                r#"{{"kind":"transaction_posted","account_id":"a","amount":{money},"balance":{money},"description":"d"}}"#
            ),
            format!(r#"{{"kind":"balance_changed","account_id":"a","balance":{money}}}"#),
            r#"{"kind":"product_changed","product_id":"k"}"#.to_string(),
            format!(
                r#"{{"kind":"product_opened","product_id":"d","product_kind":"deposit","title":"t","status":"active","balance":{money}}}"#
            ),
            r#"{"kind":"notification","request_id":"r","about":"transaction","status":"accepted"}"#
                .to_string(),
        ];
        assert_eq!(samples.len(), ChangeBody::KINDS.len());
        for sample in samples {
            let mut value: serde_json::Value = serde_json::from_str(&sample).unwrap();
            value["id"] = "x".into();
            value["customer_id"] = "c1".into();
            value["at"] = "2026-12-04T10:00:00Z".into();
            let change = Change::from_value(value).unwrap();
            assert!(ChangeBody::KINDS.contains(&change.body.kind()));
            assert_eq!(Change::from_json(&change.to_json()).unwrap(), change);
        }
    }

    #[test]
    fn refuses_bad_changes_with_stable_codes() {
        let cases = [
            ("not json", "malformed_change"),
            ("[1]", "malformed_change"),
            (
                r#"{"id":"x","customer_id":"c1","kind":"teleport","at":"2026-12-04T10:00:00Z"}"#,
                "unknown_change_kind",
            ),
            (
                r#"{"id":"x","customer_id":"c1","at":"2026-12-04T10:00:00Z"}"#,
                "invalid_change",
            ),
            (
                r#"{"id":"x","customer_id":"c.1","kind":"balance_changed","at":"2026-12-04T10:00:00Z","account_id":"a","balance":{"amount":"1","currency":"RUB"}}"#,
                "invalid_change",
            ),
            (
                r#"{"id":"","customer_id":"c1","kind":"balance_changed","at":"2026-12-04T10:00:00Z","account_id":"a","balance":{"amount":"1","currency":"RUB"}}"#,
                "invalid_change",
            ),
            (
                r#"{"id":"x","customer_id":"c1","kind":"balance_changed","at":"yesterday","account_id":"a","balance":{"amount":"1","currency":"RUB"}}"#,
                "invalid_change",
            ),
            (
                r#"{"id":"x","customer_id":"c1","kind":"balance_changed","at":"2026-12-04T10:00:00Z","account_id":"a","balance":{"amount":1.5,"currency":"RUB"}}"#,
                "invalid_change",
            ),
        ];
        for (raw, code) in cases {
            let err = Change::from_json(raw.as_bytes()).unwrap_err();
            assert_eq!(err.code(), code, "{raw}");
        }
    }
}

/// Where accepted changes go: straight to the owning actors when embedded, to the
/// `ABS_EVENTS` JetStream stream in a cluster. `submit` returns once they are durable.
#[async_trait::async_trait]
pub trait ChangeSink: Send + Sync + 'static {
    async fn submit(&self, changes: Vec<Change>) -> Result<SubmitReport, SinkError>;
}

/// What happened to submitted changes (embedded sinks know at once; a stream only accepts).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SubmitReport {
    pub accepted: usize,
    /// Refused by the customer's rules: (change id, stable code, detail).
    pub rejected: Vec<(String, String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    #[error("unknown customer {0}")]
    UnknownCustomer(String),
    #[error("changes could not be made durable: {0}")]
    Unavailable(String),
}
