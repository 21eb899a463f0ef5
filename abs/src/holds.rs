//! Holds (authorizations) of the reference ABS on the bus, for the bank's card processing:
//! `abs.cmd.hold.authorize` reserves money on a customer's account (the available balance,
//! balance less holds, may not fall below the floor; transfers respect it), then either
//! `abs.cmd.hold.capture` turns it into a transfer of at most the held amount (published as
//! Cache Control changes to every customer it touches, exactly like `abs.cmd.payment`) or
//! `abs.cmd.hold.release` frees it. Each is idempotent by its id; the rules live in the
//! store's atomic writes (`AbsStore::abs_hold` / `abs_capture` / `abs_release`), mirroring
//! the pure ledger's (`ledger::Ledger::hold`).

use kernel::payment::{CommandError, CommandReply, PaymentCommand};
use kernel::{CustomerId, Money};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Abs;
use crate::payments::{floor, store_err};

/// `abs.cmd.hold.authorize`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorize {
    pub id: String,
    pub customer_id: CustomerId,
    pub account_id: String,
    pub amount: Money,
}

/// `abs.cmd.hold.capture`: a payment order (`abs.cmd.payment`'s body) with the hold it
/// captures.
#[derive(Debug, Deserialize)]
pub struct Capture {
    pub hold_id: String,
    #[serde(flatten)]
    pub payment: PaymentCommand,
}

/// `abs.cmd.hold.release`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub hold_id: String,
}

/// Which hold command a message is.
#[derive(Clone, Copy, Debug)]
pub(crate) enum HoldOp {
    Authorize,
    Capture,
    Release,
}

fn err(code: &str, detail: &str) -> CommandError {
    CommandError::new(code, detail)
}

impl Abs {
    /// Reserves `amount` on an active account of the customer; answers what stays
    /// available.
    pub async fn authorize(&self, hold: &Authorize) -> Result<Value, CommandError> {
        if hold.id.is_empty() || hold.id.len() > 100 || hold.amount.minor <= 0 {
            return Err(err(
                "invalid_command",
                "id must be 1 to 100 characters and amount positive",
            ));
        }
        let account = self
            .store
            .abs_account(&hold.account_id)
            .await
            .map_err(store_err)?
            .filter(|p| p.customer_id == hold.customer_id)
            .filter(|p| p.kind == "account" || p.kind == "deposit")
            .ok_or_else(|| err("account_not_found", "no such account"))?;
        if account.currency != hold.amount.currency.code() {
            return Err(err(
                "currency_mismatch",
                "amount is not in the account's currency",
            ));
        }
        let result = self
            .store
            .abs_hold(&kernel::store::AbsHold {
                id: hold.id.clone(),
                account_id: account.id.clone(),
                amount_minor: hold.amount.minor,
                floor_minor: floor(&account),
            })
            .await
            .map_err(store_err)?;
        Ok(json!({
            "hold_id": hold.id,
            "available": Money::new(result.available_minor, hold.amount.currency),
            "duplicate": result.duplicate,
        }))
    }

    /// Frees a hold (`released: false` when it already was).
    pub async fn release(&self, release: &Release) -> Result<Value, CommandError> {
        match self.store.abs_release(&release.hold_id).await {
            Ok(released) => Ok(json!({"hold_id": release.hold_id, "released": released})),
            Err(kernel::store::StoreError::NotFound) => Err(err("hold_not_found", "no such hold")),
            Err(other) => Err(store_err(other)),
        }
    }

    pub(crate) async fn answer_hold(&self, op: HoldOp, payload: &[u8]) -> Value {
        fn parse<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, CommandError> {
            serde_json::from_slice(payload).map_err(|e| err("invalid_command", &e.to_string()))
        }
        let answer = match op {
            HoldOp::Authorize => match parse::<Authorize>(payload) {
                Ok(hold) => self.authorize(&hold).await,
                Err(e) => Err(e),
            },
            HoldOp::Capture => match parse::<Capture>(payload) {
                Ok(capture) => self
                    .pay_or_capture(&capture.payment, Some(&capture.hold_id))
                    .await
                    .map(|receipt| serde_json::to_value(receipt).unwrap_or(Value::Null)),
                Err(e) => Err(e),
            },
            HoldOp::Release => match parse::<Release>(payload) {
                Ok(release) => self.release(&release).await,
                Err(e) => Err(e),
            },
        };
        let reply = match answer {
            Ok(value) => CommandReply::Ok(value),
            Err(error) => CommandReply::Err(error),
        };
        serde_json::to_value(reply).unwrap_or(Value::Null)
    }
}
