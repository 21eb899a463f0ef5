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

/// Paid payees remembered for the step-up rule; beyond, a new payee is confirmed again.
pub const KNOWN_PAYEES: usize = 1_000;

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
    /// A payment to someone else above this needs a step-up confirmation.
    #[serde(default)]
    pub confirm_above: Option<Money>,
    /// A first payment to a payee needs a step-up confirmation.
    #[serde(default)]
    pub confirm_new_payee: bool,
}

/// Payments waiting for a confirmation kept in the state (the oldest is dropped beyond).
pub const HELD_PAYMENTS: usize = 100;

/// Longest payee key bound into a step-up challenge.
pub const PAYEE_KEY_MAX: usize = 128;

/// Who a payment goes to, as a step-up challenge binds it and the state remembers paid
/// payees; `None` for the customer's own accounts (never confirmed).
pub fn payee_key(to: &Destination) -> Option<String> {
    let key = match to {
        Destination::Account { own: true, .. } => return None,
        Destination::Account { account_id, .. } => format!("account:{account_id}"),
        Destination::Phone { phone } => format!("phone:{phone}"),
        Destination::AccountNumber { number } => format!("number:{number}"),
        Destination::Settlement {
            account_id,
            reference,
        } => format!("settlement:{account_id}:{reference}"),
    };
    Some(key.chars().take(PAYEE_KEY_MAX).collect())
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
    /// The customer confirmed it with a step-up code (the confirmation rules are skipped).
    #[serde(default)]
    pub confirmed: bool,
    /// A quote token (conversions): the ABS converts at its rate; one quote pays once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote: Option<String>,
}

/// What the state remembers of a quote that paid: the token's mac, unique per quote.
pub fn quote_key(token: &str) -> String {
    token
        .rsplit('.')
        .next()
        .unwrap_or(token)
        .chars()
        .take(64)
        .collect()
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
    /// The quote that paid it (`quote_key`), so that a quote pays once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote: Option<String>,
    /// The step-up challenge of a payment waiting for confirmation.
    #[serde(default)]
    pub challenge_id: Option<String>,
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
        if let Some(challenge_id) = &self.challenge_id {
            answer["challenge_id"] = json!(challenge_id);
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
    #[error("this quote was used by another payment")]
    QuoteUsed,
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
            PaymentRejection::QuoteUsed => "quote_used",
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
    /// Allowed, but only after a step-up confirmation (amount or payee): nothing moves yet.
    ConfirmationRequired,
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

/// The day's totals key under which payments from a product (a card) are summed for its own
/// daily limit. The `:` keeps it apart from operation ids, which never contain one.
fn card_spent_operation(from: &str) -> String {
    format!("from:{from}")
}

/// A card's daily spending limit as the ABS set it (`daily_limit` in its details); `None` for
/// other products and cards without one.
pub fn card_daily_limit(product: &crate::customer::Product) -> Option<Money> {
    if product.kind != ProductKind::Card {
        return None;
    }
    serde_json::from_value(product.details.get("daily_limit")?.clone()).ok()
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
            let confirming = record.status == "confirmation_required" && order.confirmed;
            if record.status == "pending" {
                return Ok(PaymentCheck::Proceed);
            }
            if !confirming {
                return Ok(PaymentCheck::Replay(record.answer()));
            }
            // Confirmed: the checks run again against the state as it is now.
        }
        if let Some(token) = &order.quote {
            let key = quote_key(token);
            if self
                .payments
                .values()
                .any(|p| p.quote.as_deref() == Some(key.as_str()) && p.id != order.payment_id)
            {
                return Err(PaymentRejection::QuoteUsed);
            }
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
        if let Some(max) = card_daily_limit(product).filter(|l| l.currency == amount.currency)
            && spent(&card_spent_operation(&order.from)).saturating_add(amount.minor) > max.minor
        {
            return Err(PaymentRejection::LimitExceeded(format!(
                "at most {max} a day from this card"
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
        if self.needs_confirmation(order) {
            return Ok(PaymentCheck::ConfirmationRequired);
        }
        Ok(PaymentCheck::Proceed)
    }

    /// Step-up rules: a payment to someone else above `confirm_above` (in its currency), or
    /// a first payment to a payee when the operation asks for it. Own accounts never.
    pub fn needs_confirmation(&self, order: &PaymentOrder) -> bool {
        if order.confirmed {
            return false;
        }
        let Some(payee) = payee_key(&order.to) else {
            return false;
        };
        let above = order
            .limits
            .confirm_above
            .filter(|l| l.currency == order.amount.currency)
            .is_some_and(|l| order.amount.minor > l.minor);
        above || (order.limits.confirm_new_payee && !self.known_payees.contains(&payee))
    }

    /// The `payment_status` event of an order held for the step-up challenge `challenge_id`
    /// (the order travels with it, so a confirmation after passivation or failover finds it).
    pub fn hold_event(order: &PaymentOrder, challenge_id: &str, at: OffsetDateTime) -> EventDraft {
        let mut draft = Self::payment_event(order, "confirmation_required", at, None, None, None);
        draft
            .data
            .insert("challenge_id".into(), json!(challenge_id));
        draft.data.insert("order".into(), json!(order));
        draft
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
        if let Some(key) = payee_key(&order.to) {
            data.insert("payee_key".into(), json!(key));
        }
        if let Some(token) = &order.quote {
            data.insert("quote".into(), json!(quote_key(token)));
        }
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
            let card = card_spent_operation(&text("from").unwrap_or_default());
            for op in [operation.as_str(), "*", card.as_str()] {
                *self
                    .spent
                    .entry(spent_key(event.at, op, &amount))
                    .or_default() += amount.minor;
            }
        }
        if status == "completed"
            && let Some(key) = text("payee_key")
            && self.known_payees.len() < KNOWN_PAYEES
        {
            self.known_payees.insert(key);
        }
        let challenge_id = text("challenge_id");
        let holding = status == "confirmation_required";
        let order = event
            .data
            .get("order")
            .and_then(|o| serde_json::from_value::<PaymentOrder>(o.clone()).ok());
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
                quote: text("quote"),
                challenge_id: if holding { challenge_id.clone() } else { None },
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
        if holding {
            if let (Some(challenge), Some(order)) = (challenge_id, order) {
                self.held.insert(challenge, order);
            }
            while self.held.len() > HELD_PAYMENTS {
                let oldest = self
                    .held
                    .iter()
                    .min_by_key(|(_, o)| self.payments.get(&o.payment_id).map_or(0, |p| p.seq))
                    .map(|(c, _)| c.clone());
                match oldest {
                    Some(oldest) => self.held.remove(&oldest),
                    None => break,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::customer::{Product, Profile};
    use kernel::{Currency, CustomerId};

    fn state() -> CustomerState {
        CustomerState::new(Profile {
            customer_id: CustomerId::parse("c1").unwrap(),
            name: "Anna".into(),
            phone: "+79990000001".into(),
            language: "en".into(),
            products: vec![Product {
                id: "a1".into(),
                kind: ProductKind::Account,
                title: "a1".into(),
                status: "active".into(),
                balance: Some(Money::new(10_000_000, Currency::RUB)),
                details: Map::new(),
            }],
        })
    }

    fn order(id: &str, minor: i64, to: Destination, new_payee: bool) -> PaymentOrder {
        PaymentOrder {
            payment_id: id.into(),
            body_hash: "h".into(),
            operation: "transfer.phone".into(),
            from: "a1".into(),
            to,
            amount: Money::new(minor, Currency::RUB),
            fee: Money::new(0, Currency::RUB),
            limits: Limits {
                confirm_above: Some(Money::new(5_000_000, Currency::RUB)),
                confirm_new_payee: new_payee,
                ..Limits::default()
            },
            description: String::new(),
            confirmed: false,
            quote: None,
        }
    }

    fn phone(p: &str) -> Destination {
        Destination::Phone { phone: p.into() }
    }

    fn fold(state: &mut CustomerState, draft: EventDraft) {
        let event = FeedEvent {
            seq: state.version + 1,
            id: draft.id,
            kind: draft.kind.into(),
            at: draft.at,
            data: draft.data,
        };
        state.apply(&event);
    }

    /// A card with a daily limit: each case pays `amount` after the day's earlier payments
    /// from the card (`spent_before`, completed) and expects proceed or `limit_exceeded`.
    #[test]
    fn a_card_pays_up_to_what_is_left_of_its_daily_limit() {
        let day = OffsetDateTime::UNIX_EPOCH;
        let next_day = day + time::Duration::days(1);
        // (spent before today, amount now, limit, day of the payment, allowed)
        type Case = (
            &'static [i64],
            i64,
            Option<(i64, Currency)>,
            OffsetDateTime,
            bool,
        );
        let cases: [Case; 8] = [
            (&[], 100_000, Some((100_000, Currency::RUB)), day, true),
            (&[], 100_001, Some((100_000, Currency::RUB)), day, false),
            (&[60_000], 40_000, Some((100_000, Currency::RUB)), day, true),
            (
                &[60_000],
                40_001,
                Some((100_000, Currency::RUB)),
                day,
                false,
            ),
            (
                &[60_000, 40_000],
                1,
                Some((100_000, Currency::RUB)),
                day,
                false,
            ),
            // Yesterday's spending does not count today.
            (
                &[100_000],
                100_000,
                Some((100_000, Currency::RUB)),
                next_day,
                true,
            ),
            // No limit set; a limit in another currency does not apply.
            (&[], 9_000_000, None, day, true),
            (&[], 9_000_000, Some((1, Currency::USD)), day, true),
        ];
        for (n, (before, amount, limit, at, allowed)) in cases.into_iter().enumerate() {
            let mut state = state();
            let mut details = Map::new();
            details.insert("account_id".into(), json!("a1"));
            if let Some((minor, currency)) = limit {
                details.insert("daily_limit".into(), json!(Money::new(minor, currency)));
            }
            state.products.insert(
                "k1".into(),
                Product {
                    id: "k1".into(),
                    kind: ProductKind::Card,
                    title: "card".into(),
                    status: "active".into(),
                    balance: None,
                    details,
                },
            );
            let from_card = |id: String, minor: i64| PaymentOrder {
                from: "k1".into(),
                limits: Limits::default(),
                ..order(&id, minor, phone("+79990000002"), false)
            };
            for (i, minor) in before.iter().enumerate() {
                let earlier = from_card(format!("e{i}"), *minor);
                fold(
                    &mut state,
                    CustomerState::payment_event(&earlier, "completed", day, None, None, None),
                );
            }
            // Payments from the card's account itself are not the card's spending.
            let from_account = PaymentOrder {
                from: "a1".into(),
                ..from_card("acc".into(), amount)
            };
            assert_eq!(
                state.check_payment(&from_account, at),
                Ok(PaymentCheck::Proceed),
                "case {n}"
            );
            let result = state.check_payment(&from_card("now".into(), amount), at);
            if allowed {
                assert_eq!(result, Ok(PaymentCheck::Proceed), "case {n}");
            } else {
                assert!(
                    matches!(&result, Err(e) if e.code() == "limit_exceeded"),
                    "case {n}: {result:?}"
                );
            }
        }
    }

    #[test]
    fn step_up_rules_amount_new_payee_and_own_accounts() {
        let mut state = state();
        let at = OffsetDateTime::UNIX_EPOCH;
        let check = |s: &CustomerState, o: &PaymentOrder| s.check_payment(o, at).unwrap();
        // At the threshold: at once; above: confirmation.
        let small = order("p1", 5_000_000, phone("+79990000002"), false);
        assert_eq!(check(&state, &small), PaymentCheck::Proceed);
        let large = order("p2", 5_000_001, phone("+79990000002"), false);
        assert_eq!(check(&state, &large), PaymentCheck::ConfirmationRequired);
        // Own accounts never.
        let own = Destination::Account {
            account_id: "a1".into(),
            own: true,
        };
        assert_eq!(
            check(&state, &order("p3", 9_000_000, own, true)),
            PaymentCheck::Proceed
        );
        // A new payee when the operation asks; known after a completed payment.
        let first = order("p4", 100, phone("+79990000003"), true);
        assert_eq!(check(&state, &first), PaymentCheck::ConfirmationRequired);
        fold(
            &mut state,
            CustomerState::payment_event(&first, "completed", at, None, None, None),
        );
        let second = order("p5", 100, phone("+79990000003"), true);
        assert_eq!(check(&state, &second), PaymentCheck::Proceed);
        // Rejections come before the step-up: nothing is held for a refused payment.
        let too_much = order("p6", 20_000_000, phone("+79990000002"), false);
        assert_eq!(
            state.check_payment(&too_much, at),
            Err(PaymentRejection::InsufficientFunds)
        );
    }

    #[test]
    fn a_quote_pays_once_and_its_own_payment_replays() {
        let mut state = state();
        let at = OffsetDateTime::UNIX_EPOCH;
        let own = || Destination::Account {
            account_id: "a1".into(),
            own: true,
        };
        let quoted = |id: &str, token: &str| PaymentOrder {
            quote: Some(token.into()),
            ..order(id, 100, own(), false)
        };
        let first = quoted("p1", "q1.payload.mac-one");
        assert_eq!(state.check_payment(&first, at), Ok(PaymentCheck::Proceed));
        fold(
            &mut state,
            CustomerState::payment_event(&first, "completed", at, None, None, None),
        );
        assert_eq!(state.payments["p1"].quote.as_deref(), Some("mac-one"));
        // The same payment again (same key): its answer. Another payment with the quote: no.
        assert!(matches!(
            state.check_payment(&first, at),
            Ok(PaymentCheck::Replay(_))
        ));
        assert_eq!(
            state.check_payment(&quoted("p2", "q1.payload.mac-one"), at),
            Err(PaymentRejection::QuoteUsed)
        );
        assert_eq!(PaymentRejection::QuoteUsed.code(), "quote_used");
        // Another quote is fine.
        assert_eq!(
            state.check_payment(&quoted("p3", "q1.payload.mac-two"), at),
            Ok(PaymentCheck::Proceed)
        );
    }

    #[test]
    fn a_held_payment_replays_until_confirmed_and_survives_replay_of_the_journal() {
        let mut state = state();
        let at = OffsetDateTime::UNIX_EPOCH;
        let large = order("p1", 6_000_000, phone("+79990000002"), false);
        fold(&mut state, CustomerState::hold_event(&large, "ch1", at));
        // The same request again: the held answer with its challenge.
        let PaymentCheck::Replay(answer) = state.check_payment(&large, at).unwrap() else {
            panic!("expected a replay");
        };
        assert_eq!(answer["status"], "confirmation_required");
        assert_eq!(answer["challenge_id"], "ch1");
        assert_eq!(state.held["ch1"], large);
        // Confirmed: checked again and allowed through.
        let mut confirmed = state.held["ch1"].clone();
        confirmed.confirmed = true;
        assert_eq!(
            state.check_payment(&confirmed, at),
            Ok(PaymentCheck::Proceed)
        );
        fold(
            &mut state,
            CustomerState::payment_event(&confirmed, "completed", at, None, None, None),
        );
        // Completed: a second confirmation only replays the answer.
        assert!(matches!(
            state.check_payment(&confirmed, at),
            Ok(PaymentCheck::Replay(_))
        ));
        assert!(state.known_payees.contains("phone:+79990000002"));
        // The hold map stays bounded.
        for i in 0..(HELD_PAYMENTS + 5) {
            let o = order(&format!("q{i}"), 6_000_000, phone("+79990000002"), false);
            fold(
                &mut state,
                CustomerState::hold_event(&o, &format!("c{i}"), at),
            );
        }
        assert_eq!(state.held.len(), HELD_PAYMENTS);
        assert!(state.held.contains_key(&format!("c{}", HELD_PAYMENTS + 4)));
    }
}
