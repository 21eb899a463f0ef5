//! `abs.cmd.card.block` / `abs.cmd.card.unblock` / `abs.cmd.card.limits`: the reference ABS
//! changes a card's status or daily limit in its store and publishes a `product_changed` Cache
//! Control change to the card's customer, so the customer actor's state, the feed and the live
//! socket all see it.
//!
//! `card.limits` takes `{"customer_id", "card_id", "key", "daily": money}` and answers
//! `{"ok": {"id", "daily_limit"}}`, refusing a limit out of bounds with `invalid_field`.
//!
//! Request: `{"customer_id", "card_id", "key"}` (`key`: the client's idempotency key). Reply:
//! `{"ok": {"id", "status"}}` or `{"err": {"code", "detail"}}` with `code` one of `not_found`
//! (no such card, or another customer's), `card_closed` (neither active nor blocked),
//! `bad_request`, `unavailable`. Setting the status a card already has is not an error: the
//! answer is the same and nothing is published, so only real transitions reach the feed (and
//! a block's security alert is sent once). The change id is derived from the card, the status
//! and the key, so a retried command is journaled once.

use kernel::{Change, ChangeBody, Currency, CustomerId, Money};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Abs;

/// What a card command asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CardOp {
    Block,
    Unblock,
}

impl CardOp {
    /// The status the card has afterwards.
    pub fn status(self) -> &'static str {
        match self {
            CardOp::Block => "blocked",
            CardOp::Unblock => "active",
        }
    }
}

/// A refused card command, with the stable code the gateway maps to a problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct CardError {
    pub code: &'static str,
    pub detail: String,
}

fn refuse(code: &'static str, detail: impl Into<String>) -> CardError {
    CardError {
        code,
        detail: detail.into(),
    }
}

#[derive(Deserialize)]
struct CardCommand {
    customer_id: CustomerId,
    card_id: String,
    key: String,
}

impl Abs {
    /// Sets a card's status (see the module documentation) and returns it.
    pub async fn set_card_status(
        &self,
        customer_id: &CustomerId,
        card_id: &str,
        key: &str,
        op: CardOp,
    ) -> Result<&'static str, CardError> {
        if card_id.is_empty() || card_id.len() > 64 || key.is_empty() || key.len() > 255 {
            return Err(refuse("bad_request", "card id or key out of bounds"));
        }
        let unavailable = |e: kernel::store::StoreError| refuse("unavailable", e.to_string());
        let card = self
            .store
            .abs_account(card_id)
            .await
            .map_err(unavailable)?
            .filter(|p| &p.customer_id == customer_id && p.kind == "card")
            .ok_or_else(|| refuse("not_found", "no such card"))?;
        if card.status != "active" && card.status != "blocked" {
            return Err(refuse("card_closed", "the card is closed"));
        }
        let status = op.status();
        if card.status == status {
            return Ok(status);
        }
        // The change goes first, the store second: a crash between them leaves the old status
        // in the store, so the client's retry (no answer yet) submits the same change id again
        // (dropped as a duplicate) and writes the status. Meanwhile the customer's state is
        // ahead of the store, which errs on the safe side for either command: the actor refuses
        // a blocked card's payments, the ABS those of a card it still holds blocked.
        let change = Change {
            id: format!("card-{card_id}-{status}-{key}"),
            customer_id: customer_id.clone(),
            at: kernel::now(),
            body: ChangeBody::ProductChanged {
                product_id: card_id.to_owned(),
                status: Some(status.to_owned()),
                title: None,
                daily_limit: None,
            },
        };
        self.sink
            .submit(vec![change])
            .await
            .map_err(|e| refuse("unavailable", e.to_string()))?;
        self.store
            .abs_set_status(card_id, status)
            .await
            .map_err(unavailable)?;
        Ok(status)
    }

    /// Sets a card's daily spending limit (`daily_limit` in its details) and returns it.
    /// Refused with `invalid_field` when the limit is not positive, above
    /// [`domain::products::MAX_CARD_DAILY_LIMIT_MINOR`] or not in the card's account currency;
    /// `not_found` and `card_closed` as for a status. Setting the limit a card already has
    /// publishes nothing.
    pub async fn set_card_daily_limit(
        &self,
        customer_id: &CustomerId,
        card_id: &str,
        key: &str,
        daily: Money,
    ) -> Result<Money, CardError> {
        if card_id.is_empty() || card_id.len() > 64 || key.is_empty() || key.len() > 255 {
            return Err(refuse("bad_request", "card id or key out of bounds"));
        }
        let unavailable = |e: kernel::store::StoreError| refuse("unavailable", e.to_string());
        let card = self
            .store
            .abs_account(card_id)
            .await
            .map_err(unavailable)?
            .filter(|p| &p.customer_id == customer_id && p.kind == "card")
            .ok_or_else(|| refuse("not_found", "no such card"))?;
        if card.status != "active" && card.status != "blocked" {
            return Err(refuse("card_closed", "the card is closed"));
        }
        // The limit is in the currency the card spends: its account's.
        let account_currency = match card.details.get("account_id").and_then(Value::as_str) {
            Some(account_id) => self
                .store
                .abs_account(account_id)
                .await
                .map_err(unavailable)?
                .map(|account| account.currency),
            None => None,
        }
        .unwrap_or(card.currency.clone());
        let account_currency = Currency::parse(&account_currency)
            .map_err(|_| refuse("unavailable", "the card's currency is unknown"))?;
        domain::products::check_card_daily_limit(daily, account_currency)
            .map_err(|e| refuse("invalid_field", e.to_string()))?;
        let limit = json!(daily);
        if card.details.get("daily_limit") == Some(&limit) {
            return Ok(daily);
        }
        let mut details = card.details.clone();
        let Some(fields) = details.as_object_mut() else {
            return Err(refuse("unavailable", "the card's details are malformed"));
        };
        fields.insert("daily_limit".into(), limit);
        // As for a status: the change first, so a retry after a crash in between republishes
        // the same change id (dropped as a duplicate) and writes the store.
        let change = Change {
            id: format!("card-{card_id}-limit-{}-{key}", daily.minor),
            customer_id: customer_id.clone(),
            at: kernel::now(),
            body: ChangeBody::ProductChanged {
                product_id: card_id.to_owned(),
                status: None,
                title: None,
                daily_limit: Some(daily),
            },
        };
        self.sink
            .submit(vec![change])
            .await
            .map_err(|e| refuse("unavailable", e.to_string()))?;
        self.store
            .abs_set_details(card_id, &details)
            .await
            .map_err(unavailable)?;
        Ok(daily)
    }

    pub(crate) async fn answer_card_limits(&self, payload: &[u8]) -> Value {
        #[derive(Deserialize)]
        struct LimitsCommand {
            customer_id: CustomerId,
            card_id: String,
            key: String,
            daily: Money,
        }
        let error = |e: CardError| json!({"err": {"code": e.code, "detail": e.detail}});
        let Ok(command) = serde_json::from_slice::<LimitsCommand>(payload) else {
            return error(refuse(
                "bad_request",
                "expected {\"customer_id\", \"card_id\", \"key\", \"daily\"}",
            ));
        };
        match self
            .set_card_daily_limit(
                &command.customer_id,
                &command.card_id,
                &command.key,
                command.daily,
            )
            .await
        {
            Ok(daily) => json!({"ok": {"id": command.card_id, "daily_limit": daily}}),
            Err(e) => error(e),
        }
    }

    pub(crate) async fn answer_card(&self, op: CardOp, payload: &[u8]) -> Value {
        let error = |e: CardError| json!({"err": {"code": e.code, "detail": e.detail}});
        let Ok(command) = serde_json::from_slice::<CardCommand>(payload) else {
            return error(refuse(
                "bad_request",
                "expected {\"customer_id\", \"card_id\", \"key\"}",
            ));
        };
        match self
            .set_card_status(&command.customer_id, &command.card_id, &command.key, op)
            .await
        {
            Ok(status) => json!({"ok": {"id": command.card_id, "status": status}}),
            Err(e) => error(e),
        }
    }
}
