//! What the gateway asks of a customer actor, as data, so the same request travels as a
//! local actor message or as a NATS request to the node that owns the customer.

use kernel::{Change, CustomerId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CustomerRequest {
    /// `GET /v1/me`.
    Me,
    /// `GET /v1/products`.
    Products,
    /// `GET /v1/accounts/{id}/transactions`.
    Transactions {
        account_id: String,
        #[serde(default, with = "time::serde::rfc3339::option")]
        from: Option<time::OffsetDateTime>,
        #[serde(default, with = "time::serde::rfc3339::option")]
        to: Option<time::OffsetDateTime>,
        before_seq: Option<u64>,
        limit: u32,
    },
    /// `POST /v1/feed/read`.
    MarkRead { up_to_seq: u64 },
    /// Journal head and unread count, for the feed.
    FeedHead,
    /// Cache Control changes for this customer, in order.
    Apply { changes: Vec<Change> },
    /// `POST /v1/payments`: checks, the ABS command, the `payment_status` event.
    Pay {
        order: domain::payments::PaymentOrder,
    },
    /// `GET /v1/payments/{id}`.
    Payment { id: String },
    /// Journals a payment that needs a step-up confirmation with its challenge
    /// (`payment_status` `confirmation_required`, the order inside); nothing moves.
    Hold {
        order: domain::payments::PaymentOrder,
        challenge_id: String,
    },
    /// The binding of a held payment (`operation`, `amount`, `payee`), or `not_found`.
    Held { challenge_id: String },
    /// The challenge was confirmed: executes exactly the held payment.
    Confirm { challenge_id: String },
    /// `GET /v1/templates`.
    Templates,
    /// One template (for `POST /v1/templates/{id}/pay`), or `not_found`.
    Template { id: String },
    /// `POST /v1/templates`: journals `template_saved`.
    SaveTemplate {
        template: domain::templates::Template,
    },
    /// `DELETE /v1/templates/{id}`: journals `template_deleted`, or `not_found`.
    DeleteTemplate { id: String },
    /// `GET /v1/autopayments`.
    Autopayments,
    /// `POST /v1/autopayments`: journals `autopayment_saved`.
    SaveAutopayment {
        autopayment: domain::autopay::Autopayment,
    },
    /// `DELETE /v1/autopayments/{id}`: journals `autopayment_deleted`, or `not_found`.
    DeleteAutopayment { id: String },
    /// The scheduler found the run of a monthly/weekly autopayment due at `due_at_ms` (the
    /// schedule index): pays it unless its period's run is recorded, and answers
    /// `{"next_run_ms": <ms> | null}`, where the index moves next (null: remove it).
    RunScheduled {
        autopayment_id: String,
        due_at_ms: i64,
    },
}

/// A request with its addressee, as it travels over the bus.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub customer_id: CustomerId,
    pub request: CustomerRequest,
}

/// The outcome of applying a batch of changes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub applied: Vec<String>,
    pub duplicates: Vec<String>,
    /// Refused changes: (change id, stable code, detail).
    pub rejected: Vec<(String, String, String)>,
    /// Journal version after the batch.
    pub version: u64,
}

/// Why a call failed; `code` is stable and becomes the problem+json `code`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct CallError {
    pub code: String,
    pub detail: String,
}

impl CallError {
    pub fn new(code: &str, detail: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            detail: detail.into(),
        }
    }

    pub fn not_found() -> Self {
        Self::new("not_found", "no such resource")
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new("unavailable", detail)
    }

    /// Whether retrying the same call later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.code.as_str(),
            "unavailable" | "version_conflict" | "timeout" | "partition_moving"
        )
    }
}

/// The bus form of an answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(Value),
    Err(CallError),
}
