//! Payment rules: what the customer actor checks before it asks the ABS to move money, and
//! how a payment's status lives in the journal (`payment_status` events).
//!
//! Pure: the caller passes the time. Idempotency: a payment's id is derived from the
//! customer and the `Idempotency-Key`, so a repeat finds the first record in the state
//! (journaled, so it survives passivation and failover) and answers it again; a repeat with
//! another body is `idempotency_conflict`. The ABS honours the same id itself, so a retry
//! after a lost answer never moves money twice.

use kernel::payment::Destination;
use kernel::{FeedEvent, Money};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::customer::{CustomerState, EventDraft, ProductKind};

/// A fee: `fixed` plus `percent_bp` basis points of the amount, rounded up to the minor unit
/// (a non-zero rate never yields a zero fee), clamped to `[min, max]`. Integer arithmetic.
pub fn fee(
    amount_minor: i64,
    fixed_minor: i64,
    percent_bp: i64,
    min: i64,
    max: Option<i64>,
) -> i64 {
    let proportional = (i128::from(amount_minor.max(0)) * i128::from(percent_bp) + 9_999) / 10_000;
    let total = (i128::from(fixed_minor) + proportional).max(i128::from(min));
    let total = match max {
        Some(max) => total.min(i128::from(max)),
        None => total,
    };
    i64::try_from(total).unwrap_or(i64::MAX)
}

/// Payments kept in the hot state for idempotent replays and `GET /v1/payments/{id}`.
/// Older ones are in the journal (the feed) and the ABS still refuses their ids twice.
pub const RECENT_PAYMENTS: usize = 500;

/// Limits of an operation (from its definition) and of the customer, in one currency;
/// a limit in another currency than the payment's does not apply to it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Most one payment of this operation may move.
    pub per_payment: Option<Money>,
    /// Most this operation may move per calendar day (UTC).
    pub daily: Option<Money>,
    /// Most all payments of the customer may move per calendar day (UTC).
    pub customer_daily: Option<Money>,
}

/// A payment as the gateway validated it against the operation's definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaymentOrder {
    /// Derived from the customer and the idempotency key.
    pub payment_id: String,
    /// Hash of the request body, to tell a replay from a conflicting reuse of the key.
    pub body_hash: String,
    pub operation: String,
    pub from: String,
    pub to: Destination,
    pub amount: Money,
    pub fee: Money,
    pub limits: Limits,
    pub description: String,
}

/// A payment as the state remembers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaymentRecord {
    pub id: String,
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub operation: String,
    pub from: String,
    pub amount: Money,
    pub fee: Money,
    /// `completed` or `pending`.
    pub status: String,
    pub body_hash: String,
    pub credited: Option<Money>,
    pub rate: Option<String>,
    pub payee: Option<String>,
}

impl PaymentRecord {
    /// The API's answer for this payment (`POST /v1/payments`, `GET /v1/payments/{id}`).
    pub fn answer(&self) -> Value {
        let mut answer = json!({
            "id": self.id,
            "status": self.status,
            "operation": self.operation,
            "from": self.from,
            "amount": self.amount,
            "fee": self.fee,
            "created_at": self.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        });
        if let Some(credited) = &self.credited {
            answer["credited"] = json!(credited);
        }
        if let Some(rate) = &self.rate {
            answer["rate"] = json!(rate);
        }
        if let Some(payee) = &self.payee {
            answer["payee"] = json!(payee);
        }
        answer
    }
}

/// Why a payment is refused before it reaches the ABS; nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentRejection {
    /// Also for another customer's account: never reveal that it exists.
    #[error("no such account")]
    AccountNotFound,
    #[error("the account is closed")]
    AccountClosed,
    #[error("the card is blocked")]
    CardBlocked,
    #[error("the amount is not in the account's currency")]
    CurrencyMismatch,
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("{0}")]
    LimitExceeded(String),
    #[error("this Idempotency-Key was used with another request")]
    IdempotencyConflict,
    #[error("the amount must be positive")]
    InvalidAmount,
}

impl PaymentRejection {
    pub fn code(&self) -> &'static str {
        match self {
            PaymentRejection::AccountNotFound => "account_not_found",
            PaymentRejection::AccountClosed => "account_closed",
            PaymentRejection::CardBlocked => "card_blocked",
            PaymentRejection::CurrencyMismatch => "currency_mismatch",
            PaymentRejection::InsufficientFunds => "insufficient_funds",
            PaymentRejection::LimitExceeded(_) => "limit_exceeded",
            PaymentRejection::IdempotencyConflict => "idempotency_conflict",
            PaymentRejection::InvalidAmount => "invalid_field",
        }
    }
}

/// What to do with a payment order.
#[derive(Clone, Debug, PartialEq)]
pub enum PaymentCheck {
    /// Ask the ABS (first time, or a pending payment being retried).
    Proceed,
    /// The same request again: answer what was answered.
    Replay(Value),
}

fn day(at: OffsetDateTime) -> String {
    let date = at.date();
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

fn spent_key(at: OffsetDateTime, operation: &str, money: &Money) -> String {
    format!("{}/{operation}/{}", day(at), money.currency)
}

impl CustomerState {
    /// Checks a payment order against the state: idempotency, the paying product, currency,
    /// the balance as last known (the ABS has the final word), and the limits.
    pub fn check_payment(
        &self,
        order: &PaymentOrder,
        now: OffsetDateTime,
    ) -> Result<PaymentCheck, PaymentRejection> {
        if let Some(record) = self.payments.get(&order.payment_id) {
            if record.body_hash != order.body_hash {
                return Err(PaymentRejection::IdempotencyConflict);
            }
            if record.status != "pending" {
                return Ok(PaymentCheck::Replay(record.answer()));
            }
            return Ok(PaymentCheck::Proceed);
        }
        if order.amount.minor <= 0 || order.fee.minor < 0 {
            return Err(PaymentRejection::InvalidAmount);
        }
        let product = self
            .products
            .get(&order.from)
            .ok_or(PaymentRejection::AccountNotFound)?;
        let account = match product.kind {
            ProductKind::Account | ProductKind::Deposit => product,
            ProductKind::Card => {
                if product.status == "blocked" {
                    return Err(PaymentRejection::CardBlocked);
                }
                if product.status != "active" {
                    return Err(PaymentRejection::AccountClosed);
                }
                product
                    .details
                    .get("account_id")
                    .and_then(Value::as_str)
                    .and_then(|id| self.products.get(id))
                    .ok_or(PaymentRejection::AccountNotFound)?
            }
            ProductKind::Loan => return Err(PaymentRejection::AccountNotFound),
        };
        if account.status != "active" {
            return Err(PaymentRejection::AccountClosed);
        }
        let balance = account.balance.ok_or(PaymentRejection::AccountNotFound)?;
        if balance.currency != order.amount.currency || order.fee.currency != balance.currency {
            return Err(PaymentRejection::CurrencyMismatch);
        }
        let total = order
            .amount
            .minor
            .checked_add(order.fee.minor)
            .ok_or(PaymentRejection::InvalidAmount)?;
        let amount = order.amount;
        let applies = |limit: &Option<Money>| limit.filter(|l| l.currency == amount.currency);
        if let Some(max) = applies(&order.limits.per_payment)
            && amount.minor > max.minor
        {
            return Err(PaymentRejection::LimitExceeded(format!(
                "at most {max} per payment"
            )));
        }
        let spent = |operation: &str| {
            self.spent
                .get(&spent_key(now, operation, &amount))
                .copied()
                .unwrap_or(0)
        };
        if let Some(max) = applies(&order.limits.daily)
            && spent(&order.operation).saturating_add(amount.minor) > max.minor
        {
            return Err(PaymentRejection::LimitExceeded(format!(
                "at most {max} a day for this operation"
            )));
        }
        if let Some(max) = applies(&order.limits.customer_daily)
            && spent("*").saturating_add(amount.minor) > max.minor
        {
            return Err(PaymentRejection::LimitExceeded(format!(
                "at most {max} a day in all"
            )));
        }
        let overdraft = account
            .details
            .get("overdraft_minor")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .abs();
        if balance.minor.saturating_add(overdraft) < total {
            return Err(PaymentRejection::InsufficientFunds);
        }
        Ok(PaymentCheck::Proceed)
    }

    /// The `payment_status` event of an order reaching `status`.
    #[allow(clippy::too_many_arguments)]
    pub fn payment_event(
        order: &PaymentOrder,
        status: &str,
        at: OffsetDateTime,
        credited: Option<Money>,
        rate: Option<String>,
        payee: Option<String>,
    ) -> EventDraft {
        let mut data = Map::new();
        data.insert("payment_id".into(), json!(order.payment_id));
        data.insert("status".into(), json!(status));
        data.insert("operation".into(), json!(order.operation));
        data.insert("from".into(), json!(order.from));
        data.insert("amount".into(), json!(order.amount));
        data.insert("fee".into(), json!(order.fee));
        data.insert("body_hash".into(), json!(order.body_hash));
        if let Some(credited) = credited {
            data.insert("credited".into(), json!(credited));
        }
        if let Some(rate) = rate {
            data.insert("rate".into(), json!(rate));
        }
        if let Some(payee) = payee {
            data.insert("payee".into(), json!(payee));
        }
        EventDraft {
            id: format!("{}-{status}", order.payment_id),
            kind: "payment_status",
            at,
            data,
            notify: None,
        }
    }

    /// Folds a `payment_status` event: the record, and the day's totals when it completes.
    pub(crate) fn apply_payment(&mut self, event: &FeedEvent) {
        let text = |key: &str| {
            event
                .data
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let money = |key: &str| {
            event
                .data
                .get(key)
                .and_then(|v| serde_json::from_value::<Money>(v.clone()).ok())
        };
        let (Some(id), Some(status), Some(amount), Some(fee)) = (
            text("payment_id"),
            text("status"),
            money("amount"),
            money("fee"),
        ) else {
            return;
        };
        let operation = text("operation").unwrap_or_default();
        let was_completed = self
            .payments
            .get(&id)
            .is_some_and(|p| p.status == "completed");
        if status == "completed" && !was_completed {
            // Only today's totals matter; older days are dropped as the days go by.
            let today = day(event.at);
            self.spent.retain(|key, _| key.starts_with(&today));
            for op in [operation.as_str(), "*"] {
                *self
                    .spent
                    .entry(spent_key(event.at, op, &amount))
                    .or_default() += amount.minor;
            }
        }
        let at = self.payments.get(&id).map_or(event.at, |p| p.at);
        self.payments.insert(
            id.clone(),
            PaymentRecord {
                id,
                seq: event.seq,
                at,
                operation,
                from: text("from").unwrap_or_default(),
                amount,
                fee,
                status,
                body_hash: text("body_hash").unwrap_or_default(),
                credited: money("credited"),
                rate: text("rate"),
                payee: text("payee"),
            },
        );
        while self.payments.len() > RECENT_PAYMENTS {
            let oldest = self
                .payments
                .values()
                .min_by_key(|p| p.seq)
                .map(|p| p.id.clone());
            match oldest {
                Some(oldest) => self.payments.remove(&oldest),
                None => break,
            };
        }
    }
}
