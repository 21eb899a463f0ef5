//! The payment command: what the platform asks of the ABS on `abs.cmd.payment`
//! (request/reply; docs/abs-commands.md), and what it answers.

use serde::{Deserialize, Serialize};

use crate::{Change, CustomerId, Money};

/// Where the money goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Destination {
    /// An account by its id; with `own`, it must belong to the ordering customer.
    Account { account_id: String, own: bool },
    /// The primary account (in the amount's currency) of the customer with this phone.
    Phone { phone: String },
    /// An account by its number (bank details).
    AccountNumber { number: String },
    /// One of the bank's settlement accounts (billers, operators, the treasury), with the
    /// payer's reference (phone number, bill number, tax id).
    Settlement {
        account_id: String,
        reference: String,
    },
}

/// A payment order, idempotent by `id` (the ABS applies an id once, and answers a repeat
/// with the first receipt).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaymentCommand {
    pub id: String,
    /// The customer who orders it: `from` must be theirs.
    pub customer_id: CustomerId,
    /// An account or a card (its account is debited) of the customer.
    pub from: String,
    pub to: Destination,
    /// Debited from `from`, in its currency; converted when the destination's differs.
    pub amount: Money,
    /// Debited on top of the amount and credited to the bank's income.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fee: Option<Money>,
    pub description: String,
    /// A quote token (`POST /v1/quotes`): the conversion happens at its rate, or not at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote: Option<String>,
}

/// What the ABS answers for a posted payment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaymentReceipt {
    pub transfer_id: String,
    /// The Cache Control changes of every customer the transfer touched (also published
    /// through the change sink); the ordering customer's actor commits its own at once.
    pub changes: Vec<Change>,
    /// What the destination received, when a conversion happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credited: Option<Money>,
    /// The applied rate (quote per base, fixed point 10^6), when a conversion happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_e6: Option<i64>,
    /// A display name of the payee, when it is a customer of the bank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payee: Option<String>,
    pub duplicate: bool,
}

/// A refused command: a stable code (`insufficient_funds`, `account_not_found`,
/// `account_closed`, `card_blocked`, `currency_mismatch`, `payee_not_found`,
/// `idempotency_conflict`, `invalid_command`, `unavailable`) and a detail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct CommandError {
    pub code: String,
    pub detail: String,
}

impl CommandError {
    pub fn new(code: &str, detail: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            detail: detail.into(),
        }
    }
}

/// The wire form of an answer on `abs.cmd.*`: `{"ok": ...}` or `{"err": {"code", "detail"}}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandReply<T> {
    Ok(T),
    Err(CommandError),
}
